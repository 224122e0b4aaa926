"""tc.factorize: new model, input untouched, ranks from the closed-form counts, patterns, report, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import assert_model_unchanged, model_state
from torch import nn

import tensorcompress as tc


def net(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU()),
        nn.Flatten(), nn.Linear(24 * 4 * 4, 60), nn.ReLU(), nn.Linear(60, 10),
    ).to(dtype)


def test_full_rank_is_exact_and_input_untouched():
    model = net(torch.float64)
    before = model_state(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for method, kw in (("svd", {"rank": 1000}), ("tucker", {"rank": 1000}), ("tt", {"rank": 1000}),
                       ("cp", {"rank": 10**6})):
        new, report = tc.factorize(model, method=method, **kw)
        assert new is not model
        torch.testing.assert_close(new(x), model(x), rtol=1e-10, atol=1e-10)
        assert len(report) == 2
    assert_model_unchanged(model, before)
    assert all(type(m) in (nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential) for m in model.modules())


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5])
def test_ratio_solves_closed_form(ratio):
    model = net()
    _, rep = tc.factorize(model, method="svd", ratio=ratio)
    for row in rep:
        lin = model.get_submodule(row.name)
        m, n = lin.weight.shape
        assert row.rank == max(1, math.floor(ratio * m * n / (m + n)))
        assert row.params_after == row.rank * (m + n) + m
    _, rep = tc.factorize(model, method="cp", ratio=ratio, n_iter_max=2)
    for row in rep:
        t, s, kh, kw = model.get_submodule(row.name).weight.shape
        r = row.rank
        assert r * (t + s + kh + kw) <= max(ratio * t * s * kh * kw, t + s + kh + kw)
        assert (r + 1) * (t + s + kh + kw) > ratio * t * s * kh * kw or r == tc.cp_exact_rank((t, s, kh, kw))
    _, rep = tc.factorize(model, method="tucker", ratio=ratio)
    for row in rep:
        t, s, kh, kw = model.get_submodule(row.name).weight.shape
        r_t, r_s = row.rank
        k, q = kh * kw, s * s + t * t  # c (S^2 + T^2) + c^2 S T k = ratio S T k, the module docstring's closed form
        c = (math.sqrt(q * q + 4 * ratio * (k * s * t) ** 2) - q) / (2 * k * s * t)
        assert math.isclose(c * q + c * c * s * t * k, ratio * s * t * k)
        assert (r_t, r_s) == (max(1, math.floor(c * t)), max(1, math.floor(c * s)))
        count = s * r_s + r_t * r_s * kh * kw + r_t * t
        assert count <= ratio * t * s * kh * kw or min(c * t, c * s) < 1  # over budget only where clamped to 1
        # the next larger ranks in the same proportion would exceed the budget
        c = max(r_t / t, r_s / s) + 1 / min(t, s)
        assert s * c * s + (c * t) * (c * s) * kh * kw + c * t * t > ratio * t * s * kh * kw
    _, rep = tc.factorize(model, method="tt", ratio=ratio)
    for row in rep:
        lin = model.get_submodule(row.name)
        in_modes, out_modes = tc.tt_modes(lin.in_features), tc.tt_modes(lin.out_features)
        sizes = [m * n for m, n in zip(out_modes, in_modes, strict=True)]

        def count(r, sizes=sizes):
            ranks = [1, r, r, 1]
            return sum(ranks[k] * sizes[k] * ranks[k + 1] for k in range(3))

        budget = ratio * lin.weight.numel()
        r = 1  # the largest equal inner rank within the budget (at least 1), found independently by counting
        while count(r + 1) <= budget:
            r += 1
        caps = [min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1:])) for k in range(2)]
        assert row.rank == (1, min(r, caps[0]), min(r, caps[1]), 1)
        assert row.params_after - lin.out_features <= budget or r == 1
        assert row.params_after - lin.out_features > 0


def test_patterns_and_report():
    model = net()
    new, rep = tc.factorize(model, method="svd", rank=4, include="4")
    assert [r.name for r in rep] == ["4"]
    assert isinstance(new[4], tc.LowRankLinear) and isinstance(new[6], nn.Linear)
    assert rep[0].params_before == 384 * 60 + 60 and rep[0].params_after == 4 * (384 + 60) + 60
    assert rep[0].param_ratio == rep[0].params_before / rep[0].params_after
    # bytes are what torch.save writes for each layer's state, and compression is their ratio
    assert rep[0].bytes_before == tc.model_size_bytes(model[4]) and rep[0].bytes_after == tc.model_size_bytes(new[4])
    assert rep[0].compression == rep[0].bytes_before / rep[0].bytes_after
    new, rep = tc.factorize(model, method="tucker", rank="vbmf", exclude=["0"])
    assert [r.name for r in rep] == ["2.0"] and isinstance(new[2][0], tc.TuckerConv2d)
    new, rep = tc.factorize(model, method="tucker", energy=0.9, include="2.*")
    assert [r.name for r in rep] == ["2.0"]
    new, rep = tc.factorize(model, method="tt", energy=0.5, include="4")
    assert isinstance(new[4], tc.TTLinear) and new[4].in_modes == tc.tt_modes(384) == (8, 8, 6)
    y = new(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10)


def test_follows_device_and_dtype(device, dtype):
    model = net(dtype).to(device)
    x = torch.randn(2, 3, 8, 8, device=device, dtype=dtype)
    for method in ("svd", "cp", "tucker", "tt"):
        new, _ = tc.factorize(model, method=method, ratio=0.3, n_iter_max=2)
        assert all(p.device == x.device and p.dtype == dtype for p in new.parameters())
        assert new(x).shape == (2, 10)


def test_errors():
    model = net()
    with pytest.raises(ValueError, match="method must be one of .* got 'qr'"):
        tc.factorize(model, method="qr", rank=2)
    with pytest.raises(ValueError, match="exactly one of rank, ratio, energy"):
        tc.factorize(model, method="svd", rank=2, ratio=0.5)
    with pytest.raises(ValueError, match="exactly one of rank, ratio, energy; got none"):
        tc.factorize(model, method="svd")
    with pytest.raises(ValueError, match=r"ratio must be a float in \(0, 1\], got 2"):
        tc.factorize(model, method="svd", ratio=2)
    with pytest.raises(ValueError, match="energy is not defined for method='cp'"):
        tc.factorize(model, method="cp", energy=0.9)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        tc.factorize("net", method="svd", rank=2)
    with pytest.raises(ValueError, match="rank for method='tucker' must be a pair"):
        tc.factorize(model, method="tucker", rank=(2, 2, 2))
    with pytest.raises(ValueError, match=r"rank\[1\] \(r_in\)=0 is out of range"):
        tc.factorize(model, method="tucker", rank=(2, 0))
    with pytest.raises(ValueError, match="must be an int, a pair .* or 'vbmf', got 'evbmf'"):
        tc.factorize(model, method="tucker", rank="evbmf")


def test_tucker_pair_capped_as_documented():
    # "capped at what each layer allows": conv 0 has 3 input channels, conv 2.0 has 16 (and 24 outputs)
    _, rep = tc.factorize(net(), method="tucker", rank=(20, 8))
    assert [r.rank for r in rep] == [(16, 3), (20, 8)]


def test_rows_are_layer_changes_and_print_one_line():
    new, rep = tc.factorize(net(), method="tucker", rank=(4, 3), include="2.0")
    (row,) = rep
    assert isinstance(row, tc.FactorizedLayer) and isinstance(row, tc.surgery.LayerChange)
    assert row.rank == (4, 3) == row.detail["rank"] == new[2][0].rank
    b0, b1 = tc.model_size_bytes(net()[2][0]), tc.model_size_bytes(new[2][0])
    assert (row.bytes_before, row.bytes_after) == (b0, b1)
    assert str(row) == (f"2.0: Conv2d -> TuckerConv2d, {16 * 24 * 9 + 24} -> {row.params_after} parameters, "
                        f"{b0:,} -> {b1:,} bytes ({b0 / b1:.2f}x), rank (4, 3)")
    small, rep = tc.factorize(net(), method="svd", rank=3, include="6")
    b0, b1 = tc.model_size_bytes(net()[6]), tc.model_size_bytes(small[6])
    assert str(rep[0]) == (f"6: Linear -> LowRankLinear, 610 -> 220 parameters, {b0:,} -> {b1:,} bytes "
                           f"({b0 / b1:.2f}x), rank 3")


def test_readme_report_line_is_the_real_output():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    call = re.search(r"^(small, report = tc\.factorize\(.*\))", readme, re.M)
    shown = re.search(r"^print\(report\[0\]\)\s+# (.*)$", readme, re.M)
    assert call and shown, "README lost its factorize example"
    scope = {"tc": tc, "model": tc.models.pretrained("lenet5")}
    exec(call.group(1).split("  #")[0], scope)
    assert str(scope["report"][0]) == shown.group(1).strip()


def shared_net() -> nn.Module:
    torch.manual_seed(0)
    block = nn.Linear(16, 16)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), block, nn.ReLU(), block, nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("method", ["svd", "tt"])
def test_shared_module_replaced_once_everywhere(method):
    model = shared_net()
    new, rep = tc.factorize(model, method=method, rank=2, include="2")  # one name of the shared block is enough
    assert new[2] is new[4] and not isinstance(new[2], nn.Linear)
    assert [(r.name, r.aliases) for r in rep] == [("2", ("4",))]
    saved = tc.count_parameters(model) - tc.count_parameters(new)
    assert saved == rep[0].params_before - rep[0].params_after > 0  # the report tells the truth about the model
    assert model[2] is model[4] and type(model[2]) is nn.Linear  # input untouched
    new, rep = tc.factorize(model, method=method, rank=2)
    assert [r.name for r in rep] == ["0", "2", "6"] and new[2] is new[4]
    assert tc.count_parameters(model) - tc.count_parameters(new) == sum(r.params_before - r.params_after for r in rep)


def test_tied_weight_is_refused():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10, bias=False))
    model[3].weight = model[0].weight  # a language-model head tied to the embedding
    with pytest.raises(ValueError, match=r"of module .3. are tied to \[.0.weight.\]; replacing the module"):
        tc.factorize(model, method="svd", rank=2)
    new, rep = tc.factorize(model, method="svd", rank=2, exclude="3")  # the way out the message names
    assert [r.name for r in rep] == ["1"] and new[3].weight is new[0].weight
    twin = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    twin[1].bias = twin[0].bias
    with pytest.raises(ValueError, match="are tied to"):
        tc.factorize(twin, method="svd", rank=2)


@pytest.mark.parametrize("method", ["svd", "tt", "cp", "tucker"])
def test_keeps_mode_and_requires_grad(method):
    model = net().eval()
    frozen = "4" if method in ("svd", "tt") else "0"
    model.get_submodule(frozen).requires_grad_(False)
    new, rep = tc.factorize(model, method=method, ratio=0.3, n_iter_max=2)
    assert len(rep) == 2
    for row in rep:
        layer = new.get_submodule(row.name)
        assert all(not m.training for m in layer.modules())
        assert all(p.requires_grad == (row.name != frozen) for p in layer.parameters())
    model = net().train()
    model.get_submodule(frozen).bias.requires_grad_(False)  # BitFit's opposite: weights train, the bias does not
    new, _ = tc.factorize(model, method=method, ratio=0.3, include=frozen, n_iter_max=2)
    layer = new.get_submodule(frozen)
    flags = {n: p.requires_grad for n, p in layer.named_parameters()}
    assert layer.training and flags.pop({"svd": "second.bias", "tt": "bias"}.get(method, "last.bias")) is False
    assert all(flags.values())


def test_include_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"include entries \['fc9'\] match no Linear module"):
        tc.factorize(net(), method="svd", rank=2, include=["4", "fc9"])
    with pytest.raises(ValueError, match=r"\['0'\] match no Linear module .* candidates are \['4', '6'\]"):
        tc.factorize(net(), method="svd", rank=2, include="0")  # "0" is a Conv2d: svd replaces Linear layers

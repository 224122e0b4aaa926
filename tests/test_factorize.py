"""tc.factorize: new model, input untouched, ranks from the closed-form counts, patterns, report, errors."""

from __future__ import annotations

import math

import pytest
import torch
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
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for method, kw in (("svd", {"rank": 1000}), ("tucker", {"rank": 1000}), ("tt", {"rank": 1000}),
                       ("cp", {"rank": 10**6})):
        new, report = tc.factorize(model, method, **kw)
        assert new is not model
        torch.testing.assert_close(new(x), model(x), rtol=1e-10, atol=1e-10)
        assert len(report) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(type(m) in (nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential) for m in model.modules())


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5])
def test_ratio_solves_closed_form(ratio):
    model = net()
    _, rep = tc.factorize(model, "svd", ratio=ratio)
    for row in rep:
        lin = model.get_submodule(row.name)
        m, n = lin.weight.shape
        assert row.rank == max(1, math.floor(ratio * m * n / (m + n)))
        assert row.params_after == row.rank * (m + n) + m
    _, rep = tc.factorize(model, "cp", ratio=ratio, n_iter_max=2)
    for row in rep:
        t, s, kh, kw = model.get_submodule(row.name).weight.shape
        r = row.rank
        assert r * (t + s + kh + kw) <= max(ratio * t * s * kh * kw, t + s + kh + kw)
        assert (r + 1) * (t + s + kh + kw) > ratio * t * s * kh * kw or r == tc.cp_exact_rank((t, s, kh, kw))
    _, rep = tc.factorize(model, "tucker", ratio=ratio)
    for row in rep:
        t, s, kh, kw = model.get_submodule(row.name).weight.shape
        r_t, r_s = row.rank
        count = s * r_s + r_t * r_s * kh * kw + r_t * t
        assert count <= ratio * t * s * kh * kw or min(r_t, r_s) == 1  # ranks are at least 1
        # the next larger ranks in the same proportion would exceed the budget
        c = max(r_t / t, r_s / s) + 1 / min(t, s)
        assert s * c * s + (c * t) * (c * s) * kh * kw + c * t * t > ratio * t * s * kh * kw
    _, rep = tc.factorize(model, "tt", ratio=ratio)
    for row in rep:
        lin = model.get_submodule(row.name)
        assert row.params_after - lin.out_features <= max(ratio * lin.weight.numel(), 0) or max(row.rank) == 1


def test_patterns_and_report():
    model = net()
    new, rep = tc.factorize(model, "svd", rank=4, include="4")
    assert [r.name for r in rep] == ["4"]
    assert isinstance(new[4], tc.LowRankLinear) and isinstance(new[6], nn.Linear)
    assert rep[0].params_before == 384 * 60 + 60 and rep[0].params_after == 4 * (384 + 60) + 60
    assert rep[0].compression == rep[0].params_before / rep[0].params_after
    new, rep = tc.factorize(model, "tucker", rank="vbmf", exclude=["0"])
    assert [r.name for r in rep] == ["2.0"] and isinstance(new[2][0], tc.TuckerConv2d)
    new, rep = tc.factorize(model, "tucker", energy=0.9, include="2.*")
    assert [r.name for r in rep] == ["2.0"]
    new, rep = tc.factorize(model, "tt", energy=0.5, include="4")
    assert isinstance(new[4], tc.TTLinear) and new[4].in_modes == tc.tt_modes(384) == (8, 8, 6)
    y = new(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10)


def test_follows_device_and_dtype(device, dtype):
    model = net(dtype).to(device)
    x = torch.randn(2, 3, 8, 8, device=device, dtype=dtype)
    for method in ("svd", "cp", "tucker", "tt"):
        new, _ = tc.factorize(model, method, ratio=0.3, n_iter_max=2)
        assert all(p.device == x.device and p.dtype == dtype for p in new.parameters())
        assert new(x).shape == (2, 10)


def test_errors():
    model = net()
    with pytest.raises(ValueError, match="method must be one of .* got 'qr'"):
        tc.factorize(model, "qr", rank=2)
    with pytest.raises(ValueError, match="exactly one of rank, ratio, energy"):
        tc.factorize(model, "svd", rank=2, ratio=0.5)
    with pytest.raises(ValueError, match="exactly one of rank, ratio, energy; got none"):
        tc.factorize(model, "svd")
    with pytest.raises(ValueError, match=r"ratio must be a float in \(0, 1\], got 2"):
        tc.factorize(model, "svd", ratio=2)
    with pytest.raises(ValueError, match="energy is not defined for method='cp'"):
        tc.factorize(model, "cp", energy=0.9)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        tc.factorize("net", "svd", rank=2)

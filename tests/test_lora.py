"""LoRA adapters: LoRALinear against its formula, add_lora (equal to the base at initialisation, only adapters
trainable, parameter counts by formula), merge_lora (equal outputs, quantized bases refused), devices, dtypes,
errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_model_unchanged, mlp, model_state, randn, tied_mlp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc

L = tc.layers


def trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with every adapter's B drawn at random, as after fine-tuning (B = 0 would hide the update)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, L.LoRALinear):
                b = m.lora_b.weight
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64).to(b.dtype))
    return model


def small_gpt(**kw) -> nn.Module:
    torch.manual_seed(0)
    return tc.models.TinyGPT(11, d_model=64, n_layers=1, n_heads=2, context=8, **kw)


# ---------------------------------------------------------------- LoRALinear


@given(n=st.integers(1, 12), m=st.integers(1, 12), seed=st.integers(0, 2**16), data=st.data())
def test_forward_is_base_plus_scaled_low_rank_update(n, m, seed, data):
    r = data.draw(st.integers(1, min(m, n)))
    alpha = data.draw(st.sampled_from([None, 1.0, 16.0]))
    torch.manual_seed(seed)
    base = nn.Linear(n, m).double()
    layer = trained(L.LoRALinear(base, rank=r, alpha=alpha, seed=seed), seed)
    x = randn((5, 3, n), seed)
    a, b = layer.lora_a.weight, layer.lora_b.weight
    scale = (r if alpha is None else alpha) / r
    assert layer.scaling == scale and a.shape == (r, n) and b.shape == (m, r)
    torch.testing.assert_close(layer(x), x @ base.weight.T + base.bias + scale * (x @ a.T @ b.T), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(layer.delta_weight(), scale * b.detach() @ a.detach(), rtol=1e-12, atol=1e-12)


def test_initialisation_is_seeded_kaiming_uniform_and_zero():
    base = nn.Linear(50, 20)
    layer = L.LoRALinear(base, rank=6, seed=3)
    a = layer.lora_a.weight
    assert a.abs().max() <= 1 / math.sqrt(50) and a.abs().max() > 0.8 / math.sqrt(50)  # nn.Linear's bound 1/√fan_in
    assert torch.equal(layer.lora_b.weight, torch.zeros(20, 6))
    assert torch.equal(L.LoRALinear(nn.Linear(50, 20), rank=6, seed=3).lora_a.weight, a)
    assert not torch.equal(L.LoRALinear(nn.Linear(50, 20), rank=6, seed=4).lora_a.weight, a)
    assert isinstance(layer.lora_a, nn.Linear) and layer.lora_a.bias is None and layer.lora_b.bias is None
    assert layer.base is base and not any(p.requires_grad for p in base.parameters())
    assert "rank=6" in repr(layer) and "alpha=6" in repr(layer)


def test_follows_device_and_dtype(device, dtype):
    base = nn.Linear(9, 7).to(device=device, dtype=dtype)
    layer = trained(L.LoRALinear(base, rank=3, alpha=6.0))
    assert all(p.device == base.weight.device and p.dtype == dtype for p in layer.parameters())
    cpu = L.LoRALinear(nn.Linear(9, 7), rank=3)  # one seed, one A on every device and dtype
    torch.testing.assert_close(layer.lora_a.weight.cpu().float(), cpu.lora_a.weight, rtol=0, atol=1e-7)
    x = randn((4, 9), 1, device, dtype)
    want = base(x) + 2.0 * (x @ layer.lora_a.weight.T @ layer.lora_b.weight.T)
    torch.testing.assert_close(layer(x), want)
    merged = layer.merged()
    assert type(merged) is nn.Linear and merged.weight.device == base.weight.device and merged.weight.dtype == dtype
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5
                               if dtype == torch.float32 else 1e-12)


def test_half_precision_merge_computes_in_float32():
    base = nn.Linear(16, 8).to(torch.bfloat16)
    layer = trained(L.LoRALinear(base, rank=4))
    want = (base.weight.float() + layer.lora_b.weight.float() @ layer.lora_a.weight.float()).to(torch.bfloat16)
    assert torch.equal(layer.merged().weight, want)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"rank": 0}, ValueError, r"rank must be between 1 and 4 \(min\(in_features, out_features\) = 4\), got 0"),
    ({"rank": 5}, ValueError, r"rank must be between 1 and 4.*got 5"),
    ({"rank": 2.0}, TypeError, "rank must be an int"),
    ({"rank": True}, TypeError, "rank must be an int"),
    ({"rank": 2, "alpha": 0}, ValueError, "alpha must be > 0"),
    ({"rank": 2, "alpha": "1"}, TypeError, "alpha must be a real number"),
    ({"rank": 2, "alpha": math.nan}, ValueError, "alpha must be finite"),
    ({"rank": 2, "seed": -1}, ValueError, "seed"),
])
def test_layer_refuses_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        L.LoRALinear(nn.Linear(6, 4), **kwargs)


def test_layer_refuses_a_base_without_features():
    with pytest.raises(TypeError, match="base must have a positive int in_features.*Conv2d"):
        L.LoRALinear(nn.Conv2d(3, 4, 3), rank=1)
    with pytest.raises(TypeError, match="base must be a torch.nn.Module.*Tensor"):
        L.LoRALinear(torch.ones(3, 3), rank=1)


# ---------------------------------------------------------------- add_lora


def test_adapted_model_equals_its_base_at_initialisation_and_input_untouched():
    model, x = small_gpt(), torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    before = model_state(model)
    adapted, report = L.add_lora(model, rank=4)
    assert_model_unchanged(model, before)
    assert torch.equal(adapted(x), model(x))
    assert [row.name for row in report] == [f"blocks.0.{n}" for n in ("attn.q", "attn.k", "attn.v", "attn.o",
                                                                      "mlp.fc1", "mlp.fc2")] + ["head"]
    assert all(isinstance(r, L.LoRALayer) and r.rank == 4 and r.alpha == 4.0 for r in report)
    assert all(r.type_before == "Linear" and r.type_after == "LoRALinear" for r in report)


def test_only_adapters_are_trainable_and_training_moves_only_them():
    model, x = small_gpt(), torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(2))
    adapted, report = L.add_lora(model, rank=2, include="blocks.*")
    names = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert names == {f"blocks.0.{layer}.lora_{ab}.weight" for layer in ("attn.q", "attn.k", "attn.v", "attn.o",
                                                                        "mlp.fc1", "mlp.fc2") for ab in "ab"}
    frozen = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(adapted(x).reshape(-1, 11), x.roll(-1, 1).reshape(-1)).backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in adapted.named_parameters() if n in frozen)
    assert not torch.equal(adapted(x), model(x))
    assert report.trainable == sum(p.numel() for n, p in adapted.named_parameters() if n in names)


def test_parameter_counts_by_formula_on_the_shipped_language_models_shape():
    d, n_layers, vocab, context = 128, 4, 103, 128
    model = tc.models.TinyGPT(vocab, d_model=d, n_layers=n_layers, n_heads=4, context=context)
    base = n_layers * (12 * d * d + 13 * d) + vocab * d + context * d + 2 * d + d * vocab  # the model's docstring
    assert sum(p.numel() for p in model.parameters()) == base
    _, report = L.add_lora(model, rank=8, include="blocks.*")
    adapters = n_layers * 8 * (4 * (d + d) + 2 * (d + 4 * d))  # r(m + n) for q, k, v, o, fc1, fc2
    assert (report.trainable, report.total) == (adapters, base + adapters) == (73_728, 909_824)
    assert round(100 * report.fraction_of_base, 1) == 8.8 and round(100 * report.fraction, 1) == 8.1
    _, report = L.add_lora(model, rank=4, include="blocks.*.attn.*")
    assert report.trainable == n_layers * 4 * 4 * (2 * d) and report.fraction < 0.05
    assert "16,384 of 852,480 parameters trainable (1.92 %; 1.96 % of the base model's 836,096)" in str(report)
    assert len(report) == 16 and report[0].name == "blocks.0.attn.q"


def test_a_tied_weight_stays_tied_and_merging_it_is_refused():
    model = tied_mlp()
    adapted, _ = L.add_lora(model, rank=2)
    assert adapted[0].base.weight is adapted[2].base.weight
    with pytest.raises(ValueError, match="0.base.weight.*2.base.weight|2.base.weight.*0.base.weight"):
        L.merge_lora(adapted)


def test_nested_linear_maps_get_one_adapter_outside():
    model = nn.Sequential(tc.LowRankLinear(8, 6, 2), nn.ReLU(), nn.Linear(6, 3))
    adapted, report = L.add_lora(model, rank=2)
    assert [r.name for r in report] == ["0", "2"] and isinstance(adapted[0].base, tc.LowRankLinear)
    with pytest.raises(ValueError, match="add_lora: nothing to act on"):
        L.add_lora(adapted, rank=1)  # layers inside adapters are no candidates


def test_multihead_attention_projections_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True))
    adapted, report = L.add_lora(model, rank=2)
    assert [r.name for r in report] == ["0"] and type(adapted[1].out_proj) is type(model[1].out_proj)


def test_add_lora_refuses_bad_input():
    model = mlp(6, 4, 3, seed=0)
    with pytest.raises(ValueError, match=r"rank=4 exceeds min\(in_features, out_features\) of layers \[\('2', 3\)\]"):
        L.add_lora(model, rank=4)
    with pytest.raises(ValueError, match="rank must be between 1"):
        L.add_lora(model, rank=0)
    with pytest.raises(TypeError, match="rank must be an int"):
        L.add_lora(model, rank=None)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        L.add_lora("model", rank=1)
    with pytest.raises(ValueError, match="add_lora: nothing to act on, the model has no"):
        L.add_lora(nn.Sequential(nn.ReLU()), rank=1)


# ---------------------------------------------------------------- merge_lora


def test_merged_model_equals_the_adapted_one(device, dtype):
    model = small_gpt().to(device=device, dtype=dtype)
    adapted = trained(L.add_lora(model, rank=4, alpha=8.0)[0], 3)
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(4)).to(device)
    before = model_state(adapted)
    merged, rows = L.merge_lora(adapted)
    assert_model_unchanged(adapted, before)
    assert not any(isinstance(m, L.LoRALinear) for m in merged.modules()) and len(rows) == 7
    assert all(type(m) in (nn.Linear, nn.LayerNorm, nn.Embedding) or not list(m.parameters(recurse=False))
               for m in merged.modules())
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in model.parameters())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(merged(x), adapted(x), rtol=tol, atol=tol)
    assert not torch.allclose(merged(x), model(x))
    assert all(p.device == x.device and p.dtype == dtype and not p.requires_grad for p in merged.parameters())
    q = merged.blocks[0].attn.q
    ad = adapted.blocks[0].attn.q
    torch.testing.assert_close(q.weight, ad.base.weight + 2.0 * ad.lora_b.weight @ ad.lora_a.weight, rtol=tol,
                               atol=tol)


def test_merge_by_pattern_keeps_the_others():
    adapted = trained(L.add_lora(mlp(6, 5, 4, seed=1), rank=2)[0])
    merged, rows = L.merge_lora(adapted, include="0")
    assert [r.name for r in rows] == ["0"] and type(merged[0]) is nn.Linear
    assert isinstance(merged[2], L.LoRALinear) and rows[0].rank == 2


def test_a_quantized_base_keeps_its_adapters_and_merging_it_is_refused():
    model = small_gpt()
    nf4, _ = tc.quantization.quantize_weights(model, bits=4, method="nf4", group_size=16, include="blocks.*")
    adapted, report = L.add_lora(nf4, rank=4)  # QLoRA: adapters over NF4 weights
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(adapted(x), nf4(x))
    assert type(adapted.blocks[0].attn.q.base).__name__ == "WeightOnlyLinear" and len(report) == 7
    assert report.trainable == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    trained(adapted)
    with pytest.raises(ValueError, match=r"bases of \['blocks.0.attn.q \(WeightOnlyLinear\)'.*not nn.Linear.*"
                                         r"Keep those adapters.*exclude=.*bytes beside the base's"):
        L.merge_lora(adapted)
    merged, rows = L.merge_lora(adapted, include="head")
    assert [r.name for r in rows] == ["head"]
    torch.testing.assert_close(merged(x), adapted(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="only an nn.Linear base can absorb its adapters, got WeightOnlyLinear"):
        adapted.blocks[0].attn.q.merged()


def test_merge_lora_refuses_bad_input():
    with pytest.raises(ValueError, match="merge_lora: nothing to act on, the model has no LoRALinear"):
        L.merge_lora(mlp(4, 4, 2, seed=0))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        L.merge_lora(None)

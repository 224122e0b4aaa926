"""Wanda and SparseGPT: Wanda's mask against the score written out by hand; sparsegpt_layer against a
column-by-column float64 transcription of Algorithm 1 in the Optimal Brain Surgeon form (a fresh inverse of the
remaining Hessian at every step, no Cholesky factor, no lazy blocks); SparseGPT's output error against the same mask
without the update and against magnitude pruning on correlated inputs with outlier features; the whole models layer
by layer on the inputs of the already pruned earlier layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from helpers import assert_model_unchanged, correlated_inputs, hessian_of, model_state, randn, tied_mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress import pruning as P

# ---------------------------------------------------------------------------------------------------------------
# Wanda


def hand_wanda_mask(w: torch.Tensor, x: torch.Tensor, amount: float | None, nm: tuple[int, int] | None):
    """Score |W_ij| * ||X_j||_2 over every token; per row drop the round(amount * n) lowest (ties by index), or
    per group of m consecutive inputs keep the n highest."""
    norms = x.reshape(-1, x.shape[-1]).double().square().sum(0).sqrt()
    score = w.double().abs() * norms
    mask = torch.ones_like(score)
    rows, cols = score.shape
    for r in range(rows):
        if nm is None:
            order = sorted(range(cols), key=lambda j: (float(score[r, j]), j))
            for j in order[:round(amount * cols)]:
                mask[r, j] = 0
        else:
            n, m = nm
            for start in range(0, cols, m):
                group = sorted(range(start, start + m), key=lambda j: -float(score[r, j]))
                for j in group[n:]:
                    mask[r, j] = 0
    return mask


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 9), groups=st.integers(1, 6), tokens=st.integers(1, 5), seed=st.integers(0, 2**16),
       amount=st.sampled_from([0.0, 0.25, 0.5, 0.7, 0.9]), nm=st.sampled_from([None, (2, 4), (1, 4)]))
def test_wanda_mask_is_the_score_written_out(out, groups, tokens, seed, amount, nm):
    n_in = 4 * groups
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, out)).double()
    x = correlated_inputs(3 * tokens, n_in, seed).reshape(3, tokens, n_in)
    new, (row,) = P.wanda(model, x, amount=None if nm else amount, structure=nm)
    expected = hand_wanda_mask(model[0].weight.detach(), x, amount, nm)
    assert torch.equal(new[0].weight_mask, expected)
    assert torch.equal(new[0].weight_orig, model[0].weight) and tprune.is_pruned(new)  # a mask only, through prune
    assert row.sparsity == round(float((expected == 0).double().mean()), 4)
    assert row.method == "wanda" and row.pattern == ("unstructured" if nm is None else f"{nm[0]}:{nm[1]}")


def test_wanda_weighs_the_inputs():
    # equal weights, one input 10x larger: its weights survive, unlike magnitude pruning's tie-breaking by index
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    x = torch.ones(5, 4)
    x[:, 3] = 10
    new, _ = P.wanda(model, x, amount=0.5)
    assert torch.equal(new[0].weight_mask, torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]))


# ---------------------------------------------------------------------------------------------------------------
# sparsegpt_layer


def obs_reference(weight, hessian, *, amount=None, nm=None, damp=0.01, block=128):
    """Algorithm 1, one column at a time, in float64. Column c's saliency is w_c^2 / [H_Fc^-1]_cc with F_c the
    columns from c on (U_cc^2 of the factor); the mask of a block of columns is chosen when its first column is
    reached (exactly round(amount * size) lowest, ties by row-major index), an N:M group's when it is reached;
    then each column is zeroed where masked and the remaining columns F move by -(w_j - q_j) / [H_F^-1]_jj *
    (H_F^-1)_j,: with H_F^-1 inverted afresh."""
    w, h = weight.double().clone(), hessian.double().clone()
    m, n = w.shape
    dead = h.diag() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * h.diag().mean() * torch.eye(n, dtype=torch.float64)
    diag = torch.tensor([torch.linalg.inv(h[c:, c:])[0, 0] for c in range(n)], dtype=torch.float64)
    mask = torch.ones(m, n, dtype=torch.float64)
    for j in range(n):
        if nm is None and j % block == 0:
            cols = range(j, min(j + block, n))
            sal = {(r, c): float(w[r, c] ** 2 / diag[c]) for r in range(m) for c in cols}
            order = sorted(sal, key=lambda rc: (sal[rc], rc))
            for r, c in order[:round(amount * len(sal))]:
                mask[r, c] = 0
        if nm is not None and j % nm[1] == 0:
            for r in range(m):
                group = sorted(range(j, j + nm[1]), key=lambda c: -float(w[r, c] ** 2 / diag[c]))
                for c in group[nm[0]:]:
                    mask[r, c] = 0
        hinv = torch.linalg.inv(h[j:, j:])
        q = w[:, j] * mask[:, j]
        err = (w[:, j] - q) / hinv[0, 0]
        w[:, j:] -= err[:, None] * hinv[0][None, :]
        w[:, j] = q
    return w


LAYER_CASES = [  # (m, n, amount, nm, block_size)
    (6, 16, 0.5, None, 128),
    (5, 24, 0.3, None, 8),  # three blocks
    (4, 20, 0.6, None, 7),  # a ragged last block
    (6, 16, None, (2, 4), 128),
    (3, 24, None, (1, 3), 8),  # block 8 rounded down to 6 = two groups of 3
]


@pytest.mark.parametrize("m, n, amount, nm, block", LAYER_CASES)
def test_sparsegpt_layer_equals_the_column_by_column_transcription(m, n, amount, nm, block):
    x = correlated_inputs(4 * n, n, seed=n + m)
    x[:, 2] = 0  # a dead input
    h = hessian_of(x)
    w = randn((m, n), seed=m)
    ref_block = block if nm is None else max(1, block // nm[1]) * nm[1]
    ref = obs_reference(w, h, amount=amount, nm=nm, block=ref_block)
    got = P.sparsegpt_layer(w, h, amount=amount, structure=nm, block_size=block)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    assert torch.equal(got == 0, ref == 0)


@pytest.mark.parametrize("amount, nm", [(0.5, None), (0.75, None), (None, (2, 4)), (None, (1, 2))])
def test_sparsegpt_layer_keeps_the_exact_sparsity_or_pattern(amount, nm, device, dtype):
    w = randn((16, 64), 3, device=device, dtype=dtype)
    h = hessian_of(correlated_inputs(256, 64, 4, dtype=dtype).to(device))
    w0, h0 = w.clone(), h.clone()
    got = P.sparsegpt_layer(w, h, amount=amount, structure=nm, block_size=16)
    assert torch.equal(w, w0) and torch.equal(h, h0)  # input untouched
    assert got.dtype == dtype and got.device == w.device
    zero = (got == 0).reshape(16, 4, 16)  # per block of 16 columns
    if nm is None:
        assert (zero.sum((0, 2)) == round(amount * 256)).all()
    else:
        n, m = nm
        assert ((got != 0).reshape(16, -1, m).sum(-1) == n).all()


def test_sparsegpt_layer_float32_follows_float64_and_half_is_computed_in_float32():
    w = randn((8, 32), 5)
    x = correlated_inputs(128, 32, 6)
    h = hessian_of(x)
    ref = P.sparsegpt_layer(w, h, amount=0.5)
    got = P.sparsegpt_layer(w.float(), h.float(), amount=0.5)
    e_ref, e_got = (float(((w - v.double()) @ x.T).norm()) for v in (ref, got))
    assert abs(e_got - e_ref) <= 1e-3 * e_ref and (got == 0).double().mean() == 0.5
    half = P.sparsegpt_layer(w.half(), h.half(), amount=0.5)
    assert half.dtype == torch.float16 and (half == 0).double().mean() == 0.5


def output_error(w, what, x):
    return float(((w - what) @ x.T).norm())


def magnitude_mask(w: torch.Tensor, amount: float | None, nm: tuple[int, int] | None) -> torch.Tensor:
    if nm is not None:
        return P.nm_mask(w, *nm)
    mask = torch.ones_like(w)
    mask.view(-1)[w.abs().reshape(-1).argsort()[:round(amount * w.numel())]] = 0
    return mask


@pytest.mark.parametrize("m, n, amount, nm", [(32, 64, 0.5, None), (16, 128, 0.7, None), (32, 64, None, (2, 4))])
def test_sparsegpt_beats_its_mask_alone_which_beats_magnitude(m, n, amount, nm):
    wins, errors = 0, torch.zeros(3)
    for seed in range(20):
        x = correlated_inputs(4 * n, n, seed=3000 + seed, dtype=torch.float32)
        w = randn((m, n), seed=4000 + seed, dtype=torch.float32)
        sp = P.sparsegpt_layer(w, hessian_of(x), amount=amount, structure=nm, block_size=32)
        e = torch.tensor([output_error(w, sp, x), output_error(w, w * (sp != 0), x),
                          output_error(w, w * magnitude_mask(w, amount, nm), x)])
        wins += bool(e[0] < e[1] < e[2])
        errors += e
    assert wins >= 19 and errors[0] < errors[1] < errors[2], (wins, errors / errors[2])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"amount": 1.0}, ValueError, r"amount must be a fraction in \[0, 1\), got 1.0"),
    ({"amount": -0.1}, ValueError, r"amount must be a fraction"),
    ({"amount": "half"}, TypeError, r"amount"),
    ({"amount": None}, ValueError, r"amount must be given"),
    ({"amount": 0.6, "structure": (2, 4)}, ValueError, r"amount must be None \(or 0.5\) for an 2:4"),
    ({"amount": None, "structure": (2, 3)}, ValueError, r"2:3 pattern needs the inputs to be a multiple of m=3; "
                                                         r"the 8 inputs of weight"),
    ({"amount": None, "structure": (3, 2)}, ValueError, r"n <= m"),
    ({"amount": None, "structure": "filters"}, ValueError, r"structure must be None \(unstructured\) or an \(n, m\)"),
    ({"amount": 0.5, "damp": 2.0}, ValueError, r"damp must be in \[0, 1\]"),
    ({"amount": 0.5, "block_size": 0}, ValueError, r"block_size"),
])
def test_sparsegpt_layer_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        P.sparsegpt_layer(torch.randn(4, 8), torch.eye(8), **kwargs)


def test_sparsegpt_layer_bad_weight_or_hessian():
    with pytest.raises(ValueError, match=r"hessian must be \(8, 8\)"):
        P.sparsegpt_layer(torch.randn(4, 8), torch.eye(7), amount=0.5)
    with pytest.raises(TypeError, match=r"weight must have a floating point dtype"):
        P.sparsegpt_layer(torch.ones(4, 8, dtype=torch.int64), torch.eye(8), amount=0.5)
    with pytest.raises(ValueError, match=r"weight must be a matrix"):
        P.sparsegpt_layer(torch.randn(4, 8, 1), torch.eye(8), amount=0.5)
    with pytest.raises(ValueError, match=r"not positive definite"):
        P.sparsegpt_layer(torch.randn(4, 8), -torch.eye(8), amount=0.5, damp=0.0)


# ---------------------------------------------------------------------------------------------------------------
# whole models


def block(*, seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)).to(dtype)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_each_layer_is_pruned_on_the_inputs_of_the_pruned_earlier_ones(method, device, dtype):
    model = block(dtype=dtype).to(device)
    x = randn((8, 6, 16), 7, device=device, dtype=dtype)
    before = model_state(model)
    new, rows = getattr(P, method)(model, x, amount=0.5)
    assert_model_unchanged(model, before)
    assert [r.name for r in rows] == ["1", "3"] and all(isinstance(r, P.CalibratedPrunedLayer) for r in rows)
    assert all(r.method == method and r.pattern == "unstructured" and r.sparsity == 0.5 for r in rows)
    assert all(0 < r.output_error < 1 and r.compression < 1 for r in rows)
    assert new[1].weight_orig.device == x.device and new[1].weight_orig.dtype == dtype
    # by hand: layer 1 on the LayerNorm's outputs, layer 3 on what the *pruned* layer 1 gives through GELU
    inputs = tc.surgery.capture_inputs(new, x, ["1", "3"])
    for name, x_in in inputs.items():
        x_in = x_in.reshape(-1, x_in.shape[-1])
        w = getattr(model, name).weight.detach()
        if method == "sparsegpt":
            expected = P.sparsegpt_layer(w, hessian_of(x_in), amount=0.5)
            torch.testing.assert_close(getattr(new, name).weight_orig, expected, rtol=1e-4, atol=1e-5)
            assert torch.equal(getattr(new, name).weight_mask, (getattr(new, name).weight_orig != 0).to(dtype))
        else:
            expected = hand_wanda_mask(w.cpu(), x_in.cpu(), 0.5, None).to(device=device, dtype=dtype)
            assert torch.equal(getattr(new, name).weight_mask, expected)
        y = getattr(new, name)(x_in)
        assert torch.allclose(y, nn.functional.linear(x_in, getattr(new, name).weight_orig * expected.ne(0),
                                                      getattr(model, name).bias), atol=1e-5)


def tiny_lm() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = tc.models.TinyGPT(40, d_model=64, n_layers=2, n_heads=2, context=16).eval()
    return model, torch.randint(0, 40, (6, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method, amount, nm", [("wanda", 0.5, None), ("sparsegpt", 0.5, None),
                                                ("wanda", None, (2, 4)), ("sparsegpt", None, (2, 4))])
def test_a_tiny_language_model(method, amount, nm):
    model, tokens = tiny_lm()
    before = model_state(model)
    new, rows = getattr(P, method)(model, tokens, amount=amount, structure=nm)
    assert_model_unchanged(model, before)
    linears = tc.surgery.select(model, nn.Linear)
    assert [r.name for r in rows] == [s.name for s in linears]
    for sel in tc.surgery.select(new, nn.Linear):
        w = sel.module.weight
        assert tprune.is_pruned(sel.module)
        if nm is None:
            assert float((w == 0).double().mean()) == 0.5
        else:
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()
    assert all(0 < r.output_error < 1 for r in rows)
    with torch.no_grad():
        assert torch.isfinite(new(tokens)).all()


def test_sparsegpt_beats_wanda_and_magnitude_on_the_model_output():
    model, tokens = tiny_lm()
    with torch.no_grad():
        ref = model(tokens)
        errors = {}
        for name, pruned in [("magnitude", P.prune(model, amount=0.5, types=(nn.Linear,))[0]),
                             ("wanda", P.wanda(model, tokens, amount=0.5)[0]),
                             ("sparsegpt", P.sparsegpt(model, tokens, amount=0.5)[0])]:
            errors[name] = float((pruned(tokens) - ref).norm() / ref.norm())
    assert errors["sparsegpt"] < errors["magnitude"] and errors["wanda"] < errors["magnitude"], errors


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_whole_model_bad_input(method):
    fn = getattr(P, method)
    with pytest.raises(ValueError, match=r"calibration is empty"):
        fn(block(), [], amount=0.5)
    with pytest.raises(ValueError, match=r"calibration is empty"):
        fn(block(), torch.empty(0, 16), amount=0.5)
    with pytest.raises(ValueError, match=rf"{method}: nothing to act on, the model has no Linear module"):
        fn(nn.Sequential(nn.ReLU()), torch.randn(2, 4), amount=0.5)
    with pytest.raises(ValueError, match=r"3:5 pattern needs the inputs to be a multiple of m=5; the 16 inputs of "
                                         r"layer '1' are not"):
        fn(block(), torch.randn(2, 16), amount=None, structure=(3, 5), include="1")
    with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\)"):
        fn(block(), torch.randn(2, 16), amount=1.0)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        fn("model", torch.randn(2, 16), amount=0.5)
    with pytest.raises(ValueError, match=r"0.weight.*tied to.*2.weight"):
        fn(tied_mlp(), torch.randn(2, 8), amount=0.5)


def test_a_layer_pruned_before_stays_pruned():
    model, _ = P.prune(block(), amount=0.8, include="1")
    new, rows = P.wanda(model, torch.randn(4, 16), amount=0.5, include="1")
    assert torch.equal(new[1].weight_mask, new[1].weight_mask * model[1].weight_mask)
    assert rows[0].sparsity >= 0.8


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_pruned_in_float32(half):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).to(half)
    g = torch.Generator().manual_seed(9)
    x = ((torch.rand(64, 16, generator=g) * 2 - 1) * 3e4).to(half)  # ||X_j|| over the tokens > float16's maximum
    for method in ("wanda", "sparsegpt"):
        new, rows = getattr(P, method)(model, x, amount=0.5)
        ref, _ = getattr(P, method)(copy.deepcopy(model).float(), x.float(), amount=0.5)  # the same values
        assert new[0].weight_orig.dtype == half and rows[0].sparsity == 0.5
        assert torch.equal(new[0].weight_mask.float(), ref[0].weight_mask), method

"""GPTQ: gptq_layer against a column-by-column float64 transcription of Algorithm 1 written in the Optimal Brain
Surgeon form (a fresh inverse of the remaining Hessian at every step, no Cholesky factor, no lazy blocks), its
output error against RTN's on correlated inputs with outlier features, and the whole-model gptq layer by layer."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_model_unchanged, correlated_inputs, hessian_of, model_state, randn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tensorcompress import quantization as Q


def hand_minmax(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``w``: scale and zero point of the min-max grid widened to hold 0 (rows of zeros: [-1, 1])."""
    lo = torch.minimum(w.min(1).values, torch.zeros(()))
    hi = torch.maximum(w.max(1).values, torch.zeros(()))
    both = (lo == 0) & (hi == 0)
    lo[both], hi[both] = -1.0, 1.0
    scale = (hi - lo) / (2**bits - 1)
    return scale, torch.round(-lo / scale)


def obs_reference(weight, hessian, *, bits, group_size=None, damp=0.01, act_order=False):
    """Algorithm 1, one column at a time, in float64: quantize column j on its group's grid, then move every
    remaining column F by the OBS update -(w_j - q_j) / [H_F^-1]_jj * (H_F^-1)_j,: with H_F^-1 inverted afresh."""
    w, h = weight.double().clone(), hessian.double().clone()
    m, n = w.shape
    g = n if group_size is None else group_size
    maxq = 2**bits - 1
    dead = h.diag() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * h.diag().mean() * torch.eye(n, dtype=torch.float64)
    order = torch.argsort(h.diag(), descending=True, stable=True).tolist() if act_order else list(range(n))
    grids = {}
    if act_order or g == n:  # static grids from the weights before any update
        grids = {k: hand_minmax(w[:, k * g:(k + 1) * g], bits) for k in range(n // g)}
    codes = torch.zeros(m, n, dtype=torch.int64)
    q = torch.zeros(m, n, dtype=torch.float64)
    remaining = list(order)
    for j in order:
        if not (act_order or g == n) and j % g == 0:
            grids[j // g] = hand_minmax(w[:, j:j + g], bits)
        scale, zero = grids[j // g]
        codes[:, j] = torch.clamp(torch.round(w[:, j] / scale) + zero, 0, maxq).long()
        q[:, j] = scale * (codes[:, j] - zero)
        hinv = torch.linalg.inv(h[remaining][:, remaining])  # j is remaining[0]
        err = (w[:, j] - q[:, j]) / hinv[0, 0]
        w[:, remaining] -= err[:, None] * hinv[0][None, :]
        remaining.pop(0)
    return q, codes


CASES = [  # (m, n, bits, group_size, act_order)
    (16, 32, 4, None, False),
    (16, 32, 3, 8, False),
    (12, 48, 2, 16, True),
    (8, 160, 4, 32, False),  # two lazy blocks, a group in the second
    (8, 256, 3, None, True),
    (10, 64, 8, 16, True),
]


@pytest.mark.parametrize("m, n, bits, group, act_order", CASES)
def test_gptq_layer_equals_the_column_by_column_transcription(m, n, bits, group, act_order, dtype):
    x = correlated_inputs(4 * n, n, seed=n + bits)
    x[:, 3] = 0  # a dead input
    h = hessian_of(x)
    w = randn((m, n), seed=bits, dtype=torch.float64)
    ref_q, ref_codes = obs_reference(w, h, bits=bits, group_size=group, act_order=act_order)
    q, codes, scales, zeros = Q.gptq_layer(w.to(dtype), h.to(dtype), bits=bits, group_size=group,
                                           act_order=act_order, return_qparams=True)
    assert q.dtype == dtype and scales.dtype == dtype and codes.dtype == zeros.dtype == torch.int64
    same = (codes == ref_codes).double().mean()
    assert same >= 0.99 and (codes - ref_codes).abs().max() <= 1, float(same)
    if dtype == torch.float64:
        assert same == 1
        torch.testing.assert_close(q, ref_q, rtol=1e-9, atol=1e-9)
    assert bool((q[:, 3] == 0).all())  # the dead input's weights are 0
    g = n if group is None else group
    k = n // g
    rebuilt = (scales.unsqueeze(-1) * (codes.reshape(m, k, g) - zeros.unsqueeze(-1))).reshape(m, n)
    torch.testing.assert_close(q, rebuilt.to(dtype), rtol=0, atol=0)


def output_error(w, q, x):
    return float(((w - q) @ x.T).norm())


@pytest.mark.parametrize("m, n, bits, group, act_order", CASES)
def test_gptq_beats_rtn_on_correlated_inputs_with_outliers(m, n, bits, group, act_order):
    wins, g_err, r_err = 0, 0.0, 0.0
    for seed in range(20):
        x = correlated_inputs(4 * n, n, seed=1000 + seed, dtype=torch.float32)
        w = randn((m, n), seed=2000 + seed, dtype=torch.float32)
        gq = Q.gptq_layer(w, hessian_of(x), bits=bits, group_size=group, act_order=act_order)
        e_g, e_r = output_error(w, gq, x), output_error(w, Q.rtn(w, bits, group), x)
        wins += e_g < e_r
        g_err, r_err = g_err + e_g, r_err + e_r
    assert wins >= 19 and g_err < r_err, (wins, g_err / r_err)


@given(bits=st.integers(2, 8), group=st.sampled_from([None, 4, 8, 16]), seed=st.integers(0, 2**16),
       act_order=st.booleans())
def test_gptq_layer_codes_lie_on_the_grid(bits, group, seed, act_order):
    x = correlated_inputs(48, 16, seed)
    w = randn((5, 16), seed + 1)
    q, codes, scales, zeros = Q.gptq_layer(w, hessian_of(x), bits=bits, group_size=group, act_order=act_order,
                                           return_qparams=True)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    assert int(zeros.min()) >= 0 and int(zeros.max()) <= 2**bits - 1 and bool((scales > 0).all())
    assert q.shape == w.shape and bool(torch.isfinite(q).all())


def test_gptq_layer_with_an_identity_hessian_is_rtn():
    # H = I: no correlation to exploit; with damp = 0 each column's error moves nothing else
    w = randn((6, 32), 4)
    q = Q.gptq_layer(w, torch.eye(32, dtype=torch.float64), bits=3, group_size=8, damp=0.0)
    torch.testing.assert_close(q, Q.rtn(w, 3, 8), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bits": 1}, ValueError, "bits must be between 2 and 8"),
    ({"bits": 9}, ValueError, "bits must be between 2 and 8"),
    ({"bits": 4, "group_size": 5}, ValueError, "group_size=5 does not divide the 16 inputs"),
    ({"bits": 4, "damp": -0.1}, ValueError, "damp must be in"),
    ({"bits": 4, "damp": "0.1"}, TypeError, "damp must be a real number"),
    ({"bits": 4, "act_order": 1}, TypeError, "act_order must be a bool"),
])
def test_gptq_layer_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        Q.gptq_layer(randn((4, 16), 0), torch.eye(16, dtype=torch.float64), **kwargs)


def test_gptq_layer_bad_hessian():
    w = randn((4, 16), 0)
    with pytest.raises(ValueError, match=r"hessian must be \(16, 16\)"):
        Q.gptq_layer(w, torch.eye(15, dtype=torch.float64), bits=4)
    with pytest.raises(ValueError, match="not positive definite"):
        Q.gptq_layer(w, -torch.eye(16, dtype=torch.float64), bits=4, damp=0.0)
    with pytest.raises(TypeError, match="hessian must be a torch.Tensor"):
        Q.gptq_layer(w, None, bits=4)
    with pytest.raises(ValueError, match="weight must be a matrix"):
        Q.gptq_layer(w[0], torch.eye(16, dtype=torch.float64), bits=4)


# ---------------------------------------------------------------------------------------------------------------
# the whole model


def block(*, seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)).to(dtype)


def test_gptq_quantizes_each_layer_on_the_inputs_of_the_quantized_earlier_ones(dtype):
    model = block(dtype=dtype)
    x = randn((8, 6, 16), 7, dtype=dtype)
    before = model_state(model)
    q, rows = Q.gptq(model, x, bits=3, group_size=8, act_order=True)
    assert_model_unchanged(model, before)
    assert [r.name for r in rows] == ["1", "3"] and all(r.method == "gptq" for r in rows)
    # by hand: layer 1 on the LayerNorm's outputs, layer 3 on what the *quantized* layer 1 gives through GELU
    with torch.no_grad():
        x1 = model[0](x).reshape(-1, 16)
        _, c1, s1, z1 = Q.gptq_layer(model[1].weight, hessian_of(x1), bits=3, group_size=8, act_order=True,
                                     return_qparams=True)
        layer1 = Q.WeightOnlyLinear.from_codes(c1, s1, z1, model[1].bias, bits=3)
        x3 = nn.functional.gelu(layer1(model[0](x))).reshape(-1, 32)
        _, c3, _, _ = Q.gptq_layer(model[3].weight, hessian_of(x3), bits=3, group_size=8, act_order=True,
                                   return_qparams=True)
    assert torch.equal(q[1].code_matrix(), c1) and torch.equal(q[1].scales, layer1.scales)
    same = (q[3].code_matrix() == c3).double().mean()  # the Hessian summed in float64 here, per batch there
    assert same >= 0.99
    assert rows[1].output_error is not None and 0 < rows[1].output_error < rows[1].weight_error + 1


def test_gptq_reads_calibration_as_calibrate_does_and_shares_one_pass_per_input():
    model = block()
    data = torch.utils.data.TensorDataset(randn((12, 16), 1, dtype=torch.float32), torch.zeros(12))
    a, _ = Q.gptq(model, data, bits=4)
    b, _ = Q.gptq(model, [(randn((12, 16), 1, dtype=torch.float32), None)], bits=4)
    c, _ = Q.gptq(model, iter([randn((12, 16), 1, dtype=torch.float32)]), bits=4)  # a one-shot iterable
    x = randn((3, 16), 2, dtype=torch.float32)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))


@pytest.mark.parametrize("kwargs, calibration, error, match", [
    ({"bits": 10}, "x", ValueError, "bits must be between 2 and 8"),
    ({"bits": 4, "group_size": 3}, "x", ValueError, "group_size=3 does not divide the 16 inputs of layer '1'"),
    ({"bits": 4}, [], ValueError, "calibration is empty"),
    ({"bits": 4}, torch.zeros(0, 16), ValueError, "calibration is empty"),
    ({"bits": 4}, None, TypeError, "calibration must be"),
    ({"bits": 4}, 3, TypeError, "data must be a tensor, a Dataset or an iterable"),
])
def test_gptq_bad_input(kwargs, calibration, error, match):
    model = block()
    before = model_state(model)
    data = randn((4, 16), 0, dtype=torch.float32) if isinstance(calibration, str) else calibration
    with pytest.raises(error, match=match):
        Q.gptq(model, data, **kwargs)
    assert_model_unchanged(model, before)


def test_gptq_needs_a_linear_and_refuses_a_layer_never_called():
    with pytest.raises(ValueError, match="gptq: nothing to act on, the model has no Linear module"):
        Q.gptq(nn.Sequential(nn.ReLU()), torch.zeros(2, 3), bits=4)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="layer 'spare' is never called"):
        Q.gptq(Unused(), torch.ones(2, 4), bits=4)

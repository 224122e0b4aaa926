"""kd_loss, hint_loss and attention transfer against their formulas written out with torch.nn.functional pieces."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from helpers import randn, tolerance
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import tensorcompress as tc

D = tc.distillation


def kd_by_hand(z, v, y, T, alpha):
    """α T² (1/N) Σ_n Σ_i p_i (log p_i − log q_i) + (1 − α) (1/N) Σ_n −log softmax(z_n)_{y_n}, in float64."""
    z, v = z.double(), v.double()
    p, q = torch.softmax(v / T, 1), torch.softmax(z / T, 1)
    kl = (p * (p.log() - q.log())).sum() / z.shape[0]
    if y is None:
        return T * T * kl
    ce = -torch.softmax(z, 1).log().gather(1, y[:, None]).mean()
    return alpha * T * T * kl + (1 - alpha) * ce


def grad_by_hand(z, v, y, T, alpha):
    """α T (softmax(z/T) − softmax(v/T))/N + (1 − α)(softmax(z) − onehot(y))/N."""
    n, k = z.shape
    soft = T * (torch.softmax(z / T, 1) - torch.softmax(v / T, 1)) / n
    hard = (torch.softmax(z, 1) - F.one_hot(y, k).to(z.dtype)) / n
    return alpha * soft + (1 - alpha) * hard


def logits(n, k, seed, device="cpu", dtype=torch.float64, scale=3.0):
    return scale * randn((n, k), seed, device, dtype)


def labels(n, k, seed, device="cpu"):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed)).to(device)


# ---------------------------------------------------------------- kd_loss: value and gradient


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 0.3), (0.5, 1.0), (2.0, 0.0)])
def test_kd_loss_equals_the_formula(device, dtype, T, alpha):
    z, v, y = logits(16, 10, 1, device, dtype), logits(16, 10, 2, device, dtype), labels(16, 10, 3, device)
    loss = D.kd_loss(z, v, y, T=T, alpha=alpha)
    assert loss.dtype == dtype and loss.device.type == torch.device(device).type and loss.ndim == 0
    torch.testing.assert_close(loss.double(), kd_by_hand(z, v, y, T, alpha), rtol=tolerance(dtype), atol=1e-6
                               if dtype == torch.float32 else 1e-12)


def test_kd_loss_matches_torch_pieces_with_default_arguments():
    z, v, y = logits(8, 5, 4), logits(8, 5, 5), labels(8, 5, 6)
    ref = 0.9 * 16 * F.kl_div(F.log_softmax(z / 4, 1), F.softmax(v / 4, 1), reduction="batchmean") \
        + 0.1 * F.cross_entropy(z, y)
    torch.testing.assert_close(D.kd_loss(z, v, y), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (10.0, 0.2)])
def test_kd_loss_gradient_closed_form(device, dtype, T, alpha):
    z = logits(12, 7, 7, device, dtype).requires_grad_()
    v = logits(12, 7, 8, device, dtype).requires_grad_()
    y = labels(12, 7, 9, device)
    D.kd_loss(z, v, y, T=T, alpha=alpha).backward()
    torch.testing.assert_close(z.grad, grad_by_hand(z.detach(), v.detach(), y, T, alpha),
                               rtol=tolerance(dtype), atol=1e-7 if dtype == torch.float32 else 1e-14)
    assert v.grad is None  # the teacher is a constant


def test_targets_none_is_the_soft_term_alone():
    z, v, y = logits(9, 4, 10), logits(9, 4, 11), labels(9, 4, 12)
    for alpha in (0.0, 0.3, 1.0):
        torch.testing.assert_close(D.kd_loss(z, v, None, T=3.0, alpha=alpha), D.kd_loss(z, v, y, T=3.0, alpha=1.0))
    torch.testing.assert_close(D.kd_loss(z, v, None, T=3.0), kd_by_hand(z, v, None, 3.0, 1.0))


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = logits(6, 5, 13)
    assert float(D.kd_loss(z, z.clone(), None)) == pytest.approx(0.0, abs=1e-14)
    assert float(D.kd_loss(z, logits(6, 5, 14), None)) > 0


# ---------------------------------------------------------------- kd_loss at extreme logits, drawn


def _log_softmax64(row, T):
    """log softmax(row / T) in Python floats: (x - max) - log Σ exp(x - max), the sum by fsum (subtracting the max
    first keeps the largest entries' log-probabilities exact, whatever the logits' magnitude)."""
    d = [x / T - max(row) / T for x in row]
    log_sum = math.log(math.fsum(math.exp(x) for x in d))
    return [x - log_sum for x in d]


def _kd_closed_form(z, v, y, T, alpha):
    """The loss and its gradient in z, written out row by row in float64 without torch (module docstring)."""
    n = len(z)
    soft, hard, grad = [], [], []
    for zr, vr, yr in zip(z, v, y, strict=True):
        lq, lp, l1 = _log_softmax64(zr, T), _log_softmax64(vr, T), _log_softmax64(zr, 1.0)
        soft.append(math.fsum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True)))
        hard.append(-l1[yr])
        grad.append([(alpha * T * (math.exp(b) - math.exp(a)) + (1 - alpha) * (math.exp(c) - (i == yr))) / n
                     for i, (a, b, c) in enumerate(zip(lp, lq, l1, strict=True))])
    return alpha * T * T * math.fsum(soft) / n + (1 - alpha) * math.fsum(hard) / n, grad


# moderate values, subnormals, values whose exponentials under- or overflow (±745, ±710), and huge ones; drawn from
# a pool so that ties within a row and between student and teacher are frequent
EXTREME = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2e-308, 1e-300, 1.0, 710.0,
                                                           -710.0, 745.0, -745.0, 1e12, -1e12, 1e15]))


@given(data=st.data())
def test_kd_loss_and_gradient_against_a_float64_closed_form_at_extreme_logits(data):
    n, k = data.draw(st.integers(1, 4), label="n"), data.draw(st.integers(2, 6), label="k")
    rows = st.lists(st.lists(EXTREME, min_size=k, max_size=k), min_size=n, max_size=n)
    z, v = data.draw(rows, label="z"), data.draw(rows, label="v")
    y = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n), label="y")
    T = data.draw(st.sampled_from([0.25, 1.0, 4.0, 50.0]), label="T")
    alpha = data.draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]), label="alpha")
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = D.kd_loss(zt, torch.tensor(v, dtype=torch.float64), torch.tensor(y), T=T, alpha=alpha)
    loss.backward()
    value, ref, ref_grad = float(loss.detach()), *_kd_closed_form(z, v, y, T, alpha)
    # a log-probability x_i - max - log Σ carries an absolute error of a few ulps of |x_i - max|, so a probability
    # p_i a relative one, and p_i |x_i - max| <= 1/e: T² KL is off by ulps of T · max|logit| per class, the hard term
    # by ulps of max|logit|
    eps, big = torch.finfo(torch.float64).eps, max(abs(x) for row in z + v for x in row)
    assert math.isfinite(value) and bool(torch.isfinite(zt.grad).all())
    assert abs(value - ref) <= 16 * eps * k * (T * big + T * T + big + 1) + 1e-13 * abs(ref)
    grad_tol = 16 * eps * (T + 1) * (big / T + big + k) / n
    assert torch.allclose(zt.grad, torch.tensor(ref_grad, dtype=torch.float64), rtol=0, atol=grad_tol)


@given(data=st.data())
def test_kd_loss_of_identical_logits_is_exactly_zero(data):
    n, k = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 6))
    z = torch.tensor(data.draw(st.lists(st.lists(EXTREME, min_size=k, max_size=k), min_size=n, max_size=n)),
                     dtype=torch.float64)
    T = data.draw(st.sampled_from([0.25, 1.0, 4.0, 50.0]))
    assert float(D.kd_loss(z, z.clone(), None, T=T)) == 0.0  # the same log-softmax on both sides: KL exactly 0


def centred(z):
    return z - z.mean(1, keepdim=True)


def test_high_temperature_limit_of_the_soft_gradient():
    """T(q − p)/N → (z̃ − ṽ)/(K N); the error is the next term of the expansion, [(z̃² − mean z̃²) − (ṽ² − mean ṽ²)]
    /(2 K N T), and what is left after that term shrinks as 1/T² (module docstring of losses)."""
    n, k = 5, 6
    z, v = logits(n, k, 15, scale=1.0), logits(n, k, 16, scale=1.0)
    zc, vc = centred(z), centred(v)
    limit = (zc - vc) / (k * n)
    second = ((zc**2 - (zc**2).mean(1, keepdim=True)) - (vc**2 - (vc**2).mean(1, keepdim=True))) / (2 * k * n)
    errors, residuals = [], []
    temps = [25.0, 50.0, 100.0, 200.0]
    for T in temps:
        zg = z.clone().requires_grad_()
        D.kd_loss(zg, v, None, T=T).backward()  # the soft term alone (alpha = 1)
        errors.append(float((zg.grad - limit).abs().max()))
        residuals.append(float((zg.grad - limit - second / T).abs().max()))
    for e0, e1 in zip(errors, errors[1:], strict=False):
        assert e1 / e0 == pytest.approx(0.5, rel=0.05)  # O(1/T)
    for r0, r1 in zip(residuals, residuals[1:], strict=False):
        assert r1 / r0 == pytest.approx(0.25, rel=0.05)  # O(1/T²) once the 1/T term is removed
    assert errors[-1] < 5e-3 * float(limit.abs().max())  # at T = 200 within 0.5 % of the limit


def test_soft_gradient_norm_is_flat_in_T_because_of_the_T2_factor():
    z, v = logits(8, 10, 17, scale=1.0), logits(8, 10, 18, scale=1.0)
    norms = []
    for T in (5.0, 10.0, 20.0, 40.0, 80.0):
        zg = z.clone().requires_grad_()
        D.kd_loss(zg, v, None, T=T).backward()
        norms.append(float(zg.grad.norm()))
        zg.grad = None
        (D.kd_loss(zg, v, None, T=T) / T**2).backward()  # without the factor: falls as 1/T²
        assert float(zg.grad.norm()) == pytest.approx(norms[-1] / T**2, rel=1e-10)
    assert max(norms) / min(norms) < 1.5


@given(n=st.integers(1, 12), k=st.integers(2, 12), T=st.floats(0.3, 30.0), alpha=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_kd_loss_property(n, k, T, alpha, seed):
    z = logits(n, k, seed).requires_grad_()
    v, y = logits(n, k, seed + 1), labels(n, k, seed + 2)
    loss = D.kd_loss(z, v, y, T=T, alpha=alpha)
    torch.testing.assert_close(loss, kd_by_hand(z.detach(), v, y, T, alpha), rtol=1e-10, atol=1e-12)
    loss.backward()
    torch.testing.assert_close(z.grad, grad_by_hand(z.detach(), v, y, T, alpha), rtol=1e-9, atol=1e-13)
    assert float(D.kd_loss(z.detach(), v, None, T=T)) >= -1e-12  # KL ≥ 0


def test_kd_loss_is_stable_for_extreme_logits():
    z32, v32 = logits(6, 8, 19, dtype=torch.float32, scale=500.0), logits(6, 8, 20, dtype=torch.float32, scale=500.0)
    y = labels(6, 8, 21)
    loss = D.kd_loss(z32, v32, y, T=1.0, alpha=0.5)
    p = torch.softmax(v32, 1)
    assert not torch.isfinite((p * (p.log() - torch.softmax(z32, 1).log())).sum())  # the naive formula fails here
    ref = D.kd_loss(z32.double(), v32.double(), y, T=1.0, alpha=0.5)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    # logits shifted per row change no softmax
    z, v = logits(5, 4, 22), logits(5, 4, 23)
    shift = 1e4 * torch.arange(1.0, 6.0, dtype=torch.float64)[:, None]
    torch.testing.assert_close(D.kd_loss(z + shift, v - shift, labels(5, 4, 24)), D.kd_loss(z, v, labels(5, 4, 24)),
                               rtol=1e-9, atol=1e-9)


def test_kd_loss_half_precision_computes_in_float32():
    z, v, y = logits(8, 5, 25, dtype=torch.float32), logits(8, 5, 26, dtype=torch.float32), labels(8, 5, 27)
    loss = D.kd_loss(z.half(), v.half(), y)
    assert loss.dtype == torch.float16
    torch.testing.assert_close(loss.float(), D.kd_loss(z.half().float(), v.half().float(), y).half().float())


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"T": 0.0}, ValueError, "T"),
    ({"T": -2.0}, ValueError, "T"),
    ({"T": math.nan}, TypeError, "T"),
    ({"T": True}, TypeError, "T"),
    ({"alpha": 1.5}, ValueError, "alpha"),
    ({"alpha": -0.1}, ValueError, "alpha"),
    ({"alpha": "0.5"}, TypeError, "alpha"),
])
def test_kd_loss_refuses_bad_hyperparameters(kwargs, exc, match):
    z, v = logits(4, 3, 28), logits(4, 3, 29)
    with pytest.raises(exc, match=match):
        D.kd_loss(z, v, None, **kwargs)


def test_kd_loss_refuses_bad_tensors():
    z, v, y = logits(4, 3, 30), logits(4, 3, 31), labels(4, 3, 32)
    with pytest.raises(ValueError, match="same shape.*\\(4, 3\\).*\\(4, 5\\)"):
        D.kd_loss(z, logits(4, 5, 33), y)
    with pytest.raises(ValueError, match="student_logits.*2 dimensions"):
        D.kd_loss(z[0], v[0], None)
    with pytest.raises(TypeError, match="teacher_logits.*floating"):
        D.kd_loss(z, torch.ones(4, 3, dtype=torch.int64), y)
    with pytest.raises(TypeError, match="student_logits.*torch.Tensor"):
        D.kd_loss(z.tolist(), v, y)
    with pytest.raises(ValueError, match="student_logits.*NaN"):
        D.kd_loss(torch.full((4, 3), math.nan, dtype=torch.float64), v, y)
    with pytest.raises(TypeError, match="targets.*integer"):
        D.kd_loss(z, v, y.double())
    with pytest.raises(ValueError, match="targets.*shape \\(4,\\)"):
        D.kd_loss(z, v, y[:3])
    with pytest.raises(ValueError, match="targets.*\\[0, 2\\]"):
        D.kd_loss(z, v, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="student_logits.*empty"):
        D.kd_loss(z[:0], v[:0], None)


# ---------------------------------------------------------------- kd_loss: sequence logits


def kd_as_written_before(z, v, y, T, alpha):
    """The 2-D computation as the library wrote it before sequence logits (stored notebooks hold its outputs)."""
    dtype = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
    zc, vc = z.to(dtype), v.detach().to(dtype)
    soft = F.kl_div(F.log_softmax(zc / T, dim=1), F.log_softmax(vc / T, dim=1), reduction="batchmean",
                    log_target=True) * (T * T)
    if y is None:
        return soft.to(z.dtype)
    return (alpha * soft + (1.0 - alpha) * F.cross_entropy(zc, y.to(z.device))).to(z.dtype)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0)])
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_two_dimensional_kd_loss_is_bit_identical_to_the_earlier_formula(device, dt, T, alpha):
    z, v, y = logits(16, 10, 40, device, dt), logits(16, 10, 41, device, dt), labels(16, 10, 42, device)
    for targets in (y, None):
        assert torch.equal(D.kd_loss(z, v, targets, T=T, alpha=alpha), kd_as_written_before(z, v, targets, T, alpha))
    zt = logits(10, 16, 43, device, dt).T  # a non-contiguous view goes through unchanged as well
    assert torch.equal(D.kd_loss(zt, v, y, T=T, alpha=alpha), kd_as_written_before(zt, v, y, T, alpha))


@given(b=st.integers(1, 4), L=st.integers(1, 6), k=st.integers(2, 9), seed=st.integers(0, 2**16),
       T=st.sampled_from([1.0, 2.0, 4.0]), alpha=st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_sequence_kd_loss_equals_the_flattened_one(b, L, k, seed, T, alpha):
    z, v = 3 * randn((b, L, k), seed), 3 * randn((b, L, k), seed + 1)
    y = torch.randint(0, k, (b, L), generator=torch.Generator().manual_seed(seed + 2))
    for targets, flat in ((y, y.reshape(-1)), (None, None)):
        loss = D.kd_loss(z, v, targets, T=T, alpha=alpha)
        torch.testing.assert_close(loss, D.kd_loss(z.reshape(-1, k), v.reshape(-1, k), flat, T=T, alpha=alpha),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss, kd_by_hand(z.reshape(-1, k), v.reshape(-1, k), flat, T, alpha), rtol=1e-10,
                                   atol=1e-12)


def test_sequence_kd_loss_per_token_mean_and_gradient(device, dtype):
    z = logits(6, 5, 44, device, dtype).reshape(2, 3, 5).requires_grad_(True)
    v, y = logits(6, 5, 45, device, dtype).reshape(2, 3, 5), labels(6, 5, 46, device).reshape(2, 3)
    loss = D.kd_loss(z, v, y, T=2.0, alpha=0.7)
    loss.backward()
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss.double(), kd_by_hand(z.detach().reshape(6, 5), v.reshape(6, 5), y.reshape(6), 2.0,
                                                         0.7), rtol=tolerance(dtype), atol=1e-6)
    want = grad_by_hand(z.detach().reshape(6, 5), v.reshape(6, 5), y.reshape(6), 2.0, 0.7).reshape(2, 3, 5)
    torch.testing.assert_close(z.grad, want, rtol=tolerance(dtype), atol=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("ignore_index", [-100, 7])
def test_ignored_tokens_are_left_out_of_both_terms(ignore_index):
    z, v = logits(12, 5, 47).reshape(3, 4, 5), logits(12, 5, 48).reshape(3, 4, 5)
    y = labels(12, 5, 49).reshape(3, 4)
    y[0, :2] = ignore_index
    y[2, 3] = ignore_index
    keep = y != ignore_index
    for alpha in (0.0, 0.6, 1.0):
        loss = D.kd_loss(z, v, y, T=3.0, alpha=alpha, ignore_index=ignore_index)
        torch.testing.assert_close(loss, kd_by_hand(z[keep], v[keep], y[keep], 3.0, alpha), rtol=1e-12, atol=1e-12)
    # the hard term alone is cross_entropy with the same ignore_index, averaged over the kept tokens
    torch.testing.assert_close(D.kd_loss(z, v, y, alpha=0.0, ignore_index=ignore_index),
                               F.cross_entropy(z.reshape(-1, 5), y.reshape(-1), ignore_index=ignore_index))
    flat = D.kd_loss(z.reshape(-1, 5), v.reshape(-1, 5), y.reshape(-1), alpha=0.6, ignore_index=ignore_index)
    torch.testing.assert_close(D.kd_loss(z, v, y, alpha=0.6, ignore_index=ignore_index), flat, rtol=1e-12,
                               atol=1e-12)
    z = z.clone().requires_grad_(True)
    D.kd_loss(z, v, y, ignore_index=ignore_index).backward()
    assert torch.all(z.grad[~keep] == 0) and torch.all(z.grad[keep].abs().sum(-1) > 0)


def test_sequence_kd_loss_refuses_bad_input():
    z, v = logits(6, 5, 50).reshape(2, 3, 5), logits(6, 5, 51).reshape(2, 3, 5)
    y = labels(6, 5, 52).reshape(2, 3)
    with pytest.raises(ValueError, match="targets.*shape \\(2, 3\\).*\\(6,\\)"):
        D.kd_loss(z, v, y.reshape(-1))
    with pytest.raises(ValueError, match="same shape"):
        D.kd_loss(z, v.reshape(6, 5), y)
    with pytest.raises(ValueError, match="student_logits.*3 dimensions.*\\(1, 2, 3, 5\\)"):
        D.kd_loss(z[None], v[None], None)
    with pytest.raises(ValueError, match="every target equals ignore_index=-100"):
        D.kd_loss(z, v, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match="targets.*\\[0, 4\\].*ignore_index=-100.*\\[-1, "):
        D.kd_loss(z, v, torch.tensor([[0, 1, -1], [2, 3, 4]]))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        D.kd_loss(z, v, y, ignore_index=-100.0)


# ---------------------------------------------------------------- hints


def test_hint_loss_equals_half_squared_error_per_sample(device, dtype):
    s, t = randn((6, 4, 5, 5), 40, device, dtype), randn((6, 4, 5, 5), 41, device, dtype)
    ref = F.mse_loss(s, t, reduction="sum") / (2 * 6)
    torch.testing.assert_close(D.hint_loss(s, t), ref, rtol=tolerance(dtype), atol=0)


def test_hint_loss_through_a_linear_regressor():
    s, t = randn((7, 5), 42).requires_grad_(), randn((7, 3), 43)
    reg = D.hint_regressor(s, t).double()
    assert isinstance(reg, nn.Linear) and (reg.in_features, reg.out_features) == (5, 3)
    loss = D.hint_loss(s, t, reg)
    r = s.detach() @ reg.weight.detach().T + reg.bias.detach()
    torch.testing.assert_close(loss.detach(), 0.5 * ((t - r) ** 2).sum(1).mean(), rtol=1e-12, atol=0)
    loss.backward()
    # d/dr = (r − t)/N, then through the regressor
    torch.testing.assert_close(reg.weight.grad, ((r - t) / 7).T @ s.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s.grad, ((r - t) / 7) @ reg.weight.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("s_shape, t_shape, kernel", [
    ((2, 8, 6, 6), (2, 16, 6, 6), (1, 1)),
    ((2, 8, 6, 7), (2, 3, 4, 4), (3, 4)),
])
def test_conv_regressor_maps_the_student_map_onto_the_teachers(s_shape, t_shape, kernel):
    reg = D.hint_regressor(s_shape, t_shape)
    assert isinstance(reg, nn.Conv2d) and reg.kernel_size == kernel
    assert (reg.in_channels, reg.out_channels) == (s_shape[1], t_shape[1])
    assert reg(torch.zeros(s_shape)).shape == t_shape


@given(n=st.integers(1, 3), cs=st.integers(1, 4), ct=st.integers(1, 4), hs=st.integers(1, 6), ws=st.integers(1, 6),
       dh=st.integers(0, 3), dw=st.integers(0, 3))
def test_regressor_shapes_property(n, cs, ct, hs, ws, dh, dw):
    s_shape, t_shape = (n, cs, hs + dh, ws + dw), (n, ct, hs, ws)
    reg = D.hint_regressor(s_shape, t_shape)
    assert reg(torch.zeros(s_shape)).shape == t_shape
    assert D.hint_regressor((n, cs * hs), (n, ct))(torch.zeros(n, cs * hs)).shape == (n, ct)


def test_hint_errors():
    with pytest.raises(ValueError, match="smaller than the teacher's"):
        D.hint_regressor((2, 8, 4, 4), (2, 8, 6, 6))
    with pytest.raises(ValueError, match="student_shape \\(2, 8\\) and teacher_shape \\(2, 8, 3, 3\\)"):
        D.hint_regressor((2, 8), (2, 8, 3, 3))
    with pytest.raises(TypeError, match="student_shape"):
        D.hint_regressor("2, 8", (2, 8))
    with pytest.raises(ValueError, match="hint_regressor"):
        D.hint_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(TypeError, match="regressor"):
        D.hint_loss(torch.zeros(3, 4), torch.zeros(3, 4), regressor=lambda x: x)


def test_hint_loss_does_not_train_the_teacher_feature():
    s, t = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    D.hint_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


# ---------------------------------------------------------------- attention transfer


def test_attention_map_equals_normalised_mean_of_squares(device, dtype):
    a = randn((3, 5, 4, 6), 50, device, dtype)
    q = (a**2).mean(1).flatten(1)  # references.md: mean over channels of x², then normalise (the mean's 1/C cancels)
    ref = q / q.norm(dim=1, keepdim=True)
    at = D.attention_map(a)
    assert at.shape == (3, 24)
    torch.testing.assert_close(at, ref, rtol=tolerance(dtype), atol=0)
    torch.testing.assert_close(at.norm(dim=1), torch.ones(3, device=device, dtype=dtype))
    torch.testing.assert_close(D.attention_map(-7.0 * a), at)  # |A|^p, then scale-free
    torch.testing.assert_close(D.attention_map(a, p=1), F.normalize(a.abs().sum(1).flatten(1), dim=1))


def test_attention_transfer_loss_formula(device, dtype):
    s, t = randn((4, 3, 5, 5), 51, device, dtype), randn((4, 8, 5, 5), 52, device, dtype)  # channels differ
    ref = 0.5 * 2.5 * (D.attention_map(s) - D.attention_map(t)).norm(dim=1).mean()
    torch.testing.assert_close(D.attention_transfer_loss(s, t, beta=2.5), ref, rtol=tolerance(dtype), atol=0)
    assert float(D.attention_transfer_loss(s, 3.0 * s)) == pytest.approx(0.0, abs=1e-6)
    assert float(D.attention_transfer_loss(s, t, beta=0.0)) == 0.0


def test_attention_transfer_gradient_is_finite_at_zero_difference():
    s = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    D.attention_transfer_loss(s, s.detach().clone()).backward()
    assert torch.isfinite(s.grad).all()


@given(n=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 99))
def test_attention_map_property(n, c, h, w, seed):
    a = randn((n, c, h, w), seed)
    at = D.attention_map(a)
    assert at.shape == (n, h * w) and (at >= 0).all()
    torch.testing.assert_close(at.norm(dim=1), torch.ones(n, dtype=torch.float64))
    loss = D.attention_transfer_loss(a, randn((n, c + 1, h, w), seed + 1), beta=2.0)
    assert 0.0 <= float(loss) <= math.sqrt(2) + 1e-12  # β/2 = 1; unit vectors with entries >= 0 are <= √2 apart


def _attention_closed_form(a):
    """at(A) for p = 2 in exact rational arithmetic, each entry rounded once: sqrt(Q_j² / Σ_k Q_k²)."""
    out = []
    for sample in a:
        c, hw = len(sample), len(sample[0])
        q = [sum(Fraction(sample[k][j]) ** 2 for k in range(c)) for j in range(hw)]
        total = sum(x * x for x in q)
        out.append([0.0 if total == 0 else math.sqrt(float(x * x / total)) for x in q])
    return out


# subnormals, magnitudes whose squares overflow or underflow (1e200, 1e-200), exact ties, zeros
MAGNITUDES = st.sampled_from([0.0, 5e-324, 1e-310, 1e-200, 1e-7, 1.0, 3.0, 1e20, 1e200, 1.7e308])


@given(data=st.data())
@example(data=None)
def test_attention_map_against_exact_arithmetic_at_any_magnitude(data):
    if data is None:  # activations of one magnitude, tiny: Q was below F.normalize's eps and the row not of norm 1
        a = [[[1e-7] * 4] * 3]
    else:
        n, c, hw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
        entry = st.tuples(MAGNITUDES, st.sampled_from([-1.0, 1.0])).map(lambda t: t[0] * t[1])
        a = data.draw(st.lists(st.lists(st.lists(entry, min_size=hw, max_size=hw), min_size=c, max_size=c),
                               min_size=n, max_size=n))
    at = D.attention_map(torch.tensor(a, dtype=torch.float64))
    # each entry is <= 1: an absolute tolerance of a few ulps of 1
    torch.testing.assert_close(at, torch.tensor(_attention_closed_form(a), dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("scale", [1e-30, 1e-7, 1e7, 1e20, 1e30])
def test_attention_map_and_transfer_are_scale_free_in_float32(scale):
    s, t = randn((2, 3, 4, 4), 60, dtype=torch.float32), randn((2, 5, 4, 4), 61, dtype=torch.float32)
    at = D.attention_map(s)
    torch.testing.assert_close(D.attention_map(scale * s), at, rtol=1e-5, atol=1e-7)
    s.requires_grad_()
    loss = D.attention_transfer_loss(s, t)
    (grad,) = torch.autograd.grad(loss, s)
    s_scaled = (scale * s.detach()).requires_grad_()
    loss_scaled = D.attention_transfer_loss(s_scaled, scale * t)
    (grad_scaled,) = torch.autograd.grad(loss_scaled, s_scaled)
    torch.testing.assert_close(loss_scaled, loss, rtol=1e-5, atol=1e-7)
    # homogeneous of degree 0: the gradient at c·A is the gradient at A divided by c
    torch.testing.assert_close(grad_scaled * scale, grad, rtol=1e-4, atol=1e-6)


def test_attention_transfer_errors():
    with pytest.raises(ValueError, match="spatial sizes.*\\(2, 3, 4, 4\\).*\\(2, 3, 5, 5\\)"):
        D.attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="student_feature.*3 dimensions"):
        D.attention_transfer_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="p must be > 0"):
        D.attention_map(torch.zeros(2, 3, 4), p=0)
    with pytest.raises(ValueError, match="beta"):
        D.attention_transfer_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), beta=-1)

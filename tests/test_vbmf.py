"""EVBMF rank selection: recovers the rank of low-rank-plus-noise matrices; threshold = the paper's closed form."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorcompress as tc


def low_rank_plus_noise(L, M, r, noise, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(L, r, generator=g, dtype=dtype)
    v = torch.randn(M, r, generator=g, dtype=dtype)
    return u @ v.T + noise * torch.randn(L, M, generator=g, dtype=dtype)


@given(L=st.integers(20, 60), M=st.integers(20, 90), r=st.integers(1, 8), seed=st.integers(0, 1000))
def test_recovers_rank_and_noise(L, M, r, seed):
    y = low_rank_plus_noise(L, M, r, 0.1, seed)
    res = tc.evbmf(y)
    assert res.rank == r
    assert math.isclose(res.sigma2, 0.01, rel_tol=0.25)
    assert tc.evbmf(y.T).rank == r  # orientation does not matter


def test_float32_and_device(device):
    y = low_rank_plus_noise(30, 40, 4, 0.1, 0).to(device=device, dtype=torch.float32)
    res = tc.evbmf(y)
    assert res.rank == 4 and res.singular_values.dtype == torch.float32


def test_half_precision():
    y = low_rank_plus_noise(30, 40, 4, 0.1, 0)
    for half in (torch.float16, torch.bfloat16):
        res = tc.evbmf(y.to(half))
        assert res.rank == 4 and res.singular_values.dtype == half


def test_tau_bar():
    # alpha = 1: log(1 + tau)/tau = 1/2, tau = 2.5129 (Nakajima et al. 2013); small alpha: tau ~ 2.5129 sqrt(alpha)
    assert math.isclose(tc.evbmf_tau(1.0), 2.5129, abs_tol=1e-4)
    t = tc.evbmf_tau(1.0)
    assert math.isclose(math.log1p(t) / t, 0.5, abs_tol=1e-12)
    for alpha in (0.1, 0.3, 0.6):
        assert math.isclose(tc.evbmf_tau(alpha), 2.5129 * math.sqrt(alpha), rel_tol=0.05)


def test_threshold_is_closed_form_with_known_noise():
    # square matrix (alpha = 1): the EVB threshold is sigma * sqrt(M (1 + 2.5129)(1 + 1/2.5129))
    y = low_rank_plus_noise(50, 50, 6, 0.5, 3)
    sigma2 = 0.25
    res = tc.evbmf(y, sigma2=sigma2)
    expected = math.sqrt(sigma2 * 50 * (1 + 2.5129) * (1 + 1 / 2.5129))
    assert math.isclose(res.threshold, expected, rel_tol=1e-4)
    s = torch.linalg.svdvals(y)
    assert res.rank == int((s > expected).sum())
    # the kept estimates are shrunk singular values: 0 < estimate < observed
    assert bool(((res.singular_values > 0) & (res.singular_values < s[: res.rank])).all())


def test_pure_noise_keeps_nothing():
    g = torch.Generator().manual_seed(0)
    assert tc.evbmf(torch.randn(40, 60, generator=g, dtype=torch.float64)).rank == 0


def test_errors():
    with pytest.raises(ValueError, match=r"y must be a matrix \(2-D\), got shape \(3,\)"):
        tc.evbmf(torch.ones(3))
    with pytest.raises(ValueError, match="all zeros"):
        tc.evbmf(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="must be finite"):
        tc.evbmf(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="floating point"):
        tc.evbmf(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"y must not be empty, got shape \(0, 4\)"):
        tc.evbmf(torch.ones(0, 4))
    with pytest.raises(ValueError, match="sigma2 must be a positive float"):
        tc.evbmf(torch.ones(3, 4), sigma2=-1.0)

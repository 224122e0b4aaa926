"""HOSVD, HOOI and TuckerTensor: exact recovery, the HOSVD error bound, eps-driven ranks, parity with TensorLy's
tucker, devices and dtypes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from conftest import randn as _randn
from conftest import tolerance
from hypothesis import given
from hypothesis import strategies as st
from tensorly.decomposition import tucker as tl_tucker

import tensorcompress as tc
from tensorcompress.data.synthetic import random_tucker


def _tail_bound(x: torch.Tensor, ranks) -> float:
    """Σ_n Σ_{i>R_n} σ_i(X_(n))², from torch.linalg.svdvals of each unfolding (independent of the Gram route)."""
    return sum(float((torch.linalg.svdvals(tc.unfold(x, n))[r:] ** 2).sum()) for n, r in enumerate(ranks))


def test_exact_recovery_float64(device):
    x, truth = random_tucker((6, 7, 8), (2, 3, 4), seed=0, dtype=torch.float64, device=device)
    for result in (tc.hosvd(x, (2, 3, 4)), tc.tucker(x, (2, 3, 4), n_iter_max=5), tc.hosvd(x, eps=1e-10)):
        assert float(tc.relative_error(x, result)) < 1e-8
        assert result.core.device.type == device.type
    assert tc.hosvd(x, eps=1e-6).ranks == (2, 3, 4)  # eps finds the true multilinear rank


@given(shape=st.lists(st.integers(2, 6), min_size=2, max_size=4), data=st.data(), seed=st.integers(0, 999))
def test_hosvd_bound_and_orthonormal_factors(shape, data, seed):
    ranks = [data.draw(st.integers(1, s)) for s in shape]
    x = _randn(shape, seed)
    t = tc.hosvd(x, ranks)
    err2 = float(torch.linalg.vector_norm(x - t.to_tensor())) ** 2
    assert err2 <= _tail_bound(x, ranks) * (1 + 1e-9) + 1e-12
    for f, r in zip(t.factors, ranks, strict=True):
        torch.testing.assert_close(f.mT @ f, torch.eye(r, dtype=f.dtype), atol=1e-10, rtol=0)
    hooi, errors = tc.tucker(x, ranks, n_iter_max=5, tol=0, return_errors=True)  # HOOI improves on the HOSVD start
    assert errors[-1] <= float(tc.relative_error(x, tc.hosvd(x, ranks))) + 1e-9
    assert abs(errors[-1] - float(tc.relative_error(x, hooi))) < 1e-7  # cheap error = dense error


@given(shape=st.lists(st.integers(2, 6), min_size=2, max_size=4), eps=st.floats(0.01, 0.9), seed=st.integers(0, 99))
def test_hosvd_eps_meets_accuracy(shape, eps, seed):
    x = _randn(shape, seed)
    t = tc.hosvd(x, eps=eps)
    assert float(tc.relative_error(x, t)) <= eps * (1 + 1e-9)
    # each rank is the smallest whose discarded energy (in the sequentially truncated core) fits the budget: one less
    # would exceed it, so the ranks are minimal mode by mode (checked on the first mode, on X itself)
    s2 = torch.linalg.svdvals(tc.unfold(x, 0)) ** 2
    budget = eps**2 * float(s2.sum()) / len(shape)
    r0 = t.ranks[0]
    assert float(s2[r0:].sum()) <= budget * (1 + 1e-9)
    assert r0 == 1 or float(s2[r0 - 1:].sum()) > budget * (1 - 1e-9)


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs")  # TensorLy, when R_n > prod others
@pytest.mark.parametrize("shape,ranks,seed", [((10, 11, 12), (3, 4, 5), 1), ((6, 7, 5, 4), (2, 3, 2, 2), 2),
                                              ((20, 15), (4, 4), 3), ((8, 9, 10), (8, 2, 3), 4)])
def test_error_no_worse_than_tensorly(shape, ranks, seed):
    """Same tensor, ranks, HOSVD init and sweeps: error <= 1.001 x TensorLy's + 1e-12."""
    x = random_tucker(shape, ranks, noise=0.3, seed=seed, dtype=torch.float64).tensor
    ours = float(tc.relative_error(x, tc.tucker(x, ranks, n_iter_max=10, tol=0)))
    with tl.backend_context("pytorch"):
        theirs = float(tc.relative_error(x, tl.tucker_to_tensor(tl_tucker(x, list(ranks), n_iter_max=10, tol=0,
                                                                          init="svd"))))
    assert ours <= 1.001 * theirs + 1e-12, (ours, theirs)


def test_device_and_dtype_agree(device, dtype):
    x64 = random_tucker((7, 8, 9), (2, 3, 2), noise=0.1, seed=5, dtype=torch.float64).tensor
    x = x64.to(device=device, dtype=dtype)
    for fn in (lambda y: tc.hosvd(y, (2, 3, 2)), lambda y: tc.tucker(y, (2, 3, 2), n_iter_max=5, tol=0)):
        ref = fn(x64).to_tensor()
        got = fn(x)
        assert got.dtype == dtype and got.device.type == device.type
        torch.testing.assert_close(got.to_tensor().cpu().double(), ref, rtol=10 * tolerance(dtype),
                                   atol=10 * tolerance(dtype))


def test_random_and_tucker_init_and_no_mutation():
    x = random_tucker((6, 7, 8), 2, noise=0.1, seed=6, dtype=torch.float64).tensor
    x_before = x.clone()
    a = tc.tucker(x, 2, init="random", seed=1, n_iter_max=30)
    b = tc.tucker(x, 2, init="random", seed=1, n_iter_max=30)
    torch.testing.assert_close(a.to_tensor(), b.to_tensor(), rtol=0, atol=0)
    start = tc.hosvd(x, 2)
    start_before = start.clone()
    t, errors = tc.tucker(x, 2, init=start, n_iter_max=3, return_errors=True)
    assert errors[-1] <= float(tc.relative_error(x, start)) + 1e-12
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    for f, g in zip(start.factors, start_before.factors, strict=True):
        torch.testing.assert_close(f, g, rtol=0, atol=0)
    _, errs = tc.tucker(x, 2, n_iter_max=100, tol=1e-6, return_errors=True)
    assert len(errs) < 100


def test_full_rank_is_exact_and_rank_equal_to_mode_size():
    x = _randn((3, 4, 5), 0)
    assert float(tc.relative_error(x, tc.hosvd(x))) < 1e-12
    assert float(tc.relative_error(x, tc.tucker(x, (3, 4, 5), n_iter_max=2))) < 1e-12


def test_tuckertensor_matches_tensorly_and_round_trips(device, dtype):
    g = torch.Generator().manual_seed(0)
    core = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    factors = [torch.randn(s, r, generator=g, dtype=torch.float64) for s, r in ((5, 2), (6, 3), (7, 4))]
    t = tc.TuckerTensor(core, factors).to(device=device, dtype=dtype)
    with tl.backend_context("numpy"):
        ref = tl.tucker_to_tensor((core.numpy(), [f.numpy() for f in factors]))
    torch.testing.assert_close(t.to_tensor().cpu().double(), torch.as_tensor(ref), rtol=tolerance(dtype),
                               atol=tolerance(dtype))
    assert t.shape == (5, 6, 7) and t.ranks == t.rank == (2, 3, 4) and t.n_params == 24 + 10 + 18 + 28
    assert repr(t).startswith("TuckerTensor(shape=(5, 6, 7), ranks=(2, 3, 4), n_params=80")
    tly = t.to_tensorly()
    assert isinstance(tly, tl.tucker_tensor.TuckerTensor)
    torch.testing.assert_close(tc.TuckerTensor.from_tensorly(tly).to_tensor(), t.to_tensor(), rtol=0, atol=0)
    c, fs = t
    assert c is t.core and fs == t.factors


X = torch.ones(3, 4, 5)


@pytest.mark.parametrize(
    "fn,kwargs,exc,match",
    [
        ("hosvd", dict(x=X, ranks=0), ValueError, r"ranks\[0\] must be >= 1, got 0"),
        ("hosvd", dict(x=X, ranks=(2, 5, 2)), ValueError, r"ranks\[1\]=5 exceeds the size 4 of mode 1 .*1\.\.4"),
        ("hosvd", dict(x=X, ranks=(2, 2)), ValueError, r"ranks must hold one rank per mode \(3 for shape"),
        ("hosvd", dict(x=X, ranks=(2, 2, 2), eps=0.1), ValueError, r"give ranks or eps, not both"),
        ("hosvd", dict(x=X, eps=-0.1), ValueError, r"eps must be >= 0, got -0.1"),
        ("hosvd", dict(x=X, ranks="2"), TypeError, r"ranks must be an int or a sequence of 3 ints, got str"),
        ("hosvd", dict(x=torch.ones(4)), ValueError, r"x must have at least 2 dimensions"),
        ("hosvd", dict(x=torch.ones(3, 4, dtype=torch.int32)), TypeError, r"floating point dtype"),
        ("hosvd", dict(x=torch.full((3, 4), float("nan"))), ValueError, r"x must be finite"),
        ("tucker", dict(x=X, ranks=(1, 2, 6)), ValueError, r"ranks\[2\]=6 exceeds the size 5 of mode 2"),
        ("tucker", dict(x=X, ranks=2, init="svd"), ValueError, r"init must be 'hosvd', 'random' or a TuckerTensor"),
        ("tucker", dict(x=X, ranks=2.5), TypeError, r"ranks must be an int or a sequence"),
        ("tucker", dict(x=X, ranks=2, n_iter_max=0), ValueError, r"n_iter_max must be >= 1"),
        ("tucker", dict(x=torch.tensor([[1.0, float("inf")]]), ranks=1), ValueError, r"x must be finite"),
        ("tucker", dict(x=np.ones((3, 4)), ranks=1), TypeError, r"x must be a torch.Tensor"),
        ("tucker", dict(x=torch.zeros(3, 4), ranks=1), ValueError, r"x is all zeros"),
    ],
)
def test_bad_input(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        getattr(tc, fn)(**kwargs)


def test_bad_init_and_construction():
    init = tc.TuckerTensor(torch.ones(2, 2, 2), [torch.ones(3, 2), torch.ones(4, 2), torch.ones(5, 2)])
    with pytest.raises(ValueError, match=r"init has shape \(3, 4, 5\) and ranks \(2, 2, 2\) but x has shape"):
        tc.tucker(X, 3, init=init)
    with pytest.raises(ValueError, match=r"init is torch.float32 on cpu but x is torch.float64"):
        tc.tucker(X.double(), 2, init=init)
    with pytest.raises(ValueError, match=r"core has order 2 .* but 3 factors"):
        tc.TuckerTensor(torch.ones(2, 2), [torch.ones(3, 2)] * 3)
    with pytest.raises(ValueError, match=r"factors\[0\] has 3 columns .* mode 0 of the core has size 2"):
        tc.TuckerTensor(torch.ones(2, 2), [torch.ones(3, 3), torch.ones(3, 2)])


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=5), data=st.data(), seed=st.integers(0, 999))
def test_project_equals_mode_dot(shape, data, seed):
    """The copy-free n-mode product used in the HOSVD/HOOI loops equals tensorcompress.mode_dot."""
    from tensorcompress.decompositions._common import project

    mode = data.draw(st.integers(0, len(shape) - 1))
    x = _randn(shape, seed)
    m = _randn((shape[mode], data.draw(st.integers(1, 4))), seed + 1)
    torch.testing.assert_close(project(x, m, mode), tc.mode_dot(x, m.mT, mode), rtol=1e-12, atol=1e-12)

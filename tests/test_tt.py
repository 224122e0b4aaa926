"""TT-SVD, TT rounding, TT arithmetic and TTTensor: exact recovery, the TT-SVD accuracy guarantee, parity with
TensorLy's tensor_train, arithmetic / inner product / norm against the dense results, devices and dtypes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from helpers import randn, tolerance
from hypothesis import given
from hypothesis import strategies as st
from tensorly.decomposition import tensor_train

import tensorcompress as tc
from tensorcompress.decompositions import random_tt

shapes = st.lists(st.integers(2, 5), min_size=2, max_size=5)


def test_exact_recovery_float64(device):
    x, truth = random_tt((4, 5, 6, 3), (2, 3, 2), seed=0, dtype=torch.float64, device=device)
    for tt in (tc.tt_svd(x), tc.tt_svd(x, rank=(2, 3, 2)), tc.tt_svd(x, eps=1e-10)):
        assert float(tc.relative_error(x, tt)) < 1e-8
        assert tt.cores[0].device.type == device.type
    assert tc.tt_svd(x, eps=1e-8).rank == (1, 2, 3, 2, 1)  # eps finds the true TT ranks


@given(shape=shapes, eps=st.floats(0.0, 0.9), seed=st.integers(0, 999))
def test_tt_svd_meets_eps(shape, eps, seed):
    x = randn(shape, seed)
    tt = tc.tt_svd(x, eps=eps)
    assert float(tc.relative_error(x, tt)) <= eps * (1 + 1e-9) + 1e-12
    rounded = tc.tt_round(tc.tt_svd(x), eps=eps)  # rounding the exact TT meets the same guarantee
    assert float(tc.relative_error(x, rounded)) <= eps * (1 + 1e-9) + 1e-12


@given(shape=shapes, cap=st.integers(1, 6), seed=st.integers(0, 999))
def test_error_no_worse_than_tensorly(shape, cap, seed):
    """Fixed ranks: TT-SVD error <= 1.001 x TensorLy's tensor_train + 1e-12, on the same tensor and ranks."""
    x = randn(shape, seed)
    tt = tc.tt_svd(x, rank=cap)
    with tl.backend_context("numpy"):
        ref = tl.tt_to_tensor(tensor_train(x.numpy(), [1] + list(tt.rank[1:-1]) + [1]))
    theirs = float(tc.relative_error(x, torch.as_tensor(ref)))
    assert float(tc.relative_error(x, tt)) <= 1.001 * theirs + 1e-12
    assert all(r <= cap for r in tt.rank)


@given(shape=shapes, seed=st.integers(0, 999), rank=st.integers(1, 3))
def test_arithmetic_inner_norm_match_dense(shape, seed, rank):
    a = random_tt(shape, rank, seed=seed, dtype=torch.float64).decomposition
    b = random_tt(shape, rank + 1, seed=seed + 1, dtype=torch.float64).decomposition
    da, db = a.to_tensor(), b.to_tensor()
    close = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((a + b).to_tensor(), da + db, **close)
    torch.testing.assert_close((a - b).to_tensor(), da - db, **close)
    torch.testing.assert_close((2.5 * a).to_tensor(), 2.5 * da, **close)
    torch.testing.assert_close((a * -3).to_tensor(), -3 * da, **close)
    torch.testing.assert_close((-a).to_tensor(), -da, **close)
    torch.testing.assert_close(a.inner(b), (da * db).sum(), **close)
    torch.testing.assert_close(tc.tt_inner(b, a), (da * db).sum(), **close)
    torch.testing.assert_close(a.norm(), torch.linalg.vector_norm(da), **close)
    torch.testing.assert_close((a - b).norm(), torch.linalg.vector_norm(da - db), **close)
    s = a + b
    assert s.rank[1:-1] == tuple(ra + rb for ra, rb in zip(a.rank[1:-1], b.rank[1:-1], strict=True))


@given(shape=shapes, seed=st.integers(0, 999), rank=st.integers(1, 3))
def test_round_of_a_plus_a_returns_to_a(shape, seed, rank):
    a = tc.tt_round(random_tt(shape, rank, seed=seed, dtype=torch.float64).decomposition)  # minimal ranks
    r = tc.tt_round(a + a, eps=1e-10)
    assert r.rank == a.rank
    torch.testing.assert_close(r.to_tensor(), 2 * a.to_tensor(), rtol=1e-9, atol=1e-12)
    assert tc.tt_round(a + a).rank == a.rank  # default eps: numerically zero directions only
    capped = tc.tt_round(a + a, rank=1)
    assert max(capped.rank) == 1


def test_device_and_dtype_agree(device, dtype):
    x64 = random_tt((5, 6, 4, 3), 3, noise=0.05, seed=5, dtype=torch.float64).tensor
    x = x64.to(device=device, dtype=dtype)
    ref = tc.tt_svd(x64, rank=3)
    got = tc.tt_svd(x, rank=3)
    assert got.dtype == dtype and got.device.type == device.type and got.rank == ref.rank
    torch.testing.assert_close(got.to_tensor().cpu().double(), ref.to_tensor(), rtol=10 * tolerance(dtype),
                               atol=10 * tolerance(dtype))
    r64, r = tc.tt_round(ref, eps=0.1), tc.tt_round(got, eps=0.1)
    assert r.rank == r64.rank
    torch.testing.assert_close(r.to_tensor().cpu().double(), r64.to_tensor(), rtol=10 * tolerance(dtype),
                               atol=10 * tolerance(dtype))
    torch.testing.assert_close(got.norm().cpu().double(), ref.norm(), rtol=10 * tolerance(dtype), atol=0)


def test_no_mutation_and_tensorly_round_trip(device, dtype):
    x = randn((4, 5, 6), 1, device, dtype)
    x_before = x.clone()
    tt = tc.tt_svd(x, rank=3)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    cores_before = [c.clone() for c in tt.cores]
    tc.tt_round(tt, eps=0.5)
    tt.norm()
    _ = tt + tt
    for c, d in zip(tt.cores, cores_before, strict=True):
        torch.testing.assert_close(c, d, rtol=0, atol=0)
    tly = tt.to_tensorly()
    assert isinstance(tly, tl.tt_tensor.TTTensor)
    with tl.backend_context("pytorch"):
        torch.testing.assert_close(tl.tt_to_tensor(tly), tt.to_tensor())
    torch.testing.assert_close(tc.TTTensor.from_tensorly(tly).to_tensor(), tt.to_tensor(), rtol=0, atol=0)
    assert tt.shape == (4, 5, 6) and tt.rank == (1, 3, 3, 1) and tt.n_params == 12 + 45 + 18
    assert repr(tt).startswith("TTTensor(shape=(4, 5, 6), rank=(1, 3, 3, 1), n_params=75")


def test_rank_one_rule_capped_and_tensorly_form():
    """One rank-list rule for tt_svd, tt_round and tt_matrix_svd: an int or d - 1 inner ranks or TensorLy's
    [1, r_1, ..., 1], each capped at what its unfolding allows (failed before: a list entry above the cap raised in
    tt_svd/tt_matrix_svd while tt_round capped it, and TensorLy's form was refused)."""
    x = randn((2, 3, 4), 0)
    assert tc.tt_svd(x, rank=100).rank == (1, 2, 4, 1)
    assert tc.tt_svd(x, rank=[2, 1]).rank == (1, 2, 1, 1)
    assert tc.tt_svd(x, rank=[5, 9]).rank == (1, 2, 4, 1)  # capped at min(2, 12) and min(6, 4)
    assert tc.tt_svd(x, rank=[1, 2, 3, 1]).rank == (1, 2, 3, 1)
    full = tc.tt_svd(x)
    assert tc.tt_round(full, rank=[5, 9]).rank == (1, 2, 4, 1)
    assert tc.tt_round(full, rank=[1, 2, 3, 1]).rank == (1, 2, 3, 1)
    w = randn((6, 8), 1)
    assert tc.tt_matrix_svd(w, (2, 3), (2, 4), rank=[50]).rank == (1, 4, 1)  # min(2 * 2, 3 * 4)
    assert tc.tt_matrix_svd(w, (2, 3), (2, 4), rank=[1, 3, 1]).rank == (1, 3, 1)
    # the same ranks as TensorLy's tensor_train given the same list
    with tl.backend_context("pytorch"):
        theirs = tensor_train(x, [1, 2, 3, 1])
    assert tuple(theirs.rank) == tc.tt_svd(x, rank=[1, 2, 3, 1]).rank


X = torch.ones(3, 4, 5)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(x=X, rank=0), ValueError, r"rank must be >= 1, got 0"),
        (dict(x=X, rank=[2]), ValueError, r"rank must hold d - 1 = 2 inner ranks \(or d \+ 1 = 4 with"),
        (dict(x=X, rank=[2, 2, 2, 1]), ValueError, r"TensorLy's form\) must start and end with 1, got \[2, 2"),
        (dict(x=X, rank=[2, 0]), ValueError, r"rank\[1\] must be >= 1, got 0"),
        (dict(x=X, rank="3"), TypeError, r"rank must be an int or a sequence of 2 ints, got str"),
        (dict(x=X, eps=0.1, rank=2), ValueError, r"give eps or rank, not both"),
        (dict(x=X, eps=-1), ValueError, r"eps must be >= 0, got -1"),
        (dict(x=torch.ones(5)), ValueError, r"x must have at least 2 dimensions"),
        (dict(x=torch.ones(3, 4, dtype=torch.int64)), TypeError, r"floating point dtype"),
        (dict(x=torch.tensor([[float("nan"), 1.0]])), ValueError, r"x must be finite"),
        (dict(x=np.ones((3, 4))), TypeError, r"x must be a torch.Tensor"),
    ],
)
def test_tt_svd_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tc.tt_svd(**kwargs)


def test_tt_round_arithmetic_and_construction_bad_input():
    a = tc.tt_svd(randn((3, 4, 5), 0), rank=2)
    b = tc.tt_svd(randn((3, 4, 6), 0), rank=2)
    with pytest.raises(TypeError, match=r"tt must be a TTTensor, got Tensor"):
        tc.tt_round(X)
    with pytest.raises(ValueError, match=r"give eps or rank, not both"):
        tc.tt_round(a, eps=0.1, rank=2)
    with pytest.raises(ValueError, match=r"\+ needs equal shapes, got \(3, 4, 5\) and \(3, 4, 6\)"):
        _ = a + b
    with pytest.raises(ValueError, match=r"needs one dtype and device"):
        _ = a + a.to(torch.float32)
    with pytest.raises(TypeError, match=r"unsupported operand"):
        _ = a * None
    with pytest.raises(TypeError, match=r"tt_inner needs two TTTensors, got Tensor"):
        tc.tt_inner(a, X)
    with pytest.raises(ValueError, match=r"the boundary ranks must be 1"):
        tc.TTTensor([torch.ones(2, 3, 1)])
    with pytest.raises(ValueError, match=r"cores\[0\] ends with rank 2 but cores\[1\] starts with rank 3"):
        tc.TTTensor([torch.ones(1, 3, 2), torch.ones(3, 3, 1)])
    with pytest.raises(ValueError, match=r"cores\[1\] must have 3 dimensions"):
        tc.TTTensor([torch.ones(1, 3, 2), torch.ones(2, 3)])


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_eps_holds_at_extreme_scales_float32(scale):
    """||X||^2 overflows (1e20) or underflows (1e-25) in float32: failed before (ranks all 1, error 0.81 for
    eps=0.05); now inputs and cores are scaled by exact powers of two."""
    x = random_tt((6, 7, 8, 5), 3, noise=0.01, seed=4, dtype=torch.float32).tensor
    ref = tc.tt_svd(x, eps=0.05)
    for tt in (tc.tt_svd(x * scale, eps=0.05), tc.tt_round(tc.tt_svd(x * scale), eps=0.05)):
        assert tt.rank == ref.rank and tt.rank[1:-1] != (1, 1, 1)
        assert float(tc.relative_error((x * scale).double(), tt.to_tensor().double())) <= 0.05
    w = x.reshape(42, 40) * scale
    tm = tc.tt_matrix_svd(w, (6, 7), (8, 5), eps=0.05)
    assert float(tc.relative_error(w.double(), tm.to_matrix().double())) <= 0.05


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(half):
    """Failed before: linalg_svd_cpu not implemented for 'Half'. Computed in float32, returned in the input's dtype."""
    x = random_tt((5, 6, 7), 2, noise=0.05, seed=5, dtype=torch.float32).tensor.to(half)
    for fn in (lambda y: tc.tt_svd(y, rank=2), lambda y: tc.tt_svd(y, eps=0.2),
               lambda y: tc.tt_round(tc.tt_svd(y), rank=2)):
        got, ref = fn(x), fn(x.float())
        assert got.dtype == half and all(c.dtype == half for c in got.cores) and got.rank == ref.rank
        torch.testing.assert_close(got.to_tensor().float(), ref.to_tensor().to(half).float(), rtol=0.02, atol=0.02)
    w = x.reshape(30, 7)
    tm = tc.tt_matrix_svd(w, (5, 6), (7, 1), rank=3)
    assert tm.dtype == half
    assert float(tc.relative_error(w.float(), tm.to_matrix().float())) < 0.5


def test_round_refuses_nan_cores_and_tt_svd_refuses_empty():
    tt = tc.tt_svd(randn((3, 4, 5), 0), rank=2)
    tt.cores[1][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"tt.cores\[1\] must be finite"):
        tc.tt_round(tt, eps=0.1)
    with pytest.raises(ValueError, match=r"x must not be empty, got shape \(3, 0\)"):
        tc.tt_svd(torch.ones(3, 0))
    with pytest.raises(ValueError, match=r"matrix must not be empty"):
        tc.tt_matrix_svd(torch.ones(0, 4), (1,), (4,))


def test_rank_has_one_name():
    """``rank`` is the one argument of every TT function (``max_rank=`` is refused) and the one attribute."""
    x = randn((3, 4, 5), 0)
    tt = tc.tt_svd(x, 2)
    assert tt.rank == tc.tt_svd(x, rank=2).rank == tc.tt_round(tt, 2).rank == (1, 2, 2, 1)
    assert not hasattr(tt, "ranks")
    for call in (lambda: tc.tt_svd(x, max_rank=2), lambda: tc.tt_round(tt, max_rank=2),
                 lambda: tc.tt_matrix_svd(torch.ones(4, 6), (2, 2), (2, 3), max_rank=2),
                 lambda: tc.random_tt((3, 4, 5), ranks=2)):
        with pytest.raises(TypeError, match="max_rank|ranks"):
            call()

"""Tensor algebra: tensorcompress.tensor against TensorLy (the independent reference), identities, bad input.

Each property test draws random shapes and modes (orders 2-5) with hypothesis, runs the library on every available
device in float32 and float64, and compares with TensorLy's NumPy back-end evaluated in float64 on the same entries.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
import torch
from helpers import randn, tolerance
from hypothesis import given
from hypothesis import strategies as st
from tensorly import tenalg
from tensorly.cp_tensor import cp_to_tensor

import tensorcompress as tc

# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.float64).numpy()


def _check(actual: torch.Tensor, expected, device: torch.device, dtype: torch.dtype) -> None:
    """``actual`` is on ``device`` with ``dtype`` and equals ``expected`` (NumPy or torch) to the dtype's tolerance."""
    assert isinstance(actual, torch.Tensor)
    assert actual.device.type == device.type
    assert actual.dtype == dtype
    expected = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected)
    expected = expected.detach().cpu().to(torch.float64)
    assert tuple(actual.shape) == tuple(expected.shape)
    tol = tolerance(dtype)
    scale = 1.0 + (float(expected.abs().max()) if expected.numel() else 0.0)
    torch.testing.assert_close(actual.detach().cpu().to(torch.float64), expected, rtol=tol, atol=tol * scale)


seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(1, 4)
shapes = st.integers(2, 5).flatmap(lambda n: st.lists(sizes, min_size=n, max_size=n))


@pytest.fixture(autouse=True)
def _numpy_backend():
    """TensorLy's NumPy back-end is the reference, whatever another test module set."""
    with tl.backend_context("numpy"):
        yield


# ---------------------------------------------------------------------------------------------------------------------
# equal to TensorLy


@given(shape=shapes, data=st.data(), seed=seeds)
def test_unfold_matches_tensorly(device, dtype, shape, data, seed):
    x = randn(shape, seed, device, dtype)
    mode = data.draw(st.integers(-len(shape), len(shape) - 1), label="mode")
    _check(tc.unfold(x, mode), tl.unfold(_np(x), mode % len(shape)), device, dtype)


@given(shape=shapes, data=st.data(), seed=seeds)
def test_fold_matches_tensorly(device, dtype, shape, data, seed):
    mode = data.draw(st.integers(0, len(shape) - 1), label="mode")
    rest = int(np.prod([s for k, s in enumerate(shape) if k != mode]))
    m = randn((shape[mode], rest), seed, device, dtype)
    _check(tc.fold(m, mode, shape), tl.fold(_np(m), mode, shape), device, dtype)


@given(shape=shapes, data=st.data(), seed=seeds)
def test_fold_unfold_is_identity(device, dtype, shape, data, seed):
    x = randn(shape, seed, device, dtype)
    mode = data.draw(st.integers(0, len(shape) - 1), label="mode")
    assert torch.equal(tc.fold(tc.unfold(x, mode), mode, x.shape), x)
    m = tc.unfold(x, mode)
    assert torch.equal(tc.unfold(tc.fold(m, mode, list(shape)), mode), m)


@given(shape=shapes, data=st.data(), seed=seeds, rows=sizes)
def test_mode_dot_matrix_matches_tensorly(device, dtype, shape, data, seed, rows):
    x = randn(shape, seed, device, dtype)
    mode = data.draw(st.integers(0, len(shape) - 1), label="mode")
    m = randn((rows, shape[mode]), seed + 1, device, dtype)
    x_before = x.clone()
    out = tc.mode_dot(x, m, mode)
    _check(out, tenalg.mode_dot(_np(x), _np(m), mode), device, dtype)
    assert torch.equal(x, x_before)  # the input is not mutated


@given(shape=shapes, data=st.data(), seed=seeds)
def test_mode_dot_vector_matches_tensorly(device, dtype, shape, data, seed):
    x = randn(shape, seed, device, dtype)
    mode = data.draw(st.integers(0, len(shape) - 1), label="mode")
    v = randn((shape[mode],), seed + 1, device, dtype)
    out = tc.mode_dot(x, v, mode)
    assert out.ndim == x.ndim - 1  # a vector contracts the mode away
    _check(out, tenalg.mode_dot(_np(x), _np(v), mode), device, dtype)


@given(shape=shapes, data=st.data(), seed=seeds, transpose=st.booleans())
def test_multi_mode_dot_matches_tensorly(device, dtype, shape, data, seed, transpose):
    n = len(shape)
    x = randn(shape, seed, device, dtype)
    modes = data.draw(st.permutations(range(n)).flatmap(lambda p: st.integers(1, n).map(lambda k: p[:k])), "modes")
    kinds = data.draw(st.lists(st.sampled_from(["matrix", "vector"]), min_size=len(modes), max_size=len(modes)))
    mats = []
    for i, (mode, kind) in enumerate(zip(modes, kinds, strict=True)):
        rows = data.draw(sizes, label=f"rows[{i}]")
        if kind == "vector":
            mats.append(randn((shape[mode],), seed + i + 1, device, dtype))
        else:
            mats.append(randn((shape[mode], rows) if transpose else (rows, shape[mode]), seed + i + 1, device, dtype))
    skip = data.draw(st.none() | st.integers(0, len(mats) - 1), label="skip")
    out = tc.multi_mode_dot(x, mats, modes=modes, skip=skip, transpose=transpose)
    # TensorLy's ``skip`` indexes the matrices sorted by mode; ours indexes the list as given.
    tl_skip = None if skip is None else sorted(range(len(modes)), key=lambda i: modes[i]).index(skip)
    ref = tenalg.multi_mode_dot(_np(x), [_np(m) for m in mats], modes=list(modes), skip=tl_skip, transpose=transpose)
    _check(out, ref, device, dtype)


@given(shape=shapes, seed=seeds, transpose=st.booleans())
def test_multi_mode_dot_default_modes_matches_tensorly(device, dtype, shape, seed, transpose):
    x = randn(shape, seed, device, dtype)
    mats = [randn((s, 2) if transpose else (2, s), seed + k + 1, device, dtype) for k, s in enumerate(shape)]
    ref = tenalg.multi_mode_dot(_np(x), [_np(m) for m in mats], transpose=transpose)
    _check(tc.multi_mode_dot(x, mats, transpose=transpose), ref, device, dtype)


@given(data=st.data(), seed=seeds, n=st.integers(2, 5), rank=sizes)
def test_khatri_rao_matches_tensorly(device, dtype, data, seed, n, rank):
    rows = data.draw(st.lists(sizes, min_size=n, max_size=n), label="rows")
    mats = [randn((r, rank), seed + k, device, dtype) for k, r in enumerate(rows)]
    skip = data.draw(st.none() | st.integers(0, n - 1), label="skip")
    ref = tenalg.khatri_rao([_np(m) for m in mats], skip_matrix=skip)
    _check(tc.khatri_rao(mats, skip=skip), ref, device, dtype)


@given(data=st.data(), seed=seeds, n=st.integers(2, 4))
def test_kronecker_matches_tensorly(device, dtype, data, seed, n):
    shapes_ = data.draw(st.lists(st.tuples(sizes, sizes), min_size=n, max_size=n), label="shapes")
    mats = [randn(s, seed + k, device, dtype) for k, s in enumerate(shapes_)]
    skip = data.draw(st.none() | st.integers(0, n - 1), label="skip")
    ref = tenalg.kronecker([_np(m) for m in mats], skip_matrix=skip)
    _check(tc.kronecker(mats, skip=skip), ref, device, dtype)


@given(shape=shapes, seed=seeds, eps=st.floats(1e-3, 1.0))
def test_relative_error_matches_numpy(device, dtype, shape, seed, eps):
    x = randn(shape, seed, device, dtype)
    approx = x + eps * randn(shape, seed + 1, device, dtype)
    ref = np.linalg.norm(_np(x) - _np(approx)) / np.linalg.norm(_np(x))
    _check(tc.relative_error(x, approx), np.asarray(ref), device, dtype)


def test_relative_error_accepts_objects_with_to_tensor(device, dtype):
    x = randn((3, 4), 0, device, dtype)

    class Approx:
        def to_tensor(self):
            return 2 * x

    assert float(tc.relative_error(x, Approx())) == pytest.approx(1.0, rel=tolerance(dtype))
    assert float(tc.relative_error(x, x)) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# identities


@given(shape=shapes, data=st.data(), seed=seeds, rows=sizes)
def test_unfold_of_mode_product_is_matrix_product(device, dtype, shape, data, seed, rows):
    """(X x_n M)_(n) = M X_(n)."""
    x = randn(shape, seed, device, dtype)
    mode = data.draw(st.integers(0, len(shape) - 1), label="mode")
    m = randn((rows, shape[mode]), seed + 1, device, dtype)
    _check(tc.unfold(tc.mode_dot(x, m, mode), mode), m @ tc.unfold(x, mode), device, dtype)


@given(shape=shapes, data=st.data(), seed=seeds)
def test_mode_products_on_distinct_modes_commute_and_on_one_mode_compose(device, dtype, shape, data, seed):
    """X x_m A x_n B = X x_n B x_m A (m != n) and X x_n A x_n B = X x_n (BA)."""
    m_, n_ = data.draw(st.permutations(range(len(shape))), label="modes")[:2]
    x = randn(shape, seed, device, dtype)
    a = randn((2, shape[m_]), seed + 1, device, dtype)
    b = randn((3, shape[n_]), seed + 2, device, dtype)
    lhs = tc.mode_dot(tc.mode_dot(x, a, m_), b, n_)
    _check(lhs, tc.mode_dot(tc.mode_dot(x, b, n_), a, m_), device, dtype)
    c = randn((4, 2), seed + 3, device, dtype)
    _check(tc.mode_dot(tc.mode_dot(x, a, m_), c, m_), tc.mode_dot(x, c @ a, m_), device, dtype)


@given(shape=shapes, data=st.data(), seed=seeds, rank=sizes)
def test_cp_unfolding_is_factor_times_khatri_rao(device, dtype, shape, data, seed, rank):
    """unfold([[A_1..A_N]], n) = A_n (A_1 (.) ... A_{n-1} (.) A_{n+1} ... (.) A_N)^T, row-major convention."""
    factors = [randn((s, rank), seed + k, device, dtype) for k, s in enumerate(shape)]
    # the CP tensor as a sum of outer products, built independently of khatri_rao
    letters = "abcde"[: len(shape)]
    x = torch.einsum(",".join(f"{c}r" for c in letters) + "->" + letters, *factors)
    _check(x, cp_to_tensor((None, [_np(f) for f in factors])), device, dtype)
    mode = data.draw(st.integers(0, len(shape) - 1), label="mode")
    kr = tc.khatri_rao(factors, skip=mode)  # increasing mode order, the first matrix varying slowest
    _check(tc.unfold(x, mode), factors[mode] @ kr.T, device, dtype)


@given(data=st.data(), seed=seeds)
def test_kronecker_mixed_product(device, dtype, data, seed):
    """(A (x) B)(C (x) D) = AC (x) BD."""
    m, n, p, q, k, l_ = data.draw(st.lists(sizes, min_size=6, max_size=6), label="sizes")
    a, b = randn((m, n), seed, device, dtype), randn((p, q), seed + 1, device, dtype)
    c, d = randn((n, k), seed + 2, device, dtype), randn((q, l_), seed + 3, device, dtype)
    lhs = tc.kronecker([a, b]) @ tc.kronecker([c, d])
    _check(lhs, tc.kronecker([a @ c, b @ d]), device, dtype)


@given(data=st.data(), seed=seeds, rank=sizes)
def test_khatri_rao_columns_are_kronecker_products(device, dtype, data, seed, rank):
    """(A (.) B)[:, r] = A[:, r] (x) B[:, r]."""
    i, j = data.draw(st.tuples(sizes, sizes), label="rows")
    a, b = randn((i, rank), seed, device, dtype), randn((j, rank), seed + 1, device, dtype)
    kr = tc.khatri_rao([a, b])
    for r in range(rank):
        _check(kr[:, r], tc.kronecker([a[:, r : r + 1], b[:, r : r + 1]])[:, 0], device, dtype)


# ---------------------------------------------------------------------------------------------------------------------
# bad input: type AND message

X = torch.zeros(2, 3, 4)
META = torch.empty(4, 4, device="meta")  # a second device that exists on every machine


def test_unfold_mode_out_of_range():
    with pytest.raises(ValueError, match=r"mode=3 is out of range for a tensor of order 3: allowed 0\.\.2"):
        tc.unfold(X, 3)
    with pytest.raises(ValueError, match=r"mode=-4 is out of range"):
        tc.unfold(X, -4)


def test_unfold_mode_not_int():
    with pytest.raises(TypeError, match=r"mode must be an int, got float \(1\.0\)"):
        tc.unfold(X, 1.0)


def test_unfold_non_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got ndarray"):
        tc.unfold(np.zeros((2, 3)), 0)


def test_unfold_scalar_tensor():
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension, got a tensor of shape \(\)"):
        tc.unfold(torch.tensor(1.0), 0)


def test_fold_wrong_shape():
    with pytest.raises(ValueError, match=r"unfolded has shape \(3, 8\), but a mode-1 unfolding .* has shape \(3, 7\)"):
        tc.fold(torch.zeros(3, 8), 1, (1, 3, 7))


def test_fold_not_a_matrix():
    with pytest.raises(ValueError, match=r"unfolded must be a matrix \(2-D\), got shape \(2, 3, 4\)"):
        tc.fold(X, 0, (2, 3, 4))


def test_fold_bad_shape_argument():
    with pytest.raises(TypeError, match=r"shape must be a sequence of non-negative ints, got \(2, -3\)"):
        tc.fold(torch.zeros(2, 3), 0, (2, -3))


def test_fold_mode_out_of_range():
    with pytest.raises(ValueError, match=r"mode=2 is out of range for a tensor of order 2"):
        tc.fold(torch.zeros(2, 3), 2, (2, 3))


def test_fold_non_tensor():
    with pytest.raises(TypeError, match=r"unfolded must be a torch\.Tensor, got list"):
        tc.fold([[1.0]], 0, (1, 1))


def test_mode_dot_mismatched_sizes():
    with pytest.raises(ValueError, match=r"matrix_or_vector has 5 columns but mode 1 of x has size 3"):
        tc.mode_dot(X, torch.zeros(2, 5), 1)
    with pytest.raises(ValueError, match=r"matrix_or_vector has 5 columns but mode 2 of x has size 4"):
        tc.mode_dot(X, torch.zeros(5), 2)


def test_mode_dot_mode_out_of_range():
    with pytest.raises(ValueError, match=r"mode=3 is out of range for a tensor of order 3"):
        tc.mode_dot(X, torch.zeros(2, 2), 3)


def test_mode_dot_not_matrix_or_vector():
    with pytest.raises(ValueError, match=r"matrix_or_vector must be a matrix or a vector, got shape \(1, 2, 3\)"):
        tc.mode_dot(X, torch.zeros(1, 2, 3), 0)


def test_mode_dot_non_tensor():
    with pytest.raises(TypeError, match=r"matrix_or_vector must be a torch\.Tensor, got ndarray"):
        tc.mode_dot(X, np.zeros((2, 2)), 0)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        tc.mode_dot([1.0, 2.0], torch.zeros(2, 2), 0)


def test_mode_dot_mismatched_dtypes():
    with pytest.raises(TypeError, match=r"matrix_or_vector has dtype torch\.float64 but x has torch\.float32"):
        tc.mode_dot(X, torch.zeros(2, 2, dtype=torch.float64), 0)


def test_mode_dot_mismatched_devices():
    with pytest.raises(ValueError, match=r"matrix_or_vector is on meta but x is on cpu: use one device"):
        tc.mode_dot(torch.zeros(4, 2), META, 0)


def test_multi_mode_dot_empty_list():
    with pytest.raises(ValueError, match=r"matrices must not be empty"):
        tc.multi_mode_dot(X, [])


def test_multi_mode_dot_not_a_list():
    with pytest.raises(TypeError, match=r"matrices must be a list or tuple of torch\.Tensor, got Tensor"):
        tc.multi_mode_dot(X, torch.zeros(2, 2))


def test_multi_mode_dot_modes_count_mismatch():
    with pytest.raises(ValueError, match=r"modes has 1 entries but matrices has 2: give one mode per matrix"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2), torch.zeros(2, 3)], modes=[0])


def test_multi_mode_dot_repeated_modes():
    with pytest.raises(ValueError, match=r"modes must be distinct, got \[0, 0\]"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2), torch.zeros(2, 2)], modes=[0, 0])


def test_multi_mode_dot_mode_out_of_range():
    with pytest.raises(ValueError, match=r"modes\[1\]=5 is out of range for a tensor of order 3"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2), torch.zeros(2, 2)], modes=[0, 5])


def test_multi_mode_dot_modes_not_a_sequence():
    with pytest.raises(TypeError, match=r"modes must be a sequence of ints or None, got int"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2)], modes=0)


def test_multi_mode_dot_skip_out_of_range():
    with pytest.raises(ValueError, match=r"skip=2 is out of range: allowed None or an int in 0\.\.1"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2), torch.zeros(2, 3)], skip=2)


def test_multi_mode_dot_mismatched_sizes():
    with pytest.raises(ValueError, match=r"matrix_or_vector has 4 columns but mode 1 of x has size 3"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2), torch.zeros(2, 4)])


def test_multi_mode_dot_mismatched_dtypes():
    with pytest.raises(TypeError, match=r"matrices\[1\] has dtype torch\.float64 but matrices\[0\] has torch\.float32"):
        tc.multi_mode_dot(X, [torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.float64)])


def test_khatri_rao_differing_column_counts():
    with pytest.raises(ValueError, match=r"same number of columns: matrices\[0\] has 2, matrices\[1\] has 3"):
        tc.khatri_rao([torch.zeros(4, 2), torch.zeros(5, 3)])


def test_khatri_rao_empty_list():
    with pytest.raises(ValueError, match=r"matrices must not be empty"):
        tc.khatri_rao([])


def test_khatri_rao_not_matrices():
    with pytest.raises(ValueError, match=r"matrices\[1\] must be a matrix, got shape \(4,\)"):
        tc.khatri_rao([torch.zeros(4, 2), torch.zeros(4)])
    with pytest.raises(TypeError, match=r"matrices\[0\] must be a torch\.Tensor, got ndarray"):
        tc.khatri_rao([np.zeros((4, 2))])


def test_khatri_rao_mismatched_devices():
    with pytest.raises(ValueError, match=r"matrices\[1\] is on meta but matrices\[0\] is on cpu: use one device"):
        tc.khatri_rao([torch.zeros(4, 4), META])


def test_khatri_rao_mismatched_dtypes():
    with pytest.raises(TypeError, match=r"matrices\[1\] has dtype torch\.float64 but matrices\[0\] has torch\.float32"):
        tc.khatri_rao([torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.float64)])


def test_khatri_rao_skip_out_of_range():
    with pytest.raises(ValueError, match=r"skip=-1 is out of range: allowed None or an int in 0\.\.1"):
        tc.khatri_rao([torch.zeros(4, 2), torch.zeros(3, 2)], skip=-1)


def test_khatri_rao_skip_leaves_nothing():
    with pytest.raises(ValueError, match=r"matrices must hold at least one matrix besides the skipped one"):
        tc.khatri_rao([torch.zeros(4, 2)], skip=0)


def test_kronecker_empty_list():
    with pytest.raises(ValueError, match=r"matrices must not be empty"):
        tc.kronecker([])


def test_kronecker_non_tensor():
    with pytest.raises(TypeError, match=r"matrices\[1\] must be a torch\.Tensor, got list"):
        tc.kronecker([torch.zeros(2, 2), [[1.0]]])


def test_kronecker_skip_out_of_range():
    with pytest.raises(ValueError, match=r"skip=3 is out of range: allowed None or an int in 0\.\.1"):
        tc.kronecker([torch.zeros(2, 2), torch.zeros(2, 2)], skip=3)


def test_relative_error_zero_reference():
    with pytest.raises(ValueError, match=r"x is all zeros: the relative error is undefined"):
        tc.relative_error(torch.zeros(3), torch.ones(3))


def test_relative_error_non_finite():
    with pytest.raises(ValueError, match=r"approx must be finite, but 1 of its 3 entries are NaN or Inf"):
        tc.relative_error(torch.ones(3), torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"x must be finite, but 2 of its 3 entries are NaN or Inf"):
        tc.relative_error(torch.tensor([float("inf"), 1.0, float("-inf")]), torch.ones(3))


def test_relative_error_mismatched_shapes():
    with pytest.raises(ValueError, match=r"approx has shape \(3, 2\) but x has shape \(2, 3\)"):
        tc.relative_error(torch.ones(2, 3), torch.ones(3, 2))


def test_relative_error_non_tensor():
    with pytest.raises(TypeError, match=r"approx must be a torch\.Tensor, got list"):
        tc.relative_error(torch.ones(2), [1.0, 1.0])
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got float"):
        tc.relative_error(1.0, torch.ones(2))


def test_relative_error_hostile_inputs():
    """Each case failed before relative_error computed in float64 with exact power-of-two scaling: float16 values
    of thousands (||x||^2 overflowed: 0.0), a complex approximation of a real tensor (imaginary part dropped: 0.0),
    a tiny non-zero tensor ("x is all zeros"), float32 at 1e30 and float64 at 1e-300."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1000, generator=g, dtype=torch.float64)
    x16 = (3000 + 100 * base).half()
    err = float(tc.relative_error(x16, (x16.double() * 1.01).half()))
    ref = float(np.linalg.norm(x16.double().numpy() - (x16.double() * 1.01).half().double().numpy())
                / np.linalg.norm(x16.double().numpy()))
    assert abs(err - ref) < 1e-3 * ref and abs(err - 0.01) < 1e-3
    assert tc.relative_error(x16, x16).dtype == torch.float16
    y = base.reshape(10, 100)
    assert abs(float(tc.relative_error(y, y + 0.01j * y)) - 0.01) < 1e-12  # imaginary part counts
    assert float(tc.relative_error(y + 0j, y)) < 1e-15 and tc.relative_error(y + 0j, y).dtype == torch.float64
    for scale, dtype in ((1e-30, torch.float32), (1e30, torch.float32), (1e-300, torch.float64),
                         (1e300, torch.float64), (1e-40, torch.float32)):  # 1e-40: float32 subnormals
        x = (y * scale).to(dtype)
        approx = x * 1.1
        assert abs(float(tc.relative_error(x, approx)) - 0.1) < 1e-3, (scale, dtype)
        assert abs(float(tc.relative_error(x, torch.zeros_like(x))) - 1.0) < 1e-6
    assert float(tc.relative_error(torch.arange(1, 5), torch.arange(1, 5) * 1.5)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"x is empty \(shape \(0, 3\)\)"):
        tc.relative_error(torch.ones(0, 3), torch.ones(0, 3))
    with pytest.raises(TypeError, match=r"x must be a numeric tensor .* got torch.bool"):
        tc.relative_error(torch.ones(3, dtype=torch.bool), torch.ones(3))
    with pytest.raises(ValueError, match=r"x is all zeros"):
        tc.relative_error(torch.zeros(3), torch.ones(3))


def test_relative_error_is_differentiable():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 5, dtype=torch.float64)
    err = tc.relative_error(x, target)
    err.backward()
    # d/dx (||x - t|| / ||x||), checked against the closed form
    d, nx = (x - target).detach(), x.detach().norm()
    expected = d / (d.norm() * nx) - d.norm() * x.detach() / nx**3
    torch.testing.assert_close(x.grad, expected)


@given(shape=shapes, seed=seeds, dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]), bad=st.sampled_from([None, "nan", "inf", "-inf"]))
def test_max_abs_and_check_finite_agree_with_the_elementwise_definitions(shape, seed, dtype, scale, bad):
    """max_abs (one aminmax pass) equals max |x| from abs().max(); check_finite raises exactly when isfinite finds a
    non-finite entry (any position, either sign, any dtype, scales down to float32 subnormals)."""
    from tensorcompress._validation import check_finite, max_abs

    x = (randn(shape, seed, torch.device("cpu"), torch.float64) * scale).to(dtype)
    if bad is not None:
        x.view(-1)[seed % x.numel()] = float(bad)
    got, expected = max_abs(x), float(x.abs().max())
    assert (np.isnan(got) and np.isnan(expected)) or got == expected
    if bool(torch.isfinite(x).all()):
        check_finite(x)
    else:
        with pytest.raises(ValueError, match=r"x must be finite, but 1 of its"):
            check_finite(x)


def test_max_abs_edge_cases():
    from tensorcompress._validation import max_abs

    assert max_abs(torch.ones(0, 3)) == 0.0
    assert max_abs(torch.tensor([3, -7, 2])) == 7.0  # integers, the negative side
    assert max_abs(torch.tensor([3 + 4j, 1j])) == pytest.approx(5.0)  # complex: the modulus
    assert max_abs(torch.tensor([-0.0, 0.0])) == 0.0


def test_finiteness_check_of_a_tensor_in_a_graph_warns_nothing():
    """Checking logits that require grad (as kd_loss does) stays silent: failed when max_abs called float() on them
    (torch's 'Converting a tensor with requires_grad=True to a scalar' warning, caught by nbval in notebook 17)."""
    import warnings

    from tensorcompress._validation import check_finite, max_abs

    x = torch.randn(4, 5, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_finite(x * 2)
        assert max_abs(x) == float(x.detach().abs().max())

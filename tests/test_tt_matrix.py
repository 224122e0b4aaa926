"""TT-matrix: TT-SVD of a matrix, conversion to matrix/tensor against TensorLy's TTMatrix, the core-by-core
matrix-vector product against the dense product (values and gradients), devices and dtypes, bad input."""

from __future__ import annotations

import math

import pytest
import tensorly as tl
import torch
from helpers import randn, tolerance
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import tensorcompress as tc

modes = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=4)


@given(pairs=modes, seed=st.integers(0, 999), eps=st.floats(0.0, 0.8))
def test_tt_matrix_svd_and_tensorly_agree(pairs, seed, eps):
    rows, cols = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    w = randn((math.prod(rows), math.prod(cols)), seed)
    exact = tc.tt_matrix_svd(w, rows, cols)
    torch.testing.assert_close(exact.to_matrix(), w, rtol=1e-10, atol=1e-10)
    approx = tc.tt_matrix_svd(w, rows, cols, eps=eps)
    assert float(torch.linalg.vector_norm(approx.to_matrix() - w)) <= eps * float(torch.linalg.vector_norm(w)) * (
        1 + 1e-9) + 1e-12
    # TensorLy reads the same cores as the same matrix and the same (m_1..m_d, n_1..n_d) tensor
    with tl.backend_context("pytorch"):
        ref = tl.tt_matrix.TTMatrix([c for c in approx.cores])
        torch.testing.assert_close(approx.to_matrix(), ref.to_matrix())
        torch.testing.assert_close(approx.to_tensor(), ref.to_tensor())
    assert approx.to_tensor().shape == rows + cols
    assert approx.n_params == sum(c.numel() for c in approx.cores)


@given(pairs=modes, seed=st.integers(0, 999), batch=st.integers(1, 3), rank=st.integers(1, 3))
def test_matvec_equals_dense_product_and_gradients(pairs, seed, batch, rank):
    rows, cols = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    w = randn((math.prod(rows), math.prod(cols)), seed)
    tt = tc.tt_matrix_svd(w, rows, cols, rank=rank)
    dense = tt.to_matrix()
    x = randn((batch, math.prod(cols)), seed + 1)
    torch.testing.assert_close(tt.matvec(x), x @ dense.mT, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tc.tt_matrix_vector_product(tt, x[0]), dense @ x[0], rtol=1e-10, atol=1e-10)
    cores = [c.clone().requires_grad_(True) for c in tt.cores]
    xg = x.clone().requires_grad_(True)
    tc.TTMatrix(cores).matvec(xg).square().sum().backward()
    cores2 = [c.clone().requires_grad_(True) for c in tt.cores]
    xg2 = x.clone().requires_grad_(True)
    (xg2 @ tc.TTMatrix(cores2).to_matrix().mT).square().sum().backward()
    torch.testing.assert_close(xg.grad, xg2.grad, rtol=1e-9, atol=1e-9)
    for a, b in zip(cores, cores2, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9)


def test_device_dtype_and_round_trip(device, dtype):
    w64 = randn((12, 20), 0)
    ref = tc.tt_matrix_svd(w64, (3, 4), (4, 5), rank=4)
    tt = tc.tt_matrix_svd(w64.to(device=device, dtype=dtype), (3, 4), (4, 5), rank=4)
    assert tt.dtype == dtype and tt.device.type == device.type and tt.rank == (1, 4, 1)
    torch.testing.assert_close(tt.to_matrix().cpu().double(), ref.to_matrix(), rtol=10 * tolerance(dtype),
                               atol=10 * tolerance(dtype))
    x = randn((3, 20), 1, device, dtype)
    y = tt.matvec(x)
    assert y.dtype == dtype and y.device.type == device.type and y.shape == (3, 12)
    back = tc.TTMatrix.from_tensorly(tt.to_tensorly())
    torch.testing.assert_close(back.to_matrix(), tt.to_matrix(), rtol=0, atol=0)
    assert isinstance(tt.to_tensorly(), tl.tt_matrix.TTMatrix)
    assert tt.shape == (12, 20) and tt.row_modes == (3, 4) and tt.col_modes == (4, 5)
    assert tt.tensorized_shape == (3, 4, 4, 5) and tt.n_params == 3 * 4 * 4 + 4 * 4 * 5
    assert repr(tt).startswith("TTMatrix(shape=(12, 20), row_modes=(3, 4), col_modes=(4, 5), rank=(1, 4, 1)")
    assert tt.to(torch.float64).dtype == torch.float64


W = torch.ones(6, 8)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((W, (2, 3), (2, 2)), {}, ValueError, r"matrix has shape \(6, 8\) but row_modes \(2, 3\) and col_modes"),
        ((W, (2, 3), (8,)), {}, ValueError, r"row_modes and col_modes must have the same length"),
        ((W, 6, (8,)), {}, TypeError, r"row_modes must be a non-empty sequence of positive ints, got 6"),
        ((W, (2, 0), (2, 4)), {}, ValueError, r"row_modes\[1\] must be >= 1, got 0"),
        ((torch.ones(6, 8, 1), (6,), (8,)), {}, ValueError, r"matrix must be 2-D"),
        ((W.long(), (6,), (8,)), {}, TypeError, r"floating point dtype"),
        ((W, (2, 3), (2, 4)), dict(eps=0.1, rank=2), ValueError, r"give eps or rank, not both"),
        ((W, (2, 3), (2, 4)), dict(rank=[5, 1]), ValueError, r"rank must hold d - 1 = 1 inner ranks"),
        ((W, (6,), (8,)), dict(rank=0), ValueError, r"rank must be >= 1, got 0"),
    ],
)
def test_tt_matrix_svd_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tc.tt_matrix_svd(*args, **kwargs)


def test_matvec_bad_input():
    tt = tc.tt_matrix_svd(W, (2, 3), (2, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(8,\) or \(B, 8\) .* got \(3, 7\)"):
        tt.matvec(torch.ones(3, 7))
    with pytest.raises(ValueError, match=r"x is torch.float64 on cpu but the TT-matrix is torch.float32"):
        tt.matvec(torch.ones(8, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"tt_matrix must be a TTMatrix, got Tensor"):
        tc.tt_matrix_vector_product(W, torch.ones(8))
    with pytest.raises(ValueError, match=r"cores\[0\] must have 4 dimensions"):
        tc.TTMatrix([torch.ones(1, 2, 1)])


def _examples():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return [tc.CPTensor(r(2), [r(3, 2), r(4, 2), r(5, 2)]),
            tc.TuckerTensor(r(2, 3, 2), [r(3, 2), r(4, 3), r(5, 2)]),
            tc.TTTensor([r(1, 3, 2), r(2, 4, 2), r(2, 5, 1)]),
            tc.TTMatrix([r(1, 2, 3, 2), r(2, 3, 2, 1)])]


@pytest.mark.parametrize("obj", _examples(), ids=lambda o: type(o).__name__)
def test_shared_base_round_trips(obj):
    """What the one base class gives every result: iteration, to/clone (deep), and the TensorLy round trip from
    torch and from NumPy, checked against TensorLy's own dense reconstruction."""
    dense = obj.to_tensor()
    tly = obj.to_tensorly()
    assert type(tly).__name__ == type(obj).__name__
    with tl.backend_context("pytorch"):
        torch.testing.assert_close(tly.to_tensor(), dense, rtol=1e-12, atol=1e-12)
    numpy_form = [p.numpy() if isinstance(p, torch.Tensor) else [q.numpy() for q in p] for p in obj]
    for back in (type(obj).from_tensorly(tly), type(obj).from_tensorly(numpy_form)):
        assert type(back) is type(obj)
        torch.testing.assert_close(back.to_tensor(), dense, rtol=0, atol=0)
    copy = obj.clone()
    copy._tensors()[0].add_(1.0)
    torch.testing.assert_close(obj.to_tensor(), dense, rtol=0, atol=0)  # the clone is deep
    half = obj.to(torch.float32)
    assert half.dtype == torch.float32 and type(half) is type(obj) and len(half._tensors()) == len(obj._tensors())
    assert repr(obj).startswith(f"{type(obj).__name__}(shape=")


# ---------------------------------------------------------------- contraction orders

ORDERS = tc.decompositions.tt_matrix.ORDERS


def _left_to_right_oracle(cores, x):
    """The product as the library computed it before the order was chosen (cores from the first to the last), kept
    as a test-only oracle."""
    t = x.reshape(x.shape[0], 1, x.shape[1])
    for core in cores:
        r0, m, n, r1 = core.shape
        rest = t.shape[2] // n
        t = torch.einsum("pans,amnr->pmrs", t.reshape(t.shape[0], r0, n, rest), core)
        t = t.reshape(t.shape[0] * m, r1, rest)
    return t.reshape(x.shape[0], -1)


def _random_cores(pairs, ranks, seed, dtype=torch.float64):
    rank = (1, *(ranks[: len(pairs) - 1]), 1)
    return [randn((rank[k], m, n, rank[k + 1]), seed + k, dtype=dtype) for k, (m, n) in enumerate(pairs)]


ranks = st.lists(st.integers(1, 5), min_size=3, max_size=3)


@given(pairs=st.lists(st.tuples(st.integers(2, 4), st.integers(2, 4)), min_size=1, max_size=4),
       ranks=st.lists(st.integers(2, 5), min_size=3, max_size=3), batch=st.integers(0, 70))
def test_flop_count_is_what_torch_counts(pairs, ranks, batch):
    # torch's FLOP counter (2 per multiply-add of every matrix product it dispatches) is the independent count; sizes
    # from 2 up, since einsum multiplies elementwise (uncounted) when a contracted size is 1
    tt = tc.TTMatrix(_random_cores(pairs, ranks, 0))
    flops = tc.contraction_flops(tt.row_modes, tt.col_modes, tt.rank, batch)
    assert list(flops) == list(ORDERS)
    x = randn((batch, tt.shape[1]), 1)
    for order in ORDERS:
        with FlopCounterMode(display=False) as counter:
            tc.tt_matrix_vector_product(tt, x, order=order)
        assert counter.get_total_flops() == flops[order], order


@given(pairs=modes, ranks=ranks, batch=st.integers(0, 70))
def test_the_chosen_order_has_the_fewest_flops(pairs, ranks, batch):
    tt = tc.TTMatrix(_random_cores(pairs, ranks, 0))
    flops = tc.contraction_flops(tt.row_modes, tt.col_modes, tt.rank, batch)
    chosen = tc.contraction_order(tt.row_modes, tt.col_modes, tt.rank, batch)
    assert flops[chosen] == min(flops.values())
    assert all(flops[o] > flops[chosen] for o in ORDERS[: ORDERS.index(chosen)])  # ties go to the earlier order
    x = randn((batch, tt.shape[1]), 1)
    assert torch.equal(tc.tt_matrix_vector_product(tt, x), tc.tt_matrix_vector_product(tt, x, order=chosen))


@given(pairs=modes, ranks=ranks, batch=st.integers(1, 5), seed=st.integers(0, 999))
def test_every_order_equals_the_dense_product_and_its_gradients(pairs, ranks, batch, seed):
    cores = _random_cores(pairs, ranks, seed)
    dense = tc.TTMatrix(cores).to_matrix()
    x = randn((batch, dense.shape[1]), seed + 10)
    torch.testing.assert_close(_left_to_right_oracle(cores, x), x @ dense.mT, rtol=1e-12, atol=1e-12)
    grads = []
    for order in ORDERS:
        leaves = [c.clone().requires_grad_(True) for c in cores] + [x.clone().requires_grad_(True)]
        y = tc.tt_matrix_vector_product(tc.TTMatrix(leaves[:-1]), leaves[-1], order=order)
        torch.testing.assert_close(y, x @ dense.mT, rtol=1e-12, atol=1e-12)
        y.square().sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_equals_the_former_product_in_float32(order):
    cores = _random_cores([(4, 8), (8, 4), (2, 4)], [3, 4, 1], 0, dtype=torch.float32)
    x = randn((6, 128), 5, dtype=torch.float32)
    y, ref = tc.tt_matrix_vector_product(tc.TTMatrix(cores), x, order=order), _left_to_right_oracle(cores, x)
    # 1e-5 relative to the output's scale: an entry near 0 is a difference of large sums
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_contraction_flops_closed_form_and_bad_input():
    # 1024 x 1024 as (8, 8, 4, 4) x (8, 8, 4, 4), rank 4: left and right mirror each other; forming W costs more
    rank = (1, 4, 4, 4, 1)
    flops = tc.contraction_flops((8, 8, 4, 4), (8, 8, 4, 4), rank, 64)
    per_core = [256, 1024, 256, 64]  # r_{k-1} m_k n_k r_k
    left = 2 * 64 * (per_core[0] * 128 + per_core[1] * 8 * 16 + per_core[2] * 64 * 4 + per_core[3] * 256)
    assert flops["left"] == flops["right"] == left
    # forming W: (m_1 n_1, r_1) @ (r_1, m_2 n_2 r_2), ... with (r_{k-1} r_k) = 16, 16, 4; then 2 B M N
    assert flops["dense"] == 2 * 64 * 1024 * 1024 + 2 * 16 * (64 ** 2 + 256 ** 2) + 2 * 4 * 1024 ** 2
    assert tc.contraction_order((8, 8, 4, 4), (8, 8, 4, 4), rank, 64) == "left"
    assert tc.contraction_order((16, 2), (2, 16), (1, 1, 1), 5) == "right"  # 64 FLOPs a vector per core, not 512
    assert tc.contraction_order((4, 4), (4, 4), (1, 16, 1), 100) == "dense"  # full rank, a large batch
    with pytest.raises(ValueError, match=r"rank \(1, 2\) d \+ 1 values"):
        tc.contraction_flops((2, 2), (2, 2), (1, 2), 3)
    with pytest.raises(ValueError, match="batch must be >= 0, got -1"):
        tc.contraction_flops((2,), (2,), (1, 1), -1)
    with pytest.raises(TypeError, match="batch must be an int"):
        tc.contraction_flops((2,), (2,), (1, 1), 2.0)
    with pytest.raises(ValueError, match=r"order must be one of \('left', 'right', 'dense'\) or None, got 'up'"):
        tc.tt_matrix_vector_product(tc.TTMatrix([torch.ones(1, 2, 2, 1)]), torch.ones(2), order="up")

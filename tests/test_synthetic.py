"""Synthetic low-rank tensors: shapes, exact ranks (checked by independent rank computations), exact noise level and
SNR, seeding, dtype and device, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorcompress as tc
from tensorcompress.decompositions import SyntheticTensor, add_noise, random_cp, random_tt, random_tucker


def _rank(m: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(m))


@given(shape=st.lists(st.integers(2, 6), min_size=2, max_size=4), data=st.data(), seed=st.integers(0, 999))
def test_known_ranks(shape, data, seed):
    ranks = [data.draw(st.integers(1, s)) for s in shape]
    x, truth = random_tucker(shape, ranks, seed=seed, dtype=torch.float64)
    assert isinstance(truth, tc.TuckerTensor) and x.shape == tuple(shape)
    # generic Gaussian core: the multilinear rank is min(R_n, prod of the other ranks)
    for n, r in enumerate(ranks):
        expected = min(r, math.prod(ranks) // r)
        assert _rank(tc.unfold(x, n)) == expected
    inner = [data.draw(st.integers(1, min(math.prod(shape[:k + 1]), math.prod(shape[k + 1:]))))
             for k in range(len(shape) - 1)]
    x, truth = random_tt(shape, inner, seed=seed, dtype=torch.float64)
    assert isinstance(truth, tc.TTTensor) and truth.rank == (1, *inner, 1)
    for k, r in enumerate(inner):  # the k-th TT unfolding has rank at most r_k (= r_k generically)
        assert _rank(x.reshape(math.prod(shape[:k + 1]), -1)) <= r
    cp_rank = data.draw(st.integers(1, 3))
    x, truth = random_cp(shape, cp_rank, seed=seed, dtype=torch.float64)
    assert isinstance(truth, tc.CPTensor) and truth.rank == cp_rank
    assert _rank(tc.unfold(x, 0)) <= cp_rank
    torch.testing.assert_close(x, truth.to_tensor(), rtol=0, atol=0)


@pytest.mark.parametrize("fn,rank", [(random_cp, 3), (random_tucker, 2), (random_tt, 2)])
def test_noise_and_snr_are_exact(fn, rank, device, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    x, truth = fn((5, 6, 7), rank, noise=0.25, seed=0, dtype=dtype, device=device)
    assert x.dtype == dtype and x.device.type == device.type and truth.dtype == dtype
    assert abs(float(tc.relative_error(truth.to_tensor(), x)) - 0.25) < tol
    y, truth_y = fn((5, 6, 7), rank, snr_db=20.0, seed=0, dtype=dtype, device=device)
    signal, noise = truth_y.to_tensor().double(), (y - truth_y.to_tensor()).double()
    snr = 10 * math.log10(float(signal.square().sum()) / float(noise.square().sum()))
    assert abs(snr - 20.0) < 1e-3 if dtype == torch.float32 else abs(snr - 20.0) < 1e-9


def test_seeding_and_return_form():
    a = random_cp((4, 5), 2, noise=0.1, seed=3)
    b = random_cp((4, 5), 2, noise=0.1, seed=3)
    c = random_cp((4, 5), 2, noise=0.1, seed=4)
    assert isinstance(a, SyntheticTensor) and a.tensor is a[0] and a.decomposition is a[1]
    torch.testing.assert_close(a.tensor, b.tensor, rtol=0, atol=0)
    assert not torch.equal(a.tensor, c.tensor)
    assert a.tensor.dtype == torch.float32  # the default
    x = torch.ones(3, 4)
    noisy = add_noise(x, noise=0.5, seed=0)
    assert torch.equal(x, torch.ones(3, 4)) and abs(float(tc.relative_error(x, noisy)) - 0.5) < 1e-6


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: random_cp((4,), 2), TypeError, r"shape must be a sequence of at least 2 positive ints"),
        (lambda: random_cp((4, 0), 2), ValueError, r"shape\[1\] must be >= 1, got 0"),
        (lambda: random_cp((4, 5), 0), ValueError, r"rank must be >= 1, got 0"),
        (lambda: random_cp((4, 5), 2, noise=0.1, snr_db=10), ValueError, r"give noise or snr_db, not both"),
        (lambda: random_cp((4, 5), 2, noise=-0.1), ValueError, r"noise must be >= 0, got -0.1"),
        (lambda: random_cp((4, 5), 2, snr_db=float("inf")), TypeError, r"snr_db must be a finite real number"),
        (lambda: random_cp((4, 5), 2, dtype=torch.int64), TypeError, r"dtype must be a floating point torch.dtype"),
        (lambda: random_cp((4, 5), 2, seed=1.5), TypeError, r"seed must be an int or None, got float"),
        (lambda: random_tucker((4, 5), (2, 6)), ValueError, r"rank\[1\]=6 exceeds the size 5 of mode 1"),
        (lambda: random_tucker((4, 5), (2,)), ValueError, r"rank must hold one rank per mode"),
        (lambda: random_tt((4, 5, 6), (5, 2)), ValueError, r"rank\[0\]=5 exceeds what the unfolding allows"),
        (lambda: random_tt((4, 5, 6), None), TypeError, r"rank must be an int or a sequence of d - 1 ints"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("decades", [0.0, 3.0, 8.0])
def test_graded_tucker_spectrum_spans_the_decades(decades):
    x, truth = random_tucker((12, 12, 12), 6, decades=decades, seed=0, dtype=torch.float64)
    assert truth.rank == (6, 6, 6)
    for n in range(3):
        s = torch.linalg.svdvals(tc.unfold(x, n))
        spread = math.log10(float(s[0] / s[5]))
        assert decades - 1 <= spread <= 1.5 * decades + 2, (n, spread)  # the random core spreads it further
    with pytest.raises(ValueError, match=r"decades must be >= 0, got -1"):
        random_tucker((3, 3), 2, decades=-1)

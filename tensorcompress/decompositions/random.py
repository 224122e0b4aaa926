r"""Seeded random tensors of known CP, Tucker or TT rank, optionally with Gaussian noise at an exact level.

Each generator returns a :class:`SyntheticTensor` ``(tensor, decomposition)`` named tuple: ``tensor`` is the
(possibly noisy) dense tensor and ``decomposition`` the noise-free ground truth (a
:class:`~tensorcompress.CPTensor`, :class:`~tensorcompress.TuckerTensor` or :class:`~tensorcompress.TTTensor`), so
``x, truth = random_cp((10, 10, 10), 3, snr_db=20, seed=0)``.

Noise is scaled exactly, not in expectation: with signal :math:`X` and noise :math:`N`,

.. math:: \text{noise} = \frac{\|N\|_F}{\|X\|_F}, \qquad
          \text{SNR}_\text{dB} = 10 \log_{10} \frac{\|X\|_F^2}{\|N\|_F^2} = -20 \log_{10}(\text{noise}).

All random numbers are drawn in float64 on the CPU from a generator seeded with ``seed`` and then moved, so a seed
gives the same tensor (up to rounding to ``dtype``) on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .._validation import check_positive_int
from ._common import check_tol, generator, parse_ranks
from .cp import CPTensor
from .tt import TTTensor, parse_tt_rank
from .tucker import TuckerTensor

__all__ = ["SyntheticTensor", "random_cp", "random_tucker", "random_tt", "add_noise"]


class SyntheticTensor(NamedTuple):
    """A generated tensor and the decomposition it was built from (noise-free)."""

    tensor: torch.Tensor
    decomposition: CPTensor | TuckerTensor | TTTensor


def _check_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if isinstance(shape, int) or not isinstance(shape, Sequence) or len(shape) < 2:
        raise TypeError(f"shape must be a sequence of at least 2 positive ints, got {shape!r}")
    return tuple(check_positive_int(s, f"shape[{k}]") for k, s in enumerate(shape))


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def _noise_level(noise: object, snr_db: object) -> float:
    noise = check_tol(noise, "noise")
    if snr_db is not None:
        if noise:
            raise ValueError(f"give noise or snr_db, not both (got noise={noise}, snr_db={snr_db!r})")
        if isinstance(snr_db, bool) or not isinstance(snr_db, int | float) or not math.isfinite(snr_db):
            raise TypeError(f"snr_db must be a finite real number or None, got {snr_db!r}")
        return 10 ** (-snr_db / 20)
    return noise


def add_noise(x: torch.Tensor, *, noise: float = 0.0, snr_db: float | None = None,
              seed: int | None = None) -> torch.Tensor:
    r"""``x`` plus Gaussian noise scaled so that :math:`\|N\|/\|X\|` = ``noise`` exactly (or the SNR is ``snr_db``
    dB exactly). Returns a new tensor; ``x`` is not modified.

    Parameters
    ----------
    x : torch.Tensor
        The signal, any shape, dtype and device; the noise is drawn in float64 on the CPU, then cast to ``x``'s.
    noise : float >= 0
        The relative level :math:`\|N\|_F/\|X\|_F`; ``0`` (and no ``snr_db``) returns a copy of ``x``.
    snr_db : float, optional
        The signal-to-noise ratio in dB instead, any finite real (``noise = 10**(-snr_db/20)``); give at most one of
        ``noise`` and ``snr_db``.
    seed : int, optional
        Seed of the noise; ``None`` draws a fresh one.
    """
    level = _noise_level(noise, snr_db)
    if level == 0:
        return x.clone()
    gen = generator(seed)
    n = torch.randn(tuple(x.shape), generator=gen, dtype=torch.float64)
    n = n * (level * float(torch.linalg.vector_norm(x.double())) / float(torch.linalg.vector_norm(n)))
    return x + n.to(device=x.device, dtype=x.dtype)


def _synthetic(build: Callable[[torch.Generator], CPTensor | TuckerTensor | TTTensor], noise: object,
               snr_db: object, seed: int | None, dtype: object, device: torch.device | str | None) -> SyntheticTensor:
    """What every generator shares after checking its shape and rank: check ``dtype`` and the noise, build the truth
    in float64 from a generator seeded with ``seed``, draw the noise's seed from the same generator after it, and
    return the noisy tensor with its truth, both on ``device`` in ``dtype``."""
    dtype = _check_dtype(dtype)
    level = _noise_level(noise, snr_db)
    gen = generator(seed)
    truth = build(gen)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    full = truth.to_tensor()
    if level:
        full = add_noise(full, noise=level, seed=noise_seed)
    return SyntheticTensor(full.to(device=device, dtype=dtype), truth.to(device=device, dtype=dtype))


def random_cp(shape: Sequence[int], rank: int, *, noise: float = 0.0, snr_db: float | None = None,
              seed: int | None = None, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> SyntheticTensor:
    r"""A tensor of CP rank (at most, generically exactly) ``rank``: standard normal factors, unit weights.

    Parameters
    ----------
    shape : sequence of int
        At least two positive sizes.
    rank : int
        Number of rank-one components.
    noise, snr_db : float
        Relative noise :math:`\|N\|/\|X\|` or signal-to-noise ratio in dB (give at most one; see
        :func:`add_noise`).
    seed : int, optional
        Seed of the factors and of the noise.
    dtype, device
        Of the returned tensors (a floating point dtype).
    """
    shape = _check_shape(shape)
    check_positive_int(rank, "rank")

    def build(gen: torch.Generator) -> CPTensor:
        factors = [torch.randn(s, rank, generator=gen, dtype=torch.float64) for s in shape]
        return CPTensor(torch.ones(rank, dtype=torch.float64), factors)

    return _synthetic(build, noise, snr_db, seed, dtype, device)


def random_tucker(shape: Sequence[int], rank: int | Sequence[int], *, decades: float = 0.0, noise: float = 0.0,
                  snr_db: float | None = None, seed: int | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> SyntheticTensor:
    r"""A tensor of multilinear rank ``rank``: standard normal core, orthonormal factors (QR of normal matrices).

    Parameters
    ----------
    shape : sequence of int
        At least two positive sizes :math:`I_n`.
    rank : int or sequence of int
        One rank for every mode, or one rank per mode, ``1 <= R_n <= I_n``.
    decades : float >= 0
        ``decades`` > 0 grades the core (an ill-conditioned tensor): entry :math:`(i_1..i_N)` is multiplied by
        :math:`\prod_n 10^{-\text{decades}\, i_n / (R_n - 1)}`, so the singular values of every unfolding fall
        over at least about ``decades`` decades (the random core spreads them further). ``0`` leaves it normal.
    noise, snr_db, seed, dtype, device
        As :func:`random_cp`.
    """
    shape = _check_shape(shape)
    ranks = parse_ranks(rank, shape)
    decades = check_tol(decades, "decades")

    def build(gen: torch.Generator) -> TuckerTensor:
        core = torch.randn(tuple(ranks), generator=gen, dtype=torch.float64)
        for n, r in enumerate(ranks):
            grade = (torch.logspace(0, -decades, r, dtype=torch.float64) if r > 1
                     else torch.ones(1, dtype=torch.float64))
            core = core * grade.reshape([r if k == n else 1 for k in range(len(ranks))])
        factors = [torch.linalg.qr(torch.randn(s, r, generator=gen, dtype=torch.float64)).Q
                   for s, r in zip(shape, ranks, strict=True)]
        return TuckerTensor(core, factors)

    return _synthetic(build, noise, snr_db, seed, dtype, device)


def random_tt(shape: Sequence[int], rank: int | Sequence[int], *, noise: float = 0.0, snr_db: float | None = None,
              seed: int | None = None, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> SyntheticTensor:
    r"""A tensor of TT rank ``rank``: standard normal cores scaled by :math:`1/\sqrt{r_{k-1} I_k}`.

    Parameters
    ----------
    shape : sequence of int
        At least two positive sizes :math:`I_1..I_d`.
    rank : int or sequence of int
        An int (capped at what each unfolding allows) or the ``d - 1`` inner ranks, each at most
        :math:`\min(\prod_{j \le k} I_j, \prod_{j > k} I_j)`.
    noise, snr_db, seed, dtype, device
        As :func:`random_cp`.
    """
    shape = _check_shape(shape)
    inner = parse_tt_rank(rank, shape, strict=True)
    if inner is None:
        raise TypeError("rank must be an int or a sequence of d - 1 ints, got None")
    full_ranks = [1, *inner, 1]

    def build(gen: torch.Generator) -> TTTensor:
        return TTTensor([torch.randn(full_ranks[k], s, full_ranks[k + 1], generator=gen, dtype=torch.float64)
                         / math.sqrt(full_ranks[k] * s) for k, s in enumerate(shape)])

    return _synthetic(build, noise, snr_db, seed, dtype, device)

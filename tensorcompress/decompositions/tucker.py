r"""Tucker decomposition: (sequentially truncated) HOSVD and higher-order orthogonal iteration (HOOI).

.. math:: \hat X = G \times_1 A_1 \times_2 A_2 \cdots \times_N A_N, \qquad G \in \mathbb R^{R_1\times\cdots\times R_N},
          A_n \in \mathbb R^{I_n \times R_n},\ A_n^\top A_n = I,

stored with :math:`\prod_n R_n + \sum_n I_n R_n` numbers. De Lathauwer, De Moor & Vandewalle (2000), "A multilinear
singular value decomposition" and "On the best rank-(R1,...,RN) approximation of higher-order tensors", SIAM J.
Matrix Anal. Appl. 21(4); Vannieuwenhoven, Vandebril & Meerbergen (2012), "A new truncation strategy for the higher-
order singular value decomposition", SIAM J. Sci. Comput. 34(2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_finite, check_matrices, check_positive_int, check_tensor
from ..tensor import ldexp, multi_mode_dot, unfold
from ._common import (
    FactorMatrices,
    check_tol,
    generator,
    leading_eigvecs,
    leading_left_singular,
    parse_ranks,
    prepare,
    project,
    randn,
    svd,
    unfolding_gram,
    widen,
)

__all__ = ["TuckerTensor", "hosvd", "tucker", "tucker_to_tensor"]


class TuckerTensor(FactorMatrices):
    r"""A tensor in Tucker format :math:`G \times_1 A_1 \cdots \times_N A_N`.

    Parameters
    ----------
    core : torch.Tensor
        Core tensor of shape ``(R_1, ..., R_N)``.
    factors : sequence of torch.Tensor
        Factor matrices of shape ``(I_n, R_n)`` (orthonormal columns when produced by :func:`hosvd`/:func:`tucker`).

    Attributes
    ----------
    shape, rank : tuple of int
        ``(I_1..I_N)`` and ``(R_1..R_N)``.
    n_params : int
        :math:`\prod_n R_n + \sum_n I_n R_n`.
    """

    def __init__(self, core: torch.Tensor, factors: Sequence[torch.Tensor]):
        check_tensor(core, "core")
        factors = check_matrices(factors, "factors")
        if core.ndim != len(factors):
            raise ValueError(f"core has order {core.ndim} (shape {tuple(core.shape)}) but {len(factors)} factors "
                             f"were given: give one factor per mode")
        self.factors = self._check_factors(factors, core, "core", core.shape,
                                           lambda k: f"mode {k} of the core has size {core.shape[k]}")
        self.core = core

    @property
    def rank(self) -> tuple[int, ...]:
        return tuple(self.core.shape)

    def _parts(self) -> tuple:
        return self.core, self.factors

    @classmethod
    def _from_parts(cls, parts: list) -> TuckerTensor:
        return cls(*parts)

    _tensorly_class = ("tucker_tensor", "TuckerTensor")

    def to_tensor(self) -> torch.Tensor:
        r"""The full tensor :math:`G \times_1 A_1 \cdots \times_N A_N`."""
        return tucker_to_tensor(self)


def tucker_to_tensor(tucker: TuckerTensor) -> torch.Tensor:
    r"""Full tensor :math:`G \times_1 A_1 \cdots \times_N A_N`."""
    if not isinstance(tucker, TuckerTensor):
        raise TypeError(f"tucker must be a TuckerTensor, got {type(tucker).__name__}")
    return multi_mode_dot(tucker.core, tucker.factors)


def _check_rank_eps(x: torch.Tensor, rank: object, eps: object) -> tuple[list[int] | None, float | None]:
    if rank is not None and eps is not None:
        raise ValueError(f"give rank or eps, not both (got rank={rank!r}, eps={eps!r})")
    eps = check_tol(eps, "eps", allow_none=True)
    if rank is None:
        return None, eps
    return parse_ranks(rank, x.shape), None


@torch.no_grad()
def hosvd(x: torch.Tensor, rank: int | Sequence[int] | None = None, *, eps: float | None = None) -> TuckerTensor:
    r"""Sequentially truncated higher-order SVD (ST-HOSVD).

    For :math:`n = 1..N`: :math:`A_n` = the leading :math:`R_n` left singular vectors of the unfolding
    :math:`G_{(n)}` of the current core, then :math:`G \leftarrow G \times_n A_n^\top` (Vannieuwenhoven et al.
    2012). The singular vectors come from the eigenvectors of the small Gram matrix :math:`G_{(n)} G_{(n)}^\top`
    where that is provably as accurate as an SVD (the discarded energy far above the Gram route's
    :math:`\epsilon_{\text{mach}}`-level floor, see :func:`~tensorcompress.decompositions._common.gram_is_accurate`),
    else from an SVD of :math:`G_{(n)}`: exact low-rank and graded (ill-conditioned) tensors keep all their
    digits. The error satisfies the HOSVD bound of De Lathauwer et al. (2000)

    .. math:: \|X - \hat X\|^2 = \sum_n \sum_{i > R_n} \sigma_i(G^{(n-1)}_{(n)})^2
              \le \sum_n \sum_{i > R_n} \sigma_i(X_{(n)})^2 \le N \|X - X_{\text{best}}\|^2 .

    float16/bfloat16 inputs are computed in float32 and returned in their dtype; inputs far from 1 in magnitude are
    scaled by an exact power of two first (``eps`` holds at 1e20 or 1e-25 in float32). For float32 input, the one
    projection of the full tensor runs in float32 and the shrinking core after it in float64, rounded once at the
    end (:func:`~tensorcompress.decompositions._common.widen`).

    Parameters
    ----------
    x : torch.Tensor
        Floating point tensor of order ``N >= 2``, finite, no size-0 mode.
    rank : int or sequence of int, optional
        Multilinear rank, ``1 <= R_n <= I_n`` (an int: the same for every mode).
    eps : float, optional
        Relative accuracy: each mode gets the smallest rank whose discarded energy is
        :math:`\le \epsilon^2 \|X\|^2 / N`, so :math:`\|X - \hat X\| \le \epsilon \|X\|` (as Tensor Toolbox's
        ``hosvd(X, tol)``). Give ``rank`` or ``eps``, not both; neither keeps full ranks (exact).

    Returns
    -------
    TuckerTensor
        Orthonormal factors and the core :math:`X \times_1 A_1^\top \cdots \times_N A_N^\top`.
    """
    dtype = x.dtype if isinstance(x, torch.Tensor) else None
    x, exp = prepare(x, "x")
    ranks, eps = _check_rank_eps(x, rank, eps)
    if ranks is None and eps is None:
        ranks = list(x.shape)
    budget = None if eps is None else eps**2 * float(torch.linalg.vector_norm(x)) ** 2 / x.ndim
    core = x
    factors = []
    for n in range(x.ndim):
        r_n = ranks[n] if ranks is not None else None
        # the factors keep the input's (compute) dtype; after the one pass over x, the shrinking core is carried in
        # float64 for float32 input (see _common.widen): exact projections on the stored factors, rounded once
        factor = leading_left_singular(core, n, unfolding_gram(core, n), rank=r_n, budget=budget).to(x.dtype)
        factors.append(factor)
        core = widen(project(core, factor.to(core.dtype), n))
    return TuckerTensor(ldexp(core.to(x.dtype), exp), factors).to(dtype)


def _project(y: torch.Tensor, factors: Sequence[torch.Tensor], modes: Sequence[int]) -> torch.Tensor:
    r""":math:`Y \times_{k \in \text{modes}} A_k^\top` (``y`` itself for no modes), the mode shrinking ``y`` most
    first."""
    for k in sorted(modes, key=lambda k: factors[k].shape[1] / y.shape[k]):
        y = project(y, factors[k], k)
    return y


def _init_tucker(x: torch.Tensor, dtype: torch.dtype, ranks: list[int], init: object,
                 seed: int | None) -> list[torch.Tensor]:
    if isinstance(init, TuckerTensor):
        if init.shape != tuple(x.shape) or list(init.rank) != ranks:
            raise ValueError(f"init has shape {init.shape} and rank {init.rank} but x has shape "
                             f"{tuple(x.shape)} and rank={tuple(ranks)}")
        if init.device != x.device or init.dtype != dtype:
            raise ValueError(f"init is {init.dtype} on {init.device} but x is {dtype} on {x.device}: "
                             f"use init.to(x.device, x.dtype)")
        for k, f in enumerate(init.factors):
            check_finite(f, f"init.factors[{k}]")
        return [torch.linalg.qr(f.to(x.dtype)).Q for f in init.factors]
    if not isinstance(init, str) or init not in ("hosvd", "random"):
        raise ValueError(f"init must be 'hosvd', 'random' or a TuckerTensor, got {init!r}")
    if init == "random":
        gen = generator(seed)
        return [torch.linalg.qr(randn((s, r), gen, x)).Q for s, r in zip(x.shape, ranks, strict=True)]
    # classical (not sequentially truncated) HOSVD factors, as De Lathauwer et al. (2000) and TensorLy. Gram
    # eigenvectors suffice for a start: the first sweep's SVDs of the projected unfoldings restore the digits the
    # Gram route loses on weak directions (it keeps a component of every direction that a sweep then resolves).
    return [leading_eigvecs(unfolding_gram(x, n), r)[1] for n, r in enumerate(ranks)]


def _leading_svd(y: torch.Tensor, mode: int, rank: int) -> torch.Tensor:
    r"""The leading ``rank`` left singular vectors of the (small, projected) unfolding :math:`Y_{(n)}` by an SVD:
    accurate down to :math:`\epsilon_{\text{mach}}\sigma_1`, where Gram eigenvectors stop at
    :math:`\sqrt{\epsilon_{\text{mach}}}\,\sigma_1`."""
    unfolded = widen(unfold(y, mode))  # float32 factored in float64, as numpy.linalg (and TensorLy) do
    u = svd(unfolded, full_matrices=unfolded.shape[1] < rank)[0][:, :rank]
    # gesdd's vectors are orthonormal to ~n eps; a Householder QR of them (same span) to ~eps (orthogonality errors
    # pass straight into the core and the reconstruction)
    return torch.linalg.qr(u).Q.to(y.dtype)


@torch.no_grad()
def tucker(
    x: torch.Tensor,
    rank: int | Sequence[int],
    *,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    init: str | TuckerTensor = "hosvd",
    seed: int | None = None,
    return_errors: bool = False,
) -> TuckerTensor | tuple[TuckerTensor, list[float]]:
    r"""Tucker decomposition by higher-order orthogonal iteration (HOOI, De Lathauwer et al. 2000).

    Each sweep sets, for :math:`n = 1..N`, :math:`A_n` = the leading :math:`R_n` left singular vectors of
    :math:`Y_{(n)}`, :math:`Y = X \times_{k \ne n} A_k^\top`, by an SVD of that small
    :math:`I_n \times \prod_{k\ne n} R_k` matrix (not eigenvectors of its Gram matrix, which square the condition
    number: graded and exact low-rank tensors keep every digit, as with TensorLy's SVDs). The projections share
    work across modes (a dimension tree): :math:`X` projected on the right half of the modes serves every left mode
    and vice versa, two passes over :math:`X` per sweep. With orthonormal factors
    :math:`\|X - \hat X\|^2 = \|X\|^2 - \|G\|^2`, so the error costs nothing.

    The reported errors come from :math:`\|X\|^2 - \|G\|^2`, accurate to about
    :math:`\sqrt{\epsilon_{\text{mach}}}` relative (use :func:`tensorcompress.relative_error` below that).
    float16/bfloat16 inputs are computed in float32 and returned in their dtype; inputs far from 1 in magnitude are
    scaled by an exact power of two first. For float32 input the two passes over the full tensor per sweep run in
    float32, the small projections after them, the SVDs and the core in float64, rounded once
    (:func:`~tensorcompress.decompositions._common.widen`): on graded, exactly low-rank tensors the result is then
    at least as accurate as TensorLy's.

    Parameters
    ----------
    x : torch.Tensor
        Floating point tensor of order ``N >= 2``, finite, no size-0 mode. Not modified.
    rank : int or sequence of int
        Multilinear rank ``1 <= R_n <= I_n`` (an int: the same for every mode).
    n_iter_max : int
        Maximum number of sweeps (``>= 1``).
    tol : float
        Stop when the relative error changes by less than ``tol``; ``0`` runs all sweeps.
    init : {'hosvd', 'random'} or TuckerTensor
        Starting factors: 'hosvd' the leading left singular vectors of each unfolding :math:`X_{(n)}` (the truncated
        HOSVD, as TensorLy's ``init='svd'``); 'random' random orthonormal ones; a TuckerTensor's factors
        (re-orthonormalised by QR, the input is never modified).
    seed : int, optional
        Seed for ``init='random'``.
    return_errors : bool
        Also return the relative error after each sweep.
    """
    dtype = x.dtype if isinstance(x, torch.Tensor) else None
    x, exp = prepare(x, "x")
    ranks = parse_ranks(rank, x.shape)
    check_positive_int(n_iter_max, "n_iter_max")
    tol = check_tol(tol, "tol")
    factors = _init_tucker(x, dtype, ranks, init, seed)
    n_modes = x.ndim
    norm_x2 = float(torch.linalg.vector_norm(x)) ** 2
    if norm_x2 == 0:
        raise ValueError("x is all zeros: the relative error is undefined")
    h = max(1, n_modes // 2)
    left, right = list(range(h)), list(range(h, n_modes))
    errors: list[float] = []
    core = None
    wide = [widen(f) for f in factors]  # the factors for the small projections (see _common.widen)
    for _ in range(n_iter_max):
        for half, other in ((left, right), (right, left)):
            part = widen(_project(x, factors, other))  # the one pass over x per half, in x's dtype
            for n in half:
                y = _project(part, wide, [k for k in half if k != n])
                factors[n] = _leading_svd(y, n, ranks[n]).to(x.dtype)
                wide[n] = widen(factors[n])  # the stored (rounded) factor, so that the core is its exact projection
        core = project(y, wide[n_modes - 1], n_modes - 1)
        err2 = max(norm_x2 - float(torch.linalg.vector_norm(core)) ** 2, 0.0)
        errors.append(math.sqrt(err2 / norm_x2))
        if tol and len(errors) > 1 and abs(errors[-2] - errors[-1]) < tol:
            break
    result = TuckerTensor(ldexp(core.to(x.dtype), exp), factors).to(dtype)
    return (result, errors) if return_errors else result


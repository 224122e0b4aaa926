r"""CP (CANDECOMP/PARAFAC) decomposition by alternating least squares.

A CP tensor of rank :math:`R` is a sum of :math:`R` rank-one tensors,

.. math:: \hat X = [\![\lambda; A_1, \dots, A_N]\!] = \sum_{r=1}^R \lambda_r\, a^{(1)}_r \circ \cdots \circ a^{(N)}_r,

stored with :math:`R(1 + \sum_n I_n)` numbers. See Kolda & Bader (2009), "Tensor Decompositions and Applications",
SIAM Review 51(3), §3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_finite, check_matrices, check_positive_int, check_tensor
from ..tensor import khatri_rao, ldexp
from ._common import FactorMatrices, check_tol, generator, leading_eigvecs, prepare, unfolding_gram, uniform
from .cp_tuning import check_layout, gemm

__all__ = ["CPTensor", "cp_als", "cp_to_tensor"]


class CPTensor(FactorMatrices):
    r"""A tensor in CP format :math:`[\![\lambda; A_1, \dots, A_N]\!]`.

    Parameters
    ----------
    weights : torch.Tensor
        Vector :math:`\lambda` of length ``R``.
    factors : sequence of torch.Tensor
        Factor matrices :math:`A_n` of shape ``(I_n, R)``, on the weights' device with their dtype.

    Attributes
    ----------
    shape : tuple of int
        ``(I_1, ..., I_N)``.
    rank : int
        ``R``.
    n_params : int
        :math:`R + R\sum_n I_n`.
    """

    def __init__(self, weights: torch.Tensor, factors: Sequence[torch.Tensor]):
        check_tensor(weights, "weights")
        if weights.ndim != 1:
            raise ValueError(f"weights must be a vector (1-D), got shape {tuple(weights.shape)}")
        factors = check_matrices(factors, "factors")
        rank = weights.shape[0]
        self.factors = self._check_factors(factors, weights, "weights", [rank] * len(factors),
                                           lambda k: f"weights has length {rank}: every factor needs rank={rank} "
                                                     f"columns")
        self.weights = weights

    @property
    def rank(self) -> int:
        return self.weights.shape[0]

    def _parts(self) -> tuple:
        return self.weights, self.factors

    @classmethod
    def _from_parts(cls, parts: list) -> CPTensor:
        weights, factors = parts
        if weights is None:  # TensorLy's CPTensor((None, factors)): unit weights
            weights = torch.ones(factors[0].shape[1], dtype=factors[0].dtype, device=factors[0].device)
        return cls(weights, factors)

    _tensorly_class = ("cp_tensor", "CPTensor")

    def to_tensor(self) -> torch.Tensor:
        r"""The full tensor, :math:`X_{(1)} = A_1 \operatorname{diag}(\lambda) (A_2 \odot \cdots \odot A_N)^\top`."""
        return cp_to_tensor(self)

    def norm(self) -> torch.Tensor:
        r""":math:`\|\hat X\|_F = \sqrt{\lambda^\top (\ast_n A_n^\top A_n) \lambda}` without forming the tensor."""
        v = _hadamard_grams([f.mH @ f for f in self.factors])
        return torch.sqrt((self.weights @ v @ self.weights).clamp_min(0))

    def normalize(self) -> CPTensor:
        """A copy with unit-norm factor columns, the norms multiplied into the weights."""
        weights = self.weights.clone()
        factors = []
        for f in self.factors:
            norms = torch.linalg.vector_norm(f, dim=0)
            safe = torch.where(norms == 0, torch.ones_like(norms), norms)
            factors.append(f / safe)
            weights = weights * norms
        return CPTensor(weights, factors)


def cp_to_tensor(cp: CPTensor) -> torch.Tensor:
    r"""Full tensor of a CP tensor: :math:`X_{(1)} = A_1 \operatorname{diag}(\lambda)(A_2 \odot\cdots\odot A_N)^\top`
    (row-major unfolding, Khatri–Rao factors in increasing mode order)."""
    if not isinstance(cp, CPTensor):
        raise TypeError(f"cp must be a CPTensor, got {type(cp).__name__}")
    first = cp.factors[0] * cp.weights
    if len(cp.factors) == 1:
        return first.sum(1)
    return (first @ khatri_rao(cp.factors[1:]).mT).reshape(cp.shape)


def _hadamard_grams(grams: Sequence[torch.Tensor], skip: int | None = None) -> torch.Tensor:
    """The Hadamard product of the Gram matrices but ``grams[skip]``, a new tensor (never one of ``grams``)."""
    kept = [g for k, g in enumerate(grams) if k != skip]
    if len(kept) == 1:
        return kept[0].clone()
    out = kept[0] * kept[1]
    for g in kept[2:]:
        out *= g
    return out


def _split(shape: Sequence[int]) -> int:
    """Split point ``h`` of the dimension tree: modes ``< h`` form the left half, the rest the right half; chosen to
    keep the two partial contractions (sizes ``prod(left)`` and ``prod(right)`` times ``R``) small."""
    n = len(shape)
    return min(range(1, n), key=lambda h: math.prod(shape[:h]) + math.prod(shape[h:]))


# The two GEMMs of a sweep cost most of CP-ALS; their operand layout (four per product, see cp_tuning) is chosen
# by a fixed rule, by timing (layout="auto") or by name.
#
# A rank-last result is never transposed into place (a strided copy that costs half a GEMM: 16 x 10^4 float32,
# 0.34 ms): the partial contraction is carried on in that layout, as a (R, ...) view with unit stride over the
# rank (see _times_trailing).


def _rank_last(t: torch.Tensor) -> bool:
    """Whether a partial contraction ``t`` (shape ``(R, ...)``) is held rank-last: the view of a contiguous
    ``(..., R)`` tensor."""
    return t.shape[0] > 1 and t.stride(0) == 1


def _times_trailing(t: torch.Tensor, a: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    r""":math:`U[r, p] = \sum_i T[r, p, i]\, A[i, r]` for ``t`` viewed as ``(R, P, I)``, with ``a`` = :math:`A`
    ``(I, R)`` and ``at`` = :math:`A^\top` ``(R, I)`` both contiguous: shape ``(R, P)``, in ``t``'s layout.

    Rank-first, it is a batched row vector times matrix on the transposed view, ``bmm(A^T[:, None, :], T^T)``: the
    direct matrix times column vector ``bmm(T, A^T[:, :, None])`` runs about 5x slower in MKL (16 x 100 x 100
    float32, one thread: 250 us against 40 us). Rank-last, a broadcast product and a sum over ``i``, the rank index
    contiguous in both operands (read through a transposed view, the same sum takes 2.5x longer)."""
    size, rank = a.shape
    if _rank_last(t):
        return (t.movedim(0, -1).reshape(-1, size, rank) * a).sum(1).mT
    return torch.bmm(at.unsqueeze(1), t.reshape(rank, -1, size).mT).reshape(rank, -1)


def _times_leading(t: torch.Tensor, a: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    r""":math:`U[r, q] = \sum_i A[i, r]\, T[r, i, q]` for ``t`` viewed as ``(R, I, Q)``: shape ``(R, Q)``, in ``t``'s
    layout (see :func:`_times_trailing`)."""
    size, rank = a.shape
    if _rank_last(t):
        return (t.movedim(0, -1).reshape(size, -1, rank) * a.unsqueeze(1)).sum(0).mT
    return torch.bmm(at.unsqueeze(1), t.reshape(rank, size, -1)).reshape(rank, -1)


def _contract_right(x: torch.Tensor, factors: Sequence[torch.Tensor], factors_t: Sequence[torch.Tensor],
                    h: int, layout: str = "fixed") -> torch.Tensor:
    r"""Partial MTTKRP :math:`T[r, i_1..i_h] = \sum_{i_{h+1}..i_N} X[i_1..i_N] \prod_{k > h} A_k[i_k, r]`,
    shape ``(R, I_1, ..., I_h)``, from the factors :math:`A_k` ``(I_k, R)`` and their transposes ``factors_t``
    (all contiguous): one GEMM with :math:`A_N` in the ``layout`` of :func:`.cp_tuning.gemm`, then cheap batched
    products with vectors."""
    shape = x.shape
    m = x.reshape(-1, shape[-1])
    after = len(shape) - 2  # the mode contracted next, in here or in the MTTKRP of mode N-1
    t = gemm("last", layout, m, factors[-1], factors_t[-1],  # (R, prod(shape[:-1])): one GEMM over the tensor
             lambda t: _times_trailing(t, factors[after], factors_t[after]))
    for k in range(len(shape) - 2, h - 1, -1):
        t = _times_trailing(t, factors[k], factors_t[k])
    return t.reshape(t.shape[0], *shape[:h])


def _contract_left(x: torch.Tensor, factors: Sequence[torch.Tensor], factors_t: Sequence[torch.Tensor],
                   h: int, layout: str = "fixed") -> torch.Tensor:
    r"""Partial MTTKRP over the left half, shape ``(R, I_{h+1}, ..., I_N)``."""
    shape = x.shape
    m = x.reshape(shape[0], -1)
    t = gemm("first", layout, m, factors[0], factors_t[0],  # (R, prod(shape[1:])): one GEMM
             lambda t: _times_trailing(t, factors[-1], factors_t[-1]))
    for k in range(1, h):
        t = _times_leading(t, factors[k], factors_t[k])
    return t.reshape(t.shape[0], *shape[h:])


def _mttkrp_from_partial(t: torch.Tensor, factors: Sequence[torch.Tensor], factors_t: Sequence[torch.Tensor],
                         modes: Sequence[int], n: int) -> torch.Tensor:
    """Transposed MTTKRP of mode ``n``, :math:`M_n^\top` of shape ``(R, I_n)`` (in ``t``'s layout), from a partial
    contraction ``t`` of shape ``(R, I_m for m in modes)``: contract the remaining modes of ``t`` with their
    factors (the rank index shared). One batched product with a vector per mode (any order: no einsum letters to
    run out of)."""
    j = list(modes).index(n)
    for m in reversed(modes[j + 1:]):  # the trailing modes, last first
        t = _times_trailing(t, factors[m], factors_t[m])
    for m in modes[:j]:  # the leading modes, first first
        t = _times_leading(t, factors[m], factors_t[m])
    return t.reshape(t.shape[0], -1)


def _solve_normal(gram: torch.Tensor, mttkrp_t: torch.Tensor, l2_reg: float) -> torch.Tensor:
    r"""Solve :math:`A V = M` for :math:`A` with the symmetric PSD :math:`V` (+ ``l2_reg`` I), in transposed form:
    :math:`V A^\top = M^\top` for ``mttkrp_t`` = :math:`M^\top`, returning :math:`A^\top`. Cholesky, falling back
    to least squares when :math:`V` is singular."""
    if l2_reg:
        gram = gram + l2_reg * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(mttkrp_t, chol)
    if gram.device.type == "cpu":
        return torch.linalg.lstsq(gram, mttkrp_t, driver="gelsd").solution
    return _min_norm_solve(gram, mttkrp_t)  # CUDA's lstsq (gels) needs full rank


def _min_norm_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solution ``Y`` of ``V Y = rhs`` for a singular symmetric PSD ``V``, from its
    eigendecomposition (eigenvalues below ``R * eps * max`` treated as zero)."""
    vals, vecs = torch.linalg.eigh(gram)
    keep = vals > vals.max() * gram.shape[0] * torch.finfo(gram.dtype).eps
    inv = torch.where(keep, 1 / torch.where(keep, vals, torch.ones_like(vals)), torch.zeros_like(vals))
    return vecs @ (inv.unsqueeze(1) * (vecs.mT @ rhs))


def _init_factors(x: torch.Tensor, dtype: torch.dtype, exp: int, rank: int, init: object,
                  seed: int | None) -> list[torch.Tensor]:
    """Starting factors for the scaled tensor ``x`` (the user's tensor times ``2**-exp``, computed in ``x.dtype``);
    ``dtype`` is the user's dtype, which a CPTensor ``init`` must have."""
    shape = x.shape
    if isinstance(init, CPTensor):
        if init.shape != tuple(shape):
            raise ValueError(f"init has shape {init.shape} but x has shape {tuple(shape)}")
        if init.rank != rank:
            raise ValueError(f"init has rank {init.rank} but rank={rank}")
        if init.device != x.device or init.dtype != dtype:
            raise ValueError(f"init is {init.dtype} on {init.device} but x is {dtype} on {x.device}: "
                             f"use init.to(x.device, x.dtype)")
        check_finite(init.weights, "init.weights")
        for k, f in enumerate(init.factors):
            check_finite(f, f"init.factors[{k}]")
        factors = [f.to(x.dtype, copy=True) for f in init.factors]
        factors[0] = ldexp(factors[0] * init.weights.to(x.dtype), -exp)
        return factors
    if not isinstance(init, str) or init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd', 'random' or a CPTensor, got {init!r}")
    gen = generator(seed)
    if init == "random":  # uniform [0, 1), as TensorLy: all-positive starts leave fewer seeds in swamps
        return [uniform((s, rank), gen, x) for s in shape]
    # 'svd': leading left singular vectors of each unfolding, from the eigenvectors of its Gram matrix
    # X_(n) X_(n)^T; columns beyond I_n are uniform [0, 1) as TensorLy's. Mode 0 is never read before its first
    # update, so it is skipped.
    factors = [torch.zeros(shape[0], rank, dtype=x.dtype, device=x.device)]
    for n in range(1, x.ndim):
        k = min(rank, shape[n])
        _, vecs = leading_eigvecs(unfolding_gram(x, n), k)
        if k < rank:
            vecs = torch.cat([vecs, uniform((shape[n], rank - k), gen, x)], dim=1)
        factors.append(vecs)
    return factors


@torch.no_grad()
def cp_als(
    x: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    init: str | CPTensor = "svd",
    seed: int | None = None,
    l2_reg: float = 0.0,
    return_errors: bool = False,
    layout: str = "fixed",
) -> CPTensor | tuple[CPTensor, list[float]]:
    r"""CP decomposition by alternating least squares (CP-ALS).

    Each sweep updates :math:`A_1, \dots, A_N` in turn by the normal equations

    .. math:: A_n \leftarrow X_{(n)} \bigl(\textstyle\bigodot_{k\ne n} A_k\bigr)\, V^{-1},
              \qquad V = \mathop{\ast}_{k\ne n} A_k^\top A_k \;(+\ \text{l2\_reg}\ I),

    (Kolda & Bader 2009, §3.4), then normalises the columns of :math:`A_n` into the weights :math:`\lambda`.

    * The MTTKRP :math:`X_{(n)}(\bigodot_{k\ne n} A_k)` never forms a Khatri–Rao product. A dimension tree (Phan,
      Tichavský & Cichocki 2013, IEEE TSP 61(19)) splits the modes in two halves: one GEMM with the last factor plus
      cheap batched vector-matrix products gives the partial contraction
      :math:`T_L = X \times_{k \in \text{right}} A_k` that serves every left mode, and likewise for the right
      half — two passes over the tensor per sweep instead of :math:`N`.
    * :math:`V` is the Hadamard product of the :math:`R \times R` Gram matrices; the system is solved by Cholesky
      (least squares if singular), never by an explicit pseudo-inverse.
    * The error comes from norms and the last MTTKRP :math:`M_N`, without forming :math:`\hat X`:
      :math:`\|X-\hat X\|^2 = \|X\|^2 + \lambda^\top V_{\text{all}} \lambda - 2 \sum_r \lambda_r (A_N^\top M_N)_{rr}`
      (accurate to about :math:`\sqrt{\epsilon_{\text{mach}}}` relative: use :func:`tensorcompress.relative_error`
      for errors below that). It is computed only when ``tol > 0`` or ``return_errors`` asks for it.
    * The two GEMMs over the tensor have four operand layouts each (result rank-first or rank-last, factor read as
      :math:`A` or :math:`A^\top`: :mod:`tensorcompress.decompositions.cp_tuning`), equal up to rounding. By
      default a fixed rule picks them, so a seed gives the same bits on every run of a machine.

    The input is scaled by an exact power of two when its entries are far from 1 (no overflow of
    :math:`\|X\|^2` in float32 at 1e20 or underflow at 1e-25); float16/bfloat16 inputs are computed in float32 and
    the result is returned in the input's dtype (the library's one dtype rule).

    Parameters
    ----------
    x : torch.Tensor
        Floating point tensor (float16, bfloat16, float32 or float64) of order ``N >= 2`` (any order), finite, no
        size-0 mode. Not modified.
    rank : int
        Number of components ``R >= 1``.
    n_iter_max : int
        Maximum number of sweeps (``>= 1``).
    tol : float
        Stop when the relative error :math:`\|X-\hat X\|/\|X\|` (i.e. the fit) changes by less than ``tol`` between
        sweeps; ``0`` runs all ``n_iter_max`` sweeps.
    init : {'svd', 'random'} or CPTensor
        'svd': leading left singular vectors of each unfolding (uniform [0, 1) columns beyond :math:`I_n`);
        'random': factors with independent entries uniform on [0, 1), as TensorLy (on TensorLy's over-factored
        test this start leaves fewer seeds in a swamp than standard normal entries); a CPTensor of the right shape,
        rank, device and dtype with finite entries (copied, never modified).
    seed : int, optional
        Seed of the random numbers used by ``init`` (drawn on the CPU, so the same on every device).
    l2_reg : float
        Ridge term added to the diagonal of :math:`V` in every solve (``>= 0``). :math:`V` is built from unit-norm
        columns, so the result scales with :math:`X` for a fixed ``l2_reg``.
    return_errors : bool
        Also return the list of relative errors, one per sweep.
    layout : str
        The GEMM layout: ``"fixed"`` (a fixed rule of the dtype, size and device, :func:`.cp_tuning.fixed_layout`),
        ``"auto"`` (the fastest of the four, timed once per shape, dtype and thread count and remembered for the
        process: results may then differ in the last bits between processes) or one of
        :data:`.cp_tuning.LAYOUTS` (``"rank_first_at"``, ``"rank_first_a"``, ``"rank_last_a"``,
        ``"rank_last_at"``) for both products.

    Returns
    -------
    CPTensor or (CPTensor, list of float)
        Factors with unit-norm columns, the scales in ``weights``.
    """
    dtype = x.dtype if isinstance(x, torch.Tensor) else None
    x, exp = prepare(x, "x")
    check_positive_int(rank, "rank")
    check_positive_int(n_iter_max, "n_iter_max")
    tol = check_tol(tol, "tol")
    l2_reg = check_tol(l2_reg, "l2_reg")
    layout = check_layout(layout)
    # every factor held twice, as A_n (I_n, R) and A_n^T (R, I_n), both contiguous: each cheap contraction reads
    # the one whose rank index runs its way (see _times_trailing)
    factors = [f.contiguous() for f in _init_factors(x, dtype, exp, rank, init, seed)]
    factors_t = [f.mT.contiguous() for f in factors]
    shape, n_modes = tuple(x.shape), x.ndim
    h = _split(shape)
    left, right = list(range(h)), list(range(h, n_modes))
    norm_x2 = torch.linalg.vector_norm(x) ** 2
    if float(norm_x2) == 0:
        raise ValueError("x is all zeros: it has no CP decomposition of rank >= 1 to fit")
    grams = [f @ f.mT for f in factors_t]
    weights = torch.ones(rank, dtype=x.dtype, device=x.device)
    errors: list[float] = []

    def update(n: int, mttkrp_t: torch.Tensor) -> torch.Tensor:
        # LAPACK returns A^T column-major, so A (I_n, R) comes out contiguous and needs no copy
        factor = _solve_normal(_hadamard_grams(grams, skip=n), mttkrp_t, l2_reg).mT
        norms = torch.linalg.vector_norm(factor, dim=0)
        # a zero column stays zero (0 / tiny), without a branch on the norms
        factors[n] = (factor / norms.clamp_min(torch.finfo(x.dtype).tiny)).contiguous()
        factors_t[n] = factors[n].mT.contiguous()
        grams[n] = factors_t[n] @ factors[n]
        return norms

    track = bool(tol) or return_errors  # the fit costs a few small operations per sweep: only when it is used
    for _ in range(n_iter_max):
        t_left = _contract_right(x, factors, factors_t, h, layout)
        for n in left:
            weights = update(n, _mttkrp_from_partial(t_left, factors, factors_t, left, n))
        t_right = _contract_left(x, factors, factors_t, h, layout)
        for n in right:
            mttkrp_t = _mttkrp_from_partial(t_right, factors, factors_t, right, n)
            weights = update(n, mttkrp_t)
        if not track:
            continue
        inner = weights @ (factors_t[-1] * mttkrp_t).sum(1)
        norm_hat2 = weights @ _hadamard_grams(grams) @ weights
        err = float(torch.sqrt((norm_x2 + norm_hat2 - 2 * inner).clamp_min(0) / norm_x2))
        errors.append(err)
        if tol and len(errors) > 1 and abs(errors[-2] - errors[-1]) < tol:
            break
    cp = CPTensor(ldexp(weights, exp), factors).to(dtype)
    return (cp, errors) if return_errors else cp

r"""Tensor-train (TT, matrix product state) format: TT-SVD, TT rounding and arithmetic in TT format.

.. math:: X[i_1, \dots, i_d] = G_1[:, i_1, :]\, G_2[:, i_2, :] \cdots G_d[:, i_d, :],
          \qquad G_k \in \mathbb R^{r_{k-1} \times I_k \times r_k},\ r_0 = r_d = 1,

stored with :math:`\sum_k r_{k-1} I_k r_k` numbers — linear in the order :math:`d`. Oseledets (2011),
"Tensor-train decomposition", SIAM J. Sci. Comput. 33(5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number

import torch

from .._validation import check_finite, check_positive_int, check_tensor, compute_dtype
from ..tensor import ldexp, scale_exponent
from ._common import Factorized, check_tol, prepare, rank_for_tail, svd

__all__ = ["TTTensor", "tt_svd", "tt_round", "tt_inner", "tt_to_tensor"]


def _check_cores(cores: object, name: str, ndim: int, what: str) -> list[torch.Tensor]:
    if isinstance(cores, torch.Tensor) or not isinstance(cores, Sequence) or len(cores) == 0:
        raise TypeError(f"{name} must be a non-empty list of torch.Tensor, got {type(cores).__name__}")
    cores = list(cores)
    for k, c in enumerate(cores):
        check_tensor(c, f"{name}[{k}]")
        if c.ndim != ndim:
            raise ValueError(f"{name}[{k}] must have {ndim} dimensions {what}, got shape {tuple(c.shape)}")
        if c.device != cores[0].device or c.dtype != cores[0].dtype:
            raise ValueError(f"{name}[{k}] is {c.dtype} on {c.device} but {name}[0] is {cores[0].dtype} on "
                             f"{cores[0].device}: use one dtype and device")
    if cores[0].shape[0] != 1 or cores[-1].shape[-1] != 1:
        raise ValueError(f"the boundary ranks must be 1: {name}[0] has shape {tuple(cores[0].shape)} and "
                         f"{name}[-1] has shape {tuple(cores[-1].shape)}")
    for k in range(1, len(cores)):
        if cores[k].shape[0] != cores[k - 1].shape[-1]:
            raise ValueError(f"{name}[{k - 1}] ends with rank {cores[k - 1].shape[-1]} but {name}[{k}] starts with "
                             f"rank {cores[k].shape[0]} (shapes {tuple(cores[k - 1].shape)}, "
                             f"{tuple(cores[k].shape)})")
    return cores


class CoreTrain(Factorized):
    """What TTTensor and TTMatrix share: a train of cores ``(r_{k-1}, ..., r_k)`` with ``r_0 = r_d = 1``."""

    cores: list[torch.Tensor]

    @property
    def rank(self) -> tuple[int, ...]:
        """The TT ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1,) + tuple(c.shape[-1] for c in self.cores)

    @property
    def n_params(self) -> int:
        return sum(c.numel() for c in self.cores)

    def _parts(self) -> list[torch.Tensor]:
        return list(self.cores)

    @classmethod
    def _from_parts(cls, parts: list):
        return cls(parts)

    def __len__(self) -> int:
        return len(self.cores)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.cores[k]


class TTTensor(CoreTrain):
    r"""A tensor in TT format.

    Parameters
    ----------
    cores : sequence of torch.Tensor
        Cores :math:`G_k` of shape ``(r_{k-1}, I_k, r_k)`` with ``r_0 = r_d = 1``.

    Attributes
    ----------
    shape : tuple of int
        ``(I_1, ..., I_d)``.
    rank : tuple of int
        ``(r_0, r_1, ..., r_d)`` (TensorLy's convention, boundary ones included).
    n_params : int
        :math:`\sum_k r_{k-1} I_k r_k`.

    Arithmetic stays in TT format: ``a + b``, ``a - b``, ``-a``, ``c * a``, ``a * c`` (``c`` a scalar);
    ``a.inner(b)``, ``a.norm()``. Sums add ranks: follow them by :func:`tt_round`.
    """

    def __init__(self, cores: Sequence[torch.Tensor]):
        self.cores = _check_cores(cores, "cores", 3, "(r_{k-1}, I_k, r_k)")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.shape[1] for c in self.cores)

    _tensorly_class = ("tt_tensor", "TTTensor")

    def _rank_repr(self) -> str:
        return f"rank={self.rank}"

    def to_tensor(self) -> torch.Tensor:
        """The full tensor (contracting the cores left to right)."""
        return tt_to_tensor(self)

    # --- arithmetic in TT format -------------------------------------------------------------------------------
    def _check_same(self, other: object, op: str) -> TTTensor:
        if not isinstance(other, TTTensor):
            raise TypeError(f"{op} needs two TTTensors, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"{op} needs equal shapes, got {self.shape} and {other.shape}")
        if other.device != self.device or other.dtype != self.dtype:
            raise ValueError(f"{op} needs one dtype and device, got {self.dtype} on {self.device} and "
                             f"{other.dtype} on {other.device}")
        return other

    def __add__(self, other: object) -> TTTensor:
        r"""Sum in TT format, ranks :math:`r_k^a + r_k^b`: first cores concatenated along the last rank, last cores
        along the first rank, the others block-diagonal (Oseledets 2011, §4.1)."""
        if not isinstance(other, TTTensor):
            return NotImplemented
        other = self._check_same(other, "+")
        d = len(self.cores)
        if d == 1:
            return TTTensor([self.cores[0] + other.cores[0]])
        cores = []
        for k, (a, b) in enumerate(zip(self.cores, other.cores, strict=True)):
            if k == 0:
                cores.append(torch.cat([a, b], dim=2))
            elif k == d - 1:
                cores.append(torch.cat([a, b], dim=0))
            else:
                c = a.new_zeros(a.shape[0] + b.shape[0], a.shape[1], a.shape[2] + b.shape[2])
                c[: a.shape[0], :, : a.shape[2]] = a
                c[a.shape[0]:, :, a.shape[2]:] = b
                cores.append(c)
        return TTTensor(cores)

    def __mul__(self, scalar: object) -> TTTensor:
        """Multiplication by a scalar (a number or a 0-dim tensor): scales the first core."""
        if isinstance(scalar, torch.Tensor) and scalar.ndim == 0:
            scalar = scalar.to(device=self.device, dtype=self.dtype)
        elif isinstance(scalar, bool) or not isinstance(scalar, Number):
            return NotImplemented
        return TTTensor([self.cores[0] * scalar, *self.cores[1:]])

    __rmul__ = __mul__

    def __neg__(self) -> TTTensor:
        return self * -1.0

    def __sub__(self, other: object) -> TTTensor:
        if not isinstance(other, TTTensor):
            return NotImplemented
        return self + (-other)

    def inner(self, other: TTTensor) -> torch.Tensor:
        r"""Inner product :math:`\langle A, B\rangle` in TT format (see :func:`tt_inner`)."""
        return tt_inner(self, other)

    def norm(self) -> torch.Tensor:
        r"""Frobenius norm in TT format: after right-to-left orthogonalisation the norm is the first core's."""
        return torch.linalg.vector_norm(_orthogonalize_right(self.cores)[0])


def tt_to_tensor(tt: TTTensor) -> torch.Tensor:
    """Full tensor of a TT tensor: contract the cores left to right."""
    if not isinstance(tt, TTTensor):
        raise TypeError(f"tt must be a TTTensor, got {type(tt).__name__}")
    full = tt.cores[0].reshape(-1, tt.cores[0].shape[-1])
    for core in tt.cores[1:]:
        full = full @ core.reshape(core.shape[0], -1)
        full = full.reshape(-1, core.shape[-1])
    return full.reshape(tt.shape)


def tt_inner(a: TTTensor, b: TTTensor) -> torch.Tensor:
    r"""Inner product :math:`\langle A, B\rangle = \sum_{i} A[i]\, B[i]` in TT format, in
    :math:`O(d\, I\, r^3)`: :math:`M_k = \sum_{i_k} G^A_k[:, i_k, :]^\top M_{k-1} G^B_k[:, i_k, :]`, :math:`M_0 = 1`.

    Returns a 0-dim tensor.
    """
    if not isinstance(a, TTTensor):
        raise TypeError(f"a must be a TTTensor, got {type(a).__name__}")
    a._check_same(b, "tt_inner")
    m = a.cores[0].new_ones(1, 1)
    for ca, cb in zip(a.cores, b.cores, strict=True):
        t = torch.tensordot(m, ca, dims=([0], [0]))  # (rb, I, ra')
        m = torch.tensordot(t, cb, dims=([0, 1], [0, 1]))  # (ra', rb')
    return m.reshape(())


def _orthogonalize_right(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Right-to-left QR sweep: cores 2..d become right-orthogonal (rows of their ``(r_{k-1}, I_k r_k)``
    unfoldings orthonormal); the tensor is unchanged and its norm is the first core's."""
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        r0, n, r1 = cores[k].shape
        q, r = torch.linalg.qr(cores[k].reshape(r0, n * r1).mT)
        cores[k] = q.mT.reshape(-1, n, r1)
        cores[k - 1] = torch.tensordot(cores[k - 1], r, dims=([2], [1]))
    return cores


def _tt_rank_caps(shape: Sequence[int]) -> list[int]:
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1:])) for k in range(len(shape) - 1)]


def parse_tt_rank(
    rank: object, shape: Sequence[int], *, strict: bool = False, name: str = "rank"
) -> list[int] | None:
    r"""``rank`` as the ``d - 1`` inner TT ranks — THE rank-list rule of the TT functions (tt_svd, tt_round,
    tt_matrix_svd and the layers built on them):

    * an int ``r >= 1``: every inner rank ``r``;
    * a sequence of the ``d - 1`` inner ranks ``[r_1, ..., r_{d-1}]``, or TensorLy's ``d + 1`` ranks
      ``[1, r_1, ..., r_{d-1}, 1]`` (boundary ranks exactly 1);

    each inner rank then capped at what its unfolding allows, :math:`\min(\prod_{j\le k} I_j, \prod_{j>k} I_j)`
    (a larger rank cannot be reached: the TT-SVD keeps all of the unfolding's singular values there). With
    ``strict`` (only :func:`tensorcompress.decompositions.random.random_tt`, which promises the ranks it is given) an
    entry above the cap is an error instead."""
    if rank is None:
        return None
    caps = _tt_rank_caps(shape)
    d = len(shape)
    if isinstance(rank, int) and not isinstance(rank, bool):
        check_positive_int(rank, name)
        return [min(rank, c) for c in caps]
    if isinstance(rank, torch.Size):
        rank = list(rank)
    if not isinstance(rank, Sequence) or isinstance(rank, str):
        raise TypeError(f"{name} must be an int or a sequence of {len(caps)} ints, got "
                        f"{type(rank).__name__} ({rank!r})")
    rank = list(rank)
    if len(rank) == d + 1:  # TensorLy's form [1, r_1, ..., r_{d-1}, 1]
        if rank[0] != 1 or rank[-1] != 1:
            raise ValueError(f"{name} with d + 1 = {d + 1} entries (TensorLy's form) must start and end with 1, "
                             f"got {rank}")
        rank = rank[1:-1]
    if len(rank) != len(caps):
        raise ValueError(f"{name} must hold d - 1 = {len(caps)} inner ranks (or d + 1 = {d + 1} with the boundary "
                         f"1s) for shape {tuple(shape)}, got {len(rank)}: {rank}")
    out = []
    for k, (r, cap) in enumerate(zip(rank, caps, strict=True)):
        check_positive_int(r, f"{name}[{k}]")
        if strict and r > cap:
            raise ValueError(f"{name}[{k}]={r} exceeds what the unfolding allows for shape {tuple(shape)}: "
                             f"allowed 1..{cap} = min(prod(shape[:{k + 1}]), prod(shape[{k + 1}:]))")
        out.append(min(r, cap))
    return out


def check_eps_rank(eps: object, rank: object) -> float | None:
    """``eps`` checked (a real number ``>= 0`` or None), refused together with a ``rank``."""
    if eps is not None and rank is not None:
        raise ValueError(f"give eps or rank, not both (got eps={eps!r}, rank={rank!r})")
    return check_tol(eps, "eps", allow_none=True)


def _choose_rank(s: torch.Tensor, k: int, ranks: list[int] | None, delta2: float | None) -> int:
    if ranks is not None:
        return min(ranks[k], s.shape[0])
    if delta2 is not None:
        return rank_for_tail(s**2, delta2)
    return s.shape[0]


RANK_DOC = """rank : int or sequence of int, optional
        Fixed ranks, one rule for every TT function: an int caps every inner rank; a sequence gives the ``d - 1``
        inner ranks :math:`r_1..r_{d-1}` or TensorLy's ``[1, r_1, ..., r_{d-1}, 1]``. Each is capped at what its
        unfolding allows, :math:`\\min(\\prod_{j\\le k} I_j, \\prod_{j>k} I_j)` (a larger rank cannot be reached)."""


@torch.no_grad()
def tt_svd(x: torch.Tensor, rank: int | Sequence[int] | None = None, *, eps: float | None = None) -> TTTensor:
    r"""TT-SVD (Oseledets 2011, Alg. 1): sequential truncated SVDs of the reshaped remainder.

    For :math:`k = 1..d-1`, :math:`C \in \mathbb R^{r_{k-1} I_k \times \prod_{j>k} I_j}` is factored by a truncated
    SVD :math:`C \approx U_k S_k V_k^\top`; :math:`U_k` becomes core :math:`k` and :math:`S_k V_k^\top` is carried on.
    With ``eps`` each step drops singular values of squared sum at most :math:`\delta^2`,
    :math:`\delta = \epsilon \|X\| / \sqrt{d-1}`, so (Thm 2.2) :math:`\|X - \hat X\| \le \epsilon \|X\|`.
    float16/bfloat16 inputs are computed in float32 and returned in their dtype; inputs far from 1 in magnitude are
    scaled by an exact power of two first, so the guarantee holds at any scale.

    Parameters
    ----------
    x : torch.Tensor
        Floating point tensor of order ``d >= 2``, finite, no size-0 mode.
    {rank}
    eps : float, optional
        Relative accuracy :math:`\epsilon \ge 0`. Give ``eps`` or ``rank``, not both; neither is exact.
    """
    dtype = x.dtype if isinstance(x, torch.Tensor) else None
    x, exp = prepare(x, "x")
    eps = check_eps_rank(eps, rank)
    shape = tuple(x.shape)
    ranks = parse_tt_rank(rank, shape)
    d = len(shape)
    delta2 = None if eps is None else eps**2 * float(torch.linalg.vector_norm(x)) ** 2 / (d - 1)
    cores = []
    c = x
    r_prev = 1
    for k in range(d - 1):
        c = c.reshape(r_prev * shape[k], -1)
        u, s, vh = svd(c)
        r = _choose_rank(s, k, ranks, delta2)
        cores.append(u[:, :r].reshape(r_prev, shape[k], r))
        c = s[:r, None] * vh[:r]
        r_prev = r
    cores.append(ldexp(c.reshape(r_prev, shape[-1], 1), exp))
    return TTTensor(cores).to(dtype)


tt_svd.__doc__ = tt_svd.__doc__.replace("{rank}", RANK_DOC)


def tt_round(tt: TTTensor, rank: int | Sequence[int] | None = None, *, eps: float | None = None) -> TTTensor:
    r"""TT rounding (Oseledets 2011, Alg. 2): recompress a TT tensor without forming the full tensor.

    A right-to-left QR sweep makes cores :math:`2..d` right-orthogonal; then truncated SVDs from left to right with
    the TT-SVD threshold :math:`\delta = \epsilon \|X\| / \sqrt{d-1}` (the norm read off the first core), so
    :math:`\|X - \hat X\| \le \epsilon \|X\|`. Cost :math:`O(d I r^3)`. Each core is scaled by an exact power of
    two first (no overflow of :math:`\|X\|^2` at any scale); float16/bfloat16 cores are computed in float32 and
    returned in their dtype.

    Parameters
    ----------
    tt : TTTensor
        The tensor to round (not modified), finite.
    {rank}
    eps : float, optional
        Relative accuracy. Give ``eps`` or ``rank``, not both; neither rounds at ``eps`` = 100 × the compute
        dtype's machine epsilon (drops only numerically zero directions, e.g. after ``a + a``).
    """
    if not isinstance(tt, TTTensor):
        raise TypeError(f"tt must be a TTTensor, got {type(tt).__name__}")
    eps = check_eps_rank(eps, rank)
    ranks = parse_tt_rank(rank, tt.shape)
    work = compute_dtype(tt.cores[0], "tt.cores[0]")
    if eps is None and ranks is None:
        eps = 100 * torch.finfo(work).eps
    cores, exp = [], 0
    for k, c in enumerate(tt.cores):
        check_finite(c, f"tt.cores[{k}]")
        c = c.to(work, copy=True)
        e = scale_exponent(c)
        cores.append(ldexp(c, -e))
        exp += e
    d = len(cores)
    if d > 1:
        cores = _orthogonalize_right(cores)
        delta2 = None
        if eps is not None:
            delta2 = eps**2 * float(torch.linalg.vector_norm(cores[0])) ** 2 / (d - 1)
        for k in range(d - 1):
            r0, n, r1 = cores[k].shape
            u, s, vh = svd(cores[k].reshape(r0 * n, r1))
            r = _choose_rank(s, k, ranks, delta2)
            cores[k] = u[:, :r].reshape(r0, n, r)
            cores[k + 1] = torch.tensordot(s[:r, None] * vh[:r], cores[k + 1], dims=([1], [0]))
    cores[-1] = ldexp(cores[-1], exp)
    return TTTensor(cores).to(tt.dtype)


tt_round.__doc__ = tt_round.__doc__.replace("{rank}", RANK_DOC)

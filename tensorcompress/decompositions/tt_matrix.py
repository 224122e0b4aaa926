r"""TT-matrix (matrix product operator) format: a matrix whose row and column indices are both tensorised.

A matrix :math:`W \in \mathbb R^{M \times N}`, :math:`M = \prod_k m_k`, :math:`N = \prod_k n_k`, with row index
:math:`(i_1..i_d)` and column index :math:`(j_1..j_d)` (both raveled in C order) is stored as

.. math:: W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :]\, G_2[:, i_2, j_2, :] \cdots G_d[:, i_d, j_d, :],
          \qquad G_k \in \mathbb R^{r_{k-1} \times m_k \times n_k \times r_k},

with :math:`\sum_k r_{k-1} m_k n_k r_k` numbers. Oseledets (2010), "Approximation of 2^d x 2^d matrices using
tensor decomposition", SIAM J. Matrix Anal. Appl. 31(4); Novikov et al. (2015), "Tensorizing neural networks", NIPS
(TT layers multiply by :math:`W` core by core).

A product :math:`W x` for a batch of :math:`B` vectors has three orders (:func:`contraction_flops` counts each,
2 FLOPs per multiply-add, from the shapes and ranks alone):

* ``"left"``: the cores from the first to the last, :math:`2B \sum_k r_{k-1} m_k n_k r_k \prod_{j<k} m_j
  \prod_{j>k} n_j` FLOPs;
* ``"right"``: from the last to the first, :math:`2B \sum_k r_{k-1} m_k n_k r_k \prod_{j<k} n_j \prod_{j>k} m_j`;
* ``"dense"``: :math:`W` formed once (:math:`2 \sum_{k\ge2} r_{k-1} r_k \prod_{j\le k} m_j n_j`) and multiplied
  (:math:`2BMN`): the cheapest for a batch large enough, since forming :math:`W` does not grow with :math:`B`.

:func:`tt_matrix_vector_product` takes the order with the fewest FLOPs (the first of these on a tie), and so does a
:class:`~tensorcompress.TTLinear` layer by default (``order="auto"``; another value forces one order); the choice is
made by counting, never by timing. Every order computes the same product up to floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_dims, check_positive_int, check_tensor
from ._common import check_input
from .tt import RANK_DOC, CoreTrain, _check_cores, check_eps_rank, parse_tt_rank, tt_svd

__all__ = ["TTMatrix", "tt_matrix_svd", "tt_matrix_vector_product", "tt_matrix_contract", "contraction_flops",
           "contraction_order", "ORDERS"]

ORDERS = ("left", "right", "dense")
"""The contraction orders of a TT-matrix product, in the order ties are broken (see the module docstring)."""


class TTMatrix(CoreTrain):
    r"""A matrix in TT-matrix format.

    Parameters
    ----------
    cores : sequence of torch.Tensor
        Cores of shape ``(r_{k-1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1``.

    Attributes
    ----------
    shape : tuple of int
        The matrix shape ``(prod m_k, prod n_k)``.
    row_modes, col_modes : tuple of int
        ``(m_1..m_d)`` and ``(n_1..n_d)``.
    tensorized_shape : tuple of int
        ``(m_1, ..., m_d, n_1, ..., n_d)``, the shape of :meth:`to_tensor` (as TensorLy).
    rank : tuple of int
        ``(1, r_1, ..., r_{d-1}, 1)``.
    n_params : int
        :math:`\sum_k r_{k-1} m_k n_k r_k`.
    """

    def __init__(self, cores: Sequence[torch.Tensor]):
        self.cores = _check_cores(cores, "cores", 4, "(r_{k-1}, m_k, n_k, r_k)")

    @property
    def row_modes(self) -> tuple[int, ...]:
        return tuple(c.shape[1] for c in self.cores)

    @property
    def col_modes(self) -> tuple[int, ...]:
        return tuple(c.shape[2] for c in self.cores)

    @property
    def tensorized_shape(self) -> tuple[int, ...]:
        return self.row_modes + self.col_modes

    @property
    def shape(self) -> tuple[int, int]:
        return math.prod(self.row_modes), math.prod(self.col_modes)

    _tensorly_class = ("tt_matrix", "TTMatrix")

    def _rank_repr(self) -> str:
        return f"row_modes={self.row_modes}, col_modes={self.col_modes}, rank={self.rank}"

    def to_tensor(self) -> torch.Tensor:
        """The tensor of shape ``(m_1, ..., m_d, n_1, ..., n_d)`` (as TensorLy's ``TTMatrix.to_tensor``)."""
        return _dense(list(self.cores)).reshape(self.tensorized_shape)

    def to_matrix(self) -> torch.Tensor:
        """The matrix of shape ``(prod m_k, prod n_k)``."""
        return _dense(list(self.cores))

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`W x` for a vector or each row of a batch, core by core (see :func:`tt_matrix_vector_product`)."""
        return tt_matrix_vector_product(self, x)


def tt_matrix_vector_product(tt_matrix: TTMatrix, x: torch.Tensor, *, order: str | None = None) -> torch.Tensor:
    r"""Product :math:`W x` with a TT-matrix.

    ``x`` of shape ``(N,)`` or ``(B, N)``, ``N = prod n_k``; returns ``(M,)`` or ``(B, M)`` (each row multiplied:
    ``y[b] = W @ x[b]``, i.e. ``x @ W.T``). ``order`` (one of :data:`ORDERS`; default: the one with the fewest FLOPs
    by :func:`contraction_flops`) contracts the cores one at a time from the left (after step :math:`k` the
    intermediate has shape :math:`(B\, m_1 \cdots m_k,\ r_k,\ n_{k+1} \cdots n_d)`) or from the right, never
    forming :math:`W`, or forms :math:`W` once (``"dense"``). Differentiable in the cores and ``x`` (the basis of TT
    layers, Novikov et al. 2015).

    Parameters
    ----------
    tt_matrix : TTMatrix
    x : torch.Tensor
        Shape ``(N,)`` or ``(B, N)``, floating, the dtype and device of the TT-matrix.
    order : str, optional
        One of :data:`ORDERS`; default: :func:`contraction_order`'s.
    """
    if not isinstance(tt_matrix, TTMatrix):
        raise TypeError(f"tt_matrix must be a TTMatrix, got {type(tt_matrix).__name__}")
    check_tensor(x, "x", floating=True)
    if order is not None and order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} or None, got {order!r}")
    n_rows, n_cols = tt_matrix.shape
    if x.ndim not in (1, 2) or x.shape[-1] != n_cols:
        raise ValueError(f"x must have shape ({n_cols},) or (B, {n_cols}) for a TT-matrix of shape "
                         f"{(n_rows, n_cols)}, got {tuple(x.shape)}")
    if x.device != tt_matrix.device or x.dtype != tt_matrix.dtype:
        raise ValueError(f"x is {x.dtype} on {x.device} but the TT-matrix is {tt_matrix.dtype} on "
                         f"{tt_matrix.device}: use one dtype and device")
    y = tt_matrix_contract(list(tt_matrix.cores), x.reshape(-1, n_cols), "auto" if order is None else order)
    return y.reshape(n_rows) if x.ndim == 1 else y


def contraction_flops(row_modes: Sequence[int], col_modes: Sequence[int], rank: Sequence[int], batch: int
                      ) -> dict[str, int]:
    r"""FLOPs of :math:`W x` for ``batch`` vectors by each contraction order (2 per multiply-add; the formulas of the
    module docstring), computed from the shapes and ranks alone.

    Parameters
    ----------
    row_modes, col_modes : sequence of int
        :math:`(m_1..m_d)` and :math:`(n_1..n_d)`.
    rank : sequence of int
        The TT ranks :math:`(1, r_1, \dots, r_{d-1}, 1)` (``d + 1`` values, as :attr:`TTMatrix.rank`).
    batch : int
        :math:`B \ge 0`.

    Returns
    -------
    dict
        ``{order: flops}`` for each order of :data:`ORDERS`, in that order.
    """
    row_modes, col_modes = check_dims(row_modes, "row_modes"), check_dims(col_modes, "col_modes")
    rank = check_dims(rank, "rank")
    if len(row_modes) != len(col_modes) or len(rank) != len(row_modes) + 1 or rank[0] != 1 or rank[-1] != 1:
        raise ValueError(f"row_modes {row_modes} and col_modes {col_modes} must have one length d and rank {rank} "
                         f"d + 1 values with 1 at both ends")
    check_positive_int(batch, "batch", minimum=0)
    return dict(zip(ORDERS, _flops(list(row_modes), list(col_modes), list(rank), batch), strict=True))


def contraction_order(row_modes: Sequence[int], col_modes: Sequence[int], rank: Sequence[int], batch: int) -> str:
    """The order :func:`tt_matrix_vector_product` takes (and a TT layer with ``order="auto"``): the one of
    :data:`ORDERS` with the fewest FLOPs by :func:`contraction_flops`, the earlier on a tie.

    Parameters
    ----------
    row_modes, col_modes, rank, batch
        As :func:`contraction_flops`.
    """
    return _cheapest(list(contraction_flops(row_modes, col_modes, rank, batch).values()))


def tt_matrix_contract(cores: list[torch.Tensor], x: torch.Tensor, order: str = "auto") -> torch.Tensor:
    """``x @ W.T`` for the TT-matrix ``W`` of ``cores``: the kernel of :func:`tt_matrix_vector_product` and of the
    TT layers, unchecked and compilable by ``torch.jit.script`` (sizes explicit, so ``B = 0`` works).

    Parameters
    ----------
    cores : list of torch.Tensor
        :math:`G_k` of shape ``(r_{k-1}, m_k, n_k, r_k)``.
    x : torch.Tensor
        Shape ``(B, N)``, same dtype and device as the cores.
    order : str
        One of :data:`ORDERS`, or ``"auto"``: the one with the fewest FLOPs (:func:`contraction_order`).
    """
    row_modes: list[int] = []
    col_modes: list[int] = []
    rank: list[int] = [1]
    for core in cores:
        row_modes.append(core.shape[1])
        col_modes.append(core.shape[2])
        rank.append(core.shape[3])
    if order == "auto":
        order = _cheapest(_flops(row_modes, col_modes, rank, x.shape[0]))
    if order == "dense":
        return torch.nn.functional.linear(x, _dense(cores))
    if order == "right":
        return _right_to_left(cores, x, _prod(row_modes))
    return _left_to_right(cores, x, _prod(row_modes))


def _cheapest(flops: list[int]) -> str:
    # the first minimum (ties go to the earlier order); a literal list: torch.jit.script indexes no global tuple
    return ["left", "right", "dense"][flops.index(min(flops))]


def _prod(values: list[int]) -> int:
    # math.prod, which torch.jit.script does not compile
    out = 1
    for v in values:
        out *= v
    return out


def _flops(row_modes: list[int], col_modes: list[int], rank: list[int], batch: int) -> list[int]:
    """FLOPs of the orders of :data:`ORDERS` (the formulas of the module docstring)."""
    left, right, build = 0, 0, 0
    for k in range(len(row_modes)):
        core = rank[k] * row_modes[k] * col_modes[k] * rank[k + 1]
        left += 2 * batch * core * _prod(row_modes[:k]) * _prod(col_modes[k + 1:])
        right += 2 * batch * core * _prod(col_modes[:k]) * _prod(row_modes[k + 1:])
        if k > 0:  # (prod_{j<k} m_j n_j, r_k) @ (r_k, m_k n_k r_{k+1}); the first core is only reshaped
            build += 2 * rank[k] * rank[k + 1] * _prod(row_modes[:k + 1]) * _prod(col_modes[:k + 1])
    return [left, right, build + 2 * batch * _prod(row_modes) * _prod(col_modes)]


def _left_to_right(cores: list[torch.Tensor], x: torch.Tensor, n_rows: int) -> torch.Tensor:
    # t: (B m_1..m_{k-1}, r_{k-1}, n_k..n_d)
    batch = x.shape[0]
    t = x.reshape(batch, 1, x.shape[1])
    for core in cores:
        r0, m, n, r1 = core.shape[0], core.shape[1], core.shape[2], core.shape[3]
        rest = t.shape[2] // n
        t = torch.einsum("pans,amnr->pmrs", [t.reshape(t.shape[0], r0, n, rest), core])  # (P, m_k, r_k, rest)
        t = t.reshape(t.shape[0] * m, r1, rest)
    return t.reshape(batch, n_rows)


def _right_to_left(cores: list[torch.Tensor], x: torch.Tensor, n_rows: int) -> torch.Tensor:
    # t: (B n_1..n_{k-1}, n_k, r_k, m_{k+1}..m_d), contracted over (n_k, r_k)
    batch, lead, done = x.shape[0], x.shape[1], 1
    t = x
    for k in range(len(cores) - 1, -1, -1):
        core = cores[k]
        m, n, r1 = core.shape[1], core.shape[2], core.shape[3]
        lead = lead // n
        t = torch.einsum("pnrs,amnr->pams", [t.reshape(batch * lead, n, r1, done), core])  # (P, r_{k-1}, m_k, rest)
        done = done * m
    return t.reshape(batch, n_rows)


def _dense(cores: list[torch.Tensor]) -> torch.Tensor:
    """The matrix ``(prod m_k, prod n_k)``: the cores multiplied along their ranks, then the row modes moved first."""
    full = cores[0]
    sizes: list[int] = []
    for core in cores:
        sizes.append(core.shape[1])
        sizes.append(core.shape[2])
    full = full.reshape(full.shape[1] * full.shape[2], full.shape[3])  # (m_1 n_1, r_1)
    for core in cores[1:]:
        r0, m, n, r1 = core.shape[0], core.shape[1], core.shape[2], core.shape[3]
        full = (full @ core.reshape(r0, m * n * r1)).reshape(full.shape[0] * m * n, r1)
    d = len(cores)
    perm = [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]
    return full.reshape(sizes).permute(perm).reshape(_prod(sizes[0::2]), _prod(sizes[1::2]))


def tt_matrix_svd(
    matrix: torch.Tensor,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    rank: int | Sequence[int] | None = None,
    *,
    eps: float | None = None,
) -> TTMatrix:
    r"""TT-matrix decomposition of a matrix by TT-SVD.

    The :math:`M \times N` matrix is reshaped to :math:`(m_1..m_d, n_1..n_d)`, permuted to
    :math:`(m_1, n_1, \dots, m_d, n_d)`, merged to the order-:math:`d` tensor of shape :math:`(m_1 n_1, \dots, m_d
    n_d)` and decomposed by :func:`tt_svd` (same ``rank`` / ``eps`` meaning and guarantee
    :math:`\|W - \hat W\|_F \le \epsilon \|W\|_F`, same scaling and dtype rule: float16/bfloat16 computed in
    float32 and returned in their dtype); each core is split back to :math:`(r_{k-1}, m_k, n_k, r_k)`.

    Parameters
    ----------
    matrix : torch.Tensor
        Floating point matrix of shape ``(prod(row_modes), prod(col_modes))``, finite.
    row_modes, col_modes : sequence of int
        The factorisations ``m_1..m_d`` and ``n_1..n_d`` (same length ``d >= 1``; use 1s to pad).
    {rank}
        The unfoldings are those of the merged tensor of shape :math:`(m_1 n_1, \dots, m_d n_d)`.
    eps : float, optional
        Relative accuracy :math:`\epsilon \ge 0`. Give ``eps`` or ``rank``, not both; neither is exact.
    """
    check_input(matrix, "matrix")
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {tuple(matrix.shape)}")
    row_modes = check_dims(row_modes, "row_modes")
    col_modes = check_dims(col_modes, "col_modes")
    if len(row_modes) != len(col_modes):
        raise ValueError(f"row_modes and col_modes must have the same length, got {row_modes} and {col_modes}")
    if tuple(matrix.shape) != (math.prod(row_modes), math.prod(col_modes)):
        raise ValueError(f"matrix has shape {tuple(matrix.shape)} but row_modes {row_modes} and col_modes "
                         f"{col_modes} describe ({math.prod(row_modes)}, {math.prod(col_modes)})")
    d = len(row_modes)
    merged = tuple(m * n for m, n in zip(row_modes, col_modes, strict=True))
    parse_tt_rank(rank, merged)  # checked here too: tt_svd is not called for d = 1
    check_eps_rank(eps, rank)
    t = matrix.reshape(row_modes + col_modes)
    t = t.permute([p for k in range(d) for p in (k, d + k)])
    if d == 1:
        core = matrix.reshape(1, row_modes[0], col_modes[0], 1)
        return TTMatrix([core.clone()])
    tt = tt_svd(t.reshape(merged), rank, eps=eps)
    cores = [c.reshape(c.shape[0], m, n, c.shape[-1]) for c, m, n in zip(tt.cores, row_modes, col_modes, strict=True)]
    return TTMatrix(cores)


tt_matrix_svd.__doc__ = tt_matrix_svd.__doc__.replace("{rank}", RANK_DOC)

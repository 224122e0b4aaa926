r"""TT-matrix (matrix product operator) format: a matrix whose row and column indices are both tensorised.

A matrix :math:`W \in \mathbb R^{M \times N}`, :math:`M = \prod_k m_k`, :math:`N = \prod_k n_k`, with row index
:math:`(i_1..i_d)` and column index :math:`(j_1..j_d)` (both raveled in C order) is stored as

.. math:: W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :]\, G_2[:, i_2, j_2, :] \cdots G_d[:, i_d, j_d, :],
          \qquad G_k \in \mathbb R^{r_{k-1} \times m_k \times n_k \times r_k},

with :math:`\sum_k r_{k-1} m_k n_k r_k` numbers. Oseledets (2010), "Approximation of 2^d x 2^d matrices using
tensor decomposition", SIAM J. Matrix Anal. Appl. 31(4); Novikov et al. (2015), "Tensorizing neural networks", NIPS
(TT layers multiply by :math:`W` core by core, never forming it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_dims, check_tensor
from ._common import check_input
from .tt import RANK_DOC, CoreTrain, _check_cores, check_eps_rank, parse_tt_rank, tt_svd

__all__ = ["TTMatrix", "tt_matrix_svd", "tt_matrix_vector_product"]


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
        d = len(self.cores)
        full = self.cores[0].reshape(-1, self.cores[0].shape[-1])  # (m1 n1, r1)
        for core in self.cores[1:]:
            full = (full @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
        # full is (m1, n1, m2, n2, ..., md, nd)
        full = full.reshape([s for c in self.cores for s in c.shape[1:3]])
        return full.permute(list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2)))

    def to_matrix(self) -> torch.Tensor:
        """The matrix of shape ``(prod m_k, prod n_k)``."""
        return self.to_tensor().reshape(self.shape)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`W x` for a vector or each row of a batch, core by core (see :func:`tt_matrix_vector_product`)."""
        return tt_matrix_vector_product(self, x)


def tt_matrix_vector_product(tt_matrix: TTMatrix, x: torch.Tensor) -> torch.Tensor:
    r"""Product :math:`W x` with a TT-matrix, never forming :math:`W`.

    ``x`` of shape ``(N,)`` or ``(B, N)``, ``N = prod n_k``; returns ``(M,)`` or ``(B, M)`` (each row multiplied:
    ``y[b] = W @ x[b]``, i.e. ``x @ W.T``). The cores are contracted one at a time: after step :math:`k` the
    intermediate has shape :math:`(B\, m_1 \cdots m_k,\ r_k,\ n_{k+1} \cdots n_d)`, costing
    :math:`O(B \sum_k r_{k-1} m_k n_k r_k \prod_{j<k} m_j \prod_{j>k} n_j)` operations. Differentiable in the cores and
    ``x`` (the basis of TT layers, Novikov et al. 2015).
    """
    if not isinstance(tt_matrix, TTMatrix):
        raise TypeError(f"tt_matrix must be a TTMatrix, got {type(tt_matrix).__name__}")
    check_tensor(x, "x", floating=True)
    n_rows, n_cols = tt_matrix.shape
    if x.ndim not in (1, 2) or x.shape[-1] != n_cols:
        raise ValueError(f"x must have shape ({n_cols},) or (B, {n_cols}) for a TT-matrix of shape "
                         f"{(n_rows, n_cols)}, got {tuple(x.shape)}")
    if x.device != tt_matrix.device or x.dtype != tt_matrix.dtype:
        raise ValueError(f"x is {x.dtype} on {x.device} but the TT-matrix is {tt_matrix.dtype} on "
                         f"{tt_matrix.device}: use one dtype and device")
    vector = x.ndim == 1
    batch = 1 if vector else x.shape[0]
    t = x.reshape(batch, 1, n_cols)  # (P, r_{k-1}, n_k * rest)
    for core in tt_matrix.cores:
        r0, m, n, r1 = core.shape
        t = t.reshape(t.shape[0], r0, n, -1)  # (P, r0, n_k, rest)
        t = torch.einsum("pans,amnr->pmrs", t, core)  # (P, m_k, r_k, rest)
        t = t.reshape(-1, r1, t.shape[-1])  # (P * m_k, r_k, rest)
    return t.reshape(n_rows) if vector else t.reshape(batch, n_rows)


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

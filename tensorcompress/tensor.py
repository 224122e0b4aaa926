r"""Tensor algebra: unfoldings, n-mode products, Kronecker and Khatri–Rao products.

Conventions
-----------
tensorcompress follows TensorLy's **row-major** (C-order) conventions so that every result can be compared with
TensorLy entry by entry:

* ``unfold(X, n) = moveaxis(X, n, 0).reshape(I_n, -1)``: the mode-``n`` fibres become the columns, and the
  remaining indices are enumerated with the **last index varying fastest**.
* Kolda & Bader (2009, "Tensor Decompositions and Applications", SIAM Review 51(3)) unfold **column-major**: the
  *first* remaining index varies fastest. The two unfoldings hold the same columns in a different order, so every
  identity carries over once the order of the Kronecker / Khatri–Rao factors is reversed.
* Hence, with row-major unfolding, for a CP tensor :math:`[\![A_1, \dots, A_N]\!]`

  .. math:: X_{(n)} = A_n \bigl(A_1 \odot \cdots \odot A_{n-1} \odot A_{n+1} \odot \cdots \odot A_N\bigr)^\top,

  the Khatri–Rao factors taken in **increasing** mode order (Kolda & Bader write them in decreasing order), the
  first matrix varying slowest.

All functions take and return ``torch.Tensor`` on any device; dtype and device follow the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._validation import check_finite, check_matrices, check_mode, check_tensor, max_abs

__all__ = [
    "unfold",
    "fold",
    "mode_dot",
    "multi_mode_dot",
    "khatri_rao",
    "kronecker",
    "relative_error",
]


def unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    r"""Mode-``n`` unfolding (matricisation) of a tensor, row-major as in TensorLy.

    .. math:: X_{(n)}[i_n, j] = X[i_1, \dots, i_N], \quad
              j = \text{ravel\_multi\_index}((i_1,\dots,i_{n-1},i_{n+1},\dots,i_N)) \text{ (C order)}

    Parameters
    ----------
    x : torch.Tensor
        Tensor of order ``N >= 1``.
    mode : int
        Mode to unfold along, ``-N <= mode < N``.

    Returns
    -------
    torch.Tensor
        Matrix of shape ``(I_mode, prod of the other sizes)``.

    Notes
    -----
    Kolda & Bader (2009) order the columns column-major; see the module docstring.
    """
    check_tensor(x, "x", min_ndim=1)
    mode = check_mode(mode, x.ndim)
    return torch.movedim(x, mode, 0).reshape(x.shape[mode], -1)


def fold(unfolded: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`unfold`: refold a mode-``mode`` unfolding into a tensor of ``shape``.

    Parameters
    ----------
    unfolded : torch.Tensor
        Matrix of shape ``(shape[mode], prod of the other sizes)``.
    mode : int
        The mode the matrix was unfolded along.
    shape : sequence of int
        Shape of the full tensor.
    """
    check_tensor(unfolded, "unfolded")
    if unfolded.ndim != 2:
        raise ValueError(f"unfolded must be a matrix (2-D), got shape {tuple(unfolded.shape)}")
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, Sequence) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise TypeError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    shape = tuple(shape)
    mode = check_mode(mode, len(shape))
    rest = math.prod(s for k, s in enumerate(shape) if k != mode)
    if tuple(unfolded.shape) != (shape[mode], rest):
        raise ValueError(
            f"unfolded has shape {tuple(unfolded.shape)}, but a mode-{mode} unfolding of a tensor of shape "
            f"{shape} has shape {(shape[mode], rest)}"
        )
    moved = (shape[mode],) + tuple(s for k, s in enumerate(shape) if k != mode)
    return torch.movedim(unfolded.reshape(moved), 0, mode)


def mode_dot(x: torch.Tensor, matrix_or_vector: torch.Tensor, mode: int) -> torch.Tensor:
    r"""n-mode product :math:`X \times_n M`.

    .. math:: (X \times_n M)[i_1,\dots,j,\dots,i_N] = \sum_{i_n} X[i_1,\dots,i_n,\dots,i_N]\, M[j, i_n],
              \qquad (X \times_n M)_{(n)} = M X_{(n)}.

    Parameters
    ----------
    x : torch.Tensor
        Tensor of order ``N >= 1``.
    matrix_or_vector : torch.Tensor
        Matrix of shape ``(J, I_mode)`` (the mode's size becomes ``J``) or vector of length ``I_mode`` (the mode is
        contracted away and the result has order ``N - 1``).
    mode : int
        Mode to multiply along.

    References
    ----------
    De Lathauwer, De Moor & Vandewalle (2000), "A multilinear singular value decomposition", SIAM J. Matrix Anal.
    Appl. 21(4); Kolda & Bader (2009), §2.5.
    """
    check_tensor(x, "x", min_ndim=1)
    check_tensor(matrix_or_vector, "matrix_or_vector")
    mode = check_mode(mode, x.ndim)
    m = matrix_or_vector
    if m.ndim not in (1, 2):
        raise ValueError(f"matrix_or_vector must be a matrix or a vector, got shape {tuple(m.shape)}")
    if m.device != x.device:
        raise ValueError(f"matrix_or_vector is on {m.device} but x is on {x.device}: use one device")
    if m.dtype != x.dtype:
        raise TypeError(f"matrix_or_vector has dtype {m.dtype} but x has {x.dtype}: use one dtype")
    size = m.shape[-1]
    if size != x.shape[mode]:
        raise ValueError(
            f"matrix_or_vector has {size} columns but mode {mode} of x has size {x.shape[mode]} "
            f"(x has shape {tuple(x.shape)}, matrix_or_vector has shape {tuple(m.shape)})"
        )
    if m.ndim == 1:
        return torch.tensordot(x, m, dims=([mode], [0]))
    # View x as (before, I_n, after) and multiply by one (batched) GEMM: no permuted copy of x, which matters in the
    # hot loops of HOSVD/HOOI where x is the whole tensor.
    shape = x.shape
    after = math.prod(shape[mode + 1:])
    if after == 1:
        out = x.reshape(-1, size) @ m.mT
    elif mode == 0:
        out = m @ x.reshape(size, after)
    else:
        out = torch.matmul(m, x.reshape(-1, size, after))
    return out.reshape(*shape[:mode], m.shape[0], *shape[mode + 1:])


def multi_mode_dot(
    x: torch.Tensor,
    matrices: Sequence[torch.Tensor],
    modes: Sequence[int] | None = None,
    skip: int | None = None,
    transpose: bool = False,
) -> torch.Tensor:
    r"""Chain of n-mode products :math:`X \times_{m_1} M_1 \times_{m_2} M_2 \cdots`.

    Parameters
    ----------
    x : torch.Tensor
        Tensor of order ``N``.
    matrices : sequence of torch.Tensor
        Matrices (or vectors, which contract their mode away).
    modes : sequence of int, optional
        The mode of each matrix; default ``0, 1, ..., len(matrices) - 1``. Modes refer to ``x``'s original modes
        even when vectors remove earlier ones.
    skip : int, optional
        Index into ``matrices`` of one matrix to leave out (as in TensorLy when ``modes`` is increasing).
    transpose : bool
        Multiply by each matrix's (conjugate) transpose, e.g. to project onto Tucker factors:
        :math:`X \times_1 A_1^\top \cdots \times_N A_N^\top`.
    """
    check_tensor(x, "x", min_ndim=1)
    mats = check_matrices(matrices, "matrices", allow_vectors=True)
    if modes is None:
        modes = list(range(len(mats)))
    else:
        if isinstance(modes, int | torch.Tensor) or not isinstance(modes, Sequence):
            raise TypeError(f"modes must be a sequence of ints or None, got {type(modes).__name__}")
        modes = [check_mode(m, x.ndim, f"modes[{i}]") for i, m in enumerate(modes)]
    if len(modes) != len(mats):
        raise ValueError(f"modes has {len(modes)} entries but matrices has {len(mats)}: give one mode per matrix")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct, got {list(modes)}")
    if skip is not None:
        if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < len(mats):
            raise ValueError(f"skip={skip!r} is out of range: allowed None or an int in 0..{len(mats) - 1}")
    order = sorted(range(len(mats)), key=lambda i: modes[i])
    res = x
    removed = 0  # vectors contract their mode away: later modes shift down
    for i in order:
        if i == skip:
            continue
        m = mats[i]
        if transpose and m.ndim == 2:
            m = m.mH
        res = mode_dot(res, m, modes[i] - removed)
        if m.ndim == 1:
            removed += 1
    return res


def khatri_rao(matrices: Sequence[torch.Tensor], skip: int | None = None) -> torch.Tensor:
    r"""Khatri–Rao (column-wise Kronecker) product :math:`A_1 \odot A_2 \odot \cdots \odot A_N`.

    .. math:: (A \odot B)[:, r] = A[:, r] \otimes B[:, r]

    Row index of the result is ``(i_1, ..., i_N)`` raveled in C order: the **first** matrix varies slowest, as in
    TensorLy. (Kolda & Bader's column-major identities list the factors in the reverse order.)

    Parameters
    ----------
    matrices : sequence of torch.Tensor
        Matrices ``I_k x R`` with the same number of columns ``R``.
    skip : int, optional
        Index of a matrix to leave out (as in CP-ALS, where mode ``n`` is skipped).

    Returns
    -------
    torch.Tensor
        Matrix of shape ``(prod I_k, R)``.
    """
    mats = check_matrices(matrices, "matrices")
    rank = mats[0].shape[1]
    for k, m in enumerate(mats):
        if m.shape[1] != rank:
            raise ValueError(
                f"all matrices must have the same number of columns: matrices[0] has {rank}, matrices[{k}] has "
                f"{m.shape[1]} (shape {tuple(m.shape)})"
            )
    mats = _skipped(mats, skip)
    res = mats[0]
    for m in mats[1:]:
        res = (res[:, None, :] * m[None, :, :]).reshape(-1, rank)
    return res


def _skipped(mats: list[torch.Tensor], skip: object) -> list[torch.Tensor]:
    """``mats`` without the one at index ``skip`` (``None``: all of them), as CP-ALS leaves out mode ``n``."""
    if skip is None:
        return mats
    if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < len(mats):
        raise ValueError(f"skip={skip!r} is out of range: allowed None or an int in 0..{len(mats) - 1}")
    mats = [m for k, m in enumerate(mats) if k != skip]
    if not mats:
        raise ValueError("matrices must hold at least one matrix besides the skipped one")
    return mats


def kronecker(matrices: Sequence[torch.Tensor], skip: int | None = None) -> torch.Tensor:
    r"""Kronecker product :math:`A_1 \otimes A_2 \otimes \cdots \otimes A_N` of matrices.

    Satisfies the mixed-product property :math:`(A \otimes B)(C \otimes D) = AC \otimes BD`.

    Parameters
    ----------
    matrices : sequence of torch.Tensor
        Matrices of any shapes (one device, one dtype).
    skip : int, optional
        Index of a matrix to leave out.
    """
    mats = check_matrices(matrices, "matrices")
    mats = _skipped(mats, skip)
    res = mats[0]
    for m in mats[1:]:
        res = torch.kron(res, m)
    return res


def scale_exponent(x: torch.Tensor, largest: float | None = None) -> int:
    r"""``e`` such that ``x * 2**-e`` has its largest absolute entry in :math:`[1/2, 1)`, or ``0`` when ``x``'s
    largest entry is already within :math:`2^{\pm k}`, :math:`k` a quarter of the dtype's exponent range (squares and
    sums of squares of such entries neither overflow nor underflow, so no copy is made). ``x`` must be finite;
    ``largest`` = ``max |x|`` if the caller has it."""
    if largest is None:
        largest = max_abs(x)
    if largest == 0:
        return 0
    exp = math.frexp(largest)[1]
    k = int(math.log2(torch.finfo(x.dtype).max)) // 4 if x.is_floating_point() else 0
    return 0 if abs(exp) <= k else exp


def ldexp(x: torch.Tensor, exp: int) -> torch.Tensor:
    r""":math:`x \cdot 2^{\text{exp}}`, exact (a power of two) unless the result leaves the dtype's range; the factor
    is applied in pieces that the dtype can represent. ``x`` itself when ``exp == 0``."""
    if exp == 0:
        return x
    step = int(math.log2(torch.finfo(x.real.dtype if x.is_complex() else x.dtype).max)) - 2
    while exp != 0:
        e = max(-step, min(step, exp))
        x = x * 2.0**e
        exp -= e
    return x


def _wide(x: torch.Tensor, complex_: bool) -> torch.Tensor:
    """``x`` in float64 (complex128 if ``complex_``): no digit lost, whatever the input's floating dtype."""
    return x.to(torch.complex128 if complex_ else torch.float64)


def relative_error(x: torch.Tensor, approx: object) -> torch.Tensor:
    r"""Relative Frobenius error :math:`\|X - \hat X\|_F / \|X\|_F`.

    Computed in float64 (complex128 if either input is complex: the imaginary part of a complex approximation of a
    real tensor counts), each norm after scaling by an exact power of two, so it neither overflows nor underflows
    in any dtype (float16 values of thousands, float32 values of 1e-30 or 1e30).

    Parameters
    ----------
    x : torch.Tensor
        Reference tensor: real or complex floating point or integer, finite, non-empty and not all zeros.
    approx : torch.Tensor or object with ``to_tensor()``
        Approximation of the same shape, e.g. a ``CPTensor`` (moved to ``x``'s device).

    Returns
    -------
    torch.Tensor
        0-dim tensor on ``x``'s device with ``x``'s dtype (its real dtype if ``x`` is complex, float64 if ``x`` is
        an integer tensor); ``float(...)`` gives a Python number. Differentiable.

    Raises
    ------
    TypeError
        If either is not a tensor or is a bool tensor.
    ValueError
        If the shapes differ, ``x`` is empty or all zeros, or either holds NaN or Inf.
    """
    check_tensor(x, "x")
    if not isinstance(approx, torch.Tensor) and hasattr(approx, "to_tensor"):
        approx = approx.to_tensor()
    check_tensor(approx, "approx")
    for name, t in (("x", x), ("approx", approx)):
        if t.dtype == torch.bool:
            raise TypeError(f"{name} must be a numeric tensor (floating point, complex or integer), got torch.bool")
    if approx.shape != x.shape:
        raise ValueError(f"approx has shape {tuple(approx.shape)} but x has shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}): the relative error is undefined")
    check_finite(x, "x")
    check_finite(approx, "approx")  # a diverged approximation fails loudly instead of returning NaN
    complex_ = x.is_complex() or approx.is_complex()
    xw = _wide(x, complex_)
    aw = _wide(approx.to(x.device), complex_)
    ex = _max_exponent(xw)
    if ex is None:
        raise ValueError("x is all zeros: the relative error is undefined")
    ed = _max_exponent(torch.stack([xw.detach().abs().max(), aw.detach().abs().max()]))
    norm_x = torch.linalg.vector_norm(ldexp(xw, -ex))
    norm_d = torch.linalg.vector_norm(ldexp(xw, -ed) - ldexp(aw, -ed))
    out = ldexp(norm_d / norm_x, ed - ex)
    if x.is_complex():
        return out.to(x.real.dtype)
    return out.to(x.dtype if x.is_floating_point() else torch.float64)


def _max_exponent(x: torch.Tensor) -> int | None:
    """``e`` with ``max|x| * 2**-e`` in :math:`[1/2, 1)` (always, unlike :func:`scale_exponent`); ``None`` if ``x`` is
    all zeros."""
    largest = float(x.detach().abs().max())
    return None if largest == 0 else math.frexp(largest)[1]

r"""Sparse storage in real bytes: CSR with Deep Compression's relative indices and filler zeros.

Han et al. (2016, Deep Compression, §2) store a pruned weight matrix row by row (CSR) but, instead of each
non-zero's column index, the *gap* to the previous non-zero in :math:`b` bits (5 for fully connected layers,
8 for convolutions in the paper). A gap :math:`d` larger than :math:`M = 2^b - 1` is bridged by
:math:`\lfloor d/(M+1)\rfloor` *filler zeros*: stored entries of value 0 that each advance the position by
:math:`M + 1`. A row of :math:`n` non-zeros with gaps :math:`d_i` costs
:math:`\sum_i (1 + \lfloor d_i/(M+1)\rfloor)` entries of :math:`b` index bits plus one value each, and every row
one 32-bit entry count:

.. math:: \text{bytes} \approx \tfrac{b + 8\,s_v}{8}\,(n_{nz} + n_{\text{fill}}) + 4\,\text{rows}

(:math:`s_v` the bytes of a value). Against the dense :math:`s_v\cdot\text{rows}\cdot\text{cols}`, this wins
when the density is below about :math:`s_v/(s_v + b/8)`. The compressed file (:mod:`tensorcompress.export.file`)
stores the positions of a pruned or shared weight this way, the weight flattened to one row (Han et al.'s Fig. 2),
with the gaps entropy-coded instead of packed at :math:`b` bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_tensor

__all__ = ["CSRRelative", "csr_encode", "csr_decode"]


@dataclass(frozen=True)
class CSRRelative:
    """A tensor in CSR with relative indices: ``shape`` (rows = ``shape[0]``, columns = the rest flattened),
    ``bits`` per gap, ``row_counts`` (stored entries per row, fillers included), ``gaps`` and ``values`` of the
    stored entries (fillers have value 0)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    bits: int
    row_counts: np.ndarray
    gaps: np.ndarray
    values: torch.Tensor

    @property
    def n_fillers(self) -> int:
        """Stored entries that are filler zeros."""
        return int(len(self.gaps) - int((self.values != 0).sum()))


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16] (Deep Compression uses 4-8), got {bits!r}")
    return bits


def csr_encode(tensor: torch.Tensor, bits: int = 5) -> CSRRelative:
    """Encode ``tensor`` (at least 2-D; float) row by row with ``bits``-bit gaps and filler zeros."""
    t = check_tensor(tensor, "tensor", min_ndim=2, floating=True)
    bits = _check_bits(bits)
    span = 1 << bits  # a filler advances the position by M + 1 = 2^bits
    dense = t.detach().cpu().reshape(t.shape[0], -1)
    rows, cols = torch.nonzero(dense, as_tuple=True)
    rows_np, cols_np = rows.numpy(), cols.numpy()
    # gap to the previous non-zero of the same row (the first: to position -1)
    prev = np.where(np.r_[True, rows_np[1:] != rows_np[:-1]], -1, np.r_[0, cols_np[:-1]])
    d = cols_np - prev - 1
    fill = d // span  # filler zeros before each non-zero
    # each non-zero expands to `fill` fillers of gap M then itself with gap d - fill * span
    reps = fill + 1
    gaps = np.full(int(reps.sum()), span - 1, dtype=np.int64)
    last = np.cumsum(reps) - 1
    gaps[last] = d - fill * span
    values = torch.zeros(len(gaps), dtype=t.dtype)
    values[torch.from_numpy(last)] = dense[rows, cols]
    row_counts = np.bincount(rows_np, weights=reps, minlength=dense.shape[0]).astype(np.uint32)
    return CSRRelative(tuple(t.shape), t.dtype, bits, row_counts, gaps.astype(np.uint16), values)


def csr_decode(enc: CSRRelative) -> torch.Tensor:
    """The dense tensor back (on the CPU), exactly."""
    n_rows = enc.shape[0]
    n_cols = int(np.prod(enc.shape[1:]))
    row_of = np.repeat(np.arange(n_rows), enc.row_counts.astype(np.int64))
    steps = enc.gaps.astype(np.int64) + 1
    pos = np.cumsum(steps)
    starts = np.r_[0, np.cumsum(enc.row_counts.astype(np.int64))[:-1]]
    before = np.r_[0, pos][starts]  # position sum accumulated before each row
    cols = pos - 1 - np.repeat(before, enc.row_counts.astype(np.int64))
    out = torch.zeros(n_rows, n_cols, dtype=enc.dtype)
    out[torch.from_numpy(row_of), torch.from_numpy(cols)] = enc.values
    return out.reshape(enc.shape)

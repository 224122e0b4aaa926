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
when the density is below about :math:`s_v/(s_v + b/8)`. Tensors of fewer than two dimensions (biases, BN
statistics) are stored dense as raw bytes behind a few bytes of dtype and shape (not through ``torch.save``,
whose zip container alone costs about 1.5 kB per tensor, more than a small layer's bias). :func:`save_sparse`
writes a file, :func:`load_sparse` reads it back exactly; the size a notebook reports is the file's, from
``os.path.getsize``.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._validation import check_tensor

__all__ = ["CSRRelative", "csr_encode", "csr_decode", "save_sparse", "load_sparse"]

_MAGIC = b"TCSR1"
_DTYPES = {torch.float16: (1, np.float16), torch.bfloat16: (2, None), torch.float32: (3, np.float32),
           torch.float64: (4, np.float64)}
_CODES = {code: dt for dt, (code, _) in _DTYPES.items()}
# tensors stored dense as raw little-endian bytes (bfloat16 through its int16 bit pattern); others via torch.save
_RAW = {**_DTYPES, torch.int8: (5, np.int8), torch.uint8: (6, np.uint8), torch.int16: (7, np.int16),
        torch.int32: (8, np.int32), torch.int64: (9, np.int64), torch.bool: (10, np.bool_)}
_RAW_CODES = {code: dt for dt, (code, _) in _RAW.items()}


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


def _pack(gaps: np.ndarray, bits: int) -> bytes:
    as_bits = ((gaps[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)
    return np.packbits(as_bits.reshape(-1)).tobytes()


def _unpack(data: bytes, n: int, bits: int) -> np.ndarray:
    as_bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: n * bits].reshape(n, bits).astype(np.int64)
    return (as_bits << np.arange(bits - 1, -1, -1)).sum(1).astype(np.uint16)


def _value_bytes(t: torch.Tensor) -> bytes:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(np.dtype(_RAW[t.dtype][1]).newbyteorder("<")).tobytes()


def _values_from(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(data, dtype="<i2").astype(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.frombuffer(data, dtype=np.dtype(_RAW[dtype][1]).newbyteorder("<"))
                            .astype(_RAW[dtype][1]))


def _effective_state(model: nn.Module | dict) -> dict[str, torch.Tensor]:
    """The state dict with each pruned ``x_orig``/``x_mask`` pair replaced by the masked ``x``."""
    sd = dict(model.state_dict() if isinstance(model, nn.Module) else model)
    for key in [k for k in sd if k.endswith("_mask") and k[:-5] + "_orig" in sd]:
        base = key[:-5]
        sd[base] = sd.pop(base + "_orig") * sd.pop(key)
    return sd


def save_sparse(model: nn.Module | dict, path: str | os.PathLike, *, bits: int = 5) -> int:
    """Write the (masked) weights of ``model`` (or a state dict) to ``path``; returns the file's size in bytes.

    Floating tensors of two or more dimensions go in CSR with relative indices (:func:`csr_encode`); the rest
    dense. Masks of ``torch.nn.utils.prune`` are applied, not stored. Read back with :func:`load_sparse`.
    """
    bits = _check_bits(bits)
    buf = io.BytesIO()
    state = _effective_state(model)
    buf.write(_MAGIC + struct.pack("<I", len(state)))
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        key = name.encode()
        buf.write(struct.pack("<H", len(key)) + key)
        sparse = t.is_floating_point() and t.ndim >= 2 and t.dtype in _DTYPES
        if not sparse and t.dtype in _RAW:  # dense, raw bytes
            buf.write(b"R" + struct.pack("<BB", _RAW[t.dtype][0], t.ndim) + struct.pack(f"<{t.ndim}Q", *t.shape))
            buf.write(_value_bytes(t.reshape(-1)))
            continue
        if not sparse:  # dense, through torch.save (any other dtype: complex, quantized...)
            raw = io.BytesIO()
            torch.save(t, raw)
            buf.write(b"D" + struct.pack("<Q", raw.tell()) + raw.getvalue())
            continue
        enc = csr_encode(t, bits)
        gaps, values = _pack(enc.gaps, bits), _value_bytes(enc.values)
        buf.write(b"S" + struct.pack("<BBB", _DTYPES[t.dtype][0], bits, t.ndim))
        buf.write(struct.pack(f"<{t.ndim}Q", *t.shape) + struct.pack("<Q", len(enc.gaps)))
        buf.write(enc.row_counts.astype("<u4").tobytes() + gaps + values)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return os.path.getsize(path)


def load_sparse(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse`: the state dict (dense tensors) for ``load_state_dict`` into an
    unpruned model of the same architecture."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path} is not a file written by save_sparse")
    off = len(_MAGIC)
    (count,) = struct.unpack_from("<I", data, off)
    off += 4
    state = {}
    for _ in range(count):
        (klen,) = struct.unpack_from("<H", data, off)
        name = data[off + 2: off + 2 + klen].decode()
        off += 2 + klen
        kind = data[off: off + 1]
        off += 1
        if kind == b"D":
            (n,) = struct.unpack_from("<Q", data, off)
            state[name] = torch.load(io.BytesIO(data[off + 8: off + 8 + n]), weights_only=True)
            off += 8 + n
            continue
        if kind == b"R":
            code, ndim = struct.unpack_from("<BB", data, off)
            shape = struct.unpack_from(f"<{ndim}Q", data, off + 2)
            off += 2 + 8 * ndim
            dtype = _RAW_CODES[code]
            vlen = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
            state[name] = _values_from(data[off: off + vlen], dtype).reshape(shape)
            off += vlen
            continue
        code, bits, ndim = struct.unpack_from("<BBB", data, off)
        off += 3
        shape = struct.unpack_from(f"<{ndim}Q", data, off)
        off += 8 * ndim
        (n,) = struct.unpack_from("<Q", data, off)
        off += 8
        counts = np.frombuffer(data, dtype="<u4", count=shape[0], offset=off).astype(np.uint32)
        off += 4 * shape[0]
        glen = (n * bits + 7) // 8
        gaps = _unpack(data[off: off + glen], n, bits)
        off += glen
        dtype = _CODES[code]
        vlen = n * torch.empty(0, dtype=dtype).element_size()
        values = _values_from(data[off: off + vlen], dtype)
        off += vlen
        state[name] = csr_decode(CSRRelative(tuple(shape), dtype, bits, counts, gaps, values))
    return state

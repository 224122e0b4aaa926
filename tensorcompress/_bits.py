r"""Fixed-width bit packing, written once: :math:`n` unsigned integers of :math:`b` bits each in
:math:`\lceil n b / 8\rceil` bytes.

Each value is written most significant bit first, values one after another, the last byte padded with zero bits:
the layout ``numpy.packbits`` gives to the concatenated bits (big-endian bit order). Value :math:`v_i` occupies bits
:math:`[i b, (i + 1) b)` of the stream, bit :math:`j` of the stream being bit :math:`7 - (j \bmod 8)` of byte
:math:`\lfloor j / 8\rfloor`. Used for the codes of shared weights and their masks
(:class:`tensorcompress.quantization.SharedWeight`).
"""

from __future__ import annotations

import torch

__all__ = ["pack_bits", "unpack_bits", "packed_size"]

MAX_BITS = 16


def packed_size(n: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` writes for ``n`` values of ``bits`` bits: :math:`\\lceil n b / 8\\rceil`."""
    return -(-n * bits // 8)


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the integers ``values`` (any shape, read in row-major order, each in ``[0, 2**bits)``, ``bits`` in
    ``[1, 16]``; not checked here: the public callers check them) into a ``uint8`` tensor on their device."""
    v = values.reshape(-1).to(torch.int64)
    shifts = torch.arange(bits - 1, -1, -1, device=v.device)
    stream = ((v.unsqueeze(1) >> shifts) & 1).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=v.device)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` values of ``bits`` bits of the ``uint8`` tensor ``packed`` (inverse of :func:`pack_bits`),
    as ``int64`` on its device. ``packed`` must hold at least :func:`packed_size` ``(n, bits)`` bytes."""
    flat = packed.reshape(-1)[: packed_size(n, bits)].to(torch.int64)
    if bits == 8:
        return flat
    if bits < 8:
        # 8 values fill exactly ``bits`` bytes: read each such chunk as one big-endian integer (at most 56 bits)
        # and shift the 8 values out of it; n values cost O(n) work, not one element per bit
        flat = torch.cat([flat, flat.new_zeros(-flat.numel() % bits)]).reshape(-1, bits)
        word = (flat << (8 * torch.arange(bits - 1, -1, -1, device=flat.device))).sum(1)
        shifts = bits * torch.arange(7, -1, -1, device=flat.device)
        return ((word.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]
    # 9 to 16 bits: value i lies within the 24-bit big-endian word of byte (i*b) // 8 and the next two
    start = torch.arange(n, device=packed.device) * bits
    first = start >> 3
    p = torch.cat([flat, flat.new_zeros(2)])
    word = (p[first] << 16) | (p[first + 1] << 8) | p[first + 2]
    return (word >> (24 - bits - (start & 7))) & ((1 << bits) - 1)

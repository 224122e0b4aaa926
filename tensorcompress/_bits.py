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
    stream = (packed.reshape(-1, 1).to(torch.int64) >> torch.arange(7, -1, -1, device=packed.device)) & 1
    codes = stream.reshape(-1)[: n * bits].reshape(n, bits)
    return (codes << torch.arange(bits - 1, -1, -1, device=packed.device)).sum(1)

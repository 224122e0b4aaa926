r"""Entropy coding: Huffman and ANS through ``constriction``, with the empirical entropy they are measured against.

**Entropy and Huffman's bound.** A stream of :math:`n` symbols in which symbol :math:`s` occurs :math:`n_s` times has
the empirical distribution :math:`p_s = n_s/n` and entropy :math:`H = -\sum_s p_s\log_2 p_s` bits per symbol. No
prefix code does better on average: its code lengths :math:`\ell_s` satisfy Kraft's inequality
:math:`\sum_s 2^{-\ell_s}\le 1`, and :math:`\bar L - H = \sum_s p_s \log_2(p_s / 2^{-\ell_s}) \ge 0` (Gibbs). The
Shannon lengths :math:`\lceil -\log_2 p_s\rceil` satisfy Kraft and cost less than :math:`H + 1`; Huffman's code
(1952) is optimal among prefix codes, so :math:`H \le \bar L < H + 1`. A stream code (ANS, Duda 2013; range coding)
spends :math:`-\log_2 p_s` bits per symbol up to a constant per *stream*, not per symbol, and gets within a few
bytes of :math:`nH/8`.

**The coders** are ``constriction``'s (Bamler et al.): :mod:`constriction.symbol.huffman` for Huffman, as in
Deep Compression, and the ANS coder :class:`constriction.stream.stack.AnsCoder` with a categorical model. Both
write 32-bit words, so each stream is a multiple of 4 bytes.

**What a decoder needs.** Huffman: the code lengths, one byte per symbol of the alphabet (0: absent). From them
the decoder rebuilds the tree from the dyadic probabilities :math:`2^{-\ell_s}`, whose Huffman tree has exactly
those lengths (a Huffman tree on a dyadic distribution is the one with :math:`\ell_s = -\log_2 p_s`); the encoder
uses the same rebuilt tree, so both sides agree by construction. ANS: the symbol counts, as LEB128 varints (one
byte for a count below 128, two below 16384).

The file that stores these streams is described in :mod:`tensorcompress.export.file`.
"""

from __future__ import annotations

import constriction
import numpy as np

__all__ = ["entropy_bits", "huffman_code_lengths", "huffman_encode", "huffman_decode", "ans_encode", "ans_decode",
           "varint_bytes", "varint_values"]


# ---------------------------------------------------------------------------------------------------------------
# the coders
# ---------------------------------------------------------------------------------------------------------------

def _counts(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet}), got values in [{symbols.min()}, {symbols.max()}]")
    return np.bincount(symbols.astype(np.int64), minlength=alphabet)


def entropy_bits(symbols: np.ndarray, alphabet: int | None = None) -> float:
    """Empirical entropy :math:`nH` of ``symbols`` in bits (the total, not per symbol)."""
    symbols = np.asarray(symbols)
    if symbols.size == 0:
        return 0.0
    counts = _counts(symbols, int(symbols.max()) + 1 if alphabet is None else alphabet)
    p = counts[counts > 0] / symbols.size
    return float(-(counts[counts > 0] * np.log2(p)).sum())


def _tree_lengths(probabilities: np.ndarray) -> np.ndarray:
    """The code length of every symbol of ``constriction``'s Huffman tree for ``probabilities`` (measured by
    encoding each symbol alone: constriction does not expose the tree)."""
    tree = constriction.symbol.huffman.EncoderHuffmanTree(probabilities)
    out = np.empty(len(probabilities), dtype=np.int64)
    for j in range(len(probabilities)):
        enc = constriction.symbol.QueueEncoder()
        enc.encode_symbol(j, tree)
        out[j] = enc.get_compressed_and_bitrate()[1]
    return out


def huffman_code_lengths(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Huffman code lengths for the empirical distribution of ``symbols`` over ``range(alphabet)``.

    ``int64`` array of ``alphabet`` lengths, 0 for absent symbols (a lone symbol gets length 0: it costs nothing).
    Built by ``constriction.symbol.huffman`` from the counts."""
    counts = _counts(symbols, alphabet)
    lengths = np.zeros(alphabet, dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used):
        lengths[used] = _tree_lengths(counts[used].astype(np.float64))
    return lengths


def _dyadic(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Used symbols and their probabilities :math:`2^{-\\ell}` from a stored length table (0: absent)."""
    used = np.flatnonzero(table)
    return used, np.ldexp(1.0, -table[used].astype(np.int64))


def huffman_encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Huffman-code ``symbols``; returns ``(table, words, n_bits)``.

    ``table``: uint8 code length per symbol of the alphabet (0: absent; a lone present symbol is stored as 1 and
    coded in 0 bits); ``words``: the uint32 stream (zero-padded to a whole word); ``n_bits``: its information bits.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = _counts(symbols, alphabet)
    table = huffman_code_lengths(symbols, alphabet)
    table[(counts > 0) & (table == 0)] = 1  # the lone-symbol case
    if table.max(initial=0) > 255:
        raise ValueError("a Huffman code length exceeds 255 bits")  # impossible below 2**255 symbols
    table = table.astype(np.uint8)
    used, probs = _dyadic(table)
    if len(used) == 0:
        return table, np.zeros(0, dtype=np.uint32), 0
    tree = constriction.symbol.huffman.EncoderHuffmanTree(probs)
    compact = np.full(alphabet, -1, dtype=np.int64)
    compact[used] = np.arange(len(used))
    enc = constriction.symbol.QueueEncoder()
    for s in compact[symbols].tolist():
        enc.encode_symbol(s, tree)
    words, n_bits = enc.get_compressed_and_bitrate()
    return table, np.asarray(words, dtype=np.uint32), int(n_bits)


def huffman_decode(table: np.ndarray, words: np.ndarray, n: int) -> np.ndarray:
    """Decode ``n`` symbols from a :func:`huffman_encode` stream and its length ``table``.

    Parameters
    ----------
    table : array of uint8
        The code length of each symbol of the alphabet (0: unused), as :func:`huffman_encode` returns it.
    words : array of uint32
        The coded stream.
    n : int
        How many symbols to decode (the caller bounds it: a one-symbol code spends no bits per symbol).
    """
    used, probs = _dyadic(np.asarray(table))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(used) == 0:
        raise ValueError(f"corrupt stream: {n} symbols announced but the code table is empty")
    if len(used) == 1:  # a one-symbol code spends no bits: nothing to read
        return np.full(n, used[0], dtype=np.int64)
    tree = constriction.symbol.huffman.DecoderHuffmanTree(probs)
    dec = constriction.symbol.QueueDecoder(np.asarray(words, dtype=np.uint32))
    try:
        out = [dec.decode_symbol(tree) for _ in range(n)]
    except Exception as err:  # constriction raises on a stream that runs out
        raise ValueError(f"corrupt Huffman stream: {err}") from err
    return used[np.asarray(out, dtype=np.int64)]


def varint_bytes(values: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits per byte, the high bit set on every byte but a number's last (ANS count tables)."""
    out = bytearray()
    for v in np.asarray(values, dtype=np.int64).tolist():
        if v < 0:
            raise ValueError(f"varint_bytes needs non-negative values, got {v}")
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def varint_values(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`varint_bytes`: exactly ``n`` numbers from all of ``data``."""
    values, v, shift = [], 0, 0
    for byte in data:
        v |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(v)
            v, shift = 0, 0
        elif shift > 63:
            raise ValueError("corrupt count table: a number longer than 64 bits")
    if len(values) != n or shift:
        raise ValueError(f"corrupt count table: {len(values)} numbers, expected {n}")
    return np.asarray(values, dtype=np.int64)


def _ans_model(counts: np.ndarray):
    # constriction needs two symbols at least; a padded one of count 0 is never coded
    probs = np.r_[counts.astype(np.float64), np.zeros(max(0, 2 - len(counts)))]
    return constriction.stream.model.Categorical(probs, perfect=False)


def ans_encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """ANS-code ``symbols`` (``constriction.stream.stack.AnsCoder``, a categorical model of the empirical counts);
    returns ``(counts, words)``: the uint32 count per symbol (the table a decoder needs) and the uint32 stream."""
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = _counts(symbols, alphabet).astype(np.uint32)
    if symbols.size == 0:
        return counts, np.zeros(0, dtype=np.uint32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _ans_model(counts))
    return counts, np.asarray(coder.get_compressed(), dtype=np.uint32)


def ans_decode(counts: np.ndarray, words: np.ndarray, n: int) -> np.ndarray:
    """Decode ``n`` symbols from an :func:`ans_encode` stream and its ``counts``.

    Parameters
    ----------
    counts : array of int
        How often each symbol of the alphabet occurs; they must add up to ``n``.
    words : array of uint32
        The coded stream.
    n : int
        How many symbols to decode.
    """
    counts = np.asarray(counts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if counts.size and (counts.min() < 0 or counts.max() > n):  # also keeps the sum below from overflowing
        raise ValueError(f"corrupt stream: a symbol count outside [0, {n}]")
    if counts.sum() != n:
        raise ValueError(f"corrupt stream: the counts add up to {int(counts.sum())}, not {n}")
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    return np.asarray(coder.decode(_ans_model(counts), n), dtype=np.int64)

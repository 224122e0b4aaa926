r"""Entropy coding and the Deep Compression file: Huffman and ANS through ``constriction``, a real file you can measure.

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

**The file** written by :func:`save_compressed` (little-endian):

==================  =================================================================================
``TCDC`` + u8 u8    magic, format version, coder (0 Huffman, 1 ANS)
u32 + JSON          header: architecture (module, class, constructor arguments), per tensor its name,
                    shape, dtype, bit widths, symbol and word counts
payload             per shared layer: codebook (``2**bits`` values, e.g. float32), weight-symbol table and stream,
                    gap table and stream; per plain tensor: its raw bytes (``tensor.view(uint8)``,
                    i.e. the dtype's native little-endian bytes, e.g. 4 per float32 bias entry)
u32                 CRC-32 (``zlib.crc32``) of every byte before it
==================  =================================================================================

A shared layer's mask is stored as Deep Compression's relative indices (:func:`tensorcompress.pruning.csr_encode`
on the weight flattened in row-major order: one CSR row whose gaps run on across the matrix rows, the relative
index of Han et al. 2016, Fig. 2, which saves the 4-byte row pointer per row); a gap beyond
:math:`2^{b_{\text{idx}}}-1` is bridged by filler entries, whose weight symbol is the extra symbol ``2**bits``
(Han et al.'s filler *zero*). Biases and every other tensor (BatchNorm statistics, unshared layers) are stored
plainly. :func:`load_compressed` checks the CRC before it parses anything, so a flipped byte or a truncated file
raises ``ValueError`` and never yields a model.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import struct
import zlib
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..pruning.sparse import CSRRelative, csr_decode, csr_encode
from ..quantization.nonuniform import SharedWeight

__all__ = ["entropy_bits", "huffman_code_lengths", "huffman_encode", "huffman_decode", "ans_encode", "ans_decode",
           "varint_bytes", "varint_values",
           "save_compressed", "load_compressed", "encode_compressed", "FORMAT_VERSION"]

_MAGIC = b"TCDC"
FORMAT_VERSION = 1
_CODERS = ("huffman", "ans")


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
    """Decode ``n`` symbols from a :func:`huffman_encode` stream and its length ``table``."""
    used, probs = _dyadic(np.asarray(table))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(used) == 0:
        raise ValueError(f"corrupt stream: {n} symbols announced but the code table is empty")
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
    """Decode ``n`` symbols from an :func:`ans_encode` stream and its ``counts``."""
    counts = np.asarray(counts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if counts.sum() != n:
        raise ValueError(f"corrupt stream: the counts add up to {int(counts.sum())}, not {n}")
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    return np.asarray(coder.decode(_ans_model(counts), n), dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# streams of one shared layer
# ---------------------------------------------------------------------------------------------------------------

def shared_streams(codebook_size: int, indices: torch.Tensor, mask: torch.Tensor,
                   index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The two symbol streams of a shared layer: weight symbols (codebook index, ``codebook_size`` for a filler)
    and relative-index gaps, one entry per stored element of the flattened weight's CSR row."""
    enc = csr_encode(mask.detach().cpu().reshape(1, -1).to(torch.float32), index_bits)
    real = enc.values.numpy() != 0
    weights = np.full(len(enc.gaps), codebook_size, dtype=np.int64)
    flat_mask = mask.detach().cpu().reshape(-1)
    weights[real] = indices.detach().cpu().reshape(-1)[flat_mask].long().numpy()
    return weights, enc.gaps.astype(np.int64)


def _unshare(weights: np.ndarray, gaps: np.ndarray, shape: tuple[int, ...], codebook_size: int,
             index_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and mask back from the two streams (inverse of :func:`shared_streams`)."""
    n = int(np.prod(shape))
    real = weights != codebook_size
    if gaps.size and (np.cumsum(gaps + 1)[-1] > n):
        raise ValueError("corrupt stream: the relative indices run past the end of the tensor")
    values = torch.from_numpy(real.astype(np.float32))
    csr = CSRRelative((1, n), torch.float32, index_bits, np.array([len(gaps)], dtype=np.uint32),
                      gaps.astype(np.uint16), values)
    mask = csr_decode(csr).reshape(-1) != 0
    indices = torch.zeros(n, dtype=torch.uint8)
    indices[mask] = torch.from_numpy(weights[real].astype(np.uint8))
    return indices.reshape(shape), mask.reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamSize:
    """Bytes of one coded stream: ``table`` (what the decoder needs to rebuild the code), ``payload`` (the coded
    words), ``n_symbols``, and ``entropy_bits`` (:math:`nH`) and ``code_bits`` (information bits, Huffman) for
    comparison."""

    n_symbols: int
    table: int
    payload: int
    entropy_bits: float
    code_bits: int | None


def _shared_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> each module whose weight is shared (one :class:`~tensorcompress.quantization.SharedWeight`)."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            plist = module.parametrizations.weight
            if len(plist) != 1 or not isinstance(plist[0], SharedWeight):
                raise ValueError(f"layer {name!r} has a weight parametrization other than one SharedWeight; "
                                 f"remove it before save_compressed")
            if plist[0].bits > 8 or plist.original.numel() != 2 ** plist[0].bits:
                raise ValueError(f"layer {name!r}: the file stores 2**bits codebook entries for bits <= 8, got "
                                 f"{plist.original.numel()} at bits={plist[0].bits}")
            out[name] = module
    return out


def _plain_state(model: nn.Module, shared: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    skip = tuple(f"{name}.parametrizations.weight." if name else "parametrizations.weight." for name in shared)
    state = {}
    for key, t in model.state_dict().items():
        if key.startswith(skip):
            continue
        if key.endswith(("_orig", "_mask")):
            raise ValueError(f"model has torch.nn.utils.prune state ({key!r}); make the pruning permanent "
                             f"(prune.remove) or use deep_compression before save_compressed")
        state[key] = t
    return state


def _arch(model: nn.Module) -> dict:
    cls = type(model)
    kwargs = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        value = getattr(model, p.name, None)
        if isinstance(value, (bool, int, float, str)) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            kwargs[p.name] = value
    return {"module": cls.__module__, "class": cls.__qualname__, "kwargs": kwargs}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _coder_code(coder: object) -> int:
    if coder not in _CODERS:
        raise ValueError(f"coder must be one of {_CODERS}, got {coder!r}")
    return _CODERS.index(coder)


def encode_compressed(model: nn.Module, *, coder: str = "huffman") -> tuple[bytes, dict[str, dict]]:
    """The bytes :func:`save_compressed` writes, and per tensor what they hold.

    Returns ``(data, sizes)`` where ``sizes[name]`` is, for a shared layer, ``{"codebook": bytes, "weights":
    StreamSize, "index": StreamSize}`` and, for a plain tensor, ``{"plain": bytes}``; plus ``sizes["header"] =
    {"bytes": ...}`` for the magic, header and checksum."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    code = _coder_code(coder)
    shared = _shared_layers(model)
    if not shared:
        raise ValueError("model has no shared weights (SharedWeight parametrizations); run "
                         "tc.pipelines.deep_compression or tc.quantization.share_weights first")
    plain = _plain_state(model, shared)
    entries, chunks, sizes = [], [], {}
    for name, module in shared.items():
        sw, codebook = module.parametrizations.weight[0], module.parametrizations.weight.original.detach().cpu()
        k = 2 ** sw.bits
        weights, gaps = shared_streams(k, sw.indices(), sw.mask(), sw.index_bits)
        entry = {"name": name, "kind": "shared", "shape": list(sw.shape), "bits": sw.bits,
                 "index_bits": sw.index_bits, "n": len(gaps), "dtype": str(codebook.dtype).removeprefix("torch.")}
        chunks.append(_tensor_bytes(codebook))
        sizes[name] = {"codebook": k * codebook.element_size()}
        for stream, symbols, alphabet in (("weights", weights, k + 1), ("index", gaps, 2 ** sw.index_bits)):
            if code == 0:
                table, words, n_bits = huffman_encode(symbols, alphabet)
            else:
                counts, words = ans_encode(symbols, alphabet)
                table, n_bits = np.frombuffer(varint_bytes(counts), dtype=np.uint8), None
            chunks += [table.tobytes(), words.astype("<u4").tobytes()]
            entry[f"{stream}_table"], entry[f"{stream}_words"] = table.nbytes, len(words)
            sizes[name][stream] = StreamSize(len(symbols), table.nbytes, 4 * len(words),
                                             entropy_bits(symbols, alphabet), n_bits)
        entries.append(entry)
    for key, t in plain.items():
        raw = _tensor_bytes(t)
        entries.append({"name": key, "kind": "plain", "shape": list(t.shape), "dtype": str(t.dtype).removeprefix(
            "torch.")})
        chunks.append(raw)
        sizes[key] = {"plain": len(raw)}
    header = json.dumps({"arch": _arch(model), "coder": coder, "tensors": entries}, separators=(",", ":")).encode()
    body = _MAGIC + struct.pack("<BBI", FORMAT_VERSION, code, len(header)) + header + b"".join(chunks)
    data = body + struct.pack("<I", zlib.crc32(body))
    sizes["header"] = {"bytes": len(_MAGIC) + 6 + len(header) + 4}
    return data, sizes


def save_compressed(model: nn.Module, path: str | os.PathLike, *, coder: str = "huffman") -> int:
    """Write ``model`` (its weights shared by :func:`tensorcompress.pipelines.deep_compression` or
    :func:`tensorcompress.quantization.share_weights`) to ``path``.

    Shared layers are stored as codebook + entropy-coded weight symbols and relative indices (``coder``:
    ``"huffman"``, as in Deep Compression, or ``"ans"``); every other tensor plainly (its raw bytes). Returns the
    file's size in bytes (``os.path.getsize``). Read back with :func:`load_compressed`.
    """
    data, _ = encode_compressed(model, coder=coder)
    with open(path, "wb") as f:
        f.write(data)
    return os.path.getsize(path)


def _dtype(name: object) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"corrupt header: unknown dtype {name!r}")
    return dt


def _build(arch: dict) -> nn.Module:
    module = str(arch.get("module", ""))
    if not (module == "tensorcompress" or module.startswith("tensorcompress.")):
        raise ValueError(f"the file's architecture {module}.{arch.get('class')} is not a tensorcompress model; "
                         f"pass model= (a fresh instance of the architecture) to load_compressed")
    cls = importlib.import_module(module)
    for part in str(arch["class"]).split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"the file's architecture {module}.{arch['class']} is not an nn.Module")
    return cls(**arch.get("kwargs", {}))


class _Reader:
    def __init__(self, data: bytes, offset: int, end: int) -> None:
        self.data, self.off, self.end = data, offset, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.off + n > self.end:
            raise ValueError("corrupt file: a section runs past the end of the payload")
        out = self.data[self.off: self.off + n]
        self.off += n
        return out


def _read_checked(path: str | os.PathLike) -> tuple[bytes, int, dict]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < len(_MAGIC) + 10 or not data.startswith(_MAGIC):
        raise ValueError(f"{os.fspath(path)!r} is not a tensorcompress Deep Compression file (no {_MAGIC!r} magic "
                         f"or too short: {len(data)} bytes)")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ValueError(f"{os.fspath(path)!r} is corrupt or truncated: CRC-32 mismatch (stored {crc:08x}, "
                         f"computed {zlib.crc32(data[:-4]):08x})")
    version, code, hlen = struct.unpack_from("<BBI", data, len(_MAGIC))
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported file format version {version} (this library reads {FORMAT_VERSION})")
    start = len(_MAGIC) + 6
    header = json.loads(data[start: start + hlen].decode())
    if code >= len(_CODERS) or header.get("coder") != _CODERS[code]:
        raise ValueError(f"corrupt header: coder code {code}, header says {header.get('coder')!r}")
    return data, start + hlen, header


def load_compressed(path: str | os.PathLike, *, model: nn.Module | None = None) -> nn.Module:
    """Read a file written by :func:`save_compressed`: the model, with its shared layers as
    :class:`~tensorcompress.quantization.SharedWeight` parametrizations (decoded weights bit-exact), in eval mode,
    on the CPU.

    ``model``: a fresh instance of the architecture to load into (default: built from the file's header, which
    is allowed for ``tensorcompress`` models only). Raises ``ValueError`` for a file that is not one, is
    corrupt (CRC-32) or truncated, or does not fit the architecture.
    """
    data, offset, header = _read_checked(path)
    reader = _Reader(data, offset, len(data) - 4)
    coder = header["coder"]
    net = _build(header["arch"]) if model is None else model
    if not isinstance(net, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(net).__name__}")
    state, shared = {}, {}
    for entry in header["tensors"]:
        shape = tuple(int(s) for s in entry["shape"])
        if entry["kind"] == "plain":
            dt = _dtype(entry["dtype"])
            nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dt).element_size()
            raw = bytearray(reader.take(nbytes))
            flat = torch.frombuffer(raw, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
            state[entry["name"]] = flat.view(dt).reshape(shape).clone()
            continue
        bits, index_bits, n = int(entry["bits"]), int(entry["index_bits"]), int(entry["n"])
        k = 2 ** bits
        cdt = _dtype(entry["dtype"])
        codebook = torch.frombuffer(bytearray(reader.take(k * torch.empty(0, dtype=cdt).element_size())),
                                    dtype=torch.uint8).view(cdt).clone()
        streams = []
        for stream, alphabet in (("weights", k + 1), ("index", 2 ** index_bits)):
            raw = reader.take(int(entry[f"{stream}_table"]))
            table = np.frombuffer(raw, dtype=np.uint8) if coder == "huffman" else varint_values(raw, alphabet)
            if coder == "huffman" and len(table) != alphabet:
                raise ValueError(f"corrupt header: a code table of {len(table)} bytes for {alphabet} symbols")
            words = np.frombuffer(reader.take(4 * int(entry[f"{stream}_words"])), dtype="<u4")
            decode = huffman_decode if coder == "huffman" else ans_decode
            streams.append(decode(table, words, n))
        if streams[0].size and streams[0].max() > k:
            raise ValueError("corrupt stream: a weight symbol outside the codebook")
        indices, mask = _unshare(streams[0], streams[1], shape, k, index_bits)
        # a layer without zeros loads dense, as share_weights builds it without keep_zeros
        shared[entry["name"]] = (codebook, SharedWeight(codebook, indices, bits, mask=None if mask.all() else mask,
                                                        index_bits=index_bits))
    if reader.off != reader.end:
        raise ValueError(f"corrupt file: {reader.end - reader.off} bytes left over after the last tensor")
    for name, (codebook, sw) in shared.items():
        try:
            module = net.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the file's layer {name!r} is not in the model {type(net).__name__}") from err
        if tuple(module.weight.shape) != sw.shape:
            raise ValueError(f"layer {name!r}: the file's weight has shape {sw.shape}, the model's "
                             f"{tuple(module.weight.shape)}; pass model= built with the right arguments")
        with torch.no_grad():  # the weight takes the file's dtype; the codebook is set bit-exactly, not averaged
            module.weight.data = sw(codebook)
            parametrize.register_parametrization(module, "weight", sw)
            module.parametrizations.weight.original.copy_(codebook)
    expected = {k for k in net.state_dict() if not any(k.startswith(f"{n}.parametrizations.weight.")
                                                       for n in shared)}
    if set(state) != expected:
        raise ValueError(f"the file does not fit the model: missing {sorted(expected - set(state))}, "
                         f"unexpected {sorted(set(state) - expected)}")
    for key, t in state.items():
        if tuple(net.state_dict()[key].shape) != tuple(t.shape):
            raise ValueError(f"tensor {key!r}: the file's shape {tuple(t.shape)} does not fit the model's "
                             f"{tuple(net.state_dict()[key].shape)}; pass model= built with the right arguments")
    net.load_state_dict(state, strict=False)
    return net.eval()

r"""The compressed-model file: one format for every model the library produces.

A model is written tensor by tensor, each entry tagged with a *kind* that says how its bytes are laid out:

===============  =================================================================================  ===================
kind             what it stores                                                                     made by
===============  =================================================================================  ===================
``raw``          the tensor's bytes (``tensor.view(uint8)``, little-endian, e.g. 4 per float32      any tensor
                 entry)
``pruned``       a tensor masked by ``torch.nn.utils.prune``: its kept values (raw bytes), the      ``tc.pruning``
                 positions as relative indices (gap stream) and a filler flag per entry (flag
                 stream)
``shared``       a :class:`~tensorcompress.quantization.SharedWeight` weight: the codebook (raw     ``share_weights``
                 bytes), the codebook index per entry (``k`` for a filler) and the relative         (also in Deep
                 indices, both coded                                                                Compression)
``quantized``    a weight fake-quantized by a :class:`~tensorcompress.quantization.WeightQuantizer`  ``quantize_model``
                 (its ``parametrizations.weight.original``): the scales (float32) and zero points
                 (int32), one per tensor or per output channel, and the integer codes
                 :math:`q - q_{\min}` as a coded stream
``integer``      the int8 / uint8 / int16 weight of an                                              ``to_integer``
                 :class:`~tensorcompress.quantization.IntegerLayer`: its codes, coded
``weight_only``  a :class:`~tensorcompress.quantization.WeightOnlyLinear` under its float layer's   weight-only
                 ``weight`` name: method, bits and group size; the float16 scales (raw), the codes  quantizers (RTN,
                 and (RTN) zero points as coded streams, the optional input scale (raw)             NF4, GPTQ, AWQ)
``alias``        nothing but the name of the first entry of the same tensor (tied weights:          tying weights
                 ``model[2].weight = model[0].weight``); loading makes both names one object
===============  =================================================================================  ===================

Everything else — biases, BatchNorm statistics, an activation quantizer's scale, zero point and ``calibrated``
flag, an integer layer's int32 bias and its multipliers ``m0`` and ``shift`` — is stored raw. A tie is kept when
its first name is stored raw; a tie involving a pruned, shared or quantized tensor is refused, naming the tied
names. Other weight parametrizations are refused with a ``ValueError`` naming the layer.

**Quantized weights.** The codes :math:`q = \operatorname{clamp}(Z + \operatorname{round}(w/S), q_{\min},
q_{\max})` of the quantizer's current parameters are stored, and loading puts the dequantized codes
:math:`\hat w = S\,(q - Z)` in the weight's place. The quantizer re-reads :math:`\hat w` at its next forward; the
writer checks (on copies of the quantizer) that it finds the same parameters and so computes bit for bit the same
fake-quantized weight, and stores a weight for which it would not (an observer that could pick another range on
:math:`\hat w`) raw instead. Entropy coding the codes costs at most what packing them at :math:`b` bits does (a
Huffman code is no longer than a fixed-length one) plus a table of :math:`2^b` bytes; on trained weights, whose
codes are far from uniform, it is smaller: LeNet-300-100's weight codes take 104,565 bytes (Huffman) against
133,100 packed at 4 bits per channel, 243,137 against 266,200 at 8 bits. Integer codes are stored the same way.

**Loading quantized and integer models** needs ``model=``: a skeleton made the same way
(``quantize_model(fresh, weight_bits=..., per_channel=...)``, calibrated or not; for integer models
``to_integer`` of such a calibrated skeleton), because the file's architecture record names the float network,
which does not have these layers. The skeleton's non-tensor settings (code ranges, which layer is the entry or the
last) come from how it was made; the file checks the quantizer's code range and axis against its own.

**Weight-only layers** are stored under the name a float ``nn.Linear`` gives its weight, so a fresh float
instance of the architecture (from the registry, or ``model=``) loads them: loading puts the dequantized weight in
that place, then replaces the ``nn.Linear`` by the :class:`~tensorcompress.quantization.WeightOnlyLinear` (its bias
the one loaded); its forward is bit for bit the saved one's. The header's bits (2 to 8, NF4 4), group size (a
divisor of the layer's inputs) and method are checked, the scales must be finite.

**Positions** of a pruned or shared weight are Deep Compression's relative indices (Han et al. 2016, §2 and Fig. 2):
the weight is flattened in row-major order to one CSR row (:func:`tensorcompress.export.csr_encode`), each kept
entry stored as the gap :math:`d` to the previous one in :math:`b_{\text{idx}}` bits; a gap beyond
:math:`M = 2^{b_{\text{idx}}} - 1` is bridged by :math:`\lfloor d / (M + 1)\rfloor` filler entries of gap
:math:`M`, each advancing the position by :math:`M + 1`. A shared layer marks a filler by the extra codebook symbol
``k`` (Han et al.'s filler *zero*); a pruned layer by a flag, so that a kept weight that happens to be 0 stays kept.

**Streams** are entropy-coded by :mod:`tensorcompress.export.coding` (``constriction``): Huffman, whose mean code
length :math:`\bar L` per symbol satisfies :math:`H \le \bar L < H + 1` with the empirical entropy
:math:`H = -\sum_s p_s \log_2 p_s`, or ANS, within a few bytes of :math:`nH/8` per stream. A stream is its table
(Huffman: one code length byte per symbol of the alphabet; ANS: LEB128 symbol counts) and its 32-bit words.

**The file** (little-endian):

==================  =================================================================================
``TCDC`` u8 u8 u32  magic, format version (:data:`FORMAT_VERSION`), coder (0 Huffman, 1 ANS), header length
header (JSON)       ``{"arch": {"name", "kwargs"} or null, "tensors": [entry, ...]}``; an entry holds its
                    ``name`` (the key of a fresh model's ``state_dict``), ``kind``, ``shape``, ``dtype``,
                    and its kind's counts: entries ``n``, bit widths, and per stream ``<s>_table`` (bytes)
                    and ``<s>_words`` (32-bit words)
payload             the entries' sections in header order: ``raw``: the bytes; ``pruned``: values,
                    flag stream, gap stream; ``shared``: codebook, symbol stream, gap stream;
                    ``quantized``: scales, zero points, code stream; ``integer``: code stream;
                    ``weight_only``: scales, code stream, zero stream (RTN), input scale (if any);
                    ``alias``: nothing
u32                 CRC-32 (``zlib.crc32``) of every byte before it
==================  =================================================================================

**A hostile file is expected.** :func:`load_compressed` checks, in this order and before it allocates anything of
the size a file declares: the CRC (before parsing), the version and coder, the header's structure; the
architecture (a name from :mod:`tensorcompress.export.architectures`' registry with bounded arguments, built on the
``meta`` device: shapes only); that the entries name exactly the model's tensors with exactly its shapes; the
model's size against ``max_bytes``; then, per entry, every count against the tensor's size (entries :math:`\le`
elements, kept :math:`\le` entries) and every section's length against the bytes left in the file. Decoded symbols
are checked against their alphabets and the positions against the tensor's end. A write goes to a temporary file in
the same folder, flushed to disk, then renamed over the target (``os.replace``): a failed write leaves the old file.

**Adding a layer kind** (group-wise or NF4 weights, adapters): write a :class:`Kind` — ``find(model, state)``
returns, among the ``state_dict`` entries no earlier kind took, the tensors it stores (:class:`Found`: the name of
the state key a fresh model has, and the keys it stands for); ``encode(found, state, ctx)`` returns the entry's
header fields, its payload sections and its sizes; ``decode(entry, reader, shape, coder)`` reads an entry back from
the :class:`Reader` (whose ``earlier`` holds the entries already read) into a :class:`Decoded`: the dense tensor a
fresh model loads, plus an optional ``install(model, name)`` step (a parametrization, a prune mask, a tie); and
``check(entry, model)`` refuses a model whose tensor at the entry's name is not one the kind loads into. Add it to
:data:`KINDS` under its name: kinds look for their tensors in the order of :data:`KINDS`, ``alias`` after every
kind that stores a transformed tensor, ``raw`` last (it stores whatever no other kind took). Every count it reads
goes through :func:`field` with its bound; every section through the reader, which checks the length left.
Files stay readable: a new kind needs no new version (a reader that does not know it refuses the file, naming the
kind); :data:`FORMAT_VERSION` changes only when the meaning of an existing byte or field does.

References: Han, Mao & Dally (2016), *Deep Compression*, ICLR; Huffman (1952); Duda (2013), *Asymmetric numeral
systems*; Bamler (2022), *constriction*.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.utils.prune as tprune
from torch import nn
from torch.nn.utils import parametrize

from .._validation import MAX_BITS
from ..quantization.integer import IntegerLayer
from ..quantization.model import WeightQuantizer
from ..quantization.nonuniform import SharedWeight
from ..quantization.uniform import QParams, dequantize, quantize
from ..quantization.weight_only import METHODS as WEIGHT_ONLY_METHODS
from ..quantization.weight_only import WeightOnlyLinear
from . import architectures
from .coding import ans_decode, ans_encode, entropy_bits, huffman_decode, huffman_encode, varint_bytes, varint_values
from .csr import CSRRelative, csr_decode, csr_encode

__all__ = ["save_compressed", "load_compressed", "encode_compressed", "shared_streams", "StreamSize", "Kind", "KINDS",
           "Found", "Decoded", "Reader", "field", "FORMAT_VERSION", "CODERS"]

MAGIC = b"TCDC"
FORMAT_VERSION = 2
CODERS = ("huffman", "ans")
_PREFIX = struct.Struct("<4sBBI")
_CRC = 4
DTYPES = {str(dt).removeprefix("torch."): dt for dt in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)}


# ---------------------------------------------------------------------------------------------------------------
# reading a hostile file: every count bounded, every section's length checked against what is left
# ---------------------------------------------------------------------------------------------------------------

def field(entry: dict, key: str, lo: int, hi: int) -> int:
    """``entry[key]`` if it is an int in ``[lo, hi]``, else ``ValueError`` naming the tensor, the field and the
    bounds."""
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"corrupt header: tensor {entry.get('name')!r}: {key} = {v!r:.40}, allowed an int in "
                         f"[{lo}, {hi}]")
    return v


def _dtype(entry: dict, *, floating: bool = False) -> torch.dtype:
    dt = DTYPES.get(entry.get("dtype")) if isinstance(entry.get("dtype"), str) else None
    if dt is None or (floating and not dt.is_floating_point):
        allowed = sorted(k for k, d in DTYPES.items() if d.is_floating_point or not floating)
        raise ValueError(f"corrupt header: tensor {entry.get('name')!r}: dtype {entry.get('dtype')!r:.40} is not "
                         f"one of {allowed}")
    return dt


class Reader:
    """The payload of a file being read: :meth:`take` hands out the next ``n`` bytes after checking that they are
    there, :meth:`tensor` the next ``count`` values of a dtype; :attr:`left` is what remains; :attr:`earlier` holds
    the entries already read (name -> ``(entry, Decoded)``), for a kind that refers to one."""

    def __init__(self, data: memoryview, start: int, end: int) -> None:
        self.data, self.off, self.end = data, start, end
        self.earlier: dict[str, tuple[dict, Decoded]] = {}  # the entries read so far: name -> (entry, Decoded)

    @property
    def left(self) -> int:
        return self.end - self.off

    def take(self, n: int, what: str) -> memoryview:
        if not 0 <= n <= self.left:
            raise ValueError(f"corrupt file: {what} declares {n} bytes, {self.left} are left")
        out = self.data[self.off: self.off + n]
        self.off += n
        return out

    def tensor(self, count: int, dtype: torch.dtype, what: str) -> torch.Tensor:
        """``count`` values of ``dtype`` from their little-endian bytes (a copy)."""
        size = torch.empty(0, dtype=dtype).element_size()
        raw = self.take(count * size, what)
        if dtype == torch.bool and any(b > 1 for b in bytes(raw)):
            raise ValueError(f"corrupt file: {what} holds a bool byte other than 0 or 1")
        if not count:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)


# ---------------------------------------------------------------------------------------------------------------
# coded streams and positions
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


def _put_stream(fields: dict, chunks: list[bytes], key: str, symbols: np.ndarray, alphabet: int,
                coder: str) -> StreamSize:
    if coder == "huffman":
        table, words, n_bits = huffman_encode(symbols, alphabet)
        table = table.tobytes()
    else:
        counts, words = ans_encode(symbols, alphabet)
        table, n_bits = varint_bytes(counts), None
    chunks += [table, words.astype("<u4").tobytes()]
    fields[f"{key}_table"], fields[f"{key}_words"] = len(table), len(words)
    return StreamSize(len(symbols), len(table), 4 * len(words), entropy_bits(symbols, alphabet), n_bits)


def _get_stream(entry: dict, reader: Reader, key: str, alphabet: int, n: int, coder: str) -> np.ndarray:
    name = entry.get("name")
    if coder == "huffman":  # one code length byte per symbol
        n_table = field(entry, f"{key}_table", alphabet, alphabet)
    else:  # one LEB128 count per symbol, 1 to 10 bytes each
        n_table = field(entry, f"{key}_table", alphabet, 10 * alphabet)
    n_words = field(entry, f"{key}_words", 0, reader.left // 4)
    raw = bytes(reader.take(n_table, f"tensor {name!r}: the {key} table"))
    words = np.frombuffer(reader.take(4 * n_words, f"tensor {name!r}: the {key} stream"), dtype="<u4")
    if coder == "huffman":
        symbols = huffman_decode(np.frombuffer(raw, dtype=np.uint8), words, n)
    else:
        symbols = ans_decode(varint_values(raw, alphabet), words, n)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"corrupt stream: tensor {name!r}: a {key} symbol outside [0, {alphabet})")
    return symbols


def _positions(mask: torch.Tensor, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, gaps)``: per stored entry of the flattened ``mask``'s relative-index row, whether it is a kept
    position (else a filler) and its gap."""
    enc = csr_encode(mask.detach().cpu().reshape(1, -1).to(torch.float32), index_bits)
    return enc.values.numpy() != 0, enc.gaps.astype(np.int64)


def shared_streams(codebook_size: int, indices: torch.Tensor, mask: torch.Tensor,
                   index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The two symbol streams a shared weight is stored as: per stored entry of the flattened weight's relative-index
    row, its codebook index (``codebook_size`` for a filler), and its gap.

    Parameters
    ----------
    codebook_size : int
        :math:`k`, the codebook's length; a filler entry gets the symbol ``k``.
    indices : tensor of int
        The codebook index of every entry of the weight.
    mask : tensor of bool
        The kept entries (all of them for a dense shared weight).
    index_bits : int
        Width of the relative indices; a gap beyond :math:`2^{b}-1` is bridged by fillers.
    """
    kept, gaps = _positions(mask, index_bits)
    symbols = np.full(len(gaps), codebook_size, dtype=np.int64)
    symbols[kept] = indices.detach().cpu().reshape(-1)[mask.detach().cpu().reshape(-1)].numpy()
    return symbols, gaps


def _mask(kept: np.ndarray, gaps: np.ndarray, numel: int, index_bits: int, name: object) -> torch.Tensor:
    """The flat bool mask back from :func:`_positions`' output, checked against the tensor's ``numel``."""
    if gaps.size and int((gaps + 1).sum()) > numel:
        raise ValueError(f"corrupt stream: tensor {name!r}: the relative indices run past its {numel} entries")
    if np.any(~kept & (gaps != 2**index_bits - 1)):
        raise ValueError(f"corrupt stream: tensor {name!r}: a filler entry whose gap is not 2**index_bits - 1")
    csr = CSRRelative((1, numel), torch.float32, index_bits, np.array([len(gaps)], dtype=np.uint32),
                      gaps.astype(np.uint16), torch.from_numpy(kept.astype(np.float32)))
    return csr_decode(csr).reshape(-1) != 0


def _raw_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _dtype_name(t: torch.Tensor, name: str) -> str:
    key = str(t.dtype).removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which the file does not store (allowed: "
                         f"{sorted(DTYPES)})")
    return key


# ---------------------------------------------------------------------------------------------------------------
# the kinds
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Found:
    """A tensor a kind stores: its entry ``name`` (the key a fresh model's ``state_dict`` has), its ``shape``, the
    ``module`` holding it, the keys of the model's ``state_dict`` it stands for (``covers``) and the key of its
    sizes in :func:`encode_compressed`'s report."""

    name: str
    shape: tuple[int, ...]
    module: nn.Module
    covers: tuple[str, ...]
    sizes_key: str


@dataclass(frozen=True)
class Decoded:
    """An entry read back: the ``dense`` tensor a fresh model loads under the entry's name, and ``install``,
    called afterwards as ``install(model, name)`` (or ``None``)."""

    dense: torch.Tensor
    install: Callable[[nn.Module, str], None] | None = None


@dataclass(frozen=True)
class Kind:
    """How one kind of tensor is found in a model, written and read (see the module docstring); ``check(entry,
    model)`` raises ``ValueError`` when the model's tensor at the entry's name is not one the kind loads into."""

    name: str
    find: Callable[[nn.Module, dict[str, torch.Tensor]], list[Found]]
    encode: Callable[[Found, dict[str, torch.Tensor], dict], tuple[dict, list[bytes], dict]]
    decode: Callable[[dict, Reader, tuple[int, ...], str], Decoded]
    check: Callable[[dict, nn.Module], None] | None = None


def _not_a(entry: dict, what: str) -> ValueError:
    return ValueError(f"corrupt header: tensor {entry['name']!r} of kind {entry['kind']!r} is not {what} of the "
                      f"model")


def _check_parameter(entry: dict, model: nn.Module) -> None:
    if entry["name"] not in dict(model.named_parameters(remove_duplicate=False)):
        raise _not_a(entry, "a parameter")


def _check_weight(entry: dict, model: nn.Module) -> None:
    if _split(entry["name"])[1] != "weight":
        raise _not_a(entry, "a weight")
    _check_parameter(entry, model)


def _split(name: str) -> tuple[str, str]:
    prefix, _, param = name.rpartition(".")
    return prefix, param


# shared ----------------------------------------------------------------------------------------------------------

def _find_shared(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    out = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight") or not isinstance(
                sw := module.parametrizations.weight[0], SharedWeight):
            continue
        base = f"{name}.parametrizations.weight." if name else "parametrizations.weight."
        covers = tuple(k for k in state if k.startswith(base))
        want = {base + "original", base + "0.packed"} | ({base + "0.packed_mask"} if sw.packed_mask is not None
                                                          else set())
        if set(covers) != want:
            raise ValueError(f"layer {name!r}: its shared weight carries tensors {sorted(set(covers) - want)} "
                             f"beyond the codebook, codes and mask (pruned after sharing?); the file stores "
                             f"shared weights as SharedWeight alone")
        out.append(Found(f"{name}.weight" if name else "weight", sw.shape, module, covers, name))
    return out


def _encode_shared(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    plist = found.module.parametrizations.weight
    sw, codebook = plist[0], plist.original.detach().cpu()
    k = codebook.numel()
    symbols, gaps = shared_streams(k, sw.indices(), sw.mask(), sw.index_bits)
    fields = {"dtype": _dtype_name(codebook, found.name), "bits": sw.bits, "index_bits": sw.index_bits, "k": k,
              "masked": sw.packed_mask is not None, "n": len(gaps)}
    chunks = [_raw_bytes(codebook)]
    sizes = {"codebook": len(chunks[0]),
             "weights": _put_stream(fields, chunks, "weights", symbols, k + 1, ctx["coder"]),
             "index": _put_stream(fields, chunks, "index", gaps, 2**sw.index_bits, ctx["coder"])}
    return fields, chunks, sizes


def _decode_shared(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    numel, name = math.prod(shape), entry["name"]
    bits, index_bits = field(entry, "bits", 1, 16), field(entry, "index_bits", 1, 8)
    k, n = field(entry, "k", 1, 2**bits), field(entry, "n", 0, numel)
    masked = entry.get("masked")
    if not isinstance(masked, bool):
        raise ValueError(f"corrupt header: tensor {name!r}: masked = {masked!r:.40}, allowed true or false")
    codebook = reader.tensor(k, _dtype(entry, floating=True), f"tensor {name!r}: the codebook")
    symbols = _get_stream(entry, reader, "weights", k + 1, n, coder)
    gaps = _get_stream(entry, reader, "index", 2**index_bits, n, coder)
    kept = symbols != k
    mask = _mask(kept, gaps, numel, index_bits, name)
    if not masked and not bool(mask.all()):
        raise ValueError(f"corrupt stream: tensor {name!r} is declared dense but its positions skip entries")
    indices = torch.zeros(numel, dtype=torch.uint8 if bits <= 8 else torch.int32)
    indices[mask] = torch.from_numpy(symbols[kept]).to(indices.dtype)
    sw = SharedWeight(codebook, indices.reshape(shape), bits, mask=mask.reshape(shape) if masked else None,
                      index_bits=index_bits)

    def install(net: nn.Module, name: str) -> None:
        prefix, param = _split(name)
        module = net.get_submodule(prefix)
        parametrize.register_parametrization(module, param, sw)
        with torch.no_grad():  # right_inverse averaged the members: set the codebook bit-exactly
            getattr(module.parametrizations, param).original.copy_(codebook)

    with torch.no_grad():
        return Decoded(sw(codebook).clone(), install)


# pruned ----------------------------------------------------------------------------------------------------------

def _find_pruned(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    out = []
    for key in state:
        if not (key.endswith("_orig") and key[:-5] + "_mask" in state):
            continue
        name = key[:-5]
        module = model.get_submodule(_split(name)[0])
        if tprune.is_pruned(module):
            out.append(Found(name, tuple(state[key].shape), module, (key, name + "_mask"), name))
    return out


def _encode_pruned(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    orig, m = state[found.name + "_orig"].detach().cpu(), state[found.name + "_mask"].detach().cpu()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"tensor {found.name!r}: its prune mask holds values other than 0 and 1")
    mask = m != 0
    kept, gaps = _positions(mask, ctx["index_bits"])
    fields = {"dtype": _dtype_name(orig, found.name), "index_bits": ctx["index_bits"], "n": len(gaps),
              "kept": int(kept.sum())}
    chunks = [_raw_bytes(orig[mask])]
    sizes = {"values": len(chunks[0]),
             "flags": _put_stream(fields, chunks, "flags", (~kept).astype(np.int64), 2, ctx["coder"]),
             "index": _put_stream(fields, chunks, "index", gaps, 2 ** ctx["index_bits"], ctx["coder"])}
    return fields, chunks, sizes


def _decode_pruned(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    numel, name = math.prod(shape), entry["name"]
    index_bits = field(entry, "index_bits", 1, 16)
    n = field(entry, "n", 0, numel)
    n_kept = field(entry, "kept", 0, n)
    dtype = _dtype(entry, floating=True)
    values = reader.tensor(n_kept, dtype, f"tensor {name!r}: the kept values")
    kept = _get_stream(entry, reader, "flags", 2, n, coder) == 0
    gaps = _get_stream(entry, reader, "index", 2**index_bits, n, coder)
    if int(kept.sum()) != n_kept:
        raise ValueError(f"corrupt stream: tensor {name!r}: {int(kept.sum())} kept entries, header says {n_kept}")
    mask = _mask(kept, gaps, numel, index_bits, name)
    dense = torch.zeros(numel, dtype=dtype)
    dense[mask] = values

    def install(net: nn.Module, name: str) -> None:
        prefix, param = _split(name)
        tprune.custom_from_mask(net.get_submodule(prefix), param, mask.reshape(shape))

    return Decoded(dense.reshape(shape), install)


# codes: the integer codes of a quantized or integer weight, entropy coded ------------------------------------------

def _put_codes(fields: dict, chunks: list[bytes], codes: torch.Tensor, lo: int, alphabet: int,
               coder: str) -> StreamSize:
    symbols = codes.detach().cpu().reshape(-1).to(torch.int64).numpy() - lo
    return _put_stream(fields, chunks, "codes", symbols, alphabet, coder)


def _get_codes(entry: dict, reader: Reader, lo: int, alphabet: int, shape: tuple[int, ...],
               coder: str) -> torch.Tensor:
    """The ``int64`` codes in ``[lo, lo + alphabet)`` of a tensor of ``shape``."""
    symbols = _get_stream(entry, reader, "codes", alphabet, math.prod(shape), coder)
    return (torch.from_numpy(symbols) + lo).reshape(shape)


# quantized -------------------------------------------------------------------------------------------------------

_ORIGINAL = "parametrizations.weight.original"


def _weight_quantizer(module: nn.Module) -> WeightQuantizer | None:
    """The :class:`WeightQuantizer` that alone parametrizes ``module.weight``, else ``None``."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight
    return plist[0] if len(plist) == 1 and isinstance(plist[0], WeightQuantizer) else None


def _stored_codes(module: nn.Module) -> tuple[torch.Tensor, QParams] | None:
    """The codes and quantization parameters of ``module``'s fake-quantized weight, if a model loading the
    dequantized codes computes bit for bit the same weight (its quantizer, re-reading them, finds the same
    parameters), else ``None``. Runs on copies of the quantizer: the model is not touched."""
    quantizer = _weight_quantizer(module)
    original = module.parametrizations.weight.original.detach()
    if quantizer is None or not original.is_floating_point() or original.numel() == 0:
        return None
    with torch.no_grad():
        qp = copy.deepcopy(quantizer).qparams(original)
        codes = quantize(original, qp)
        stored = dequantize(codes, qp, dtype=original.dtype)
        same = torch.equal(copy.deepcopy(quantizer)(stored), copy.deepcopy(quantizer)(original))
    return (codes, qp) if same else None


def _find_quantized(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    out = []
    for name, module in model.named_modules():
        key = f"{name}.{_ORIGINAL}" if name else _ORIGINAL
        if key in state and _stored_codes(module) is not None:  # else the float weight is stored raw
            out.append(Found(key, tuple(state[key].shape), module, (key,), name))
    return out


def _encode_quantized(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    codes, qp = _stored_codes(found.module)
    fields = {"dtype": _dtype_name(state[found.name], found.name), "qmin": qp.qmin, "qmax": qp.qmax,
              "axis": qp.axis}
    chunks = [_raw_bytes(qp.scale), _raw_bytes(qp.zero_point)]
    sizes = {"scale": len(chunks[0]), "zero_point": len(chunks[1]),
             "codes": _put_codes(fields, chunks, codes, qp.qmin, qp.qmax - qp.qmin + 1, ctx["coder"])}
    return fields, chunks, sizes


def _qparams(entry: dict, reader: Reader, shape: tuple[int, ...]) -> QParams:
    name = entry["name"]
    qmin = field(entry, "qmin", -(2 ** (MAX_BITS - 1)), 2**MAX_BITS - 2)
    qmax = field(entry, "qmax", qmin + 1, min(qmin + 2**MAX_BITS - 1, 2**MAX_BITS - 1))
    axis = None if entry.get("axis") is None else field(entry, "axis", 0, len(shape) - 1)
    n = 1 if axis is None else shape[axis]
    scale = reader.tensor(n, torch.float32, f"tensor {name!r}: the scales")
    zero_point = reader.tensor(n, torch.int32, f"tensor {name!r}: the zero points")
    if axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    try:
        return QParams(scale, zero_point, qmin, qmax, axis)
    except ValueError as err:
        raise ValueError(f"corrupt file: tensor {name!r}: {err}") from err


def _decode_quantized(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    dtype = _dtype(entry, floating=True)
    qp = _qparams(entry, reader, shape)
    codes = _get_codes(entry, reader, qp.qmin, qp.qmax - qp.qmin + 1, shape, coder)
    return Decoded(dequantize(codes, qp, dtype=dtype))


def _check_quantized(entry: dict, model: nn.Module) -> None:
    name = entry["name"]
    prefix = "" if name == _ORIGINAL else name[: -len(_ORIGINAL) - 1] if name.endswith("." + _ORIGINAL) else None
    quantizer = None if prefix is None else _weight_quantizer(model.get_submodule(prefix))
    if quantizer is None:
        raise _not_a(entry, "the weight of a layer fake-quantized by a WeightQuantizer (pass model= made by "
                            "tc.quantization.quantize_model the same way)")
    axis = quantizer.observer.axis
    if (quantizer.qmin, quantizer.qmax, axis) != (entry.get("qmin"), entry.get("qmax"), entry.get("axis")):
        raise ValueError(f"tensor {entry['name']!r}: the file's codes [{entry.get('qmin')!r:.20}, "
                         f"{entry.get('qmax')!r:.20}] with axis {entry.get('axis')!r:.20} do not fit the model's "
                         f"quantizer ([{quantizer.qmin}, {quantizer.qmax}], axis {axis}); pass model= quantized "
                         f"with the same bits and per_channel")


# integer ---------------------------------------------------------------------------------------------------------

_CODE_DTYPES = {torch.int8: -(2**7), torch.uint8: 0, torch.int16: -(2**15)}  # lowest code; 2**bits codes


def _code_range(dtype: torch.dtype) -> tuple[int, int]:
    return _CODE_DTYPES[dtype], 2 ** (8 * torch.empty(0, dtype=dtype).element_size())


def _find_integer(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    out = []
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(module, IntegerLayer) and key in state and state[key].dtype in _CODE_DTYPES:
            out.append(Found(key, tuple(state[key].shape), module, (key,), key))
    return out


def _encode_integer(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    codes = state[found.name]
    fields, chunks = {"dtype": _dtype_name(codes, found.name)}, []
    return fields, chunks, {"codes": _put_codes(fields, chunks, codes, *_code_range(codes.dtype), ctx["coder"])}


def _decode_integer(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    dtype = _dtype(entry)
    if dtype not in _CODE_DTYPES:
        raise ValueError(f"corrupt header: tensor {entry['name']!r}: dtype {entry['dtype']!r} is not one of the "
                         f"code dtypes {sorted(str(d).removeprefix('torch.') for d in _CODE_DTYPES)}")
    return Decoded(_get_codes(entry, reader, *_code_range(dtype), shape, coder).to(dtype))


def _check_integer(entry: dict, model: nn.Module) -> None:
    prefix, attr = _split(entry["name"])
    if attr != "weight" or not isinstance(model.get_submodule(prefix), IntegerLayer):
        raise _not_a(entry, "the weight of an IntegerLayer (pass model= made by tc.quantization.to_integer the "
                            "same way)")


# weight_only -----------------------------------------------------------------------------------------------------

def _find_weight_only(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, WeightOnlyLinear):
            base = f"{name}." if name else ""
            covers = tuple(base + k for k in ("codes", "scales", "zeros", "input_scale") if base + k in state)
            out.append(Found(base + "weight", (module.out_features, module.in_features), module, covers, name))
    return out


def _encode_weight_only(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    layer: WeightOnlyLinear = found.module
    dense = layer.bias.dtype if layer.bias is not None else torch.float32
    fields = {"dtype": str(dense).removeprefix("torch."), "method": layer.method, "bits": layer.bits,
              "group_size": layer.group_size, "input_scale": None if layer.input_scale is None else
              _dtype_name(layer.input_scale, found.name + " input_scale")}
    # float16 values, whatever dtype a model.to(...) cast the buffer to: the cast back is exact
    chunks = [_raw_bytes(layer.scales.to(torch.float16))]
    sizes = {"scales": len(chunks[0]),
             "codes": _put_codes(fields, chunks, layer.code_matrix(), 0, 2**layer.bits, ctx["coder"])}
    if layer.zeros is not None:
        sizes["zeros"] = _put_stream(fields, chunks, "zeros", layer.zero_points().cpu().reshape(-1).numpy(),
                                     2**layer.bits, ctx["coder"])
    if layer.input_scale is not None:
        chunks.append(_raw_bytes(layer.input_scale))
        sizes["input_scale"] = len(chunks[-1])
    return fields, chunks, sizes


def _decode_weight_only(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    name, method = entry["name"], entry.get("method")
    if len(shape) != 2 or method not in WEIGHT_ONLY_METHODS:
        raise ValueError(f"corrupt header: tensor {name!r}: a weight-only entry needs a matrix and a method in "
                         f"{WEIGHT_ONLY_METHODS}, got shape {list(shape)} and method {method!r:.40}")
    out_f, in_f = shape
    bits = field(entry, "bits", 4, 4) if method == "nf4" else field(entry, "bits", 2, 8)
    group = field(entry, "group_size", 1, in_f)
    if in_f % group:
        raise ValueError(f"corrupt header: tensor {name!r}: group_size {group} does not divide its {in_f} inputs")
    dtype = _dtype(entry, floating=True)
    scales = reader.tensor(out_f * in_f // group, torch.float16, f"tensor {name!r}: the scales")
    if not bool(torch.isfinite(scales).all()):
        raise ValueError(f"corrupt file: tensor {name!r}: a scale is not finite")
    codes = _get_codes(entry, reader, 0, 2**bits, shape, coder)
    zeros = None
    if method == "rtn":
        zeros = _get_stream(entry, reader, "zeros", 2**bits, scales.numel(), coder)
        zeros = torch.from_numpy(zeros).reshape(out_f, -1)
    scale_in = entry.get("input_scale")
    if scale_in is not None:
        scale_in = reader.tensor(in_f, _dtype({"name": name, "dtype": scale_in}, floating=True),
                                 f"tensor {name!r}: the input scale")
    layer = WeightOnlyLinear.from_codes(codes, scales.reshape(out_f, -1), zeros, bits=bits, method=method,
                                        input_scale=scale_in)

    def install(net: nn.Module, name: str) -> None:
        prefix = _split(name)[0]
        old = net.get_submodule(prefix)
        layer.bias = old.bias
        parent, _, child = prefix.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, layer.train(old.training))

    with torch.no_grad():
        return Decoded(layer.dequantize(dtype), install)


def _check_linear_weight(entry: dict, model: nn.Module) -> None:
    _check_weight(entry, model)
    if type(model.get_submodule(_split(entry["name"])[0])) is not nn.Linear:
        raise _not_a(entry, "the weight of an nn.Linear (pass model= a fresh float instance of the architecture)")


# alias -----------------------------------------------------------------------------------------------------------

def _ties(model: nn.Module) -> list[list[str]]:
    """The ``state_dict`` keys of each tensor registered under several names (tied weights), in ``state_dict``
    order."""
    groups: dict[int, list[str]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _find_alias(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    out = []
    for keys in _ties(model):
        taken = [k for k in keys if k not in state]
        if taken:
            raise ValueError(f"tensors {keys} are one tensor (tied) and {taken} are stored as pruned, shared, "
                             f"quantized or integer codes, not as the tensor itself: the file cannot keep this tie "
                             f"(untie them, or tie the layers again after loading)")
        out += [Found(k, tuple(state[k].shape), model, (k,), k) for k in keys[1:]]
    return out


def _encode_alias(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    target = next(keys[0] for keys in _ties(found.module) if found.name in keys)
    return {"target": target, "dtype": _dtype_name(state[found.name], found.name)}, [], {"alias": 0}


def _decode_alias(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    name, target = entry["name"], entry.get("target")
    first = reader.earlier.get(target) if isinstance(target, str) else None
    if first is None or first[0]["kind"] != "raw":
        raise ValueError(f"corrupt header: tensor {name!r} is an alias of {target!r:.80}, which is not a tensor "
                         f"stored plainly earlier in the file")
    if tuple(first[0]["shape"]) != shape or _dtype(entry) != _dtype(first[0]):
        raise ValueError(f"corrupt header: tensor {name!r} ({entry.get('dtype')!r:.20}, {list(shape)}) is an alias "
                         f"of {target!r} ({first[0]['dtype']}, {first[0]['shape']}): shape and dtype must agree")

    def install(net: nn.Module, name: str) -> None:  # the same object under both names, as in the saved model
        prefix, attr = _split(name)
        target_prefix, target_attr = _split(target)
        setattr(net.get_submodule(prefix), attr, getattr(net.get_submodule(target_prefix), target_attr))

    return Decoded(first[1].dense, install)


def _check_alias(entry: dict, model: nn.Module) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    target = entry.get("target")
    if isinstance(target, str) and target in model.state_dict() and (target in params) != (entry["name"] in params):
        raise ValueError(f"corrupt header: tensor {entry['name']!r} is an alias of {target!r:.80}, but one is a "
                         f"parameter of the model and the other a buffer")


# raw -------------------------------------------------------------------------------------------------------------

def _find_raw(model: nn.Module, state: dict[str, torch.Tensor]) -> list[Found]:
    return [Found(key, tuple(t.shape), model, (key,), key) for key, t in state.items()]  # what is left


def _encode_raw(found: Found, state: dict, ctx: dict) -> tuple[dict, list[bytes], dict]:
    t = state[found.name]
    fields = {"dtype": _dtype_name(t, found.name)}
    chunks = [_raw_bytes(t)]
    return fields, chunks, {"plain": len(chunks[0])}


def _decode_raw(entry: dict, reader: Reader, shape: tuple[int, ...], coder: str) -> Decoded:
    t = reader.tensor(math.prod(shape), _dtype(entry), f"tensor {entry['name']!r}")
    return Decoded(t.reshape(shape))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("shared", _find_shared, _encode_shared, _decode_shared, _check_weight),
    Kind("pruned", _find_pruned, _encode_pruned, _decode_pruned, _check_parameter),
    Kind("quantized", _find_quantized, _encode_quantized, _decode_quantized, _check_quantized),
    Kind("integer", _find_integer, _encode_integer, _decode_integer, _check_integer),
    Kind("weight_only", _find_weight_only, _encode_weight_only, _decode_weight_only, _check_linear_weight),
    Kind("alias", _find_alias, _encode_alias, _decode_alias, _check_alias),
    Kind("raw", _find_raw, _encode_raw, _decode_raw),
)}


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------

def _refuse_unstorable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor, plist in module.parametrizations.items():
            if tensor != "weight" or len(plist) != 1 or not isinstance(plist[0], (SharedWeight, WeightQuantizer)):
                kinds = [type(p).__name__ for p in plist]
                raise ValueError(f"layer {repr(name) if name else 'the model itself'}: its {tensor!r} has the "
                                 f"parametrization {kinds}; the file stores one SharedWeight or WeightQuantizer on "
                                 f"'weight' only (remove the others before save_compressed)")


def _found(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, tuple[Kind, Found]]:
    """Entry name -> (kind, what it stores), in the order of the model's ``state_dict``."""
    by_key, left = {}, dict(state)
    for kind in sorted(KINDS.values(), key=lambda k: k.name == "raw"):  # raw takes whatever the others left
        for f in kind.find(model, left):
            for key in f.covers:
                left.pop(key)
                by_key[key] = (kind, f)
    out = {}
    for key in state:
        kind, f = by_key[key]
        out.setdefault(f.name, (kind, f))
    return out


def _check_coder(coder: object) -> str:
    if coder not in CODERS:
        raise ValueError(f"coder must be one of {CODERS}, got {coder!r}")
    return coder


def _check_index_bits(index_bits: object) -> int:
    if isinstance(index_bits, bool) or not isinstance(index_bits, int):
        raise TypeError(f"index_bits must be an int, got {type(index_bits).__name__} {index_bits!r}")
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in [1, 16] (Deep Compression uses 5 for fully connected, 8 for "
                         f"convolutional layers), got {index_bits}")
    return index_bits


def _architecture(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> dict | None:
    """The registry record of ``model``'s architecture if a fresh one has exactly the entries' names and shapes."""
    spec = architectures.describe(model)
    if spec is None:
        return None
    fresh = architectures.build(spec, device="meta").state_dict()
    return spec if {k: tuple(t.shape) for k, t in fresh.items()} == shapes else None


def encode_compressed(model: nn.Module, *, coder: str = "huffman", index_bits: int = 5) -> tuple[bytes, dict]:
    """The bytes :func:`save_compressed` writes, and per tensor what they hold.

    Parameters
    ----------
    model, coder, index_bits
        As :func:`save_compressed`.

    Returns
    -------
    (bytes, dict)
        ``(data, sizes)``. ``sizes`` has, for a shared layer (keyed by the layer's name), ``{"codebook": bytes,
        "weights": StreamSize, "index": StreamSize}``; for a pruned tensor ``{"values": bytes, "flags":
        StreamSize, "index": StreamSize}``; for a fake-quantized layer (keyed by the layer's name) ``{"scale":
        bytes, "zero_point": bytes, "codes": StreamSize}``; for an integer layer's weight ``{"codes":
        StreamSize}``; for a tied tensor's later names ``{"alias": 0}``; for a plainly stored tensor ``{"plain":
        bytes}``; and ``sizes["header"] = {"bytes": ...}`` for the magic, header and checksum.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ctx = {"coder": _check_coder(coder), "index_bits": _check_index_bits(index_bits)}
    _refuse_unstorable(model)
    state = model.state_dict()
    entries, chunks, sizes, shapes = [], [], {}, {}
    for name, (kind, found) in _found(model, state).items():
        fields, parts, size = kind.encode(found, state, ctx)
        shapes[name] = found.shape
        entries.append({"name": name, "kind": kind.name, "shape": list(found.shape), **fields})
        chunks += parts
        sizes[found.sizes_key] = size
    header = json.dumps({"arch": _architecture(model, shapes), "tensors": entries}, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, CODERS.index(ctx["coder"]), len(header)) + header + b"".join(chunks)
    sizes["header"] = {"bytes": _PREFIX.size + len(header) + _CRC}
    return body + struct.pack("<I", zlib.crc32(body)), sizes


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``; on any
    failure the temporary file is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_compressed(model: nn.Module, path: str | os.PathLike, *, coder: str = "huffman", index_bits: int = 5) -> int:
    """Write ``model`` to ``path`` in the compressed format; returns the bytes written (the file's size).

    Parameters
    ----------
    model : nn.Module
        Dense, pruned (``torch.nn.utils.prune``), shared (:func:`tensorcompress.quantization.share_weights`,
        :func:`tensorcompress.pipelines.deep_compression`), pruned and shared, fake-quantized
        (:func:`tensorcompress.quantization.quantize_model`) or integer
        (:func:`tensorcompress.quantization.to_integer`), with or without tied weights; left untouched.
    path : str or path-like
        Replaced atomically: a failed write leaves an existing file as it was.
    coder : {"huffman", "ans"}
        Entropy coder of the streams: Huffman (Deep Compression's) or ANS.
    index_bits : int in [1, 16]
        Relative-index width of pruned tensors (shared layers keep their own ``SharedWeight.index_bits``).
    """
    data, _ = encode_compressed(model, coder=coder, index_bits=index_bits)
    _write_atomic(path, data)
    return len(data)


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------

def _read_checked(path: str | os.PathLike) -> tuple[memoryview, str, dict, int]:
    with open(path, "rb") as f:
        data = memoryview(f.read())
    where = repr(os.fspath(path))
    if len(data) < _PREFIX.size + _CRC or bytes(data[:4]) != MAGIC:
        raise ValueError(f"{where} is not a tensorcompress compressed file (no {MAGIC!r} magic or too short: "
                         f"{len(data)} bytes)")
    (crc,) = struct.unpack_from("<I", data, len(data) - _CRC)
    if zlib.crc32(data[:-_CRC]) != crc:
        raise ValueError(f"{where} is corrupt or truncated: CRC-32 mismatch (stored {crc:08x}, computed "
                         f"{zlib.crc32(data[:-_CRC]):08x})")
    _, version, code, n_header = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: unsupported file format version {version} (this library reads {FORMAT_VERSION})")
    if code >= len(CODERS):
        raise ValueError(f"corrupt file: coder code {code}, allowed 0 to {len(CODERS) - 1}")
    if n_header > len(data) - _PREFIX.size - _CRC:
        raise ValueError(f"corrupt file: a header of {n_header} bytes in a file of {len(data)}")
    try:
        header = json.loads(bytes(data[_PREFIX.size: _PREFIX.size + n_header]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"corrupt header: not JSON ({err})") from err
    _check_header(header)
    return data, CODERS[code], header, _PREFIX.size + n_header


def _check_header(header: object) -> None:
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise ValueError("corrupt header: expected {'arch': ..., 'tensors': [...]}")
    for entry in header["tensors"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or entry.get("kind") not in KINDS:
            raise ValueError(f"corrupt header: an entry must be {{'name': str, 'kind': one of {sorted(KINDS)}, ...}},"
                             f" got {entry!r:.200}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise ValueError(f"corrupt header: tensor {entry['name']!r}: shape {shape!r:.80} is not a list of ints")


def _check_fits(entries: list[dict], template: nn.Module) -> dict[str, tuple[int, ...]]:
    """The fresh model's shape per entry, once the entries are known to name exactly its tensors, with its
    shapes."""
    want = {k: tuple(t.shape) for k, t in template.state_dict().items()}
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("corrupt header: a tensor is named twice")
    if set(names) != set(want):
        raise ValueError(f"the file does not fit the model {type(template).__name__}: missing "
                         f"{sorted(set(want) - set(names))}, unexpected {sorted(set(names) - set(want))[:20]}; pass "
                         f"model= (a fresh instance of the architecture)")
    for e in entries:
        if tuple(e["shape"]) != want[e["name"]]:
            raise ValueError(f"tensor {e['name']!r}: the file's shape {tuple(e['shape'])} does not fit the model's "
                             f"{want[e['name']]}; pass model= built with the right arguments")
        if KINDS[e["kind"]].check is not None:
            KINDS[e["kind"]].check(e, template)
    return want


def _model_bytes(template: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in template.state_dict().values())


def load_compressed(path: str | os.PathLike, *, model: nn.Module | None = None, max_bytes: int = 2**28) -> nn.Module:
    """Read a file written by :func:`save_compressed`: the model, in eval mode, on the CPU, its tensors in the
    file's dtypes. Shared layers come back as :class:`~tensorcompress.quantization.SharedWeight` parametrizations
    (codebook, codes and mask bit-exact), pruned ones with their ``torch.nn.utils.prune`` mask (``weight_orig``
    holds the kept values and zeros: the pruned values are not stored), fake-quantized weights as their
    dequantized codes (the outputs are bit-exact), tied tensors as one object under each of their names.

    Parameters
    ----------
    path : str or path-like
    model : nn.Module, optional
        A fresh (unpruned, unshared) instance of the architecture to load into. Default: the architecture the file
        names, from the registry of :mod:`tensorcompress.export.architectures`. Required for fake-quantized and
        integer models, which the registry cannot rebuild: pass a skeleton made the same way
        (``quantize_model`` with the same bits and ``per_channel``; ``to_integer`` of such a calibrated model).
    max_bytes : int
        Largest model (bytes of its ``state_dict``) built from a file's architecture record; the check runs on the
        ``meta`` device, before anything is allocated.

    Raises ``ValueError`` for a file that is not one, is corrupt (CRC-32) or truncated, declares counts or lengths
    that do not fit, or does not fit the architecture.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    data, coder, header, start = _read_checked(path)
    entries = header["tensors"]
    template = architectures.build(header.get("arch"), device="meta") if model is None else model
    shapes = _check_fits(entries, template)
    if model is None and _model_bytes(template) > max_bytes:
        raise ValueError(f"the file's architecture {header['arch'].get('name')!r} with {header['arch'].get('kwargs')}"
                         f" holds {_model_bytes(template)} bytes, more than max_bytes={max_bytes}")
    reader = Reader(data, start, len(data) - _CRC)
    for e in entries:
        reader.earlier[e["name"]] = (e, KINDS[e["kind"]].decode(e, reader, shapes[e["name"]], coder))
    decoded = {name: d for name, (_, d) in reader.earlier.items()}
    if reader.left:
        raise ValueError(f"corrupt file: {reader.left} bytes left over after the last tensor")
    net = architectures.build(header["arch"]) if model is None else model
    net.load_state_dict({k: d.dense for k, d in decoded.items()}, assign=True)
    for name, d in decoded.items():
        if d.install is not None:
            d.install(net, name)
    return net.eval()

"""The compressed-model file (tc.export): the coders against independent references (Huffman's bound and an
independent Huffman, ANS near the entropy), every kind of model written and read back bit-exactly, the bytes
accounted for, and hostile files: every count and length bounded before anything is allocated, architectures from
the registry only, CRC before parsing, a failed write that leaves the old file."""

import builtins
import errno
import heapq
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as tprune

import tensorcompress as tc
import tensorcompress.export as E
from tensorcompress.export import FORMAT_VERSION, encode_compressed, load_compressed, save_compressed
from tensorcompress.export import architectures as A
from tensorcompress.export import file as F
from tensorcompress.quantization import share_weights


def _huffman_total_bits(counts):
    """Independent Huffman: the total code length is the sum of the merged weights (heapq)."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) <= 1:
        return 0
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, a + b)
    return total


def _symbols(seed, n, alphabet, skew):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, skew))
    return rng.choice(alphabet, size=n, p=p)


# ---------------------------------------------------------------------------------------------------------- coders

@given(seed=st.integers(0, 2**16), n=st.integers(1, 3000), alphabet=st.integers(1, 257),
       skew=st.sampled_from([0.05, 0.5, 5.0]))
def test_huffman_bound_optimality_and_roundtrip(seed, n, alphabet, skew):
    s = _symbols(seed, n, alphabet, skew)
    counts = np.bincount(s, minlength=alphabet)
    lengths = E.huffman_code_lengths(s, alphabet)
    used = counts > 0
    h = E.entropy_bits(s, alphabet) / n
    mean = float((counts * lengths).sum()) / n
    assert h - 1e-9 <= mean < h + 1                           # Huffman's bound
    assert np.sum(2.0 ** -lengths[used]) <= 1 + 1e-12        # Kraft
    if used.sum() >= 2:
        assert np.sum(2.0 ** -lengths[used]) == pytest.approx(1)  # a Huffman tree is full
    assert (counts * lengths).sum() == _huffman_total_bits(counts)  # optimal: equals an independent Huffman
    table, words, n_bits = E.huffman_encode(s, alphabet)
    assert n_bits == (counts * lengths).sum()                # the stream is coded with exactly these lengths
    assert len(words) == -(-n_bits // 32)
    assert np.array_equal(E.huffman_decode(table, words, n), s)


def test_entropy_of_known_distributions():
    assert E.entropy_bits(np.array([0, 1, 2, 3] * 8)) == pytest.approx(64)     # 2 bits each
    assert E.entropy_bits(np.zeros(10, dtype=int)) == 0
    s = np.array([0] * 2 + [1] * 1 + [2] * 1)
    assert E.entropy_bits(s) == pytest.approx(4 * 1.5)
    assert E.entropy_bits(np.zeros(0, dtype=int)) == 0


@given(seed=st.integers(0, 2**16), n=st.integers(1, 5000), alphabet=st.integers(1, 257),
       skew=st.sampled_from([0.05, 0.5, 5.0]))
def test_ans_roundtrip_and_close_to_entropy(seed, n, alphabet, skew):
    s = _symbols(seed, n, alphabet, skew)
    counts, words = E.ans_encode(s, alphabet)
    assert np.array_equal(E.ans_decode(counts, words, n), s)
    # constriction's 24-bit fixed-point probabilities: a small relative loss plus at most two words of overhead
    assert 32 * len(words) <= 1.01 * E.entropy_bits(s, alphabet) + 0.002 * n + 64


@given(values=st.lists(st.integers(0, 2**40), max_size=50))
def test_varint_roundtrip(values):
    data = E.varint_bytes(values)
    assert list(E.varint_values(data, len(values))) == values
    assert len(data) == sum(max(1, -(-v.bit_length() // 7)) for v in values)


def test_coder_errors():
    with pytest.raises(ValueError, match="symbols must lie"):
        E.huffman_encode(np.array([0, 5]), 4)
    with pytest.raises(ValueError, match="corrupt count table"):
        E.varint_values(b"\x81", 1)
    with pytest.raises(ValueError, match="counts add up"):
        E.ans_decode(np.array([1, 1]), np.zeros(1, dtype=np.uint32), 3)


def test_coder_refuses_counts_that_would_overflow():
    with pytest.raises(ValueError, match="count outside"):
        E.ans_decode(np.array([2**62, 2**62, 2**62, 2**62 - 3]), np.zeros(1, dtype=np.uint32), 3)


# ---------------------------------------------------------------------------------------------------------- models

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny(seed=0):
    torch.manual_seed(seed)
    net = Tiny()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.num_batches_tracked.fill_(7)
    return net.eval()


def shared_tiny(seed=0, sparsity=0.6, bits=3, index_bits=3):
    net, _ = tc.pruning.prune(tiny(seed), amount=sparsity)
    return share_weights(net, bits=bits, keep_zeros=True, index_bits=index_bits)[0]


def _pruned_tiny(seed=0, amount=0.7):
    return tc.pruning.prune(tiny(seed), amount=amount)[0]


X = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(2))
MAKERS = {"dense": tiny, "pruned": _pruned_tiny, "shared": lambda: share_weights(tiny(), bits=2)[0],
          "pruned+shared": shared_tiny}


def _same_model(a, b, x=X):
    """Same state (a pruned tensor's ``_orig`` compared where its mask keeps it: the file stores no pruned value)
    and the same outputs."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        keep = sa[k[:-5] + "_mask"] if k.endswith("_orig") else 1
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k] * keep, sb[k]), k
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------------------------------------------------- the file

@pytest.mark.parametrize("coder", ["huffman", "ans"])
@pytest.mark.parametrize("which", list(MAKERS))
def test_every_kind_round_trips_bit_exactly(tmp_path, which, coder):
    net = MAKERS[which]()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "m.tcdc"
    size = save_compressed(net, path, coder=coder)
    assert size == os.path.getsize(path)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is left untouched
    back = load_compressed(path, model=Tiny())
    assert not back.training
    _same_model(net, back)
    # saving the loaded model gives the same bytes
    assert save_compressed(back, tmp_path / "again.tcdc", coder=coder) == size
    assert (tmp_path / "again.tcdc").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("arch", ["LeNet300100", "LeNet5", "SmallCNN"])
def test_library_models_rebuild_from_the_header(tmp_path, arch):
    kwargs = {"LeNet300100": {"num_classes": 7}, "LeNet5": {"input_size": 20, "num_classes": 3},
              "SmallCNN": {"in_channels": 3, "channels": (8, 16), "input_size": 12}}[arch]
    torch.manual_seed(0)
    model = getattr(tc.models, arch)(**kwargs).eval()
    net, _ = tc.pruning.prune(model, amount=0.8)
    net, _ = share_weights(net, bits=3, keep_zeros=True, include="*fc*" if arch != "SmallCNN" else None)
    path = tmp_path / "m.tcdc"
    save_compressed(net, path)
    back = load_compressed(path)
    assert type(back) is type(model)
    x = torch.randn((2, 784) if arch == "LeNet300100" else (2, kwargs.get("in_channels", 1), kwargs["input_size"],
                                                            kwargs["input_size"]))
    _same_model(net, back, x)


def test_pruned_model_is_accepted_and_keeps_its_masks(tmp_path):
    net = _pruned_tiny()
    with torch.no_grad():  # a kept weight that is exactly 0 stays kept: the mask is stored, not inferred
        idx = net.fc.weight_mask.nonzero()[0]
        net.fc.weight_orig[tuple(idx)] = 0.0
    tprune.l1_unstructured(net.conv, "bias", amount=0.5)  # a pruned bias is stored the same way
    save_compressed(net, tmp_path / "p.tcdc", index_bits=2)
    back = load_compressed(tmp_path / "p.tcdc", model=Tiny())
    with torch.no_grad():  # the pruning hooks recompute weight and bias
        net(X), back(X)
    assert tprune.is_pruned(back.fc) and back.fc.weight_mask[tuple(idx)] == 1
    assert torch.equal(back.fc.weight_mask, net.fc.weight_mask)
    assert torch.equal(back.conv.bias_mask, net.conv.bias_mask)
    assert torch.equal(back.fc.weight, net.fc.weight) and torch.equal(back.conv.bias, net.conv.bias)
    # weight_orig keeps the kept values; the pruned ones are not stored
    assert torch.equal(back.fc.weight_orig, net.fc.weight_orig * net.fc.weight_mask)
    with torch.no_grad():
        assert torch.equal(back(X), net(X))


def test_every_byte_is_accounted_for():
    net = shared_tiny()
    tprune.l1_unstructured(net.bn, "weight", amount=0.5)
    data, sizes = encode_compressed(net)
    total = sizes.pop("header")["bytes"]
    for s in sizes.values():
        for v in s.values():
            total += v if isinstance(v, int) else v.table + v.payload
    assert total == len(data)
    assert set(sizes) == {"conv", "fc", "conv.bias", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean",
                          "bn.running_var", "bn.num_batches_tracked"}
    assert sizes["fc.bias"] == {"plain": 4 * 5} and sizes["bn.num_batches_tracked"] == {"plain": 8}
    assert sizes["bn.weight"]["values"] == 4 * 2
    # a pruned layer's stored entries: kept + fillers, as counted independently
    net = _pruned_tiny(amount=0.9)
    _, sizes = encode_compressed(net, index_bits=3)
    m = net.fc.weight_mask.reshape(-1).numpy()
    gaps = np.diff(np.r_[-1, np.flatnonzero(m)]) - 1
    assert sizes["fc.weight"]["index"].n_symbols == int(m.sum()) + int((gaps // 8).sum())
    assert sizes["fc.weight"]["values"] == 4 * int(m.sum())


@given(bits=st.integers(1, 8), index_bits=st.integers(1, 8), sparsity=st.sampled_from([0.0, 0.3, 0.9, 0.99]),
       seed=st.integers(0, 1000), coder=st.sampled_from(["huffman", "ans"]))
def test_roundtrip_over_bits_and_sparsity(tmp_path_factory, bits, index_bits, sparsity, seed, coder):
    net = shared_tiny(seed, sparsity, bits, index_bits)
    pruned = _pruned_tiny(seed, sparsity)
    folder = tmp_path_factory.mktemp("h")
    for model in (net, pruned):
        size = save_compressed(model, folder / "m.tcdc", coder=coder, index_bits=index_bits)
        back = load_compressed(folder / "m.tcdc", model=Tiny())
        _same_model(model, back)
    assert tc.pipelines.measure_compressed(net).file_bytes[coder] == save_compressed(net, folder / "n", coder=coder)
    del size


def test_device_and_dtype(tmp_path, device, dtype):
    net = shared_tiny().to(device=device, dtype=dtype)
    path = tmp_path / "m.tcdc"
    save_compressed(net, path)
    back = load_compressed(path, model=Tiny())  # the tensors come back in the file's dtype, on the CPU
    assert back.fc.weight.dtype == dtype and back.fc.bias.dtype == dtype
    assert torch.equal(back.fc.weight, net.fc.weight.cpu()) and torch.equal(back.conv.weight, net.conv.weight.cpu())


def test_other_dtypes_are_stored_raw(tmp_path):
    net = tiny()
    net.register_buffer("flags", torch.tensor([True, False, True]))
    net.register_buffer("codes", torch.tensor([[1 + 2j, -3j]], dtype=torch.complex64))
    net.register_buffer("brain", torch.randn(3, dtype=torch.bfloat16))
    save_compressed(net, tmp_path / "m")
    fresh = tiny(1)
    for k in ("flags", "codes", "brain"):
        fresh.register_buffer(k, torch.zeros_like(getattr(net, k)))
    _same_model(net, load_compressed(tmp_path / "m", model=fresh))


def test_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="coder"):
        save_compressed(shared_tiny(), tmp_path / "m", coder="zip")
    with pytest.raises(TypeError, match="model"):
        save_compressed("model", tmp_path / "m")
    with pytest.raises(TypeError, match="index_bits"):
        save_compressed(tiny(), tmp_path / "m", index_bits=2.0)
    with pytest.raises(ValueError, match="index_bits"):
        save_compressed(tiny(), tmp_path / "m", index_bits=17)
    other = tiny()
    torch.nn.utils.parametrize.register_parametrization(other.fc, "weight", nn.Identity())
    with pytest.raises(ValueError, match="'fc'.*Identity"):
        save_compressed(other, tmp_path / "m")
    eight = tiny()
    eight.register_buffer("e4m3", torch.ones(2).to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="'e4m3' has dtype torch.float8_e4m3fn"):
        save_compressed(eight, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_integer_layers_are_refused_by_name(tmp_path):
    torch.manual_seed(0)
    qm, _ = tc.quantization.quantize_model(tc.models.LeNet300100())
    data = torch.utils.data.TensorDataset(torch.randn(64, 784), torch.zeros(64, dtype=torch.long))
    tc.quantization.calibrate(qm, data)
    with pytest.raises(ValueError, match="integer-arithmetic IntegerNet"):
        save_compressed(tc.quantization.to_integer(qm, torch.randn(2, 784))[0], tmp_path / "m")
    with pytest.raises(ValueError, match="layer 'fc1.layer'.*WeightQuantizer"):  # fake-quantized: a parametrization
        save_compressed(qm, tmp_path / "m")


def test_a_new_kind_plugs_in(tmp_path, monkeypatch):
    """The rule for adding a kind, followed for a toy one: an all-zero float tensor stored as its shape alone."""
    def find(model, state):
        return [F.Found(k, tuple(t.shape), model, (k,), k) for k, t in state.items()
                if t.is_floating_point() and t.numel() and not t.any()]

    def encode(found, state, ctx):
        return {"dtype": str(state[found.name].dtype).removeprefix("torch.")}, [], {"zeros": 0}

    def decode(entry, reader, shape, coder):
        return F.Decoded(torch.zeros(shape, dtype=F._dtype(entry, floating=True)))

    monkeypatch.setitem(F.KINDS, "zeros", F.Kind("zeros", find, encode, decode))
    net = tiny()
    with torch.no_grad():
        net.fc.bias.zero_()
    data, sizes = encode_compressed(net)
    assert sizes["fc.bias"] == {"zeros": 0} and "plain" in sizes["conv.bias"]
    save_compressed(net, tmp_path / "z")
    _same_model(net, load_compressed(tmp_path / "z", model=Tiny()))
    monkeypatch.undo()  # a reader without the kind names it
    with pytest.raises(ValueError, match="'kind': one of"):
        load_compressed(tmp_path / "z", model=Tiny())


# ---------------------------------------------------------------------------------------------- architectures

def test_architecture_registry(tmp_path):
    assert {"LeNet300100", "LeNet5", "SmallCNN"} <= set(E.registered_architectures())
    net = shared_tiny()
    save_compressed(net, tmp_path / "m")
    with pytest.raises(ValueError, match="no registered architecture"):
        load_compressed(tmp_path / "m")
    E.register_architecture("TinyForExportTests", Tiny)
    E.register_architecture("TinyForExportTests", Tiny)  # the same again is fine
    save_compressed(net, tmp_path / "m")
    _same_model(net, load_compressed(tmp_path / "m"))
    with pytest.raises(ValueError, match="already registered"):
        E.register_architecture("LeNet5", Tiny)
    with pytest.raises(TypeError, match="name"):
        E.register_architecture("", Tiny)
    with pytest.raises(TypeError, match="cls"):
        E.register_architecture("x", torch.ones)
    with pytest.raises(TypeError, match="arguments"):
        E.register_architecture("x", Tiny, arguments=3)


def test_a_model_its_class_cannot_rebuild_needs_model(tmp_path):
    net = tc.models.LeNet300100()
    net.fc1 = nn.Linear(784, 200)  # fc2 of a fresh LeNet300100 takes 300 inputs
    save_compressed(net, tmp_path / "m")
    with pytest.raises(ValueError, match="no registered architecture"):
        load_compressed(tmp_path / "m")
    fresh = tc.models.LeNet300100()
    fresh.fc1 = nn.Linear(784, 200)
    assert torch.equal(load_compressed(tmp_path / "m", model=fresh).fc1.weight, net.fc1.weight)


# ---------------------------------------------------------------------------------------------- hostile files

def _split_file(path):
    data = path.read_bytes()
    _, version, code, n = struct.unpack_from("<4sBBI", data)
    return json.loads(data[10: 10 + n]), data[10 + n: -4], code


def _write_file(path, header, payload, code=0, version=FORMAT_VERSION):
    h = json.dumps(header).encode() if isinstance(header, dict) else header
    body = b"TCDC" + struct.pack("<BBI", version, code, len(h)) + h + payload
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def _hostile(tmp_path, mutate, net=None, model=True, **load):
    """Write ``net``, let ``mutate(header, payload)`` change it (returning the new payload or None), re-checksum and
    load: the error the loader raises."""
    path = tmp_path / "h.tcdc"
    save_compressed(shared_tiny() if net is None else net, path)
    header, payload, code = _split_file(path)
    payload = mutate(header, payload) or payload
    _write_file(path, header, payload, code)
    with pytest.raises(ValueError) as err:
        load_compressed(path, model=Tiny() if model else None, **load)
    return str(err.value)


def _entry(header, name):
    return next(e for e in header["tensors"] if e["name"] == name)


@pytest.mark.parametrize("n", [20_000_000, -5, 2**70, True, "3", None])
def test_symbol_counts_are_bounded_by_the_tensor(tmp_path, n):
    # a one-symbol Huffman code costs 0 bits per symbol: only the tensor's size bounds the count
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "fc.weight").update(n=n))
    assert "'fc.weight'" in msg and "n = " in msg and "[0, 320]" in msg


@pytest.mark.parametrize("key, value", [("weights_words", 10**9), ("index_table", 10**6), ("k", 9), ("bits", 0),
                                        ("index_bits", 9), ("dtype", "object"), ("masked", "yes")])
def test_declared_lengths_and_widths_are_checked(tmp_path, key, value):
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "conv.weight").update({key: value}))
    assert "'conv.weight'" in msg and key.split("_")[0] in msg


def test_pruned_counts_are_checked(tmp_path):
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "fc.weight").update(kept=10**8), net=_pruned_tiny())
    assert "kept = 100000000" in msg
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "fc.weight").update(kept=_entry(h, "fc.weight")["kept"] - 1),
                   net=_pruned_tiny())
    assert "corrupt" in msg


@pytest.mark.parametrize("name, kind", [("bn.running_mean", "pruned"), ("fc.bias", "shared")])
def test_kinds_apply_to_parameters_only(tmp_path, name, kind):
    def mutate(header, payload):
        a, b = _entry(header, name), _entry(header, "fc.weight" if kind == "shared" else "conv.weight")
        a["kind"], a["shape"], b["kind"], b["shape"] = b["kind"], a["shape"], "raw", b["shape"]
    assert "is not a" in _hostile(tmp_path, mutate, net=shared_tiny() if kind == "shared" else _pruned_tiny())


@pytest.mark.parametrize("shape", [[10**9], [5, 0], [-5], [5.0]])
def test_declared_shapes_must_be_the_model_s(tmp_path, shape):
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "fc.bias").update(shape=shape))
    assert "shape" in msg


def test_section_lengths_are_checked_against_the_file(tmp_path):
    msg = _hostile(tmp_path, lambda h, p: p[:-8])  # the sections declare more than is left
    assert "are left" in msg
    msg = _hostile(tmp_path, lambda h, p: p + b"\0" * 4)
    assert "left over" in msg


def test_bool_bytes_are_checked(tmp_path):
    net = tiny()
    net.register_buffer("flags", torch.tensor([True, False]))
    fresh = tiny()
    fresh.register_buffer("flags", torch.zeros(2, dtype=torch.bool))
    path = tmp_path / "b"
    save_compressed(net, path)
    header, payload, code = _split_file(path)
    assert header["tensors"][0]["name"] == "flags"  # the model's own buffer comes first
    _write_file(path, header, b"\x07\x00" + payload[2:], code)
    with pytest.raises(ValueError, match="bool byte"):
        load_compressed(path, model=fresh)


@pytest.mark.parametrize("arch, match", [
    ({"module": "tensorcompress.models", "class": "nn.Linear", "kwargs": {"in_features": 9}}, "architecture record"),
    ({"name": "torch.nn.Linear"}, "not registered"), ({"name": "os.system"}, "not registered"),
    ({"name": "LeNet300100", "kwargs": {"in_features": 2**22}}, "'in_features' = 4194304"),
    ({"name": "LeNet300100", "kwargs": {"in_features": -1}}, "in_features"),
    ({"name": "LeNet300100", "kwargs": {"in_features": "784"}}, "in_features"),
    ({"name": "LeNet300100", "kwargs": {"device": 3}}, "unknown constructor arguments"),
    ({"name": "SmallCNN", "kwargs": {"channels": [8] * 100}}, "channels"),
    ({"name": "LeNet300100", "kwargs": [1, 2]}, "mapping"),
    ({"name": "LeNet5", "kwargs": {"input_size": 3}}, "cannot be built"),
])
def test_architectures_come_from_the_registry_with_bounded_arguments(tmp_path, arch, match):
    net = tc.models.LeNet300100()
    msg = _hostile(tmp_path, lambda h, p: h.update(arch=arch), net=net, model=False)
    assert match in msg


def test_a_large_architecture_is_refused_before_it_is_built(tmp_path, monkeypatch):
    # entries that fit a SmallCNN of 4096 channels (600 MB) in a file of a few kilobytes
    spec = {"name": "SmallCNN", "kwargs": {"channels": [4096, 4096]}}
    meta = A.build(spec, device="meta").state_dict()
    header = {"arch": spec, "tensors": [{"name": k, "kind": "raw", "shape": list(t.shape), "dtype": "float32"}
                                        for k, t in meta.items()]}
    _write_file(tmp_path / "big", json.dumps(header).encode(), b"")
    built = []
    real = A.build
    monkeypatch.setattr(A, "build", lambda spec, device="cpu": built.append(str(device)) or real(spec, device=device))
    with pytest.raises(ValueError, match="more than max_bytes"):
        load_compressed(tmp_path / "big")
    assert built == ["meta"]
    with pytest.raises(ValueError, match="are left"):  # allowed, then the missing bytes are found before decoding
        load_compressed(tmp_path / "big", max_bytes=2**31)
    assert built == ["meta", "meta"]


def test_crc_is_checked_before_parsing(tmp_path):
    path = tmp_path / "m"
    save_compressed(shared_tiny(), path)
    data = bytearray(path.read_bytes())
    data[12] = ord("{")  # a header that is no longer JSON, and a stale checksum
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC-32"):
        load_compressed(path, model=Tiny())
    _write_file(path, b"{not json", b"")
    with pytest.raises(ValueError, match="not JSON"):
        load_compressed(path, model=Tiny())
    _write_file(path, b"[" * 100_000 + b"]" * 100_000, b"")
    with pytest.raises(ValueError, match="corrupt header"):
        load_compressed(path, model=Tiny())
    _write_file(path, b'{"tensors": [{"name": "x", "kind": "pickle"}]}', b"")
    with pytest.raises(ValueError, match="kind"):
        load_compressed(path, model=Tiny())
    _write_file(path, b"{}", b"", code=7)
    with pytest.raises(ValueError, match="coder"):
        load_compressed(path, model=Tiny())


@pytest.mark.parametrize("where", ["magic", "header", "payload", "crc", "last"])
def test_flipped_byte_is_detected(tmp_path, where):
    path = tmp_path / "m.tcdc"
    save_compressed(shared_tiny(), path)
    data = bytearray(path.read_bytes())
    pos = {"magic": 1, "header": 12, "payload": len(data) // 2, "crc": len(data) - 3, "last": len(data) - 1}[where]
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt|not a tensorcompress"):
        load_compressed(path, model=Tiny())


@pytest.mark.parametrize("keep", [0, 3, 20, -1, -4])
def test_truncated_file_is_detected(tmp_path, keep):
    path = tmp_path / "m.tcdc"
    save_compressed(shared_tiny(), path)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match="corrupt|not a tensorcompress"):
        load_compressed(path, model=Tiny())


def test_wrong_model_version_and_arguments(tmp_path):
    path = tmp_path / "m.tcdc"
    save_compressed(shared_tiny(), path)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_compressed(path, model=nn.Sequential())
    wider = Tiny()
    wider.fc = nn.Linear(64, 7)
    with pytest.raises(ValueError, match="shape"):
        load_compressed(path, model=wider)
    with pytest.raises(ValueError, match="does not fit"):  # a model already shared: a fresh one is needed
        load_compressed(path, model=shared_tiny())
    header, payload, code = _split_file(path)
    _write_file(path, header, payload, code, version=1)
    with pytest.raises(ValueError, match="version 1"):
        load_compressed(path, model=Tiny())
    with pytest.raises(TypeError, match="model"):
        load_compressed(path, model="Tiny")
    with pytest.raises(ValueError, match="max_bytes"):
        load_compressed(path, max_bytes=0)


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.tcdc"
    save_compressed(shared_tiny(), path)
    old = path.read_bytes()
    real_open = builtins.open

    class Full:
        """A file on a disk that fills up half-way through the write."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Full(f) if ("w" in mode or "x" in mode) else f

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(OSError, match="No space"):
        save_compressed(shared_tiny(seed=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.tcdc"]  # no temporary file left behind
    save_compressed(shared_tiny(seed=1), path)  # and a write that succeeds replaces it
    assert path.read_bytes() != old

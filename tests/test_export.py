"""The compressed-model file (tc.export): the coders against independent references (Huffman's bound and an
independent Huffman, ANS near the entropy), every kind of model written and read back bit-exactly, the bytes
accounted for, and hostile files: every count and length bounded before anything is allocated, architectures from
the registry only, CRC before parsing, a failed write that leaves the old file."""

import builtins
import copy
import dataclasses
import errno
import heapq
import json
import math
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from helpers import tied_mlp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as tprune

import tensorcompress as tc
import tensorcompress.export as E
from tensorcompress._bits import packed_size
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

@pytest.mark.parametrize("arch, kwargs", [
    ("ResNet8", {"in_channels": 3, "num_classes": 7, "widths": (4, 8, 12)}),
    ("MobileNetV2Tiny", {"in_channels": 2, "num_classes": 5, "expand": 2}),
])
def test_residual_models_rebuild_from_the_header(tmp_path, arch, kwargs):
    torch.manual_seed(0)
    model = getattr(tc.models, arch)(**kwargs).eval()
    for m in model.modules():  # BatchNorm statistics and affine parameters that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                nn.init.normal_(t.data, 0.5 if t is m.weight else 0.0, 0.2)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
    path = tmp_path / "m.tcdc"
    save_compressed(model, path)
    header, _, _ = _split_file(path)
    assert header["arch"] == {"name": arch, "kwargs": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in kwargs.items()}}
    back = load_compressed(path)
    assert type(back) is type(model) and not back.training
    assert all(getattr(back, k) == v for k, v in kwargs.items())
    _same_model(model, back, torch.randn(3, kwargs["in_channels"], 28, 28))


def test_tinygpt_rebuilds_from_the_header_float_and_weight_only(tmp_path):
    torch.manual_seed(0)
    gpt = tc.models.TinyGPT(13, d_model=64, n_layers=2, n_heads=2, context=16).eval()
    tokens = torch.randint(0, 13, (2, 16))
    save_compressed(gpt, tmp_path / "float.tcdc")
    header, _, _ = _split_file(tmp_path / "float.tcdc")
    assert header["arch"] == {"name": "TinyGPT", "kwargs": {"vocab_size": 13, "d_model": 64, "n_layers": 2,
                                                            "n_heads": 2, "context": 16}}
    _same_model(gpt, load_compressed(tmp_path / "float.tcdc"), tokens)
    w4, _ = tc.quantization.quantize_weights(gpt, bits=4, group_size=32, exclude=["head"])
    save_compressed(w4, tmp_path / "w4.tcdc")
    back = load_compressed(tmp_path / "w4.tcdc")  # no skeleton: the registry builds it, the file fills in the layers
    assert isinstance(back, tc.models.TinyGPT) and not back.training
    assert isinstance(back.blocks[1].mlp.fc2, tc.quantization.WeightOnlyLinear)
    assert isinstance(back.head, nn.Linear) and not isinstance(back.head, tc.quantization.WeightOnlyLinear)
    skeleton = tc.models.TinyGPT(13, d_model=64, n_layers=2, n_heads=2, context=16)
    with torch.no_grad():
        assert torch.equal(back(tokens), load_compressed(tmp_path / "w4.tcdc", model=skeleton)(tokens))
        assert torch.equal(back(tokens), w4(tokens))


def test_architecture_registry(tmp_path):
    library = {"LeNet300100", "LeNet5", "SmallCNN", "ResNet8", "MobileNetV2Tiny", "TinyGPT"}
    assert library <= set(E.registered_architectures())
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



def test_tt_layers_round_trip_whatever_their_contraction_order(tmp_path):
    # the order is how a TT layer multiplies, not what it stores: a file written by a layer with any order (files
    # from before the default was "auto" came from order="left") has the same bytes, carries no order, and loads
    # into a skeleton with any order, which then computes the product to float rounding
    torch.manual_seed(0)
    net, _ = tc.factorize(tc.models.LeNet300100(), method="tt", rank=4)
    tts = [m for m in net.modules() if isinstance(m, tc.TTLinear)]
    assert len(tts) == 3 and all(m.order == "auto" for m in tts)
    old = copy.deepcopy(net)
    for m in old.modules():
        if isinstance(m, tc.TTLinear):
            m.order = "left"
    save_compressed(net, tmp_path / "auto")
    save_compressed(old, tmp_path / "left")
    assert (tmp_path / "auto").read_bytes() == (tmp_path / "left").read_bytes()
    header, _, _ = _split_file(tmp_path / "auto")
    assert header["arch"] is None and "order" not in json.dumps(header)
    x = torch.randn(5, 784)
    for order in ("auto", "left", "right", "dense"):
        skeleton, _ = tc.factorize(tc.models.LeNet300100(), method="tt", rank=4)
        for m in skeleton.modules():
            if isinstance(m, tc.TTLinear):
                m.order = order
        back = load_compressed(tmp_path / "left", model=skeleton)
        state = net.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())
        assert [m.order for m in back.modules() if isinstance(m, tc.TTLinear)] == [order] * 3
        torch.testing.assert_close(back(x), net(x), rtol=1e-5, atol=1e-5 * net(x).abs().max().item())

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
    load into ``model`` (``True``: a fresh ``Tiny``, ``False``: none, else the skeleton given): the error the loader
    raises."""
    path = tmp_path / "h.tcdc"
    save_compressed(shared_tiny() if net is None else net, path)
    header, payload, code = _split_file(path)
    payload = mutate(header, payload) or payload
    _write_file(path, header, payload, code)
    with pytest.raises(ValueError) as err:
        load_compressed(path, model=Tiny() if model is True else None if model is False else model, **load)
    return str(err.value)


def _section(net, key):
    """``(start, end)`` of the payload bytes of the entry whose sizes are reported under ``key``."""
    _, sizes = encode_compressed(net)
    start = 0
    for k, size in sizes.items():
        n = sum(v if isinstance(v, int) else v.table + v.payload for v in size.values())
        if k == key:
            return start, start + n
        start += n
    raise KeyError(key)


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
    ({"name": "TinyGPT", "kwargs": {"vocab_size": 65, "d_model": 64, "n_layers": 65536, "n_heads": 4, "context": 8}},
     "'n_layers' = 65536 is above its limit 64"),  # refused before 65,536 blocks are built, even on meta
])
def test_architectures_come_from_the_registry_with_bounded_arguments(tmp_path, arch, match):
    net = tc.models.LeNet300100()
    msg = _hostile(tmp_path, lambda h, p: h.update(arch=arch), net=net, model=False)
    assert match in msg


def test_architecture_limits_name_a_constructor_argument():
    with pytest.raises(ValueError, match="limits\\['depth'\\]"):
        A.register_architecture("TinyGPT", tc.models.TinyGPT, limits={"depth": 4})
    with pytest.raises(ValueError, match="limits\\['n_layers'\\]"):
        A.register_architecture("TinyGPT", tc.models.TinyGPT, limits={"n_layers": -1})


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


# ---------------------------------------------------------------------------------------------- tied tensors

class TiedLM(nn.Module):
    """A tied embedding and output head, with one buffer registered in two modules."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight
        self.mid.register_buffer("gain", torch.full((6,), 1.5))
        self.head.register_buffer("gain", self.mid.gain)

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))) * self.head.gain)


def _untied(net):
    """A copy with every tie broken: each name its own tensor."""
    out = copy.deepcopy(net)
    for module in out.modules():
        for key, p in list(module.named_parameters(recurse=False)):
            setattr(module, key, nn.Parameter(p.detach().clone()))
        for key, b in list(module.named_buffers(recurse=False)):
            setattr(module, key, b.clone())
    return out


@pytest.mark.parametrize("coder", ["huffman", "ans"])
@pytest.mark.parametrize("make, fresh, x, pairs", [
    (lambda: tied_mlp().eval(), lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), torch.randn(3, 8),
     [("0.weight", "2.weight")]),
    (lambda: TiedLM().eval(), TiedLM, torch.tensor([[1, 5, 10]]), [("emb.weight", "head.weight"),
                                                                    ("mid.gain", "head.gain")]),
])
def test_tied_tensors_are_stored_once_and_tied_again(tmp_path, coder, make, fresh, x, pairs):
    net = make()
    path = tmp_path / "t.tcdc"
    size = save_compressed(net, path, coder=coder)
    untied = save_compressed(_untied(net), tmp_path / "u.tcdc", coder=coder)
    tied_bytes = sum(net.get_parameter(b).numel() * 4 if b.endswith("weight") else 24 for _, b in pairs)
    assert untied - size >= tied_bytes - 60 * len(pairs)  # the second copy is gone; an alias costs header bytes only
    header, _, _ = _split_file(path)
    assert [(e["target"], e["name"]) for e in header["tensors"] if e["kind"] == "alias"] == pairs
    for skeleton in (fresh(), _untied(fresh())):  # a skeleton tied already, or not
        back = load_compressed(path, model=skeleton)
        for a, b in pairs:
            pa, pb = (back.get_parameter(a), back.get_parameter(b)) if a.endswith("weight") else (
                back.get_buffer(a), back.get_buffer(b))
            assert pa is pb, (a, b)
        _same_model(net, back, x)
        assert save_compressed(back, tmp_path / "again.tcdc", coder=coder) == size
        assert (tmp_path / "again.tcdc").read_bytes() == path.read_bytes()
    back = load_compressed(path, model=fresh())
    with torch.no_grad():  # one tensor: changing it through one name changes it through the other
        back.get_parameter(pairs[0][0]).add_(1)
    assert torch.equal(back.get_parameter(pairs[0][1]), net.get_parameter(pairs[0][1]) + 1)


def test_a_tie_the_file_cannot_keep_is_refused(tmp_path):
    net = tied_mlp().eval()
    tprune.l1_unstructured(net[0], "weight", amount=0.5)  # 0.weight_orig is the tensor 2.weight also names
    with pytest.raises(ValueError, match=r"\['0.weight_orig', '2.weight'\].*tied.*\['0.weight_orig'\]"):
        save_compressed(net, tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("change, match", [
    ({"target": "nope"}, "not a tensor stored plainly earlier"),
    ({"target": "2.bias"}, "not a tensor stored plainly earlier"),      # later in the file
    ({"target": 5}, "not a tensor stored plainly earlier"), ({"target": [1]}, "not a tensor stored plainly earlier"),
    ({"target": "2.weight"}, "not a tensor stored plainly earlier"),    # itself
    ({"target": "0.bias"}, "shape and dtype must agree"),
    ({"dtype": "float64"}, "shape and dtype must agree"),
    ({"dtype": "object"}, "dtype 'object'"),
])
def test_alias_fields_are_checked(tmp_path, change, match):
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "2.weight").update(change), net=tied_mlp().eval(),
                   model=nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))
    assert "'2.weight'" in msg and match in msg


def test_alias_of_a_buffer_by_a_parameter_is_refused(tmp_path):
    def mutate(header, payload):  # bn.weight (a parameter) made an alias of bn.running_mean (a buffer)
        start, end = _section(tiny(), "bn.weight")
        e = _entry(header, "bn.weight")
        e["kind"], e["target"] = "alias", "bn.running_mean"
        return payload[:start] + payload[end:]
    msg = _hostile(tmp_path, mutate, net=tiny())
    assert "one is a parameter of the model and the other a buffer" in msg


def test_alias_of_an_entry_not_stored_plainly_is_refused(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    tprune.l1_unstructured(net[0], "weight", amount=0.5)
    start, end = _section(net, "2.weight")

    def mutate(header, payload):  # 2.weight becomes an alias of the pruned 0.weight
        e = _entry(header, "2.weight")
        e["kind"], e["target"] = "alias", "0.weight"
        return payload[:start] + payload[end:]
    msg = _hostile(tmp_path, mutate, net=net, model=nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))
    assert "alias of '0.weight', which is not a tensor stored plainly" in msg


# ---------------------------------------------------------------------------------------------- quantized models

Q = tc.quantization
X784 = torch.randn(32, 784, generator=torch.Generator().manual_seed(3))


def _quantized(make=tc.models.LeNet300100, calibration=X784, **options):
    torch.manual_seed(0)
    qm, _ = Q.quantize_model(make(), **options)
    if options.get("act_bits", 8) is not None:
        Q.calibrate(qm, calibration)
    return qm.eval()


def _skeleton(make=tc.models.LeNet300100, **options):
    """A model quantized the same way, not calibrated, with other weights."""
    torch.manual_seed(1)
    return Q.quantize_model(make(), **options)[0]


def _weight_quantized_layers(model):
    return [(n, m) for n, m in model.named_modules() if F._weight_quantizer(m) is not None]


@pytest.mark.parametrize("coder", ["huffman", "ans"])
@pytest.mark.parametrize("options", [
    {"weight_bits": 4}, {"weight_bits": 8, "per_channel": False}, {"weight_bits": 2, "observer": "mse"},
    {"weight_bits": 3, "observer": "percentile", "per_channel": False}, {"weight_bits": 16},
    {"weight_bits": 4, "method": "lsq", "lsq_init": "mean"}, {"weight_bits": 6, "act_bits": None},
])
def test_fake_quantized_models_round_trip_bit_exactly(tmp_path, coder, options):
    qm = _quantized(**options)
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    path = tmp_path / "q.tcdc"
    size = save_compressed(qm, path, coder=coder)
    assert all(torch.equal(before[k], v) for k, v in qm.state_dict().items())
    header, _, _ = _split_file(path)
    kinds = {e["name"]: e["kind"] for e in header["tensors"]}
    assert [k for k, v in kinds.items() if v == "quantized"] == [
        f"{n}.parametrizations.weight.original" for n in ("fc1.layer", "fc2.layer", "fc3.layer")]
    back = load_compressed(path, model=_skeleton(**options))
    for k, v in qm.state_dict().items():  # everything but the weights comes back as it was (the weight
        if not k.endswith("weight.original"):  # observers' statistics until a forward re-reads the weights)
            assert torch.equal(back.state_dict()[k], v), k
    assert save_compressed(back, tmp_path / "again.tcdc", coder=coder) == size
    assert (tmp_path / "again.tcdc").read_bytes() == path.read_bytes()
    with torch.no_grad():
        assert torch.equal(back(X784), qm(X784))
        for name, layer in _weight_quantized_layers(qm):
            # the loaded weight is PyTorch's fake quantization of the original, with the original's parameters
            qp = layer.parametrizations.weight[0].qparams(layer.parametrizations.weight.original)
            w = layer.parametrizations.weight.original
            ref = (torch.fake_quantize_per_channel_affine(w, qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)
                   if qp.axis is not None else
                   torch.fake_quantize_per_tensor_affine(w, qp.scale, qp.zero_point, qp.qmin, qp.qmax))
            loaded = back.get_submodule(name)
            assert torch.equal(loaded.parametrizations.weight.original, ref)
            assert torch.equal(loaded.weight, layer.weight)


@pytest.mark.parametrize("make, pretrained", [(tc.models.LeNet300100, False), (tc.models.LeNet300100, True)])
def test_a_4_bit_model_takes_about_an_eighth_of_the_float_file(make, pretrained):
    build = (lambda: tc.models.pretrained("lenet300100")) if pretrained else make
    dense = len(encode_compressed(build())[0])
    for per_channel in (True, False):
        qm = _quantized(build, weight_bits=4, per_channel=per_channel)
        data, sizes = encode_compressed(qm)
        assert len(data) < dense / 7
        for name, _ in _weight_quantized_layers(qm):
            codes = sizes[name]["codes"]  # a Huffman code is never longer than the fixed 4-bit one
            assert codes.code_bits <= 4 * codes.n_symbols
            assert codes.payload <= packed_size(codes.n_symbols, 4) + 4


@pytest.mark.parametrize("make", [lambda: _quantized(weight_bits=4), lambda: _integer(_quantized(weight_bits=8)),
                                  lambda: tied_mlp().eval(), lambda: TiedLM()])
def test_every_byte_of_the_new_kinds_is_accounted_for(make):
    net = make()
    for coder in F.CODERS:
        data, sizes = encode_compressed(net, coder=coder)
        total = sizes.pop("header")["bytes"]
        for size in sizes.values():
            total += sum(v if isinstance(v, int) else v.table + v.payload for v in size.values())
        assert total == len(data)


def test_quantized_and_tied_models_on_any_device_and_dtype(tmp_path, device, dtype):
    qm = _quantized(weight_bits=4).to(device=device, dtype=dtype)
    tied = tied_mlp().eval().to(device=device, dtype=dtype)
    for net, skeleton in ((qm, _skeleton(weight_bits=4).to(dtype)),
                          (tied, nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))):
        save_compressed(net, tmp_path / "m.tcdc")
        back = load_compressed(tmp_path / "m.tcdc", model=skeleton)  # on the CPU, in the file's dtypes
        with torch.no_grad():
            for (name, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
                assert b.device.type == "cpu" and a.dtype == b.dtype, name
                if not name.endswith("weight.original"):
                    assert torch.equal(a.cpu(), b), name
            for name, layer in _weight_quantized_layers(net):
                assert torch.equal(back.get_submodule(name).weight, layer.weight.cpu())
    assert back[0].weight is back[2].weight


def test_conv_models_quantize_and_round_trip(tmp_path):
    make = lambda: tc.models.SmallCNN(channels=(4, 8), input_size=12)  # noqa: E731
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    qm = _quantized(make, x, weight_bits=5)
    save_compressed(qm, tmp_path / "c.tcdc")
    back = load_compressed(tmp_path / "c.tcdc", model=_skeleton(make, weight_bits=5))
    with torch.no_grad():
        assert torch.equal(back(x), qm(x))


FLOATS32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(values=st.lists(st.one_of(FLOATS32, st.sampled_from([0.0, 1e-45, -1e-40, 3.0])), min_size=12, max_size=12),
       bits=st.integers(2, 16), per_channel=st.booleans(), observer=st.sampled_from(["minmax", "mse", "percentile"]))
def test_any_weight_values_come_back_bit_exactly(tmp_path_factory, values, bits, per_channel, observer):
    """Ties, denormals, zeros and extreme magnitudes: the loaded layer fake-quantizes to the same weight (stored as
    codes when the quantizer re-reads them to the same parameters, else raw)."""
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(values).reshape(3, 4))
    options = {"weight_bits": bits, "act_bits": None, "per_channel": per_channel, "observer": observer}
    qm, _ = Q.quantize_model(nn.Sequential(layer), **options)
    path = tmp_path_factory.mktemp("q") / "q.tcdc"
    save_compressed(qm, path)
    back = load_compressed(path, model=Q.quantize_model(nn.Sequential(nn.Linear(4, 3)), **options)[0])
    with torch.no_grad():
        assert torch.equal(back[0].layer.weight, qm[0].layer.weight)


def test_a_quantizer_that_would_not_re_read_its_codes_stores_the_weight_raw(tmp_path, monkeypatch):
    qm = _quantized(weight_bits=4)
    real = F.dequantize
    # a dequantization one step off: the writer's check that the codes come back finds the difference
    monkeypatch.setattr(F, "dequantize", lambda q, qp, dtype: torch.nextafter(real(q, qp, dtype=dtype),
                                                                               torch.tensor(math.inf)))
    _, sizes = encode_compressed(qm)
    monkeypatch.undo()
    assert "plain" in sizes["fc1.layer.parametrizations.weight.original"] and "fc1.layer" not in sizes
    save_compressed(qm, tmp_path / "q.tcdc")
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "q.tcdc", model=_skeleton(weight_bits=4))(X784), qm(X784))


W1 = "fc1.layer.parametrizations.weight.original"


@pytest.mark.parametrize("change, match", [
    ({"qmin": 10**9}, "codes [1000000000, 7] with axis 0 do not fit"), ({"qmin": "-7"}, "codes ['-7', 7]"),
    ({"qmax": -7}, "codes [-7, -7]"), ({"qmax": 2**17}, "codes [-7, 131072]"), ({"axis": 2}, "with axis 2 do not"),
    ({"axis": "0"}, "with axis '0' do not"), ({"axis": None}, "with axis None do not"),
    ({"dtype": "int8"}, "dtype 'int8'"), ({"codes_words": 10**9}, "codes_words"), ({"codes_table": 3}, "codes_table"),
])
def test_quantized_fields_are_checked(tmp_path, change, match):
    msg = _hostile(tmp_path, lambda h, p: _entry(h, W1).update(change), net=_quantized(weight_bits=4),
                   model=_skeleton(weight_bits=4))
    assert f"'{W1}'" in msg and match in msg


@pytest.mark.parametrize("change, match", [({"qmin": -(2**15) - 1}, "qmin = -32769"), ({"qmax": 2**16}, "qmax"),
                                           ({"axis": 2}, "axis = 2"), ({"axis": "0"}, "axis")])
def test_quantized_field_bounds_hold_whatever_the_skeleton(tmp_path, monkeypatch, change, match):
    """The bounds the reader checks itself, behind the check against the skeleton's quantizer."""
    monkeypatch.setitem(F.KINDS, "quantized", dataclasses.replace(F.KINDS["quantized"], check=None))
    msg = _hostile(tmp_path, lambda h, p: _entry(h, W1).update(change), net=_quantized(weight_bits=4),
                   model=_skeleton(weight_bits=4))
    assert f"'{W1}'" in msg and match in msg


@pytest.mark.parametrize("where, value, match", [
    ("scale", float("nan"), "scale must be finite and > 0"), ("scale", 0.0, "scale must be finite and > 0"),
    ("scale", -1.0, "scale must be finite and > 0"), ("zero_point", 99, "zero_point must lie in"),
])
def test_quantized_scales_and_zero_points_are_checked(tmp_path, where, value, match):
    net = _quantized(weight_bits=4)
    start, _ = _section(net, "fc1.layer")
    at = start + (0 if where == "scale" else 4 * 300) + 4 * 17  # channel 17
    word = struct.pack("<f" if where == "scale" else "<i", value)
    msg = _hostile(tmp_path, lambda h, p: p[:at] + word + p[at + 4:], net=net, model=_skeleton(weight_bits=4))
    assert f"'{W1}'" in msg and match in msg


def test_quantized_entries_must_fit_the_skeleton_s_quantizer(tmp_path):
    path = tmp_path / "q.tcdc"
    save_compressed(_quantized(weight_bits=4), path)
    with pytest.raises(ValueError, match=r"codes \[-7, 7\] with axis 0 do not fit the model's quantizer \(\[-127, "
                                         r"127\], axis 0\)"):
        load_compressed(path, model=_skeleton(weight_bits=8))
    with pytest.raises(ValueError, match="axis None"):
        load_compressed(path, model=_skeleton(weight_bits=4, per_channel=False))
    with pytest.raises(ValueError, match="does not fit the model"):  # a float skeleton lacks the quantizers
        load_compressed(path, model=tc.models.LeNet300100())
    with pytest.raises(ValueError, match="no registered architecture"):
        load_compressed(path)

    def mutate(header, payload):  # a raw float tensor declared quantized
        e = _entry(header, "fc1.layer.bias")
        e.update(kind="quantized", qmin=-7, qmax=7, axis=None)
    msg = _hostile(tmp_path, mutate, net=_quantized(weight_bits=4), model=_skeleton(weight_bits=4))
    assert "'fc1.layer.bias' of kind 'quantized' is not the weight of a layer fake-quantized" in msg


# ---------------------------------------------------------------------------------------------- integer models

def _integer(qm, x=None):
    """``to_integer``'s model, traced on ``x`` (default: LeNet-300-100's input)."""
    return Q.to_integer(qm, (X784 if x is None else x)[:2])[0]


@pytest.mark.parametrize("coder", ["huffman", "ans"])
@pytest.mark.parametrize("make, x, bits", [
    (tc.models.LeNet300100, X784, 8), (tc.models.LeNet300100, X784, 4),
    (lambda: tc.models.SmallCNN(channels=(4, 8), input_size=12),
     torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(4)), 6),
])
def test_integer_models_round_trip_bit_exactly(tmp_path, coder, make, x, bits):
    im = _integer(_quantized(make, x, weight_bits=bits), x)
    before = {k: v.clone() for k, v in im.state_dict().items()}
    path = tmp_path / "i.tcdc"
    size = save_compressed(im, path, coder=coder)
    assert all(torch.equal(before[k], v) for k, v in im.state_dict().items())
    header, _, _ = _split_file(path)
    weights = [n for n, m in im.named_modules() if isinstance(m, Q.IntegerLayer)]
    assert [e["name"] for e in header["tensors"] if e["kind"] == "integer"] == [f"{n}.weight" for n in weights]
    skeleton = _integer(Q.calibrate(_skeleton(make, weight_bits=bits), x), x)
    back = load_compressed(path, model=skeleton)
    _same_model(im, back, x)
    assert save_compressed(back, tmp_path / "again.tcdc", coder=coder) == size
    _, sizes = encode_compressed(im, coder=coder)
    for n in weights:  # codes of b bits cost at most b bits each: a fixed-length code is a prefix code too
        assert sizes[f"{n}.weight"]["codes"].entropy_bits <= bits * im.get_submodule(n).weight.numel()
        if coder == "huffman":
            assert sizes[f"{n}.weight"]["codes"].code_bits <= bits * im.get_submodule(n).weight.numel()


@pytest.mark.parametrize("change, match", [
    ({"dtype": "float32"}, "not one of the code dtypes"), ({"dtype": "int32"}, "not one of the code dtypes"),
    ({"codes_words": 10**9}, "codes_words"), ({"codes_table": 10**6}, "codes_table"),
    ({"kind": "quantized"}, "is not the weight of a layer fake-quantized"),
])
def test_integer_fields_are_checked(tmp_path, change, match):
    im = _integer(_quantized(weight_bits=8))
    skeleton = _integer(_quantized(weight_bits=8))
    msg = _hostile(tmp_path, lambda h, p: _entry(h, "fc2.weight").update(change), net=im, model=skeleton)
    assert "'fc2.weight'" in msg and match in msg


def test_integer_kind_applies_to_integer_layer_weights_only(tmp_path):
    im = _integer(_quantized(weight_bits=8))

    def mutate(header, payload):
        _entry(header, "fc2.m0").update(kind="integer", dtype="int8")
    msg = _hostile(tmp_path, mutate, net=im, model=_integer(_quantized(weight_bits=8)))
    assert "'fc2.m0' of kind 'integer' is not the weight of an IntegerLayer" in msg

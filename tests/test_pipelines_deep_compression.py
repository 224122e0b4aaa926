"""Deep Compression: Huffman's bound against an independent Huffman, ANS near the entropy, the file (save -> load
bit-exact, size = report, corruption detected), the pipeline and bad input. Weight sharing itself (k-means on the
kept weights, the mask, the centroid gradient) is tested with tc.quantization.share_weights in
tests/test_quant_nonuniform.py."""

import heapq
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress.pipelines import (
    DeepCompressionReport,
    coding,
    deep_compression,
    load_compressed,
    measure_compressed,
    save_compressed,
)
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
    lengths = coding.huffman_code_lengths(s, alphabet)
    used = counts > 0
    h = coding.entropy_bits(s, alphabet) / n
    mean = float((counts * lengths).sum()) / n
    assert h - 1e-9 <= mean < h + 1                           # Huffman's bound
    assert np.sum(2.0 ** -lengths[used]) <= 1 + 1e-12        # Kraft
    if used.sum() >= 2:
        assert np.sum(2.0 ** -lengths[used]) == pytest.approx(1)  # a Huffman tree is full
    assert (counts * lengths).sum() == _huffman_total_bits(counts)  # optimal: equals an independent Huffman
    table, words, n_bits = coding.huffman_encode(s, alphabet)
    assert n_bits == (counts * lengths).sum()                # the stream is coded with exactly these lengths
    assert len(words) == -(-n_bits // 32)
    assert np.array_equal(coding.huffman_decode(table, words, n), s)


def test_entropy_of_known_distributions():
    assert coding.entropy_bits(np.array([0, 1, 2, 3] * 8)) == pytest.approx(64)     # 2 bits each
    assert coding.entropy_bits(np.zeros(10, dtype=int)) == 0
    s = np.array([0] * 2 + [1] * 1 + [2] * 1)
    assert coding.entropy_bits(s) == pytest.approx(4 * 1.5)
    assert coding.entropy_bits(np.zeros(0, dtype=int)) == 0


@given(seed=st.integers(0, 2**16), n=st.integers(1, 5000), alphabet=st.integers(1, 257),
       skew=st.sampled_from([0.05, 0.5, 5.0]))
def test_ans_roundtrip_and_close_to_entropy(seed, n, alphabet, skew):
    s = _symbols(seed, n, alphabet, skew)
    counts, words = coding.ans_encode(s, alphabet)
    assert np.array_equal(coding.ans_decode(counts, words, n), s)
    # constriction's 24-bit fixed-point probabilities: a small relative loss plus at most two words of overhead
    assert 32 * len(words) <= 1.01 * coding.entropy_bits(s, alphabet) + 0.002 * n + 64


@given(values=st.lists(st.integers(0, 2**40), max_size=50))
def test_varint_roundtrip(values):
    data = coding.varint_bytes(values)
    assert list(coding.varint_values(data, len(values))) == values
    assert len(data) == sum(max(1, -(-v.bit_length() // 7)) for v in values)


def test_coder_errors():
    with pytest.raises(ValueError, match="symbols must lie"):
        coding.huffman_encode(np.array([0, 5]), 4)
    with pytest.raises(ValueError, match="corrupt count table"):
        coding.varint_values(b"\x81", 1)
    with pytest.raises(ValueError, match="counts add up"):
        coding.ans_decode(np.array([1, 1]), np.zeros(1, dtype=np.uint32), 3)


# ---------------------------------------------------------------------------------------------------------- sharing

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _tiny(seed=0):
    torch.manual_seed(seed)
    net = Tiny()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2)
    return net.eval()


def _shared(seed=0, sparsity=0.6, bits=3, index_bits=3):
    net, _ = tc.pruning.prune(_tiny(seed), sparsity)
    return share_weights(net, bits=bits, keep_zeros=True, index_bits=index_bits)[0]


# ---------------------------------------------------------------------------------------------------------- the file

@pytest.mark.parametrize("coder", ["huffman", "ans"])
def test_save_load_identical_and_size_is_the_reports(tmp_path, coder):
    net = _shared()
    path = tmp_path / "m.tcdc"
    size = save_compressed(net, path, coder=coder)
    assert size == os.path.getsize(path)
    report = measure_compressed(net)
    assert report.file_bytes[coder] == size
    back = load_compressed(path, model=Tiny())
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    sd, sd_back = net.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for k in sd:  # codebooks (parametrizations.weight.original), packed indices and masks, plain tensors
        assert torch.equal(sd[k], sd_back[k]), k
    for name in ("conv", "fc"):
        assert torch.equal(back.get_submodule(name).weight, net.get_submodule(name).weight)
    # saving the loaded model gives the same bytes
    assert save_compressed(back, tmp_path / "again.tcdc", coder=coder) == size
    assert (tmp_path / "again.tcdc").read_bytes() == path.read_bytes()


def test_dense_shared_model_round_trips(tmp_path):
    net, _ = share_weights(_tiny(), bits=2)  # keep_zeros=False: every position is a stored weight, no mask
    assert net.fc.parametrizations.weight[0].packed_mask is None
    size = save_compressed(net, tmp_path / "d.tcdc", coder="ans")
    back = load_compressed(tmp_path / "d.tcdc", model=Tiny())
    assert measure_compressed(net).file_bytes["ans"] == size
    sd, sd_back = net.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys() and all(torch.equal(sd[k], sd_back[k]) for k in sd)


def test_lenet_from_header_and_report_accounting(tmp_path):
    net, _ = tc.pruning.prune(tc.models.LeNet300100(), 0.9)
    net, _ = share_weights(net, bits=4, keep_zeros=True, index_bits=5)
    path = tmp_path / "lenet.tcdc"
    size = save_compressed(net, path)
    back = load_compressed(path)                              # architecture from the header
    assert isinstance(back, tc.models.LeNet300100)
    x = torch.randn(3, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    rep = measure_compressed(net, original_bytes=1000)
    assert isinstance(rep, DeepCompressionReport) and len(rep) == 3
    assert rep.stage_bytes["P+Q+H"] == size == rep.file_bytes["huffman"]
    assert rep.plain_bytes == 4 * (300 + 100 + 10)            # biases plainly in float32
    d = rep[0].detail
    assert d["weights"] == 784 * 300 and d["kept"] == int((net.fc1.weight != 0).sum())
    assert d["dense"] == 4 * 784 * 300
    # entropy <= ANS payload and Huffman within one bit per symbol of it (tables aside)
    assert rep.stage_bytes["entropy"] <= rep.stage_bytes["ANS"]
    assert "fc1" in str(rep) and "x P+Q+H" in str(rep)


@pytest.mark.parametrize("where", ["magic", "header", "payload", "crc", "last"])
def test_flipped_byte_is_detected(tmp_path, where):
    path = tmp_path / "m.tcdc"
    save_compressed(_shared(), path)
    data = bytearray(path.read_bytes())
    pos = {"magic": 1, "header": 12, "payload": len(data) // 2, "crc": len(data) - 3, "last": len(data) - 1}[where]
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt|not a tensorcompress"):
        load_compressed(path, model=Tiny())


@pytest.mark.parametrize("keep", [0, 3, 20, -1, -4])
def test_truncated_file_is_detected(tmp_path, keep):
    path = tmp_path / "m.tcdc"
    save_compressed(_shared(), path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ValueError, match="corrupt|not a tensorcompress"):
        load_compressed(path, model=Tiny())


def test_other_file_errors(tmp_path):
    path = tmp_path / "m.tcdc"
    save_compressed(_shared(), path)
    with pytest.raises(ValueError, match="not in the model"):  # the wrong architecture
        load_compressed(path, model=nn.Sequential())
    wider = Tiny()
    wider.fc = nn.Linear(64, 7)
    with pytest.raises(ValueError, match="shape"):
        load_compressed(path, model=wider)
    data = bytearray(path.read_bytes())                      # an unknown version with a valid checksum
    data[4] = 99
    body = bytes(data[:-4])
    import zlib
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(ValueError, match="version"):
        load_compressed(path, model=Tiny())
    with pytest.raises(ValueError, match="not a tensorcompress model"):  # Tiny is not importable from the header
        save_compressed(_shared(), path)
        load_compressed(path)


@given(bits=st.integers(1, 8), index_bits=st.integers(1, 8), sparsity=st.sampled_from([0.0, 0.3, 0.9, 0.99]),
       seed=st.integers(0, 1000), coder=st.sampled_from(["huffman", "ans"]))
def test_roundtrip_over_bits_and_sparsity(tmp_path_factory, bits, index_bits, sparsity, seed, coder):
    net = _shared(seed, sparsity, bits, index_bits)
    path = tmp_path_factory.mktemp("h") / "m.tcdc"
    size = save_compressed(net, path, coder=coder)
    back = load_compressed(path, model=Tiny())
    for name in ("conv", "fc"):
        a, b = net.get_submodule(name), back.get_submodule(name)
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(a.parametrizations.weight[0].indices(), b.parametrizations.weight[0].indices())
        assert torch.equal(a.parametrizations.weight[0].mask(), b.parametrizations.weight[0].mask())
        assert torch.equal(a.parametrizations.weight.original, b.parametrizations.weight.original)
    assert measure_compressed(net).file_bytes[coder] == size


def test_device_and_dtype(tmp_path, device, dtype):
    net = _shared().to(device=device, dtype=dtype)
    assert net.fc.weight.device.type == torch.device(device).type and net.fc.weight.dtype == dtype
    path = tmp_path / "m.tcdc"
    save_compressed(net, path)
    back = load_compressed(path, model=Tiny().to(dtype))
    assert back.fc.weight.dtype == dtype
    assert torch.equal(back.fc.weight, net.fc.weight.cpu()) and torch.equal(back.conv.weight, net.conv.weight.cpu())


# ---------------------------------------------------------------------------------------------------------- pipeline

def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, generator=g)
    y = (x[:, 0, :3].sum((1, 2)) > 0).long() + 2 * (x[:, 1, 3:].sum((1, 2)) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


def test_deep_compression_pipeline(tmp_path):
    train, val = _data(256, 0), _data(128, 1)
    model = _tiny()
    tc.fit(model, train, epochs=3, lr=1e-2, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net, report = deep_compression(model, train, val, sparsity={"conv": 0.3, "fc": 0.8}, bits=3, index_bits=4,
                                   prune_epochs=1, share_epochs=1, lr=1e-3, batch_size=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # input untouched
    assert set(report.accuracy) == {"original", "pruned", "shared", "fine-tuned"}
    kept = {r.name: r.detail["kept %"] for r in report}
    assert kept["conv"] == pytest.approx(70, abs=100 / 72) and kept["fc"] == pytest.approx(20, abs=100 / 320)
    for name in ("conv", "fc"):
        sw = net.get_submodule(name).parametrizations.weight[0]
        assert sw.bits == 3 and sw.index_bits == 4
        w = net.get_submodule(name).weight
        assert len(torch.unique(w[w != 0])) <= 8
    size = save_compressed(net, tmp_path / "m.tcdc")
    assert size == report.file_bytes["huffman"] and report.original_bytes == tc.model_size_bytes(model)
    assert report.compression() == report.original_bytes / size
    back = load_compressed(tmp_path / "m.tcdc", model=Tiny())
    assert tc.evaluate(back, val).accuracy == tc.evaluate(net, val).accuracy


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0, "bits": 4}, "sparsity"), ({"sparsity": -0.1, "bits": 4}, "sparsity"),
    ({"sparsity": 0.5, "bits": 0}, "bits"), ({"sparsity": 0.5, "bits": 9}, "bits"),
    ({"sparsity": 0.5, "bits": 4, "index_bits": 0}, "index_bits"),
    ({"sparsity": 0.5, "bits": 4, "index_bits": 9}, "index_bits"),
    ({"sparsity": {"conv": 0.5}, "bits": 4}, "every selected layer"),
    ({"sparsity": {"conv": 0.5, "fc": 0.5, "nope": 0.1}, "bits": 4}, "unknown"),
    ({"sparsity": 0.5, "bits": 4, "include": ["nope"]}, "match no"),
    ({"sparsity": 0.5, "bits": 4, "lr": 0}, "lr"),
    ({"sparsity": 0.5, "bits": 4, "prune_epochs": -1}, "prune_epochs"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deep_compression(_tiny(), _data(8, 0), _data(8, 1), **kwargs)


@pytest.mark.parametrize("bits", [2.5, True, {"conv": 4, "fc": "4"}])
def test_bad_bits_type(bits):
    with pytest.raises(TypeError, match="bits.* must be an int"):
        deep_compression(_tiny(), _data(8, 0), _data(8, 1), sparsity=0.5, bits=bits)


def test_bad_input_save(tmp_path):
    with pytest.raises(ValueError, match="coder"):
        save_compressed(_shared(), tmp_path / "m", coder="zip")
    with pytest.raises(ValueError, match="no shared weights"):
        save_compressed(_tiny(), tmp_path / "m")
    with pytest.raises(TypeError, match="model"):
        save_compressed("model", tmp_path / "m")
    other = _tiny()
    torch.nn.utils.parametrize.register_parametrization(other.fc, "weight", nn.Identity())
    with pytest.raises(ValueError, match="other than one SharedWeight"):
        save_compressed(other, tmp_path / "m")
    short = _tiny()  # a codebook shorter than 2**bits has no place in the file
    w = short.fc.weight.detach()
    sw = tc.quantization.SharedWeight(torch.tensor([-0.1, 0.1]), (w > 0).to(torch.uint8), 3)
    torch.nn.utils.parametrize.register_parametrization(short.fc, "weight", sw)
    with pytest.raises(ValueError, match="2\\*\\*bits codebook entries"):
        save_compressed(short, tmp_path / "m")

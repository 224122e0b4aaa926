"""Deep Compression: the report's bytes are the file's, the pipeline and bad input. The file itself and its coders
are tested in tests/test_export.py; weight sharing (k-means on the kept weights, the mask, the centroid gradient)
with tc.quantization.share_weights in tests/test_quant_nonuniform.py."""

import pytest
import torch
from helpers import assert_model_unchanged, model_state

import tensorcompress as tc
from tensorcompress.export import load_compressed, save_compressed
from tensorcompress.pipelines import DeepCompressionReport, deep_compression, measure_compressed
from tensorcompress.quantization import share_weights
from tests.test_export import Tiny
from tests.test_export import shared_tiny as _shared
from tests.test_export import tiny as _tiny

# ---------------------------------------------------------------------------------------------------------- report


@pytest.mark.parametrize("coder", ["huffman", "ans"])
@pytest.mark.parametrize("keep_zeros", [True, False])
def test_report_bytes_are_the_file_s(tmp_path, coder, keep_zeros):
    net = _shared() if keep_zeros else share_weights(_tiny(), bits=2)[0]
    assert measure_compressed(net).file_bytes[coder] == save_compressed(net, tmp_path / "m", coder=coder)


def test_report_needs_shared_weights():
    with pytest.raises(ValueError, match="no shared weights"):
        measure_compressed(tc.pruning.prune(_tiny(), amount=0.5)[0])


def test_lenet_from_header_and_report_accounting(tmp_path):
    net, _ = tc.pruning.prune(tc.models.LeNet300100(), amount=0.9)
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
    before = model_state(model)
    net, report = deep_compression(model, train, val=val, amount={"conv": 0.3, "fc": 0.8}, bits=3, index_bits=4,
                                   prune_epochs=1, share_epochs=1, lr=1e-3, batch_size=32)
    assert_model_unchanged(model, before)
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
    ({"amount": 1.0, "bits": 4}, "amount"), ({"amount": -0.1, "bits": 4}, "amount"),
    ({"amount": 0.5, "bits": 0}, "bits"), ({"amount": 0.5, "bits": 9}, "bits"),
    ({"amount": 0.5, "bits": 4, "index_bits": 0}, "index_bits"),
    ({"amount": 0.5, "bits": 4, "index_bits": 9}, "index_bits"),
    ({"amount": {"conv": 0.5}, "bits": 4}, "every selected layer"),
    ({"amount": {"conv": 0.5, "fc": 0.5, "nope": 0.1}, "bits": 4}, "unknown"),
    ({"amount": 0.5, "bits": 4, "include": ["nope"]}, "match no"),
    ({"amount": 0.5, "bits": 4, "lr": 0}, "lr"),
    ({"amount": 0.5, "bits": 4, "prune_epochs": -1}, "prune_epochs"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deep_compression(_tiny(), _data(8, 0), val=_data(8, 1), **kwargs)


@pytest.mark.parametrize("bits", [2.5, True, {"conv": 4, "fc": "4"}])
def test_bad_bits_type(bits):
    with pytest.raises(TypeError, match="bits.* must be an int"):
        deep_compression(_tiny(), _data(8, 0), val=_data(8, 1), amount=0.5, bits=bits)

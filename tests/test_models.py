"""tensorcompress.models: architectures (parameter counts in closed form, shapes, bad input) and pretrained()."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import checkpoint_manifest

import tensorcompress as tc
from tensorcompress.models.pretrained import CHECKPOINT_DIR


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_lenet300100_architecture():
    m = tc.models.LeNet300100()
    assert _n_params(m) == (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10) == 266_610
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert m(torch.zeros(3, 784)).shape == (3, 10)  # flattens itself
    m2 = tc.models.LeNet300100(in_features=64, num_classes=4)
    assert m2(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


def test_lenet5_is_the_caffe_variant():
    m = tc.models.LeNet5()
    assert (m.conv1.out_channels, m.conv1.kernel_size) == (20, (5, 5))
    assert (m.conv2.out_channels, m.conv2.kernel_size) == (50, (5, 5))
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (800, 500, 10)
    assert _n_params(m) == (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10) == 431_080
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    m3 = tc.models.LeNet5(in_channels=3, num_classes=7, input_size=32)  # 32 -> 28 -> 14 -> 10 -> 5
    assert m3.fc1.in_features == 50 * 5 * 5 and m3(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("size", [8, 28])
def test_smallcnn_sizes(size):
    m = tc.models.SmallCNN(input_size=size)
    conv = 1 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9
    assert _n_params(m) == conv + 2 * (32 + 32 + 64 + 64) + (64 * 10 + 10) == 65_834
    assert m(torch.zeros(2, 1, size, size)).shape == (2, 10)
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == 4
    assert tc.models.SmallCNN(in_channels=3, num_classes=5, input_size=size, channels=(8, 16))(
        torch.zeros(1, 3, size, size)
    ).shape == (1, 5)


def test_models_follow_device_and_dtype(device, dtype):
    for m, x in [
        (tc.models.LeNet300100(), torch.zeros(2, 1, 28, 28)),
        (tc.models.LeNet5(), torch.zeros(2, 1, 28, 28)),
        (tc.models.SmallCNN(input_size=8), torch.zeros(2, 1, 8, 8)),
        (tc.models.ResNet8(widths=(4, 8, 8)), torch.zeros(2, 1, 28, 28)),
        (tc.models.MobileNetV2Tiny(expand=2), torch.zeros(2, 1, 28, 28)),
    ]:
        out = m.to(device=device, dtype=dtype)(x.to(device=device, dtype=dtype))
        assert out.dtype == dtype and out.device.type == torch.device(device).type


def test_wrong_input_shapes():
    msg = r"LeNet300100 expects 784 input features per sample, got input of shape \(2, 64\)"
    with pytest.raises(ValueError, match=msg):
        tc.models.LeNet300100()(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"LeNet5 expects input of shape N x 1 x 28 x 28, got \(2, 1, 32, 32\)"):
        tc.models.LeNet5()(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"SmallCNN expects input of shape N x 1 x 8 x 8, got \(2, 3, 8, 8\)"):
        tc.models.SmallCNN(input_size=8)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"ResNet8 expects input of shape N x 1 x 28 x 28, got \(2, 1, 32, 32\)"):
        tc.models.ResNet8()(torch.zeros(2, 1, 32, 32))
    msg = r"MobileNetV2Tiny expects input of shape N x 3 x 28 x 28, got \(2, 1, 28, 28\)"
    with pytest.raises(ValueError, match=msg):
        tc.models.MobileNetV2Tiny(in_channels=3)(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"ResNet8 expects input of shape N x 1 x 28 x 28, got \(1, 28, 28\)"):
        tc.models.ResNet8()(torch.zeros(1, 28, 28))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="input_size must be >= 16 for LeNet5"):
        tc.models.LeNet5(input_size=8)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        tc.models.LeNet300100(num_classes=1)
    with pytest.raises(TypeError, match=r"in_channels must be an int, got float \(1.0\)"):
        tc.models.SmallCNN(in_channels=1.0)
    with pytest.raises(ValueError, match=r"channels must be a pair \(c1, c2\), got \(8,\)"):
        tc.models.SmallCNN(channels=(8,))
    with pytest.raises(ValueError, match=r"widths must have three entries, got \(8, 16\)"):
        tc.models.ResNet8(widths=(8, 16))
    with pytest.raises(TypeError, match=r"widths must be a tuple of three ints, got int \(16\)"):
        tc.models.ResNet8(widths=16)
    with pytest.raises(ValueError, match=r"widths\[2\] must be >= 1, got 0"):
        tc.models.ResNet8(widths=(8, 16, 0))
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        tc.models.MobileNetV2Tiny(num_classes=1)
    with pytest.raises(TypeError, match=r"expand must be an int, got float \(4.0\)"):
        tc.models.MobileNetV2Tiny(expand=4.0)


# ---------------------------------------------------------------- residual and depthwise networks


def _conv_bn(c_in, c_out, k, groups=1):
    """Parameters of a bias-free convolution and its BatchNorm (weight and bias)."""
    return c_in // groups * c_out * k * k + 2 * c_out


def test_resnet8_architecture():
    m = tc.models.ResNet8()
    stem = _conv_bn(1, 16, 3)
    blocks = [2 * _conv_bn(16, 16, 3),  # identity shortcut
              _conv_bn(16, 32, 3) + _conv_bn(32, 32, 3) + _conv_bn(16, 32, 1),  # 1x1 projection shortcut
              _conv_bn(32, 64, 3) + _conv_bn(64, 64, 3) + _conv_bn(32, 64, 1)]
    assert _n_params(m) == stem + sum(blocks) + 64 * 10 + 10 == 77_754
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    weighted = [x for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) - 2 == 8  # the two projections are not on the main path
    # 3x3 convs at 28, 28, 28, 14, 14, 7, 7 (stride 2 counted at the output), 1x1 projections, classifier; 2 per MAC
    macs = 9 * (28 * 28 * (16 + 16 * 16 * 2) + 14 * 14 * (16 * 32 + 32 * 32) + 7 * 7 * (32 * 64 + 64 * 64))
    macs += 14 * 14 * 16 * 32 + 7 * 7 * 32 * 64 + 64 * 10
    assert tc.flops(m, torch.zeros(1, 1, 28, 28)) == 2 * macs == 18_691_840
    m2 = tc.models.ResNet8(in_channels=3, num_classes=5, widths=(4, 8, 12))
    assert m2(torch.zeros(1, 3, 28, 28)).shape == (1, 5) and m2.widths == (4, 8, 12)
    assert isinstance(m2.blocks[0].shortcut, torch.nn.Identity)
    assert isinstance(tc.models.ResNet8(widths=(8, 8, 8)).blocks[1].shortcut, torch.nn.Sequential)  # stride 2


def _inverted(c_in, c_out, t):
    """Parameters of an inverted residual block: 1x1 expansion, 3x3 depthwise, 1x1 projection, each with BN."""
    h = t * c_in
    return _conv_bn(c_in, h, 1) + _conv_bn(h, h, 3, groups=h) + _conv_bn(h, c_out, 1)


def test_mobilenetv2_tiny_architecture():
    m = tc.models.MobileNetV2Tiny()
    widths = [16, 16, 24, 24, 32, 32]
    blocks = sum(_inverted(a, b, 4) for a, b in zip(widths, widths[1:], strict=False))
    assert _n_params(m) == _conv_bn(1, 16, 3) + blocks + _conv_bn(32, 128, 1) + 128 * 10 + 10 == 34_682
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert [b.add is not None for b in m.blocks] == [True, False, True, False, True]  # stride 1 and c_in == c_out
    assert [b.depthwise[0].stride for b in m.blocks] == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert sum(isinstance(x, torch.nn.ReLU6) for x in m.modules()) == 1 + 2 * 5 + 1
    assert not any(isinstance(x, torch.nn.ReLU) for x in m.modules())
    assert not any(isinstance(b.project[-1], (torch.nn.ReLU6, torch.nn.ReLU)) for b in m.blocks)  # linear bottleneck
    m2 = tc.models.MobileNetV2Tiny(in_channels=3, num_classes=4, expand=2)
    assert m2(torch.zeros(1, 3, 28, 28)).shape == (1, 4) and m2.blocks[4].depthwise[0].groups == 64


@pytest.mark.parametrize("make, n_add, n_depthwise", [(tc.models.ResNet8, 3, 0), (tc.models.MobileNetV2Tiny, 3, 5)])
def test_residual_networks_trace_with_additions_and_depthwise_convs(make, n_add, n_depthwise):
    m = make().eval()
    g = tc.surgery.trace(m, torch.zeros(2, 1, 28, 28))
    adds = [n for n in g.nodes if isinstance(n.target, tc.surgery.Add)]
    assert len(adds) == n_add == sum(isinstance(x, tc.surgery.Add) for x in m.modules())
    for n in adds:
        assert len(n.inputs) == 2 and n.out_shape == g.nodes[n.inputs[0]].out_shape == g.nodes[n.inputs[1]].out_shape
    assert "add" not in {n.name for n in g.nodes}  # no addition outside the Add modules
    depthwise = [n for n in g.nodes if isinstance(n.target, torch.nn.Conv2d) and n.target.groups > 1]
    assert len(depthwise) == n_depthwise
    for n in depthwise:
        conv = n.target
        assert conv.groups == conv.in_channels == conv.out_channels and conv.weight.shape[1:] == (1, 3, 3)
    # every BatchNorm reads exactly one convolution's output, and only it reads that output (foldable)
    for n in g.nodes:
        if isinstance(n.target, torch.nn.BatchNorm2d):
            (src,) = n.inputs
            assert isinstance(g.nodes[src].target, torch.nn.Conv2d) and g.nodes[src].consumers == [g.nodes.index(n)]
    assert torch.equal(g.output, m(torch.zeros(2, 1, 28, 28)))


def test_resnet8_additions_join_main_path_and_shortcut():
    m = tc.models.ResNet8().eval()
    g = tc.surgery.trace(m, torch.zeros(1, 1, 28, 28))
    names = {n.module_name: i for i, n in enumerate(g.nodes)}
    for b, shortcut in [(0, "blocks.0.shortcut"), (1, "blocks.1.shortcut.1"), (2, "blocks.2.shortcut.1")]:
        add = g.nodes[names[f"blocks.{b}.add"]]
        assert add.inputs == sorted([names[f"blocks.{b}.bn2"], names[shortcut]])


# ---------------------------------------------------------------- pretrained


@pytest.mark.parametrize("name", ["lenet300100", "lenet5", "smallcnn", "resnet8", "mobilenetv2_tiny"])
def test_pretrained_loads_in_eval_mode_with_stored_accuracy(name):
    entry = checkpoint_manifest()[name]
    model = tc.models.pretrained(name)
    assert not model.training and all(not m.training for m in model.modules())
    load = {"mnist_sample": tc.data.load_mnist_sample, "digits": tc.data.load_digits}[entry["dataset"]]
    _, test = load()
    # Same bytes (the hash is checked on load), but another CPU's summation order may flip one near-tie prediction.
    assert abs(tc.evaluate(model, test).accuracy - entry["test_accuracy"]) <= 1 / len(test) + 1e-12


# >= 98 % on the 1,000 held-out images and on each 500-image half, for both networks
SPLIT_TARGETS = {"resnet8": 0.98, "mobilenetv2_tiny": 0.98}


@pytest.mark.parametrize("name, cls", [("resnet8", tc.models.ResNet8), ("mobilenetv2_tiny", tc.models.MobileNetV2Tiny)])
def test_pretrained_residual_networks(name, cls):
    entry = checkpoint_manifest()[name]
    assert entry["bytes"] < 1_000_000 and entry["dataset"] == "mnist_sample" and entry["threads"] == 1
    assert entry["test_accuracy"] >= 0.98 and entry["test_size"] == 1000
    model = tc.models.pretrained(name)  # checks the SHA-256
    assert type(model) is cls and not any(m.training for m in model.modules())
    assert _n_params(model) == _n_params(cls())
    splits = tc.data.load_splits("mnist_sample")
    for part in ("val", "test"):
        stored = tc.models.baseline(name, part)
        assert stored.accuracy >= SPLIT_TARGETS[name] and stored.n == 500
        # eval mode: BatchNorm uses its running statistics, so the score is a function of the stored bytes alone
        assert tc.evaluate(model, getattr(splits, part)).accuracy == stored.accuracy
    x = splits.test.tensors[0][:32]
    with torch.no_grad():  # eval mode: an image's logits do not depend on the rest of its batch
        assert torch.allclose(model(x)[:4], model(x[:4]), rtol=0, atol=1e-5)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # trained statistics
        assert bn.num_batches_tracked > 0 and not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_pretrained_tinygpt_has_its_stored_perplexity():
    entry = checkpoint_manifest()["tinygpt"]
    model = tc.models.pretrained("tinygpt")
    assert isinstance(model, tc.models.TinyGPT) and not model.training
    corpus = tc.data.load_text()
    assert model.vocab_size == corpus.vocab_size
    # same bytes; another CPU sums in another order, which moves the last digits only
    assert tc.metrics.perplexity(model, corpus.test) == pytest.approx(entry["test_perplexity"], rel=1e-4)


def test_pretrained_device(device):
    model = tc.models.pretrained("smallcnn", device=device)
    assert next(model.parameters()).device.type == torch.device(device).type


def test_pretrained_unknown_name():
    names = r"\['lenet300100', 'lenet5', 'mobilenetv2_tiny', 'resnet8', 'smallcnn', 'tinygpt'\]"
    with pytest.raises(ValueError, match=rf"name must be one of {names}, got 'resnet'"):
        tc.models.pretrained("resnet")


def test_pretrained_hash_mismatch(tmp_path):
    shutil.copy(CHECKPOINT_DIR / "manifest.json", tmp_path)
    shutil.copy(CHECKPOINT_DIR / "smallcnn.pt", tmp_path)
    assert not tc.models.pretrained("smallcnn", root=tmp_path).training  # the intact copy loads
    data = bytearray((tmp_path / "smallcnn.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "smallcnn.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"SHA-256 mismatch for .*smallcnn.pt: the file hashes to [0-9a-f]{64}"):
        tc.models.pretrained("smallcnn", root=tmp_path)


def test_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        tc.models.pretrained("lenet5", root=tmp_path)
    shutil.copy(CHECKPOINT_DIR / "manifest.json", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*lenet5.pt listed in .*manifest.json is missing"):
        tc.models.pretrained("lenet5", root=tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="has no entry 'lenet5'"):
        tc.models.pretrained("lenet5", root=tmp_path)


# ---------------------------------------------------------------- TinyGPT


def _gpt(**kw):
    torch.manual_seed(0)
    return tc.models.TinyGPT(**{"vocab_size": 11, "d_model": 64, "n_layers": 2, "n_heads": 4, "context": 16, **kw})


def test_tinygpt_parameters_names_and_shapes():
    v, d, L, t = 11, 64, 2, 16
    m = _gpt()
    assert _n_params(m) == L * (12 * d * d + 13 * d) + v * d + t * d + 2 * d + d * v
    linears = {n for n, x in m.named_modules() if isinstance(x, torch.nn.Linear)}
    assert linears == {f"blocks.{i}.{p}" for i in range(L) for p in
                       ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2"]} | {"head"}
    assert m.head.bias is None and m.head.weight.data_ptr() != m.tok.weight.data_ptr()  # untied
    assert m.blocks[0].mlp.fc1.out_features == 4 * d
    assert not any(isinstance(x, torch.nn.Dropout) for x in m.modules())
    x = torch.randint(0, v, (3, 9))
    assert m(x).shape == (3, 9, v) and m(x[:, :1]).shape == (3, 1, v)


def test_tinygpt_attention_equals_scaled_dot_product_attention(dtype):
    from tensorcompress.models.tinygpt import causal_attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 7, 16, generator=g, dtype=dtype) for _ in range(3))
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal_attention(q, k, v), ref, **tol)
    # the module: heads split, attended and merged as SDPA does it
    m = _gpt().to(dtype).blocks[0].attn
    x = torch.randn(2, 7, 64, generator=g, dtype=dtype)

    def heads(y):
        return y.view(2, 7, 4, 16).transpose(1, 2)

    sdpa = torch.nn.functional.scaled_dot_product_attention(heads(m.q(x)), heads(m.k(x)), heads(m.v(x)),
                                                            is_causal=True)
    torch.testing.assert_close(m(x), m.o(sdpa.transpose(1, 2).reshape(2, 7, 64)), **tol)


def test_tinygpt_is_causal():
    m = _gpt().eval()
    x = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(2))
    out = m(x)
    for t in [0, 5, 15]:
        y = x.clone()
        y[:, t:] = (y[:, t:] + 1 + torch.arange(16 - t)) % 11  # every token from t on changed
        changed = m(y)
        assert torch.equal(changed[:, :t], out[:, :t])
        assert not torch.allclose(changed[:, t], out[:, t])
    assert torch.allclose(m(x[:, :9]), out[:, :9], atol=1e-6)  # a shorter input is the same prefix


def test_tinygpt_flops_count_attention():
    b, t, d, L, v = 2, 16, 64, 2, 11
    m = _gpt()
    linear = L * (4 * d * d + 2 * 4 * d * d) + d * v  # multiply-adds per token
    attention = L * 2 * t * t * d  # QKᵀ and AV per sequence
    assert tc.flops(m, torch.randint(0, v, (b, t))) == 2 * b * (t * linear + attention)


def test_tinygpt_follows_device_and_dtype(device, dtype):
    m = _gpt().to(device=device, dtype=dtype)
    out = m(torch.randint(0, 11, (2, 5), device=device))
    assert out.dtype == dtype and out.device.type == torch.device(device).type


def test_tinygpt_bad_arguments():
    with pytest.raises(ValueError, match="d_model must be a multiple of 64, got 96"):
        _gpt(d_model=96)
    with pytest.raises(ValueError, match="d_model must be >= 64, got 32"):
        _gpt(d_model=32)
    with pytest.raises(ValueError, match="n_heads must divide d_model = 64, got 3"):
        _gpt(n_heads=3)
    with pytest.raises(ValueError, match="vocab_size must be >= 2, got 1"):
        _gpt(vocab_size=1)
    with pytest.raises(TypeError, match=r"n_layers must be an int, got float \(2.0\)"):
        _gpt(n_layers=2.0)
    with pytest.raises(ValueError, match="context must be >= 1, got 0"):
        _gpt(context=0)
    with pytest.raises(TypeError):
        tc.models.TinyGPT(11, 64, 2, 4, 16)  # keyword-only
    m = _gpt()
    with pytest.raises(ValueError, match=r"tokens of shape B x T with 1 <= T <= context = 16, got \(2, 17\)"):
        m(torch.zeros(2, 17, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"got \(16,\)"):
        m(torch.zeros(16, dtype=torch.int64))
    with pytest.raises(TypeError, match="TinyGPT expects integer tokens, got dtype torch.float32"):
        m(torch.zeros(2, 4))

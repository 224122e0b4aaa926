"""ONNX export (tc.export.to_onnx) run by ONNX Runtime: float graphs equal PyTorch, QDQ graphs carry the library's
own codes and scales and agree with its fake quantization layer by layer, refusals name what they refuse, writes
are atomic, input models untouched."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_model_unchanged, model_state
from torch import nn

import tensorcompress as tc
from tensorcompress.export import onnx_session, to_onnx
from tensorcompress.quantization import ActivationQuantizer, calibrate, quantize, quantize_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

MODELS = {"lenet5": tc.models.LeNet5, "smallcnn": tc.models.SmallCNN, "resnet8": tc.models.ResNet8,
          "mobilenetv2_tiny": tc.models.MobileNetV2Tiny}


def _model(name: str) -> nn.Module:
    """An untrained model in eval mode whose BatchNorms hold non-trivial statistics (so folding them matters)."""
    torch.manual_seed(0)
    model = MODELS[name]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _run(path, x: torch.Tensor) -> np.ndarray:
    return onnx_session(path).run(None, {"input": x.numpy()})[0]


def _quantized(model: nn.Module, calibration: torch.Tensor, **options) -> nn.Module:
    """fuse_conv_bn (where there is a BatchNorm) → quantize_model (a QuantizedAdd at each addition) → calibrate."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model, _ = tc.surgery.fuse_conv_bn(model, calibration[:2])
    qmodel, _ = quantize_model(model, **options)
    return calibrate(qmodel, calibration)


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(os.fspath(path)).graph.initializer}


def _codes_by_quantizer(path, qmodel: nn.Module, x: torch.Tensor) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(quantizer name, ONNX Runtime's codes, the library's codes) for every QuantizeLinear of the graph."""
    proto = onnx.load(os.fspath(path))
    qnodes = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    for n in qnodes:
        proto.graph.output.append(helper.make_empty_tensor_value_info(n.output[0]))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the Q outputs as they are
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[1:]
    library = {}

    def record(name):
        def hook(module, inputs):
            library[name] = quantize(inputs[0], module.qparams()).numpy()
        return hook

    hooks = [aq.register_forward_pre_hook(record(name)) for name, aq in qmodel.named_modules()
             if isinstance(aq, ActivationQuantizer)]
    try:
        with torch.no_grad():
            qmodel(x)
    finally:
        for h in hooks:
            h.remove()
    return [(n.input[1].removesuffix(".scale"), g, library[n.input[1].removesuffix(".scale")])
            for n, g in zip(qnodes, got, strict=True)]


def _assert_codes_agree_end_to_end(codes) -> None:
    """The network's input codes equal; every later quantizer's within one step but for under 1 % of them. A code
    that rounds the other way at a tie moves the next layers' inputs too, and untrained networks amplify it."""
    assert np.array_equal(codes[0][1], codes[0][2]), codes[0][0]
    for q, ort_codes, lib_codes in codes:
        diff = np.abs(ort_codes.astype(np.int64) - lib_codes.astype(np.int64))
        assert (diff > 1).mean() < 0.01 and diff.mean() < 0.1, q


# ---------------------------------------------------------------------------------------------------------------
# float graphs
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_float_export_equals_pytorch_at_any_batch_size(name, tmp_path):
    model = _model(name)
    before = model_state(model)
    path = tmp_path / f"{name}.onnx"
    size = to_onnx(model, _inputs(2), path)
    assert size == path.stat().st_size > 0
    proto = onnx.load(os.fspath(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    for n in (1, 7):
        x = _inputs(n, seed=n)
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(_run(path, x), want, atol=1e-4, rtol=0)
    assert_model_unchanged(model, before)


def test_pruned_model_exports_its_zeros_and_keeps_its_masks(tmp_path):
    model, _ = tc.pruning.prune(_model("lenet5"), amount=0.6)
    before = model_state(model)
    to_onnx(model, _inputs(2), tmp_path / "pruned.onnx")
    stored = _initializers(tmp_path / "pruned.onnx")
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        mask = getattr(model, layer).weight_mask.numpy()
        w = stored[f"{layer}.weight"]
        assert (w[mask == 0] == 0).all() and (mask == 0).mean() > 0.5
        np.testing.assert_array_equal(w, getattr(model, layer).weight.detach().numpy())
    x = _inputs(7)
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "pruned.onnx", x), model(x).numpy(), atol=1e-4, rtol=0)
    assert all(hasattr(getattr(model, n), "weight_orig") for n in ("conv1", "fc1"))  # masks still there
    assert_model_unchanged(model, before)


@pytest.mark.parametrize("variant", ["shared", "tucker", "svd"])
def test_shared_and_factorised_models_export_as_plain_layers(variant, tmp_path):
    model = _model("lenet5")
    if variant == "shared":
        model, _ = tc.quantization.share_weights(model, bits=3)
    else:
        model, _ = tc.layers.factorize(model, method=variant, ratio=0.5,
                                       include=["conv2"] if variant == "tucker" else ["fc1"])
    path = tmp_path / f"{variant}.onnx"
    to_onnx(model, _inputs(2), path)
    ops = {n.op_type for n in onnx.load(os.fspath(path)).graph.node}
    assert ops <= {"Conv", "MaxPool", "Gemm", "MatMul", "Add", "Flatten", "Relu", "Reshape"}  # no gather of codes
    if variant == "shared":
        assert len(np.unique(_initializers(path)["fc1.weight"])) <= 8
    x = _inputs(7)
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, x), model(x).numpy(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# QDQ graphs
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    splits = tc.data.load_splits("mnist_sample")
    test = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    train = torch.stack([splits.train[i][0] for i in range(256)])
    return train, test


@pytest.fixture(scope="module")
def lenet_qdq(mnist, tmp_path_factory):
    train, _ = mnist
    qmodel, _ = quantize_model(tc.models.pretrained("lenet5"))
    calibrate(qmodel, train)
    path = tmp_path_factory.mktemp("qdq") / "lenet5_int8.onnx"
    to_onnx(qmodel, train[:2], path)
    return qmodel, path


def test_qdq_lenet5_agrees_with_fake_quantization(mnist, lenet_qdq):
    _, test = mnist
    qmodel, path = lenet_qdq
    with torch.no_grad():
        want = qmodel(test).numpy()
    got = _run(path, test)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    # every activation code within one step of the library's, and nearly all equal (ties round differently:
    # the library multiplies by 1/S, ONNX divides by S)
    for name, ort_codes, lib_codes in _codes_by_quantizer(path, qmodel, test):
        diff = np.abs(ort_codes.astype(np.int64) - lib_codes.astype(np.int64))
        assert diff.max() <= 1, name
        assert (diff > 0).mean() < 0.01, name
    # the logits: within what one step of every input code of the last layer moves them
    fc2 = qmodel.fc2
    step = fc2.input_quantizer.scale * fc2.layer.parametrizations.weight.original.detach().abs().sum(1).max()
    assert np.abs(got - want).max() <= float(step)


def test_qdq_initializers_hold_the_library_codes_and_scales(lenet_qdq):
    qmodel, path = lenet_qdq
    stored = _initializers(path)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        q = getattr(qmodel, name)
        w = q.layer.parametrizations.weight.original.detach()
        qp = q.layer.parametrizations.weight[0].qparams(w)
        codes = stored[f"{name}.layer.codes"]
        assert codes.dtype == np.int8 and codes.min() >= -127
        np.testing.assert_array_equal(codes, quantize(w, qp).numpy())
        np.testing.assert_array_equal(stored[f"{name}.layer.w_scale"], qp.scale.numpy())
        assert stored[f"{name}.layer.w_zero"].dtype == np.int8 and not stored[f"{name}.layer.w_zero"].any()
        aq = q.input_quantizer.qparams()
        np.testing.assert_array_equal(stored[f"{name}.input_quantizer.scale"], aq.scale.numpy())
        zero = stored[f"{name}.input_quantizer.zero_point"]
        assert zero.dtype == np.uint8 and int(zero) == int(aq.zero_point)
        # int32 bias on the accumulator's scale S_x S_c
        b_scale = stored[f"{name}.layer.b_scale"]
        np.testing.assert_allclose(b_scale, (aq.scale * qp.scale).numpy(), rtol=1e-7)
        bias = q.layer.bias.detach().numpy().astype(np.float64)
        np.testing.assert_array_equal(stored[f"{name}.layer.bias_codes"], np.round(bias / b_scale.astype(np.float64)))
    ops = {n.op_type for n in onnx.load(os.fspath(path)).graph.node}
    assert "Identity" not in ops and {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2_tiny"])
def test_qdq_residual_networks_quantize_both_inputs_and_the_output_of_each_add(name, tmp_path):
    x = _inputs(64)
    qmodel = _quantized(_model(name), x)
    before = model_state(qmodel)
    path = tmp_path / f"{name}_int8.onnx"
    to_onnx(qmodel, x[:2], path)
    proto = onnx.load(os.fspath(path))
    made_by = {o: n for n in proto.graph.node for o in n.output}
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 3
    for add in adds:
        assert all(made_by[i].op_type == "DequantizeLinear" for i in add.input)
        consumers = [n for n in proto.graph.node if add.output[0] in n.input]
        assert [n.op_type for n in consumers] == ["QuantizeLinear"]
    _assert_codes_agree_end_to_end(_codes_by_quantizer(path, qmodel, x))
    with torch.no_grad():
        want = qmodel(x).numpy()
    assert (_run(path, x).argmax(1) == want.argmax(1)).mean() >= 0.95  # 64 random inputs: at most 3 flips
    assert_model_unchanged(qmodel, before)


def test_preprocessed_qdq_graph_computes_the_same(tmp_path):
    x = _inputs(32)
    qmodel = _quantized(_model("resnet8"), x)
    to_onnx(qmodel, x[:2], tmp_path / "plain.onnx")
    to_onnx(qmodel, x[:2], tmp_path / "pre.onnx", preprocess=True)
    np.testing.assert_allclose(_run(tmp_path / "pre.onnx", x), _run(tmp_path / "plain.onnx", x), atol=1e-5)
    to_onnx(_model("resnet8"), x[:2], tmp_path / "float_pre.onnx", preprocess=True)
    with torch.no_grad():
        np.testing.assert_allclose(_run(tmp_path / "float_pre.onnx", x), _model("resnet8")(x).numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# refusals, bad input, atomic writes
# ---------------------------------------------------------------------------------------------------------------

def _tt_model():
    return nn.Sequential(nn.Flatten(), tc.layers.TTLinear((4, 7, 28), (2, 5, 10), rank=2), nn.ReLU())


@pytest.mark.parametrize("make, words", [
    (lambda x: tc.quantization.to_integer(_quantized(_model("lenet5"), x), x[:2])[0], ["integer", "quantize_model"]),
    (lambda x: tc.quantization.quantize_weights(_model("lenet5"), bits=4)[0], ["fc1", "WeightOnlyLinear"]),
    (lambda x: _tt_model(), ["'1'", "TTLinear"]),
    (lambda x: quantize_model(_model("lenet5"))[0], ["conv1.input_quantizer", "calibrate"]),
    (lambda x: _quantized(_model("lenet5"), x, act_bits=4), ["conv1.input_quantizer", "[0, 15]"]),
    (lambda x: _quantized(_model("lenet5"), x, weight_bits=12), ["conv1", "int8"]),
    (lambda x: calibrate(quantize_model(_model("lenet5"), weight_bits=None)[0], x), ["conv1", "weight_bits"]),
    (lambda x: quantize_model(_model("lenet5"), act_bits=None)[0], ["conv1", "act_bits"]),
    (lambda x: calibrate(quantize_model(_model("resnet8"))[0], x), ["stem.1", "fuse_conv_bn"]),
    (lambda x: _model("lenet5").double(), ["conv1.weight", "float64"]),
], ids=["integer", "weight_only", "tt", "uncalibrated", "act_bits4", "weight_bits12", "inputs_only",
        "weights_only", "batchnorm_unfolded", "float64"])
def test_refused_models_are_named(make, words, tmp_path):
    model = make(_inputs(16))
    before = model_state(model)
    with pytest.raises(ValueError) as e:
        to_onnx(model, _inputs(2), tmp_path / "m.onnx")
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not os.listdir(tmp_path)
    assert_model_unchanged(model, before)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model"):
        to_onnx("lenet", _inputs(2), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="example_input"):
        to_onnx(_model("lenet5"), _inputs(2).double(), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="preprocess"):
        to_onnx(_model("lenet5"), _inputs(2), tmp_path / "m.onnx", preprocess=1)
    with pytest.raises(ValueError, match="threads"):
        onnx_session(tmp_path / "m.onnx", threads=0)
    with pytest.raises(FileNotFoundError, match="m.onnx"):
        onnx_session(tmp_path / "m.onnx")


def test_unwritable_path_is_named(tmp_path):
    path = tmp_path / "no_such_folder" / "m.onnx"
    with pytest.raises(OSError, match="no_such_folder"):
        to_onnx(_model("lenet5"), _inputs(2), path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="m.onnx"):
        to_onnx(_model("lenet5"), _inputs(2), path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]  # no temporary file left
    monkeypatch.undo()
    with pytest.raises(ValueError):  # a refused model leaves it too
        to_onnx(_tt_model(), _inputs(2), path)
    assert path.read_bytes() == b"old"


def test_session_settings(tmp_path):
    to_onnx(_model("lenet5"), _inputs(2), tmp_path / "m.onnx")
    session = onnx_session(tmp_path / "m.onnx")
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert onnx_session(tmp_path / "m.onnx", threads=2).get_session_options().intra_op_num_threads == 2


def test_missing_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"tensorcompress\[onnx\]"):
        to_onnx(_model("lenet5"), _inputs(2), tmp_path / "m.onnx")


def test_import_tensorcompress_needs_no_onnx():
    code = "import sys, tensorcompress; assert not {'onnx', 'onnxruntime'} & set(sys.modules), 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("options", [{"per_channel": False}, {"method": "lsq"}, {"weight_bits": 4}],
                         ids=["per_tensor", "lsq", "weight_bits4"])
def test_qdq_other_quantizer_settings_carry_their_parameters(options, tmp_path):
    x = _inputs(64)
    qmodel = _quantized(_model("lenet5"), x, **options)
    path = tmp_path / "m.onnx"
    to_onnx(qmodel, x[:2], path)
    stored = _initializers(path)
    for name in ("conv1", "fc1"):
        layer = getattr(qmodel, name).layer
        w = layer.parametrizations.weight.original.detach()
        qp = layer.parametrizations.weight[0].qparams(w)
        np.testing.assert_array_equal(stored[f"{name}.layer.codes"], quantize(w, qp).numpy())
        np.testing.assert_array_equal(stored[f"{name}.layer.w_scale"], qp.scale.numpy())
    if "weight_bits" in options:
        # the int32 bias is rounded to half an accumulator step S_x S_c, 16x coarser with 4-bit weights: at conv1
        # (25 inputs per output) that is a sizeable part of conv2's input step, and codes move from there on
        with torch.no_grad():
            assert (_run(path, x).argmax(1) == qmodel(x).numpy().argmax(1)).mean() >= 0.95
    else:
        _assert_codes_agree_end_to_end(_codes_by_quantizer(path, qmodel, x))


class _BatchAsNumber(nn.Module):
    """A forward pass that turns the batch size into a Python number: tracing fixes it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) / float(x.shape[0])


def test_graph_fixed_to_one_batch_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch size 4"):
        to_onnx(_BatchAsNumber(), torch.ones(3, 4), tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# add-ReLU fusion: no float step between the blocks
# ---------------------------------------------------------------------------------------------------------------
def test_fused_add_relu_exports_an_int8_graph_end_to_end(tmp_path):
    """``quantize_model`` with an example input fuses each block's ReLU into its addition; the export then drops
    the ReLU and the requantization that follow (identities, see ``_drop_requantization``), and ONNX Runtime runs
    every convolution, addition, the global pooling and the classifier as int8 kernels."""
    x = _inputs(64)
    model, _ = tc.surgery.fuse_conv_bn(_model("resnet8"), x[:2])
    qmodel, report = quantize_model(model, x[:2])
    assert sum(getattr(r, "relu", False) is True for r in report) == 3
    calibrate(qmodel, x)
    path = tmp_path / "fused.onnx"
    to_onnx(qmodel, x[:2], path)
    proto = onnx.load(os.fspath(path))
    made_by = {o: n for n in proto.graph.node for o in n.output}
    assert not any(n.op_type in ("Relu", "QuantizeLinear") and getattr(made_by.get(n.input[0]), "op_type", None)
                   == "DequantizeLinear" for n in proto.graph.node)  # ReLUs left read sums and convolutions
    # a sum quantized after its ReLU has a finer step than its inputs (S_in / S_out up to 2.4 on trained ResNet-8),
    # so one input code rounded the other way at a tie moves it by two or three steps: allow 3 % of them
    codes = _codes_by_quantizer(path, qmodel, x)
    assert np.array_equal(codes[0][1], codes[0][2])
    for q, ort_codes, lib_codes in codes:
        diff = np.abs(ort_codes.astype(np.int64) - lib_codes.astype(np.int64))
        assert (diff > 1).mean() < 0.03 and diff.mean() < 0.1, q
    with torch.no_grad():
        want = qmodel(x).numpy()
    assert (_run(path, x).argmax(1) == want.argmax(1)).mean() >= 0.95
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
    ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 9 and ops.count("QLinearAdd") == 3, ops
    assert not {"Conv", "Add", "Relu", "DequantizeLinear", "GlobalAveragePool"} & set(ops), ops


def _chain(relu_zero_point: int, second_scale: float, dtype=np.uint8):
    """input → Q(0.1, Z) → DQ → Relu → Q(s2, Z) → DQ → Neg → output, parameters as initializers."""
    z = np.array(relu_zero_point, dtype)
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s1"), numpy_helper.from_array(z, "z"),
             numpy_helper.from_array(np.array(second_scale, np.float32), "s2")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s1", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z"], ["d1"]),
             helper.make_node("Relu", ["d1"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["d2"]),
             helper.make_node("Neg", ["d2"], ["logits"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("zero_point, scale, dtype, kept", [
    (0, 0.1, np.uint8, []),                    # both identities: nothing left between the two pairs
    (0, 0.2, np.uint8, ["QuantizeLinear"]),    # another scale: a real requantization
    (3, 0.1, np.uint8, ["Relu", "QuantizeLinear"]),  # codes below Z dequantize below 0: the ReLU acts
    (0, 0.1, np.int8, ["Relu", "QuantizeLinear"]),   # int8's zero point 0 is not its smallest code
])
def test_drop_requantization_removes_only_identities(zero_point, scale, dtype, kept):
    from tensorcompress.export.onnx import _drop_requantization

    proto = _chain(zero_point, scale, dtype)
    x = np.linspace(-3, 3, 8, dtype=np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graphs as written

    def run(p):
        return ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]

    before = run(proto)
    _drop_requantization(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert [op for op in ops[1:] if op in ("Relu", "QuantizeLinear")] == kept, ops
    assert ops.count("DequantizeLinear") == 1 + ("QuantizeLinear" in kept) and ops[-1] == "Neg", ops
    np.testing.assert_array_equal(run(proto), before)

r"""ONNX export: a float model as plain ONNX, a calibrated fake-quantized model as QDQ ONNX, run by ONNX Runtime.

:func:`to_onnx` writes one graph of opset 17 with one input ``"input"`` and one output ``"logits"``, the batch
axis (0) dynamic; :func:`onnx_session` opens it in ONNX Runtime on the CPU with the benchmarks' settings.

**Float models.** The model is copied and, on the copy, every ``torch.nn.utils.prune`` mask is made permanent
(:math:`W = W_{\text{orig}} \odot M`, so pruned weights are stored zeros), every weight parametrization is
evaluated once and stored as a plain weight (a shared codebook decoded, :math:`W = c[I]`), and the forward pass
is exported as it is: a factorised layer becomes its convolutions or linear maps (Tucker-2: 1×1, k×k, 1×1; CP:
1×1, k×1, 1×k, 1×1; SVD: two linear maps), a ``tc.surgery.Add`` an ``Add``. The exporter folds each BatchNorm
into the convolution before it (eval mode). The graph is traced, so :func:`to_onnx` runs it in ONNX Runtime on
``example_input`` plus one sample and compares with the model: a forward pass that fixed the batch size as a
Python number is refused rather than written.

**Fake-quantized models** (:func:`tensorcompress.quantization.quantize_model`, calibrated) become QDQ graphs that
carry the library's own parameters, in the operator semantics of ONNX (opset 13 on):

.. math:: \operatorname{QuantizeLinear}(x) = \operatorname{sat}\bigl(\operatorname{round}(x / S) + Z\bigr),
          \qquad \operatorname{DequantizeLinear}(q) = (q - Z)\,S

* each :class:`~tensorcompress.quantization.ActivationQuantizer` (a layer's input, both inputs and the sum of a
  :class:`~tensorcompress.quantization.QuantizedAdd`) becomes a ``QuantizeLinear`` → ``DequantizeLinear`` pair with
  its scale :math:`S` (float32) and zero point :math:`Z` (uint8 for the codes ``[0, 255]``, int8 for
  ``[-128, 127]``); other code ranges (``act_bits`` other than 8) have no ONNX type and are refused;
* each weight is stored as its int8 codes :math:`q = \operatorname{clamp}(\operatorname{round}(w/S_c), -127, 127)`
  (the :class:`~tensorcompress.quantization.WeightQuantizer`'s own codes and scales, one per output channel, axis
  0) and read through a ``DequantizeLinear``: the narrow grid fits int8 as it is, the code -128 is never used;
* each bias is stored as int32 codes on the scale :math:`S_x S_c` of the accumulator,
  :math:`q_b = \operatorname{round}(b / (S_x S_c))` — what an integer kernel adds, and what ONNX Runtime needs to
  fuse ``DequantizeLinear → Conv → QuantizeLinear`` into one int8 convolution. The library's fake quantization keeps
  the bias in float; the difference is at most :math:`S_x S_c / 2` per output, half a step of the accumulator.

The rounding differs only at ties: the library multiplies by the float32 reciprocal of :math:`S`, ONNX divides,
so an activation code may differ by one where :math:`x/S` lies next to a half-integer.

**BatchNorm must be folded before quantizing.** The library quantizes the weight it is given; a deployed int8
convolution has the BatchNorm folded into its weight, :math:`W' = \gamma W / \sqrt{\sigma^2 + \varepsilon}`, and
per-tensor codes of :math:`W` are not codes of :math:`W'`. So the order is ``fuse_conv_bn`` → ``quantize_model``
→ ``calibrate`` → ``to_onnx``; a BatchNorm that reads a quantized layer's output is refused, naming it.

**Refused, by name**: integer-only models (:func:`~tensorcompress.quantization.to_integer`: export the calibrated
fake-quantized model they come from), weight-only layers
(:class:`~tensorcompress.quantization.WeightOnlyLinear`), layers without a convolution or linear form
(:class:`~tensorcompress.layers.TTLinear`), autocast wrappers, fake quantization of weights only or inputs only,
uncalibrated quantizers, weights of more than 8 bits, models not in float32.

**The exporter** is PyTorch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it writes opset 17
directly (the ``torch.export`` route implements opset 18 and fails to convert these graphs down to 17: the
``Reduce*`` axes), exports these models in about 0.1 s instead of 1.5–4 s, needs no network and no extra package
beyond ``onnx``, and lets each quantizer emit its own ``QuantizeLinear`` / ``DequantizeLinear`` nodes (an
``autograd.Function`` with a ``symbolic``), so that no graph has to be searched for where a quantizer was.
PyTorch marks it deprecated; the QDQ nodes would then move to a ``custom_translation_table``.

**Pre-processing** (``preprocess=True``): ``onnxruntime.quantization.quant_pre_process`` — symbolic shape
inference and ONNX Runtime's basic graph optimisations, written into the file. ONNX Runtime fuses
``DequantizeLinear → op → QuantizeLinear`` groups into int8 kernels (``QLinearConv``, ``QLinearAdd``) when a
session is opened; ``benchmarks/deployment.py`` measures both files.

References: ONNX operators ``QuantizeLinear`` / ``DequantizeLinear``; ONNX Runtime, *Quantize ONNX models* (QDQ
format); Jacob et al. (2018), *Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference*, CVPR.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tprune
from torch import nn
from torch.nn.utils import parametrize

from .._validation import check_positive_int
from ..layers import TTLinear
from ..quantization import (
    ActivationQuantizer,
    Autocast,
    IntegerClamp,
    IntegerLayer,
    IntegerMeanPool,
    IntegerNet,
    QParams,
    QuantizedLayer,
    WeightOnlyLinear,
    WeightQuantizer,
    dequantize,
    quantize,
)
from ..surgery import copy_model
from .file import _write_atomic

__all__ = ["to_onnx", "onnx_session", "OPSET", "INPUT_NAME", "OUTPUT_NAME"]

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
INSTALL = 'pip install "tensorcompress[onnx]"'

_INTEGER = "an integer-only model (to_integer): export the calibrated quantize_model model it was made from"
_REFUSED: dict[type, str] = {
    **dict.fromkeys((IntegerLayer, IntegerMeanPool, IntegerClamp, IntegerNet), _INTEGER),
    WeightOnlyLinear: "a weight-only quantized layer: ONNX has no kernel for its group-wise codes",
    TTLinear: "a TT layer has no convolution or linear form short of its dense weight (layer.to_dense())",
    Autocast: "an autocast wrapper: export the float32 model",
}
_ACT_TYPES = {(0, 255): torch.uint8, (-128, 127): torch.int8}


def _require() -> None:
    """ImportError naming the extra unless ``onnx`` and ``onnxruntime`` can be imported."""
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError as e:
            raise ImportError(f"ONNX export needs {name!r}, which the library itself does not; it comes with the onnx "
                              f"extra: {INSTALL}", name=name) from e


# ---------------------------------------------------------------------------------------------------------------
# QDQ operators: the library's arithmetic in PyTorch, ONNX's QuantizeLinear / DequantizeLinear in the graph
# ---------------------------------------------------------------------------------------------------------------

class _FakeQuant(torch.autograd.Function):
    """The library's per-tensor fake quantization; exported as ``QuantizeLinear`` → ``DequantizeLinear``."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        qp = QParams(scale, zero_point.to(torch.int32), qmin, qmax)
        return dequantize(quantize(x, qp), qp, dtype=x.dtype)  # fake_quantize's values, bit for bit

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax):
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale, zero_point)


class _Dequantize(torch.autograd.Function):
    """``(codes - Z) * S`` along axis 0; exported as one ``DequantizeLinear`` of stored integer codes."""

    @staticmethod
    def forward(ctx, codes, scale, zero_point):
        shape = (-1,) + (1,) * (codes.ndim - 1) if scale.ndim else ()
        return (codes.to(torch.float32) - zero_point.to(torch.float32).reshape(shape)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g, codes, scale, zero_point):
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=0)


class _Gemm(torch.autograd.Function):
    """``x @ w.T + b`` exported as one ``Gemm`` with ``transB=1`` (the int8 Gemm pattern ONNX Runtime fuses),
    rather than a ``Transpose`` of the dequantized weight."""

    @staticmethod
    def forward(ctx, x, w, b):
        return F.linear(x, w, b)

    @staticmethod
    def symbolic(g, x, w, b):
        return g.op("Gemm", x, w, b, transB_i=1)


class _QDQActivation(nn.Module):
    """An :class:`ActivationQuantizer`'s frozen scale and zero point, in the zero point's ONNX type."""

    def __init__(self, aq: ActivationQuantizer, name: str):
        super().__init__()
        qp = _activation_qparams(aq, name)
        self.qmin, self.qmax = qp.qmin, qp.qmax
        self.register_buffer("scale", qp.scale.detach().cpu().clone())
        self.register_buffer("zero_point", qp.zero_point.cpu().to(_ACT_TYPES[qp.qmin, qp.qmax]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeQuant.apply(x, self.scale, self.zero_point, self.qmin, self.qmax)


class _QDQLayer(nn.Module):
    """A quantized ``Conv2d`` / ``Linear`` with int8 weight codes and int32 bias codes on the accumulator's scale."""

    def __init__(self, layer: nn.Module, input_scale: torch.Tensor, name: str):
        super().__init__()
        wq = layer.parametrizations.weight[0]
        w = layer.parametrizations.weight.original.detach().cpu()
        qp = wq.qparams(w)
        if qp.qmin < -128 or qp.qmax > 127:
            raise ValueError(f"layer {name!r} has weight codes in [{qp.qmin}, {qp.qmax}]: ONNX QDQ export writes "
                             f"int8 weights (weight_bits <= 8)")
        self.conv = None
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError(f"layer {name!r}: ONNX QDQ export supports numeric zero padding, got "
                                 f"padding={layer.padding!r}, padding_mode={layer.padding_mode!r}")
            self.conv = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                         "groups": layer.groups}
        self.register_buffer("codes", quantize(w, qp.to("cpu")).to(torch.int8))
        self.register_buffer("w_scale", qp.scale.cpu().clone())
        self.register_buffer("w_zero", qp.zero_point.cpu().to(torch.int8))
        bias = layer.bias
        if bias is None and self.conv is None:  # a Gemm with int8 inputs takes its bias as an input: zeros
            bias = torch.zeros(layer.out_features)
        self.register_buffer("bias_codes", None)
        if bias is not None:
            b_scale = (input_scale.cpu() * qp.scale.cpu()).expand(bias.shape[0]).contiguous()
            codes = torch.round(bias.detach().cpu().to(torch.float64) / b_scale.to(torch.float64))
            limit = torch.iinfo(torch.int32)
            if bool((codes.abs() > limit.max).any()):
                raise ValueError(f"layer {name!r}: its bias does not fit int32 codes on the accumulator's scale "
                                 f"(input scale x weight scale = {float(b_scale.min()):.3g})")
            self.register_buffer("bias_codes", codes.to(torch.int32))
            self.register_buffer("b_scale", b_scale)
            self.register_buffer("b_zero", torch.zeros(bias.shape[0], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _Dequantize.apply(self.codes, self.w_scale, self.w_zero)
        b = None if self.bias_codes is None else _Dequantize.apply(self.bias_codes, self.b_scale, self.b_zero)
        if self.conv is not None:
            return F.conv2d(x, w, b, **self.conv)
        if x.ndim == 2:
            return _Gemm.apply(x, w, b)
        return F.linear(x, w, b)


# ---------------------------------------------------------------------------------------------------------------
# checks and the two copies
# ---------------------------------------------------------------------------------------------------------------

def _refuse(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for kind, why in _REFUSED.items():
            if isinstance(m, kind):
                raise ValueError(f"cannot export {name or 'the model'!r} ({type(m).__name__}) to ONNX: {why}")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ValueError(f"ONNX export writes float32 models: {name!r} is {t.dtype} (convert with model.float())")


def _is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (ActivationQuantizer, QuantizedLayer, WeightQuantizer)) for m in model.modules())


def _activation_qparams(aq: ActivationQuantizer, name: str) -> QParams:
    if not bool(aq.calibrated):
        raise ValueError(f"activation quantizer {name!r} is not calibrated: run tc.quantization.calibrate(model, data) "
                         f"before exporting")
    if aq.observer.axis is not None or (aq.qmin, aq.qmax) not in _ACT_TYPES:
        raise ValueError(f"activation quantizer {name!r} has codes [{aq.qmin}, {aq.qmax}] (axis "
                         f"{aq.observer.axis}): ONNX QDQ export writes per-tensor 8-bit activations, [0, 255] or "
                         f"[-128, 127] (act_bits=8)")
    return aq.qparams()


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _float_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode with prune masks made permanent and parametrizations stored as plain weights."""
    m = copy_model(model).cpu().eval()
    for module in m.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(module, hook._tensor_name)
        if parametrize.is_parametrized(module):
            _bake(module)
    return m


def _bake(module: nn.Module) -> None:
    """Store each parametrized tensor of ``module`` as a plain parameter, in place. Not
    ``parametrize.remove_parametrizations``: it deletes the tensor's property from the module's class, which a deep
    copy shares with the original model (the original would lose its weight)."""
    with torch.no_grad():
        values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
    module.__class__ = module.__class__.__bases__[0]  # the class before parametrization; the shared one untouched
    del module._modules["parametrizations"]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value, requires_grad=False))


def _qdq_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode whose quantized layers and activation quantizers export as QDQ nodes."""
    m = copy_model(model).cpu().eval()
    for name, q in list(m.named_modules()):
        if not isinstance(q, QuantizedLayer):
            continue
        if q.input_quantizer is None or not parametrize.is_parametrized(q.layer, "weight") or not isinstance(
                q.layer.parametrizations.weight[0], WeightQuantizer):
            raise ValueError(f"layer {name!r} quantizes only its {'weight' if q.input_quantizer is None else 'input'}"
                             f": ONNX QDQ export needs int8 weights and 8-bit inputs on every quantized layer "
                             f"(quantize_model with weight_bits and act_bits set)")
        qp = _activation_qparams(q.input_quantizer, f"{name}.input_quantizer")
        q.layer = _QDQLayer(q.layer, qp.scale, name)
    for name, aq in list(m.named_modules()):
        if isinstance(aq, ActivationQuantizer):
            _set(m, name, _QDQActivation(aq, name))
    for name, module in m.named_modules():
        if parametrize.is_parametrized(module) or any(
                isinstance(h, tprune.BasePruningMethod) for h in module._forward_pre_hooks.values()):
            raise ValueError(f"layer {name!r} of a quantized model has a parametrization or prune mask outside a "
                             f"quantized layer: ONNX QDQ export cannot store it")
    return m


def _inline_identities(model_proto) -> None:
    """Replace each ``Identity`` of an initializer (the exporter's de-duplication of equal tensors) by a copy of the
    initializer under the Identity's output name, in place: every quantizer's and layer's parameters then stand
    under their own names, readable with ``onnx.numpy_helper``, and the graph holds only the QDQ pattern."""
    init = {t.name: t for t in model_proto.graph.initializer}
    keep = []
    for node in model_proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in init:
            copy = model_proto.graph.initializer.add()
            copy.CopyFrom(init[node.input[0]])
            copy.name = node.output[0]
        else:
            keep.append(node)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(keep)


def _merge_twin_quantizers(model_proto) -> None:
    """Merge ``QuantizeLinear → DequantizeLinear`` pairs that read the same tensor with equal scale, zero point and
    type (two quantizers calibrated on one tensor: a block's input read by its first convolution and by its
    shortcut), in place. The values are the same; one pair lets ONNX Runtime fuse the layer that produced the
    tensor into an int8 kernel, which needs its output to reach exactly one ``QuantizeLinear``."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    dq_of = {n.input[0]: n for n in model_proto.graph.node if n.op_type == "DequantizeLinear"}
    first: dict[tuple, tuple[str, str]] = {}
    renamed: dict[str, str] = {}
    for node in model_proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.output[0] not in dq_of:
            continue
        scale, zero = init.get(node.input[1]), init.get(node.input[2])
        if scale is None or zero is None:
            continue
        key = (node.input[0], scale.tobytes(), zero.dtype.str, zero.tobytes())
        dq = dq_of[node.output[0]]
        if key in first:
            renamed[dq.output[0]] = first[key][1]
        else:
            first[key] = (node.output[0], dq.output[0])
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    _drop_dead_nodes(model_proto)  # the twin pairs no node reads any more, and their parameters


def _qparams_key(node, init: dict) -> tuple | None:
    """``(scale bytes, zero-point dtype, zero-point bytes, axis)`` of a per-tensor ``QuantizeLinear`` /
    ``DequantizeLinear`` whose parameters are initializers, ``None`` otherwise."""
    scale, zero = (init.get(name) for name in (node.input[1:3] if len(node.input) > 2 else (None, None)))
    if scale is None or zero is None or scale.size != 1:
        return None
    return scale.tobytes(), zero.dtype.str, zero.tobytes()


def _drop_requantization(model_proto) -> None:
    r"""Remove the identities that a fused add-ReLU leaves between a block's sum and the layers reading it, in place:

    * ``Relu(DequantizeLinear(q))`` where the zero point is the type's smallest code (0 for uint8): every
      dequantized value is :math:`(q - Z)S \ge 0`, so the ReLU returns its input;
    * ``DequantizeLinear(QuantizeLinear(DequantizeLinear(q)))`` with the same per-tensor scale, zero point and
      type: :math:`\operatorname{round}((q - Z)S/S) + Z = q`, so the second pair returns what the first did.

    The graph computes exactly what it did. ONNX Runtime fuses ``DequantizeLinear → op → QuantizeLinear`` into
    int8 kernels but neither removes these itself: left in place, each block's output is dequantized to float and
    quantized again (about a tenth of ResNet-8's int8 time)."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    made_by = {out: node for node in model_proto.graph.node for out in node.output}
    graph_outputs = {o.name for o in model_proto.graph.output}
    renamed: dict[str, str] = {}

    def source(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    for node in model_proto.graph.node:  # topological order: a node's inputs are settled before it
        ins = [source(i) for i in node.input]
        dq = made_by.get(ins[0]) if ins else None
        if dq is None or dq.op_type != "DequantizeLinear" or node.output[0] in graph_outputs:
            continue
        key = _qparams_key(dq, init)
        if key is None:
            continue
        if node.op_type == "Relu" and np.frombuffer(key[2], np.dtype(key[1]))[0] == np.iinfo(np.dtype(key[1])).min:
            renamed[node.output[0]] = ins[0]
        elif node.op_type == "QuantizeLinear" and _qparams_key(node, init) == key:
            readers = [n for n in model_proto.graph.node if node.output[0] in n.input]
            if readers and all(r.op_type == "DequantizeLinear" and _qparams_key(r, init) == key
                               and r.output[0] not in graph_outputs for r in readers):
                renamed.update({r.output[0]: ins[0] for r in readers})
    if not renamed:
        return
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = source(name)
    _drop_dead_nodes(model_proto)


def _drop_dead_nodes(model_proto) -> None:
    """Remove the nodes whose outputs nothing reads, and the initializers no node reads, in place."""
    needed = {o.name for o in model_proto.graph.output}
    keep = []
    for node in reversed(model_proto.graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(reversed(keep))
    kept = [t for t in model_proto.graph.initializer if t.name in needed]
    del model_proto.graph.initializer[:]
    model_proto.graph.initializer.extend(kept)


def _flatten_as_reshape(model_proto) -> None:
    """Write each ``Flatten(axis=1)`` as ``Reshape(x, [0, -1])`` (the same map), in place: ONNX Runtime moves a
    ``QuantizeLinear`` backwards through ``Reshape`` and ``MaxPool`` but not through ``Flatten``, and only a
    ``QuantizeLinear`` right after a convolution lets it run the convolution in int8 (LeNet-5's ``conv2`` →
    max-pool → flatten → ``fc1``)."""
    from onnx import helper, numpy_helper

    shape = "flatten_as_reshape.shape"
    for i, node in enumerate(model_proto.graph.node):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if node.op_type == "Flatten" and axis == 1:
            if not any(t.name == shape for t in model_proto.graph.initializer):
                model_proto.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), shape))
            model_proto.graph.node[i].CopyFrom(helper.make_node("Reshape", [node.input[0], shape], list(node.output),
                                                                name=node.name.replace("Flatten", "Reshape")))


def _check_folded(model_proto) -> None:
    """ValueError naming a BatchNorm that reads the output of a layer with a dequantized weight."""
    made_by = {out: node for node in model_proto.graph.node for out in node.output}
    for node in model_proto.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        layer = made_by.get(node.input[0])
        if layer is not None and layer.op_type in ("Conv", "Gemm") and getattr(
                made_by.get(layer.input[1]), "op_type", None) == "DequantizeLinear":
            bn = node.name.strip("/").split("/")[-2] if node.name.count("/") > 1 else node.name
            raise ValueError(f"BatchNorm {bn!r} follows a quantized layer: the library quantized the unfolded "
                             f"weight, an int8 deployment uses the folded one. Fold first: "
                             f"tc.surgery.fuse_conv_bn(model, example_input), then quantize_model and calibrate")


# ---------------------------------------------------------------------------------------------------------------
# public
# ---------------------------------------------------------------------------------------------------------------

def _export(model: nn.Module, example_input: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and the input checks it traces
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buf.getvalue()


def _check_traced(data: bytes, model: nn.Module, x: torch.Tensor) -> None:
    """ValueError unless the exported float graph computes what ``model`` does on a batch one larger than ``x`` (the
    batch axis is declared dynamic, but a forward pass that turns the batch size into a Python number is traced
    with that number fixed), and unless the model returns one tensor."""
    x = torch.cat([x, x[:1]])
    with torch.no_grad():
        want = model(x)
    if not isinstance(want, torch.Tensor):
        raise ValueError(f"model returns {type(want).__name__}: to_onnx writes models with one output tensor")
    try:
        got = torch.from_numpy(_session(data, 1).run(None, {INPUT_NAME: x.numpy()})[0])
        err = float((got - want).abs().max()) if got.shape == want.shape else math.inf
    except Exception as e:  # onnxruntime's own errors (a Reshape to the traced batch size)
        err, why = math.inf, f" ({str(e).splitlines()[0][:200]})"
    else:
        why = ""
    if err > 1e-4 * (1 + float(want.abs().max())):
        raise ValueError(f"the exported graph differs from the model at batch size {len(x)} (max |difference| "
                         f"{err:.3g}){why}: the forward pass uses the batch size as a Python number, which tracing "
                         f"fixes at example_input's")


def _preprocess(data: bytes) -> bytes:
    import onnx
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "pre.onnx")
        quant_pre_process(onnx.load_from_string(data), out)
        with open(out, "rb") as f:
            return f.read()


def to_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, *,
            preprocess: bool = False) -> int:
    """Write ``model`` as an ONNX graph (opset 17, input ``"input"``, output ``"logits"``, dynamic batch axis);
    returns the bytes written.

    Parameters
    ----------
    model : nn.Module
        A float32 model (dense, pruned, shared, factorised) — written as plain ONNX — or a calibrated
        :func:`~tensorcompress.quantization.quantize_model` model with BatchNorm folded before quantizing —
        written as QDQ ONNX with the library's own codes, scales and zero points (see the module docstring). Left
        untouched.
    example_input : tensor
        A float32 batch of the model's input; any batch size (the exported batch axis is dynamic).
    path : str or path-like
        Replaced atomically: the graph goes to a temporary file beside it, then is renamed over it, so a failed
        export or write leaves an existing file as it was.
    preprocess : bool
        Run ``onnxruntime.quantization.quant_pre_process`` (shape inference, graph optimisation) on the graph
        before writing it.

    Returns
    -------
    int
        The size of the file written.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``, ``example_input`` not a float32 tensor, ``preprocess`` not a bool.
    ValueError
        A model the export refuses (named: integer-only, weight-only, TT layers, uncalibrated or non-8-bit
        quantizers, a BatchNorm after a quantized layer, non-float32 state), or a float graph that does not
        compute what the model does at another batch size (a batch size traced as a fixed number).
    OSError
        ``path`` cannot be written (the message names it).
    ImportError
        ``onnx`` or ``onnxruntime`` is missing (``pip install "tensorcompress[onnx]"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dtype != torch.float32 or example_input.ndim < 1:
        raise TypeError(f"example_input must be a float32 tensor with a batch axis, got "
                        f"{getattr(example_input, 'dtype', type(example_input).__name__)}")
    if not isinstance(preprocess, bool):
        raise TypeError(f"preprocess must be a bool, got {type(preprocess).__name__}")
    _require()
    import onnx

    _refuse(model)
    quantized = _is_quantized(model)
    copy = _qdq_copy(model) if quantized else _float_copy(model)
    data = _export(copy, example_input.detach().cpu())
    if not quantized:
        _check_traced(data, copy, example_input.detach().cpu())
    else:
        proto = onnx.load_from_string(data)
        _check_folded(proto)
        _inline_identities(proto)
        _merge_twin_quantizers(proto)
        _drop_requantization(proto)
        _flatten_as_reshape(proto)
        data = proto.SerializeToString()
    if preprocess:
        data = _preprocess(data)
    try:
        _write_atomic(path, data)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the ONNX file {os.fspath(path)!r}: {e.strerror or e}") from e
    return len(data)


def onnx_session(path: str | os.PathLike, *, threads: int = 1):
    """An ``onnxruntime.InferenceSession`` on the CPU: ``threads`` intra-op threads, one inter-op thread,
    sequential execution, no spinning (``session.intra_op.allow_spinning = "0"``: an idle thread sleeps rather than
    burning a core the benchmark's other comparators need).

    Parameters
    ----------
    path : str or path-like
        An ONNX file (from :func:`to_onnx`).
    threads : int
        Intra-op threads, at least 1.

    Returns
    -------
    onnxruntime.InferenceSession
        Run it with ``session.run(None, {"input": x.numpy()})[0]``.
    """
    check_positive_int(threads, "threads")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file at {os.fspath(path)!r}")
    _require()
    return _session(os.fspath(path), threads)


def _session(model: str | bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

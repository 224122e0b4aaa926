r"""Whole-model fake quantization: post-training quantization (PTQ), quantization-aware training (QAT) and LSQ.

:func:`quantize_model` returns a copy of a network in which every selected ``nn.Conv2d`` / ``nn.Linear`` computes
with fake-quantized weights and inputs, where a deployed int8 model (Jacob et al. 2018) holds integers:

* **weights** — a ``torch.nn.utils.parametrize`` parametrization (``layer.parametrizations.weight``), symmetric
  signed codes in :math:`[-(2^{b-1}-1), 2^{b-1}-1]` (``[-127, 127]`` at 8 bits, so the integer kernels never see
  -128), one scale per output channel (``per_channel=True``) or per tensor, recomputed from the current weights at
  each forward so that QAT follows them;
* **activations** — an :class:`ActivationQuantizer` module on the *input* of each quantized layer (affine unsigned
  codes). A ReLU or max-pool between two layers commutes with the monotone quantizer, so this is the same as
  quantizing after the ReLU as a fused int8 conv-ReLU does. The network's output (the logits) stays float;
* **residual additions** — each :class:`tc.surgery.Add <tensorcompress.surgery.Add>` becomes a
  :class:`QuantizedAdd`, an :class:`ActivationQuantizer` at both inputs and at the sum, since an integer addition
  needs the sum's scale (``torch.ao``'s ``FloatFunctional`` for the same reason). An addition written with ``+`` is
  a torch function, which no module swap reaches: given an ``example_input``, :func:`quantize_model` traces the
  forward pass and reports each such addition as a skipped row;
* **add-ReLU fusion** — given an ``example_input``, an addition whose sum is read by a ReLU alone (a ResNet
  block's ``relu(a + b)``) quantizes *after* that ReLU: :math:`q_o(\operatorname{relu}(q_a(a) + q_b(b)))`, as an
  int8 add-ReLU kernel does (``torch.ao``'s ``add_relu``). The sum's codes then span only the values the network
  uses (calibration sees no negatives, so :math:`Z_o = 0` and no code is spent below zero), the model's own ReLU
  after it changes nothing, and the layers that read the block's output calibrate to the sum's own scale and zero
  point: a deployed graph needs no requantization between the addition and the next block.

Both live in the model (``state_dict`` included). The workflow:

1. ``qmodel, report = quantize_model(model, weight_bits=8, act_bits=8)`` — the input model is untouched;
2. :func:`calibrate` ``(qmodel, data)`` runs a few batches with the activation observers recording, then freezes
   each activation scale and zero point (PTQ ends here);
3. QAT: train ``qmodel`` with ``tc.fit``; gradients pass the rounding by the straight-through estimator.

``method="lsq"`` (Esser et al. 2019, "Learned step size quantization") makes every step size a parameter trained
with the network: :math:`\hat x = s\,\operatorname{round}(\operatorname{clip}(v, q_{\min}, q_{\max}))` with
:math:`v = x/s` (zero point 0), and their eq. 3,

.. math:: \frac{\partial \hat x}{\partial s} = \begin{cases} \operatorname{round}(v) - v & q_{\min} < v <
          q_{\max} \\ q_{\min} & v \le q_{\min} \\ q_{\max} & v \ge q_{\max}, \end{cases}

where the value is clipped the derivative of :math:`\hat x` itself (finite differences agree), inside the
straight-through estimate through the rounding. The gradient of :math:`x` is the straight-through estimator
through the rounding with the clip left as it is: 1 where :math:`q_{\min} \le v \le q_{\max}`, 0 outside. With a
zero point :math:`Z` the bounds apply to :math:`v + Z` and the clip branches are :math:`q_{\min} - Z`,
:math:`q_{\max} - Z`. The gradient of :math:`s` is multiplied by :math:`g = 1/\sqrt{N\,Q_P}` (:math:`N` the number
of weights per step — of the layer, or of one output channel per-channel — or of activation features per sample;
:math:`Q_P = q_{\max}`) so that steps and weights learn at comparable rates.

PyTorch's ``_fake_quantize_learnable_per_tensor_affine`` decides the branches on the *rounded* code instead: in
the half-step bands :math:`q_{\max} \le v \le q_{\max} + 1/2` and :math:`q_{\min} - 1/2 \le v \le q_{\min}`, where
rounding lands on the last code, it gives :math:`\operatorname{round}(v) - v` (:math:`-0.3` at :math:`v = 127.3`)
where eq. 3 gives :math:`q_{\max}` (127, as finite differences do), and passes the gradient of :math:`x` where
eq. 3's clip stops it; elsewhere the two agree.

A weight step starts from the observer (``lsq_init="observer"``: :math:`\max|w|/Q_P` with min-max) or from Esser
et al.'s :math:`s_0 = 2\,\overline{|w|}/\sqrt{Q_P}` per channel (``lsq_init="mean"``), which at 2 and 3 bits clips
the largest weights instead of rounding most of them to 0; activation steps start from :func:`calibrate`. Steps
are ordinary parameters of the model, so ``tc.fit`` (or any optimizer built on ``model.parameters()``) trains
them. The gradient scale matters for SGD; Adam divides every gradient by its own running magnitude, so :math:`g`
has almost no effect there.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import surgery
from .._validation import check_bits, check_positive_int, check_tensor
from .observers import OBSERVERS, Observer, make_observer
from .uniform import QParams, fake_quantize_unchecked, qrange

__all__ = ["ActivationQuantizer", "WeightQuantizer", "QuantizedLayer", "QuantizedAdd", "FakeQuantizedLayer",
           "FakeQuantizedAdd", "quantize_model", "calibrate", "lsq_fake_quantize", "lsq_initial_step", "quantizers"]

METHODS = ("ptq", "lsq")
LSQ_INITS = ("observer", "mean")


def _view(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None:
        return t
    shape = [1] * x.ndim
    shape[axis] = -1
    return t.reshape(shape)


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, grad_factor):
        s = _view(scale.to(torch.float32), x, axis)
        inv = 1.0 / s
        z = _view(zero_point.to(torch.float32), x, axis)
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        v = x.to(work) * inv.to(work)
        q = torch.round(v) + z.to(work)
        out = ((q.clamp(qmin, qmax) - z.to(work)) * s.to(work)).to(x.dtype)
        ctx.save_for_backward(x, out, v + z.to(work), inv, z)
        ctx.qrange, ctx.axis, ctx.grad_factor = (qmin, qmax), axis, grad_factor
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out, u, inv, z = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        # Esser et al.'s eq. 3 decides on the unrounded code u = x/s + Z, not on the rounded one (PyTorch's rule)
        below, above = u <= qmin, u >= qmax
        d_scale = torch.where(below, qmin - z, torch.where(above, qmax - z, (out - x) * inv)) * grad
        dims = [d for d in range(x.ndim) if ctx.axis is None or d != ctx.axis % x.ndim]
        d_scale = (d_scale.sum(dim=dims) * ctx.grad_factor).reshape(-1 if ctx.axis is not None else ())
        passed = (u >= qmin) & (u <= qmax)  # the clip's own derivative: 1 on the closed range
        return grad * passed, d_scale.to(torch.float32), None, None, None, None, None


def lsq_initial_step(w: torch.Tensor, qmax: int, *, axis: int | None = None) -> torch.Tensor:
    r"""Esser et al.'s initial step :math:`s_0 = 2\,\overline{|w|}/\sqrt{Q_P}`, at least float32's epsilon so an
    all-zero weight still has a valid step.

    Parameters
    ----------
    w : tensor
        The weight (floating point).
    qmax : int
        :math:`Q_P`, the largest code.
    axis : int, optional
        One step per slice along ``axis`` (a 1-d result); default one for the tensor (0-d).

    Returns
    -------
    tensor
        float32, on ``w``'s device.
    """
    check_tensor(w, "w", floating=True)
    check_positive_int(qmax, "qmax")
    dims = tuple(d for d in range(w.ndim) if axis is None or d != axis % w.ndim)
    mean = w.detach().to(torch.float32).abs().mean(dim=dims) if dims else w.detach().to(torch.float32).abs()
    return (2 * mean / math.sqrt(qmax)).clamp_min(torch.finfo(torch.float32).eps)


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, *,
                      axis: int | None = None, grad_factor: float = 1.0) -> torch.Tensor:
    """Fake quantization with a learnable step: the forward of :func:`~tensorcompress.quantization.fake_quantize`,
    the gradient of ``scale`` of Esser et al.'s eq. 3 (see the module docstring) times ``grad_factor``, the
    straight-through estimator for ``x`` (0 where the unrounded code lies outside ``[qmin, qmax]``).

    Parameters
    ----------
    x : tensor
        Values to quantize (float16, bfloat16, float32 or float64).
    scale : tensor
        The step: 0-d (per tensor) or 1-d along ``axis``; receives the gradient.
    zero_point : integer tensor
        Shaped as ``scale``; not learned.
    qmin, qmax : int
        The code range.
    axis : int, optional
        The channel axis of a 1-d ``scale``.
    grad_factor : float
        Esser et al.'s :math:`g = 1/\\sqrt{N Q_P}`, multiplying the gradient of ``scale``.

    Returns
    -------
    tensor
        The fake-quantized ``x``, in ``x``'s dtype.
    """
    return _LSQ.apply(x, scale, zero_point, qmin, qmax, axis, float(grad_factor))


class ActivationQuantizer(nn.Module):
    """Fake quantizer of activations: records ranges while calibrating, then quantizes with frozen parameters.

    ``scale`` and ``zero_point`` (buffers, or ``scale`` a parameter with ``learnable=True`` for LSQ) hold the frozen
    quantization parameters and ``calibrated`` says whether they are set. While ``observing`` (inside
    :func:`calibrate`) the input passes unchanged and feeds the observer.
    """

    def __init__(self, observer: Observer, *, learnable: bool = False):
        super().__init__()
        self.observer = observer
        self.learnable = learnable
        self.qmin, self.qmax = qrange(observer.bits, signed=observer.signed, narrow_range=observer.narrow_range)
        shape = () if observer.axis is None else (0,)
        if learnable:
            self.scale = nn.Parameter(torch.ones(shape))
        else:
            self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        self.observing = False

    def extra_repr(self) -> str:
        return f"qmin={self.qmin}, qmax={self.qmax}, learnable={self.learnable}"

    @torch.no_grad()
    def freeze(self) -> None:
        """Take the observer's current range as the quantization parameters."""
        qp = self.observer.qparams()
        if self.learnable:
            self.scale.data = qp.scale.to(self.scale.device)
        else:
            self.scale = qp.scale.to(self.scale.device)
        self.zero_point = qp.zero_point.to(self.zero_point.device)
        self.calibrated.fill_(True)

    def qparams(self) -> QParams:
        """The frozen parameters as :class:`~tensorcompress.quantization.QParams`."""
        return QParams(self.scale.detach(), self.zero_point, self.qmin, self.qmax, self.observer.axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.update(x)
            return x
        if not bool(self.calibrated):
            raise RuntimeError("activation quantizer is not calibrated: run tc.quantization.calibrate(model, data) "
                               "before using the quantized model")
        if self.learnable:
            n = x[0].numel() if x.ndim > 1 else x.numel()
            g = 1.0 / math.sqrt(n * self.qmax)
            return lsq_fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax, grad_factor=g)
        return fake_quantize_unchecked(x, self.qparams())


class WeightQuantizer(nn.Module):
    """Parametrization fake-quantizing a weight: symmetric, narrow-range signed codes, per output channel (axis 0)
    or per tensor. The observer re-reads the weight whenever it has changed (QAT follows the weights; the
    parameters are cached on the tensor's storage and version counter, which every in-place update such as an
    optimizer step bumps); with ``learnable=True`` (LSQ) the scale is a parameter initialised on ``weight`` from
    the observer (``init="observer"``) or by :func:`lsq_initial_step` (``init="mean"``).

    Parameters
    ----------
    weight : torch.Tensor
        The weight parametrized; it initialises a learnable scale (and only that).
    bits : int
        Code width; the codes lie in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (narrow range from 2 bits on).
    per_channel : bool
        One scale per output channel (axis 0) or one for the tensor.
    observer : str
        A key of :data:`~tensorcompress.quantization.OBSERVERS` (``"minmax"``, ``"moving_average"``,
        ``"percentile"``, ``"mse"``).
    learnable : bool
        Make the scale an ``nn.Parameter`` trained with LSQ's gradient.
    init : ``"observer"`` or ``"mean"``
        How a learnable scale starts.
    """

    def __init__(self, weight: torch.Tensor, *, bits: int, per_channel: bool, observer: str,
                 learnable: bool = False, init: str = "observer"):
        super().__init__()
        self.observer = make_observer(observer, bits=bits, symmetric=True, narrow_range=bits >= 2,
                                      axis=0 if per_channel else None)
        self.qmin, self.qmax = qrange(bits, signed=True, narrow_range=bits >= 2)
        self.learnable = learnable
        if init not in LSQ_INITS:
            raise ValueError(f"init must be one of {LSQ_INITS}, got {init!r}")
        if learnable:
            if init == "mean":
                scale = lsq_initial_step(weight, max(self.qmax, 1), axis=self.observer.axis)
            else:
                scale = self._observe(weight.detach()).scale.clone()
            self.scale = nn.Parameter(scale.to(weight.device))
            self.grad_factor = 1.0 / math.sqrt(weight.numel() / scale.numel() * max(self.qmax, 1))

    def extra_repr(self) -> str:
        return f"qmin={self.qmin}, qmax={self.qmax}, axis={self.observer.axis}, learnable={self.learnable}"

    def _observe(self, w: torch.Tensor) -> QParams:
        key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape))
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        self.observer.reset()
        self.observer.update(w)
        qp = self.observer.qparams()
        self._cache = (key, qp)
        return qp

    def qparams(self, w: torch.Tensor) -> QParams:
        """The parameters used for weight ``w`` (the un-quantized original)."""
        if self.learnable:
            zp = torch.zeros_like(self.scale, dtype=torch.int32)
            return QParams(self.scale.detach(), zp, self.qmin, self.qmax, self.observer.axis)
        return self._observe(w.detach())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.learnable:
            zp = torch.zeros_like(self.scale, dtype=torch.int32)
            return lsq_fake_quantize(w, self.scale, zp, self.qmin, self.qmax, axis=self.observer.axis,
                                     grad_factor=self.grad_factor)
        return fake_quantize_unchecked(w, self._observe(w))


class QuantizedLayer(nn.Module):
    """A ``Conv2d`` / ``Linear`` (``layer``, its weight parametrized by a :class:`WeightQuantizer`) behind an
    :class:`ActivationQuantizer` on its input (``input_quantizer``, ``None`` for weight-only quantization)."""

    def __init__(self, layer: nn.Module, input_quantizer: ActivationQuantizer | None):
        super().__init__()
        self.layer = layer
        self.input_quantizer = input_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self.layer(x)


class QuantizedAdd(nn.Module):
    """A residual addition (:class:`tc.surgery.Add <tensorcompress.surgery.Add>`) with an
    :class:`ActivationQuantizer` on each input (``input_quantizers[0]`` for ``a``, ``[1]`` for ``b``) and one on
    the sum (``output_quantizer``): ``q_out(q_a(a) + q_b(b))``.

    An integer addition needs both inputs on one scale: the deployed graph requantizes each input code to the
    output's scale and zero point and adds integers (ONNX Runtime's QDQ ``Add``, ``torch.ao``'s ``QFunctional``).
    The fake-quantized sum models it by quantizing both inputs with their own parameters and the sum with the
    output's.

    Parameters
    ----------
    input_quantizers : (ActivationQuantizer, ActivationQuantizer)
        The quantizers of ``a`` and ``b``.
    output_quantizer : ActivationQuantizer
        The quantizer of the sum.
    relu : bool
        The sum passes a ReLU before its quantizer, ``q_out(relu(q_a(a) + q_b(b)))`` (an add-ReLU kernel; see the
        module docstring).
    """

    def __init__(self, input_quantizers: tuple[ActivationQuantizer, ActivationQuantizer],
                 output_quantizer: ActivationQuantizer, *, relu: bool = False):
        super().__init__()
        if not isinstance(relu, bool):
            raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
        self.input_quantizers = nn.ModuleList(input_quantizers)
        self.output_quantizer = output_quantizer
        self.relu = relu

    def extra_repr(self) -> str:
        return "relu=True" if self.relu else ""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``q_out(q_a(a) + q_b(b))``, or ``q_out(relu(q_a(a) + q_b(b)))`` with ``relu``."""
        total = self.input_quantizers[0](a) + self.input_quantizers[1](b)
        return self.output_quantizer(torch.relu(total) if self.relu else total)


def _check_optional_bits(bits: object, name: str) -> int | None:
    return None if bits is None else check_bits(bits, name)


class FakeQuantizedLayer(surgery.LayerChange):
    """A report row of :func:`quantize_model`, its details typed."""

    weight_bits = surgery.Detail(int, "Bits of the weight codes (``None``: float weights).")
    act_bits = surgery.Detail(int, "Bits of the input codes (``None``: float inputs).")
    per_channel = surgery.Detail(bool, "One weight scale per output channel.")
    observer = surgery.Detail(str, "How the ranges are observed.")
    method = surgery.Detail(str, "``\"ptq\"`` (fixed steps) or ``\"lsq\"`` (learned steps).")


class FakeQuantizedAdd(surgery.LayerChange):
    """A report row of :func:`quantize_model` for a residual addition: a ``tc.surgery.Add`` made a
    :class:`QuantizedAdd`, or an addition written with ``+`` that stays in floating point (``skipped`` says why)."""

    act_bits = surgery.Detail(int, "Bits of the input and output codes.")
    observer = surgery.Detail(str, "How the ranges are observed.")
    method = surgery.Detail(str, "``\"ptq\"`` (fixed steps) or ``\"lsq\"`` (learned steps).")
    skipped = surgery.Detail(str, "Why the addition is left in floating point (``None``: it is quantized).",
                             optional=True)
    relu = surgery.Detail(bool, "The ReLU that alone reads the sum is fused: the sum is quantized after it.",
                          optional=True)


#: Names under which the tracer records an addition of tensors written with ``+``, ``+=`` or ``torch.add``.
ADDITIONS = ("add", "add_", "__add__", "__iadd__", "__radd__")
#: Names under which the tracer records ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (and their in-place forms).
RELUS = ("relu", "relu_")


def is_relu(node: surgery.Node) -> bool:
    """A traced ``nn.ReLU`` module or ``relu`` function call."""
    t = node.target
    return isinstance(t, nn.ReLU) or (not isinstance(t, nn.Module) and getattr(t, "__name__", None) in RELUS)


def relu_fused_additions(graph: surgery.Graph) -> set[str]:
    """Names of the ``tc.surgery.Add`` modules, called once, whose sum is read by one ReLU alone (and is no output
    of the model): the additions :func:`quantize_model` fuses with their ReLU."""
    fused = set()
    for i, node in enumerate(graph.nodes):
        if type(node.target) is not surgery.Add or len(graph.calls(node.target)) != 1 or i in graph.outputs:
            continue
        if len(node.consumers) == 1 and is_relu(graph.nodes[node.consumers[0]]):
            fused.add(node.module_name)
    return fused


def bare_additions(graph: surgery.Graph, label: Callable[[surgery.Node], str] | None = None
                   ) -> list[tuple[surgery.Node, str]]:
    """The additions of two tensors written as torch functions (``a + b``) in a traced graph, each with a name that
    says what it adds (``"add of conv2 (Conv2d) and relu"``, its inputs named by ``label``, default
    :attr:`Node.label <tensorcompress.surgery.Node.label>`)."""
    label = label or (lambda n: n.label)
    found = []
    for node in graph.nodes:
        if isinstance(node.target, nn.Module) or node.name not in ADDITIONS:
            continue
        args, kwargs = node.args
        if sum(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())) >= 2:
            found.append((node, f"{node.name} of {' and '.join(label(graph.nodes[i]) for i in node.inputs)}"))
    return found


def _skipped_additions(graph: surgery.Graph, detail: dict[str, Any]) -> list[FakeQuantizedAdd]:
    reason = ("written with `+`, a torch function that a module swap cannot reach: write it as tc.surgery.Add "
              "to put quantizers at its inputs and output")
    return [FakeQuantizedAdd(name, node.name, node.name, 0, 0, 0, 0, {**detail, "skipped": reason})
            for node, name in bare_additions(graph)]


def quantize_model(model: nn.Module, example_input: torch.Tensor | None = None, *, weight_bits: int | None = 8,
                   act_bits: int | None = 8, per_channel: bool = True, observer: str = "minmax", method: str = "ptq",
                   lsq_init: str = "observer", include=None,
                   exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    r"""A fake-quantized copy of ``model``: every selected ``nn.Conv2d`` / ``nn.Linear`` becomes a
    :class:`QuantizedLayer` and, with ``act_bits``, every selected ``tc.surgery.Add`` a :class:`QuantizedAdd`.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    example_input : tensor, optional
        A batch the model accepts. With it the forward pass is traced (:func:`tensorcompress.surgery.trace`): every
        addition written with ``+`` (which stays in floating point) gets a skipped report row naming it, and every
        ``tc.surgery.Add`` whose sum one ReLU alone reads is fused with it (``QuantizedAdd(relu=True)``; the
        report's ``relu`` detail). Without it, additions are quantized before their ReLU.
    weight_bits, act_bits : int or None
        Code widths (1 to 16); ``None`` leaves weights or activations in floating point (``act_bits=None`` also
        leaves the additions).
    per_channel : bool
        One weight scale per output channel (default) or one per tensor.
    observer : {"minmax", "moving_average", "percentile", "mse"}
        How ranges are estimated, for the weights (re-run at every forward) and the activations (during
        :func:`calibrate`).
    method : {"ptq", "lsq"}
        ``"ptq"``: observers set the ranges (train the result with ``tc.fit`` for QAT). ``"lsq"``: learnable step
        sizes (parameters of the model, trained by ``tc.fit`` with the weights), initialised by ``lsq_init``.
    lsq_init : {"observer", "mean"}
        ``method="lsq"`` only: weight steps start from the observer's range or from Esser et al.'s
        :math:`2\,\overline{|w|}/\sqrt{Q_P}` per channel (:func:`lsq_initial_step`); activation steps always start
        from :func:`calibrate`.
    include, exclude : str or sequence of str, optional
        Layer and addition names or ``fnmatch`` patterns (:func:`tensorcompress.surgery.select`); a selection that
        keeps no module is a ``ValueError``.

    Returns
    -------
    (nn.Module, list of LayerChange)
        The model (activation quantizers still to be calibrated), one :class:`FakeQuantizedLayer` row per layer and
        one :class:`FakeQuantizedAdd` row per addition (quantized, or skipped).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weight_bits = _check_optional_bits(weight_bits, "weight_bits")
    act_bits = _check_optional_bits(act_bits, "act_bits")
    if weight_bits is None and act_bits is None:
        raise ValueError("weight_bits and act_bits are both None: nothing would be quantized")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(observer, str) or observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
    if lsq_init not in LSQ_INITS:
        raise ValueError(f"lsq_init must be one of {LSQ_INITS}, got {lsq_init!r}")
    if lsq_init != "observer" and method != "lsq":
        raise ValueError(f"lsq_init={lsq_init!r} needs method='lsq' (steps are learned only by LSQ), got "
                         f"method={method!r}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor or None, got {type(example_input).__name__}")
    learnable = method == "lsq"
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # where an addition's quantizers live
    add_detail = {"act_bits": act_bits, "observer": observer, "method": method}

    def activation_quantizer() -> ActivationQuantizer:
        return ActivationQuantizer(make_observer(observer, bits=act_bits), learnable=learnable)

    graph = None if example_input is None else surgery.trace(model, example_input)
    fused = set() if graph is None else relu_fused_additions(graph)

    def build(sel: surgery.Selected) -> tuple[nn.Module, dict[str, Any]]:
        if isinstance(sel.module, surgery.Add):  # fresh quantizers, like the layers' input quantizers
            relu = sel.name in fused
            add = QuantizedAdd((activation_quantizer(), activation_quantizer()), activation_quantizer(), relu=relu)
            return add.to(device), {**add_detail, "relu": relu}
        # parametrizing changes the module's class in place: work on a copy so the report names the original type
        layer = copy.deepcopy(sel.module)
        if weight_bits is not None:
            wq = WeightQuantizer(layer.weight, bits=weight_bits, per_channel=per_channel, observer=observer,
                                 learnable=learnable, init=lsq_init)
            parametrize.register_parametrization(layer, "weight", wq.to(layer.weight.device))
        aq = None if act_bits is None else activation_quantizer().to(layer.weight.device)
        detail = {"weight_bits": weight_bits, "act_bits": act_bits, "per_channel": per_channel,
                  "observer": observer, "method": method}
        if learnable:
            detail["lsq_init"] = lsq_init
        return QuantizedLayer(layer, aq), detail

    # additions are candidates where there are some to observe (and only then named in a selection's errors)
    adds = act_bits is not None and any(type(m) is surgery.Add for m in model.modules())
    types = (nn.Conv2d, nn.Linear, surgery.Add) if adds else (nn.Conv2d, nn.Linear)
    new, rows = surgery.transform(model, types, build, include=include, exclude=exclude,
                                  row_type=FakeQuantizedLayer, action="quantize_model")
    rows = [FakeQuantizedAdd(*(getattr(r, f.name) for f in dataclasses.fields(r))) if r.type_after == "QuantizedAdd"
            else r for r in rows]
    if graph is not None:
        rows += _skipped_additions(graph, add_detail)
    return new, rows


def quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    """The activation quantizers of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


def calibrate(model: nn.Module, data: Iterable | torch.Tensor | torch.utils.data.Dataset, *,
              n_batches: int | None = None, batch_size: int = 64) -> nn.Module:
    """Run ``data`` through ``model`` with every activation observer recording, then freeze the ranges (in place).

    Parameters
    ----------
    model : nn.Module
        A model from :func:`quantize_model`; changed in place (its quantizers' state) and returned.
    data : tensor, Dataset or iterable of batches
        Inputs: one tensor batch, a ``Dataset`` (read in batches of ``batch_size``, in order), or an iterable of
        ``x`` or ``(x, y, ...)`` batches (a ``DataLoader``).
    n_batches : int, optional
        Use at most this many batches (default: all).
    batch_size : int
        Batch size when ``data`` is a ``Dataset``.

    Returns
    -------
    nn.Module
        ``model`` itself.

    The model runs in eval mode without gradients; every submodule's train/eval mode is given back afterwards
    (a BatchNorm frozen in eval mode inside a training model stays frozen). Observers restart from scratch, so
    calibrating twice does not mix the two runs.
    """
    aqs = quantizers(model)
    if not aqs:
        raise ValueError("model has no activation quantizers to calibrate (use tc.quantization.quantize_model with "
                         "act_bits set)")
    if n_batches is not None:
        check_positive_int(n_batches, "n_batches")
    check_positive_int(batch_size, "batch_size")
    try:
        for q in aqs:
            q.observer.reset()
            q.observing = True
        surgery.run_over(model, data, n_batches=n_batches, batch_size=batch_size)
    finally:
        for q in aqs:
            q.observing = False
    for q in aqs:
        q.freeze()
    return model

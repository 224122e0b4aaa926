r"""Integer-only inference (Jacob et al. 2018, "Quantization and training of neural networks for efficient
integer-arithmetic-only inference").

With :math:`r = S(q - Z)` for input :math:`x`, weight :math:`w` (symmetric, :math:`Z_w = 0`) and output :math:`y`, a
layer :math:`y = \sum_k w_k x_k + b` becomes

.. math:: q_y = Z_y + M \Bigl(\underbrace{\textstyle\sum_k q_{w,k}\,(q_{x,k} - Z_x) + q_b}_{\text{int32 accumulator}}
          \Bigr), \qquad M = \frac{S_x S_w}{S_y}, \qquad q_b = \operatorname{round}\Bigl(\frac{b}{S_x S_w}\Bigr),

the bias stored in int32 with scale :math:`S_x S_w` and zero point 0. Subtracting :math:`Z_x` before the products
is the paper's zero-point cross term :math:`-Z_x\sum_k q_{w,k}` (done on the input so that zero padding of a
convolution pads the real 0). The real multiplier :math:`M` (per output channel) is the only non-integer: written
:math:`M = 2^{-n} M_0` with :math:`M_0 \in [1/2, 1)` stored as the int32 :math:`m_0 = \operatorname{round}(2^{31}
M_0)` (:func:`quantize_multiplier`), the product is an int64 multiplication followed by a rounding right shift by
:math:`31 + n` bits (:func:`requantize`).

**What acts on codes.** Each layer requantizes straight into the codes of the *next* layer's input quantizer
:math:`q(\cdot)`; the fake-quantized model applies the operations in between to real numbers first. An operation
:math:`f` may run on the codes instead when :math:`q(f(y)) = f_q(q(y))`. Max-pooling and flattening commute with
the monotone :math:`q`. A clip :math:`f(y) = \min(\max(y, a), b)` — ReLU (:math:`a = 0, b = \infty`), ReLU6
(:math:`a = 0, b = 6`), hardtanh — becomes the clamp of the codes to :math:`[q(a), q(b)]` (:class:`IntegerClamp`),
since :math:`q(\min(\max(y, a), b)) = \min(\max(q(y), q(a)), q(b))` for monotone :math:`q`; :math:`q(0) = Z` exactly.
A ReLU6 is *not* a clamp of the codes to 6. Anything else (a leaky ReLU, a residual addition, a concatenation) has
no such form and is refused.

**Global average pooling** (a mean over the feature map) does not commute with rounding, so the convolution before
it hands over its int32 accumulators (scale :math:`S_x S_{w,c}` per channel, zero point 0; a ReLU — clamp at 0 —
and max-pooling act on them unchanged) and :class:`IntegerMeanPool` sums them over the :math:`HW` positions in
int64 and requantizes once, with :math:`M_c = S_x S_{w,c} / (S_y\,HW)`: one rounding, as in the fake-quantized
model, instead of two.

:func:`to_integer` reads the traced graph of a calibrated model from
:func:`~tensorcompress.quantization.quantize_model` (weights and activations at most 8 bits) and builds an
:class:`IntegerNet`: each quantized layer an :class:`IntegerLayer` holding int8 weights, an int32 bias and
per-channel ``(m0, shift)``, taking the integer codes of the previous step (the first one quantizes the float
input) and handing integer codes to the next; the last layer returns its accumulator dequantized to float32
logits. A BatchNorm that reads a per-channel quantized convolution's output is folded into it first
(``tc.surgery.fuse_conv_bn``): it scales each output channel, which per-channel weight codes absorb into their
scale. Storage: 1 byte per weight, 4 per bias, 5 per output channel for the multiplier.

**Integer products in floating point.** PyTorch's integer convolution is a generic loop (``_slow_conv2d_forward``),
far slower than its float kernels, and off the CPU it has none. A float product of integers is exact when every
partial sum is an integer the float format represents: for float32 every integer of magnitude at most
:math:`2^{24}`. Each term of :math:`\sum_k q_{w,k}(q_{x,k} - Z_x)` is at most :math:`B_w B_x` in magnitude, with
:math:`B_w = \max(-q^w_{\min}, q^w_{\max})` (the weight's bit width: 127 or 128 at 8 bits) and :math:`B_x =
q^x_{\max} - q^x_{\min}` (the input's, 255 at 8 bits, since :math:`Z_x` lies in the range), so any partial sum
of any order of summation stays within :math:`F B_w B_x` for a fan-in :math:`F` (input channels per group times the
kernel's area, or input features). The rule, per layer: **float32 when** :math:`F B_w B_x \le 2^{24}` (at 8 bits
:math:`F \le 514`: all of LeNet-5, SmallCNN's 3x3 convolutions up to 57 input channels), **float64 otherwise**
(exact up to :math:`2^{53}`, beyond any int32 accumulator). The result is bit-identical to the integer product.
float32 is used only where the kernels sum in float32: on the CPU, with oneDNN's direct convolution (without it
PyTorch may hand a batch of 16 or more to NNPACK, whose Winograd and FFT transforms are not exact) and with
float32 matrix products at ``"highest"`` / IEEE precision (``torch.set_float32_matmul_precision("medium")`` lets
oneDNN use bfloat16); elsewhere float64.
"""

from __future__ import annotations

import collections
import copy
import inspect
import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .. import surgery
from .model import ActivationQuantizer, QuantizedLayer
from .uniform import QParams, integer_dtype, quantize

__all__ = ["quantize_multiplier", "requantize", "float32_is_exact", "IntegerLayer", "IntegerMeanPool", "IntegerClamp",
           "IntegerNet", "IntegerizedLayer", "to_integer"]

# 31 + shift is the right shift of requantize: at least 1 (a rounding bit) and at most 62 (an int64 product)
MULTIPLIER_RANGE = (2.0**-32, 2.0**30)
#: :func:`requantize` takes accumulators with ``|acc| < ACC_BOUND``: the int64 product with ``m0 < 2^31`` then fits.
ACC_BOUND = 2**32


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``(m0, shift)`` with :math:`m \\approx 2^{-\\text{shift}}\\, m_0 / 2^{31}`, ``m0`` an int32 in
    :math:`[2^{30}, 2^{31})` (relative error at most :math:`2^{-31}`).

    ``m`` must be a finite real number in :math:`[2^{-32}, 2^{30})`; ``shift`` is negative for ``m >= 1``, so that
    :func:`requantize` shifts right by :math:`31 + \\text{shift}` bits, between 1 and 62.
    """
    if isinstance(m, bool) or not isinstance(m, numbers.Real):
        raise TypeError(f"m must be a real number, got {type(m).__name__} {m!r}")
    m = float(m)
    lo, hi = MULTIPLIER_RANGE
    if not math.isfinite(m) or not lo <= m < hi:
        raise ValueError(f"m must be a finite number in [2^-32, 2^30) (a multiplier S_x S_w / S_y), got {m!r}")
    frac, exp = math.frexp(m)  # m = frac · 2^exp, frac in [0.5, 1)
    m0 = round(frac * 2**31)
    if m0 == 2**31:  # frac rounded up to 1
        m0, exp = m0 // 2, exp + 1
    return m0, -exp


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:math:`\\operatorname{round}(\\text{acc}\\cdot m_0 / 2^{31 + \\text{shift}})` in integer arithmetic (int64
    product, rounding right shift; ties toward :math:`+\\infty`).

    Parameters
    ----------
    acc : integer tensor
        Accumulators, ``|acc| < 2^32``.
    m0, shift : integer tensors
        From :func:`quantize_multiplier` (``m0`` in ``[0, 2^31)``, ``shift`` in ``[-30, 31]``), broadcast against
        ``acc``.

    Returns
    -------
    tensor
        int64, ``acc``'s broadcast shape.

    Notes
    -----
    ``|acc|`` must stay below :math:`2^{32}` (:data:`ACC_BOUND`: twice the int32 range, room for a sum of int32
    accumulators) so that the product, below :math:`2^{32} \\cdot 2^{31}`, fits in int64; a larger value is a
    ``ValueError``, not a silent overflow. The rounding takes the bit below the shift instead of adding half
    before shifting, so no intermediate leaves the product's range either."""
    for name, t in (("acc", acc), ("m0", m0), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    s = (31 + shift).to(torch.int64)
    if s.numel() and (int(s.min()) < 1 or int(s.max()) > 62):
        raise ValueError(f"shift must lie in [-30, 31] (31 + shift bits shifted), got values in "
                         f"[{int(shift.min())}, {int(shift.max())}]")
    if m0.numel() and (int(m0.min()) < 0 or int(m0.max()) >= 2**31):
        raise ValueError(f"m0 must lie in [0, 2^31), got values in [{int(m0.min())}, {int(m0.max())}]")
    if acc.numel() and (int(acc.min()) <= -ACC_BOUND or int(acc.max()) >= ACC_BOUND):
        raise ValueError(f"|acc| must stay below 2^32 (the int64 product with m0 < 2^31), got values in "
                         f"[{int(acc.min())}, {int(acc.max())}]")
    prod = acc.to(torch.int64) * m0.to(torch.int64)
    # floor(prod / 2^s) plus the bit just below the shift: round half up without forming prod + 2^(s-1)
    return torch.bitwise_right_shift(prod, s) + (torch.bitwise_right_shift(prod, s - 1) & 1)


def _channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along axis 1 of an ``ndim``-d tensor."""
    return t.reshape(-1, *([1] * (ndim - 2))) if ndim > 2 else t


#: A float32 sum of integers is exact while every partial sum stays within this magnitude (24-bit significand).
FLOAT32_EXACT = 2**24


def float32_is_exact(fan_in: int, weight_bound: int, input_bound: int) -> bool:
    r"""Whether every partial sum of ``fan_in`` products of integers bounded by ``weight_bound`` and ``input_bound``
    in magnitude stays within :data:`FLOAT32_EXACT`: the rule that lets :class:`IntegerLayer` compute its products
    in float32 (see the module docstring).

    Parameters
    ----------
    fan_in : int
        Terms per output: input channels per group times the kernel's area, or input features.
    weight_bound : int
        The largest magnitude of a weight code, :math:`\max(-q^w_{\min}, q^w_{\max})`.
    input_bound : int
        The largest magnitude of an input code minus its zero point, :math:`q^x_{\max} - q^x_{\min}` at most.

    Returns
    -------
    bool
        ``fan_in * weight_bound * input_bound <= 2**24``.
    """
    return fan_in * weight_bound * input_bound <= FLOAT32_EXACT


def _float32_kernels_exact(device: torch.device, conv: bool) -> bool:
    """Whether PyTorch's float32 kernels on ``device`` sum in IEEE float32 with no transform of the operands."""
    if device.type != "cpu":
        return False
    onednn = torch.backends.mkldnn
    if onednn.fp32_precision not in ("none", "ieee"):
        return False
    if conv:  # oneDNN's direct convolution; when it is off, NNPACK (Winograd, FFT) may take batches of 16 or more
        return onednn.conv.fp32_precision in ("none", "ieee") and (
            (onednn.is_available() and onednn.enabled) or not torch.backends.nnpack.is_available())
    return onednn.matmul.fp32_precision in ("none", "ieee") and torch.get_float32_matmul_precision() == "highest"


def _integer_product(x: torch.Tensor, zero_point: torch.Tensor, w: torch.Tensor, conv_args: dict | None,
                     float32_exact: bool) -> torch.Tensor:
    """The int32 accumulator :math:`\\sum_k w_k (x_k - Z)` of a conv (``conv_args``) or linear layer on integer
    codes, computed in float32 where ``float32_exact`` (the layer's bound) and the kernels allow it, else in float64:
    exact either way."""
    conv = conv_args is not None
    work = torch.float32 if float32_exact and _float32_kernels_exact(x.device, conv) else torch.float64
    xi, w = x.to(work) - zero_point.to(work), w.to(work)
    acc = F.conv2d(xi, w, **conv_args) if conv else xi @ w.T
    return acc.to(torch.int32)


def _multipliers(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [quantize_multiplier(float(v)) for v in m]
    return (torch.tensor([p[0] for p in pairs], dtype=torch.int32),
            torch.tensor([p[1] for p in pairs], dtype=torch.int8))


class IntegerLayer(nn.Module):
    """A conv or linear layer in integer arithmetic (see the module docstring). Buffers: ``weight`` (int8),
    ``bias`` (int32), ``m0`` (int32) and ``shift`` (int8) per output channel, the input's and output's zero points;
    ``in_scale`` only for the ``entry`` layer, which quantizes the network's float input; ``out_scale`` (float32,
    per channel) only for the last layer, whose accumulator is returned as real numbers. With ``accumulate=True``
    (and no ``next_quantizer``) the layer returns its int32 accumulator (scale ``acc_scale``, zero point 0) for an
    :class:`IntegerMeanPool`.

    Parameters
    ----------
    layer : QuantizedLayer
        A calibrated ``Conv2d`` or ``Linear`` with weights of at most 8 bits and zero padding.
    next_quantizer : ActivationQuantizer or None
        The quantizer of the next layer's input: the layer returns codes in its ``[qmin, qmax]`` (requantized by a
        fixed-point multiplier per channel); ``None`` returns float logits (or, with ``accumulate``, the
        accumulator).
    entry : bool
        Whether the layer takes the network's float input and quantizes it; otherwise it takes integer codes and
        refuses a float tensor.
    accumulate : bool
        Return the int32 accumulator; needs ``next_quantizer=None``.
    """

    def __init__(self, layer: QuantizedLayer, next_quantizer: ActivationQuantizer | None, *, entry: bool = True,
                 accumulate: bool = False):
        super().__init__()
        inner = layer.layer
        wq = inner.parametrizations.weight[0]
        w = inner.parametrizations.weight.original.detach()
        w_qp = wq.qparams(w)
        in_qp = layer.input_quantizer.qparams()
        if w_qp.qmin < -128 or w_qp.qmax > 127:
            raise ValueError(f"to_integer needs weights of at most 8 bits, got codes [{w_qp.qmin}, {w_qp.qmax}]")
        if accumulate and next_quantizer is not None:
            raise ValueError("accumulate=True returns the accumulator: next_quantizer must be None")
        self.kind = "conv" if isinstance(inner, nn.Conv2d) else "linear"
        if self.kind == "conv":
            self.conv_args = dict(stride=inner.stride, padding=inner.padding, dilation=inner.dilation,
                                  groups=inner.groups)
            if inner.padding_mode != "zeros":
                raise ValueError(f"to_integer supports zero padding only, got padding_mode={inner.padding_mode!r}")
        n_out = w.shape[0]
        s_w = w_qp.scale.expand(n_out) if w_qp.axis is None else w_qp.scale
        self.acc_scale = (in_qp.scale.double() * s_w.double())  # S_x S_w per output channel (not state)
        self.register_buffer("weight", quantize(w, w_qp).to(torch.int8))
        b = inner.bias.detach().double() if inner.bias is not None else torch.zeros(n_out, dtype=torch.float64)
        qb = torch.round(b / self.acc_scale)
        if float(qb.abs().max()) >= 2**31:
            raise ValueError(f"bias / (S_x S_w) reaches {float(qb.abs().max()):.3g}, beyond int32: the input or "
                             "weight scale is too small for this bias")
        self.register_buffer("bias", qb.to(torch.int32))
        self.in_range, self.entry = (in_qp.qmin, in_qp.qmax), entry
        fan_in = math.prod(w.shape[1:])  # input channels per group x kernel area, or input features
        self.float32_exact = float32_is_exact(fan_in, max(-w_qp.qmin, w_qp.qmax), in_qp.qmax - in_qp.qmin)
        if entry:  # only the network's entry quantizes real numbers; later layers receive codes
            self.register_buffer("in_scale", in_qp.scale.clone())
        self.register_buffer("in_zero_point", in_qp.zero_point.clone())
        self.output = "accumulator" if accumulate else "logits" if next_quantizer is None else "codes"
        if self.output == "logits":
            self.register_buffer("out_scale", self.acc_scale.float())
        elif self.output == "codes":
            out_qp = next_quantizer.qparams()
            m0, shift = _multipliers(self.acc_scale / out_qp.scale.double())
            self.register_buffer("m0", m0)
            self.register_buffer("shift", shift)
            self.register_buffer("out_zero_point", out_qp.zero_point.clone())
            self.out_range = (out_qp.qmin, out_qp.qmax)
            self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    @property
    def last(self) -> bool:
        """Whether the layer returns float logits (the network's last layer)."""
        return self.output == "logits"

    def extra_repr(self) -> str:
        return f"{self.kind}, {tuple(self.weight.shape)}, output={self.output}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # the network's entry: quantize the real input
            if not self.entry:
                raise TypeError("this IntegerLayer takes the integer codes of the previous layer, got a float "
                                f"tensor ({x.dtype})")
            x = quantize(x, QParams(self.in_scale, self.in_zero_point, *self.in_range))
        conv_args = self.conv_args if self.kind == "conv" else None
        acc = _integer_product(x, self.in_zero_point, self.weight, conv_args, self.float32_exact)
        acc = acc + _channel(self.bias, acc.ndim)
        if self.output == "accumulator":
            return acc
        if self.output == "logits":
            return acc.to(torch.float32) * _channel(self.out_scale, acc.ndim)
        y = requantize(acc, _channel(self.m0, acc.ndim), _channel(self.shift, acc.ndim))
        y = y + self.out_zero_point
        return y.clamp(*self.out_range).to(self.out_dtype)


class IntegerMeanPool(nn.Module):
    """Global average pooling of int32 accumulators (scale ``acc_scale[c]`` per channel, zero point 0) into the
    codes of ``out_qp``: an int64 sum over the ``hw`` positions, then one requantization by
    :math:`M_c = S_{\\text{acc},c} / (S_{\\text{out}}\\, HW)`. Returns ``N x C`` codes (``N x C x 1 x 1`` with
    ``keepdim``).

    Parameters
    ----------
    acc_scale : (C,) tensor
        The scale of each channel's accumulator (:math:`S_x S_w` of the layer before).
    out_qp : QParams
        The per-tensor quantization of the pooled output (the next layer's input).
    hw : int
        The number of positions averaged, :math:`H W`; the input's ``H * W`` must equal it.
    keepdim : bool
        Return ``N x C x 1 x 1`` instead of ``N x C``.
    """

    def __init__(self, acc_scale: torch.Tensor, out_qp: QParams, hw: int, *, keepdim: bool = False):
        super().__init__()
        if out_qp.axis is not None:
            raise ValueError("IntegerMeanPool needs a per-tensor output quantizer")
        self.hw, self.keepdim = hw, keepdim
        m0, shift = _multipliers(acc_scale.double() / (out_qp.scale.double() * hw))
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.register_buffer("out_zero_point", out_qp.zero_point.clone())
        self.out_range = (out_qp.qmin, out_qp.qmax)
        self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    def extra_repr(self) -> str:
        return f"hw={self.hw}, channels={self.m0.numel()}, keepdim={self.keepdim}"

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        if acc.is_floating_point() or acc.ndim != 4 or acc.shape[2] * acc.shape[3] != self.hw:
            raise ValueError(f"IntegerMeanPool expects integer accumulators N x C x H x W with H·W = {self.hw}, "
                             f"got {acc.dtype} {tuple(acc.shape)}")
        total = acc.to(torch.int64).sum(dim=(2, 3))
        y = requantize(total, self.m0, self.shift) + self.out_zero_point
        y = y.clamp(*self.out_range).to(self.out_dtype)
        return y[:, :, None, None] if self.keepdim else y


class IntegerClamp(nn.Module):
    """``clamp(x, lo, hi)`` on integer codes or accumulators (``None``: no bound): a ReLU, ReLU6 or hardtanh
    applied in the integer domain, with the bounds the codes of the real bounds (see the module docstring)."""

    def __init__(self, lo: int | None, hi: int | None):
        super().__init__()
        self.lo, self.hi = lo, hi

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.lo, self.hi)


class IntegerNet(nn.Sequential):
    """The integer network :func:`to_integer` builds: its steps in the traced order (reshaping of the float input,
    :class:`IntegerLayer`, :class:`IntegerClamp`, ``nn.MaxPool2d``, ``nn.Flatten``, :class:`IntegerMeanPool`), for
    inputs of the per-sample shape ``input_shape`` the conversion was proven on."""

    def __init__(self, steps: dict[str, nn.Module], input_shape: tuple[int, ...]):
        super().__init__(collections.OrderedDict(steps))
        self.input_shape = tuple(input_shape)

    def extra_repr(self) -> str:
        return f"input_shape=N x {' x '.join(map(str, self.input_shape))}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.input_shape or x.ndim < 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected input of shape N x {' x '.join(map(str, self.input_shape))}, got {shape}")
        return super().forward(x)


# ---------------------------------------------------------------------------------------------------------------
# Reading the traced graph


class IntegerizedLayer(surgery.LayerChange):
    """A report row of :func:`to_integer`, its details typed."""

    output = surgery.Detail(str, "What the integer layer returns: ``codes``, ``accumulator`` or ``logits``.")
    folded = surgery.Detail(str, "The BatchNorm folded into the layer.", optional=True)


class _Leaf(nn.Module):
    """A quantized layer as one leaf of the traced graph: the layer is held outside the module tree, so the tracer
    records one node for it instead of the fake quantizers' arithmetic inside."""

    def __init__(self, layer: QuantizedLayer):
        super().__init__()
        self.__dict__["layer"] = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


_RELU = {"relu", "relu_"}
_HARDTANH = {"relu6", "hardtanh", "hardtanh_"}
_SHAPE = {"flatten", "reshape", "view", "contiguous"}


def _clip_bounds(node: surgery.Node) -> tuple[float, float] | None:
    """``(lo, hi)`` of a ReLU-like clip node (ReLU: ``(0, inf)``), ``None`` for another node."""
    t = node.target
    if isinstance(t, nn.ReLU):
        return 0.0, math.inf
    if isinstance(t, nn.Hardtanh):  # nn.ReLU6 included
        return float(t.min_val), float(t.max_val)
    name = getattr(t, "__name__", None)
    if isinstance(t, nn.Module) or name not in _RELU | _HARDTANH:
        return None
    if name in _RELU:
        return 0.0, math.inf
    args, kwargs = node.args
    if name == "relu6":
        return 0.0, 6.0
    bound = inspect.signature(F.hardtanh).bind(*args, **kwargs)
    bound.apply_defaults()
    return float(bound.arguments["min_val"]), float(bound.arguments["max_val"])


_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
"""``F.max_pool2d``'s arguments after the input, in its order (``nn.MaxPool2d`` orders the last two otherwise)."""


def _max_pool(node: surgery.Node) -> nn.MaxPool2d | None:
    """The ``nn.MaxPool2d`` a max-pooling node computes (a copy of the module, or one built from the function's
    arguments), ``None`` for another node or one that also returns indices."""
    t = node.target
    if isinstance(t, nn.MaxPool2d):
        return None if t.return_indices else copy.deepcopy(t)
    if isinstance(t, nn.Module) or getattr(t, "__name__", None) not in ("max_pool2d", "_max_pool2d"):
        return None
    args, kwargs = node.args
    given = {**dict(zip(_MAX_POOL_ARGS, args[1:], strict=False)), **kwargs}
    if set(given) - set(_MAX_POOL_ARGS) or given.pop("return_indices", False) or len(args) > 7:
        return None
    return nn.MaxPool2d(**given)


def _is_flatten(node: surgery.Node) -> bool:
    """A reshaping that keeps the batch dimension and flattens the rest in order (or changes nothing)."""
    t = node.target
    if not (isinstance(t, nn.Flatten) or (not isinstance(t, nn.Module) and getattr(t, "__name__", None) in _SHAPE)):
        return False
    n = node.in_shape
    return node.out_shape in (n, (n[0], math.prod(n[1:]))) if n else False


def _is_identity(node: surgery.Node) -> bool:
    return isinstance(node.target, (nn.Identity, nn.modules.dropout._DropoutNd))


def _mean_keepdim(node: surgery.Node) -> bool | None:
    """For a global spatial mean of a 4-d tensor (``x.mean((2, 3))``, ``adaptive_avg_pool2d(x, 1)``, ...) whether
    it keeps the two dimensions; ``None`` for another node."""
    t, n = node.target, node.in_shape
    if len(n) != 4:
        return None
    if isinstance(t, nn.AdaptiveAvgPool2d):
        return True if t.output_size in (1, (1, 1), [1, 1]) else None
    name = None if isinstance(t, nn.Module) else getattr(t, "__name__", None)
    args, kwargs = node.args if name else ((), {})
    if name == "adaptive_avg_pool2d":
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return True if size in (1, (1, 1), [1, 1]) else None
    if name != "mean" or kwargs.get("dtype") is not None:
        return None
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    dims = {dim} if isinstance(dim, int) else set(dim) if isinstance(dim, (tuple, list)) else None
    return keepdim if dims is not None and {d % 4 for d in dims} == {2, 3} and len(dims) == 2 else None


def _chain(graph: surgery.Graph) -> list[surgery.Node]:
    """The nodes after the input, if the graph is one chain (each node read by exactly the next one, the last one
    the model's only output); else a ``ValueError`` naming the node where it branches."""
    nodes, out, i = graph.nodes, [], 0
    if len(graph.outputs) != 1 or not isinstance(graph.output, torch.Tensor):
        raise ValueError(f"to_integer needs a model that returns one tensor, got {type(graph.output).__name__} "
                         f"from {len(graph.outputs)} traced operations")
    why = "cannot be proven exact in integer codes: to_integer handles a chain of operations"
    while nodes[i].consumers:
        readers = nodes[i].consumers
        if len(readers) > 1:
            raise ValueError(f"the output of {_label(nodes[i])} is read by {len(readers)} operations "
                             f"{[_label(nodes[j]) for j in readers]}: a branch (a residual connection, a tensor used "
                             f"twice) {why}")
        if nodes[readers[0]].inputs != [i]:
            raise ValueError(f"{_label(nodes[readers[0]])} reads {len(nodes[readers[0]].inputs)} tensors, of "
                             f"{[_label(nodes[k]) for k in nodes[readers[0]].inputs]}: a join (a residual addition, "
                             f"a concatenation) {why}")
        i = readers[0]
        out.append(nodes[i])
    if graph.outputs != [i]:
        raise ValueError(f"to_integer needs the last operation to be the model's output, got {_label(nodes[i])} "
                         f"after the output {_label(nodes[graph.outputs[0]])}")
    return out


def _label(node: surgery.Node) -> str:
    """How errors name a node: ``name (Class)`` of a module, with a quantized layer's own class."""
    return f"{node.module_name} (QuantizedLayer)" if isinstance(node.target, _Leaf) else node.label


def _refuse(node: surgery.Node, where: str) -> ValueError:
    if isinstance(node.target, surgery.LAYERS):
        return ValueError(f"layer {node.module_name!r} ({node.name}) is not quantized: integer inference needs every "
                          "layer quantized (quantize_model with act_bits and weight_bits at most 8)")
    if isinstance(node.target, nn.modules.batchnorm._BatchNorm):
        return ValueError(f"{node.label} does not directly follow a per-channel quantized nn.Conv2d: fold it before "
                          "quantize_model (tc.surgery.fuse_conv_bn)")
    return ValueError(f"to_integer cannot prove {node.label} exact {where}; it handles ReLU, ReLU6/hardtanh, "
                      "max-pooling, flattening and a global spatial mean between quantized layers")


# ---------------------------------------------------------------------------------------------------------------
# Building the integer network


def _check_layer(name: str, m: QuantizedLayer) -> None:
    base = parametrize.type_before_parametrizations(m.layer)
    if base not in (nn.Conv2d, nn.Linear):
        raise ValueError(f"layer {name!r} wraps a {base.__name__}: integer inference has nn.Conv2d and nn.Linear")
    if m.input_quantizer is None or not bool(m.input_quantizer.calibrated):
        raise ValueError(f"layer {name!r} has no calibrated input quantizer: quantize activations "
                         f"(act_bits <= 8) and run tc.quantization.calibrate first")
    if not hasattr(m.layer, "parametrizations"):
        raise ValueError(f"layer {name!r} has float weights: quantize weights (weight_bits <= 8)")
    qp: QParams = m.input_quantizer.qparams()
    if qp.qmin < -128 or qp.qmax > 255 or qp.axis is not None:
        raise ValueError(f"to_integer needs per-tensor activations of at most 8 bits, layer {name!r} has "
                         f"codes [{qp.qmin}, {qp.qmax}]")


def _fold(ql: QuantizedLayer, bn: nn.Module, bn_name: str) -> None:
    """Fold ``bn`` (the BatchNorm that reads the quantized convolution's output, and nothing else does) into the
    convolution's float weight and bias, in place; the per-channel weight quantizer re-reads them."""
    inner = ql.layer
    if not isinstance(bn, nn.BatchNorm2d) or parametrize.type_before_parametrizations(inner) is not nn.Conv2d:
        raise ValueError(f"BatchNorm {bn_name!r} follows a {type(inner).__name__}: to_integer folds nn.BatchNorm2d "
                         "after nn.Conv2d only; fold it before quantize_model (tc.surgery.fuse_conv_bn)")
    wq = inner.parametrizations.weight[0]
    if wq.observer.axis is None or wq.learnable:
        raise ValueError(f"BatchNorm {bn_name!r} follows a convolution with per-tensor or learnable weight "
                         "scales: folding it would change the weight codes. Fold it before quantize_model "
                         "(tc.surgery.fuse_conv_bn)")
    # fold on a plain float copy of the convolution with the library's folding routine
    plain = nn.Conv2d(inner.in_channels, inner.out_channels, inner.kernel_size, stride=inner.stride,
                      padding=inner.padding, dilation=inner.dilation, groups=inner.groups,
                      bias=inner.bias is not None, padding_mode=inner.padding_mode)
    with torch.no_grad():
        plain.weight.copy_(inner.parametrizations.weight.original)
        if inner.bias is not None:
            plain.bias.copy_(inner.bias)
    conv = surgery.fuse_conv_bn(nn.Sequential(plain, copy.deepcopy(bn)).eval())[0][0]
    with torch.no_grad():
        inner.parametrizations.weight.original.copy_(conv.weight)
        if inner.bias is None:
            inner.bias = nn.Parameter(conv.bias.detach().clone())
        else:
            inner.bias.copy_(conv.bias)


def _code(value: float, qp: QParams) -> int | None:
    """The code of the real ``value`` under ``qp`` (``None`` for an infinite bound)."""
    if math.isinf(value):
        return None
    return int(quantize(torch.tensor(value, dtype=torch.float32), qp))


class _Builder:
    """Collects the named steps of the integer network and the report rows."""

    def __init__(self):
        self.steps: dict[str, nn.Module] = {}
        self.rows: list[surgery.LayerChange] = []

    def add(self, base: str, step: nn.Module | None) -> None:
        if step is None:
            return
        name, k = base.replace(".", "_"), 1
        while name in self.steps:
            name, k = f"{base.replace('.', '_')}_{k}", k + 1
        self.steps[name] = step

    def code_op(self, node: surgery.Node, qp: QParams) -> None:
        """A step on integer codes of the per-tensor parameters ``qp``."""
        clip = _clip_bounds(node)
        if clip is not None:
            lo, hi = _code(clip[0], qp), _code(clip[1], qp)
            self.add(node.module_name or node.name, IntegerClamp(lo, hi))
        else:
            self.shape_op(node, "on integer codes")

    def shape_op(self, node: surgery.Node, where: str) -> None:
        if _is_identity(node):
            return
        pool = _max_pool(node)
        if pool is not None:
            self.add(node.module_name or node.name, pool)
        elif _is_flatten(node):
            self.add(node.module_name or "flatten", nn.Flatten() if node.out_shape != node.in_shape else None)
        else:
            raise _refuse(node, where)


def _segments(chain: list[surgery.Node]) -> tuple[list[surgery.Node], list[tuple[surgery.Node, list]]]:
    """The nodes before the first quantized layer, and each quantized layer's node with the nodes up to the next."""
    prefix: list[surgery.Node] = []
    segments: list[tuple[surgery.Node, list]] = []
    for node in chain:
        if isinstance(node.target, _Leaf):
            segments.append((node, []))
        elif segments:
            segments[-1][1].append(node)
        else:
            prefix.append(node)
    if not segments:
        raise ValueError("no quantized layer is called in the forward pass of example_input")
    return prefix, segments


def _build(model: nn.Module, chain: list[surgery.Node], names: dict[int, tuple[str, ...]]
           ) -> tuple[dict[str, nn.Module], list[surgery.LayerChange]]:
    """The integer steps of a chain traced on a copy of ``model`` (its quantized layers behind ``_Leaf`` stand-ins)
    and one report row per integer layer."""
    b = _Builder()
    prefix, segments = _segments(chain)
    for node in prefix:
        b.shape_op(node, "before the first quantized layer (the network quantizes its input there; only reshaping "
                         "may come first)")
    for k, (node, ops) in enumerate(segments):
        ql, name = node.target.layer, node.module_name
        bn = None
        if ops and isinstance(ops[0].target, nn.modules.batchnorm._BatchNorm):
            bn, ops = ops[0], ops[1:]
            _fold(ql, bn.target, bn.module_name)
        nxt = segments[k + 1][0].target.layer.input_quantizer if k + 1 < len(segments) else None
        means = [i for i, op in enumerate(ops) if _mean_keepdim(op) is not None]
        if nxt is None:
            layer = IntegerLayer(ql, None, entry=k == 0)
            b.add(name, layer)
            for op in ops:
                b.shape_op(op, "after the last quantized layer (its float logits are the output)")
        elif means:
            pool_at = means[0]
            layer = IntegerLayer(ql, None, entry=k == 0, accumulate=True)
            b.add(name, layer)
            for op in ops[:pool_at]:
                if _clip_bounds(op) == (0.0, math.inf):
                    b.add(op.module_name or op.name, IntegerClamp(0, None))
                elif _clip_bounds(op) is None:
                    b.shape_op(op, "on the per-channel accumulators before the mean (only ReLU and max-pooling "
                                   "are exact there)")
                else:
                    raise _refuse(op, "on the per-channel accumulators before the mean (only ReLU and max-pooling "
                                      "are exact there)")
            mean = ops[pool_at]
            qp = nxt.qparams()
            b.add(mean.module_name or "mean", IntegerMeanPool(layer.acc_scale, qp, mean.in_shape[2] * mean.in_shape[3],
                                                              keepdim=_mean_keepdim(mean)))
            for op in ops[pool_at + 1:]:
                if _mean_keepdim(op) is not None:
                    raise _refuse(op, "after a global mean")
                b.code_op(op, qp)
        else:
            layer = IntegerLayer(ql, nxt, entry=k == 0)
            b.add(name, layer)
            for op in ops:
                b.code_op(op, nxt.qparams())
        before = surgery.footprint(model.get_submodule(name), *([model.get_submodule(bn.module_name)] if bn else []))
        detail = {"output": layer.output, **({"folded": bn.module_name} if bn else {})}
        b.rows.append(IntegerizedLayer.between(name, before, surgery.footprint(layer), detail,
                                                  names[id(ql)][1:]))
    return b.steps, b.rows


def to_integer(model: nn.Module, example_input: torch.Tensor, *, include=None,
               exclude=None) -> tuple[IntegerNet, list[surgery.LayerChange]]:
    """An integer-arithmetic network computing what the calibrated fake-quantized ``model`` computes (``model`` is
    untouched).

    ``model`` comes from :func:`~tensorcompress.quantization.quantize_model` (weights and activations at most 8
    bits) and :func:`~tensorcompress.quantization.calibrate`. Its forward pass on ``example_input`` is traced
    (:func:`tensorcompress.surgery.trace`, each quantized layer one node) and converted only if the graph is one
    chain of operations each of which is exact on integers (see the module docstring): quantized ``nn.Conv2d`` /
    ``nn.Linear`` layers; an ``nn.BatchNorm2d`` reading a per-channel quantized convolution (folded into it, on a
    copy); ReLU, ReLU6 and hardtanh (clamps at the codes of their real bounds); max-pooling; flattening; one global
    spatial mean before a layer (an :class:`IntegerMeanPool`); identity and dropout. Any other node — a residual
    addition, a tensor read twice, an activation without an exact integer form, a float layer — is refused with a
    ``ValueError`` naming it.

    Parameters
    ----------
    model : nn.Module
    example_input : tensor
        One batch of inputs; the result accepts inputs of the same per-sample shape.
    include, exclude : str or sequence of str, optional
        Names or ``fnmatch`` patterns of quantized layers (:func:`tensorcompress.surgery.select`); integer inference
        runs every layer in integers, so the selection must keep every quantized layer the forward pass calls.

    Returns
    -------
    (IntegerNet, list of LayerChange)
        The network (float inputs, float32 outputs; int8/uint8 codes and int32 accumulators in between, in eval
        mode) and one row per integer layer (``detail``: its ``output`` — codes, accumulator or logits — and the
        BatchNorm ``folded`` into it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    chosen = surgery.select(model, QuantizedLayer, include=include, exclude=exclude, action="to_integer")
    everything = surgery.select(model, QuantizedLayer)
    left = [s.name for s in everything if s not in chosen]
    for sel in everything:  # each one the forward pass may call must be convertible, and runs while tracing
        _check_layer(sel.name, sel.module)
    new = surgery.copy_model(model)
    names = {}
    for sel in surgery.select(new, QuantizedLayer):
        leaf = _Leaf(sel.module)
        surgery.replace(new, sel.names, leaf, old=sel.module)
        names[id(sel.module)] = sel.names
    graph = surgery.trace(new, example_input)
    for node in graph.nodes:
        if isinstance(node.target, _Leaf) and node.module_name in left:
            raise ValueError(f"layer {node.module_name!r} is left out by include/exclude, but integer inference "
                             "runs every quantized layer of the forward pass in integers")
        if isinstance(node.target, _Leaf) and len(graph.calls(node.target)) > 1:
            raise ValueError(f"layer {node.module_name!r} is called {len(graph.calls(node.target))} times in the "
                             "forward pass: to_integer converts a chain that calls each layer once")
    chain = _chain(graph)
    for node in chain:
        if isinstance(node.target, surgery.LAYERS):
            raise _refuse(node, "")
    steps, rows = _build(model, chain, names)
    return IntegerNet(steps, tuple(example_input.shape[1:])).eval(), rows

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

**What acts on codes.** A layer requantizes straight into the codes of the quantizer that reads its output
next :math:`q(\cdot)`; the fake-quantized model applies the operations in between to real numbers first. An
operation :math:`f` may run on the codes instead when :math:`q(f(y)) = f_q(q(y))`. Max-pooling and flattening
commute with the monotone :math:`q`. A clip :math:`f(y) = \min(\max(y, a), b)` — ReLU (:math:`a = 0, b = \infty`),
ReLU6 (:math:`a = 0, b = 6`), hardtanh — becomes the clamp of the codes to :math:`[q(a), q(b)]`
(:class:`IntegerClamp`), since :math:`q(\min(\max(y, a), b)) = \min(\max(q(y), q(a)), q(b))` for monotone
:math:`q`; :math:`q(0) = Z` exactly. A ReLU6 is *not* a clamp of the codes to 6: its bound is the code of 6,
:math:`q_6 = \operatorname{round}(6/S) + Z`. Anything else (a leaky ReLU, a sigmoid, a concatenation, an addition
written with ``+``) has no such form and is refused by name.

**Branches.** A tensor read by several quantizers (a residual block's input, read by its first convolution and
by its shortcut) is requantized once per quantizer; where all of them have the same parameters (min-max
calibration of one tensor gives the same) the layer requantizes once and hands its codes to all. Otherwise the
layer hands over its int32 accumulators (scale :math:`S_x S_{w,c}` per channel, zero point 0; a ReLU acts on them
as the clamp at 0, other clips wait for the requantization, max-pooling and flattening act unchanged) and each
reader gets its own :class:`IntegerRequantize`; so does a reader of codes of other parameters (the output of an
addition read by the next block), :math:`q' = Z' + \operatorname{round}(S/S' \cdot (q - Z))`, the one rounding
the fake-quantized model does there too.

**Residual addition** (:class:`~tensorcompress.quantization.QuantizedAdd`, fake quantization at both inputs and at
the sum): :class:`IntegerAdd` requantizes both input codes to the sum's scale with a multiplier and shift each,
adds them and requantizes once more to the sum's step with its zero point:

.. math:: q_o = Z_o + \operatorname{round}\bigl(M_a (q_a - Z_a) + M_b (q_b - Z_b)\bigr), \qquad M_a = S_a / S_o,
          \quad M_b = S_b / S_o,

the two terms kept with 16 extra fraction bits so that the sum is rounded once, as the fake-quantized sum is.

**Average pooling** (a mean over each window, or over the feature map for global average pooling) does not commute
with rounding, so its input is summed in int64 (accumulators with scale :math:`S_x S_{w,c}`, or codes minus their
zero point) and :class:`IntegerMeanPool` requantizes once, with :math:`M_c = S_c / (S_y\,n)` for :math:`n`
positions: the rounded integer division by :math:`n` folded into the multiplier, one rounding as in the
fake-quantized model, instead of two. A ReLU6 before it clamps the accumulators at the accumulator code of 6 per
channel, :math:`\operatorname{round}(6 / S_x S_{w,c})` (half an accumulator step from 6).

:func:`to_integer` reads the traced graph of a calibrated model from
:func:`~tensorcompress.quantization.quantize_model` (weights and activations at most 8 bits) and builds an
:class:`IntegerNet`: each quantized layer an :class:`IntegerLayer` holding int8 weights, an int32 bias and
per-channel ``(m0, shift)``, taking integer codes (the first one quantizes the float input) and handing integer
codes or accumulators on; the last layer returns its accumulator dequantized to float32 logits. A BatchNorm that
alone reads a per-channel quantized convolution's output is folded into it first (``tc.surgery.fuse_conv_bn``): it
scales each output channel, which per-channel weight codes absorb into their scale. Storage: 1 byte per weight, 4
per bias, 5 per output channel for the multiplier.

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
import dataclasses
import inspect
import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .. import surgery
from .model import ADDITIONS, RELUS, ActivationQuantizer, QuantizedAdd, QuantizedLayer, bare_additions, is_relu
from .uniform import QParams, integer_dtype, quantize

__all__ = ["quantize_multiplier", "requantize", "float32_is_exact", "IntegerLayer", "IntegerMeanPool", "IntegerClamp",
           "IntegerAdd", "IntegerRequantize", "IntegerNet", "IntegerizedLayer", "to_integer"]

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
    :class:`IntegerMeanPool` or :class:`IntegerRequantize`.

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
    """Average pooling of integers into the codes of ``out_qp``: int64 sums over each window (over every position
    for global pooling), then one requantization by :math:`M_c = S_{\\text{in},c} / (S_{\\text{out}}\\, n)` — the
    rounded division by the count :math:`n` folded into the fixed-point multiplier. The input is int32
    accumulators (scale ``acc_scale[c]`` per channel, zero point 0) or codes (their scale for every channel, zero
    point ``in_zero_point``, subtracted first so that zero padding pads the real 0). Returns ``N x C`` codes for
    global pooling (``N x C x 1 x 1`` with ``keepdim``), ``N x C x H' x W'`` for a window.

    Parameters
    ----------
    acc_scale : (C,) tensor
        The real value of one unit of each input channel (:math:`S_x S_w` of the layer before, or the codes'
        scale).
    out_qp : QParams
        The per-tensor quantization of the pooled output (the next quantizer's).
    hw : int
        The count :math:`n` averaged: :math:`HW` for global pooling (the input's ``H * W`` must equal it), the
        window's area otherwise.
    keepdim : bool
        Global pooling: return ``N x C x 1 x 1`` instead of ``N x C``.
    in_zero_point : int or integer tensor
        The zero point of input codes (0 for accumulators).
    window : (kernel_size, stride, padding) of int pairs, optional
        Windowed average pooling (``nn.AvgPool2d`` counting the padded zeros); ``None``: global pooling.
    """

    def __init__(self, acc_scale: torch.Tensor, out_qp: QParams, hw: int, *, keepdim: bool = False,
                 in_zero_point: int | torch.Tensor = 0, window: tuple | None = None):
        super().__init__()
        if out_qp.axis is not None:
            raise ValueError("IntegerMeanPool needs a per-tensor output quantizer")
        self.hw, self.keepdim, self.window = hw, keepdim, window
        self.in_zero_point = int(in_zero_point)  # a constant of the conversion, like the window
        m0, shift = _multipliers(acc_scale.double() / (out_qp.scale.double() * hw))
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.register_buffer("out_zero_point", out_qp.zero_point.clone())
        self.out_range = (out_qp.qmin, out_qp.qmax)
        self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    def extra_repr(self) -> str:
        where = "" if self.window is None else f", window={self.window}"
        return f"hw={self.hw}, channels={self.m0.numel()}, keepdim={self.keepdim}{where}"

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        if acc.is_floating_point() or acc.ndim != 4 or (self.window is None and acc.shape[2] * acc.shape[3] != self.hw):
            raise ValueError(f"IntegerMeanPool expects integer accumulators N x C x H x W with H·W = {self.hw}, "
                             f"got {acc.dtype} {tuple(acc.shape)}")
        x = acc.to(torch.int64) - self.in_zero_point
        if self.window is None:
            total = x.sum(dim=(2, 3))
        else:  # window sums of integers in float64 are exact (far below 2^53)
            total = F.avg_pool2d(x.double(), *self.window, divisor_override=1).round().to(torch.int64)
        y = requantize(total, _channel(self.m0, total.ndim), _channel(self.shift, total.ndim)) + self.out_zero_point
        y = y.clamp(*self.out_range).to(self.out_dtype)
        return y[:, :, None, None] if self.keepdim and self.window is None else y


class IntegerClamp(nn.Module):
    """``clamp(x, lo, hi)`` on integer codes or accumulators (``None``: no bound; a tensor: one bound per channel):
    a ReLU, ReLU6 or hardtanh applied in the integer domain, with the bounds the codes of the real bounds (see the
    module docstring)."""

    def __init__(self, lo: int | torch.Tensor | None, hi: int | torch.Tensor | None):
        super().__init__()
        for name, bound in (("lo", lo), ("hi", hi)):
            if isinstance(bound, torch.Tensor):
                self.register_buffer(name, bound)
            else:
                setattr(self, name, bound)

    def extra_repr(self) -> str:
        def shown(b):
            return "per channel" if isinstance(b, torch.Tensor) else b
        return f"lo={shown(self.lo)}, hi={shown(self.hi)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.lo, self.hi)


def _per_tensor(qp: QParams, what: str) -> None:
    if qp.axis is not None:
        raise ValueError(f"{what} needs per-tensor quantization parameters, got axis={qp.axis}")


class IntegerRequantize(nn.Module):
    """Integer codes or accumulators into the codes of another quantizer, where one tensor meets a quantizer of
    other parameters (the output of an addition read by the next layer, an accumulator read by two quantizers):

    .. math:: q = \\operatorname{clamp}\\bigl(Z_{\\text{out}} + \\operatorname{round}(M (x - Z_{\\text{in}})),
              q_{\\min}, q_{\\max}\\bigr), \\qquad M = S_{\\text{in}} / S_{\\text{out}},

    :math:`M` by :func:`requantize`'s multiplier and shift (per channel for accumulators), then each of
    ``bounds``: the clamps at the codes of the clips (ReLU6, hardtanh) met on the way, which commute with the
    monotone requantization.

    Parameters
    ----------
    in_scale : tensor
        The real value of one input unit: 0-d for codes, per channel (broadcast over one sample) for accumulators.
    in_zero_point : int or integer tensor
        The input's zero point (0 for accumulators).
    out_qp : QParams
        The per-tensor quantization of the output.
    bounds : sequence of (int or None, int or None)
        Clamps applied in order to the output codes.
    """

    def __init__(self, in_scale: torch.Tensor, in_zero_point: int | torch.Tensor, out_qp: QParams, *,
                 bounds: tuple = ()):
        super().__init__()
        _per_tensor(out_qp, "IntegerRequantize")
        m = in_scale.double() / out_qp.scale.double()
        m0, shift = _multipliers(m.reshape(-1))
        self.register_buffer("m0", m0.reshape(m.shape))
        self.register_buffer("shift", shift.reshape(m.shape))
        self.register_buffer("in_zero_point", torch.as_tensor(in_zero_point, dtype=torch.int32).clone())
        self.register_buffer("out_zero_point", out_qp.zero_point.clone())
        self.out_range, self.bounds = (out_qp.qmin, out_qp.qmax), tuple(bounds)
        self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    def extra_repr(self) -> str:
        return f"channels={self.m0.numel()}, bounds={list(self.bounds)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            raise TypeError(f"IntegerRequantize takes integer codes or accumulators, got {x.dtype}")
        y = requantize(x.to(torch.int64) - self.in_zero_point, self.m0, self.shift) + self.out_zero_point
        y = y.clamp(*self.out_range)
        for lo, hi in self.bounds:
            y = y.clamp(lo, hi)
        return y.to(self.out_dtype)


class IntegerAdd(nn.Module):
    r"""A residual addition on integer codes: each input's codes requantized to the output's scale by a fixed-point
    multiplier and shift (as a layer's output is), with ``guard`` extra fraction bits, added, then rounded once to
    the output's step, offset by its zero point and clamped,

    .. math:: q_o = \operatorname{clamp}\Bigl(Z_o + \Bigl\lfloor \frac{r_a + r_b}{2^k} \Bigr\rceil,
              q_{\min}, q_{\max}\Bigr), \qquad r = \operatorname{round}\bigl(2^k M (q - Z)\bigr), \quad
              M_a = \frac{S_a}{S_o},\; M_b = \frac{S_b}{S_o},

    :math:`k` = ``guard`` (16 unless :math:`2^k M` would reach :func:`quantize_multiplier`'s range). The two
    requantized terms carry :math:`2^{-k-1}` of an output step of rounding each, so the sum is rounded once, as
    the fake-quantized :class:`~tensorcompress.quantization.QuantizedAdd` rounds the exact sum (without the guard
    bits, two roundings to the output step leave about a quarter of the codes one step off; TensorFlow Lite's
    integer addition keeps 20 such bits).

    Parameters
    ----------
    a_qp, b_qp, out_qp : QParams
        The per-tensor parameters of the two inputs and of the sum.
    """

    GUARD_BITS = 16

    def __init__(self, a_qp: QParams, b_qp: QParams, out_qp: QParams):
        super().__init__()
        for qp in (a_qp, b_qp, out_qp):
            _per_tensor(qp, "IntegerAdd")
        m = torch.stack([a_qp.scale.double(), b_qp.scale.double()]) / out_qp.scale.double()
        # the largest k with 2^k M below quantize_multiplier's bound 2^30
        self.guard = max(0, min(self.GUARD_BITS, math.floor(math.log2(2.0**30 / float(m.max()))) - 1))
        m0, shift = _multipliers(m * 2.0**self.guard)
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.register_buffer("in_zero_point", torch.stack([a_qp.zero_point, b_qp.zero_point]).to(torch.int32))
        self.register_buffer("out_zero_point", out_qp.zero_point.clone())
        self.out_range = (out_qp.qmin, out_qp.qmax)
        self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    def extra_repr(self) -> str:
        return f"guard={self.guard}"

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.is_floating_point() or b.is_floating_point():
            raise TypeError(f"IntegerAdd takes integer codes, got {a.dtype} and {b.dtype}")
        total = sum(requantize(codes.to(torch.int64) - self.in_zero_point[k], self.m0[k], self.shift[k])
                    for k, codes in enumerate((a, b)))
        if self.guard:  # round half up to the output's step, as requantize does
            k = self.guard
            total = torch.bitwise_right_shift(total, k) + (torch.bitwise_right_shift(total, k - 1) & 1)
        return (total + self.out_zero_point).clamp(*self.out_range).to(self.out_dtype)


class IntegerNet(nn.Sequential):
    """The integer network :func:`to_integer` builds: its steps in the traced order (reshaping of the float input,
    :class:`IntegerLayer`, :class:`IntegerClamp`, ``nn.MaxPool2d``, ``nn.Flatten``, :class:`IntegerMeanPool`,
    :class:`IntegerAdd`, :class:`IntegerRequantize`), for inputs of the per-sample shape ``input_shape`` the
    conversion was proven on.

    Parameters
    ----------
    steps : dict of str to nn.Module
        The steps, by name, in the order they run.
    input_shape : tuple of int
        The shape of one input sample.
    wiring : list of tuple of int, optional
        ``wiring[k]`` lists the values step ``k`` reads: value 0 is the input, value ``j + 1`` the output of step
        ``j``. ``None`` (and a wiring that is one) is a chain, each step reading the one before.
    output : int, optional
        The value the network returns (default: the last step's).
    """

    def __init__(self, steps: dict[str, nn.Module], input_shape: tuple[int, ...],
                 wiring: list[tuple[int, ...]] | None = None, output: int | None = None):
        super().__init__(collections.OrderedDict(steps))
        self.input_shape = tuple(input_shape)
        chain = [(k,) for k in range(len(steps))]
        output = len(steps) if output is None else output
        self.wiring = None if wiring is None or (wiring == chain and output == len(steps)) else list(wiring)
        self.output = output

    def extra_repr(self) -> str:
        return f"input_shape=N x {' x '.join(map(str, self.input_shape))}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.input_shape or x.ndim < 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected input of shape N x {' x '.join(map(str, self.input_shape))}, got {shape}")
        if self.wiring is None:
            return super().forward(x)
        values = [x]
        for step, reads in zip(self, self.wiring, strict=True):
            values.append(step(*(values[k] for k in reads)))
        return values[self.output]


# ---------------------------------------------------------------------------------------------------------------
# Reading the traced graph


class IntegerizedLayer(surgery.LayerChange):
    """A report row of :func:`to_integer`, its details typed."""

    output = surgery.Detail(str, "What the integer layer returns: ``codes``, ``accumulator`` or ``logits``.")
    folded = surgery.Detail(str, "The BatchNorm folded into the layer.", optional=True)


class _Leaf(nn.Module):
    """A quantized layer, or a quantizer of an addition, as one leaf of the traced graph: it is held outside the
    module tree, so the tracer records one node for it instead of the fake quantizers' arithmetic inside. An
    addition is traced as its input quantizers, the sum and its output quantizer: nodes that say which input is
    which."""

    def __init__(self, layer: QuantizedLayer | ActivationQuantizer):
        super().__init__()
        self.__dict__["layer"] = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _held(node: surgery.Node) -> nn.Module | None:
    """The quantized layer or quantizer a :class:`_Leaf` node stands for (``None`` for another node)."""
    return node.target.layer if isinstance(node.target, _Leaf) else None


_RELU = set(RELUS)
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


def _pair(v: int | tuple) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
"""``F.avg_pool2d``'s arguments after the input, in its order."""


def _avg_window(node: surgery.Node) -> tuple | None:
    """``(kernel_size, stride, padding)`` of an average-pooling node whose every window divides by the kernel's
    area (zero padding counted, no ceil mode, no divisor override), ``None`` for another node."""
    t = node.target
    if isinstance(t, nn.AvgPool2d):
        given = {k: getattr(t, k) for k in _AVG_POOL_ARGS}
    elif not isinstance(t, nn.Module) and getattr(t, "__name__", None) == "avg_pool2d":
        args, kwargs = node.args
        given = {**dict(zip(_AVG_POOL_ARGS, args[1:], strict=False)), **kwargs}
    else:
        return None
    kernel = _pair(given["kernel_size"])
    stride, padding = _pair(given.get("stride") or kernel), _pair(given.get("padding", 0))
    if given.get("ceil_mode") or given.get("divisor_override") is not None or (
            not given.get("count_include_pad", True) and any(padding)):
        return None
    return kernel, stride, padding


def _pooling(node: surgery.Node) -> tuple[tuple | None, bool] | None:
    """``(window, keepdim)`` of an average-pooling node (``window`` ``None`` for a global mean), ``None`` for
    another node."""
    if len(node.inputs) != 1:
        return None
    keepdim = _mean_keepdim(node)
    if keepdim is not None:
        return None, keepdim
    window = _avg_window(node)
    return None if window is None else (window, False)


def _transparent(node: surgery.Node) -> bool:
    """A one-input node that commutes with every quantizer: a clip, max-pooling, flattening, identity."""
    return len(node.inputs) == 1 and (_clip_bounds(node) is not None or _max_pool(node) is not None
                                      or _is_flatten(node) or _is_identity(node))


def _label(node: surgery.Node) -> str:
    """How errors name a node: ``name (Class)`` of a module, with a quantized layer's own class."""
    held = _held(node)
    return node.label if held is None else f"{node.module_name} ({type(held).__name__})"


_HANDLED = ("it handles quantized Conv2d / Linear layers and additions (tc.surgery.Add), a BatchNorm2d right after "
            "a convolution, ReLU, ReLU6/hardtanh, max, average and global average pooling and flattening")


def _refuse(node: surgery.Node, where: str) -> ValueError:
    if isinstance(node.target, surgery.LAYERS):
        return ValueError(f"layer {node.module_name!r} ({node.name}) is not quantized: integer inference needs every "
                          "layer quantized (quantize_model with act_bits and weight_bits at most 8)")
    if isinstance(node.target, nn.modules.batchnorm._BatchNorm):
        return ValueError(f"{node.label} does not directly follow a per-channel quantized nn.Conv2d: fold it before "
                          "quantize_model (tc.surgery.fuse_conv_bn)")
    if isinstance(node.target, surgery.Add):
        return ValueError(f"addition {node.module_name!r} is not quantized: quantize_model (with act_bits) makes "
                          "each tc.surgery.Add a QuantizedAdd with quantizers at its inputs and output")
    return ValueError(f"to_integer cannot prove {node.label} exact {where}; {_HANDLED}")


#: How errors say where a refused node sits, by what its input holds.
_WHERE = {"real": "before the first quantized layer (the network quantizes its input there; only reshaping may come "
                  "first)",
          "logits": "after the last quantized layer (its float logits are the output)",
          "codes": "on integer codes", "accumulator": "on the per-channel accumulators"}


# ---------------------------------------------------------------------------------------------------------------
# Building the integer network


def _check_activations(kind: str, name: str, q: ActivationQuantizer | None,
                       what: str = "input quantizer") -> None:
    if q is None or not bool(q.calibrated):
        raise ValueError(f"{kind} {name!r} has no calibrated {what}: quantize activations (act_bits <= 8) and run "
                         "tc.quantization.calibrate first")
    qp: QParams = q.qparams()
    if qp.qmin < -128 or qp.qmax > 255 or qp.axis is not None:
        raise ValueError(f"to_integer needs per-tensor activations of at most 8 bits, {kind} {name!r} has codes "
                         f"[{qp.qmin}, {qp.qmax}]")


def _check_layer(name: str, m: QuantizedLayer) -> None:
    base = parametrize.type_before_parametrizations(m.layer)
    if base not in (nn.Conv2d, nn.Linear):
        raise ValueError(f"layer {name!r} wraps a {base.__name__}: integer inference has nn.Conv2d and nn.Linear")
    _check_activations("layer", name, m.input_quantizer)
    if not hasattr(m.layer, "parametrizations"):
        raise ValueError(f"layer {name!r} has float weights: quantize weights (weight_bits <= 8)")


def _check_addition(name: str, m: QuantizedAdd) -> None:
    for k, q in enumerate(m.input_quantizers):
        _check_activations("addition", name, q, f"quantizer of input {k}")
    _check_activations("addition", name, m.output_quantizer, "output quantizer")


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


def _same(qps: list[QParams]) -> bool:
    """Whether the quantization parameters are all equal."""
    return all(torch.equal(q.scale, qps[0].scale) and torch.equal(q.zero_point, qps[0].zero_point)
               and (q.qmin, q.qmax) == (qps[0].qmin, qps[0].qmax) for q in qps)


@dataclasses.dataclass(frozen=True)
class _Value:
    """What the integer network holds for one traced tensor: the value ``slot`` it is computed into and its
    ``kind`` — ``"real"`` (the float input), ``"codes"`` (of ``qp``), ``"accumulator"`` (worth ``scale`` each, a
    float64 tensor broadcast over one sample) or ``"logits"``. An accumulator's ``clips`` are ``(lo, hi, name)``
    clips still to apply: they commute with what follows up to the quantizer that reads it."""

    slot: int
    kind: str
    qp: QParams | None = None
    scale: torch.Tensor | None = None
    clips: tuple = ()


_OUTPUT = -1  # the model's output, among the readers of a tensor


class _Builder:
    """Walks the traced graph in call order and emits the integer steps, the value each reads, and the report rows.

    ``model`` is the caller's (for the report's footprints); the graph is traced on a copy whose quantized layers
    and the quantizers of its additions are :class:`_Leaf` stand-ins; ``names`` maps a quantized layer of the copy
    to its names, ``adds`` an input quantizer of an addition to ``(names, (input quantizers..., output quantizer),
    position)``.
    """

    def __init__(self, model: nn.Module, graph: surgery.Graph, names: dict[int, tuple[str, ...]],
                 adds: dict[int, tuple[tuple[str, ...], tuple, int]]):
        self.model, self.graph, self.names, self.adds = model, graph, names, adds
        self.steps: dict[str, nn.Module] = {}
        self.wiring: list[tuple[int, ...]] = []
        self.rows: list[surgery.LayerChange] = []
        self.values: dict[int, _Value] = {0: _Value(0, "real")}
        self.converted: dict[tuple, int] = {}
        self.done: set[int] = set()  # folded BatchNorms and additions' output quantizers: built with their producer
        self.bare = {id(n): name for n, name in bare_additions(graph, _label)}
        nodes = graph.nodes
        self.reaches = [False] * len(nodes)  # whether a node's output reaches a quantizer
        for i in reversed(range(len(nodes))):
            self.reaches[i] = any(self.quantizer(nodes[c]) is not None or self.reaches[c] for c in nodes[i].consumers)

    # ------------------------------------------------------------------ reading the graph

    def quantizer(self, node: surgery.Node) -> ActivationQuantizer | None:
        """The quantizer through which ``node`` reads its input: a quantized layer's, or an addition's input."""
        held = _held(node)
        if isinstance(held, QuantizedLayer):
            return held.input_quantizer
        return held if id(held) in self.adds else None

    def readers(self, i: int) -> list[int]:
        """The nodes that read node ``i``'s output past clips, pooling by max, flattening and identities (which
        act on codes and accumulators alike), and :data:`_OUTPUT` if the model returns it."""
        found, stack, seen = [], [i], {i}
        while stack:
            n = stack.pop()
            if n in self.graph.outputs:
                found.append(_OUTPUT)
            for c in self.graph.nodes[n].consumers:
                if c not in seen:
                    seen.add(c)
                    (stack if _transparent(self.graph.nodes[c]) else found).append(c)
        return found

    def refuse(self, node: surgery.Node, where: str) -> ValueError:
        if id(node) in self.bare:
            return ValueError(f"{self.bare[id(node)]} is an addition written with `+`, a torch function: integer "
                              "inference needs quantizers at its inputs and output, which a module swap cannot attach "
                              "to it. Write it as tc.surgery.Add, then quantize_model and calibrate")
        return _refuse(node, where)

    def target(self, i: int, what: str) -> ActivationQuantizer | None:
        """The one quantizer (up to equal parameters) that reads node ``i`` past transparent nodes, or ``None``
        when several with different parameters, or an average pooling, read it; an error for anything else."""
        readers = self.readers(i)
        quantizers = [self.quantizer(self.graph.nodes[c]) if c != _OUTPUT else None for c in readers]
        if all(q is not None for q in quantizers) and _same([q.qparams() for q in quantizers]):
            return quantizers[0]
        for c in readers:
            if c == _OUTPUT:
                raise ValueError(f"the output of {what} is an output of the model and is read by quantized "
                                 "operations: to_integer returns the logits of the last quantized layer only")
            if self.quantizer(self.graph.nodes[c]) is None and _pooling(self.graph.nodes[c]) is None:
                raise self.refuse(self.graph.nodes[c], _WHERE["codes"])
        return None

    def inner_addition(self, node: surgery.Node) -> tuple[tuple[str, ...], tuple, int, int | None] | None:
        """``(names, quantizers, index of its output quantizer's node, index of its fused ReLU's node or None)``
        when ``node`` is the sum inside a :class:`QuantizedAdd` (reading its two input quantizers, read by its
        output quantizer only, or by a ReLU read by it only)."""
        if isinstance(node.target, nn.Module) or node.name not in ADDITIONS or len(node.inputs) != 2:
            return None
        a, b = (self.adds.get(id(_held(self.graph.nodes[j]))) for j in node.inputs)
        if a is None or b is None or a[1] is not b[1] or (a[2], b[2]) != (0, 1) or len(node.consumers) != 1:
            return None
        out, relu = node.consumers[0], None
        if is_relu(self.graph.nodes[out]) and len(self.graph.nodes[out].consumers) == 1:
            relu, out = out, self.graph.nodes[out].consumers[0]
        return (a[0], a[1], out, relu) if _held(self.graph.nodes[out]) is a[1][2] else None

    def folded_batchnorm(self, i: int) -> int | None:
        """The BatchNorm node that alone reads layer node ``i``'s output (and reads nothing else), to fold."""
        node = self.graph.nodes[i]
        if len(node.consumers) != 1 or i in self.graph.outputs:
            return None
        bn = self.graph.nodes[node.consumers[0]]
        if isinstance(bn.target, nn.modules.batchnorm._BatchNorm) and bn.inputs == [i] and len(
                self.graph.calls(bn.target)) == 1:
            return node.consumers[0]
        return None

    # ------------------------------------------------------------------ emitting steps

    def emit(self, base: str, step: nn.Module, *reads: int) -> int:
        """Add ``step`` reading values ``reads``; returns the value it computes."""
        name, k = base.replace(".", "_"), 1
        while name in self.steps:
            name, k = f"{base.replace('.', '_')}_{k}", k + 1
        self.steps[name] = step
        self.wiring.append(reads)
        return len(self.wiring)

    def codes(self, src: _Value, q: ActivationQuantizer, name: str) -> int:
        """The value holding ``src`` as codes of ``q``: itself, or requantized once (cached)."""
        qp = q.qparams()
        if src.kind == "codes" and _same([src.qp, qp]):
            return src.slot
        if src.kind not in ("codes", "accumulator"):
            raise ValueError(f"{name!r} reads the network's {'input' if src.kind == 'real' else 'logits'} in "
                             "floating point: to_integer quantizes the input at quantized layers only")
        key = (src.slot, src.clips, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)
        if key not in self.converted:
            if src.kind == "codes":
                step = IntegerRequantize(src.qp.scale, src.qp.zero_point, qp)
            else:
                step = IntegerRequantize(src.scale, 0, qp, bounds=[(_code(lo, qp), _code(hi, qp))
                                                                    for lo, hi, _ in src.clips])
            self.converted[key] = self.emit(f"{name}.requantize", step, src.slot)
        return self.converted[key]

    def clipped(self, src: _Value) -> _Value:
        """``src`` with its pending clips applied on the accumulators' own grid: per channel at the accumulator
        code nearest each bound (0 exactly; half an accumulator step for others)."""
        for lo, hi, name in src.clips:
            lo_c, hi_c = (None if math.isinf(v) else torch.round(v / src.scale).to(torch.int64) for v in (lo, hi))
            src = dataclasses.replace(src, slot=self.emit(name, IntegerClamp(lo_c, hi_c), src.slot))
        return dataclasses.replace(src, clips=())

    # ------------------------------------------------------------------ one node of each kind

    def run(self) -> None:
        for i, node in enumerate(self.graph.nodes):
            if i == 0 or i in self.done:
                continue
            inner = self.inner_addition(node)
            if isinstance(_held(node), QuantizedLayer):
                self.layer(i, node)
            elif self.quantizer(node) is not None:
                self.addition_input(i, node)
            elif inner is not None:
                self.addition(i, node, *inner)
            elif _pooling(node) is not None:
                self.pool(i, node)
            elif _transparent(node):
                self.values[i] = self.transparent(node, self.values[node.inputs[0]])
            else:
                raise self.refuse(node, _WHERE[self.values[node.inputs[0]].kind])

    def layer(self, i: int, node: surgery.Node) -> None:
        ql, name = _held(node), node.module_name
        src = self.values[node.inputs[0]]
        entry = src.kind == "real"  # the layer quantizes the network's float input itself
        reads = src.slot if entry else self.codes(src, ql.input_quantizer, name)
        bn = self.folded_batchnorm(i)
        out = i if bn is None else bn
        if bn is not None:
            _fold(ql, self.graph.nodes[bn].target, self.graph.nodes[bn].module_name)
            self.done.add(bn)
        nxt = self.target(out, _label(node)) if self.reaches[out] else None
        layer = IntegerLayer(ql, nxt, entry=entry, accumulate=self.reaches[out] and nxt is None)
        slot = self.emit(name, layer, reads)
        scale = _channel(layer.acc_scale, len(self.graph.nodes[out].out_shape))
        self.values[out] = _Value(slot, layer.output, nxt.qparams() if nxt is not None else None, scale)
        merged = [self.model.get_submodule(self.graph.nodes[bn].module_name)] if bn is not None else []
        detail = {"output": layer.output, **({"folded": self.graph.nodes[bn].module_name} if bn is not None else {})}
        self.rows.append(IntegerizedLayer.between(name, surgery.footprint(self.model.get_submodule(name), *merged),
                                                  surgery.footprint(layer), detail, self.names[id(ql)][1:]))

    def addition_input(self, i: int, node: surgery.Node) -> None:
        q = _held(node)
        name = self.adds[id(q)][0][0]
        if len(self.graph.calls(node.target)) > 1:
            raise ValueError(f"addition {name!r} is called {len(self.graph.calls(node.target))} times in the forward "
                             "pass: to_integer converts each addition called once")
        slot = self.codes(self.values[node.inputs[0]], q, name)
        self.values[i] = _Value(slot, "codes", q.qparams())

    def addition(self, i: int, node: surgery.Node, names: tuple[str, ...], quantizers: tuple, out: int,
                 relu: int | None) -> None:
        a, b = (self.values[j] for j in node.inputs)
        qp = quantizers[2].qparams()
        step = IntegerAdd(a.qp, b.qp, qp)
        slot = self.emit(names[0], step, a.slot, b.slot)
        if relu is not None and _code(0.0, qp) > qp.qmin:  # the sum's ReLU: a clamp at the code of 0
            slot = self.emit(f"{names[0]}.relu", IntegerClamp(_code(0.0, qp), None), slot)
        self.values[i] = self.values[out] = _Value(slot, "codes", qp)
        self.done.update({out} if relu is None else {out, relu})
        self.rows.append(IntegerizedLayer.between(names[0], surgery.footprint(self.model.get_submodule(names[0])),
                                                  surgery.footprint(step), {"output": "codes"}, names[1:]))

    def pool(self, i: int, node: surgery.Node) -> None:
        src = self.values[node.inputs[0]]
        if src.kind not in ("codes", "accumulator"):
            raise self.refuse(node, _WHERE[src.kind])
        q = self.target(i, node.label) if self.reaches[i] else None
        if q is None:
            readers = [_label(self.graph.nodes[c]) if c != _OUTPUT else "the output" for c in self.readers(i)]
            raise ValueError(f"{node.label} is read by {readers}: to_integer requantizes an average once, into the "
                             "codes of the one quantizer that reads it")
        window, keepdim = _pooling(node)
        src = self.clipped(src)
        channels = node.in_shape[1]
        if src.kind == "codes":
            scale, zero_point = src.qp.scale.expand(channels), src.qp.zero_point
        else:
            scale, zero_point = src.scale.reshape(-1).expand(channels), 0
        count = node.in_shape[2] * node.in_shape[3] if window is None else math.prod(window[0])
        step = IntegerMeanPool(scale, q.qparams(), count, keepdim=keepdim, in_zero_point=zero_point, window=window)
        self.values[i] = _Value(self.emit(node.module_name or node.name, step, src.slot), "codes", q.qparams())

    def transparent(self, node: surgery.Node, src: _Value) -> _Value:
        """A clip, max-pooling, flattening or identity node, on whatever its input holds."""
        clip = _clip_bounds(node)
        name = node.module_name or node.name
        if clip is None or src.kind in ("real", "logits"):
            return self.reshaped(node, src)
        if src.kind == "codes":
            step = IntegerClamp(_code(clip[0], src.qp), _code(clip[1], src.qp))
            return dataclasses.replace(src, slot=self.emit(name, step, src.slot))
        if clip == (0.0, math.inf) and not src.clips:  # a ReLU is exact on accumulators: q(0) = Z, acc(0) = 0
            return dataclasses.replace(src, slot=self.emit(name, IntegerClamp(0, None), src.slot))
        return dataclasses.replace(src, clips=(*src.clips, (*clip, name)))  # applied where it is requantized

    def reshaped(self, node: surgery.Node, src: _Value) -> _Value:
        """Max-pooling, flattening or identity (an error for any other node)."""
        if _is_identity(node):
            return src
        pool = _max_pool(node)
        if pool is not None:
            return dataclasses.replace(src, slot=self.emit(node.module_name or node.name, pool, src.slot))
        if not _is_flatten(node):
            raise self.refuse(node, _WHERE[src.kind])
        if node.out_shape == node.in_shape:
            return src
        scale = None if src.scale is None or src.kind != "accumulator" else \
            src.scale.expand(node.in_shape[1:]).reshape(-1)
        return dataclasses.replace(src, slot=self.emit(node.module_name or "flatten", nn.Flatten(), src.slot),
                                   scale=scale)

    def network(self, input_shape: tuple[int, ...]) -> IntegerNet:
        out = self.values[self.graph.outputs[0]]
        if out.kind != "logits":
            raise ValueError(f"the model's output comes from {_label(self.graph.nodes[self.graph.outputs[0]])}: "
                             "to_integer returns the float logits of the last quantized layer")
        if not any(isinstance(s, IntegerLayer) for s in self.steps.values()):
            raise ValueError("no quantized layer is called in the forward pass of example_input")
        return IntegerNet(self.steps, input_shape, self.wiring, out.slot).eval()


def to_integer(model: nn.Module, example_input: torch.Tensor, *, include=None,
               exclude=None) -> tuple[IntegerNet, list[surgery.LayerChange]]:
    """An integer-arithmetic network computing what the calibrated fake-quantized ``model`` computes (``model`` is
    untouched).

    ``model`` comes from :func:`~tensorcompress.quantization.quantize_model` (weights and activations at most 8
    bits) and :func:`~tensorcompress.quantization.calibrate`. Its forward pass on ``example_input`` is traced
    (:func:`tensorcompress.surgery.trace`, each quantized layer one node) and converted node by node if every node
    has an exact integer form (see the module docstring): quantized ``nn.Conv2d`` (dense, grouped, depthwise) and
    ``nn.Linear`` layers; an ``nn.BatchNorm2d`` that alone reads a per-channel quantized convolution (folded into
    it, on a copy, by :func:`tensorcompress.surgery.fuse_conv_bn`); :class:`~tensorcompress.quantization.QuantizedAdd`
    residual additions (an :class:`IntegerAdd`); ReLU, ReLU6 and hardtanh (clamps at the codes of their real
    bounds); max-pooling; average and global average pooling (an :class:`IntegerMeanPool`); flattening; identity
    and dropout. Any other node — an addition written with ``+``, an activation without an exact integer form, a
    float layer — is refused with a ``ValueError`` naming it.

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
        mode) and one row per integer layer and addition (``detail``: its ``output`` — codes, accumulator or
        logits — and the BatchNorm ``folded`` into it).
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
    names, adds = {}, {}
    for sel in surgery.select(new, QuantizedLayer):
        surgery.replace(new, sel.names, _Leaf(sel.module), old=sel.module)
        names[id(sel.module)] = sel.names
    for sel in surgery.select(new, QuantizedAdd):
        _check_addition(sel.name, sel.module)
        quantizers = (*sel.module.input_quantizers, sel.module.output_quantizer)
        adds.update({id(q): (sel.names, quantizers, k) for k, q in enumerate(quantizers[:2])})
        sel.module.input_quantizers = nn.ModuleList([_Leaf(q) for q in quantizers[:2]])
        sel.module.output_quantizer = _Leaf(quantizers[2])
    graph = surgery.trace(new, example_input)
    for node in graph.nodes:
        if isinstance(node.target, (*surgery.LAYERS, surgery.Add)):  # a float layer or addition, wherever it is
            raise _refuse(node, "")
        if not isinstance(_held(node), QuantizedLayer):
            continue
        if node.module_name in left:
            raise ValueError(f"layer {node.module_name!r} is left out by include/exclude, but integer inference "
                             "runs every quantized layer of the forward pass in integers")
        if len(graph.calls(node.target)) > 1:
            raise ValueError(f"layer {node.module_name!r} is called {len(graph.calls(node.target))} times in the "
                             "forward pass: to_integer converts each layer called once")
    if len(graph.outputs) != 1 or not isinstance(graph.output, torch.Tensor):
        raise ValueError(f"to_integer needs a model that returns one tensor, got {type(graph.output).__name__} "
                         f"from {len(graph.outputs)} traced operations")
    builder = _Builder(model, graph, names, adds)
    builder.run()
    return builder.network(tuple(example_input.shape[1:])), builder.rows

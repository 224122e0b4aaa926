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
:math:`31 + n` bits. Clamping to the output range applies a following ReLU for free (its zero point is the lowest
code). Max-pooling and flattening act on codes directly (they commute with the monotone quantizer).

:func:`to_integer` turns a calibrated model from :func:`~tensorcompress.quantization.quantize_model` (weights and
activations at most 8 bits, BatchNorm already folded) into such a network: each quantized layer holds int8 weights,
an int32 bias and per-channel ``(m0, shift)``, takes the integer codes of the previous layer (or quantizes the
float input at the entry) and hands integer codes to the next; the last layer returns its accumulator dequantized
to float32 logits. Storage: 1 byte per weight, 4 per bias, 5 per output channel for the multiplier.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import surgery
from .model import ActivationQuantizer, QuantizedLayer
from .uniform import QParams, integer_dtype, quantize

__all__ = ["quantize_multiplier", "requantize", "IntegerLayer", "to_integer"]


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``(m0, shift)`` with :math:`m \\approx 2^{-\\text{shift}}\\, m_0 / 2^{31}`, ``m0`` an int32 in
    :math:`[2^{30}, 2^{31})` (relative error at most :math:`2^{-31}`). ``m`` must be finite and > 0; ``shift`` is
    negative for ``m >= 1``."""
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0:
        raise ValueError(f"m must be a finite number > 0, got {m!r}")
    frac, exp = math.frexp(m)  # m = frac · 2^exp, frac in [0.5, 1)
    m0 = round(frac * 2**31)
    if m0 == 2**31:  # frac rounded up to 1
        m0, exp = m0 // 2, exp + 1
    return m0, -exp


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:math:`\\operatorname{round}(\\text{acc}\\cdot m_0 / 2^{31 + \\text{shift}})` in integer arithmetic (int64
    product, rounding right shift; ties toward :math:`+\\infty`). ``m0`` and ``shift`` broadcast against ``acc``."""
    prod = acc.to(torch.int64) * m0.to(torch.int64)
    s = (31 + shift).to(torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(s), s - 1)
    return torch.bitwise_right_shift(prod + half, s)


class IntegerLayer(nn.Module):
    """A conv or linear layer in integer arithmetic (see the module docstring). Buffers: ``weight`` (int8),
    ``bias`` (int32), ``m0`` (int32) and ``shift`` (int8) per output channel, the input's and output's zero points;
    ``in_scale`` only for the ``entry`` layer, which quantizes the network's float input; ``out_scale`` (float32,
    per channel) only for the last layer, whose accumulator is returned as real numbers."""

    def __init__(self, layer: QuantizedLayer, next_quantizer: ActivationQuantizer | None, *, entry: bool = True):
        super().__init__()
        inner = layer.layer
        wq = inner.parametrizations.weight[0]
        w = inner.parametrizations.weight.original.detach()
        w_qp = wq.qparams(w)
        in_qp = layer.input_quantizer.qparams()
        if w_qp.qmin < -128 or w_qp.qmax > 127:
            raise ValueError(f"to_integer needs weights of at most 8 bits, got codes [{w_qp.qmin}, {w_qp.qmax}]")
        self.kind = "conv" if isinstance(inner, nn.Conv2d) else "linear"
        if self.kind == "conv":
            self.conv_args = dict(stride=inner.stride, padding=inner.padding, dilation=inner.dilation,
                                  groups=inner.groups)
            if inner.padding_mode != "zeros":
                raise ValueError(f"to_integer supports zero padding only, got padding_mode={inner.padding_mode!r}")
        n_out = w.shape[0]
        s_w = w_qp.scale.expand(n_out) if w_qp.axis is None else w_qp.scale
        acc_scale = (in_qp.scale.double() * s_w.double())  # S_x S_w per output channel
        self.register_buffer("weight", quantize(w, w_qp).to(torch.int8))
        b = inner.bias.detach().double() if inner.bias is not None else torch.zeros(n_out, dtype=torch.float64)
        self.register_buffer("bias", torch.round(b / acc_scale).to(torch.int32))
        self.in_range, self.entry = (in_qp.qmin, in_qp.qmax), entry
        if entry:  # only the network's entry quantizes real numbers; later layers receive codes
            self.register_buffer("in_scale", in_qp.scale.clone())
        self.register_buffer("in_zero_point", in_qp.zero_point.clone())
        self.last = next_quantizer is None
        if self.last:
            self.register_buffer("out_scale", acc_scale.float())
        else:
            out_qp = next_quantizer.qparams()
            pairs = [quantize_multiplier(float(m)) for m in acc_scale / out_qp.scale.double()]
            self.register_buffer("m0", torch.tensor([p[0] for p in pairs], dtype=torch.int32))
            self.register_buffer("shift", torch.tensor([p[1] for p in pairs], dtype=torch.int8))
            self.register_buffer("out_zero_point", out_qp.zero_point.clone())
            self.out_range = (out_qp.qmin, out_qp.qmax)
            self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    def _channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.reshape(-1, *([1] * (ndim - 2))) if ndim > 2 else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # the network's entry: quantize the real input
            if not self.entry:
                raise TypeError("this IntegerLayer takes the integer codes of the previous layer, got a float "
                                f"tensor ({x.dtype})")
            x = quantize(x, QParams(self.in_scale, self.in_zero_point, *self.in_range))
        xi = x.to(torch.int32) - self.in_zero_point
        w = self.weight.to(torch.int32)
        acc = F.conv2d(xi, w, **self.conv_args) if self.kind == "conv" else xi @ w.T
        acc = acc + self._channel(self.bias, acc.ndim)
        if self.last:
            return acc.to(torch.float32) * self._channel(self.out_scale, acc.ndim)
        y = requantize(acc, self._channel(self.m0, acc.ndim), self._channel(self.shift, acc.ndim))
        y = y + self.out_zero_point
        return y.clamp(*self.out_range).to(self.out_dtype)


def to_integer(model: nn.Module) -> nn.Module:
    """An integer-arithmetic copy of a calibrated fake-quantized ``model`` (``model`` is untouched).

    The quantized layers must run in the order they are registered, each one's output feeding the next through
    operations that act on integer codes (ReLU, max-pooling, flattening) — true of LeNet-5 and LeNet-300-100. The
    result takes float inputs and returns float32 outputs; everything in between is int8 codes and int32
    accumulators. A model with BatchNorm must have it folded into the convolutions first.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    if not layers:
        raise ValueError("model has no quantized layers: build it with tc.quantization.quantize_model")
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("model has BatchNorm layers: fold them into the convolutions before quantize_model "
                         "(torch.nn.utils.fusion.fuse_conv_bn_eval)")
    for name, m in layers:
        if m.input_quantizer is None or not bool(m.input_quantizer.calibrated):
            raise ValueError(f"layer {name!r} has no calibrated input quantizer: quantize activations "
                             f"(act_bits <= 8) and run tc.quantization.calibrate first")
        if not hasattr(m.layer, "parametrizations"):
            raise ValueError(f"layer {name!r} has float weights: quantize weights (weight_bits <= 8)")
        qp: QParams = m.input_quantizer.qparams()
        if qp.qmin < -128 or qp.qmax > 255 or qp.axis is not None:
            raise ValueError(f"to_integer needs per-tensor activations of at most 8 bits, layer {name!r} has "
                             f"codes [{qp.qmin}, {qp.qmax}]")
    new = copy.deepcopy(model)
    for i, (name, m) in enumerate(layers):
        nxt = layers[i + 1][1].input_quantizer if i + 1 < len(layers) else None
        surgery.replace(new, name, IntegerLayer(m, nxt, entry=i == 0), old=m)
    return new.eval()

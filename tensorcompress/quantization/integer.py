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
:math:`31 + n` bits (:func:`requantize`). Clamping to the output range applies a following ReLU for free (its zero
point is the lowest code). Max-pooling and flattening act on codes directly (they commute with the monotone
quantizer).

Global average pooling (SmallCNN's ``mean`` over the feature map) does not commute with rounding, so the
convolution before it hands over its int32 accumulators (scale :math:`S_x S_{w,c}` per channel, zero point 0; ReLU
and max-pooling act on them unchanged) and :class:`IntegerMeanPool` sums them over the :math:`HW` positions in
int64 and requantizes once, with :math:`M_c = S_x S_{w,c} / (S_y\,HW)`: one rounding, as in the fake-quantized
model, instead of two.

:func:`to_integer` turns a calibrated model from :func:`~tensorcompress.quantization.quantize_model` (weights and
activations at most 8 bits) into such a network: each quantized layer holds int8 weights, an int32 bias and
per-channel ``(m0, shift)``, takes the integer codes of the previous layer (or quantizes the float input at the
entry) and hands integer codes to the next; the last layer returns its accumulator dequantized to float32 logits.
A BatchNorm after a per-channel quantized convolution is folded first (``tc.surgery.fuse_conv_bn``): it scales
each output channel, which per-channel weight codes absorb into their scale. Storage: 1 byte per weight, 4 per
bias, 5 per output channel for the multiplier.
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from .. import surgery
from .model import ActivationQuantizer, QuantizedLayer
from .uniform import QParams, integer_dtype, quantize

__all__ = ["quantize_multiplier", "requantize", "IntegerLayer", "IntegerMeanPool", "IntegerGlobalPoolNet",
           "to_integer"]

# 31 + shift is the right shift of requantize: at least 1 (a rounding bit) and at most 62 (an int64 product)
MULTIPLIER_RANGE = (2.0**-32, 2.0**30)


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
    product, rounding right shift; ties toward :math:`+\\infty`), as an int64 tensor. ``m0`` and ``shift`` (from
    :func:`quantize_multiplier`) broadcast against ``acc``; ``|acc|`` must stay below :math:`2^{32}` so that the
    product fits in int64."""
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
    prod = acc.to(torch.int64) * m0.to(torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(s), s - 1)
    return torch.bitwise_right_shift(prod + half, s)


def _channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along axis 1 of an ``ndim``-d tensor."""
    return t.reshape(-1, *([1] * (ndim - 2))) if ndim > 2 else t


def _integer_product(xi: torch.Tensor, w: torch.Tensor, conv_args: dict | None) -> torch.Tensor:
    """The int32 accumulator of a conv (``conv_args``) or linear layer on int32 codes. PyTorch has integer
    convolutions and matrix products on the CPU only; elsewhere they run in float64, exact for the integers here
    (every partial sum stays far below 2^53)."""
    if xi.device.type != "cpu":
        xi, w = xi.double(), w.double()
    acc = F.conv2d(xi, w, **conv_args) if conv_args is not None else xi @ w.T
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
    :class:`IntegerMeanPool`."""

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
        xi = x.to(torch.int32) - self.in_zero_point
        acc = _integer_product(xi, self.weight.to(torch.int32), self.conv_args if self.kind == "conv" else None)
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
    :math:`M_c = S_{\\text{acc},c} / (S_{\\text{out}}\\, HW)`. Returns ``N x C`` codes."""

    def __init__(self, acc_scale: torch.Tensor, out_qp: QParams, hw: int):
        super().__init__()
        if out_qp.axis is not None:
            raise ValueError("IntegerMeanPool needs a per-tensor output quantizer")
        self.hw = hw
        m0, shift = _multipliers(acc_scale.double() / (out_qp.scale.double() * hw))
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.register_buffer("out_zero_point", out_qp.zero_point.clone())
        self.out_range = (out_qp.qmin, out_qp.qmax)
        self.out_dtype = integer_dtype(out_qp.qmin, out_qp.qmax)

    def extra_repr(self) -> str:
        return f"hw={self.hw}, channels={self.m0.numel()}"

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        if acc.is_floating_point() or acc.ndim != 4 or acc.shape[2] * acc.shape[3] != self.hw:
            raise ValueError(f"IntegerMeanPool expects integer accumulators N x C x H x W with H·W = {self.hw}, "
                             f"got {acc.dtype} {tuple(acc.shape)}")
        total = acc.to(torch.int64).sum(dim=(2, 3))
        if total.numel() and int(total.abs().max()) >= 2**32:
            raise ValueError("accumulator sum too large for the int64 product of requantize")
        y = requantize(total, self.m0, self.shift) + self.out_zero_point
        return y.clamp(*self.out_range).to(self.out_dtype)


class IntegerGlobalPoolNet(nn.Module):
    """``classifier(pool(features(x)))``: SmallCNN's structure in integers (``features`` ends with accumulators,
    ``pool`` an :class:`IntegerMeanPool`, ``classifier`` the last :class:`IntegerLayer`), with SmallCNN's input
    check."""

    def __init__(self, features: nn.Module, pool: IntegerMeanPool, classifier: nn.Module, *, in_channels: int,
                 input_size: int):
        super().__init__()
        self.features, self.pool, self.classifier = features, pool, classifier
        self.in_channels, self.input_size = in_channels, input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"expected input of shape N x {self.in_channels} x {self.input_size} x "
                             f"{self.input_size}, got {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(x)))


def _fold_batchnorm(model: nn.Module) -> None:
    """Fold, in place, every BatchNorm that directly follows a per-channel quantized convolution in a Sequential
    into that convolution's float weight and bias (the weight quantizer re-reads them); the BatchNorm becomes an
    ``nn.Identity``. Any other BatchNorm is an error."""
    from ..surgery import fuse_conv_bn

    folded = set()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            ql, bn = seq._modules[a], seq._modules[b]
            if not (isinstance(ql, QuantizedLayer) and isinstance(bn, nn.BatchNorm2d)
                    and isinstance(ql.layer, nn.Conv2d)):
                continue
            inner = ql.layer
            if not hasattr(inner, "parametrizations"):
                raise ValueError(f"BatchNorm {b!r} follows a convolution with float weights: quantize weights "
                                 "(weight_bits <= 8) or fold it before quantize_model (tc.surgery.fuse_conv_bn)")
            wq = inner.parametrizations.weight[0]
            if wq.observer.axis is None or wq.learnable:
                raise ValueError(f"BatchNorm {b!r} follows a convolution with per-tensor or learnable weight "
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
            conv = fuse_conv_bn(nn.Sequential(plain, copy.deepcopy(bn)).eval())[0][0]
            with torch.no_grad():
                inner.parametrizations.weight.original.copy_(conv.weight)
                if inner.bias is None:
                    inner.bias = nn.Parameter(conv.bias.detach().clone())
                else:
                    inner.bias.copy_(conv.bias)
            seq._modules[b] = nn.Identity()
            folded.add(id(bn))
    left = [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in folded]
    if left:
        raise ValueError(f"BatchNorm layers {left} do not follow a quantized nn.Conv2d inside an nn.Sequential: fold "
                         "them before quantize_model (tc.surgery.fuse_conv_bn)")


def _check_layers(model: nn.Module) -> list[tuple[str, QuantizedLayer]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    if not layers:
        raise ValueError("model has no quantized layers: build it with tc.quantization.quantize_model")
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
    floats = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
              and not any(m is q.layer for _, q in layers)]
    if floats:
        raise ValueError(f"layers {floats} are not quantized: integer inference needs every nn.Conv2d / nn.Linear "
                         "quantized (quantize_model without include/exclude)")
    return layers


def to_integer(model: nn.Module) -> nn.Module:
    """An integer-arithmetic copy of a calibrated fake-quantized ``model`` (``model`` is untouched).

    The quantized layers must run in the order they are registered, each one's output feeding the next through
    operations that act on integer codes (ReLU, max-pooling, flattening) — true of LeNet-5 and LeNet-300-100 — or
    the model is a :class:`~tensorcompress.models.SmallCNN`, whose global average pooling becomes an
    :class:`IntegerMeanPool` (the result is then an :class:`IntegerGlobalPoolNet`). BatchNorm layers that follow
    per-channel quantized convolutions are folded into them (on the copy); fold any other BatchNorm before
    :func:`~tensorcompress.quantization.quantize_model`. The result takes float inputs and returns float32 outputs;
    everything in between is int8/uint8 codes and int32 accumulators.
    """
    from ..models import SmallCNN

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = _check_layers(model)
    gap = isinstance(model, SmallCNN)
    if gap and not (isinstance(model.classifier, QuantizedLayer) and layers[-1][1] is model.classifier):
        raise ValueError("to_integer needs every layer of a SmallCNN quantized, its classifier included")
    new = copy.deepcopy(model)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in new.modules()):
        _fold_batchnorm(new)
    layers = [(n, new.get_submodule(n)) for n, _ in layers]
    for i, (name, m) in enumerate(layers):
        pooled = gap and i == len(layers) - 2  # the last convolution feeds the global average pool
        nxt = layers[i + 1][1].input_quantizer if i + 1 < len(layers) and not pooled else None
        surgery.replace(new, name, IntegerLayer(m, nxt, entry=i == 0, accumulate=pooled), old=m)
    if gap:
        last_conv = new.get_submodule(layers[-2][0])
        side = model.input_size // 4  # two 2x2 max-pools
        pool = IntegerMeanPool(last_conv.acc_scale, layers[-1][1].input_quantizer.qparams(), side * side)
        new = IntegerGlobalPoolNet(new.features, pool, new.classifier, in_channels=model.in_channels,
                                   input_size=model.input_size)
    return new.eval()


r"""Uniform (linear) quantization: the affine map, its parameters, and fake quantization bit-exact with PyTorch.

A real value :math:`r` is stored as an integer :math:`q \in [q_{\min}, q_{\max}]` through the affine map
(Jacob et al. 2018)

.. math:: q = \operatorname{clamp}\bigl(Z + \operatorname{round}(r / S),\, q_{\min},\, q_{\max}\bigr), \qquad
          \hat r = S\,(q - Z),

with step (scale) :math:`S > 0` and integer zero point :math:`Z`, chosen so that the real 0 is exactly
representable (zero padding, ReLU outputs). From a range :math:`[r_{\min}, r_{\max}]`, first widened to contain 0:

* affine (asymmetric): :math:`S = (r_{\max} - r_{\min}) / (q_{\max} - q_{\min})`,
  :math:`Z = \operatorname{clamp}(q_{\min} - \operatorname{round}(r_{\min}/S))`;
* symmetric: :math:`S = \max(|r_{\min}|, r_{\max}) / ((q_{\max} - q_{\min})/2)`, :math:`Z = 0` (signed) or the
  middle of the unsigned range;

and :math:`S \ge \varepsilon` (float32's machine epsilon) so an all-zero tensor still has a valid step — exactly
``torch.ao.quantization.MinMaxObserver``'s rule. Inside the range the rounding error
:math:`\hat r - r \in [-S/2, S/2]`; for inputs spread over many steps it is close to uniform, with mean 0 and
variance :math:`S^2/12`, so each extra bit buys :math:`20\log_{10}2 \approx 6.02` dB of signal-to-noise ratio.

Storage: ``bits`` bits per value plus one float32 scale and one integer zero point per tensor (per-tensor) or per
output channel (per-channel, ``axis``).

Bit-exactness. PyTorch's fake-quant kernels (``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``)
multiply by the float32 ``inv_scale = 1/S`` rather than dividing by :math:`S`, round half to even
(``std::nearbyint``), add :math:`Z` in floating point, clamp, and compute :math:`(q - Z)\cdot S` in float32
(per-tensor) or double (per-channel) before casting to the input's dtype. Multiplying by the rounded reciprocal and
dividing by :math:`S` give different codes for some inputs at or next to a rounding tie (about 5 % of them for S =
0.1); this module follows the kernels step by step, so :func:`fake_quantize` gives the same bits and the same
gradient: the straight-through estimator (Bengio et al. 2013) passes the gradient where :math:`q_{\min} \le Z +
\operatorname{round}(r/S) \le q_{\max}` and zeroes it outside. ``torch.ao.quantization`` (being retired in favour of
torchao) is used only as a test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validation import MAX_BITS, check_bits, check_finite, check_tensor

__all__ = ["QParams", "qparams", "qrange", "quantize", "dequantize", "fake_quantize", "integer_dtype"]

_EPS = torch.finfo(torch.float32).eps
_HALF = (torch.float16, torch.bfloat16)


def qrange(bits: int, *, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit code.

    Parameters
    ----------
    bits : int
        Code width, 1 to 16.
    signed : bool
        Signed: :math:`[-2^{b-1}, 2^{b-1} - 1]`; unsigned: :math:`[0, 2^b - 1]`.
    narrow_range : bool
        Drop the lowest code (``[-127, 127]`` at 8 bits, so that a symmetric range maps to symmetric codes, as
        Jacob et al.'s int8 weights); needs ``bits >= 2``.

    Returns
    -------
    (int, int)
    """
    check_bits(bits)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if narrow_range:
        if bits < 2:
            raise ValueError(f"narrow_range needs bits >= 2 (one code is dropped), got bits={bits}")
        qmin += 1
    return qmin, qmax


def integer_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype holding ``[qmin, qmax]``: int8, uint8, int16 or int32."""
    for dt in (torch.int8, torch.uint8, torch.int16):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    return torch.int32


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters: ``scale`` (float32), ``zero_point`` (int32), the integer range and the channel axis.

    ``scale`` and ``zero_point`` are 0-d tensors (per-tensor, ``axis=None``) or 1-d tensors of one length
    (per-channel along ``axis``). Python numbers are accepted and converted. Invalid values (``scale <= 0``, NaN,
    a zero point outside ``[qmin, qmax]``, a range of more than 16 bits) raise ``ValueError``.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None

    def __post_init__(self):
        for name in ("qmin", "qmax"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} ({v!r})")
        if not self.qmin < self.qmax:
            raise ValueError(f"qmin must be < qmax, got qmin={self.qmin}, qmax={self.qmax}")
        if self.qmax - self.qmin > 2**MAX_BITS - 1 or self.qmin < -(2 ** (MAX_BITS - 1)) or self.qmax >= 2**MAX_BITS:
            raise ValueError(f"[qmin, qmax] = [{self.qmin}, {self.qmax}] needs more than {MAX_BITS} bits "
                             f"(allowed: ranges of at most 2**{MAX_BITS} codes within int16 or uint16)")
        scale = torch.as_tensor(self.scale)
        if not scale.is_floating_point():
            raise TypeError(f"scale must be a floating point number or tensor, got dtype {scale.dtype}")
        scale = scale.detach().to(torch.float32)
        zp = torch.as_tensor(self.zero_point, device=scale.device)
        if zp.is_floating_point() or zp.is_complex() or zp.dtype == torch.bool:
            raise TypeError(f"zero_point must be an integer (int or integer tensor), got dtype {zp.dtype}")
        zp = zp.detach().to(torch.int32)
        if scale.ndim > 1 or zp.shape != scale.shape:
            raise ValueError(f"scale and zero_point must both be 0-d (per-tensor) or 1-d of one length "
                             f"(per-channel), got shapes {tuple(scale.shape)} and {tuple(zp.shape)}")
        if (scale.ndim == 1) != (self.axis is not None):
            raise ValueError(f"axis must be given exactly when scale is 1-d (per-channel), got axis={self.axis!r} "
                             f"with scale of shape {tuple(scale.shape)}")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise TypeError(f"axis must be an int or None, got {self.axis!r}")
        bad = ~torch.isfinite(scale) | (scale <= 0)
        if bool(bad.any()):
            raise ValueError(f"scale must be finite and > 0, got {scale[bad].flatten()[:5].tolist()}")
        out = (zp < self.qmin) | (zp > self.qmax)
        if bool(out.any()):
            raise ValueError(f"zero_point must lie in [qmin, qmax] = [{self.qmin}, {self.qmax}], got "
                             f"{zp[out].flatten()[:5].tolist()}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    @property
    def per_channel(self) -> bool:
        """Whether scale and zero point are vectors along ``axis``."""
        return self.axis is not None

    @property
    def bits(self) -> int:
        """Bits needed for the code range: :math:`\\lceil\\log_2(q_{\\max} - q_{\\min} + 1)\\rceil`."""
        return math.ceil(math.log2(self.qmax - self.qmin + 1))

    def to(self, device: torch.device | str) -> QParams:
        """The same parameters on ``device``."""
        return QParams(self.scale.to(device), self.zero_point.to(device), self.qmin, self.qmax, self.axis)

    def __repr__(self) -> str:
        s = self.scale.tolist() if self.scale.numel() <= 4 else f"<{self.scale.numel()} values>"
        z = self.zero_point.tolist() if self.zero_point.numel() <= 4 else f"<{self.zero_point.numel()} values>"
        return f"QParams(scale={s}, zero_point={z}, qmin={self.qmin}, qmax={self.qmax}, axis={self.axis})"


def _as_stat(v: object, name: str) -> torch.Tensor:
    if isinstance(v, bool) or not isinstance(v, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a floating point tensor, got {type(v).__name__}")
    t = torch.as_tensor(v)
    if not (t.is_floating_point() or isinstance(v, int)):
        raise TypeError(f"{name} must be a number or a floating point tensor, got dtype {t.dtype}")
    t = t.detach().to(torch.float32)
    check_finite(t, name)
    return t


def qparams(x_min: float | torch.Tensor, x_max: float | torch.Tensor, *, bits: int = 8, symmetric: bool = False,
            signed: bool | None = None, narrow_range: bool = False, axis: int | None = None) -> QParams:
    """Scale and zero point for the range ``[x_min, x_max]`` (widened to contain 0).

    Parameters
    ----------
    x_min, x_max : float or tensor
        The range: scalars (per-tensor) or 1-d tensors (per-channel, one entry per channel along ``axis``).
    bits : int
        Code width, 1 to 16.
    symmetric : bool
        ``False``: affine map over ``[min(x_min, 0), max(x_max, 0)]``. ``True``: range ``[-m, m]`` with
        ``m = max(|x_min|, |x_max|)``, zero point 0 (signed) or the middle code (unsigned).
    signed : bool, optional
        Signed codes (``[-2^(b-1), 2^(b-1) - 1]``) or unsigned (``[0, 2^b - 1]``). Default: signed when symmetric
        (PyTorch's ``qint8``), unsigned when affine (``quint8``).
    narrow_range : bool
        Drop the lowest code (``[-127, 127]``).
    axis : int, optional
        The channel axis of the tensors these parameters will quantize; required for 1-d ranges.

    Returns
    -------
    QParams
        Computed in float32 with PyTorch's formulas: equal to ``MinMaxObserver`` / ``PerChannelMinMaxObserver``
        with ``qscheme=per_tensor_affine`` (``quint8``) or ``per_tensor_symmetric`` (``qint8``) on the same
        minimum and maximum.
    """
    check_bits(bits)
    signed = symmetric if signed is None else bool(signed)
    qmin, qmax = qrange(bits, signed=signed, narrow_range=narrow_range)
    lo = _as_stat(x_min, "x_min")
    hi = _as_stat(x_max, "x_max").to(lo.device)
    if lo.shape != hi.shape or lo.ndim > 1:
        raise ValueError(f"x_min and x_max must both be scalars or 1-d tensors of one length, got shapes "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError(f"x_min must be <= x_max, got x_min={lo.tolist()}, x_max={hi.tolist()}")
    if lo.ndim == 1 and axis is None:
        raise ValueError("axis is required for per-channel (1-d) x_min / x_max")
    if lo.ndim == 0 and axis is not None:
        raise ValueError(f"axis={axis} given with scalar x_min / x_max: per-channel ranges must be 1-d tensors")
    zero = torch.zeros_like(lo)
    lo, hi = torch.minimum(lo, zero), torch.maximum(hi, zero)
    eps = torch.tensor(_EPS, device=lo.device)
    if symmetric:
        # PyTorch divides by (qmax - qmin)/2 (127.5 for qint8), not by qmax.
        scale = torch.maximum(torch.maximum(-lo, hi) / (float(qmax - qmin) / 2), eps)
        zp = torch.full_like(lo, 0 if signed else (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        scale = torch.maximum((hi - lo) / float(qmax - qmin), eps)
        zp = (qmin - torch.round(lo / scale).to(torch.int32)).clamp(qmin, qmax)
    return QParams(scale, zp, qmin, qmax, axis)


def _check_input(x: object, qp: QParams, name: str = "x") -> torch.Tensor:
    check_tensor(x, name, floating=True)
    if not isinstance(qp, QParams):
        raise TypeError(f"qp must be a QParams (see tc.quantization.qparams), got {type(qp).__name__}")
    if qp.axis is not None:
        if not -x.ndim <= qp.axis < x.ndim:
            raise ValueError(f"qp.axis={qp.axis} is out of range for {name} of shape {tuple(x.shape)}")
        if x.shape[qp.axis] != qp.scale.numel():
            raise ValueError(f"{name} has {x.shape[qp.axis]} channels along axis {qp.axis} but qp has "
                             f"{qp.scale.numel()} scales")
    return x


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    t = t.to(x.device)
    if axis is None:
        return t
    shape = [1] * x.ndim
    shape[axis] = -1
    return t.reshape(shape)


def _codes(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``Z + round(x * inv_scale)`` in the kernel's precision (unclamped, floating), as a new tensor: the product is
    the one full-size temporary, rounded and shifted in place."""
    work = torch.float32 if x.dtype in _HALF else x.dtype
    inv = _broadcast(1.0 / qp.scale, x, qp.axis).to(work)  # float32 reciprocal, as the kernel's `1.0f / scale`
    zp = _broadcast(qp.zero_point, x, qp.axis).to(work)
    q = x * inv if x.dtype == work else x.to(work).mul_(inv)
    return q.round_().add_(zp)


def _dequant(q: torch.Tensor, qp: QParams, dtype: torch.dtype, *, owned: bool = False) -> torch.Tensor:
    """:math:`S(q - Z)` as ``dtype``; ``owned``: ``q`` is a temporary that may be overwritten."""
    # As the CPU kernels: per-tensor forms (q - Z) * S in float32 (int64 * float), per-channel in double
    # (std::fmin promotes), then one cast to the result dtype. The two differ for float64 and half results.
    work = torch.float32 if qp.axis is None else torch.float64
    zp = _broadcast(qp.zero_point, q, qp.axis).to(work)
    scale = _broadcast(qp.scale, q, qp.axis).to(work)
    return q.to(work, copy=not owned).sub_(zp).mul_(scale).to(dtype)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """The integer codes :math:`\\operatorname{clamp}(Z + \\operatorname{round}(x/S), q_{\\min}, q_{\\max})`, as the
    smallest integer dtype holding ``[qmin, qmax]`` (:func:`integer_dtype`), on ``x``'s device.

    These are the codes of PyTorch's fake-quant kernels, ``torch.fake_quantize_per_tensor_affine`` (``qp.axis is
    None``) and ``torch.fake_quantize_per_channel_affine``: ``fake_quantize(x, qp) == dequantize(quantize(x, qp),
    qp)`` bit for bit. ``torch.quantize_per_tensor`` (and ``quantize_per_channel``) differ on ties: they round
    *after* adding the zero point, :math:`\\operatorname{round}(x/S + Z)`, and since both round half to even the
    two disagree by one code wherever :math:`x/S` is a tie and :math:`Z` is odd (:math:`x/S = 2.5`, :math:`Z = 1`:
    3 here, 4 there); with :math:`Z = 0` they agree."""
    _check_input(x, qp)
    check_finite(x)
    return _codes(x.detach(), qp).clamp_(qp.qmin, qp.qmax).to(integer_dtype(qp.qmin, qp.qmax))


def dequantize(q: torch.Tensor, qp: QParams, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:math:`S\\,(q - Z)`; ``dequantize(quantize(x, qp), qp, dtype=x.dtype) == fake_quantize(x, qp)`` bit for bit.

    Parameters
    ----------
    q : integer tensor
        Codes in ``[qp.qmin, qp.qmax]``.
    qp : QParams
    dtype : floating torch.dtype
        Of the result.

    Returns
    -------
    tensor
    """
    check_tensor(q, "q")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor (from quantize), got dtype {q.dtype}")
    if not isinstance(qp, QParams):
        raise TypeError(f"qp must be a QParams, got {type(qp).__name__}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    if qp.axis is not None and (not -q.ndim <= qp.axis < q.ndim or q.shape[qp.axis] != qp.scale.numel()):
        raise ValueError(f"q of shape {tuple(q.shape)} does not have {qp.scale.numel()} channels along "
                         f"qp.axis={qp.axis}")
    if int(q.min()) < qp.qmin or int(q.max()) > qp.qmax:
        raise ValueError(f"q must lie in [qmin, qmax] = [{qp.qmin}, {qp.qmax}], got values in "
                         f"[{int(q.min())}, {int(q.max())}]")
    return _dequant(q, qp, dtype)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, qp):
        q = _codes(x, qp)
        # the straight-through mask only where a gradient is asked for: inference makes no boolean temporaries
        ctx.save_for_backward(((q >= qp.qmin) & (q <= qp.qmax)) if ctx.needs_input_grad[0] else None)
        return _dequant(q.clamp_(qp.qmin, qp.qmax), qp, x.dtype, owned=True)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def fake_quantize_unchecked(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """:func:`fake_quantize` without argument checks, for quantizer modules that validated their state once."""
    return _FakeQuantize.apply(x, qp)


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Quantize and dequantize in one step, differentiable by the straight-through estimator.

    Values and gradients are bit-exact with ``torch.fake_quantize_per_tensor_affine`` (``qp.axis is None``) and
    ``torch.fake_quantize_per_channel_affine`` for float16, bfloat16, float32 and float64 inputs (on the CPU). The
    gradient is ``grad`` where ``qmin <= Z + round(x/S) <= qmax`` and 0 outside. Returns ``x``'s dtype.
    """
    _check_input(x, qp)
    check_finite(x)
    return _FakeQuantize.apply(x, qp)

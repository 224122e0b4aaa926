r"""Weight-only quantization of ``nn.Linear`` layers: group-wise integer grids (RTN) and NF4, stored packed.

A weight-only layer keeps its activations in floating point and stores its weight :math:`W \in \mathbb R^{m \times
n}` (rows = outputs) as :math:`b`-bit codes. The columns of each row are cut into groups of :math:`g` consecutive
inputs (``group_size``; ``None`` is one group per row, :math:`g = n`), each with its own grid.

**RTN** (round to nearest) on the asymmetric min–max grid of the GPTQ and AWQ reference code: per row and group,
the range is widened to hold 0, :math:`x_{\min} = \min(0, \min w)`, :math:`x_{\max} = \max(0, \max w)` (a group of
zeros takes :math:`[-1, 1]`), and

.. math:: s = \frac{x_{\max} - x_{\min}}{2^b - 1}, \qquad z = \operatorname{round}(-x_{\min}/s), \qquad
          q = \operatorname{clamp}(\operatorname{round}(w/s) + z,\ 0,\ 2^b - 1), \qquad \hat w = s\,(q - z).

Since :math:`0 \le z \le 2^b - 1`, the zero point is itself a :math:`b`-bit code. Storage per layer: :math:`mnb/8`
bytes of codes, and per group a float16 scale and a :math:`b`-bit zero point: :math:`b + (16 + b)/g` bits per
weight (4.625 at :math:`b = 4`, :math:`g = 32`; 4.16 at :math:`g = 128`) against 32 in float32.

**NF4** (Dettmers et al. 2023, *QLoRA*, §3 and appendix E): per block of :math:`g` weights (default 64) the
weights are divided by the block's absolute maximum and rounded to the nearest of 16 *NormalFloat* levels
:math:`\{q_i\}`, the quantiles of a standard normal distribution rescaled to :math:`[-1, 1]`: with
:math:`\delta = \tfrac12(\tfrac1{30} + \tfrac1{32})`, 8 positive levels :math:`\Phi^{-1}(p)` for :math:`p` on
``linspace(1 - δ, 1/2, 9)`` (the last dropped), 7 negative ones :math:`-\Phi^{-1}(p)` for :math:`p` on
``linspace(1 - δ, 1/2, 8)`` (the last dropped), and an exact 0, all divided by the largest (:func:`nf4_levels`;
bitsandbytes' ``create_normal_map``, whose table ``get_4bit_type("nf4")`` is :data:`NF4_TABLE`). The asymmetry
(8 positive, 7 negative levels) is what gives 0 an exact code. Storage: 4 bits per weight and a float16 absmax per
block (4.25 bits per weight at :math:`g = 64`; QLoRA's double quantization of the absmax is left out).

:class:`WeightOnlyLinear` holds exactly these bytes (``codes`` and, for RTN, ``zeros`` packed by the library's one
bit packing; ``scales`` in float16), so ``tc.surgery.state_bytes`` and every report count real bytes, and
``tc.export.save_compressed`` stores them. Its forward unpacks and dequantizes the whole weight, then multiplies in
the input's dtype. That makes it *slower* than ``nn.Linear`` in eager PyTorch: the float weight is rebuilt (bit
unpacking, a subtraction and a multiplication over :math:`mn` entries, and the memory traffic of a float weight)
before the same matrix product ``nn.Linear`` runs. The fast kernels of deployed int4 inference (torchao's
``tinygemm``, Marlin, llama.cpp) dequantize inside the matrix product, in registers, and win where the product is
bound by reading the weight from memory (batch 1 decoding); ``benchmarks/weight_only.py`` measures the eager cost.

:func:`quantize_weights` quantizes every selected ``nn.Linear`` of a model without data. The data-driven methods
that choose better codes for the same bytes live beside it: :func:`~tensorcompress.quantization.gptq`
(:mod:`.gptq`), :func:`~tensorcompress.quantization.awq` and :func:`~tensorcompress.quantization.smoothquant`
(:mod:`.smoothing`).

References: Frantar et al. (2022), *GPTQ*, arXiv:2210.17323 (the grid of its reference code); Lin et al. (2023),
*AWQ*, arXiv:2306.00978; Dettmers et al. (2023), *QLoRA*, arXiv:2305.14314.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import surgery
from .._bits import pack_bits, packed_size, unpack_bits
from .._validation import check_int_in, check_matrix, check_positive_int, check_tensor
from ..surgery.calibration import layer_error

__all__ = ["WeightOnlyLinear", "WeightOnlyLayer", "quantize_weights", "rtn", "rtn_grid", "minmax_grid", "grid_codes",
           "nf4_levels", "NF4_TABLE", "METHODS", "group_count"]

METHODS = ("rtn", "nf4")
MIN_BITS, MAX_BITS = 2, 8
NF4_BLOCK = 64

NF4_TABLE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0)
"""QLoRA's published NF4 levels (bitsandbytes, ``bitsandbytes/functional.py``, ``get_4bit_type("nf4")``; QLoRA
appendix E), as float32 values; :func:`nf4_levels` derives them."""


def nf4_levels(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""The 16 NormalFloat levels derived from normal quantiles (see the module docstring), ascending, in ``dtype``.

    Computed in float64 with ``torch.special.ndtri`` (:math:`\Phi^{-1}`); they agree with :data:`NF4_TABLE` to
    float32 precision.
    """
    offset = 1 - (1 / 30 + 1 / 32) / 2  # 0.9677083: bitsandbytes' create_normal_map default
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (levels / levels.max()).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------------------------

def check_weight_bits(bits: object, method: str = "rtn") -> int:
    """``bits`` for ``method``: an int in [2, 8] for RTN, GPTQ and AWQ; exactly 4 for NF4."""
    if method == "nf4":
        if bits != 4 or isinstance(bits, bool):
            raise ValueError(f"bits must be 4 for method='nf4' (16 NormalFloat levels), got {bits!r}")
        return 4
    return check_int_in(bits, "bits", MIN_BITS, MAX_BITS, why=" for weight-only quantization")


def check_method(method: object) -> str:
    """``method`` if it is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def group_count(in_features: int, group_size: int | None, *, where: str = "") -> tuple[int, int]:
    """``(group_size, n_groups)`` for a layer of ``in_features`` inputs: ``None`` is one group per row; a
    ``group_size`` must be a positive int dividing ``in_features``."""
    if group_size is None:
        return in_features, 1
    check_positive_int(group_size, "group_size")
    if in_features % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {in_features} inputs{where}; choose a "
                         f"divisor of {in_features} or None (one group per row)")
    return group_size, in_features // group_size


# ---------------------------------------------------------------------------------------------------------------
# the grids
# ---------------------------------------------------------------------------------------------------------------

def minmax_grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric min–max grid of each row of ``w`` (any leading shape, the grid over the last dimension):
    ``(scale, zero)`` of shape ``w.shape[:-1]``, in ``w``'s dtype (the zero point an integer-valued float)."""
    lo = w.amin(-1).clamp(max=0)
    hi = w.amax(-1).clamp(min=0)
    empty = (lo == 0) & (hi == 0)  # a row of zeros: the reference code's [-1, 1]
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)
    scale = (hi - lo) / (2**bits - 1)
    return scale, torch.round(-lo / scale)


def grid_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round(w / scale) + zero, 0, 2**bits - 1)`` (``scale``, ``zero`` broadcast against ``w``), int64."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1).to(torch.int64)


def rtn(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """The round-to-nearest weight :math:`s(q - z)` of :func:`rtn_grid`, in the compute dtype (exact scales).

    Parameters
    ----------
    weight : tensor (m, n)
        Rows are outputs.
    bits : int in [2, 8]
    group_size : int, optional
        Consecutive inputs per grid, dividing ``n``; ``None``: one grid per row.
    """
    codes, scales, zeros = rtn_grid(weight, bits, group_size)
    m, n = codes.shape
    k = scales.shape[1]
    return (scales.unsqueeze(-1) * (codes.reshape(m, k, -1) - zeros.unsqueeze(-1))).reshape(m, n)


def rtn_grid(weight: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """Round-to-nearest codes of ``weight`` on the group-wise min–max grid.

    Parameters
    ----------
    weight : tensor (m, n)
        Rows are outputs; float32 or float64 (half precision is computed in float32).
    bits : int in [2, 8]
    group_size : int, optional
        Consecutive inputs per grid, dividing ``n``; ``None``: one grid per row.

    Returns
    -------
    (codes, scales, zeros)
        int64 codes ``(m, n)``; exact scales ``(m, n_groups)`` in the compute dtype; zero points ``(m, n_groups)``
        as int64. ``scales[:, j // g] * (codes[:, j] - zeros[:, j // g])`` is the quantized weight.
    """
    dt = check_matrix(weight)
    bits = check_weight_bits(bits)
    m, n = weight.shape
    g, k = group_count(n, group_size)
    w = weight.detach().to(dt).reshape(m, k, g)
    scale, zero = minmax_grid(w, bits)
    codes = grid_codes(w, scale.unsqueeze(-1), zero.unsqueeze(-1), bits)
    return codes.reshape(m, n), scale, zero.to(torch.int64)


def nf4_codes(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 codes (indices into :func:`nf4_levels`, int64 ``(m, n)``) and the exact absmax per block of
    ``group_size`` (default 64) consecutive inputs of a row, ``(m, n // group_size)``."""
    dt = check_matrix(weight)
    m, n = weight.shape
    g, k = group_count(n, NF4_BLOCK if group_size is None else group_size)
    w = weight.detach().to(dt).reshape(m, k, g)
    absmax = w.abs().amax(-1)
    unit = w / torch.where(absmax == 0, 1.0, absmax).unsqueeze(-1)
    codes = (unit.unsqueeze(-1) - nf4_levels(dt).to(w.device)).abs().argmin(-1)  # the nearest level
    return codes.reshape(m, n), absmax


def _to_half_scales(scales: torch.Tensor, name: str) -> torch.Tensor:
    half = scales.detach().to(torch.float16)
    if not bool(torch.isfinite(half).all()):
        raise ValueError(f"{name}: a scale of {float(scales.abs().max()):.3g} overflows float16 (largest 65504); "
                         f"the weights are too large to store with float16 scales")
    return half


# ---------------------------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------------------------

class WeightOnlyLinear(nn.Module):
    r"""A linear layer whose weight is stored as packed :math:`b`-bit codes with a float16 scale per group (and,
    for RTN, a :math:`b`-bit zero point per group); the activations stay in floating point.

    Buffers (what ``state_dict`` holds): ``codes`` — the ``(out, in)`` codes in row-major order packed at ``bits``
    bits (``uint8``, :math:`\lceil \text{out}\cdot\text{in}\cdot b/8\rceil` bytes); ``scales`` — float16
    ``(out, in // group_size)``, the step :math:`s` (RTN) or the absmax (NF4); ``zeros`` — the zero points packed at
    ``bits`` bits (RTN only); ``input_scale`` — optional, a per-input factor applied to ``x`` first (AWQ's scaling
    module where no preceding layer can absorb it). ``bias`` is a parameter, as in ``nn.Linear``.

    The forward dequantizes the whole weight every call (see the module docstring for why this is slower than
    ``nn.Linear`` in eager PyTorch) and computes in the input's dtype. ``model.to(dtype)`` casts ``scales`` as it
    casts every floating buffer (the values stay those of float16; the bytes grow); the compressed file stores them
    as float16 in any case.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Whether the layer has a bias (zeros until loaded).
    bits : int
        2 to 8 for ``method="rtn"``, 4 for ``"nf4"``.
    group_size : int, optional
        Inputs per group, dividing ``in_features``; ``None``: one group per row (RTN), blocks of 64 (NF4).
    method : {"rtn", "nf4"}
        The integer grid (codes, scales and zero points) or NormalFloat levels (codes and absmax).
    input_scale : bool
        Whether the layer multiplies its input by a stored per-input factor first.
    device, dtype
        Of the bias and the input scale.

    The constructor makes an empty skeleton (all codes 0, scales 1), e.g. to load a ``state_dict`` into;
    :meth:`from_weight` and :meth:`from_codes` make a quantized one.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int,
                 group_size: int | None = None, method: str = "rtn", input_scale: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.method = check_method(method)
        self.bits = check_weight_bits(bits, method)
        self.in_features = check_int_in(in_features, "in_features", 1, 2**31)
        self.out_features = check_int_in(out_features, "out_features", 1, 2**31)
        default = NF4_BLOCK if method == "nf4" else None
        self.group_size, n_groups = group_count(in_features, default if group_size is None else group_size)
        n = in_features * out_features
        self.register_buffer("codes", torch.zeros(packed_size(n, bits), dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float16, device=device))
        if method == "rtn":
            self.register_buffer("zeros", torch.zeros(packed_size(out_features * n_groups, bits), dtype=torch.uint8,
                                                      device=device))
        else:
            self.register_buffer("zeros", None)
        self.register_buffer("input_scale", torch.ones(in_features, device=device, dtype=dtype) if input_scale
                             else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
                                if bias else None)

    @property
    def n_groups(self) -> int:
        """Groups (grids) per row."""
        return self.in_features // self.group_size

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, group_size={self.group_size}, method={self.method!r}")

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, *, bits: int, method: str = "rtn",
                   input_scale: torch.Tensor | None = None) -> WeightOnlyLinear:
        """A layer holding given codes and grids (copied; the scales rounded to float16 here).

        Parameters
        ----------
        codes : integer tensor (out, in)
            In ``[0, 2**bits)``.
        scales : tensor (out, n_groups)
            RTN's steps or NF4's absmax per group; ``n_groups`` divides ``in``.
        zeros : integer tensor (out, n_groups), optional
            RTN's zero points in ``[0, 2**bits)``; ``None`` for NF4.
        bias : tensor (out,), optional
        bits : int
        method : {"rtn", "nf4"}
        input_scale : tensor (in,), optional
            A factor applied to the input first.
        """
        method = check_method(method)
        bits = check_weight_bits(bits, method)
        check_tensor(codes, "codes")
        check_tensor(scales, "scales", floating=True)
        if codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.ndim != 2 or scales.ndim != 2 or codes.shape[0] != scales.shape[0]:
            raise ValueError(f"codes (out, in) and scales (out, n_groups) must agree, got {tuple(codes.shape)} and "
                             f"{tuple(scales.shape)}")
        out_f, in_f = codes.shape
        if in_f % scales.shape[1]:
            raise ValueError(f"{scales.shape[1]} groups do not divide the {in_f} inputs")
        if (zeros is None) != (method == "nf4"):
            raise ValueError(f"zeros must be given for method='rtn' and only then, got method={method!r}")
        if int(codes.min()) < 0 or int(codes.max()) >= 2**bits:
            raise ValueError(f"codes must lie in [0, {2**bits - 1}] for bits={bits}")
        ref = bias if bias is not None else input_scale
        layer = cls(in_f, out_f, bias is not None, bits=bits, group_size=in_f // scales.shape[1], method=method,
                    input_scale=input_scale is not None, device=codes.device,
                    dtype=None if ref is None else ref.dtype)
        with torch.no_grad():
            layer.codes.copy_(pack_bits(codes, bits))
            layer.scales.copy_(_to_half_scales(scales, "scales"))
            if zeros is not None:
                if int(zeros.min()) < 0 or int(zeros.max()) >= 2**bits:
                    raise ValueError(f"zeros must lie in [0, {2**bits - 1}] for bits={bits}")
                layer.zeros.copy_(pack_bits(zeros, bits))
            if bias is not None:
                layer.bias.copy_(bias.detach())
            if input_scale is not None:
                layer.input_scale.copy_(input_scale.detach())
        return layer

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, bits: int,
                    group_size: int | None = None, method: str = "rtn") -> WeightOnlyLinear:
        """Quantize ``weight`` by round to nearest (``"rtn"``) or NF4, keeping ``bias``.

        Parameters
        ----------
        weight : tensor (out, in)
        bias : tensor (out,), optional
        bits : int
            2 to 8 for RTN, 4 for NF4.
        group_size : int, optional
            As the class's.
        method : {"rtn", "nf4"}
        """
        method = check_method(method)
        bits = check_weight_bits(bits, method)
        if method == "nf4":
            codes, absmax = nf4_codes(weight, group_size)
            return cls.from_codes(codes, absmax, None, bias, bits=4, method="nf4")
        codes, scales, zeros = rtn_grid(weight, bits, group_size)
        return cls.from_codes(codes, scales, zeros, bias, bits=bits)

    @classmethod
    def from_linear(cls, layer: nn.Linear, *, bits: int, group_size: int | None = None,
                    method: str = "rtn") -> WeightOnlyLinear:
        """:meth:`from_weight` of an ``nn.Linear``'s weight and bias.

        Parameters
        ----------
        layer : nn.Linear
        bits, group_size, method
            As :meth:`from_weight`.
        """
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        return cls.from_weight(layer.weight, layer.bias, bits=bits, group_size=group_size, method=method)

    def code_matrix(self) -> torch.Tensor:
        """The ``(out, in)`` codes, int64."""
        return unpack_bits(self.codes, self.bits, self.out_features * self.in_features).reshape(
            self.out_features, self.in_features)

    def zero_points(self) -> torch.Tensor | None:
        """The ``(out, n_groups)`` zero points, int64 (``None`` for NF4)."""
        if self.zeros is None:
            return None
        return unpack_bits(self.zeros, self.bits, self.out_features * self.n_groups).reshape(
            self.out_features, self.n_groups)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The ``(out, in)`` weight the layer computes with, in ``dtype`` (default: the bias's, else float32)."""
        if dtype is None:
            dtype = self.bias.dtype if self.bias is not None else torch.float32
        m, k, g = self.out_features, self.n_groups, self.group_size
        codes = self.code_matrix().reshape(m, k, g)
        scales = self.scales.to(dtype).unsqueeze(-1)
        if self.method == "nf4":
            return (nf4_levels(dtype).to(codes.device)[codes] * scales).reshape(m, -1)
        return ((codes - self.zero_points().unsqueeze(-1)).to(dtype) * scales).reshape(m, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantize(x.dtype), bias)


# ---------------------------------------------------------------------------------------------------------------
# the report row and the data-free transform
# ---------------------------------------------------------------------------------------------------------------

class WeightOnlyLayer(surgery.LayerChange):
    """A report row of :func:`quantize_weights`, :func:`~tensorcompress.quantization.gptq` and
    :func:`~tensorcompress.quantization.awq`, its details typed."""

    bits = surgery.Detail(int, "Bits per weight code.")
    group_size = surgery.Detail(int, "Consecutive inputs sharing a grid (the row's length: one group per row).")
    method = surgery.Detail(str, "``\"rtn\"``, ``\"nf4\"``, ``\"gptq\"`` or ``\"awq\"``.")
    weight_error = surgery.Detail(float, "Relative weight error ‖W − Q‖_F / ‖W‖_F of the stored weight.")
    output_error = surgery.Detail(
        float, "Relative output error ‖(W − Q)X‖_F / ‖WX‖_F on the calibration inputs X (data-driven methods).",
        optional=True)
    alpha = surgery.Detail(float, "AWQ's chosen exponent of the activation scales.", optional=True)
    scaled_by = surgery.Detail(str, "Where AWQ's inverse scales went: the preceding layer's name, or "
                                    "``\"input_scale\"`` (the layer's own scaling of its input).", optional=True)


def weight_only_detail(layer: WeightOnlyLinear, weight: torch.Tensor, method: str,
                       hessian: torch.Tensor | None = None, *, column_scale: torch.Tensor | None = None,
                       **extra: Any) -> dict[str, Any]:
    r"""A report row's detail for a :class:`WeightOnlyLinear` replacing ``weight`` (errors of the stored weight, its
    float16 scales included). The layer computes :math:`Q\,\operatorname{diag}(c)\,x` with ``c`` its
    ``input_scale``, or ``column_scale`` where a preceding layer applies it."""
    with torch.no_grad():
        q = layer.dequantize(torch.float64)
        c = layer.input_scale if column_scale is None else column_scale
        if c is not None:
            q = q * c.double()
        delta = q - weight.detach().double()
    detail = {"bits": layer.bits, "group_size": layer.group_size, "method": method,
              "weight_error": round(layer_error(delta, weight), 6)}
    if hessian is not None:
        detail["output_error"] = round(layer_error(delta, weight, hessian), 6)
    return detail | extra


def quantize_weights(model: nn.Module, *, bits: int, group_size: int | None = None, method: str = "rtn",
                     include=None, exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A copy of ``model`` whose selected ``nn.Linear`` layers become :class:`WeightOnlyLinear`, quantized without
    data by round to nearest on the group-wise min–max grid (``"rtn"``) or by NF4.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    bits : int
        2 to 8 for RTN; 4 for NF4.
    group_size : int, optional
        Inputs per grid, dividing every selected layer's inputs; ``None``: one grid per output row (RTN), blocks of
        64 (NF4).
    method : {"rtn", "nf4"}
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns (:func:`tensorcompress.surgery.select`); default every ``nn.Linear``.

    Returns
    -------
    (nn.Module, list of WeightOnlyLayer)
        The model and one row per layer: bits, group size, method and the relative weight error.
    """
    method = check_method(method)
    bits = check_weight_bits(bits, method)
    if method == "nf4" and group_size is None:
        group_size = NF4_BLOCK
    selected_linears(model, group_size, include, exclude, "quantize_weights")

    def build(sel: surgery.Selected) -> tuple[nn.Module, dict[str, Any]]:
        layer = WeightOnlyLinear.from_linear(sel.module, bits=bits, group_size=group_size, method=method)
        return layer, weight_only_detail(layer, sel.module.weight, method)

    return surgery.transform(model, nn.Linear, build, include=include, exclude=exclude, row_type=WeightOnlyLayer,
                             action="quantize_weights")


def selected_linears(model: nn.Module, group_size: int | None, include, exclude, action: str) -> list[surgery.Selected]:
    """The selected ``nn.Linear`` layers, after checking that ``group_size`` divides each one's inputs."""
    chosen = surgery.select(model, nn.Linear, include=include, exclude=exclude, action=action)
    for sel in chosen:
        group_count(sel.module.in_features, group_size, where=f" of layer {sel.name!r}")
    return chosen

r"""Half-precision inference: a float16 / bfloat16 copy of a model, an autocast wrapper, and the error bounds that
say how far either may stray from float32.

**Unit roundoff.** A binary floating point format with a :math:`p`-bit significand (the implicit bit included)
rounds every real :math:`x` in its range to :math:`\mathrm{fl}(x) = x(1 + \delta)`, :math:`|\delta| \le u = 2^{-p}`:

==========  ==  ===================  =====================  ================
dtype       p   :math:`u`            largest finite         bytes / number
==========  ==  ===================  =====================  ================
float32     24  :math:`2^{-24}`      :math:`3.4\cdot10^{38}`  4
float16     11  :math:`2^{-11}`      65504                  2
bfloat16    8   :math:`2^{-8}`       :math:`3.4\cdot10^{38}`  2
==========  ==  ===================  =====================  ================

float16 keeps more digits, bfloat16 keeps float32's exponent range (no overflow where float32 has none).

**Dot products** (Higham 2002, *Accuracy and Stability of Numerical Algorithms*, §3.1). Summing :math:`n` products
in any order, each product passes through at most :math:`n` roundings, so

.. math:: |\mathrm{fl}(x^\top y) - x^\top y| \le \gamma_n\, |x|^\top |y|, \qquad
          \gamma_n = \frac{n u}{1 - n u} \approx n u \quad (n u < 1),

the worst case. Rounding errors of random sign behave like a random walk, so the typical error grows like
:math:`\sqrt n\, u\, |x|^\top|y|` (Higham & Mary 2019, "A new approach to probabilistic rounding error analysis").
A layer ``y = W x + b`` run in half precision from float32 inputs rounds ``W``, ``x`` and ``b`` once each, then
forms a dot product of :math:`k + 1` terms (the bias as one more), then rounds ``y``: every term meets at most
:math:`k + 4` factors :math:`(1 + \delta)`, hence the componentwise bound of :func:`layer_error_bound`,

.. math:: |\hat y - y| \le \gamma_{k+4}\,(|W|\,|x| + |b|).

Kernels that accumulate in float32 (as CPU and tensor-core GPU kernels mostly do) beat this bound; it is what no
correct kernel may exceed. Through a whole network the errors of the layers add, each amplified by the layers after
it (their Lipschitz constants), so for a network there is a first-order *estimate*, not a bound: measure it.

**What stays in float32.** BatchNorm divides by :math:`\sqrt{\sigma^2 + \epsilon}` with :math:`\epsilon = 10^{-5}`,
below float16's smallest normal number (:math:`6.1\cdot10^{-5}`), and its running variances span decades; softmax and
its log exponentiate, where float16 overflows at :math:`e^{11.1}`. Mixed-precision practice (Micikevicius et al.
2018, "Mixed precision training", ICLR; NVIDIA Apex's ``keep_batchnorm_fp32``) keeps these in float32:
:func:`to_half` wraps them in :class:`Float32Island`, which casts in and out. Fold BatchNorm into the convolution
first (:func:`tensorcompress.surgery.fuse_conv_bn`) to have no island left.

**Storage.** A half-precision copy stores 2 bytes per parameter instead of 4 (the islands' parameters stay at 4);
:func:`tensorcompress.model_size_bytes` measures it.

``torch.autocast`` (:func:`autocast`) is the other road: the weights stay float32 and each listed operation (matrix
products, convolutions) casts its inputs to the low precision on the fly, while the operations autocast deems
unsafe (softmax, normalisation, losses) run in float32.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import surgery
from .._validation import check_positive_int, check_tensor

__all__ = [
    "HALF_DTYPES",
    "KEEP_FLOAT32",
    "Autocast",
    "Float32Island",
    "HalfLayer",
    "autocast",
    "dot_error_bound",
    "layer_error_bound",
    "to_half",
    "typical_dot_error",
    "unit_roundoff",
]

#: The unit roundoff :math:`u = 2^{-p}` of each floating point dtype (:math:`p` significand bits).
_UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}

#: The half-precision dtypes :func:`to_half` and :func:`autocast` accept.
HALF_DTYPES = (torch.float16, torch.bfloat16)

#: Module types :func:`to_half` keeps in float32 by default (normalisation and softmax, see the module docstring).
KEEP_FLOAT32: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.Softmax, nn.LogSoftmax,
)


def _check_dtype(dtype: object, name: str = "dtype", allowed: tuple[torch.dtype, ...] = HALF_DTYPES) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, one of {list(allowed)}, got {type(dtype).__name__} "
                        f"({dtype!r})")
    if dtype not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {dtype}")
    return dtype


def unit_roundoff(dtype: torch.dtype) -> float:
    """:math:`u = 2^{-p}`: ``2**-11`` for float16, ``2**-8`` for bfloat16, ``2**-24`` for float32, ``2**-53`` for
    float64 (half the distance from 1 to the next number, ``torch.finfo(dtype).eps / 2``)."""
    return _UNIT_ROUNDOFF[_check_dtype(dtype, allowed=tuple(_UNIT_ROUNDOFF))]


def dot_error_bound(n: int, dtype: torch.dtype) -> float:
    r""":math:`\gamma_n = nu/(1 - nu)`: the worst-case relative error of a length-``n`` dot product, measured against
    :math:`|x|^\top|y|` (Higham 2002, Lemma 3.1).

    Raises ``ValueError`` when :math:`nu \ge 1`, where the bound says nothing (float16 from :math:`n = 2048`,
    bfloat16 from :math:`n = 256`).
    """
    check_positive_int(n, "n")
    u = unit_roundoff(dtype)
    if n * u >= 1:
        raise ValueError(f"n * u = {n} * {u:.3g} >= 1 for {dtype}: the worst-case bound gamma_n is void; use "
                         f"typical_dot_error for a probabilistic estimate")
    return n * u / (1 - n * u)


def typical_dot_error(n: int, dtype: torch.dtype) -> float:
    r""":math:`\sqrt n\,u`: the typical relative error of a length-``n`` dot product when the rounding errors are
    independent and of random sign (an estimate, not a bound; Higham & Mary 2019)."""
    check_positive_int(n, "n")
    return math.sqrt(n) * unit_roundoff(dtype)


def layer_error_bound(layer: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    r"""Componentwise bound :math:`\gamma_{k+4}(|W||x| + |b|)` on the error of ``layer(x)`` computed in ``dtype``
    from float32 ``x`` and weights (each rounded once, output rounded once; see the module docstring).

    Parameters
    ----------
    layer : nn.Linear or nn.Conv1d/2d/3d
        :math:`k` is its input features, or input channels / groups times the kernel size.
    x : tensor
        An input batch.
    dtype : torch.float16 or torch.bfloat16

    Returns
    -------
    tensor
        float64, ``layer(x)``'s shape: computed with the layer's own operation applied to :math:`|W|` and
        :math:`|x|`, so padding, stride and groups are followed exactly.
    """
    if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"layer must be an nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}")
    check_tensor(x, "x", floating=True)
    _check_dtype(dtype)
    w = layer.weight
    k = w[0].numel()
    absolute = copy.deepcopy(layer).to(torch.float64)
    with torch.no_grad():
        absolute.weight.copy_(w.detach().abs())
        if absolute.bias is not None:
            absolute.bias.copy_(layer.bias.detach().abs())
        magnitude = absolute(x.detach().to(torch.float64).abs())
    return dot_error_bound(k + 4, dtype) * magnitude


class Float32Island(nn.Module):
    """Runs ``module`` in float32 inside a half-precision model: casts the (floating) input to float32 and the output
    back to the input's dtype. ``module`` keeps its float32 parameters and buffers."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast(device_type=<the input's device type>, dtype=dtype)``; the output is
    cast back to float32 so that losses and comparisons see float32 logits. Parameters stay in their dtype."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = _check_dtype(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def autocast(model: nn.Module, *, dtype: torch.dtype = torch.bfloat16) -> Autocast:
    """A deep copy of ``model`` wrapped in :class:`Autocast` (the input model is untouched).

    ``tc.evaluate``, ``tc.latency`` and ``tc.flops`` take the wrapper like any model. On the CPU autocast supports
    both bfloat16 and float16; on CUDA both as well.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return Autocast(surgery.copy_model(model), dtype)


def _own_floating_state(module: nn.Module) -> bool:
    """Whether ``module`` holds a floating parameter or buffer of its own (not of a child)."""
    return any(t is not None and t.is_floating_point()
               for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))


def _cast_own_state(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating parameters and buffers ``module`` holds itself to ``dtype`` (in place)."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                setattr(module, name, b.to(dtype))


class HalfLayer(surgery.LayerChange):
    """A report row of :func:`to_half`, its details typed."""

    dtype = surgery.Detail(str, "The dtype the module now computes in.")
    why = surgery.Detail(str, "Why a module stays float32: ``keep_float32`` or ``not selected``.", optional=True)


def to_half(model: nn.Module, *, dtype: torch.dtype = torch.float16,
            keep_float32: tuple[type[nn.Module], ...] = KEEP_FLOAT32, include=None,
            exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A copy of ``model`` whose selected modules compute in ``dtype``; the modules of the ``keep_float32`` types
    and those left out of the selection stay float32, each inside a :class:`Float32Island`.

    The candidates are the submodules holding floating parameters or buffers of their own (``Linear``, convolutions,
    BatchNorm, ...). A cast module has its parameters and floating buffers cast to ``dtype`` (integer buffers such as
    BatchNorm's ``num_batches_tracked`` are left alone); an island keeps its module in float32 and casts inputs and
    outputs. The copy expects inputs of ``dtype`` and returns outputs of ``dtype`` (``tc.evaluate`` casts the inputs
    to the model's dtype itself). The root module's own parameters, if any, are cast with the rest; a lone layer
    is no selection of submodules: wrap it in an ``nn.Sequential``.

    Parameters
    ----------
    model : nn.Module
        Not modified (copied).
    dtype : torch.float16 or torch.bfloat16
    keep_float32 : tuple of module types
        Kept in float32 even when selected (default :data:`KEEP_FLOAT32`: normalisation and softmax layers); ``()``
        casts every selected module.
    include, exclude : str or sequence of str, optional
        Module names or ``fnmatch`` patterns (:func:`tensorcompress.surgery.select`): which candidates to cast
        (default all); the others stay float32.

    Returns
    -------
    (nn.Module, list of LayerChange)
        The copy, and one row per candidate module: a cast one keeps its type (``detail["dtype"]`` the new dtype),
        one kept in float32 becomes a ``Float32Island`` (``detail["dtype"] = "torch.float32"`` and ``why``:
        ``"keep_float32"`` or ``"not selected"``). A candidate inside an island has no row of its own.

    Raises
    ------
    TypeError
        If ``dtype`` is not a torch.dtype, ``model`` not a module or ``keep_float32`` not a tuple of module types.
    ValueError
        If ``dtype`` is not float16 or bfloat16 (float32 is not half precision; integers need quantization), if
        the selection is empty, or if a module kept in float32 shares a parameter with a cast one.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dtype = _check_dtype(dtype)
    if not isinstance(keep_float32, tuple) or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                                       for t in keep_float32):
        raise TypeError(f"keep_float32 must be a tuple of nn.Module subclasses, got {keep_float32!r}")
    new = surgery.copy_model(model)
    types = tuple({type(m): None for name, m in new.named_modules() if name and _own_floating_state(m)})
    chosen = surgery.select(new, types or surgery.LAYERS, include=include, exclude=exclude, action="to_half")
    selected = {id(sel.module) for sel in chosen}
    islands: list[str] = []  # names of the islands made so far: their insides stay float32 with them
    report = []
    for sel in surgery.select(new, types or surgery.LAYERS):
        if not _own_floating_state(sel.module) or any(sel.name.startswith(i + ".") for i in islands):
            continue
        before = surgery.footprint(sel.module)
        if id(sel.module) in selected and not isinstance(sel.module, keep_float32):
            _cast_own_state(sel.module, dtype)
            detail = {"dtype": str(dtype)}
            after = surgery.footprint(sel.module)
        else:
            why = "keep_float32" if id(sel.module) in selected else "not selected"
            island = Float32Island(sel.module)
            surgery.replace(new, sel.names, island, old=sel.module)
            islands += sel.names
            detail = {"dtype": str(torch.float32), "why": why}
            after = surgery.footprint(island)
        report.append(HalfLayer.between(sel.name, before, after, detail, sel.names[1:]))
    _cast_own_state(new, dtype)
    _check_island_ties(new, dtype)
    return new, report


def _check_island_ties(model: nn.Module, dtype: torch.dtype) -> None:
    """Refuse a parameter shared by a float32 island and a module cast to ``dtype`` (a tie the cast would have to
    break: one tensor cannot hold both dtypes)."""
    for name, m in model.named_modules():
        if isinstance(m, Float32Island):
            cast = [n for n in surgery.tied_parameters(model, m)
                    if getattr(model.get_parameter(n), "dtype", None) == dtype]
            if cast:
                raise ValueError(f"module {name!r} stays float32 but shares parameters with {cast}, which are cast "
                                 f"to {dtype}: untie them or select both modules alike")

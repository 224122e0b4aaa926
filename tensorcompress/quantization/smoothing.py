r"""Per-channel rescaling between a layer and its input: AWQ (weight-only) and SmoothQuant (W8A8).

Both rest on one identity. For a positive vector :math:`s` over the input channels of a linear layer,

.. math:: W x = \big(W \operatorname{diag}(s)\big)\big(\operatorname{diag}(s)^{-1} x\big),

and the factor :math:`\operatorname{diag}(s)^{-1}` can be folded, at no cost, into whatever produced :math:`x`
when that output goes to these layers only: a LayerNorm (:math:`\gamma \leftarrow \gamma / s`,
:math:`\beta \leftarrow \beta / s`) or a linear layer (its rows and bias divided by :math:`s`). The layers that read
one tensor (a transformer's query, key and value projections) share one :math:`s`. Groups and producers are found
on the traced graph (:func:`tensorcompress.surgery.trace`), so any model with these patterns qualifies.

**AWQ** (Lin et al. 2023, "AWQ: activation-aware weight quantization for LLM compression and acceleration",
arXiv:2306.00978). A few input channels carry much larger activations; their weights matter most. Scaling those
weight columns up before round-to-nearest quantization shrinks their relative rounding error (the grid of a row is
set by its largest weights, so the others' error barely moves) while :math:`\operatorname{diag}(s)^{-1}` brings the
activations back. The scales are :math:`s = \bar s_x^{\,\alpha}` with :math:`\bar s_x` the mean
:math:`|X_j|` over the calibration tokens, normalised by :math:`\sqrt{\max s \cdot \min s}` (floored at
:math:`10^{-4}` first), and :math:`\alpha = i/n_\text{grid}` for :math:`i < n_\text{grid}` chosen to minimise the
output error of the layers sharing the input,

.. math:: \sum_\ell \big\|\big(W_\ell - Q(W_\ell \operatorname{diag}(s))\operatorname{diag}(s)^{-1}\big) X\big\|_F^2
          = \tfrac{N}{2} \sum_\ell \operatorname{tr}(\Delta_\ell H \Delta_\ell^\top), \qquad H = 2X^\top X/N,

with :math:`Q` the group-wise round to nearest of :func:`~tensorcompress.quantization.rtn_grid`. Since
:math:`\alpha = 0` is plain RTN, the chosen scales never do worse than RTN on the calibration data. Where no
preceding layer can absorb :math:`\operatorname{diag}(s)^{-1}` (the output projection after attention, the second
MLP layer after GELU) the :class:`~tensorcompress.quantization.WeightOnlyLinear` multiplies its own input by it
(``input_scale``, :math:`n` more stored values), as the reference code's scaled activation module does. The
reference code also searches a clipping range per group after scaling; it is left out here.

**SmoothQuant** (Xiao et al. 2023, "SmoothQuant: accurate and efficient post-training quantization for large
language models", arXiv:2211.10438). Activation outliers ruin a per-tensor int8 activation grid; weights are easy
to quantize. Migrating part of the range into the weights,

.. math:: s_j = \frac{\max |X_j|^{\alpha}}{\max |W_{:,j}|^{1-\alpha}}

(the weight maximum over every layer reading the same LayerNorm, floored at :math:`10^{-5}`; :math:`\alpha = 0.5`
by default), balances the two. :func:`smoothquant` folds :math:`s` into each LayerNorm → Linear group and returns a
float model whose outputs equal the input model's up to rounding; :func:`~tensorcompress.quantization.quantize_model`
then makes it W8A8.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import surgery
from .._validation import check_fraction, check_positive_int, compute_dtype
from ..surgery.calibration import InputGroup, calibration_batches, input_groups, input_statistics
from .weight_only import (
    WeightOnlyLayer,
    WeightOnlyLinear,
    check_weight_bits,
    rtn,
    rtn_grid,
    selected_linears,
    weight_only_detail,
)

__all__ = ["awq", "smoothquant", "awq_scales", "SmoothedLayer"]

_NORMS = tuple(t for t in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t is not None)


def _norm_scalable(module: nn.Module, n: int) -> bool:
    """A LayerNorm (or RMSNorm) over the last dimension of ``n`` channels with a learned elementwise weight."""
    return (type(module) in _NORMS and getattr(module, "weight", None) is not None
            and tuple(module.weight.shape) == (n,) and len(module.normalized_shape) == 1)


@torch.no_grad()
def _fold_inverse(group: InputGroup, s: torch.Tensor, *, linear_too: bool) -> str | None:
    """Divide the output channels of the group's producer by ``s`` where it is a LayerNorm (or, with
    ``linear_too``, an ``nn.Linear``) whose output only this group reads; its name, else ``None``."""
    module = group.producer_module
    if module is None or not group.exclusive:
        return None
    if _norm_scalable(module, s.numel()):
        module.weight.div_(s.to(module.weight.dtype))
    elif linear_too and type(module) is nn.Linear and module.out_features == s.numel():
        module.weight.div_(s.to(module.weight.dtype).unsqueeze(1))
    else:
        return None
    if getattr(module, "bias", None) is not None:
        module.bias.div_(s.to(module.bias.dtype))
    return group.producer.module_name


# ---------------------------------------------------------------------------------------------------------------
# AWQ
# ---------------------------------------------------------------------------------------------------------------

def _scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_mean.pow(alpha).clamp(min=1e-4)
    return s / torch.sqrt(s.max() * s.min())


def awq_scales(weights: list[torch.Tensor], x_mean: torch.Tensor, hessian: torch.Tensor, *, bits: int,
               group_size: int | None = None, n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    r"""AWQ's search: the per-input-channel scales of the layers that read one input.

    Parameters
    ----------
    weights : list of tensors (m_l, n)
        The weights of the layers sharing the input.
    x_mean : tensor (n,)
        Mean :math:`|X_j|` of the input over the calibration tokens.
    hessian : tensor (n, n)
        :math:`2X^\top X/N` of the input (the output error is :math:`\operatorname{tr}(\Delta H \Delta^\top)`).
    bits, group_size
        Of the round to nearest that follows.
    n_grid : int
        :math:`\alpha = i/n_\text{grid}`, :math:`i = 0, \dots, n_\text{grid} - 1`.

    Returns
    -------
    (scales, alpha, errors)
        The best :math:`s` (in the weights' compute dtype), its :math:`\alpha`, and the summed output error
        :math:`\sum_\ell \operatorname{tr}(\Delta_\ell H \Delta_\ell^\top)` for every :math:`\alpha` of the grid.
    """
    if isinstance(weights, torch.Tensor) or not weights:
        raise TypeError(f"weights must be a non-empty list of weight matrices, got {type(weights).__name__}")
    bits = check_weight_bits(bits)
    check_positive_int(n_grid, "n_grid")
    dt = compute_dtype(weights[0], "weights[0]")
    h, xm = hessian.to(dt), x_mean.to(dt)
    errors, best = [], None
    for i in range(n_grid):
        s = _scales(xm, i / n_grid)
        err = 0.0
        for w in weights:
            w = w.detach().to(dt)
            delta = w - rtn(w * s, bits, group_size) / s
            err += float(((delta @ h) * delta).sum())
        errors.append(err)
        if best is None or err < errors[best]:  # ties keep the smaller alpha (alpha = 0 is plain RTN)
            best = i
    return _scales(xm, best / n_grid), best / n_grid, errors


def awq(model: nn.Module, calibration, *, bits: int, group_size: int | None = None, n_grid: int = 20,
        include=None, exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A copy of ``model`` whose selected ``nn.Linear`` layers are scaled per input channel by AWQ's searched
    scales, then quantized by round to nearest into :class:`~tensorcompress.quantization.WeightOnlyLinear`.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    calibration : tensor, Dataset or iterable of batches
        Model inputs, read as :func:`~tensorcompress.quantization.calibrate` reads them.
    bits : int in [2, 8]
    group_size : int, optional
        Inputs per grid, dividing every selected layer's inputs; ``None``: one grid per row.
    n_grid : int
        Grid of :math:`\\alpha` (20 in the paper).
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns; default every ``nn.Linear``.

    Returns
    -------
    (nn.Module, list of WeightOnlyLayer)
        The model — the preceding LayerNorms or linear layers that absorbed :math:`s^{-1}` changed accordingly —
        and one row per layer: bits, group size, :math:`\\alpha`, where the inverse scales went, the relative output
        error on the calibration inputs.
    """
    bits = check_weight_bits(bits)
    check_positive_int(n_grid, "n_grid")
    selected_linears(model, group_size, include, exclude, "awq")
    batches = calibration_batches(calibration)
    work = surgery.copy_model(model)
    chosen = surgery.select(work, nn.Linear, include=include, exclude=exclude)
    groups = input_groups(work, batches[0].to(surgery.device_of(work)), chosen)
    stats = input_statistics(work, batches, {g.layers[0].name: g.layers[0].module for g in groups})
    plans = []
    for g in groups:  # every search on the float weights, before any folding
        st = stats[g.layers[0].name]
        h = st.hessian(compute_dtype(g.layers[0].module.weight))
        s, alpha, _ = awq_scales([sel.module.weight for sel in g.layers], st.abs_mean, h, bits=bits,
                                 group_size=group_size, n_grid=n_grid)
        plans.append((g, s, alpha, h))
    plan: dict[str, dict[str, Any]] = {}
    for g, s, alpha, h in plans:
        folded = _fold_inverse(g, s, linear_too=True)
        plan |= {sel.name: {"s": s, "alpha": alpha, "h": h, "folded": folded} for sel in g.layers}

    def build(sel: surgery.Selected) -> tuple[nn.Module, dict[str, Any]]:
        p, lin = plan[sel.name], sel.module
        s = p["s"].to(lin.weight.dtype)
        codes, scales, zeros = rtn_grid(lin.weight * s, bits, group_size)
        layer = WeightOnlyLinear.from_codes(codes, scales, zeros, lin.bias, bits=bits,
                                            input_scale=None if p["folded"] else 1 / s)
        detail = weight_only_detail(layer, lin.weight, "awq", p["h"], column_scale=1 / s if p["folded"] else None,
                                    alpha=p["alpha"], scaled_by=p["folded"] or "input_scale")
        return layer, detail

    return surgery.transform(work, nn.Linear, build, include=include, exclude=exclude, row_type=WeightOnlyLayer,
                             action="awq")


# ---------------------------------------------------------------------------------------------------------------
# SmoothQuant
# ---------------------------------------------------------------------------------------------------------------

class SmoothedLayer(surgery.LayerChange):
    """A report row of :func:`smoothquant`, its details typed."""

    alpha = surgery.Detail(float, "The migration strength :math:`\\alpha`.")
    norm = surgery.Detail(str, "The LayerNorm that absorbed :math:`s^{-1}`.")
    input_max_before = surgery.Detail(float, "Largest :math:`|X_j|` over the layer's input channels before.")
    input_max_after = surgery.Detail(float, "Largest :math:`|X_j / s_j|` after: what an int8 grid must cover.")
    weight_max_after = surgery.Detail(float, "Largest :math:`|W_{ij} s_j|` after.")


def smoothquant(model: nn.Module, calibration, *, alpha: float = 0.5, include=None,
                exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A copy of ``model`` in which every LayerNorm → Linear group (the selected ``nn.Linear`` layers that alone
    read one LayerNorm's output) is smoothed: :math:`s_j = \\max|X_j|^\\alpha / \\max|W_{:,j}|^{1-\\alpha}`, the
    LayerNorm divided by :math:`s`, the layers' weights multiplied by it. The outputs equal the input model's (up
    to rounding); follow with :func:`~tensorcompress.quantization.quantize_model` for W8A8.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    calibration : tensor, Dataset or iterable of batches
        Model inputs, for :math:`\\max|X_j|`.
    alpha : float in [0, 1]
        Migration strength (0.5 in the paper).
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns. A selected layer that does not read a LayerNorm's output, or that
        shares it with a layer or operation left out, is left as it is.

    Returns
    -------
    (nn.Module, list of SmoothedLayer)
        One row per smoothed layer.

    Raises
    ------
    ValueError
        If no selected layer forms such a group.
    """
    alpha = check_fraction(alpha, "alpha")
    chosen = surgery.select(model, nn.Linear, include=include, exclude=exclude, action="smoothquant")
    batches = calibration_batches(calibration)
    work = surgery.copy_model(model)
    chosen = surgery.select(work, nn.Linear, include=[n for sel in chosen for n in sel.names])
    groups = [g for g in input_groups(work, batches[0].to(surgery.device_of(work)), chosen)
              if g.exclusive and g.producer_module is not None
              and _norm_scalable(g.producer_module, g.layers[0].module.in_features)]
    if not groups:
        raise ValueError("smoothquant: nothing to act on, no selected nn.Linear reads a LayerNorm's output alone "
                         f"(selected: {[sel.name for sel in chosen][:20]})")
    stats = input_statistics(work, batches, {g.layers[0].name: g.layers[0].module for g in groups})
    rows: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for g in groups:
            x_max = stats[g.layers[0].name].abs_max
            w_max = torch.stack([sel.module.weight.abs().amax(0).double() for sel in g.layers]).amax(0)
            s = (x_max.pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
            norm = _fold_inverse(g, s, linear_too=False)
            for sel in g.layers:
                sel.module.weight.mul_(s.to(sel.module.weight.dtype))
                rows[sel.name] = {"alpha": alpha, "norm": norm, "input_max_before": round(float(x_max.max()), 6),
                                  "input_max_after": round(float((x_max / s).max()), 6),
                                  "weight_max_after": round(float(sel.module.weight.abs().max()), 6)}
    return surgery.transform(work, nn.Linear, lambda sel: (sel.module, rows[sel.name]), include=list(rows),
                             row_type=SmoothedLayer, action="smoothquant")


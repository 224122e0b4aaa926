r"""Operator fusion: fold each BatchNorm into the convolution (or linear layer) that feeds it.

In eval mode a BatchNorm is a fixed affine map per channel, :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \varepsilon}
+ \beta` with the running mean :math:`\mu` and variance :math:`\sigma^2`. When :math:`x = W * u + b` comes straight
from a convolution, the two compose into one convolution with

.. math:: W' = \frac{\gamma}{\sqrt{\sigma^2 + \varepsilon}}\, W, \qquad
          b' = \beta + \frac{\gamma\,(b - \mu)}{\sqrt{\sigma^2 + \varepsilon}}

(the scale broadcast over output channel :math:`t`; :math:`b = 0` for a convolution without bias). The network
computes the same function with one layer fewer: the per-channel multiply-add of the BatchNorm and a pass over the
activation in memory disappear, the convolution's FLOPs do not change, and storage drops by the BatchNorm's
:math:`4T` numbers (:math:`\gamma, \beta, \mu, \sigma^2`; the fused convolution gains a bias of :math:`T`). It is
the first thing every inference engine does, and integer-only quantization needs it (Jacob et al. 2018, §3.2: a
BatchNorm has no integer form of its own). In training mode BatchNorm normalises with the *batch's* statistics,
which no fixed weight reproduces, so folding is refused there.

The arithmetic is PyTorch's (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`, ``fuse_linear_bn_eval``); this
module finds the pairs in a whole model and replaces them, in the one shape of every whole-model transform
(:mod:`tensorcompress.surgery`).

Finding the pairs. Inside an :class:`torch.nn.Sequential` a layer's output is, by definition, the next layer's
input, so a convolution directly followed by a BatchNorm of the same width is a pair. A model whose ``forward``
wires its layers itself cannot be read that way; give ``example_input`` and the pairs are traced with forward hooks
(the BatchNorm's input is the very tensor the convolution returned, not modified in place since), and the fused
model is then checked against the original on that input — which catches what hooks cannot see, such as a
convolution's output also feeding a residual connection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .core import LayerChange, Patterns, footprint, replace, select, tied_parameters
from .model import copy_model

__all__ = ["fuse_conv_bn"]

# A layer type and the BatchNorm type that may follow it (the spatial dimension must agree).
_FOLDABLE: dict[type, type] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class _Pair:
    layer: str
    batchnorm: str


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    """``bn`` can be folded into ``layer``: matching types and width, and running statistics to fold."""
    return (_FOLDABLE.get(type(layer)) is type(bn) and bn.num_features == _width(layer)
            and bn.running_mean is not None and bn.running_var is not None)


def _sequential_pairs(model: nn.Module) -> list[_Pair]:
    pairs = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
            if _foldable(a, b):
                pairs.append(_Pair(f"{prefix}.{a_name}" if prefix else a_name,
                                   f"{prefix}.{b_name}" if prefix else b_name))
    return pairs


def _traced_pairs(model: nn.Module, example_input: torch.Tensor) -> list[_Pair]:
    """Pairs whose BatchNorm received exactly the tensor the layer returned, unmodified (its version unchanged:
    an in-place ReLU in between keeps the tensor object but changes it)."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor, int]] = {}  # the tensor is kept so that its id is not reused
    pairs: list[_Pair] = []

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(module, _BATCHNORMS) and inputs and isinstance(inputs[0], torch.Tensor):
            source = produced.get(id(inputs[0]))
            if source is not None and source[2] == inputs[0]._version:
                layer = model.get_submodule(source[0])
                if _foldable(layer, module):
                    pairs.append(_Pair(source[0], names[id(module)]))
        if type(module) in _FOLDABLE and isinstance(output, torch.Tensor):
            produced[id(output)] = (names[id(module)], output, output._version)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m) in _FOLDABLE or isinstance(m, _BATCHNORMS)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(pairs))  # a module called twice on the same path gives its pair once


def _all_names(model: nn.Module, module: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, m in model.named_modules(remove_duplicate=False) if m is module and n)


def _check_eval(model: nn.Module, pairs: list[_Pair]) -> None:
    for pair in pairs:
        for name in (pair.layer, pair.batchnorm):
            if model.get_submodule(name).training:
                raise ValueError(
                    f"fuse_conv_bn needs eval mode, but {name!r} is in training mode: there BatchNorm normalises "
                    f"with each batch's statistics, which no folded weight reproduces. Call model.eval() first")


def _find_pairs(model: nn.Module, example_input: torch.Tensor | None) -> list[_Pair]:
    if example_input is not None:
        return _traced_pairs(model, example_input)
    pairs = _sequential_pairs(model)
    paired = {model.get_submodule(p.batchnorm) for p in pairs}
    stray = [n for n, m in model.named_modules() if isinstance(m, _BATCHNORMS) and m not in paired]
    if stray:
        raise ValueError(
            f"BatchNorm layer(s) {stray} do not directly follow a convolution or linear layer inside an "
            f"nn.Sequential, so fuse_conv_bn cannot tell what feeds them from the module tree. Pass "
            f"example_input= (a batch the model accepts) to trace the graph, or fold them by hand")
    return pairs


def _check_unshared(model: nn.Module, pairs: list[_Pair]) -> None:
    seen: dict[int, str] = {}
    for pair in pairs:
        for name in (pair.layer, pair.batchnorm):
            module = model.get_submodule(name)
            if id(module) in seen and seen[id(module)] != (pair.layer, pair.batchnorm):
                raise ValueError(f"module {name!r} takes part in two different layer-BatchNorm pairs (a shared "
                                 f"module); folding one BatchNorm into it would change the other path")
            seen[id(module)] = (pair.layer, pair.batchnorm)
        tied = tied_parameters(model, model.get_submodule(pair.layer))
        if tied:
            raise ValueError(f"layer {pair.layer!r} shares parameters with {tied}; folding would untie them")


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    fused = (fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval)(layer, bn)
    fused.weight.requires_grad_(layer.weight.requires_grad)
    fused.bias.requires_grad_(layer.weight.requires_grad if layer.bias is None else layer.bias.requires_grad)
    return fused


def _check_same_function(model: nn.Module, fused: nn.Module, example_input: torch.Tensor) -> None:
    with torch.no_grad():
        ref, out = model(example_input), fused(example_input)
    if not (isinstance(ref, torch.Tensor) and isinstance(out, torch.Tensor)):
        return
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    # rounding of the folded weights: a few units of the dtype's epsilon relative to the output's size
    tol = 1e3 * torch.finfo(ref.dtype).eps * max(scale, 1.0) if ref.is_floating_point() else 0.0
    err = float((out - ref).abs().max()) if ref.numel() else 0.0
    if not math.isfinite(err) or err > tol:
        raise ValueError(
            f"folding changed the model's output on example_input (max |difference| {err:.3g} > {tol:.3g}): some "
            f"layer's output feeds more than its BatchNorm (a residual or a skip connection), which fuse_conv_bn "
            f"cannot follow; exclude= that layer")


def fuse_conv_bn(model: nn.Module, example_input: torch.Tensor | None = None, *, include: Patterns = None,
                 exclude: Patterns = None) -> tuple[nn.Module, list[LayerChange]]:
    """Fold every BatchNorm into the convolution or linear layer that feeds it (a copy, in eval mode).

    Parameters
    ----------
    model : nn.Module
        In eval mode (at least every layer and BatchNorm to fold). Not modified.
    example_input : Tensor, optional
        A batch the model accepts. Without it, pairs are read from :class:`torch.nn.Sequential` containers (a
        ``Conv{1,2,3}d`` or ``Linear`` immediately followed by a ``BatchNorm{1,2,3}d`` of its width), and a
        BatchNorm found anywhere else is an error. With it, pairs are traced with forward hooks on that input and the
        fused model's output is checked against the original's.
    include, exclude : str or sequence of str, optional
        ``fnmatch`` patterns on the names of the convolution / linear layers (:func:`tensorcompress.surgery.select`);
        a BatchNorm after an excluded layer stays.

    Returns
    -------
    (nn.Module, list of LayerChange)
        The fused copy, in which each folded BatchNorm is an :class:`torch.nn.Identity` (so indices in a
        ``Sequential`` and the names of the other layers do not move), and one row per fused layer:
        ``params_before`` counts the layer and its BatchNorm, ``detail`` names the BatchNorm folded in.

    Raises
    ------
    ValueError
        A layer or BatchNorm to fold in training mode; a BatchNorm whose producer cannot be read (no
        ``example_input``); a shared module in two pairs; an output that changes on ``example_input``; no pair to
        fold.
    TypeError
        ``model`` is not an ``nn.Module`` or ``example_input`` not a tensor.

    Examples
    --------
    >>> import tensorcompress as tc
    >>> fused, rows = tc.surgery.fuse_conv_bn(tc.models.SmallCNN().eval())
    >>> print(rows[0])
    features.0.0: Conv2d -> Conv2d, 352 -> 320 parameters, batchnorm features.0.1
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor or None, got {type(example_input).__name__}")
    chosen = {id(s.module) for s in select(model, tuple(_FOLDABLE), include=include, exclude=exclude)}
    pairs = [p for p in _find_pairs(model, example_input) if id(model.get_submodule(p.layer)) in chosen]
    if not pairs:
        raise ValueError("model has no convolution or linear layer followed by a BatchNorm to fold"
                         + ("" if include is None and exclude is None else " among the include/exclude selection"))
    _check_eval(model, pairs)
    _check_unshared(model, pairs)
    fused = copy_model(model)
    report = []
    for pair in pairs:
        layer, bn = fused.get_submodule(pair.layer), fused.get_submodule(pair.batchnorm)
        names, bn_names = _all_names(fused, layer), _all_names(fused, bn)
        before = footprint(layer, bn)
        new = _fold(layer, bn)
        replace(fused, names, new, old=layer)
        replace(fused, bn_names, nn.Identity())
        report.append(LayerChange.between(pair.layer, before, footprint(new), {"batchnorm": pair.batchnorm},
                                          names[1:]))
    if example_input is not None:
        _check_same_function(model, fused, example_input)
    return fused, report

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
which no fixed weight reproduces, so folding is refused there; so is a BatchNorm without running statistics (it
normalises with the batch's statistics in eval mode too) and a transposed convolution (its weight is laid out
``(in, out / groups, ...)``: the scale would go on the wrong axis).

The arithmetic is PyTorch's (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`, ``fuse_linear_bn_eval``); this
module finds the pairs in a whole model and replaces them, in the one shape of every whole-model transform
(:mod:`tensorcompress.surgery`).

Finding the pairs. With ``example_input``, the forward pass is traced (:func:`tensorcompress.surgery.trace`) and a
layer–BatchNorm pair is folded only where that graph proves the fold keeps the function:

* the BatchNorm reads one tensor, the layer's output, unmodified (an in-place operation in between is a node of its
  own, so the BatchNorm then reads *its* output);
* nothing else reads the layer's output (a residual or skip connection would see the folded values), and it is not
  itself an output of the model;
* the layer and the BatchNorm are each called once (a layer shared with a path without BatchNorm would change it);
* for ``Linear`` + ``BatchNorm1d``, the output is 2-D: on ``(N, L, C)`` BatchNorm1d normalises dimension 1, not the
  linear layer's features.

Every other BatchNorm stays, and the report says why (:attr:`FusionReport.skipped`). The fused model is then
compared with the original on ``example_input``, every output of a tuple or dict included. Without
``example_input`` the pairs are read from :class:`torch.nn.Sequential` containers, where a layer's output is by
definition the next layer's input; that reading cannot see a layer called from elsewhere too, so a layer (or
BatchNorm) registered under a name outside its pair is skipped, and so is ``Linear`` + ``BatchNorm1d``, whose
input rank only a trace shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .core import Detail, LayerChange, Patterns, footprint, replace, select, tied_parameters
from .graph import Graph, Node, _tensors, trace
from .model import copy_model

__all__ = ["fuse_conv_bn", "FusedLayer", "FusionReport", "Skipped"]

# A layer type and the BatchNorm type that may follow it (the spatial dimension must agree).
_FOLDABLE: dict[type, type] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FusedLayer(LayerChange):
    """A report row of :func:`fuse_conv_bn`: the layer with the BatchNorm folded into it (its ``bytes_before``
    counts both)."""

    batchnorm = Detail(str, "The BatchNorm folded into the layer.")


@dataclass(frozen=True)
class Skipped:
    """A BatchNorm left in place: the ``layer`` that feeds it (``None`` when no single layer does), the
    ``batchnorm`` and the ``reason``."""

    layer: str | None
    batchnorm: str
    reason: str

    def __str__(self) -> str:
        return f"{self.layer or '?'} -> {self.batchnorm}: {self.reason}"


@dataclass
class FusionReport:
    """What :func:`fuse_conv_bn` did: one :class:`~tensorcompress.surgery.LayerChange` per folded pair
    (``layers``; the report iterates, indexes and counts as that list) and the BatchNorms it left, with the reason
    (``skipped``)."""

    layers: list[LayerChange]
    skipped: list[Skipped] = field(default_factory=list)

    def __iter__(self) -> Iterator[LayerChange]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerChange:
        return self.layers[i]

    def __str__(self) -> str:
        return "\n".join([*map(str, self.layers), *(f"skipped {s}" for s in self.skipped)])


@dataclass(frozen=True)
class _Pair:
    layer: str
    batchnorm: str


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _unfoldable(layer: nn.Module, bn: nn.Module, pair: _Pair) -> None:
    """Refuse, by name, a pair that no fold can express."""
    if isinstance(layer, _TRANSPOSED):
        raise ValueError(f"{pair.layer!r} ({type(layer).__name__}) feeds BatchNorm {pair.batchnorm!r}: a transposed "
                         f"convolution's weight is (in, out / groups, ...), which fuse_conv_bn does not fold; "
                         f"exclude={pair.layer!r} to leave the pair")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm {pair.batchnorm!r} after {pair.layer!r} has no running statistics "
                         f"(track_running_stats=False): it normalises with each batch's statistics even in eval "
                         f"mode, which no folded weight reproduces; exclude={pair.layer!r} to leave the pair")


def _mismatch(layer: nn.Module, bn: nn.Module) -> str | None:
    """Why ``bn`` cannot follow ``layer`` as a per-channel map of its output, or ``None``."""
    want = _FOLDABLE[type(layer)]
    if type(bn) is not want:
        return f"a {type(layer).__name__} is folded with a {want.__name__}, not a {type(bn).__name__}"
    if bn.num_features != _width(layer):
        return f"the BatchNorm has {bn.num_features} features, the layer {_width(layer)} output channels"
    return None


def _all_names(model: nn.Module, module: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, m in model.named_modules(remove_duplicate=False) if m is module and n)


# ---------------------------------------------------------------- pairs read from nn.Sequential


def _sequential_pairs(model: nn.Module, chosen: set[int]) -> tuple[list[_Pair], list[Skipped]]:
    """Layer–BatchNorm neighbours in every ``nn.Sequential`` (each name of a shared container once)."""
    found: list[_Pair] = []
    for prefix, seq in model.named_modules(remove_duplicate=False):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
            if id(a) in chosen and isinstance(b, _BATCHNORMS):
                found.append(_Pair(f"{prefix}.{a_name}" if prefix else a_name,
                                   f"{prefix}.{b_name}" if prefix else b_name))
    pairs, skipped, paired = [], [], {n for p in found for n in (p.layer, p.batchnorm)}
    by_layer: dict[int, set[int]] = {}
    for p in found:
        layer, bn = model.get_submodule(p.layer), model.get_submodule(p.batchnorm)
        _unfoldable(layer, bn, p)
        by_layer.setdefault(id(layer), set()).add(id(bn))
        if len(by_layer[id(layer)]) > 1:
            raise ValueError(f"module {p.layer!r} takes part in two different layer-BatchNorm pairs (a shared "
                             f"module); folding one BatchNorm into it would change the other path")
        elsewhere = [n for m in (layer, bn) for n in _all_names(model, m) if n not in paired]
        why = _mismatch(layer, bn)
        if why is None and elsewhere:
            why = (f"also registered as {elsewhere}, where the module tree cannot say what it is called with; pass "
                   f"example_input= to trace the forward")
        if why is None and isinstance(layer, nn.Linear):
            why = ("BatchNorm1d normalises dimension 1, the Linear's features only on 2-D inputs; pass "
                   "example_input= to trace the input's shape")
        if why is None:
            pairs.append(p)
        elif not any(s.layer == p.layer for s in skipped):
            skipped.append(Skipped(p.layer, p.batchnorm, why))
    once = {id(model.get_submodule(p.layer)): p for p in reversed(pairs)}  # a shared container: its pair once
    return [p for p in pairs if once[id(model.get_submodule(p.layer))] is p], skipped


def _stray_batchnorms(model: nn.Module) -> None:
    """Without a trace, a BatchNorm outside a Sequential pair has no readable producer: an error."""
    after = set()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            children = list(seq.children())
            after |= {id(b) for a, b in zip(children, children[1:], strict=False)
                      if isinstance(a, (*_FOLDABLE, *_TRANSPOSED))}
    stray = [n for n, m in model.named_modules() if isinstance(m, _BATCHNORMS) and id(m) not in after]
    if stray:
        raise ValueError(
            f"BatchNorm layer(s) {stray} do not directly follow a convolution or linear layer inside an "
            f"nn.Sequential, so fuse_conv_bn cannot tell what feeds them from the module tree. Pass "
            f"example_input= (a batch the model accepts) to trace the graph, or fold them by hand")


# ---------------------------------------------------------------- pairs proved on the traced graph


def _unsafe(graph: Graph, layer_node: Node, bn_node: Node, index: int) -> str | None:
    """Why folding the traced pair could change the function, or ``None`` when the graph proves it safe."""
    layer, bn = layer_node.target, bn_node.target
    readers = [graph.nodes[c].label for c in layer_node.consumers if graph.nodes[c] is not bn_node]
    if readers:
        return f"the layer's output is also read by {readers} (a residual or skip connection)"
    if index in graph.outputs:
        return "the layer's output is also an output of the model"
    for m, what in ((layer, "layer"), (bn, "BatchNorm")):
        n = len(graph.calls(m))
        if n > 1:
            return f"the {what} is called {n} times in the forward pass; folding would change every call"
    if isinstance(layer, nn.Linear) and len(layer_node.out_shape) != 2:
        return (f"the Linear's output has shape {list(layer_node.out_shape)}: BatchNorm1d normalises dimension 1, "
                f"not the Linear's features, unless the output is 2-D")
    return _mismatch(layer, bn)


def _traced_pairs(model: nn.Module, graph: Graph, chosen: set[int]) -> tuple[list[_Pair], list[Skipped]]:
    pairs, skipped = [], []
    for bn_node in graph.nodes:
        if not isinstance(bn_node.target, _BATCHNORMS) or bn_node.module_name is None:
            continue
        src = graph.nodes[bn_node.inputs[0]] if len(bn_node.inputs) == 1 else None
        if src is None or not isinstance(src.target, (*_FOLDABLE, *_TRANSPOSED)):
            what = "several tensors" if src is None else f"the output of {src.label}"
            skipped.append(Skipped(None, bn_node.module_name, f"it reads {what}, not a layer's output"))
            continue
        if id(src.target) not in chosen:
            continue  # a layer left out of the selection: its BatchNorm stays as asked
        pair = _Pair(src.module_name, bn_node.module_name)
        _unfoldable(src.target, bn_node.target, pair)
        why = _unsafe(graph, src, bn_node, bn_node.inputs[0])
        if why is None:
            pairs.append(pair)
        elif pair not in {_Pair(s.layer, s.batchnorm) for s in skipped}:
            skipped.append(Skipped(pair.layer, pair.batchnorm, why))
    return pairs, skipped


# ---------------------------------------------------------------- the transform


def _check_eval(model: nn.Module, pairs: list[_Pair]) -> None:
    for pair in pairs:
        for name in (pair.layer, pair.batchnorm):
            if model.get_submodule(name).training:
                raise ValueError(
                    f"fuse_conv_bn needs eval mode, but {name!r} is in training mode: there BatchNorm normalises "
                    f"with each batch's statistics, which no folded weight reproduces. Call model.eval() first")


def _check_untied(model: nn.Module, pairs: list[_Pair]) -> None:
    for pair in pairs:
        tied = tied_parameters(model, model.get_submodule(pair.layer))
        if tied:
            raise ValueError(f"layer {pair.layer!r} shares parameters with {tied}; folding would untie them. "
                             f"Untie the weights first or leave the layer out with exclude=")


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    fused = (fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval)(layer, bn)
    fused.weight.requires_grad_(layer.weight.requires_grad)
    fused.bias.requires_grad_(layer.weight.requires_grad if layer.bias is None else layer.bias.requires_grad)
    return fused


def _check_same_function(model: nn.Module, fused: nn.Module, example_input: torch.Tensor) -> None:
    """Every output tensor (of a tuple, list or dict output too) equal to the original's up to the rounding of the
    folded weights."""
    with torch.no_grad():
        refs, outs = _tensors(model(example_input)), _tensors(fused(example_input))
    if len(refs) != len(outs):
        raise ValueError(f"folding changed the model's outputs on example_input: {len(refs)} tensors before, "
                         f"{len(outs)} after")
    for i, (ref, out) in enumerate(zip(refs, outs, strict=True)):
        if ref.shape != out.shape or not ref.numel():
            continue
        scale = float(ref.abs().max())
        # rounding of the folded weights: a few units of the dtype's epsilon relative to the output's size
        tol = 1e3 * torch.finfo(ref.dtype).eps * max(scale, 1.0) if ref.is_floating_point() else 0.0
        err = float((out.double() - ref.double()).abs().max())
        if not math.isfinite(err) or err > tol:
            raise ValueError(f"folding changed output {i} of the model on example_input (max |difference| "
                             f"{err:.3g} > {tol:.3g}); exclude= the layers whose outputs feed it")


def fuse_conv_bn(model: nn.Module, example_input: torch.Tensor | None = None, *, include: Patterns = None,
                 exclude: Patterns = None) -> tuple[nn.Module, FusionReport]:
    """Fold every BatchNorm into the convolution or linear layer that feeds it (a copy, in eval mode).

    Parameters
    ----------
    model : nn.Module
        In eval mode (at least every layer and BatchNorm to fold). Not modified.
    example_input : Tensor, optional
        A batch the model accepts. With it, the forward pass is traced (:func:`tensorcompress.surgery.trace`), every
        pair the graph proves safe is folded (module docstring), the others are reported as skipped, and the fused
        model's outputs are checked against the original's. Without it, pairs are read from
        :class:`torch.nn.Sequential` containers (a ``Conv{1,2,3}d`` immediately followed by a ``BatchNorm{1,2,3}d``
        of its width), and a BatchNorm found anywhere else is an error.
    include, exclude : str, Selected or sequence of them, optional
        Names or ``fnmatch`` patterns of the convolution / linear layers (:func:`tensorcompress.surgery.select`);
        a BatchNorm after a layer left out stays.

    Returns
    -------
    (nn.Module, FusionReport)
        The fused copy, in which each folded BatchNorm is an :class:`torch.nn.Identity` (so indices in a
        ``Sequential`` and the names of the other layers do not move), and the report: one row per fused layer
        (``params_before`` counts the layer and its BatchNorm, ``detail`` names the BatchNorm folded in), and the
        BatchNorms left with the reason (``report.skipped``).

    Raises
    ------
    ValueError
        A layer or BatchNorm to fold in training mode; a pair that cannot be folded at all (a transposed
        convolution, a BatchNorm without running statistics), a layer with tied weights, a module in two pairs;
        a BatchNorm whose producer cannot be read (no ``example_input``); an output that changes on
        ``example_input``; an empty selection or no pair to fold (the message lists the skipped ones).
    TypeError
        ``model`` is not an ``nn.Module`` or ``example_input`` not a tensor.

    Examples
    --------
    >>> import tensorcompress as tc
    >>> fused, report = tc.surgery.fuse_conv_bn(tc.models.SmallCNN().eval())
    >>> print(report[0])
    features.0.0: Conv2d -> Conv2d, 352 -> 320 parameters, 4,309 -> 3,109 bytes (1.39x), batchnorm features.0.1
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor or None, got {type(example_input).__name__}")
    chosen = {id(s.module) for s in select(model, (*_FOLDABLE, *_TRANSPOSED), include=include, exclude=exclude,
                                           action="fuse_conv_bn")}
    if example_input is None:
        _stray_batchnorms(model)
        pairs, skipped = _sequential_pairs(model, chosen)
    else:
        pairs, skipped = _traced_pairs(model, trace(model, example_input), chosen)
    if not pairs:
        raise ValueError("model has no convolution or linear layer followed by a BatchNorm to fold"
                         + ("" if include is None and exclude is None else " among the include/exclude selection")
                         + "".join(f"; skipped {s}" for s in skipped))
    _check_eval(model, pairs)
    _check_untied(model, pairs)
    fused = copy_model(model)
    rows = []
    for pair in pairs:
        layer, bn = fused.get_submodule(pair.layer), fused.get_submodule(pair.batchnorm)
        names, bn_names = _all_names(fused, layer), _all_names(fused, bn)
        before = footprint(layer, bn)
        new = _fold(layer, bn)
        replace(fused, names, new, old=layer)
        replace(fused, bn_names, nn.Identity())
        rows.append(FusedLayer.between(pair.layer, before, footprint(new), {"batchnorm": pair.batchnorm},
                                        names[1:]))
    if example_input is not None:
        _check_same_function(model, fused, example_input)
    return fused, FusionReport(rows, skipped)

r"""Physical removal of pruned filters, channels and neurons: a masked model becomes a smaller one.

A mask zeroes weights but keeps every tensor at full size (and adds the mask). Where a whole filter (output slice)
of a layer :math:`P` is zero — weights, bias, and the affine of the BatchNorm after it — its output channel is
exactly zero; every operation up to the next layer :math:`Q` maps zero to zero (ReLU, pooling, spatial mean,
flatten, dropout), so the matching inputs of :math:`Q` multiply zeros. Where a whole input slice of :math:`Q` is zero,
the channel is unused. Either way, the channel :math:`j` goes: row :math:`j` of :math:`P`, entry :math:`j` of each
BatchNorm between, and the inputs of :math:`Q` that read it (one column of a convolution, a block of
:math:`H'W'` columns of a linear layer after a flatten). The network computes the same function with
fewer parameters, fewer bytes, fewer FLOPs (Li et al. 2017; Torch-Pruning's dependency graph,
Fang et al. 2023, does this for general graphs).

:func:`shrink` follows the data flow of one forward pass on ``example_input`` (every torch function and leaf
module call, recorded through a ``TorchFunctionMode``) and removes channels by *coupled group*
(:func:`tensorcompress.surgery.channel_groups`): across a residual addition, channel :math:`j` goes from every layer
that feeds the addition at once (the stem, the blocks' last convolutions and projection shortcuts of a ResNet), and
a depthwise convolution loses input and output channel :math:`j` together (its ``groups`` shrinking with them). In a
group, channel :math:`j` is removable when it is zero where it is made (every producer's filter and bias, every
depthwise bias, and every BatchNorm keeping zero at zero) or read by no consumer. A group that reaches the model's
input or output keeps its channels; an operation the graph cannot follow (an unknown one, a grouped convolution
with ``1 < groups < channels``, a product or concatenation of tensors) is refused with a ``ValueError`` rather than
build a wrong model. Channels are dim 1 throughout: a Linear counts only on ``(batch, features)`` inputs (on
``(N, C, L)`` it acts on ``L``), a shape-changing operation only where it keeps dim 1 or flattens it in order, and a
subclass of a known module is unknown (it may compute something else). Every check is made before anything is
built; then the smaller model's outputs (all of them, for a tuple or dict) are compared with the masked model's.
"""

from __future__ import annotations

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from .. import surgery

__all__ = ["shrink", "ShrunkLayer"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _dead_filters(layer: nn.Module) -> torch.Tensor:
    """Output channels of ``layer`` whose filter and bias are all zero."""
    w = layer.weight.detach()
    dead = (w.flatten(1) == 0).all(1)
    return dead if layer.bias is None else dead & (layer.bias.detach() == 0)


def _zero_through_norm(bn: nn.Module) -> torch.Tensor:
    """Channels on which ``bn`` maps zero to zero: beta = 0 and gamma * mean = 0 (without running statistics it
    normalises with the batch's, 0 on a zero channel)."""
    ok = torch.ones(bn.num_features, dtype=torch.bool)
    if bn.affine:
        ok &= (bn.bias.detach() == 0).cpu()
    if bn.running_mean is not None:
        ok &= (bn.running_mean * (bn.weight.detach() if bn.affine else 1) == 0).cpu()
    return ok


def _dead_channels(group: surgery.ChannelGroup) -> torch.Tensor:
    """Channels of ``group`` whose removal cannot change the output: zero where they are made (every producer's
    filter and bias zero, every depthwise bias zero — a zero input channel gives its bias — and every BatchNorm
    keeping zero at zero), or read by no consumer (all their input weights zero)."""
    mods = group.modules
    dead = torch.stack([_dead_filters(mods[n]).cpu() for n in group.producers]).all(0)
    for name in group.depthwise:
        if mods[name].bias is not None:
            dead &= (mods[name].bias.detach() == 0).cpu()
    for name in group.norms:
        dead &= _zero_through_norm(mods[name]).cpu()
    if group.consumers:
        unread = torch.stack([_dead_inputs(mods[n], group.channels, block).cpu()
                              for n, block in group.consumers.items()]).all(0)
        dead |= unread
    return dead


def _dead_inputs(layer: nn.Module, channels: int, group: int) -> torch.Tensor:
    """Input channels of ``layer`` whose weights are all zero (a block of ``group`` columns of a linear layer)."""
    w = layer.weight.detach()
    per_channel = w.reshape(w.shape[0], channels, group) if isinstance(layer, nn.Linear) else w
    return (per_channel.transpose(0, 1).flatten(1) == 0).all(1)


def _groups_of(old: nn.Module, weight: torch.Tensor) -> int:
    """The ``groups`` of the rebuilt convolution: 1 stays 1; a depthwise one has as many groups as filters."""
    return 1 if old.groups == 1 else weight.shape[0]


def _new_layer(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    if isinstance(old, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        groups = _groups_of(old, weight)
        new = type(old)(weight.shape[1] * groups, weight.shape[0], old.kernel_size, stride=old.stride,
                        padding=old.padding, dilation=old.dilation, groups=groups, bias=bias is not None,
                        padding_mode=old.padding_mode)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _new_norm(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(old)(len(keep), eps=old.eps, momentum=old.momentum, affine=old.affine,
                    track_running_stats=old.track_running_stats)
    reference = old.weight if old.affine else old.running_mean
    if reference is not None:  # a BatchNorm without affine or statistics holds no tensor
        new = new.to(device=reference.device, dtype=reference.dtype)
    state = {k: (v[keep] if v.ndim == 1 else v) for k, v in old.state_dict().items()}
    new.load_state_dict(state)
    return new


def _permanent(model: nn.Module) -> None:
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            for method in getattr(hook, "_pruning_methods", (hook,)):
                if isinstance(method, tprune.BasePruningMethod) and hasattr(module, method._tensor_name + "_orig"):
                    tprune.remove(module, method._tensor_name)


def _before_after(text: str) -> tuple[int, int]:
    before, _, after = text.partition(" -> ")
    return int(before), int(after)


class ShrunkLayer(surgery.LayerChange):
    """A report row of :func:`shrink`, its details typed: channels or features before and after."""

    outputs = surgery.Detail(_before_after, "Output channels (or features) before and after.", key="out")
    inputs = surgery.Detail(_before_after, "Input channels (or features) before and after.", optional=True, key="in")


def shrink(model: nn.Module, example_input: torch.Tensor, *, include=None,
           exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A physically smaller copy of ``model`` without the pruned (all-zero) filters, channels and neurons.

    Parameters
    ----------
    model : nn.Module
        A network of Linear/Conv (depthwise included), BatchNorm, ReLU, ReLU6, pooling, mean, flatten, dropout and
        residual additions, pruned by :func:`tensorcompress.pruning.prune` or otherwise (zeros are what count). The
        input is untouched.
    example_input : tensor
        One batch the model accepts; the data flow of this forward pass is what is followed.
    include, exclude : names or fnmatch patterns of Linear/Conv layers (see :func:`tensorcompress.surgery.select`)
        The layers that lose their dead output channels (filters, neurons); default all. A channel group shrinks
        only when all its producers and depthwise convolutions are selected; the layers that read it lose the
        matching inputs with them, selected or not: it is the same channel.

    Returns
    -------
    (nn.Module, list of LayerChange)
        The smaller model (masks made permanent, so no ``weight_orig``/``weight_mask`` remain) and a row per
        resized layer, with ``detail`` giving the ``out`` and ``in`` sizes before -> after.

    Raises
    ------
    ValueError
        If the graph has an operation it cannot follow (an unknown operation, a grouped convolution that is not
        depthwise, a product of branches, a layer called twice, a Linear acting on another dimension than the
        channels), naming it, before anything is built; or if the selection is empty.
    RuntimeError
        If the smaller model's output differs from the masked model's (a bug guard; it should never happen).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    new = surgery.copy_model(model)
    selected = {id(sel.module) for sel in surgery.select(new, _LAYERS, include=include, exclude=exclude,
                                                         action="shrink")}
    _permanent(new)
    graph = surgery.trace(new, example_input)
    groups = surgery.channel_groups(graph)
    for group in groups:  # every check before anything is built
        if group.blocked is not None:
            raise ValueError(f"shrink cannot follow {group.blocked}")
    weights = {id(m): [m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()]
               for m in new.modules() if isinstance(m, _LAYERS)}
    keeps = {}
    for group in groups:
        if group.reason is not None or any(id(group.modules[n]) not in selected for n in group.filters):
            continue
        keep = _keep(group)
        if keep is None:
            continue
        for name in group.filters:
            w, b = weights[id(group.modules[name])]
            weights[id(group.modules[name])] = [w[keep], None if b is None else b[keep]]
        for name in group.norms:
            keeps[id(group.modules[name])] = keep
        for name, block in group.consumers.items():
            entry = weights[id(group.modules[name])]
            cols = (keep[:, None] * block + torch.arange(block, device=keep.device)).reshape(-1)
            entry[0] = entry[0][:, cols.to(entry[0].device)]
    report = _rebuild(new, graph, weights, keeps)
    _check_outputs(new, example_input, graph.output)
    return new, report


def _keep(group: surgery.ChannelGroup) -> torch.Tensor | None:
    """Indices of the channels of ``group`` that stay (at least one, so every layer keeps a valid shape), or
    ``None`` when all do."""
    dead = _dead_channels(group)
    if bool(dead.all()):
        dead[0] = False
    keep = torch.nonzero(~dead).reshape(-1)
    return None if len(keep) == group.channels else keep


def _rebuild(new: nn.Module, graph: surgery.Graph, weights: dict, keeps: dict) -> list[ShrunkLayer]:
    """Replace, in call order, every layer whose weight changed shape and every BatchNorm that lost channels."""
    names: dict[int, list[str]] = {}
    for name, m in new.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    report = []
    for m in dict.fromkeys(n.target for n in graph.modules()):
        if isinstance(m, _LAYERS) and tuple(weights[id(m)][0].shape) != tuple(m.weight.shape):
            repl = _new_layer(m, *weights[id(m)])
            detail = {"out": f"{m.weight.shape[0]} -> {repl.weight.shape[0]}",
                      "in": f"{_inputs(m)} -> {_inputs(repl)}"}
        elif isinstance(m, _NORMS) and id(m) in keeps:
            repl = _new_norm(m, keeps[id(m)])
            detail = {"out": f"{m.num_features} -> {repl.num_features}"}
        else:
            continue
        surgery.replace(new, names[id(m)], repl, old=m)
        report.append(ShrunkLayer.between(names[id(m)][0], surgery.footprint(m), surgery.footprint(repl),
                                          detail, names[id(m)][1:]))
    return report


def _inputs(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _check_outputs(new: nn.Module, example_input: torch.Tensor, reference: object) -> None:
    """The smaller model's outputs equal the masked model's up to rounding: removing zero terms only reorders
    sums (100 ulps of the output's dtype)."""
    with torch.no_grad(), surgery.kept_modes(new, False):
        outs = surgery.tensors_in(new(example_input))
    refs = surgery.tensors_in(reference)
    for out, ref in zip(outs, refs, strict=False):
        if not ref.is_floating_point():
            continue
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        tol = max(1e-10, 100 * torch.finfo(ref.dtype).eps) * max(1.0, scale)
        if out.shape != ref.shape or (ref.numel() and float((out - ref).abs().max()) > tol):
            raise RuntimeError("shrink built a model whose output differs from the masked model's; please report "
                               "this model")
    if len(outs) != len(refs):
        raise RuntimeError("shrink built a model with a different number of outputs; please report this model")

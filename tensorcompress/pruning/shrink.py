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
module call, recorded through a ``TorchFunctionMode``): it accepts only a chain — each tensor used once, each
operation reading one tensor — of known operations, and refuses branches, residual additions and unknown operations
with a ``ValueError`` rather than build a wrong model. Channels are dim 1 throughout: a Linear counts only on
``(batch, features)`` inputs (on ``(N, C, L)`` it acts on ``L``), a shape-changing operation only where it keeps
dim 1 or flattens it in order, and a subclass of a known module is unknown (it may compute something else). Every
check is made before anything is built; then the smaller model's output is compared with the masked model's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from .. import surgery
from ..surgery.graph import Node

__all__ = ["shrink", "ShrunkLayer"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# maps a zero channel to a zero channel, channel by channel
_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.Dropout, nn.Identity, nn.Flatten)
_ZERO_FUNCTIONS = {"relu", "relu_", "relu6", "leaky_relu", "max_pool1d", "max_pool2d", "_max_pool2d",
                   "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d",
                   "adaptive_max_pool2d", "dropout", "flatten", "mean", "reshape", "view", "contiguous", "clone"}


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[list[Node], torch.Tensor]:
    graph = surgery.trace(model, x)
    out = graph.output
    if not isinstance(out, torch.Tensor) or graph.outputs != [len(graph.nodes) - 1]:
        raise ValueError("shrink follows a model whose output is the last result of one chain of operations; "
                         "this model's output is not")
    return graph.nodes, out


def _chain(nodes: list[Node]) -> list[Node]:
    chain, k = [], 0
    while True:
        node = nodes[k]
        if len(node.inputs) > 1:
            raise ValueError(f"shrink cannot follow this graph: {node.name} (operation {k}) reads "
                             f"{len(node.inputs)} intermediate tensors (a residual connection or a merge)")
        if len(node.consumers) > 1:
            raise ValueError(f"shrink cannot follow this graph: the output of {nodes[k].name} (operation {k}) is "
                             f"used {len(node.consumers)} times (a branch or a residual connection)")
        chain.append(node)
        if not node.consumers:
            return chain[1:]
        k = node.consumers[0]


def _keeps_channels(node: Node) -> None:
    """Refuse an operation whose output does not keep the input's channels at dim 1, or flatten them (in order)
    into the features of a (batch, features) output."""
    same_channels = len(node.out_shape) >= 2 and node.out_shape[:2] == node.in_shape[:2]
    flattened = len(node.out_shape) == 2 and node.out_shape[1] == math.prod(node.in_shape[1:])
    if not (same_channels or flattened):
        raise ValueError(f"shrink cannot follow {node.label}: shape {node.in_shape} -> {node.out_shape} mixes "
                         f"channels")


def _check_op(node: Node) -> None:
    t = node.target
    if isinstance(t, nn.Module):  # exact classes: a subclass may compute something else, and is rebuilt as its base
        if type(t) in _LAYERS and getattr(t, "groups", 1) != 1:
            raise ValueError(f"shrink does not handle grouped convolutions ({node.label}: {t})")
        if type(t) is nn.Linear and len(node.in_shape) != 2:
            raise ValueError(f"shrink follows a Linear on (batch, features) inputs only: {node.label} is applied to "
                             f"shape {node.in_shape}, acting on its last dimension, not on the channels (dim 1)")
        if type(t) in _ZERO_MODULES:
            return _keeps_channels(node)
        if type(t) in _LAYERS + _NORMS:
            return None
    elif node.name == "mean":
        (args, kwargs) = node.args
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is not None and all(d % len(node.in_shape) >= 2 for d in dims):
            return None
        raise ValueError(f"shrink follows a mean over spatial dimensions (2, ...) only, got dim={dims}")
    elif node.name in _ZERO_FUNCTIONS:
        return _keeps_channels(node)
    raise ValueError(f"shrink cannot follow the operation {node.label!r} (not known to map a zero channel to a "
                     f"zero channel); supported: Linear/Conv, BatchNorm, ReLU, pooling, mean, flatten, dropout")


def _dead_outputs(layer: nn.Module, norms: list[nn.Module]) -> torch.Tensor:
    w = layer.weight.detach()
    dead = (w.flatten(1) == 0).all(1)
    if layer.bias is not None:
        dead &= layer.bias.detach() == 0
    zeros = torch.zeros(len(dead), dtype=w.dtype, device=w.device)
    for bn in norms:  # a zero channel stays zero through BatchNorm only if beta = 0 and gamma * mean = 0
        beta = bn.bias.detach() if bn.affine else zeros  # no running statistics: the batch's, 0 on a zero channel
        gamma = bn.weight.detach() if bn.affine else 1 + zeros
        mean = bn.running_mean if bn.running_mean is not None else zeros
        dead &= (beta == 0) & (gamma * mean == 0)
    return dead


def _dead_inputs(layer: nn.Module, channels: int, group: int) -> torch.Tensor:
    """Input channels of ``layer`` whose weights are all zero (a block of ``group`` columns of a linear layer)."""
    w = layer.weight.detach()
    per_channel = w.reshape(w.shape[0], channels, group) if isinstance(layer, nn.Linear) else w
    return (per_channel.transpose(0, 1).flatten(1) == 0).all(1)


def _new_layer(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    if isinstance(old, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = type(old)(weight.shape[1], weight.shape[0], old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, bias=bias is not None, padding_mode=old.padding_mode)
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


def _segments(chain: list[Node]):
    """(producer, norms between, consumer, channels, group) for each pair of consecutive Linear/Conv layers; the
    channel layout (channels, group) is that of the consumer's input (group > 1 after a flatten)."""
    producer, norms, group, segs = None, [], 1, []
    for node in chain:
        t = node.target
        if isinstance(t, _LAYERS):
            if producer is not None:
                channels = producer.weight.shape[0]
                if channels * group != node.in_shape[1]:
                    raise ValueError(f"shrink cannot follow the channels from {type(producer).__name__} to "
                                     f"{type(t).__name__} (input shape {node.in_shape})")
                if not isinstance(t, nn.Linear) and group != 1:
                    raise ValueError("shrink cannot follow a flatten into a convolution")
                segs.append((producer, norms, t, channels, group))
            producer, norms, group = t, [], 1
        elif isinstance(t, _NORMS):
            if group != 1:
                raise ValueError("shrink cannot follow a BatchNorm after a flatten")
            norms.append(t)
        elif len(node.in_shape) > 2 and len(node.out_shape) == 2 and node.out_shape[1] != node.in_shape[1]:
            group *= math.prod(node.in_shape[2:])  # a flatten: each channel becomes a block of H'W' features
    return segs


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
        A sequential network (one chain of Linear/Conv, BatchNorm, ReLU, pooling, mean, flatten, dropout), pruned
        by :func:`tensorcompress.pruning.prune` or otherwise (zeros are what count). The input is untouched.
    example_input : tensor
        One batch the model accepts; the data flow of this forward pass is what is followed.
    include, exclude : names or fnmatch patterns of Linear/Conv layers (see :func:`tensorcompress.surgery.select`)
        The layers that lose their dead output channels (filters, neurons); default all. The next layer loses the
        matching inputs with them, selected or not: it is the same channel.

    Returns
    -------
    (nn.Module, list of LayerChange)
        The smaller model (masks made permanent, so no ``weight_orig``/``weight_mask`` remain) and a row per
        resized layer, with ``detail`` giving the ``out`` and ``in`` sizes before -> after.

    Raises
    ------
    ValueError
        If the model is not such a chain (a branch, a residual addition, an unknown operation, a grouped
        convolution, a Linear acting on another dimension than the channels), naming the offending operation,
        before anything is built; or if the selection is empty.
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
    nodes, reference = _trace(new, example_input)
    chain = _chain(nodes)
    for node in chain:
        _check_op(node)
    seen = set()
    for node in chain:
        if isinstance(node.target, nn.Module):
            if id(node.target) in seen:
                raise ValueError(f"shrink cannot follow a module used twice in the forward pass ({node.name})")
            seen.add(id(node.target))
    weights = {}
    for m in (n.target for n in chain if isinstance(n.target, _LAYERS)):
        weights[id(m)] = [m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()]
    keeps = {}
    for producer, norms, consumer, channels, group in _segments(chain):
        if id(producer) not in selected:
            continue
        dead = _dead_outputs(producer, norms) | _dead_inputs(consumer, channels, group)
        if bool(dead.all()):
            dead[0] = False  # keep one channel so the layers keep a valid shape
        keep = torch.nonzero(~dead).reshape(-1)
        if len(keep) == channels:
            continue
        w, b = weights[id(producer)]
        weights[id(producer)] = [w[keep], None if b is None else b[keep]]
        for bn in norms:
            keeps[id(bn)] = keep
        cw = weights[id(consumer)][0]
        if isinstance(consumer, nn.Linear):
            cols = (keep[:, None] * group + torch.arange(group, device=keep.device)).reshape(-1)
            weights[id(consumer)][0] = cw[:, cols]
        else:
            weights[id(consumer)][0] = cw[:, keep]
    names: dict[int, list[str]] = {}
    for name, m in new.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    report = []
    for node in chain:
        m = node.target
        if isinstance(m, _LAYERS) and tuple(weights[id(m)][0].shape) != tuple(m.weight.shape):
            repl = _new_layer(m, *weights[id(m)])
            detail = {"out": f"{m.weight.shape[0]} -> {repl.weight.shape[0]}",
                      "in": f"{m.weight.shape[1]} -> {repl.weight.shape[1]}"}
        elif isinstance(m, _NORMS) and id(m) in keeps:
            repl = _new_norm(m, keeps[id(m)])
            detail = {"out": f"{m.num_features} -> {repl.num_features}"}
        else:
            continue
        surgery.replace(new, names[id(m)], repl, old=m)
        report.append(ShrunkLayer.between(names[id(m)][0], surgery.footprint(m), surgery.footprint(repl),
                                                  detail, names[id(m)][1:]))
    with torch.no_grad(), surgery.kept_modes(new, False):
        out = new(example_input)
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    # removing zero terms only reorders sums: a rounding-level difference (100 ulps of the output's dtype)
    tol = max(1e-10, 100 * torch.finfo(reference.dtype).eps) * max(1.0, scale)
    if out.shape != reference.shape or float((out - reference).abs().max()) > tol:
        raise RuntimeError("shrink built a model whose output differs from the masked model's; please report this "
                           "model")
    return new, report

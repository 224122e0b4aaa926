r"""Coupled channels: which channels of a traced graph must be removed together.

A channel is one index of dimension 1 of the tensors on a path of the forward pass. Removing channel :math:`j`
means removing it from every layer that touches it, all at once:

* its **producers** — the convolutions and linear layers whose output channel (filter, row of the weight)
  :math:`j` is;
* the **BatchNorms** on it (entry :math:`j` of :math:`\gamma, \beta, \mu, \sigma^2`);
* the **depthwise** convolutions it passes through (``groups == in_channels == out_channels``: output :math:`j`
  reads input :math:`j` only, so filter :math:`j` belongs to the channel, in and out);
* its **consumers** — the layers whose input channel :math:`j` is (one column of a convolution, or, after a
  flatten of an :math:`H \times W` map, the block of :math:`HW` columns :math:`jHW, \dots, (j+1)HW - 1` of a
  linear layer);
* and everything in between that maps channel :math:`j` to channel :math:`j` and a zero channel to a zero channel
  (ReLU, ReLU6, pooling, a spatial mean, flatten, dropout, identity) — the **pass-throughs**.

A residual addition :math:`y = a + b` adds channel :math:`j` of :math:`a` to channel :math:`j` of :math:`b`: the
groups of all its inputs become one (the residual *stream*: in a ResNet, the stem convolution, the last
convolution of every identity block and the projection shortcuts that feed the same additions). This is the
dependency graph of Torch-Pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023), restricted
to the operations above: :func:`channel_groups` is a union–find over the channel spaces of the traced graph
(:func:`tensorcompress.surgery.trace`), merging at additions and carrying a space through depthwise convolutions
and pass-throughs.

A group is *prunable* (:attr:`ChannelGroup.reason` is ``None``) when it has a producer, does not reach the model's
input or output (their channels are the interface), and every operation on it is understood. An operation that
is not — an unknown module or function, a product or concatenation of tensors, a grouped convolution with
``1 < groups < channels`` (its channel blocks would have to be removed together), a Linear on an ``(N, L, F)``
input (it acts on the last dimension), a flatten that mixes channels, a layer or BatchNorm called twice —
makes every group it touches not prunable, and :attr:`ChannelGroup.blocked` names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .graph import Graph, Node, tensors_in
from .ops import Add

__all__ = ["ChannelGroup", "channel_groups", "is_depthwise"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# maps a zero channel to a zero channel, channel by channel
_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.Dropout, nn.Identity, nn.Flatten)
_ZERO_FUNCTIONS = {"relu", "relu_", "relu6", "hardtanh", "leaky_relu", "max_pool1d", "max_pool2d", "_max_pool2d",
                   "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d",
                   "adaptive_max_pool2d", "dropout", "flatten", "mean", "reshape", "view", "contiguous", "clone"}
_ADD_FUNCTIONS = {"add", "add_", "__add__", "__radd__", "__iadd__"}


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise convolution: ``groups == in_channels == out_channels`` (> 1), so that
    output channel :math:`j` reads input channel :math:`j` only."""
    return (type(module) in _LAYERS and not isinstance(module, nn.Linear) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


@dataclass
class ChannelGroup:
    """Channels that must be removed together, and every layer that holds them (module names in call order).

    ``channels`` is their number; ``producers`` the convolutions / linear layers whose output channels they are,
    ``norms`` the BatchNorms over them, ``depthwise`` the depthwise convolutions they pass through (filters coupled
    in and out), ``consumers`` the layers that read them as input channels, mapped to the number of input features
    per channel (1, or :math:`HW` for a linear layer after a flatten); ``adds`` the residual additions that merged
    them, ``passes`` the other pass-through operations (a module's name, a function's name). ``reason`` says why
    the group cannot be pruned (``None`` where it can), and ``blocked`` is set when that is an operation the graph
    cannot follow. ``modules`` maps each name to its module.
    """

    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: dict[str, int] = field(default_factory=dict)
    adds: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    reason: str | None = None
    blocked: str | None = None
    modules: dict[str, nn.Module] = field(default_factory=dict, repr=False, compare=False)

    @property
    def filters(self) -> list[str]:
        """The layers that lose filters with the group's channels: its producers and depthwise convolutions."""
        return self.producers + self.depthwise

    @property
    def prunable(self) -> bool:
        """Whether the group's channels can be removed (``reason is None``)."""
        return self.reason is None

    def __str__(self) -> str:
        parts = [f"{self.channels} channels", f"producers {self.producers}"]
        parts += [f"{k} {v}" for k, v in (("norms", self.norms), ("depthwise", self.depthwise),
                                            ("consumers", list(self.consumers)), ("adds", self.adds)) if v]
        return ", ".join(parts) + ("" if self.reason is None else f"; not prunable: {self.reason}")


class _Spaces:
    """Union–find over channel spaces; each space collects its members and reasons until the roots are read."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.groups: list[ChannelGroup] = []

    def new(self, channels: int, reason: str | None = None, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(ChannelGroup(channels))
        self.why(len(self.parent) - 1, reason, blocked)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = sorted((self.find(a), self.find(b)))
        self.parent[b] = a
        return a

    def why(self, s: int, reason: str | None, blocked: str | None = None) -> None:
        g = self.groups[s]
        g.reason = g.reason or blocked or reason
        g.blocked = g.blocked or blocked

    def member(self, s: int, role: str, node: Node, block: int = 1) -> None:
        g = self.groups[s]
        name = node.module_name if node.module_name is not None else node.label
        if isinstance(node.target, nn.Module):
            g.modules[name] = node.target
        if role == "consumers":
            g.consumers[name] = block
        elif name not in getattr(g, role):
            getattr(g, role).append(name)

    def merged(self) -> list[ChannelGroup]:
        out: dict[int, ChannelGroup] = {}
        for s, g in enumerate(self.groups):
            root = out.setdefault(self.find(s), ChannelGroup(g.channels))
            for role in ("producers", "norms", "depthwise", "adds", "passes"):
                getattr(root, role).extend(n for n in getattr(g, role) if n not in getattr(root, role))
            root.consumers.update(g.consumers)
            root.modules.update(g.modules)
            root.blocked = root.blocked or g.blocked
            root.reason = root.blocked or root.reason or g.reason
        return list(out.values())


def _flattens(node: Node) -> bool:
    """A ``(N, C, ...) -> (N, C·∏...)`` reshape: each channel becomes a block of features, in order."""
    return (len(node.in_shape) > 2 and len(node.out_shape) == 2
            and node.out_shape[1] == math.prod(node.in_shape[1:]))


def _pass_through_problem(node: Node) -> str | None:
    """Why a known pass-through does not keep the channels at dim 1 (or flatten them in order), else ``None``."""
    if node.name == "mean":
        args, kwargs = node.args
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is None or not all(d % len(node.in_shape) >= 2 for d in dims):
            return f"a mean over spatial dimensions (2, ...) only, got dim={dims} at {node.label}"
    same_channels = len(node.out_shape) >= 2 and node.out_shape[:2] == node.in_shape[:2]
    if not (same_channels or _flattens(node)):
        return f"{node.label}: shape {node.in_shape} -> {node.out_shape} mixes channels"
    return None


def _is_add(node: Node) -> bool:
    return type(node.target) is Add or (not isinstance(node.target, nn.Module) and node.name in _ADD_FUNCTIONS)


def _add_problem(node: Node) -> str | None:
    """An addition merges channel spaces only when it adds traced tensors of one shape (no broadcasting, no
    constant: a constant added to a zero channel makes it non-zero)."""
    operands = tensors_in(node.args)
    same = all(tuple(t.shape) == node.out_shape for t in operands)
    traced = len(node.inputs) == len(operands) or (len(operands) == 2 and operands[0] is operands[1])
    if len(operands) != 2 or not same or not traced:
        return (f"the addition {node.label} does not add two traced tensors of its output's shape "
                f"{list(node.out_shape)} (a broadcast or a constant changes a zero channel)")
    return None


def _unknown(node: Node) -> str:
    return (f"the operation {node.label!r} (not known to map a zero channel to a zero channel, channel by channel; "
            f"supported: Linear/Conv (depthwise too), BatchNorm, ReLU, ReLU6, pooling, mean, flatten, dropout, "
            f"identity, addition)")


def _layer_problem(node: Node) -> str | None:
    t = node.target
    if isinstance(t, nn.Linear) and len(node.in_shape) != 2:
        return (f"a Linear on (batch, features) inputs only: {node.label} is applied to shape {node.in_shape}, "
                f"acting on its last dimension, not on the channels (dim 1)")
    if not isinstance(t, nn.Linear) and t.groups != 1 and not is_depthwise(t):
        return (f"grouped convolutions (1 < groups < channels: channel blocks are coupled): {node.label} has "
                f"groups={t.groups}")
    return None


def channel_groups(graph: Graph) -> list[ChannelGroup]:
    """The coupled channel groups of a traced graph (module docstring), in order of first appearance.

    Parameters
    ----------
    graph : Graph
        From :func:`tensorcompress.surgery.trace`.

    Returns
    -------
    list of ChannelGroup
        One per set of channels that must be removed together: the model's input channels, each producer's output
        channels (merged at residual additions), including groups that cannot be pruned (``reason`` says why).

    Raises
    ------
    TypeError
        ``graph`` is not a :class:`~tensorcompress.surgery.Graph`.

    Examples
    --------
    >>> import torch, tensorcompress as tc
    >>> model = tc.models.ResNet8().eval()
    >>> groups = tc.surgery.channel_groups(tc.surgery.trace(model, torch.zeros(1, 1, 28, 28)))
    >>> groups[1].producers
    ['stem.0', 'blocks.0.conv2']
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a tensorcompress.surgery.Graph (from trace), got {type(graph).__name__}")
    sp = _Spaces()
    calls: dict[int, int] = {}
    for node in graph.nodes:
        if isinstance(node.target, (*_LAYERS, *_NORMS)):
            calls[id(node.target)] = calls.get(id(node.target), 0) + 1
    view: dict[int, tuple[int, int]] = {}  # node -> (its output's channel space, features per channel)
    first = graph.nodes[0]
    view[0] = (sp.new(first.out_shape[1] if len(first.out_shape) > 1 else 1, "its channels are the model's input"), 1)
    for i, node in enumerate(graph.nodes[1:], 1):
        view[i] = _visit(sp, node, [view[k] for k in node.inputs], calls)
    for i in graph.outputs:
        sp.why(view[i][0], "its channels are an output of the model")
    groups = sp.merged()
    for g in groups:
        if g.reason is None and not g.producers:
            g.reason = "no layer produces these channels"
    return groups


def _visit(sp: _Spaces, node: Node, ins: list[tuple[int, int]], calls: dict[int, int]) -> tuple[int, int]:
    """Add ``node`` to the spaces of its inputs ``ins``; the (space, block) of its output."""
    t = node.target
    channels = node.out_shape[1] if len(node.out_shape) > 1 else 1
    problem = None
    if isinstance(t, nn.Module) and type(t) in (*_LAYERS, *_NORMS) and calls[id(t)] > 1:
        problem = f"a module used twice in the forward pass ({node.label}): one weight on two channel spaces"
    elif type(t) in _LAYERS:
        problem = _layer_problem(node)
        block = ins[0][1] if ins else 1
        if problem is None and not isinstance(t, nn.Linear) and block != 1:
            problem = f"a flatten into a convolution ({node.label})"
        if problem is None and sp.groups[ins[0][0]].channels * block != node.in_shape[1]:
            problem = f"the channels into {node.label} (input shape {node.in_shape})"
        if problem is None and is_depthwise(t):
            sp.member(ins[0][0], "depthwise", node)
            return ins[0]
        if problem is None:
            for s, b in ins:
                sp.member(s, "consumers", node, b)
            out = sp.new(channels)
            sp.member(out, "producers", node)
            return out, 1
    elif type(t) in _NORMS:
        if ins[0][1] != 1:
            problem = f"a BatchNorm after a flatten ({node.label})"
        else:
            sp.member(ins[0][0], "norms", node)
            return ins[0]
    elif _is_add(node):
        problem = _add_problem(node) or (None if len({b for _, b in ins}) == 1 else
                                         f"the addition {node.label} adds tensors of different layouts")
        if problem is None:
            s = ins[0][0]
            for other, _ in ins[1:]:
                s = sp.union(s, other)
            sp.member(ins[0][0], "adds", node)
            return s, ins[0][1]
    elif type(t) in _ZERO_MODULES or (not isinstance(t, nn.Module) and node.name in _ZERO_FUNCTIONS):
        problem = _pass_through_problem(node) if len(ins) == 1 else _unknown(node)
        if problem is None:
            sp.member(ins[0][0], "passes", node)
            s, b = ins[0]
            return s, (b * math.prod(node.in_shape[2:]) if _flattens(node) else b)
    else:
        problem = _unknown(node)
    for s, _ in ins:
        sp.why(s, None, problem)
    out = sp.new(channels, None, problem)
    if type(t) in _LAYERS:  # its outputs, in a group that says why they are not followed
        sp.member(out, "producers", node)
    return out, 1

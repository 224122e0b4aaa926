r"""The one traced view of a model: the data flow of one forward pass on an example input.

Which layer feeds which is not in a module's attributes — registration order says nothing about the order of the
calls in ``forward``, nor about a residual addition or a tensor used twice. Graph capture answers it by running
the model once: every call of a *leaf* module (its insides skipped) and every torch function called outside a leaf
(``x + y``, ``torch.flatten``, ``x.mean((2, 3))``) becomes a :class:`Node`, linked to the nodes that produced its
tensor inputs. The recording uses a :class:`torch.overrides.TorchFunctionMode` and forward hooks, so it follows
arbitrary Python control flow for that input (like ``torch.fx``'s tracing follows the code, but without its
restrictions on data-dependent ``forward``), and an in-place operation (``nn.ReLU(inplace=True)``, ``x.relu_()``)
is a node of its own: the tensor it modified is attributed to it from then on.

Transforms read it to decide what they may do: conv–BatchNorm folding (:mod:`.fusion`) folds a pair only where the
BatchNorm reads exactly the layer's output and nothing else does; ``tc.pruning.prune(structure="filters")`` masks
the BatchNorm that follows a convolution *in the forward*; :func:`.groups.channel_groups` reads which channels
must be removed together (``tc.pruning.prune`` and ``tc.pruning.shrink`` act on those groups); integer-only
conversion refuses every node it cannot prove it handles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .model import kept_modes

__all__ = ["Node", "Graph", "trace", "tensors_in"]


@dataclass
class Node:
    """One operation of the traced forward pass.

    ``target`` is ``"input"`` (node 0, the example input), a leaf ``nn.Module`` or a torch function; ``inputs`` the
    indices of the nodes whose tensors it read (sorted, each once), ``consumers`` those that read its output;
    ``module_name`` the module's first name in the model (``None`` for a function); ``args`` what it was called with
    (``(args, kwargs)`` for a function); the shapes those of its first traced input and first output.
    """

    target: object
    inputs: list[int]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    consumers: list[int] = field(default_factory=list)
    args: tuple = ()
    module_name: str | None = None

    @property
    def name(self) -> str:
        """The module's class name or the function's name (``"Conv2d"``, ``"relu"``, ``"add"``)."""
        t = self.target
        if isinstance(t, str):
            return t
        return type(t).__name__ if isinstance(t, nn.Module) else getattr(t, "__name__", repr(t))

    @property
    def label(self) -> str:
        """``module_name (Class)`` for a module, the function's name otherwise: how errors name a node."""
        return f"{self.module_name} ({self.name})" if self.module_name is not None else self.name


@dataclass
class Graph:
    """The traced data flow: ``nodes`` in call order, ``outputs`` the nodes that produced the model's output
    tensors (a tuple or dict output gives several), ``output`` what the model returned."""

    nodes: list[Node]
    outputs: list[int]
    output: object

    def calls(self, module: nn.Module) -> list[int]:
        """Indices of the nodes that call ``module`` (a module used twice in ``forward`` has two)."""
        return [i for i, n in enumerate(self.nodes) if n.target is module]

    def modules(self) -> list[Node]:
        """The module nodes, in call order."""
        return [n for n in self.nodes if isinstance(n.target, nn.Module)]


def _tensors(*objs: object) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for o in objs:
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (list, tuple)):
            out += _tensors(*o)
        elif isinstance(o, dict):
            out += _tensors(*o.values())
    return out


def tensors_in(obj: object) -> list[torch.Tensor]:
    """The tensors in ``obj`` — a tensor, or tuples, lists and dicts of them, nested — in order: the tensors of a
    model's output, whatever it returns."""
    return _tensors(obj)


class _Recorder(TorchFunctionMode):
    """Records leaf-module calls (through hooks) and torch functions called outside leaves (through the mode)."""

    def __init__(self, x: torch.Tensor, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.nodes: list[Node] = [Node("input", [], tuple(x.shape), tuple(x.shape))]
        self.producer = {id(x): 0}
        self.alive = [x]  # keeps recorded tensors alive so that their ids are not reused
        self.depth = 0

    def record(self, target: object, inputs: object, output: object) -> None:
        read = [t for t in _tensors(inputs) if id(t) in self.producer]
        outs = _tensors(output)
        if not read or not outs:  # a constant, or a query such as x.shape
            return
        srcs = sorted({self.producer[id(t)] for t in read})
        name = self.names.get(id(target)) if isinstance(target, nn.Module) else None
        node = Node(target, srcs, tuple(read[0].shape), tuple(outs[0].shape), args=inputs, module_name=name)
        self.nodes.append(node)
        for s in srcs:
            self.nodes[s].consumers.append(len(self.nodes) - 1)
        for t in outs:
            self.producer[id(t)] = len(self.nodes) - 1
            self.alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.record(func, (args, kwargs), out)
        return out


def trace(model: nn.Module, example_input: torch.Tensor) -> Graph:
    """The :class:`Graph` of one forward pass of ``model`` on ``example_input``, in eval mode and without
    gradients; every submodule's train/eval mode is given back afterwards and the model is not changed.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or ``example_input`` not a tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    names: dict[int, str] = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name)
    rec = _Recorder(example_input, names)

    def pre(_m, _inp):
        rec.depth += 1

    def post(m, inp, out):
        rec.depth -= 1
        if rec.depth == 0:
            rec.record(m, inp, out)

    handles = []
    for m in model.modules():
        if m is not model and not any(True for _ in m.children()):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with kept_modes(model, False), torch.no_grad(), rec:
            out = model(example_input)
    finally:
        for h in handles:
            h.remove()
    outputs = [rec.producer[id(t)] for t in _tensors(out) if id(t) in rec.producer]
    return Graph(rec.nodes, outputs, out)

"""Capture the outputs of named layers with forward hooks, without touching the model's code.

``model.named_modules()`` gives the names (``"features.3"``, ``"fc1"``); a forward hook stores each layer's output
on every forward pass, with its autograd graph (a student's hint term back-propagates through it) unless the
forward runs under ``torch.no_grad()`` (a teacher's). The hooks are removed on leaving the ``with`` block, so the
model is as it was.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["FeatureHooks"]


def _check_names(model: nn.Module, names: object, arg: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, Iterable):
        raise TypeError(f"{arg} must be a layer name or a sequence of layer names, got {type(names).__name__}")
    names = tuple(names)
    layers = dict(model.named_modules())
    every = list(model.named_modules(remove_duplicate=False))  # a module used in several places, by each name
    aliases = {n: [k for k, other in every if other is m] for n, m in every}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{arg} must hold layer names (str), got {name!r}")
        if len(aliases.get(name, ())) > 1:
            raise ValueError(f"{arg}: {type(model).__name__} uses one module as the layers "
                             f"{', '.join(map(repr, aliases[name]))}; a hook on {name!r} would record the output of "
                             "whichever runs last: give each place its own module")
        if name not in layers:
            close = difflib.get_close_matches(name, [k for k in layers if k], n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            listed = [k for k in layers if k]
            more = f", ... ({len(listed)} in all)" if len(listed) > 20 else ""
            raise ValueError(f"{arg}: {type(model).__name__} has no layer named {name!r}.{hint} Layers: "
                             f"{', '.join(map(repr, listed[:20]))}{more}")
    return names


class FeatureHooks:
    """Forward hooks that record the outputs of the layers ``names`` of ``model``.

    Use as a context manager (``with FeatureHooks(model, ["conv2"]) as h: model(x); h["conv2"]``) or call
    :meth:`attach` and :meth:`remove`. ``h[name]`` is the layer's output in the latest forward pass.

    Parameters
    ----------
    model : nn.Module
    names : str or sequence of str
        Names from ``model.named_modules()`` (``""`` is the model itself). A name that is not there raises a
        ``ValueError`` listing the layers and the closest names; so does a module the model uses in several places
        (its hook would keep the output of the last call, whichever name was asked for).
    """

    def __init__(self, model: nn.Module, names: str | Iterable[str], *, arg: str = "names") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.names = _check_names(model, names, arg)
        self.features: dict[str, object] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> FeatureHooks:
        """Register the hooks (once; attaching twice changes nothing)."""
        if self._handles:
            return self
        layers = dict(self.model.named_modules())
        for name in self.names:
            self._handles.append(layers[name].register_forward_hook(self._recorder(name)))
        return self

    def _recorder(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            self.features[name] = output
        return hook

    def remove(self) -> None:
        """Remove the hooks and forget the stored outputs (the model is as before :meth:`attach`)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(f"{name!r} is not one of the hooked layers {list(self.names)}")
        if name not in self.features:
            raise KeyError(f"layer {name!r} has not run a forward pass since the hooks were attached"
                           + ("" if self.attached else " (they are not attached)"))
        out = self.features[name]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {name!r} returned {type(out).__name__}, not a tensor; hook the submodule that "
                            "computes the tensor")
        return out

    def __enter__(self) -> FeatureHooks:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"FeatureHooks({type(self.model).__name__}, {list(self.names)}, {state})"

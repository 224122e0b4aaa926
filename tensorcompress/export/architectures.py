"""The architectures a compressed file may name: an explicit registry of names, never a module path.

A file records its model's architecture as a registered *name* and the constructor arguments that rebuild it
(``{"name": "LeNet300100", "kwargs": {"in_features": 784, "num_classes": 10}}``). Loading looks the name up in
this registry; a name that is not registered is an error, so a file cannot make the loader import or call anything
else. The arguments are checked before the constructor runs: only the constructor's own named parameters, each a
bool, an int in ``[0, 65536]`` or a list of at most 8 such ints (passed as a tuple), and below the architecture's
own ``limits`` where one is registered: the meta-device model that the loader builds before reading any tensor
costs memory for its shapes only, but time and Python objects for every submodule, so an argument that repeats a
block (``TinyGPT``'s ``n_layers``: thousands of blocks take many seconds to build) has a bound of its own. The library's
networks (:class:`~tensorcompress.models.LeNet300100`, :class:`~tensorcompress.models.LeNet5`,
:class:`~tensorcompress.models.SmallCNN`, :class:`~tensorcompress.models.ResNet8`,
:class:`~tensorcompress.models.MobileNetV2Tiny`, :class:`~tensorcompress.models.TinyGPT`) are registered;
:func:`register_architecture` adds others.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..models import LeNet5, LeNet300100, MobileNetV2Tiny, ResNet8, SmallCNN, TinyGPT

__all__ = ["register_architecture", "registered_architectures"]

MAX_ARGUMENT = 2**16
MAX_TUPLE = 8

Arguments = Callable[[nn.Module], Mapping[str, object]]
_REGISTRY: dict[str, tuple[type[nn.Module], Arguments | None]] = {}
_LIMITS: dict[str, dict[str, int]] = {}


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's parameters that a keyword can set."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def register_architecture(name: str, cls: type[nn.Module], *, arguments: Arguments | None = None,
                          limits: Mapping[str, int] | None = None) -> None:
    """Let compressed files name ``cls`` as ``name``.

    Parameters
    ----------
    name : str
        The name written in the file (not empty).
    cls : subclass of nn.Module
        Built as ``cls(**kwargs)`` when a file naming ``name`` is loaded without ``model=``.
    arguments : callable, optional
        ``arguments(model) -> dict`` of constructor arguments that rebuild ``model``; by default each constructor
        parameter that ``model`` keeps as an attribute of the same name (bool, int or tuple of ints).
    limits : mapping of str to int, optional
        The largest value a file may give each named constructor argument (for an argument that sets how many
        submodules are built, whose cost the general bound of 65536 does not contain).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"cls must be a subclass of torch.nn.Module, got {cls!r}")
    if arguments is not None and not callable(arguments):
        raise TypeError(f"arguments must be callable or None, got {type(arguments).__name__}")
    limits = dict(limits or {})
    known = _parameters(cls)
    for key, bound in limits.items():
        if key not in known or not isinstance(bound, int) or isinstance(bound, bool) or not 0 <= bound <= MAX_ARGUMENT:
            raise ValueError(f"limits[{key!r}] = {bound!r}: must bound a constructor argument of {cls.__qualname__} "
                             f"by an int in [0, {MAX_ARGUMENT}]")
    if name in _REGISTRY and _REGISTRY[name][0] is not cls:
        raise ValueError(f"architecture name {name!r} is already registered for {_REGISTRY[name][0].__qualname__}")
    _REGISTRY[name] = (cls, arguments)
    _LIMITS[name] = limits


def registered_architectures() -> dict[str, type[nn.Module]]:
    """The registered names and their classes."""
    return {name: cls for name, (cls, _) in _REGISTRY.items()}


def _check_value(name: str, key: str, value: object) -> object:
    def ok(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ARGUMENT

    if isinstance(value, bool) or ok(value):
        return value
    if isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_TUPLE and all(ok(v) for v in value):
        return tuple(value)
    raise ValueError(f"architecture {name!r}: argument {key!r} = {value!r} is not allowed (a bool, an int in "
                     f"[0, {MAX_ARGUMENT}] or a list of at most {MAX_TUPLE} such ints)")


def _check_kwargs(name: str, cls: type, kwargs: object) -> dict[str, object]:
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"architecture {name!r}: the arguments must be a mapping, got {type(kwargs).__name__}")
    known = _parameters(cls)
    unknown = sorted(str(k) for k in kwargs if k not in known)
    if unknown:
        raise ValueError(f"architecture {name!r}: unknown constructor arguments {unknown}; {cls.__qualname__} takes "
                         f"{sorted(known)}")
    checked = {k: _check_value(name, k, v) for k, v in kwargs.items()}
    for key, bound in _LIMITS.get(name, {}).items():
        value = checked.get(key)
        if isinstance(value, int) and value > bound:
            raise ValueError(f"architecture {name!r}: argument {key!r} = {value} is above its limit {bound}")
    return checked


def describe(model: nn.Module) -> dict | None:
    """``{"name", "kwargs"}`` for a model whose class is registered (exactly, not a subclass), else ``None``."""
    for name, (cls, arguments) in _REGISTRY.items():
        if type(model) is not cls:
            continue
        if arguments is not None:
            try:
                kwargs = dict(arguments(model))
            except (AttributeError, TypeError, IndexError):  # a layer replaced by one without these attributes
                return None
        else:
            kwargs = {k: getattr(model, k) for k in _parameters(cls) if hasattr(model, k)}
            kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()
                      if isinstance(v, (bool, int, tuple))}
        try:
            _check_kwargs(name, cls, kwargs)
        except ValueError:
            return None  # not rebuildable from the file alone: loading then needs model=
        return {"name": name, "kwargs": kwargs}
    return None


def build(spec: object, *, device: str | torch.device = "cpu") -> nn.Module:
    """The model a file's architecture record names, on ``device`` (``"meta"``: shapes only, nothing allocated).
    Raises ``ValueError`` for an unregistered name or arguments out of bounds, before any constructor runs."""
    if spec is None:
        raise ValueError("the file names no registered architecture: pass model= (a fresh instance of the "
                         "architecture) to load_compressed")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"corrupt header: the architecture record must be {{'name': str, 'kwargs': dict}}, got "
                         f"{spec!r:.200}")
    name = spec["name"]
    if name not in _REGISTRY:
        raise ValueError(f"the file's architecture {name!r:.100} is not registered (registered: "
                         f"{sorted(_REGISTRY)}); register it with tc.export.register_architecture or pass model=")
    cls = _REGISTRY[name][0]
    kwargs = _check_kwargs(name, cls, spec.get("kwargs", {}))
    try:
        with torch.device(device):
            return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"corrupt header: architecture {name}({kwargs}) cannot be built: {err}") from err


register_architecture("LeNet300100", LeNet300100,
                      arguments=lambda m: {"in_features": m.in_features, "num_classes": m.fc3.out_features})
register_architecture("LeNet5", LeNet5, arguments=lambda m: {"in_channels": m.in_channels, "input_size": m.input_size,
                                                             "num_classes": m.fc2.out_features})
register_architecture("SmallCNN", SmallCNN, arguments=lambda m: {
    "in_channels": m.in_channels, "input_size": m.input_size, "num_classes": m.classifier.out_features,
    "channels": [m.features[0][0].out_channels, m.features[1][0].out_channels]})
# these keep their constructor's arguments as attributes of the same names: the default rule rebuilds them
register_architecture("ResNet8", ResNet8)
register_architecture("MobileNetV2Tiny", MobileNetV2Tiny)
register_architecture("TinyGPT", TinyGPT, limits={"n_layers": 64})

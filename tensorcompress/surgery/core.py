r"""Model surgery shared by every whole-model transform: select layers, replace them, report what changed.

Every transform of a whole model in this library (``factorize``, ``tc.pruning.prune``,
``tc.quantization.quantize_model``, ``tc.surgery.fuse_conv_bn``, ...) has one shape::

    new_model, report = transform(model, data=None, *, include=None, exclude=None, **options)

with the input model untouched. This module is the one place that does the three things such a transform needs:

* :func:`select` — the layers of the wanted types whose names match ``include`` (exact names, ``fnmatch``
  patterns or :class:`Selected` objects; default all) and none of ``exclude``. A name is matched exactly before
  it is read as a pattern, so a ``ModuleDict`` key such as ``"fc[0]"`` names its module (as a pattern it would
  not). A module reached under several names (the same ``nn.Module`` object registered twice, a
  shared block) is selected **once**, with all its names, so that a transform replaces it once and every name then
  points at the one replacement (the tie is kept). An ``include`` pattern that matches no candidate is an error: a
  typo must not give a silent no-op.
* :func:`replace` — put a new module at every name of an old one, carrying the old one's train/eval mode and its
  ``requires_grad`` flags: a new parameter takes the flag of the old one of the same name, else of the same last
  name component (``second.bias`` for ``bias``), else of the old ``weight`` (the factors of a factorised weight).
* :func:`tied_parameters` — parameters of a module also registered in another module (a tied embedding and output
  layer); :func:`transform` refuses to replace such a module, since the replacement would untie them.
* :class:`LayerChange` — one report row of one type (subclass it to add typed details with :class:`Detail`, as
  ``tc.pruning.PrunedLayer`` adds ``sparsity``), which every report and the leaderboard can read. Its sizes are
  real: ``bytes_before`` / ``bytes_after`` are what ``torch.save`` writes for the layer's state
  (:func:`state_bytes`), and ``compression`` is their ratio — so a layer that gained a pruning mask honestly reports
  less than 1. ``print(row)`` gives one line, e.g.
  ``conv2: Conv2d -> CPConv2d, 25050 -> 2530 parameters, 102,053 -> 12,761 bytes (8.00x), rank 31``.

:func:`transform` ties them together: copy, select, refuse tied weights, build each replacement with a callback,
replace, report. A selection that is empty — an ``include`` that matches nothing, an ``exclude`` that removes every
candidate, or a model without a layer of the wanted types — is a ``ValueError`` in one wording (:func:`select` with
``action``), never a silent no-op.
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .model import copy_model

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers that hold a weight matrix or kernel: what pruning, weight sharing and quantization act on."""

__all__ = ["LAYERS", "Patterns", "Selected", "Footprint", "LayerChange", "Detail", "footprint", "state_bytes", "select",
           "replace", "transform", "tied_parameters", "per_layer"]


@dataclass(frozen=True)
class Selected:
    """A module chosen by :func:`select`: its ``names`` (first is the canonical one) and the ``module`` itself."""

    names: tuple[str, ...]
    module: nn.Module

    @property
    def name(self) -> str:
        """The first name under which the module is registered (``named_modules`` order)."""
        return self.names[0]


def state_bytes(state: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """Bytes that ``torch.save(module.state_dict())`` writes (into a buffer) for a module, or ``torch.save(state)``
    for a state dict: parameters *and* buffers (BatchNorm statistics, pruning masks, codebooks, packed indices) at
    their stored dtype, plus the container."""
    buf = io.BytesIO()
    torch.save(state.state_dict() if isinstance(state, nn.Module) else dict(state), buf)
    return buf.getbuffer().nbytes


@dataclass(frozen=True)
class Footprint:
    """What a layer is and costs: the class a user sees (``Linear`` for a parametrized ``Linear``), its parameter
    count (weights and bias; a method may count only the weights it keeps) and its :func:`state_bytes`."""

    type: str
    params: int
    bytes: int


def footprint(module: nn.Module, *merged: nn.Module, params: int | None = None) -> Footprint:
    """The :class:`Footprint` of ``module`` now.

    Parameters
    ----------
    module : nn.Module
        The layer; its class (before any parametrization) names the footprint.
    *merged : nn.Module
        Modules the transform folds into it (a BatchNorm folded into its convolution): their parameters and bytes
        are added.
    params : int, optional
        The parameter count to report instead of the count of every entry (the weights a mask keeps).
    """
    parts = (module, *merged)
    n = sum(p.numel() for m in parts for p in m.parameters()) if params is None else params
    size = state_bytes(module if not merged else nn.ModuleList(parts))
    return Footprint(parametrize.type_before_parametrizations(module).__name__, n, size)


@dataclass(frozen=True)
class LayerChange:
    """One row of a whole-model transform's report.

    ``name`` is the layer's (first) name, ``aliases`` any further names of the same module, ``type_before`` and
    ``type_after`` the classes a user sees, ``params_before`` / ``params_after`` the parameter counts (weights and
    bias) of the old and new module, ``bytes_before`` / ``bytes_after`` what ``torch.save`` writes for each one's
    state (:func:`state_bytes`), and ``detail`` whatever the method wants to say (rank, bits, sparsity, ...). Build
    rows with :meth:`between`.
    """

    name: str
    type_before: str
    type_after: str
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    detail: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @classmethod
    def between(cls, name: str, before: Footprint, after: Footprint, detail: Mapping[str, Any] | None = None,
                aliases: Sequence[str] = ()) -> LayerChange:
        """The row of layer ``name`` from its :class:`Footprint` before and after the transform."""
        return cls(name, before.type, after.type, before.params, after.params, before.bytes, after.bytes,
                   dict(detail or {}), tuple(aliases))

    @property
    def compression(self) -> float:
        """``bytes_before / bytes_after``: how many times smaller the layer's stored state became (below 1 when it
        grew, as a masked layer does; ``inf`` when nothing is left)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else float("inf")

    @property
    def param_ratio(self) -> float:
        """``params_before / params_after`` (``inf`` when no parameter is left)."""
        return self.params_before / self.params_after if self.params_after else float("inf")

    def __str__(self) -> str:
        """One line, e.g. ``conv2: Conv2d -> CPConv2d, 25050 -> 2530 parameters, 102,053 -> 12,761 bytes (8.00x),
        rank 31``."""
        name = " = ".join((self.name, *self.aliases))
        parts = [f"{name}: {self.type_before} -> {self.type_after}",
                 f"{self.params_before} -> {self.params_after} parameters",
                 f"{self.bytes_before:,} -> {self.bytes_after:,} bytes ({self.compression:.2f}x)"]
        parts += [f"{k} {v}" for k, v in self.detail.items()]
        return ", ".join(parts)


Patterns = Sequence["str | Selected"] | str | Selected | None


class Detail:
    """A typed attribute of a report row read from its ``detail``: declare ``sparsity = Detail(float, "...")`` on
    a :class:`LayerChange` subclass, and ``row.sparsity`` is ``float(row.detail["sparsity"])`` (``None`` where an
    ``optional`` entry is absent).

    Parameters
    ----------
    kind : callable
        What the value is converted with (``int``, ``float``, ``str``, a parser); a stored ``None`` stays ``None``.
    doc : str
        The attribute's docstring.
    optional : bool
        ``True``: a row without the entry gives ``None``; ``False``: an ``AttributeError`` naming it.
    key : str, optional
        The entry's key in ``detail`` (default: the attribute's name).
    """

    def __init__(self, kind: Callable[[Any], Any], doc: str, *, optional: bool = False,
                 key: str | None = None) -> None:
        self.kind, self.optional, self.__doc__, self.key = kind, optional, doc, key

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = self.key or name

    def __get__(self, row: LayerChange | None, owner: type | None = None):
        if row is None:
            return self
        if self.key not in row.detail:
            if self.optional:
                return None
            raise AttributeError(f"this {type(row).__name__} row has no {self.key!r} in its detail")
        value = row.detail[self.key]
        return None if value is None else self.kind(value)


def _as_patterns(patterns: Patterns, name: str) -> list[str] | None:
    """``include``/``exclude`` as a list of names or patterns; a :class:`Selected` stands for all its names."""
    if patterns is None:
        return None
    if isinstance(patterns, (str, Selected)):
        patterns = [patterns]
    if isinstance(patterns, Sequence) and all(isinstance(p, (str, Selected)) for p in patterns):
        return [n for p in patterns for n in ((p,) if isinstance(p, str) else p.names)]
    raise TypeError(f"{name} must be a module name, an fnmatch pattern, a Selected or a sequence of them, "
                    f"got {patterns!r}")


def _match(name: str, pattern: str) -> bool:
    """An exact name first (``"fc[0]"`` is a ``ModuleDict`` key, not a character class), then an fnmatch pattern."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _matches(name: str, patterns: list[str] | None) -> bool:
    return patterns is not None and any(_match(name, p) for p in patterns)


def _shown(names: list[str]) -> str:
    return f"{names}" if len(names) <= 20 else f"{names[:20]}[:20] of {len(names)}"


def select(model: nn.Module, types: type | tuple[type, ...], *, include: Patterns = None,
           exclude: Patterns = None, exact_type: bool = True, action: str | None = None) -> list[Selected]:
    """The submodules of ``model`` of the given ``types`` chosen by ``include`` / ``exclude``.

    Parameters
    ----------
    model : nn.Module
    types : type or tuple of types
        Module classes to consider (``nn.Linear``, ``(nn.Conv2d, nn.Linear)``, ...).
    include, exclude : str, Selected or sequence of them, optional
        Module names as ``model.named_modules()`` gives them, matched exactly, else read as ``fnmatch`` patterns
        (``"features.*"``); a :class:`Selected` (from an earlier call) stands for its names. A module is chosen
        when one of its names matches ``include`` (default: every candidate) and none matches ``exclude``.
    exact_type : bool
        ``True`` (default): ``type(m) in types``, so a subclass (say a factorised layer deriving from ``nn.Linear``)
        is not taken for the plain layer. ``False``: ``isinstance``.
    action : str, optional
        What the caller does with the selection (``"prune"``, ``"factorize"``): when given, an empty selection is
        a ``ValueError`` that says so in the words of every transform.

    Returns
    -------
    list of Selected
        In ``named_modules`` order, each module once with all its names (the root module is never selected).

    Raises
    ------
    ValueError
        If an ``include`` entry matches none of the candidate modules (the message lists them), or, with
        ``action``, if nothing is selected.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types = types if isinstance(types, tuple) else (types,)
    inc, exc = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        ok = type(module) in types if exact_type else isinstance(module, types)
        if name and ok:
            names.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    kinds = "/".join(t.__name__ for t in types)
    every = [n for ns in names.values() for n in ns]
    if inc is not None:
        unused = [p for p in inc if not any(_match(n, p) for n in every)]
        if unused:
            raise ValueError(f"include entries {unused} match no {kinds} module of the model; candidates are "
                             f"{_shown(every)}")
    chosen = [Selected(tuple(ns), modules[key]) for key, ns in names.items()
              if (inc is None or any(_matches(n, inc) for n in ns)) and not any(_matches(n, exc) for n in ns)]
    if action is not None and not chosen:
        why = (f"the model has no {kinds} module" if not every else
               f"include={include!r}, exclude={exclude!r} leave none of its {kinds} modules {_shown(every)}")
        raise ValueError(f"{action}: nothing to act on, {why}")
    return chosen


def tied_parameters(model: nn.Module, module: nn.Module) -> list[str]:
    """Names (in ``model``) of parameters of ``module`` that are also registered elsewhere in ``model`` — weights
    tied to another module, which a transform that rebuilds ``module`` would silently untie."""
    own = {id(p) for p in module.parameters()}
    inside = {id(m) for m in module.modules()}
    tied = []
    for mname, m in model.named_modules(remove_duplicate=False):
        if id(m) in inside:
            continue
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            if id(p) in own:
                tied.append(f"{mname}.{pname}" if mname else pname)
    return tied


def _counterpart(name: str, old: dict[str, bool]) -> str | None:
    """The parameter of the old module a new parameter ``name`` stands for: the same name, else the same last
    component (``second.bias`` -> ``bias``), else the old ``weight`` (a factor of a factorised weight, a quantized
    copy)."""
    for candidate in (name, name.rpartition(".")[2], "weight"):
        if candidate in old:
            return candidate
    return None


def replace(model: nn.Module, names: Iterable[str] | str, new: nn.Module, *, old: nn.Module | None = None) -> None:
    """Set ``new`` at every one of ``names`` in ``model`` (in place).

    Parameters
    ----------
    model : nn.Module
        The model to change (a transform's copy).
    names : str or iterable of str
        Every name under which the replaced module is registered (a tie is kept by setting all of them).
    new : nn.Module
        The replacement.
    old : nn.Module, optional
        The module replaced, whose mode and flags ``new`` takes.

    Where ``old`` is given, ``new`` (with all its submodules) takes its train/eval mode, and each parameter of
    ``new`` takes the ``requires_grad`` of its counterpart in ``old``: the parameter of the same name, else of the
    same last name component (``second.bias`` stands for ``bias``), else ``old.weight`` (the factors of a
    factorised weight are as frozen as the weight was). Parameters with no counterpart keep their flag.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("names must hold at least one module name")
    if old is not None:
        new.train(old.training)
        flags = {n: p.requires_grad for n, p in old.named_parameters()}
        for n, p in new.named_parameters():
            match = _counterpart(n, flags)
            if match is not None:
                p.requires_grad_(flags[match])
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)


def transform(model: nn.Module, types: type | tuple[type, ...],
              build: Callable[[Selected], tuple[nn.Module, dict[str, Any]]], *, include: Patterns = None,
              exclude: Patterns = None, allow_tied: bool = False, row_type: type[LayerChange] | None = None,
              action: str | None = "transform") -> tuple[nn.Module, list[LayerChange]]:
    """Copy ``model`` (:func:`~tensorcompress.surgery.copy_model`) and replace each selected module by
    ``build(selected)``.

    Parameters
    ----------
    model : nn.Module
        Not changed.
    types : type or tuple of types
        The module classes to replace (exact types, :func:`select`).
    build : callable
        ``build(selected) -> (new_module, detail)``.
    include, exclude : str, Selected or sequence of them, optional
        The selection, as :func:`select` reads it.
    allow_tied : bool
        Replace modules whose parameters are tied to another module (default: refuse).
    row_type : type, optional
        The report's row class.
    action : str or None
        The transform's name in the error an empty selection raises; ``None``: no error.

    ``build`` receives the :class:`Selected` of the *copy* and returns ``(new_module, detail)``; ``detail`` goes to
    the report row. A module reached under several names is built once and put at all of them (:func:`replace`,
    which also carries its mode and ``requires_grad`` flags). Unless ``allow_tied``, a selected module with a
    parameter tied to a module outside it is refused with a ``ValueError`` before anything is built (replacing it
    would untie the weights while the report claims a saving). ``row_type`` is the report's row class (a subclass of
    :class:`LayerChange`, e.g. ``FactorizedLayer``; default :class:`LayerChange`); ``action`` names the transform
    in the error raised when nothing is selected (``None``: an empty selection gives the copy and an empty
    report, for a transform's optional part).

    Returns
    -------
    (nn.Module, list of LayerChange)
    """
    row_type = LayerChange if row_type is None else row_type
    if not (isinstance(row_type, type) and issubclass(row_type, LayerChange)):
        raise TypeError(f"row_type must be LayerChange or a subclass of it, got {row_type!r}")
    new_model = copy_model(model)
    chosen = select(new_model, types, include=include, exclude=exclude, action=action)
    for sel in chosen if not allow_tied else ():
        tied = tied_parameters(new_model, sel.module)
        if tied:
            own = [f"{sel.name}.{n}" for n, p in sel.module.named_parameters()
                   if any(p is new_model.get_parameter(t) for t in tied)]
            raise ValueError(f"{own} of module {sel.name!r} are tied to {tied}; replacing the module would untie "
                             f"them. Untie the weights first or leave the module out with exclude=")
    report = []
    for sel in chosen:
        before = footprint(sel.module)
        new, detail = build(sel)
        if not isinstance(new, nn.Module):
            raise TypeError(f"build must return (nn.Module, dict) for {sel.name!r}, got {type(new).__name__}")
        replace(new_model, sel.names, new, old=sel.module)
        report.append(row_type.between(sel.name, before, footprint(new), detail, sel.names[1:]))
    return new_model, report


def per_layer(value: Any, names: Sequence[str], check: Callable[[Any, str], Any], what: str) -> dict[str, Any]:
    """One option per selected layer: ``value`` for all of ``names``, or a mapping that names each of them exactly.

    Parameters
    ----------
    value : object or mapping
        One value for every layer, or ``{name: value}`` naming every selected layer.
    names : sequence of str
        The selected layers.
    check : callable
        ``check(v, label)`` validates (and may convert) one value.
    what : str
        The option's name, for the messages.

    ``check(v, label)`` validates (and may convert) each value; ``label`` is ``what`` or ``what[name]``. A mapping
    with unknown or missing layer names raises ``ValueError`` listing both.
    """
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        missing = sorted(set(names) - set(value))
        if unknown or missing:
            raise ValueError(f"{what} as a mapping must name every selected layer exactly: unknown {unknown}, "
                             f"missing {missing} (selected: {list(names)})")
        return {n: check(value[n], f"{what}[{n!r}]") for n in names}
    v = check(value, what)
    return dict.fromkeys(names, v)

r"""Model surgery shared by every whole-model transform: select layers, replace them, report what changed.

Every transform of a whole model in this library (``factorize``, ``tc.pruning.prune``,
``tc.quantization.quantize_model``, ``tc.pipelines.fuse_conv_bn``, ...) has one shape::

    new_model, report = transform(model, *, include=None, exclude=None, **method_options)

with the input model untouched. This module is the one place that does the three things such a transform needs:

* :func:`select` — the layers of the wanted types whose names match ``include`` (``fnmatch`` patterns; default all)
  and none of ``exclude``. A module reached under several names (the same ``nn.Module`` object registered twice, a
  shared block) is selected **once**, with all its names, so that a transform replaces it once and every name then
  points at the one replacement (the tie is kept). An ``include`` pattern that matches no candidate is an error: a
  typo must not give a silent no-op.
* :func:`replace` — put a new module at every name of an old one, carrying the old one's train/eval mode and its
  ``requires_grad`` flags: a new parameter takes the flag of the old one of the same name, else of the same last
  name component (``second.bias`` for ``bias``), else of the old ``weight`` (the factors of a factorised weight).
* :func:`tied_parameters` — parameters of a module also registered in another module (a tied embedding and output
  layer); :func:`transform` refuses to replace such a module, since the replacement would untie them.
* :class:`LayerChange` — one report row of one type (subclass it to add properties, as
  :class:`tensorcompress.FactorizedLayer` adds ``rank``), which ``compression_report`` and the leaderboard can
  read; ``print(row)`` gives one line, e.g. ``conv2: Conv2d -> CPConv2d, 25050 -> 2530 parameters, rank 31``.

:func:`transform` ties them together: deep-copy, select, refuse tied weights, build each replacement with a callback,
replace, report.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Selected", "LayerChange", "select", "replace", "transform", "tied_parameters", "per_layer"]

Patterns = Sequence[str] | str | None


@dataclass(frozen=True)
class Selected:
    """A module chosen by :func:`select`: its ``names`` (first is the canonical one) and the ``module`` itself."""

    names: tuple[str, ...]
    module: nn.Module

    @property
    def name(self) -> str:
        """The first name under which the module is registered (``named_modules`` order)."""
        return self.names[0]


@dataclass(frozen=True)
class LayerChange:
    """One row of a whole-model transform's report.

    ``name`` is the layer's (first) name, ``aliases`` any further names of the same module, ``type_before`` and
    ``type_after`` the class names, ``params_before`` / ``params_after`` the parameter counts (weights and bias) of
    the old and new module, and ``detail`` whatever the method wants to say (rank, bits, sparsity, ...).
    """

    name: str
    type_before: str
    type_after: str
    params_before: int
    params_after: int
    detail: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def compression(self) -> float:
        """``params_before / params_after`` (``inf`` when nothing is left)."""
        return self.params_before / self.params_after if self.params_after else float("inf")

    def __str__(self) -> str:
        """One line, e.g. ``conv2: Conv2d -> CPConv2d, 25050 -> 2530 parameters, rank 31``."""
        name = " = ".join((self.name, *self.aliases))
        parts = [f"{name}: {self.type_before} -> {self.type_after}",
                 f"{self.params_before} -> {self.params_after} parameters"]
        parts += [f"{k} {v}" for k, v in self.detail.items()]
        return ", ".join(parts)


def _as_patterns(patterns: Patterns, name: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must be a str or a sequence of str (fnmatch patterns), got {patterns!r}")
    return list(patterns)


def _matches(name: str, patterns: list[str] | None) -> bool:
    return patterns is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select(model: nn.Module, types: type | tuple[type, ...], *, include: Patterns = None,
           exclude: Patterns = None, exact_type: bool = True) -> list[Selected]:
    """The submodules of ``model`` of the given ``types`` chosen by ``include`` / ``exclude``.

    Parameters
    ----------
    model : nn.Module
    types : type or tuple of types
        Module classes to consider (``nn.Linear``, ``(nn.Conv2d, nn.Linear)``, ...).
    include, exclude : str or sequence of str, optional
        ``fnmatch`` patterns on module names as ``model.named_modules()`` gives them (``"features.*"``). A module is
        chosen when one of its names matches ``include`` (default: every candidate) and none matches ``exclude``.
    exact_type : bool
        ``True`` (default): ``type(m) in types``, so a subclass (say a factorised layer deriving from ``nn.Linear``)
        is not taken for the plain layer. ``False``: ``isinstance``.

    Returns
    -------
    list of Selected
        In ``named_modules`` order, each module once with all its names (the root module is never selected).

    Raises
    ------
    ValueError
        If an ``include`` pattern matches none of the candidate modules (the message lists them).
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
    if inc is not None:
        every = [n for ns in names.values() for n in ns]
        unused = [p for p in inc if not any(fnmatch.fnmatchcase(n, p) for n in every)]
        if unused:
            kinds = "/".join(t.__name__ for t in types)
            shown = f"{every}" if len(every) <= 20 else f"{every[:20]}[:20] of {len(every)}"
            raise ValueError(f"include pattern(s) {unused} match no {kinds} module of the model; "
                             f"candidates are {shown}")
    chosen = []
    for key, ns in names.items():
        if (inc is None or any(_matches(n, inc) for n in ns)) and not any(_matches(n, exc) for n in ns):
            chosen.append(Selected(tuple(ns), modules[key]))
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


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def transform(model: nn.Module, types: type | tuple[type, ...],
              build: Callable[[Selected], tuple[nn.Module, dict[str, Any]]], *, include: Patterns = None,
              exclude: Patterns = None, allow_tied: bool = False,
              row_type: type[LayerChange] | None = None) -> tuple[nn.Module, list[LayerChange]]:
    """Deep-copy ``model`` and replace each selected module by ``build(selected)``.

    ``build`` receives the :class:`Selected` of the *copy* and returns ``(new_module, detail)``; ``detail`` goes to
    the report row. A module reached under several names is built once and put at all of them (:func:`replace`,
    which also carries its mode and ``requires_grad`` flags). Unless ``allow_tied``, a selected module with a
    parameter tied to a module outside it is refused with a ``ValueError`` before anything is built (replacing it
    would untie the weights while the report claims a saving). ``row_type`` is the report's row class (a subclass of
    :class:`LayerChange`, e.g. ``FactorizedLayer``; default :class:`LayerChange`).

    Returns
    -------
    (nn.Module, list of LayerChange)
    """
    row_type = LayerChange if row_type is None else row_type
    if not (isinstance(row_type, type) and issubclass(row_type, LayerChange)):
        raise TypeError(f"row_type must be LayerChange or a subclass of it, got {row_type!r}")
    new_model = copy.deepcopy(model)
    chosen = select(new_model, types, include=include, exclude=exclude)
    for sel in chosen if not allow_tied else ():
        tied = tied_parameters(new_model, sel.module)
        if tied:
            raise ValueError(f"module {sel.name!r} shares parameters with {tied}; replacing it would untie "
                             f"them. Untie the weights first or leave the module out with exclude=")
    report = []
    for sel in chosen:
        new, detail = build(sel)
        if not isinstance(new, nn.Module):
            raise TypeError(f"build must return (nn.Module, dict) for {sel.name!r}, got {type(new).__name__}")
        replace(new_model, sel.names, new, old=sel.module)
        report.append(row_type(sel.name, type(sel.module).__name__, type(new).__name__, _n_params(sel.module),
                               _n_params(new), dict(detail), sel.names[1:]))
    return new_model, report


def per_layer(value: Any, names: Sequence[str], check: Callable[[Any, str], Any], what: str) -> dict[str, Any]:
    """One option per selected layer: ``value`` for all of ``names``, or a mapping that names each of them exactly.

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

r"""Masks and whole-model pruning through ``torch.nn.utils.prune``.

A pruned layer keeps ``weight_orig`` (a parameter), ``weight_mask`` (a buffer) and a forward pre-hook that sets
``weight = weight_orig * weight_mask`` — PyTorch's own reparametrisation, so ``prune.remove``, ``state_dict``,
``prune.is_pruned`` and every tool that knows ``torch.nn.utils.prune`` keep working. A mask neither shrinks nor
speeds up a model: it *adds* a buffer the size of the weight (pytorch#36214); :func:`tensorcompress.pruning.shrink`
and the sparse formats give the real savings.

Masks (``k`` = number to remove, torch's rule ``round(amount * size)``, half to even, for a float amount):

* unstructured, per layer: zero the ``k`` lowest scores (``l1_unstructured`` with magnitude scores);
* unstructured, global: rank the scores of all selected layers together (``global_unstructured``);
* structured (``"filters"``: slices along dim 0, ``"channels"``: dim 1): rank slices by the L_n norm of their
  scores, keep the ``size - k`` largest (``ln_structured``). A pruned filter also masks the layer's bias entry,
  so the filter's output is exactly zero and :func:`shrink` can remove it;
* N:M (Mishra et al. 2021): in each group of ``m`` consecutive weights along the input dimension (input channels
  of a convolution) keep the ``n`` largest scores; sparsity ``1 - n/m``, the pattern sparse tensor cores run.

Which BatchNorm follows a layer is a fact of the forward pass, not of the registration order: a pruned filter masks
the affine entries of a BatchNorm only where the traced graph (:func:`tensorcompress.surgery.trace` on
``example_input``) shows that the BatchNorm reads the layer's output first, reads nothing else and is called once —
or, without an example input, where an ``nn.Sequential`` passes a convolution's output straight to it. A Linear's
outputs are the channels of a BatchNorm1d only on 2-D inputs, which only a trace can tell.

Coupled channels. Where the traced graph has a residual addition or a depthwise convolution, a filter is not a
layer's own: channel :math:`j` of a residual stream is made by every layer that feeds the addition, and a depthwise
convolution's filter :math:`j` reads channel :math:`j` only (:func:`tensorcompress.surgery.channel_groups`). There
``structure="filters"`` prunes by group: a group's channels are scored by the sum over its producers :math:`P` of
their per-filter L_n scores, :math:`s_j = \sum_{P} \|S^{P}_{j,:}\|_n` (Torch-Pruning's group importance, Fang et
al. 2023, with the criterion's scores :math:`S`), and the ``k`` lowest channels of each group go from every producer
(filter and bias), every depthwise convolution on it and every BatchNorm on it (:math:`\gamma_j = \beta_j = 0`),
so the channel is exactly zero wherever it flows and :func:`tensorcompress.pruning.shrink` removes it. A group is
pruned only when all its producers and depthwise convolutions are selected, and not when it reaches the model's
input or output or an operation the graph cannot follow; its selected layers then get a mask of ones and a report
row saying why (``skipped``). ``amount`` is per group (``scope="layer"`` only).

A weight tied between selected layers (one ``Parameter`` in two modules) is ranked once — counted once by a global
amount — and every module holding it gets the same mask, so the tie is kept (``weight_orig`` stays one tensor).
A tied tensor that would be masked in one place and not in another (the other module not selected, or not a
prunable type) is refused, naming both places.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.utils.prune as tprune
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import surgery
from .._validation import check_positive_int, check_tensor
from .criteria import _n_to_prune, magnitude, taylor

__all__ = ["nm_mask", "prune", "PRUNABLE", "PrunedLayer", "apply_mask", "sparsity"]

PRUNABLE = surgery.LAYERS
_CRITERIA = {"magnitude": lambda m: magnitude(m.weight),
             "taylor": lambda m: taylor(m.weight, _grad_of(m))}
_STRUCT_DIM = {"filters": 0, "channels": 1}


def _grad_of(module: nn.Module) -> torch.Tensor | None:
    p = getattr(module, "weight_orig", None)
    p = module.weight if p is None else p
    return p.grad


def nm_mask(weight: torch.Tensor, n: int, m: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask keeping exactly the ``n`` largest ``scores`` of every ``m`` consecutive weights along the input
    dimension (dim 1; the input channels of a convolution, as NVIDIA's ASP groups them).

    Parameters
    ----------
    weight : tensor with at least 2 dimensions
    n, m : int, ``1 <= n <= m``
        ``weight.shape[1]`` must be a multiple of ``m``.
    scores : tensor of the weight's shape, optional
        Default ``|weight|``.

    Raises
    ------
    ValueError
        When ``n > m`` or the number of inputs is not a multiple of ``m``.
    """
    w = check_tensor(weight, "weight", min_ndim=2)
    n, m = check_positive_int(n, "n"), check_positive_int(m, "m")
    if n > m:
        raise ValueError(f"n must be <= m for an n:m pattern, got n={n}, m={m}")
    if w.shape[1] % m:
        raise ValueError(f"the input dimension of weight (shape {tuple(w.shape)}) must be a multiple of m={m}")
    s = magnitude(w) if scores is None else scores.detach()
    if s.shape != w.shape:
        raise ValueError(f"scores must have the weight's shape {tuple(w.shape)}, got {tuple(s.shape)}")
    grouped = s.movedim(1, -1)
    flat = grouped.reshape(-1, m)
    mask = torch.zeros_like(flat, dtype=w.dtype)
    mask.scatter_(1, torch.topk(flat, n, dim=1).indices, 1)
    return mask.reshape(grouped.shape).movedim(-1, 1)


def _bottom_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Ones, with the ``k`` lowest scores zeroed — the very call ``l1_unstructured`` makes, so ties break alike."""
    mask = torch.ones_like(scores)
    if k:
        mask.view(-1)[torch.topk(scores.reshape(-1), k=k, largest=False).indices] = 0
    return mask


def _slice_mask(slice_scores: torch.Tensor, k: int, shape: torch.Size, dim: int) -> torch.Tensor:
    """Keep the ``len - k`` slices with the largest scores (``ln_structured``'s call), broadcast to ``shape``."""
    keep = torch.zeros_like(slice_scores)
    keep[torch.topk(slice_scores, k=slice_scores.numel() - k, largest=True).indices] = 1
    view = [1] * len(shape)
    view[dim] = -1
    return keep.reshape(view).expand(shape).clone()


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Set ``module.<name>``'s mask, in place: through ``prune.custom_from_mask`` the first time, by overwriting
    the ``<name>_mask`` buffer afterwards (so a schedule moves the one mask the model owns).

    Parameters
    ----------
    module : nn.Module
        Changed in place.
    mask : tensor of ``module.<name>``'s shape
        0 where the entry is pruned, 1 where it is kept.
    name : str
        The parameter masked (``"weight"``, ``"bias"``).
    """
    buf = getattr(module, f"{name}_mask", None)
    if buf is None:
        tprune.custom_from_mask(module, name, mask.to(getattr(module, name).device))
        buf = getattr(module, f"{name}_mask")
    buf.copy_(mask)
    with torch.no_grad():
        setattr(module, name, getattr(module, f"{name}_orig") * buf)


class PrunedLayer(surgery.LayerChange):
    """A report row of :func:`prune` (and of ``random_reinit``), its details typed."""

    sparsity = surgery.Detail(float, "Fraction of the weight's entries that the mask zeroes.")
    nonzero_before = surgery.Detail(int, "Non-zero weight entries before the call.", optional=True)
    batchnorm = surgery.Detail(str, "The BatchNorm masked with the layer's filters.", optional=True)
    group = surgery.Detail(str, "The layers whose filters were pruned with this one: one coupled channel group "
                           "(residual additions, depthwise convolutions).", optional=True)
    skipped = surgery.Detail(str, "Why the layer's channel group was left unpruned.", optional=True)


def sparsity(module: nn.Module, name: str = "weight") -> float:
    """Fraction of zero entries of ``module.<name>`` (after its mask)."""
    t = getattr(module, name)
    return float((t == 0).sum()) / t.numel()


def check_structure(structure: object) -> str | tuple[int, int] | None:
    if structure is None or structure in _STRUCT_DIM:
        return structure
    if isinstance(structure, tuple) and len(structure) == 2:
        n, m = (check_positive_int(v, f"structure[{i}]") for i, v in enumerate(structure))
        if n > m:
            raise ValueError(f"structure=(n, m) needs n <= m, got {structure}")
        return n, m
    raise ValueError(f"structure must be None, 'filters', 'channels' or an (n, m) tuple, got {structure!r}")


def _scores(module: nn.Module, criterion: str | Callable) -> torch.Tensor:
    s = criterion(module) if callable(criterion) else _CRITERIA[criterion](module)
    if not isinstance(s, torch.Tensor) or s.shape != module.weight.shape:
        raise ValueError(f"criterion must give scores of the weight's shape {tuple(module.weight.shape)}")
    if hasattr(module, "weight_mask"):  # already pruned weights stay pruned: rank them first
        s = torch.where(module.weight_mask.bool(), s, torch.full_like(s, -torch.inf))
    return s


def prune(model: nn.Module, example_input: torch.Tensor | None = None, *, amount: float | int | None,
          criterion: str | Callable = "magnitude", scope: str = "layer", structure: str | tuple[int, int] | None = None,
          norm: float = 1, types: tuple[type, ...] = PRUNABLE, include=None,
          exclude=None) -> tuple[nn.Module, list[PrunedLayer]]:
    """Mask the weights of the selected layers of a copy of ``model``; returns ``(pruned_model, report)``.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    example_input : tensor, optional
        One batch the model accepts. ``structure="filters"`` traces one forward pass on it
        (:func:`tensorcompress.surgery.trace`) to find the BatchNorm that reads each pruned layer's output and the
        coupled channel groups (residual additions, depthwise convolutions: each group pruned as one, module
        docstring); without it, only a convolution followed by its BatchNorm inside an ``nn.Sequential`` is paired,
        and a model with BatchNorm layers where that does not settle the question, or with an
        :class:`~tensorcompress.surgery.Add` or a depthwise convolution, is refused.
    amount : float in [0, 1] or int
        Fraction (or, as an int, count) of each layer's weights (or filters/channels) to be zero after the call —
        of all layers together for ``scope="global"``. Already pruned weights stay pruned. ``None`` (or
        ``1 - n/m``) for an N:M structure.
    criterion : ``"magnitude"``, ``"taylor"`` (needs ``.grad`` on the weight) or callable ``module -> scores``
        with the weight's shape.
    scope : ``"layer"`` or ``"global"``
    structure : None (unstructured), ``"filters"`` (output slices), ``"channels"`` (input slices) or ``(n, m)``.
    norm : float
        The L_n norm that ranks slices for a structured mask (1: the sum of the scores).
    types : module classes to prune (default Linear and Conv1d/2d/3d).
    include, exclude : names or fnmatch patterns of layers (see :func:`tensorcompress.surgery.select`).

    Returns
    -------
    (nn.Module, list of LayerChange)
        One row per layer; ``params_after`` counts the weights left non-zero (plus the bias), ``detail`` holds
        ``sparsity`` (the fraction of the weight the mask zeroes), ``nonzero_before`` and, for filters, the
        ``batchnorm`` masked with them; on a coupled graph, ``group`` (the layers pruned together) or ``skipped``
        (why the layer's group was left). The bytes grow (the mask is stored too): ``compression`` is below 1.

    Raises
    ------
    ValueError
        For an empty selection, a bad option, a weight tied to a module that would not get the same mask (both
        names given), ``structure="filters"`` on a model whose BatchNorm pairing or channel coupling needs
        ``example_input``, or ``scope="global"`` with filters on a coupled graph.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    new = surgery.copy_model(model)
    report = _prune(new, example_input, amount=amount, criterion=criterion, scope=scope, structure=structure,
                    norm=norm, types=types, include=include, exclude=exclude)
    return new, report


def _prune(model: nn.Module, example_input: torch.Tensor | None = None, *, amount: float | int | None,
           criterion: str | Callable = "magnitude", scope: str = "layer",
           structure: str | tuple[int, int] | None = None, norm: float = 1, types: tuple[type, ...] = PRUNABLE,
           include=None, exclude=None) -> list[surgery.LayerChange]:
    """:func:`prune` on ``model`` itself (the schedules move the masks of the model being trained). Every mask is
    computed and checked before the first one is set, so a refusal leaves ``model`` as it was."""
    if example_input is not None:
        check_tensor(example_input, "example_input")
    if not callable(criterion) and criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(_CRITERIA)} or a callable, got {criterion!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    structure = check_structure(structure)
    if isinstance(structure, tuple):
        check_nm_amount(amount, structure)
    elif amount is None:
        raise ValueError("amount must be given (a float in [0, 1] or an int count) unless structure is (n, m)")
    chosen = surgery.select(model, types, include=include, exclude=exclude, action="prune")
    coupled = _coupled_groups(model, example_input) if structure == "filters" else None
    if coupled is not None:
        if scope != "layer":
            raise ValueError(f"scope must be 'layer' for structure='filters' on a model with coupled channels "
                             f"(residual additions, depthwise convolutions): each channel group is pruned by "
                             f"amount on its own, got scope={scope!r}")
        return _prune_groups(model, coupled, chosen, amount, criterion, norm)
    groups = _tie_groups(chosen)
    masks = _masks([g[0].module for g in groups], amount, criterion, scope, structure, norm)
    norms = _batchnorms(model, chosen, example_input) if structure == "filters" else {}
    plan: list[tuple[nn.Module, str, torch.Tensor, str]] = []
    for group, group_mask in zip(groups, masks, strict=True):
        for sel in group:
            plan += _layer_plan(sel, group_mask, norms[id(sel.module)] if structure == "filters" else None)
    _check_ties(model, plan)
    before = {id(s.module): (surgery.footprint(s.module), int((s.module.weight != 0).sum())) for s in chosen}
    for module, pname, mask, _ in plan:
        apply_mask(module, mask, pname)
    report = []
    for sel in chosen:
        extra = {}
        if structure == "filters":
            extra["batchnorm"] = ", ".join(name for name, _ in norms[id(sel.module)]) or None
        report.append(pruned_row(sel, *before[id(sel.module)], extra))
    return report


def pruned_row(sel: surgery.Selected, footprint: surgery.Footprint, nonzero: int, extra: dict,
               row_type: type[PrunedLayer] = PrunedLayer) -> PrunedLayer:
    """The report row of a layer just masked: ``footprint`` and ``nonzero`` weights before, the weights the mask
    keeps (plus the bias) after, the achieved sparsity, and ``extra`` details."""
    mod = sel.module
    kept = int((mod.weight != 0).sum()) + (0 if mod.bias is None else int((mod.bias != 0).sum()))
    detail = {"sparsity": round(float((mod.weight_mask == 0).sum()) / mod.weight_mask.numel(), 4),
              "nonzero_before": nonzero} | extra
    return row_type.between(sel.name, footprint, surgery.footprint(mod, params=kept), detail, sel.names[1:])


def check_nm_amount(amount: object, structure: tuple[int, int]) -> None:
    """An ``(n, m)`` structure fixes the amount: ``amount`` must be ``None`` or ``1 - n/m``."""
    n, m = structure
    if amount is not None and not (isinstance(amount, float) and abs(amount - (1 - n / m)) < 1e-12):
        raise ValueError(f"amount must be None (or {1 - n / m}) for an {n}:{m} structure, got {amount!r}")


def stored(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter behind ``module.<name>``: ``<name>_orig`` once pruned."""
    return getattr(module, f"{name}_orig", None) if hasattr(module, f"{name}_mask") else getattr(module, name)


def _tie_groups(chosen: list[surgery.Selected]) -> list[list[surgery.Selected]]:
    """The selected layers grouped by the weight tensor they hold: a weight tied between two layers is ranked once
    (counted once by a global amount) and gets one mask, so the tie is kept."""
    groups: dict[int, list[surgery.Selected]] = {}
    for sel in chosen:
        groups.setdefault(id(stored(sel.module, "weight")), []).append(sel)
    return list(groups.values())


def _layer_plan(sel: surgery.Selected, mask: torch.Tensor, norms: list[tuple[str, nn.Module]] | None
                ) -> list[tuple[nn.Module, str, torch.Tensor, str]]:
    """(module, tensor name, mask, label) for one layer: its weight; for filters (``norms`` not None) also its bias
    and the affine of the BatchNorms in ``norms``, so that a pruned filter's channel is exactly zero after them."""
    mod = sel.module
    if hasattr(mod, "weight_mask"):
        mask = mask * mod.weight_mask
    plan = [(mod, "weight", mask, f"{sel.name}.weight")]
    if norms is None:
        return plan
    out = mask.reshape(mask.shape[0], -1).amax(1)
    if mod.bias is not None:
        plan.append((mod, "bias", out, f"{sel.name}.bias"))
    return plan + [(bn, p, out, f"{name}.{p}") for name, bn in norms for p in ("weight", "bias")]


def _coupled_groups(model: nn.Module, example_input: torch.Tensor | None) -> list[surgery.ChannelGroup] | None:
    """The channel groups of ``model`` when its graph couples channels (a residual addition or a depthwise
    convolution), else ``None`` (each layer's filters are its own). Coupling is read from the traced graph; a model
    holding an :class:`~tensorcompress.surgery.Add` or a depthwise convolution needs ``example_input``."""
    if example_input is None:
        coupling = [n for n, m in model.named_modules() if type(m) is surgery.Add or surgery.is_depthwise(m)]
        if coupling:
            raise ValueError(f"prune(structure='filters') needs example_input (one batch the model accepts) for a "
                             f"model with coupled channels: {coupling[:3]} couple the filters of several layers, "
                             f"which only the traced forward pass shows")
        return None
    groups = surgery.channel_groups(surgery.trace(model, example_input))
    return groups if any(g.adds or g.depthwise for g in groups) else None


def _group_keep(group: surgery.ChannelGroup, amount, criterion, norm: float) -> torch.Tensor:
    """1 for the channels of ``group`` that stay: the ``channels - k`` largest sums of the producers' per-filter
    L_n scores; channels whose filters are already masked in every producer stay pruned."""
    producers = [group.modules[n] for n in group.producers]
    slices = [torch.norm(_scores(m, criterion).clamp_min(0), p=norm, dim=list(range(1, m.weight.ndim)))
              for m in producers]
    total = torch.stack(slices).sum(0)
    keep = _slice_mask(total, _n_to_prune(amount, group.channels), total.shape, 0)
    for m in producers:
        if hasattr(m, "weight_mask"):
            keep = keep * (m.weight_mask.flatten(1) != 0).any(1).to(keep)
    return keep


def _prune_groups(model: nn.Module, groups: list[surgery.ChannelGroup], chosen: list[surgery.Selected], amount,
                  criterion, norm: float) -> list[PrunedLayer]:
    """Filters pruned by coupled channel group: every producer and depthwise convolution of a group loses the same
    channels, with their biases and the affine of every BatchNorm in the group; a group is pruned only when all
    those layers are selected, and every selected layer gets a row (``skipped`` saying why where it was not)."""
    by_id = {id(sel.module): sel for sel in chosen}
    plan: list[tuple[nn.Module, str, torch.Tensor, str]] = []
    extra: dict[int, dict] = {}
    for group in groups:
        members = [group.modules[n] for n in group.filters]
        left = [n for n in group.filters if id(group.modules[n]) not in by_id]
        if len(left) == len(members):
            continue
        why = group.reason or (f"{left} not selected (a channel group is pruned with all its producers and "
                               f"depthwise convolutions, or not at all)" if left else None)
        if why is not None:
            extra.update({id(m): {"skipped": why} for m in members})
            continue
        keep = _group_keep(group, amount, criterion, norm)
        for m in members:
            view = [-1] + [1] * (m.weight.ndim - 1)
            mask = keep.reshape(view).expand(m.weight.shape).to(m.weight.dtype).clone()
            plan += _layer_plan(by_id[id(m)], mask, [])
            extra[id(m)] = {"batchnorm": ", ".join(group.norms) or None, "group": ", ".join(group.filters)}
        plan += [(group.modules[n], p, keep.to(group.modules[n].weight.dtype), f"{n}.{p}")
                 for n in group.norms if group.modules[n].affine for p in ("weight", "bias")]
    planned = {id(m) for m, *_ in plan}
    for sel in chosen:
        if id(sel.module) not in planned:  # a mask of ones, so that every selected layer is a pruned one
            plan += _layer_plan(sel, torch.ones_like(sel.module.weight), None)
            extra.setdefault(id(sel.module), {"skipped": "not in any channel group of the traced graph"})
    _check_ties(model, plan)
    before = {id(s.module): (surgery.footprint(s.module), int((s.module.weight != 0).sum())) for s in chosen}
    for module, pname, mask, _ in plan:
        apply_mask(module, mask, pname)
    return [pruned_row(sel, *before[id(sel.module)], extra[id(sel.module)]) for sel in chosen]


def _check_ties(model: nn.Module, plan: list[tuple[nn.Module, str, torch.Tensor, str]]) -> None:
    """Refuse a plan that would untie a tensor: one shared tensor given two different masks, or masked in one of
    its modules and not in another — the question :func:`tensorcompress.surgery.tied_parameters` asks of one
    module, asked of every masked tensor at once (a tensor kept by ``weight_orig`` counts as its ``weight``)."""
    planned: dict[int, dict[tuple[int, str], tuple[str, torch.Tensor]]] = {}
    for module, pname, mask, label in plan:
        planned.setdefault(id(stored(module, pname)), {})[(id(module), pname)] = (label, mask)
    for entries in planned.values():
        (first, mask), *rest = entries.values()
        for label, other in rest:
            if not torch.equal(mask, other):
                raise ValueError(f"prune: {first} and {label} are one tied tensor but would get different masks "
                                 f"(untying them); untie the weights first or leave one out with exclude=")
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            base = pname.removesuffix("_orig") if hasattr(module, f"{pname.removesuffix('_orig')}_mask") else pname
            if id(p) in planned and (id(module), base) not in planned[id(p)]:
                label = next(iter(planned[id(p)].values()))[0]
                raise ValueError(f"prune: {label} is tied to {mname + '.' if mname else ''}{base}, which would not be "
                                 f"masked (untying them); select both layers or untie the weights first")


def _normalises(layer: nn.Module, out_shape: tuple[int, ...], bn: object) -> bool:
    """Whether ``bn`` normalising ``layer``'s output (of ``out_shape``) normalises its filters: an affine
    BatchNorm over dim 1 whose channels are the layer's outputs — a Linear's only when its output is 2-D (on
    ``(N, L, F)`` a Linear acts on the last dimension, a BatchNorm1d on dim 1)."""
    return (isinstance(bn, _BatchNorm) and bn.affine and len(out_shape) >= 2
            and out_shape[1] == layer.weight.shape[0] == bn.num_features
            and (len(out_shape) == 2 or not isinstance(layer, nn.Linear)))


def _batchnorms(model: nn.Module, chosen: list[surgery.Selected], example_input: torch.Tensor | None
                ) -> dict[int, list[tuple[str, nn.Module]]]:
    """For each chosen layer (by ``id``), the ``(name, BatchNorm)`` pairs that normalise its output in the
    forward pass: read from the traced graph when ``example_input`` is given, else proven from ``nn.Sequential``
    containers; refused where neither settles it and the model has BatchNorm layers."""
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return {id(sel.module): [] for sel in chosen}
    if example_input is not None:
        graph = surgery.trace(model, example_input)
        return {id(sel.module): _traced_batchnorms(graph, sel.module) for sel in chosen}
    found = {}
    for sel in chosen:
        pair = _sequential_batchnorm(model, sel.module)
        if pair is None:
            raise ValueError(f"prune(structure='filters') cannot tell which BatchNorm, if any, normalises the output "
                             f"of {sel.name!r} without following the forward pass: pass example_input (one batch "
                             f"the model accepts). Without it only a convolution followed by its BatchNorm inside "
                             f"an nn.Sequential is paired")
        found[id(sel.module)] = pair
    return found


def _traced_batchnorms(graph: surgery.Graph, layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorms that read a call's output first (nothing else reads or changes it before), read nothing
    else and are called once (a BatchNorm shared with another path must keep every channel)."""
    pairs = []
    for i in graph.calls(layer):
        node = graph.nodes[i]
        if not node.consumers:
            continue
        reader = graph.nodes[node.consumers[0]]
        if (_normalises(layer, node.out_shape, reader.target) and reader.inputs == [i]
                and len(graph.calls(reader.target)) == 1):
            pairs.append((reader.module_name, reader.target))
    return pairs


def _place(model: nn.Module, module: nn.Module) -> tuple[nn.Module, int] | None:
    """``(parent, index among its children)`` of a module registered exactly once in ``model``, else None."""
    places = [(parent, i) for parent in model.modules()
              for i, child in enumerate(parent._modules.values()) if child is module]
    return places[0] if len(places) == 1 else None


def _sequential_reader(model: nn.Module, module: nn.Module) -> nn.Module | None:
    """The leaf that reads ``module``'s output, where ``nn.Sequential`` containers prove it (``Sequential``
    passes each output straight to the next child; after the last child, to what follows the container); None
    where they do not."""
    place = _place(model, module)
    while place is not None and type(place[0]) is nn.Sequential:
        parent, i = place
        children = list(parent._modules.values())
        if i + 1 == len(children):
            place = _place(model, parent)
            continue
        reader = children[i + 1]
        while type(reader) is nn.Sequential and len(reader):
            reader = reader[0]
        leaf = reader is not None and not list(reader.children()) and type(reader) is not nn.Sequential
        return reader if leaf else None
    return None


def _sequential_batchnorm(model: nn.Module, layer: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``[(name, bn)]`` for a convolution followed by its BatchNorm in a Sequential, ``[]`` where a Sequential
    proves that no BatchNorm reads the layer's output, None where nothing is proven (a Linear's output
    dimensions are not known without a trace)."""
    reader = _sequential_reader(model, layer)
    if reader is None:
        return None
    if not isinstance(reader, _BatchNorm):
        return []
    if isinstance(layer, nn.Linear) or _place(model, reader) is None:
        return None
    channels = layer.weight.shape[0]
    if not _normalises(layer, (0, channels, 1), reader):
        return []
    return [(next(n for n, m in model.named_modules() if m is reader), reader)]


def _masks(modules: list[nn.Module], amount, criterion, scope, structure, norm) -> list[torch.Tensor]:
    scores = [_scores(m, criterion) for m in modules]
    if isinstance(structure, tuple):
        return [nm_mask(m.weight, *structure, scores=s) for m, s in zip(modules, scores, strict=True)]
    if structure is None:
        if scope == "layer":
            return [_bottom_k_mask(s, _n_to_prune(amount, s.numel())) for s in scores]
        flat = torch.cat([s.reshape(-1) for s in scores])
        mask = _bottom_k_mask(flat, _n_to_prune(amount, flat.numel()))
        parts = torch.split(mask, [s.numel() for s in scores])
        return [part.reshape(s.shape) for part, s in zip(parts, scores, strict=True)]
    dim = _STRUCT_DIM[structure]
    for m in modules:
        if m.weight.ndim < 2:
            raise ValueError(f"structured pruning needs a weight with at least 2 dims, got {tuple(m.weight.shape)}")
    dims = [[d for d in range(s.ndim) if d != dim] for s in scores]
    slice_scores = [torch.norm(s.clamp_min(0), p=norm, dim=d)
                    for s, d in zip(scores, dims, strict=True)]
    if scope == "layer":
        return [_slice_mask(ss, _n_to_prune(amount, ss.numel()), s.shape, dim)
                for ss, s in zip(slice_scores, scores, strict=True)]
    flat = torch.cat(slice_scores)
    keep = _slice_mask(flat, _n_to_prune(amount, flat.numel()), flat.shape, 0)
    parts = torch.split(keep, [ss.numel() for ss in slice_scores])
    out = []
    for part, s in zip(parts, scores, strict=True):
        view = [1] * s.ndim
        view[dim] = -1
        out.append(part.reshape(view).expand(s.shape).clone())
    return out

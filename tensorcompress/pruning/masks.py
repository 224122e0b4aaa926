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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from .. import surgery
from .._validation import check_positive_int, check_tensor
from .criteria import _n_to_prune, magnitude, taylor

__all__ = ["nm_mask", "prune", "PRUNABLE", "apply_mask", "sparsity"]

PRUNABLE = surgery.LAYERS
_CRITERIA = {"magnitude": lambda m: magnitude(m.weight),
             "taylor": lambda m: taylor(m.weight, _grad_of(m))}
_STRUCT_DIM = {"filters": 0, "channels": 1}


def _grad_of(module: nn.Module) -> torch.Tensor | None:
    p = getattr(module, "weight_orig", None)
    p = module.weight if p is None else p
    return p.grad


def nm_mask(weight: torch.Tensor, n: int, m: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask keeping exactly the ``n`` largest ``scores`` (default ``|weight|``) of every ``m`` consecutive weights
    along the input dimension (dim 1; the input channels of a convolution, as NVIDIA's ASP groups them).

    Raises ``ValueError`` when ``n > m`` or the number of inputs is not a multiple of ``m``."""
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
    """Set ``module.<name>``'s mask (in place): through ``prune.custom_from_mask`` the first time, by overwriting
    the ``<name>_mask`` buffer afterwards (so a schedule moves the one mask the model owns)."""
    buf = getattr(module, f"{name}_mask", None)
    if buf is None:
        tprune.custom_from_mask(module, name, mask.to(getattr(module, name).device))
        buf = getattr(module, f"{name}_mask")
    buf.copy_(mask)
    with torch.no_grad():
        setattr(module, name, getattr(module, f"{name}_orig") * buf)


def sparsity(module: nn.Module, name: str = "weight") -> float:
    """Fraction of zero entries of ``module.<name>`` (after its mask)."""
    t = getattr(module, name)
    return float((t == 0).sum()) / t.numel()


def _next_batchnorm(model: nn.Module, module: nn.Module) -> nn.Module | None:
    """The BatchNorm registered right after ``module`` (the conv-BN pairs of a Sequential), if it normalises
    ``module``'s outputs; a pruned filter masks its affine entries too, so the channel is exactly zero after it."""
    leaves = [m for m in model.modules() if not list(m.children())]
    for a, b in zip(leaves, leaves[1:], strict=False):
        if a is module and isinstance(b, nn.modules.batchnorm._BatchNorm) and b.affine \
                and b.num_features == module.weight.shape[0]:
            return b
    return None


def _check_structure(structure: object) -> str | tuple[int, int] | None:
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


def prune(model: nn.Module, amount: float | int | None, *, criterion: str | Callable = "magnitude",
          scope: str = "layer", structure: str | tuple[int, int] | None = None, norm: float = 1,
          include=None, exclude=None, types: tuple[type, ...] = PRUNABLE,
          inplace: bool = False) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """Mask the weights of the selected layers of a copy of ``model``; returns ``(pruned_model, report)``.

    Parameters
    ----------
    model : nn.Module
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
    include, exclude : fnmatch patterns on layer names (see :func:`tensorcompress.surgery.select`).
    types : module classes to prune (default Linear and Conv1d/2d/3d).
    inplace : bool
        Prune ``model`` itself (the schedules move a model's masks); default works on a deep copy.

    Returns
    -------
    (nn.Module, list of LayerChange)
        One row per layer; ``params_after`` counts the weights left non-zero (plus the bias), ``detail`` holds
        ``sparsity`` (the fraction of the weight the mask zeroes). The size in bytes does not fall (see above).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(criterion) and criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(_CRITERIA)} or a callable, got {criterion!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    structure = _check_structure(structure)
    if isinstance(structure, tuple):
        n, m = structure
        if amount is not None and not (isinstance(amount, float) and abs(amount - (1 - n / m)) < 1e-12):
            raise ValueError(f"amount must be None (or {1 - n / m}) for an {n}:{m} structure, got {amount!r}")
    elif amount is None:
        raise ValueError("amount must be given (a float in [0, 1] or an int count) unless structure is (n, m)")
    new = model if inplace else surgery.copy_model(model)
    chosen = surgery.select(new, types, include=include, exclude=exclude)
    if not chosen:
        raise ValueError(f"nothing to prune: no {'/'.join(t.__name__ for t in types)} layer selected "
                         f"(include={include!r}, exclude={exclude!r})")
    before = {sel.name: (sel.module.weight != 0).sum().item() for sel in chosen}
    masks = _masks([sel.module for sel in chosen], amount, criterion, scope, structure, norm)
    report = []
    for sel, mask in zip(chosen, masks, strict=True):
        mod = sel.module
        footprint = surgery.footprint(mod)
        if hasattr(mod, "weight_mask"):
            mask = mask * mod.weight_mask
        apply_mask(mod, mask)
        if structure == "filters":
            out_mask = mask.reshape(mask.shape[0], -1).amax(1)
            for target in (mod, _next_batchnorm(new, mod)):
                for pname in ("weight", "bias") if target is not mod else ("bias",):
                    if target is not None and getattr(target, pname, None) is not None:
                        apply_mask(target, out_mask, pname)
        kept = int((mod.weight != 0).sum()) + (0 if mod.bias is None else int((mod.bias != 0).sum()))
        detail = {"sparsity": round(float((mod.weight_mask == 0).sum()) / mask.numel(), 4),
                  "nonzero_before": before[sel.name]}
        report.append(surgery.LayerChange.between(sel.name, footprint, surgery.footprint(mod, params=kept), detail,
                                                  sel.names[1:]))
    return new, report


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

r"""Pruning from calibration data, one layer at a time, without retraining: Wanda and SparseGPT.

Both look at a linear layer :math:`y = Wx` (:math:`W \in \mathbb R^{m \times n}`) through the inputs it receives
on calibration data, :math:`X \in \mathbb R^{n \times N}` (columns = tokens, flattened over batch and position),
and aim at a small output error :math:`\|(W - \hat W)X\|_F` rather than a small weight change.

**Wanda** (Sun, Liu, Bair & Kolter 2023, "A simple and effective pruning approach for large language models",
arXiv:2306.11695): the score of a weight is its magnitude times the norm of the input it multiplies,

.. math:: S_{ij} = |W_{ij}| \cdot \|X_{j,:}\|_2,

compared *within each output row* (each row loses the same number of weights, the paper's choice: rows are
independent outputs), or within each group of :math:`m` consecutive inputs for an :math:`n{:}m` pattern (keep the
:math:`n` largest, as :func:`~tensorcompress.pruning.nm_mask`). No weight is changed: a mask only. It is the first
term of the OBS saliency :math:`w_{ij}^2/[H^{-1}]_{jj}` with :math:`H` replaced by its diagonal
(:math:`1/[H^{-1}]_{jj} \propto \|X_j\|_2^2`), square-rooted: magnitude pruning with the inputs' scale put back,
which matters when a few input features (outlier features) are far larger than the rest.

**SparseGPT** (Frantar & Alistarh 2023, "SparseGPT: massive language models can be accurately pruned in one-shot",
arXiv:2301.00774, Algorithm 1): Optimal Brain Surgeon column by column, as GPTQ
(:mod:`tensorcompress.quantization.gptq`) quantizes, with "zero" as the quantizer. With :math:`H = 2XX^\top/N`,
:math:`\lambda = \text{damp}\cdot\operatorname{mean}(\operatorname{diag} H)` and :math:`U` the upper Cholesky factor
of :math:`(H + \lambda I)^{-1}` (:math:`(H + \lambda I)^{-1} = U^\top U`; row :math:`j` of :math:`U` is row
:math:`j` of the inverse Hessian of the columns not yet visited, divided by the square root of its diagonal entry):

* for each block of ``block_size`` columns, before its first column is visited, the mask: the weights of the block
  with the smallest OBS saliency :math:`w^2/U_{jj}^2` over all its rows are pruned, exactly ``amount`` of them
  (``round(amount · size)``, torch's rule; ties broken by the row-major index), from the weights as the updates of
  the earlier columns left them; for an :math:`n{:}m` pattern, each group of :math:`m` columns keeps its :math:`n`
  largest saliencies per row, chosen when the group is reached;
* column :math:`j`: :math:`e = (w_{:,j} - \operatorname{mask}_{:,j} \odot w_{:,j})/U_{jj}`, then
  :math:`W_{:, j:} \mathrel{-}= e\,U_{j, j:}` — the OBS update of the weights not yet visited;
* the later columns receive a block's updates at once, :math:`W_{:, i_2:} \mathrel{-}= E\,U_{i_1:i_2,\, i_2:}`
  (lazy batches: the same arithmetic in another order).

Dead inputs (:math:`H_{jj} = 0`) get :math:`H_{jj} = 1` and zero weights. Cost per layer :math:`O(n^3)` for the
factor and :math:`O(mn^2)` for the updates; memory :math:`O(n^2)`; the result is computed in the weight's dtype
(float32 for half precision).

Whole models (:func:`wanda`, :func:`sparsegpt`): every selected ``nn.Linear``, layer by layer in the order of the
forward pass, each on the inputs that the already pruned earlier layers produce (SparseGPT's sequential mode;
layers reading one tensor — the query, key and value projections — share one pass). The result is masked through
``torch.nn.utils.prune`` as :func:`~tensorcompress.pruning.prune` masks: ``weight_orig`` holds the weight
(SparseGPT's updated one) and ``weight_mask`` its support, so every tool of the pruned models applies.
Storage: as any mask, none saved before :func:`~tensorcompress.pruning.shrink` or a sparse format; a 2:4 pattern
is what sparse tensor cores run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import surgery
from .._validation import check_fraction, check_matrix, check_positive_int, compute_dtype
from ..surgery.calibration import (
    InputStats,
    calibration_batches,
    check_damp,
    check_hessian,
    inverse_factor,
    layer_error,
    layerwise_statistics,
)
from .criteria import _n_to_prune
from .masks import PrunedLayer, apply_mask, check_nm_amount, check_structure, nm_mask, pruned_row, stored

__all__ = ["wanda", "sparsegpt_layer", "sparsegpt", "CalibratedPrunedLayer"]


class CalibratedPrunedLayer(PrunedLayer):
    """A report row of :func:`wanda` and :func:`sparsegpt`, its details typed."""

    method = surgery.Detail(str, "``\"wanda\"`` or ``\"sparsegpt\"``.")
    pattern = surgery.Detail(str, "``\"unstructured\"`` or ``\"n:m\"``.")
    output_error = surgery.Detail(
        float, "Relative output error ‖(W − Ŵ)X‖_F / ‖WX‖_F on the calibration inputs X the layer was pruned on.")


def _check_pattern(amount: object, structure: object) -> tuple[float | None, tuple[int, int] | None]:
    """``(amount, None)`` for unstructured pruning, ``amount`` a fraction in [0, 1); ``(None, (n, m))`` for an N:M
    pattern, ``amount`` then ``None`` or ``1 - n/m``."""
    if structure is not None:
        structure = check_structure(structure)
        if not isinstance(structure, tuple):
            raise ValueError(f"structure must be None (unstructured) or an (n, m) tuple, got {structure!r}")
        check_nm_amount(amount, structure)
        return None, structure
    if amount is None:
        raise ValueError("amount must be given (a fraction in [0, 1)) unless structure is (n, m)")
    return check_fraction(amount, "amount", high_open=True), None


def _check_tiling(n_inputs: int, structure: tuple[int, int] | None, where: str = "") -> None:
    if structure is not None and n_inputs % structure[1]:
        n, m = structure
        raise ValueError(f"an {n}:{m} pattern needs the inputs to be a multiple of m={m}; the {n_inputs} inputs"
                         f"{where} are not")


def _pattern(structure: tuple[int, int] | None) -> str:
    return "unstructured" if structure is None else f"{structure[0]}:{structure[1]}"


def _row_mask(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Ones, with the ``round(amount · n)`` lowest scores of every row zeroed (ties by index)."""
    mask = torch.ones_like(scores)
    k = _n_to_prune(amount, scores.shape[1])
    if k:
        mask.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], 0)
    return mask


def _block_mask(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Ones, with the ``round(amount · size)`` lowest scores of the whole block zeroed (ties by row-major index)."""
    return _row_mask(scores.reshape(1, -1), amount).reshape(scores.shape)


def sparsegpt_layer(weight: torch.Tensor, hessian: torch.Tensor, *, amount: float | None,
                    structure: tuple[int, int] | None = None, damp: float = 0.01,
                    block_size: int = 128) -> torch.Tensor:
    """SparseGPT's Algorithm 1 on one weight matrix (see the module docstring): the pruned and updated weight.

    Parameters
    ----------
    weight : tensor (m, n)
        Rows are outputs; float32 or float64 (half precision is computed in float32). Not changed.
    hessian : tensor (n, n)
        :math:`H = 2XX^\\top/N` of the layer's inputs (symmetric positive semi-definite).
    amount : float in [0, 1), or None with ``structure``
        Fraction of each block's weights pruned.
    structure : (n, m), optional
        Keep ``n`` of every ``m`` consecutive inputs in each row (``m`` must divide the inputs); ``amount`` is then
        ``None`` or ``1 - n/m``.
    damp : float in [0, 1]
        Dampening, a fraction of the mean diagonal of :math:`H`.
    block_size : int
        Columns per mask and lazy batch (rounded down to whole groups of ``m``, at least one).

    Returns
    -------
    tensor
        ``weight``'s shape and dtype, exactly zero where pruned.
    """
    dt = check_matrix(weight)
    n = weight.shape[1]
    check_hessian(hessian, n)
    amount, structure = _check_pattern(amount, structure)
    _check_tiling(n, structure, " of weight")
    damp = check_damp(damp)
    block = check_positive_int(block_size, "block_size")
    if structure is not None:
        block = max(1, block // structure[1]) * structure[1]
    w = weight.detach().to(dt).clone()
    h = hessian.detach().to(device=w.device, dtype=dt).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    u = inverse_factor(h)
    d2 = torch.diagonal(u).square()
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        mask = _block_mask(w1.square() / d2[i1:i2], amount) if structure is None else torch.ones_like(w1)
        for i in range(i2 - i1):
            if structure is not None and i % structure[1] == 0:
                g = slice(i, i + structure[1])
                mask[:, g] = nm_mask(w1[:, g], *structure, scores=w1[:, g].square() / d2[i1:i2][g])
            q = w1[:, i] * mask[:, i]
            err1[:, i] = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= err1[:, i:i + 1] * u1[i:i + 1, i:]
            w1[:, i] = q  # exactly the kept weight (the update gives it up to rounding)
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # the lazy update of the later columns
    return w.to(weight.dtype)


def _wanda_layer(weight: torch.Tensor, stats: InputStats, amount: float | None,
                 structure: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight unchanged and its mask by :math:`|W_{ij}|\\,\\|X_j\\|_2` (per row, or N:M)."""
    dt = compute_dtype(weight)  # a norm over many tokens may pass float16's range
    scores = weight.to(dt).abs() * stats.xtx.diagonal().clamp(min=0).sqrt().to(dt)
    mask = _row_mask(scores, amount) if structure is None else nm_mask(scores, *structure, scores=scores)
    return weight, mask


def _one_shot(model: nn.Module, calibration: object,
              prune_layer: Callable[[torch.Tensor, InputStats], tuple[torch.Tensor, torch.Tensor]],
              structure: tuple[int, int] | None, method: str, include, exclude
              ) -> tuple[nn.Module, list[CalibratedPrunedLayer]]:
    """A copy of ``model`` whose selected ``nn.Linear`` layers are masked, layer by layer in the order of the
    forward pass, each by ``prune_layer(weight, stats) -> (new weight, mask)`` on the inputs the already pruned
    layers produce; a weight pruned before stays pruned."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batches = calibration_batches(calibration)
    work = surgery.copy_model(model)
    chosen = surgery.select(work, nn.Linear, include=include, exclude=exclude, action=method)
    for sel in chosen:
        _check_tiling(sel.module.in_features, structure, f" of layer {sel.name!r}")
        tied = surgery.tied_parameters(work, sel.module)
        if tied:
            own = [f"{sel.name}.{n}" for n, p in sel.module.named_parameters()
                   if any(p is work.get_parameter(t) for t in tied)]
            raise ValueError(f"{method}: {own} of layer {sel.name!r} are tied to {tied}; each would get its own "
                             f"update and mask, untying them. Untie the weights first or leave one out with exclude=")
    before = {id(s.module): (surgery.footprint(s.module), int((s.module.weight != 0).sum())) for s in chosen}
    report = []
    for sel, stats in layerwise_statistics(work, batches, chosen):
        lin = sel.module
        old = lin.weight.detach().clone()
        new, mask = prune_layer(old, stats)
        if hasattr(lin, "weight_mask"):
            mask = mask * lin.weight_mask
        with torch.no_grad():
            stored(lin, "weight").copy_(new)
        apply_mask(lin, mask.to(old.dtype))
        extra = {"method": method, "pattern": _pattern(structure),
                 "output_error": round(layer_error(lin.weight - old, old, stats.xtx), 6)}
        report.append(pruned_row(sel, *before[id(lin)], extra, CalibratedPrunedLayer))
    return work, report


def wanda(model: nn.Module, calibration, *, amount: float | None, structure: tuple[int, int] | None = None,
          include=None, exclude=None) -> tuple[nn.Module, list[CalibratedPrunedLayer]]:
    """A copy of ``model`` whose selected ``nn.Linear`` layers are masked by Wanda's score
    :math:`|W_{ij}|\\,\\|X_j\\|_2` (see the module docstring), layer by layer on the inputs that the already pruned
    layers produce.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    calibration : tensor, Dataset or iterable of batches
        Model inputs (``x`` of ``(x, y, ...)``); for a language model, token windows.
    amount : float in [0, 1), or None with ``structure``
        Fraction of each output row's weights pruned.
    structure : (n, m), optional
        Keep the ``n`` best of every ``m`` consecutive inputs (``m`` must divide every selected layer's inputs);
        ``amount`` is then ``None`` or ``1 - n/m``.
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns; default every ``nn.Linear``.

    Returns
    -------
    (nn.Module, list of CalibratedPrunedLayer)
        The masked model (``torch.nn.utils.prune`` reparametrisation) and one row per layer: sparsity, pattern,
        relative output error on the inputs it was pruned on.
    """
    amount, structure = _check_pattern(amount, structure)
    return _one_shot(model, calibration, lambda w, stats: _wanda_layer(w, stats, amount, structure), structure,
                     "wanda", include, exclude)


def sparsegpt(model: nn.Module, calibration, *, amount: float | None, structure: tuple[int, int] | None = None,
              damp: float = 0.01, block_size: int = 128, include=None,
              exclude=None) -> tuple[nn.Module, list[CalibratedPrunedLayer]]:
    """A copy of ``model`` whose selected ``nn.Linear`` layers are pruned and updated by :func:`sparsegpt_layer`,
    layer by layer in the order of the forward pass, each on the inputs the already pruned layers produce.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    calibration : tensor, Dataset or iterable of batches
        Model inputs (``x`` of ``(x, y, ...)``); for a language model, token windows.
    amount, structure, damp, block_size
        As :func:`sparsegpt_layer`; ``m`` must divide every selected layer's inputs.
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns; default every ``nn.Linear``.

    Returns
    -------
    (nn.Module, list of CalibratedPrunedLayer)
        The masked model (``weight_orig`` the updated weight, ``weight_mask`` its support) and one row per layer:
        sparsity, pattern, relative output error on the inputs it was pruned on.
    """
    amount, structure = _check_pattern(amount, structure)
    damp = check_damp(damp)
    block_size = check_positive_int(block_size, "block_size")

    def prune_layer(weight: torch.Tensor, stats: InputStats) -> tuple[torch.Tensor, torch.Tensor]:
        new = sparsegpt_layer(weight, stats.hessian(compute_dtype(weight)), amount=amount, structure=structure,
                              damp=damp, block_size=block_size)
        return new, new != 0

    return _one_shot(model, calibration, prune_layer, structure, "sparsegpt", include, exclude)

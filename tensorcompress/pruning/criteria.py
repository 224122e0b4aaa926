r"""Importance criteria: which weights (or filters, channels, neurons) matter least.

Each criterion returns scores with the weight's shape (or one score per slice); pruning removes the lowest.

* **Magnitude** :math:`|w_q|` — the smallest perturbation :math:`\|\delta w\|_2` that zeroes weights (Han et al. 2015).
* **L_n norm of a slice** :math:`\|W_{j,:}\|_n` — one score per filter/channel/neuron (Li et al. 2017), as
  ``torch.nn.utils.prune.ln_structured`` ranks slices.
* **First-order Taylor** :math:`|w_q g_q|` — the loss change :math:`|\partial L/\partial w_q\cdot(0 - w_q)|` of
  zeroing :math:`w_q` to first order (Molchanov et al. 2017).
* **Activation** — mean activation and APoZ (average percentage of zeros; Hu et al. 2016) of each neuron/channel
  over data: a neuron that is almost always zero after the ReLU carries little.
* **OBD** (LeCun, Denker & Solla 1990) — at a minimum (:math:`g = 0`) with a diagonal Hessian the second-order
  Taylor expansion gives the loss increase of zeroing :math:`w_q` as the saliency
  :math:`s_q = \tfrac12 h_{qq} w_q^2`. The diagonal :math:`h_{qq}` is exact (one Hessian-vector row per weight) for
  small layers and Hutchinson's estimator :math:`\operatorname{diag} H \approx \tfrac1S\sum_s z_s\odot Hz_s`
  (Rademacher :math:`z_s`; Bekas et al. 2007) otherwise; cost :math:`S` Hessian-vector products.
* **OBS** (Hassibi & Stork 1993) for one linear layer, layer-wise (Dong et al. 2017): the layer's squared output
  error :math:`\|(W' - W)X\|^2` has Hessian :math:`H = 2XX^\top + \lambda I` per output row. Removing weight
  :math:`q` costs :math:`L_q = w_q^2 / (2[H^{-1}]_{qq})`; removing a set :math:`Q` of a row and re-fitting the rest
  :math:`R` optimally gives the closed form :math:`w'_R = w_R + H_{RR}^{-1}H_{RQ}w_Q` (the multi-weight OBS step;
  for one weight it is :math:`\delta w = -\frac{w_q}{[H^{-1}]_{qq}}H^{-1}e_q`). Storage: one :math:`d\times d`
  Hessian for a layer with :math:`d` inputs; cost one :math:`|R|`-sized solve per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn

from .. import surgery
from .._validation import (
    check_finite,
    check_fraction,
    check_int_in,
    check_positive_int,
    check_real,
    check_tensor,
    compute_dtype,
)

__all__ = ["magnitude", "ln_norm", "taylor", "activation", "ActivationStats", "hessian_diagonal",
           "obd_saliency", "obs_prune"]


def _weight(weight: object, name: str = "weight") -> torch.Tensor:
    w = check_tensor(weight, name, min_ndim=1)
    compute_dtype(w, name)
    return w


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|weight|``: the score ``torch.nn.utils.prune.l1_unstructured`` ranks by."""
    return _weight(weight).detach().abs()


def ln_norm(weight: torch.Tensor, n: float = 2, dim: int = 0) -> torch.Tensor:
    """The L``n`` norm of each slice ``weight.select(dim, j)``, as ``torch.nn.utils.prune.ln_structured`` computes it.

    Parameters
    ----------
    weight : tensor with at least 2 dimensions
    n : float, ``inf``, ``-inf`` or ``'fro'``
    dim : int
        0: one score per filter; 1: one per input channel.
    """
    w = _weight(weight)
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions for a per-slice norm, got shape {tuple(w.shape)}")
    if not -w.ndim <= dim < w.ndim:
        raise ValueError(f"dim={dim} is out of range for a weight of shape {tuple(w.shape)}")
    dims = [d for d in range(w.ndim) if d != dim % w.ndim]
    return torch.norm(w.detach(), p=n, dim=dims)


def taylor(weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """First-order Taylor importance ``|weight * grad|`` (``grad`` defaults to ``weight.grad``)."""
    w = _weight(weight)
    g = w.grad if grad is None else grad
    if g is None:
        raise ValueError("taylor needs a gradient: pass grad= or run loss.backward() so that weight.grad is set")
    check_tensor(g, "grad")
    if g.shape != w.shape:
        raise ValueError(f"grad must have the weight's shape {tuple(w.shape)}, got {tuple(g.shape)}")
    return (w.detach() * g.detach()).abs()


class ActivationStats(NamedTuple):
    """Per neuron/channel statistics of a module's output: ``mean`` activation and ``apoz`` (fraction of zeros)."""

    mean: torch.Tensor
    apoz: torch.Tensor


@torch.no_grad()
def activation(model: nn.Module, module: nn.Module, data: torch.Tensor | Iterable, *,
               nonlinearity: Callable[[torch.Tensor], torch.Tensor] | None = torch.relu) -> ActivationStats:
    """Mean activation and APoZ of each output neuron/channel (dim 1) of ``module`` over ``data``.

    Parameters
    ----------
    model : nn.Module
        Runs in eval mode; every submodule gets its own mode back.
    module : nn.Module
        A submodule of ``model``; a Linear only on ``(batch, features)`` inputs (on ``(N, L, F)`` its neurons are
        the last dimension, not dim 1).
    data : tensor, Dataset or iterable of ``x`` or ``(x, y)`` batches
        Read as :func:`tensorcompress.surgery.input_batches` reads it.
    nonlinearity : callable or None
        Applied to the module's output first (default ReLU, so ``activation(model, model.fc1, loader)`` describes
        the neurons ``relu(fc1(x))``; ``None`` for the raw output).

    Returns
    -------
    ActivationStats
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(module, nn.Module) or not any(m is module for m in model.modules()):
        raise ValueError("module must be a submodule of model")
    sums: list[torch.Tensor] = []
    counts = [0]

    def hook(_m, _inp, out):
        if isinstance(module, nn.Linear) and out.ndim != 2:  # its neurons are the last dim, not dim 1
            raise ValueError(f"activation reads the neurons of a Linear on (batch, features) inputs; this one gives "
                             f"an output of shape {tuple(out.shape)}")
        a = out if nonlinearity is None else nonlinearity(out)
        dims = [d for d in range(a.ndim) if d != 1]
        n = a.numel() // a.shape[1]
        stats = torch.stack([a.sum(dims), (a == 0).sum(dims).to(a.dtype)])
        if sums:
            sums[0] += stats
        else:
            sums.append(stats.clone())
        counts[0] += n

    handle = module.register_forward_hook(hook)
    try:
        surgery.run_over(model, data)
    finally:
        handle.remove()
    mean, zeros = sums[0] / counts[0]
    return ActivationStats(mean, zeros)


def _flat_grad(loss_fn: Callable[[], torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    (g,) = torch.autograd.grad(loss, param, create_graph=True)
    return g.reshape(-1)


def hessian_diagonal(loss_fn: Callable[[], torch.Tensor], param: torch.Tensor, *, method: str = "auto",
                     samples: int = 100, exact_max: int = 4096,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The diagonal of :math:`\partial^2 L/\partial w^2` for ``param``.

    Parameters
    ----------
    loss_fn : callable ``() -> scalar tensor``
        Recomputes the loss from ``param``.
    param : tensor with ``requires_grad``
    method : ``"exact"``, ``"hutchinson"`` or ``"auto"``
        ``"exact"`` takes one row of the Hessian per weight (``param.numel()`` backward passes); ``"hutchinson"``
        averages :math:`z\odot Hz` over ``samples`` Rademacher vectors (unbiased; the error falls as
        :math:`1/\sqrt{S}`); ``"auto"`` is exact up to ``exact_max`` weights.
    samples, exact_max : int
    generator : torch.Generator, optional
        Draws the Rademacher vectors.
    """
    check_tensor(param, "param", floating=True)
    if not param.requires_grad:
        raise ValueError("param must require grad")
    if method not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"method must be 'auto', 'exact' or 'hutchinson', got {method!r}")
    check_positive_int(samples, "samples")
    if method == "auto":
        method = "exact" if param.numel() <= exact_max else "hutchinson"
    g = _flat_grad(loss_fn, param)
    if method == "exact":
        diag = torch.empty_like(g)
        for q in range(g.numel()):
            (row,) = torch.autograd.grad(g[q], param, retain_graph=True)
            diag[q] = row.reshape(-1)[q]
        return diag.detach().reshape(param.shape)
    z = torch.randint(0, 2, (samples, g.numel()), generator=generator).to(g) * 2 - 1
    # all S Hessian-vector products in one batched backward pass (vmap over the grad_outputs)
    (hz,) = torch.autograd.grad(g, param, grad_outputs=z, is_grads_batched=True)
    return (z * hz.reshape(samples, -1)).mean(0).detach().reshape(param.shape)


def obd_saliency(loss_fn: Callable[[], torch.Tensor], param: torch.Tensor, **options) -> torch.Tensor:
    r"""Optimal Brain Damage saliency :math:`s_q = \tfrac12 h_{qq} w_q^2` (options go to :func:`hessian_diagonal`).

    It predicts the loss increase of zeroing :math:`w_q` alone, exactly for a quadratic loss at its minimum.

    Parameters
    ----------
    loss_fn : callable ``() -> scalar tensor``
        Recomputes the loss from ``param``.
    param : tensor with ``requires_grad``
        The weights scored.
    **options
        ``method``, ``samples``, ``exact_max`` and ``generator`` of :func:`hessian_diagonal`.

    Returns
    -------
    torch.Tensor
        One saliency per weight, of ``param``'s shape; the smallest are pruned first.
    """
    h = hessian_diagonal(loss_fn, param, **options)
    return 0.5 * h * param.detach() ** 2


def _n_to_prune(amount: float | int, size: int, name: str = "amount") -> int:
    """``amount`` as a count, with ``torch.nn.utils.prune``'s rule: an int is a count in ``[0, size]``, a float a
    fraction in [0, 1] rounded half to even (``round(amount * size)``). The one check of a pruning amount."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"{name} must be an int (a count) or a float in [0, 1] (a fraction), got {amount!r}")
    if isinstance(amount, int):
        return check_int_in(amount, name, 0, size, why=" (a count of the prunable units)")
    return round(check_fraction(amount, name) * size)


@torch.no_grad()
def obs_prune(weight: torch.Tensor, inputs: torch.Tensor, amount: float | int, *,
              damp: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Layer-wise Optimal Brain Surgeon for a linear layer ``y = W x``: prune and re-fit the kept weights.

    Parameters
    ----------
    weight : (out, in) tensor
    inputs : (N, in) tensor
        The layer's inputs on calibration data (rows are samples).
    amount : float in [0, 1] or int
        Fraction (or count) of the weights to remove, chosen over the whole layer by
        :math:`L_q = w_q^2/(2[H^{-1}]_{qq})`.
    damp : float
        :math:`\lambda = ` ``damp`` × mean of :math:`\operatorname{diag}(2XX^\top)`, keeps :math:`H` invertible.

    Returns
    -------
    (new_weight, mask)
        ``new_weight`` is zero where ``mask`` is 0; the kept weights of each row are
        :math:`w_R + H_{RR}^{-1}H_{RQ}w_Q`, the least-squares best given the removed set.
    """
    w = check_finite(_weight(weight), "weight")
    x = check_finite(check_tensor(inputs, "inputs", min_ndim=2), "inputs")
    if w.ndim != 2 or x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"weight must be (out, in) and inputs (N, in); got {tuple(w.shape)} and {tuple(x.shape)}")
    if check_real(damp, "damp") < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    dt = torch.float64 if w.dtype == torch.float64 else torch.float32
    wd, xd = w.to(dt), x.to(dt)
    h = 2 * xd.T @ xd
    h += damp * h.diagonal().mean().clamp_min(torch.finfo(dt).tiny) * torch.eye(h.shape[0], dtype=dt, device=h.device)
    hinv = torch.linalg.inv(h)
    saliency = wd**2 / (2 * hinv.diagonal())
    k = _n_to_prune(amount, w.numel())
    mask = torch.ones_like(wd)
    if k:
        mask.view(-1)[torch.topk(saliency.view(-1), k, largest=False).indices] = 0
    new = wd * mask
    for r in range(wd.shape[0]):
        keep, drop = mask[r].bool(), ~mask[r].bool()
        if drop.any() and keep.any():
            rhs = h[keep][:, drop] @ wd[r, drop]
            new[r, keep] += torch.linalg.solve(h[keep][:, keep], rhs)
    return new.to(w.dtype), mask.to(w.dtype)

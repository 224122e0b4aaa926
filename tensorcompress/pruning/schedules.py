r"""Pruning schedules: training callbacks that move the masks the model owns, a sensitivity scan, lottery tickets.

* **One-shot**: prune once to the final sparsity, then fine-tune (Han et al. 2015 retrain at a tenth of the
  learning rate).
* **Iterative prune–fine-tune**: raise the sparsity in steps, fine-tuning in between.
* **AGP** (Zhu & Gupta 2017, automated gradual pruning): from step :math:`t_0`, every :math:`\Delta t` steps,
  :math:`s_t = s_f + (s_i - s_f)\bigl(1 - \tfrac{t - t_0}{n\Delta t}\bigr)^3`, :math:`t\in\{t_0, \dots,
  t_0 + n\Delta t\}`: prune fast while many weights are redundant, slowly near the end.
* **Sensitivity scan** (Han et al. 2015; the MIT EfficientML lab's greedy per-layer choice): accuracy when each layer
  alone is pruned to each amount.
* **Lottery ticket** (Frankle & Carbin 2019): train, prune a fraction :math:`p` of the remaining weights, rewind the
  kept weights to their values at initialisation (or, *late rewinding*, after a few epochs; Frankle et al. 2020),
  repeat; after :math:`r` rounds the sparsity is :math:`1 - (1-p)^r`. The control that makes a ticket a *winning*
  one is :func:`random_reinit`: the same mask on freshly drawn weights (Frankle & Carbin 2019, §2) must train worse.

The masks live in the model (``weight_mask`` buffers of ``torch.nn.utils.prune``); the callbacks only decide when
and how far to move them (the masking of :func:`tensorcompress.pruning.prune`, applied to the model being trained,
keeps pruned weights pruned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import surgery
from .._validation import check_fraction, check_positive_int
from ..train import Callback, FitState, evaluate, fit, set_seed
from .masks import PRUNABLE, PrunedLayer, _prune, prune

__all__ = ["agp_sparsity", "PruningSchedule", "AGP", "one_shot", "iterative", "sensitivity_scan",
           "lottery_ticket", "random_reinit"]


def agp_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0, n_steps: int = 10,
                 frequency: int = 1) -> float:
    r"""Zhu & Gupta's cubic sparsity at training step ``step``.

    :math:`s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n\Delta t))^3` at the update steps
    :math:`t = t_0 + k\Delta t`, :math:`k = 0..n`; constant between updates, :math:`s_i` before :math:`t_0`,
    :math:`s_f` after :math:`t_0 + n\Delta t`.

    Parameters
    ----------
    step : int
        The training step :math:`t`.
    final, initial : float in [0, 1]
        :math:`s_f` and :math:`s_i`.
    start : int
        :math:`t_0`, the first update step.
    n_steps : int >= 1
        :math:`n`, the number of updates after the first.
    frequency : int >= 1
        :math:`\Delta t`, the steps between updates.

    Returns
    -------
    float
        The sparsity :math:`s_t`.
    """
    final, initial = check_fraction(final, "final"), check_fraction(initial, "initial")
    check_positive_int(n_steps, "n_steps"), check_positive_int(frequency, "frequency")
    if step < start:
        return initial
    k = min((step - start) // frequency, n_steps)
    return final + (initial - final) * (1 - k / n_steps) ** 3


class PruningSchedule(Callback):
    """Moves the model's masks to ``sparsity(t)`` during :func:`tensorcompress.fit`.

    Parameters
    ----------
    sparsity : callable ``t -> float in [0, 1]``
        The target amount at ``t``: the optimizer step (``every="step"``, checked after each batch) or the epoch
        (``every="epoch"``, checked at the start of each epoch, ``t = 0`` for the first). The masks move at the
        start of training and whenever the target changes.
    every : ``"step"`` or ``"epoch"``
    **prune_options
        Passed to :func:`tensorcompress.pruning.prune` (``amount`` is the schedule's; ``example_input=`` pairs
        filters with their BatchNorms where a model needs it).
    """

    def __init__(self, sparsity: Callable[[int], float], *, every: str = "step", **prune_options) -> None:
        if every not in ("step", "epoch"):
            raise ValueError(f"every must be 'step' or 'epoch', got {every!r}")
        if "amount" in prune_options:
            raise ValueError("PruningSchedule sets amount itself (from sparsity(t))")
        self.sparsity, self.every, self.options = sparsity, every, prune_options
        self.current: float | None = None
        self.log: list[tuple[int, float]] = []

    def _move(self, model: nn.Module, t: int) -> None:
        target = check_fraction(self.sparsity(t), "sparsity(t)")
        if target != self.current:
            _prune(model, amount=target, **self.options)
            self.current = target
            self.log.append((t, target))

    def on_train_begin(self, state: FitState) -> None:
        self._move(state.model, 0)

    def on_epoch_begin(self, state: FitState) -> None:
        if self.every == "epoch":
            self._move(state.model, state.epoch - 1)

    def on_batch_end(self, state: FitState) -> None:
        if self.every == "step":
            self._move(state.model, state.step)


class AGP(PruningSchedule):
    """Automated gradual pruning (Zhu & Gupta 2017): :func:`agp_sparsity` by optimizer step.

    Parameters
    ----------
    final, initial : float in [0, 1]
        The sparsity reached after the last update and the one before ``start``.
    start : int
        The optimizer step of the first update.
    n_steps : int >= 1
        The number of updates after the first.
    frequency : int >= 1
        Optimizer steps between updates.
    **prune_options
        Passed to :func:`tensorcompress.pruning.prune` (not ``amount``, which the schedule sets).
    """

    def __init__(self, final: float, *, initial: float = 0.0, start: int = 0, n_steps: int = 10,
                 frequency: int = 1, **prune_options) -> None:
        agp_sparsity(0, final=final, initial=initial, start=start, n_steps=n_steps, frequency=frequency)
        super().__init__(lambda t: agp_sparsity(t, final=final, initial=initial, start=start, n_steps=n_steps,
                                                frequency=frequency), every="step", **prune_options)


def one_shot(amount: float, **prune_options) -> PruningSchedule:
    """Prune to ``amount`` before the first step, then fine-tune with the mask fixed."""
    amount = check_fraction(amount, "amount")
    return PruningSchedule(lambda t: amount, every="epoch", **prune_options)


def iterative(amounts: Sequence[float], *, epochs_per_step: int = 1, **prune_options) -> PruningSchedule:
    """Iterative prune–fine-tune: sparsity ``amounts[k]`` during epochs ``k·epochs_per_step`` to
    ``(k+1)·epochs_per_step - 1`` (the last amount afterwards).

    Parameters
    ----------
    amounts : non-decreasing sequence of floats in [0, 1]
    epochs_per_step : int >= 1
    **prune_options
        Passed to :func:`tensorcompress.pruning.prune`.
    """
    amounts = [check_fraction(a, f"amounts[{i}]") for i, a in enumerate(amounts)]
    if not amounts or any(b < a for a, b in zip(amounts, amounts[1:], strict=False)):
        raise ValueError(f"amounts must be a non-empty non-decreasing sequence, got {amounts}")
    check_positive_int(epochs_per_step, "epochs_per_step")
    return PruningSchedule(lambda e: amounts[min(e // epochs_per_step, len(amounts) - 1)], every="epoch",
                           **prune_options)


def sensitivity_scan(model: nn.Module, data, *, amounts: Sequence[float], include=None, exclude=None,
                     types: tuple[type, ...] = PRUNABLE, **prune_options) -> dict[str, list[float]]:
    """Accuracy (:func:`tensorcompress.evaluate` on ``data``) with each selected layer alone pruned to each amount.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    data : Dataset or iterable of ``(x, y)`` batches
        What :func:`tensorcompress.evaluate` reads. Use a validation split: the per-layer amounts chosen from it
        are a decision.
    amounts : sequence of floats in [0, 1]
        The fractions each layer is pruned to, one at a time.
    include, exclude, types
        The layers scanned (see :func:`tensorcompress.pruning.prune`).
    **prune_options
        Passed to :func:`tensorcompress.pruning.prune` (``criterion``, ``structure``, ``example_input``, ...).

    Returns
    -------
    dict
        ``{layer name: [accuracy at amounts[0], ...]}``, accuracies as fractions.
    """
    amounts = [check_fraction(a, f"amounts[{i}]") for i, a in enumerate(amounts)]
    chosen = surgery.select(model, types, include=include, exclude=exclude, action="sensitivity_scan")
    return {sel.name: [evaluate(prune(model, amount=a, include=sel, types=types, **prune_options)[0], data).accuracy
                       for a in amounts] for sel in chosen}


def _rewind(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(snapshot[name.removesuffix("_orig")])
    for m in model.modules():
        _remask(m)


def lottery_ticket(model: nn.Module, train, *, rounds: int, amount: float = 0.2, rewind_epochs: int = 0,
                   epochs: int = 10, scope: str = "layer", include=None, exclude=None, val=None,
                   **fit_options) -> tuple[nn.Module, list[dict[str, float]]]:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; late rewinding, Frankle et al. 2020).

    A copy of ``model`` is trained ``rewind_epochs`` epochs (0: rewind to the initialisation) and its weights
    saved; then ``rounds`` times: train ``epochs`` epochs, prune ``amount`` of the remaining weights (so
    :math:`1 - (1-p)^r` after round :math:`r`), rewind the kept weights to the saved ones.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    train : Dataset
        What :func:`tensorcompress.fit` trains on.
    rounds : int >= 1
    amount : float in [0, 1]
        :math:`p`, the fraction of the remaining weights pruned per round.
    rewind_epochs : int >= 0
    epochs : int >= 1
        Training epochs per round.
    scope, include, exclude
        As in :func:`tensorcompress.pruning.prune` (an empty selection is refused before any training).
    val : Dataset, optional
        Scored with :func:`tensorcompress.evaluate` before each round's pruning.
    **fit_options
        Passed to :func:`tensorcompress.fit` (``lr``, ``batch_size``, ``seed``, ...).

    Returns
    -------
    (nn.Module, list of dict)
        The ticket (masked, rewound, untrained: train it with :func:`tensorcompress.fit`) and one record per
        round: ``round``, ``sparsity`` (after the round's pruning), ``train_loss`` of the round's last epoch and,
        with ``val``, ``val_accuracy`` (a fraction) of the network trained in that round *before* its pruning
        (round 1: the dense network, trained ``rewind_epochs + epochs`` epochs).
    """
    amount = check_fraction(amount, "amount")
    check_positive_int(rounds, "rounds"), check_positive_int(epochs, "epochs")
    check_positive_int(rewind_epochs, "rewind_epochs", minimum=0)
    surgery.select(model, PRUNABLE, include=include, exclude=exclude, action="lottery_ticket")  # before training
    fit_options.setdefault("progress", False)
    ticket = surgery.copy_model(model)
    if rewind_epochs:
        fit(ticket, train, epochs=rewind_epochs, **fit_options)
    snapshot = {n.removesuffix("_orig"): p.detach().clone() for n, p in ticket.named_parameters()}
    history = []
    for r in range(1, rounds + 1):
        records = fit(ticket, train, epochs=epochs, **fit_options)
        record = {"round": r, "sparsity": 1 - (1 - amount) ** r, "train_loss": records[-1].get("loss", float("nan"))}
        if val is not None:
            record["val_accuracy"] = evaluate(ticket, val).accuracy
        _prune(ticket, amount=record["sparsity"], scope=scope, include=include, exclude=exclude)
        _rewind(ticket, snapshot)
        history.append(record)
    return ticket, history


def random_reinit(model: nn.Module, *, seed: int = 0, include=None, exclude=None
                  ) -> tuple[nn.Module, list[PrunedLayer]]:
    """The lottery-ticket control: a copy of ``model`` with the same masks on freshly initialised weights.

    Every selected leaf module with a ``reset_parameters`` method (Linear, Conv, BatchNorm; all by default) draws
    new parameters from its own initialiser (PyTorch's defaults, the distribution the ticket's weights were first
    drawn from) under ``seed``; masks of ``torch.nn.utils.prune`` stay as they are, so the pruned weights stay zero
    and only the values of the kept ones change (Frankle & Carbin 2019, "random reinitialization").

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    seed : int
        The generator state the new values are drawn under.
    include, exclude : names or fnmatch patterns of modules with ``reset_parameters`` (default all).

    Returns
    -------
    (nn.Module, list of LayerChange)
        One row per re-initialised module (``detail``: its ``sparsity``, 0 for an unpruned module).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    new = surgery.copy_model(model)
    resettable = tuple(sorted({type(m) for m in new.modules()
                               if not list(m.children()) and callable(getattr(m, "reset_parameters", None))},
                              key=lambda t: t.__name__))
    if not resettable:
        raise ValueError("random_reinit: nothing to act on, the model has no module with reset_parameters")
    chosen = [sel for sel in surgery.select(new, resettable, include=include, exclude=exclude, action="random_reinit")
              if not list(sel.module.children())]
    report = []
    with set_seed(seed):
        for sel in chosen:
            report.append(_reinit(sel.module, sel))
    return new, report


def _reinit(module: nn.Module, sel) -> surgery.LayerChange:
    """Draw fresh values for ``module``'s parameters on a mask-free twin, then copy them under the masks."""
    twin = surgery.copy_model(module)
    for name in [n.removesuffix("_orig") for n, _ in twin.named_parameters() if n.endswith("_orig")]:
        torch.nn.utils.prune.remove(twin, name)
    twin.reset_parameters()
    fresh = {**dict(twin.named_parameters()), **dict(twin.named_buffers())}
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            p.copy_(fresh[name.removesuffix("_orig")])
        for name, buf in module.named_buffers(recurse=False):  # BatchNorm statistics restart too
            if name in fresh:
                buf.copy_(fresh[name])
    _remask(module)
    mask = getattr(module, "weight_mask", None)
    sp = 0.0 if mask is None else round(float((mask == 0).sum()) / mask.numel(), 4)
    same = surgery.footprint(module)  # the same layer, re-initialised: nothing is smaller
    return PrunedLayer.between(sel.name, same, same, {"sparsity": sp}, sel.names[1:])


def _remask(module: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` now, not at the next forward pass."""
    for pname in ("weight", "bias"):
        if hasattr(module, f"{pname}_mask"):
            with torch.no_grad():
                setattr(module, pname, getattr(module, f"{pname}_orig") * getattr(module, f"{pname}_mask"))

"""One training loop for the whole series: :func:`fit`, :func:`evaluate`, :func:`set_seed` and the :class:`Callback`
protocol through which pruning schedules, quantisation-aware training or logging hook into :func:`fit`.

Reproducibility: :func:`fit` seeds python, numpy and torch (:func:`set_seed`) and shuffles with its own
``torch.Generator`` seeded by ``seed``, so two CPU runs from the same initial weights with the same arguments give
bit-identical weights on the same machine (the model's *initial* weights are the caller's: seed before building it).
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ._validation import check_positive_int

__all__ = ["fit", "evaluate", "set_seed", "Callback", "FitState", "Evaluation"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def set_seed(seed: int, *, deterministic: bool = True) -> None:
    """Seed python's ``random``, numpy and torch (CPU and every CUDA device) with ``seed``.

    With ``deterministic=True`` also asks torch for deterministic algorithms
    (``torch.use_deterministic_algorithms(True, warn_only=True)``: a warning, not an error, where an operation has
    no deterministic implementation), turns cuDNN benchmarking off and sets ``CUBLAS_WORKSPACE_CONFIG`` if unset.
    These are process-wide settings. A CPU run is then reproducible on one machine with the same thread count.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- the legacy global state is what user code draws from
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measures: ``accuracy`` (fraction in ``[0, 1]``), mean cross-entropy ``loss`` and the
    number of samples ``n``."""

    accuracy: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class FitState:
    """What a :class:`Callback` sees: the model and optimizer being trained and where training stands.

    ``epoch`` counts from 1; ``step`` is the number of optimizer steps taken so far; ``batch`` is the current
    ``(inputs, targets)`` and ``loss`` the current batch loss (a tensor; between ``loss.backward()`` and
    ``optimizer.step()`` in :meth:`Callback.on_after_backward`); ``history`` the per-epoch records so far.
    Setting ``stop = True`` ends training after the current epoch.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    epoch: int = 0
    step: int = 0
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    outputs: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False


class Callback:
    """Hooks into :func:`fit`. Subclass and override what you need; every method is a no-op here.

    Order per training run::

        on_train_begin
        for each epoch: on_epoch_begin
            for each batch: on_batch_begin, forward + loss, backward, on_after_backward, optimizer.step, on_batch_end
        on_epoch_end (after the epoch's record, with test metrics if ``test`` was given, is in ``state.history``)
        on_train_end

    Examples: a pruning mask re-applied in ``on_batch_end``, gradients masked in ``on_after_backward``, a
    sparsity schedule stepped in ``on_epoch_begin``, observers frozen for QAT in ``on_epoch_end``.
    """

    def on_train_begin(self, state: FitState) -> None: ...

    def on_epoch_begin(self, state: FitState) -> None: ...

    def on_batch_begin(self, state: FitState) -> None: ...

    def on_after_backward(self, state: FitState) -> None: ...

    def on_batch_end(self, state: FitState) -> None: ...

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_train_end(self, state: FitState) -> None: ...


def _batches(
    data: Dataset | DataLoader, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``(inputs, targets)``; a ``TensorDataset`` is sliced directly (no per-item collation)."""
    if isinstance(data, DataLoader):
        yield from data
        return
    if isinstance(data, TensorDataset):
        x, y = data.tensors[0], data.tensors[1]
        n = x.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                yield x[start : start + batch_size], y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield x[idx], y[idx]
        return
    if isinstance(data, Dataset):
        yield from DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
        return
    raise TypeError(f"data must be a torch Dataset or DataLoader, got {type(data).__name__}")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1000,
) -> Evaluation:
    """Accuracy and mean cross-entropy loss of ``model`` on ``data``.

    .. math:: \\text{accuracy} = \\frac1N\\sum_i [\\arg\\max_c f(x_i)_c = y_i], \\qquad
              \\text{loss} = -\\frac1N\\sum_i \\log \\operatorname{softmax}(f(x_i))_{y_i}

    Runs in eval mode under ``torch.no_grad`` and restores the model's train/eval mode afterwards. Inputs are cast
    to the model's dtype.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``N × C``.
    data : Dataset or DataLoader
        Yields ``(inputs, targets)``.
    device : torch.device or str, optional
        Where to evaluate; default: where the model's parameters are. The model is moved there (in place).
    batch_size : int
        Samples per forward pass (ignored for a DataLoader).
    """
    check_positive_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
    was_training = model.training
    model.eval()
    correct, total_loss, n = 0, 0.0, 0
    try:
        for x, y in _batches(data, batch_size, shuffle=False):
            x, y = x.to(device=device, dtype=dtype), y.to(device)
            out = model(x)
            total_loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += y.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("data must hold at least one sample, got an empty data set")
    return Evaluation(accuracy=correct / n, loss=total_loss / n, n=n)


def _make_optimizer(optimizer: str | torch.optim.Optimizer, model: nn.Module, lr: float, weight_decay: float):
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer, got {optimizer!r}")


def _make_scheduler(scheduler, optimizer: torch.optim.Optimizer, epochs: int):
    if scheduler is None:
        return None
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if callable(scheduler):
        return scheduler(optimizer)
    raise ValueError(f"scheduler must be None, 'cosine' or a callable optimizer -> LRScheduler, got {scheduler!r}")


def fit(
    model: nn.Module,
    train: Dataset | DataLoader,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    optimizer: str | torch.optim.Optimizer = "adam",
    progress: bool = True,
    callbacks: Sequence[Callback] | None = None,
    loss_fn: LossFn | None = None,
    weight_decay: float = 0.0,
    scheduler: str | Callable[[torch.optim.Optimizer], Any] | None = None,
    test: Dataset | DataLoader | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` **in place** with mini-batch gradient descent and return the per-epoch history.

    Each epoch shuffles ``train`` (a ``torch.Generator`` seeded with ``seed``), and for every batch computes
    ``outputs = model(inputs)``, ``loss = loss_fn(outputs, targets, inputs)`` (default: cross-entropy of
    ``outputs`` and ``targets``), back-propagates and steps the optimizer. The model is left in the train/eval mode
    it had before the call, on ``device``.

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to ``device``).
    train : Dataset or DataLoader
        Yields ``(inputs, targets)``. A DataLoader is used as given (its own shuffling; ``batch_size`` ignored).
    epochs, lr, batch_size : int, float, int
        Passes over ``train``, learning rate, samples per step.
    device : torch.device or str, optional
        Default: where the model's parameters are.
    seed : int or None
        Seeds everything (:func:`set_seed`) and the shuffling; ``None`` leaves the global random state alone and
        shuffles from it.
    optimizer : {"adam", "adamw", "sgd"} or torch.optim.Optimizer
        ``"sgd"`` uses momentum 0.9. An optimizer instance (built on ``model``'s parameters) is used as is
        (``lr`` and ``weight_decay`` then ignored).
    progress : bool
        A tqdm bar over epochs; also off when the environment sets ``TQDM_DISABLE=1``.
    callbacks : sequence of Callback, optional
        Hooks, see :class:`Callback`.
    loss_fn : callable ``(outputs, targets, inputs) -> scalar tensor``, optional
        Replaces cross-entropy, e.g. a distillation loss that calls a teacher on ``inputs``, or a regularised loss.
    weight_decay : float
        L2 penalty passed to the optimizer.
    scheduler : None, "cosine" or callable ``optimizer -> LRScheduler``
        Stepped once per epoch. ``"cosine"`` anneals to 0 over ``epochs``.
    test : Dataset or DataLoader, optional
        Evaluated (:func:`evaluate`) after every epoch; adds ``test_accuracy`` and ``test_loss`` to the history.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``loss`` (mean training loss), ``accuracy`` (training accuracy over the
        epoch, measured on the fly while the weights change), ``lr``, and ``test_accuracy``/``test_loss`` if
        ``test`` was given.
    """
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = torch.device(device) if device is not None else _model_device(model)
    if seed is not None:
        set_seed(seed)
        generator = torch.Generator().manual_seed(seed)
    else:
        generator = None
    model.to(device)
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
    opt = _make_optimizer(optimizer, model, lr, weight_decay)
    sched = _make_scheduler(scheduler, opt, epochs)
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must hold Callback instances, got {type(cb).__name__}")
    state = FitState(model=model, optimizer=opt, epochs=epochs)
    was_training = model.training

    with warnings.catch_warnings():  # tqdm.auto warns at import when Jupyter lacks ipywidgets, then falls back to text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not _progress_enabled(progress))
    for cb in callbacks:
        cb.on_train_begin(state)
    try:
        for epoch in bar:
            state.epoch = epoch
            model.train()
            for cb in callbacks:
                cb.on_epoch_begin(state)
            total_loss = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            n = 0
            for x, y in _batches(train, batch_size, shuffle=True, generator=generator):
                x, y = x.to(device=device, dtype=dtype), y.to(device)
                state.batch = (x, y)
                for cb in callbacks:
                    cb.on_batch_begin(state)
                opt.zero_grad(set_to_none=True)
                out = model(x)
                loss = nn.functional.cross_entropy(out, y) if loss_fn is None else loss_fn(out, y, x)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {float(loss.detach())} at epoch {epoch}, step "
                                             f"{state.step + 1}: lower lr (now {lr})")
                state.outputs, state.loss = out, loss
                loss.backward()
                for cb in callbacks:
                    cb.on_after_backward(state)
                opt.step()
                state.step += 1
                for cb in callbacks:
                    cb.on_batch_end(state)
                total_loss += loss.detach().double() * y.shape[0]
                if out.ndim == 2:
                    correct += (out.detach().argmax(1) == y).sum()
                n += y.shape[0]
            record: dict[str, float] = {
                "epoch": epoch,
                "loss": float(total_loss) / n,
                "accuracy": int(correct) / n,
                "lr": opt.param_groups[0]["lr"],
            }
            if sched is not None:
                sched.step()
            if test is not None:
                ev = evaluate(model, test, device=device)
                record["test_accuracy"], record["test_loss"] = ev.accuracy, ev.loss
            state.history.append(record)
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            for cb in callbacks:
                cb.on_epoch_end(state)
            if state.stop:
                break
        for cb in callbacks:
            cb.on_train_end(state)
    finally:
        bar.close()
        state.batch = state.outputs = state.loss = None
        model.train(was_training)
    return state.history

"""The training loop (:func:`fit`) and the evaluation (:func:`evaluate`), cut into small named steps."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from .._validation import check_positive_int
from ..surgery.model import device_of, dtype_of, kept_modes
from .callbacks import Callback, FitState, Hooks
from .distributed import ProcessGroup, process_group
from .seed import set_seed

__all__ = ["fit", "evaluate", "Evaluation"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Data = Dataset | DataLoader


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measures: ``accuracy`` (fraction in ``[0, 1]``), mean cross-entropy ``loss`` and the
    number of samples ``n``."""

    accuracy: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# ---------------------------------------------------------------- model, outputs and data


def split_outputs(outputs: object) -> tuple[torch.Tensor, Any]:
    """``(logits, features)`` from what a model returned.

    A tensor is the logits (features ``None``); a tuple or list holds the logits first, then the features (one
    element: that element; several: a tuple of them); a mapping holds them under ``"logits"``, the features are the
    other entries (a dict).
    """
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    if isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], torch.Tensor):
        rest = tuple(outputs[1:])
        return outputs[0], (rest[0] if len(rest) == 1 else rest or None)
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"], {k: v for k, v in outputs.items() if k != "logits"} or None
    raise TypeError("the model must return logits: a tensor, a tuple (logits, features...) or a dict with a "
                    f"'logits' tensor, got {type(outputs).__name__}")


def _check_data(data: object, name: str) -> Data:
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise TypeError(f"{name} must be a torch Dataset or DataLoader, got {type(data).__name__}")
    try:
        n = len(data)
    except TypeError:
        raise TypeError(f"{name} must have a length (a map-style Dataset); pass an iterable data set as a "
                        "DataLoader") from None
    if n == 0:
        raise ValueError(f"{name} must hold at least one sample, got an empty data set")
    return data


def _fetch(data: Dataset, start: int, stop: int, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``order[start:stop]`` (or ``start:stop``) of ``data``; a ``TensorDataset`` is sliced directly."""
    if isinstance(data, TensorDataset):
        x, y = data.tensors[0], data.tensors[1]
        if order is None:
            return x[start:stop], y[start:stop]
        idx = order[start:stop]
        return x[idx], y[idx]
    idx = range(start, stop) if order is None else order[start:stop].tolist()
    x, y = default_collate([data[i] for i in idx])[:2]
    return x, y


@dataclass(frozen=True)
class _Batch:
    inputs: torch.Tensor
    targets: torch.Tensor
    scale: float  # this process's share of the global batch, times world size: n_r W / B (1 when training alone)


def _batches(data: Data, batch_size: int, group: ProcessGroup, *, shuffle: bool,
             generator: torch.Generator | None = None) -> Iterator[_Batch]:
    """Global mini-batches of ``batch_size`` samples, each cut into this process's shard (module
    :mod:`~tensorcompress.train.distributed`). A DataLoader is used as given: every process iterates its own."""
    if isinstance(data, DataLoader):
        for x, y, *_ in data:
            yield _Batch(x, y, 1.0)
        return
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        lo, hi = group.shard(size)
        x, y = _fetch(data, start + lo, start + hi, order)
        yield _Batch(x, y, (hi - lo) * group.world_size / size if group.active else 1.0)


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run with ``model`` on ``device``, then move it back to where it was."""
    home = device_of(model)
    if home == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def _is_classification(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    return logits.ndim == 2 and targets.ndim == 1 and not targets.is_floating_point()


def per_token(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, V)`` logits and ``(B, T)`` integer targets (a language model's next-token predictions) as
    ``(B·T, V)`` and ``(B·T,)``, one row per token, so that loss and accuracy are per token; anything else as
    given."""
    if logits.ndim == 3 and targets.ndim == 2 and not targets.is_floating_point() \
            and logits.shape[:2] == targets.shape:
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return logits, targets


def to_model(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Inputs moved to ``device``; floating inputs cast to the model's ``dtype``, integer ones (token ids, indices)
    kept integer."""
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def channels_last_images(x: torch.Tensor) -> torch.Tensor:
    """A batch of images on the CPU (floating, 4-D) stored channels-last, anything else as it is.

    The same shape and values, only the memory order differs; convolutions, BatchNorm and max-pooling keep that
    order, and the CPU kernels process it 1.5-2.5x faster than NCHW (LeNet-5 spends half its forward pass in NCHW
    max-pooling); ``flatten`` and ``reshape`` still read the logical NCHW order, so the logits equal NCHW's up to
    floating-point rounding and ``state_dict`` is untouched. Neither :func:`fit` nor :func:`evaluate` applies it:
    training a shrunk ResNet-8 on channels-last batches crashed PyTorch 2.13's generic CPU kernels
    (``ATEN_CPU_CAPABILITY=default``) with a segmentation fault, and PyTorch's channels-last max-pooling of
    integer tensors (the codes of :func:`tensorcompress.quantization.to_integer`) fails its size check.
    ``benchmarks/floors.py`` measures what it would gain.

    Parameters
    ----------
    x : torch.Tensor
        Model inputs, already on their device and in their dtype (:func:`to_model`).
    """
    if x.ndim != 4 or not x.is_floating_point() or x.device.type != "cpu":
        return x
    # empty_like + copy_, not x.contiguous(memory_format=...): with one channel an NCHW tensor already counts as
    # channels-last contiguous, is returned as it is, and the first convolution would keep NCHW
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


# ---------------------------------------------------------------- evaluation


def _non_finite_rows(t: torch.Tensor) -> int:
    if not t.is_floating_point() or t.numel() == 0:
        return 0
    return int((~torch.isfinite(t.reshape(t.shape[0], -1))).any(1).sum())


@torch.no_grad()
def _evaluate_sums(model: nn.Module, data: Data, device: torch.device, batch_size: int,
                   group: ProcessGroup) -> list[float]:
    """``[correct, summed loss, n, bad inputs, bad logits]`` over ``data`` (this process's shard when distributed,
    summed over processes), with ``model`` already on ``device`` and in eval mode."""
    dtype = dtype_of(model)
    correct, total_loss, n, bad_in, bad_out = 0, 0.0, 0, 0, 0
    if isinstance(data, DataLoader) or not group.active:
        batches = _batches(data, batch_size, ProcessGroup(), shuffle=False)
    else:  # a contiguous share of the samples per process
        start, stop = group.shard(len(data))
        batches = (_Batch(*_fetch(data, s, min(s + batch_size, stop), None), 1.0)
                   for s in range(start, stop, batch_size))
    for b in batches:
        x, y = to_model(b.inputs, device, dtype), b.targets.to(device)
        logits, _ = split_outputs(model(x))
        bad_in += _non_finite_rows(x)
        bad_out += _non_finite_rows(logits)
        logits, y = per_token(logits, y)
        total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += y.shape[0]
    if group.active and not isinstance(data, DataLoader):
        return group.sum([correct, total_loss, n, bad_in, bad_out], device)
    return [correct, total_loss, n, bad_in, bad_out]


def _to_evaluation(sums: list[float]) -> Evaluation:
    correct, total_loss, n, bad_in, bad_out = sums
    n = int(n)
    if n == 0:
        raise ValueError("data must hold at least one sample, got an empty data set")
    if bad_in:
        raise ValueError(f"data holds NaN or Inf inputs in {int(bad_in)} of its {n} samples: the accuracy on them "
                         "would mean nothing")
    if bad_out:
        raise ValueError(f"the model returned NaN or Inf logits for {int(bad_out)} of {n} samples with finite inputs: "
                         "check its weights (tc.count_parameters cannot see this; torch.isfinite can)")
    return Evaluation(accuracy=int(correct) / n, loss=total_loss / n, n=n)


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1000,
) -> Evaluation:
    """Accuracy and mean cross-entropy loss of ``model`` on ``data``.

    .. math:: \\text{accuracy} = \\frac1N\\sum_i [\\arg\\max_c f(x_i)_c = y_i], \\qquad
              \\text{loss} = -\\frac1N\\sum_i \\log \\operatorname{softmax}(f(x_i))_{y_i}

    Runs in eval mode under ``torch.no_grad``; the model is left as it was: its train/eval mode (of every submodule)
    is restored, and if ``device`` is not where it lives, it is moved there for the evaluation and moved back.
    Floating inputs are cast to the model's dtype, integer ones (tokens) kept. A model may return
    ``(logits, features...)`` or a dict with ``"logits"``. A language model's ``(B, T, V)`` logits with ``(B, T)``
    targets count one prediction per token: ``N`` is the number of tokens, the loss and accuracy are per token.
    No communication between processes: under ``torchrun`` each process that calls it evaluates all of ``data``
    (rank 0 alone may call it); :func:`fit`'s ``test`` metrics are the sharded, summed ones.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits ``N × C`` (or ``B × T × V`` per token).
    data : Dataset or DataLoader
        Yields ``(inputs, targets)``.
    device : torch.device or str, optional
        Where to evaluate; default: where the model's parameters are.
    batch_size : int
        Samples per forward pass (ignored for a DataLoader).

    Raises
    ------
    ValueError
        For an empty data set, NaN or Inf inputs, or NaN or Inf logits: an accuracy over them would be meaningless.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    data = _check_data(data, "data")
    check_positive_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else device_of(model)
    with _on_device(model, device), kept_modes(model, False):
        sums = _evaluate_sums(model, data, device, batch_size, ProcessGroup())
    return _to_evaluation(sums)


# ---------------------------------------------------------------- optimizer and schedule


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


def _add_new_parameters(opt: torch.optim.Optimizer, model: nn.Module, before: set[int]) -> None:
    """Give the optimizer the trainable parameters that appeared since ``before`` (ids) and that no callback added
    itself, as one param group with the optimizer's defaults (a learnable quantisation step, say)."""
    known = {id(p) for g in opt.param_groups for p in g["params"]}
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in before and id(p) not in known]
    if new:
        opt.add_param_group({"params": new})


def _make_scheduler(scheduler, optimizer: torch.optim.Optimizer, epochs: int):
    if scheduler is None:
        return None
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if callable(scheduler):
        return scheduler(optimizer)
    raise ValueError(f"scheduler must be None, 'cosine' or a callable optimizer -> LRScheduler, got {scheduler!r}")


# ---------------------------------------------------------------- one step, one epoch


@dataclass
class _Run:
    """What every step of one :func:`fit` call needs."""

    state: FitState
    forward: nn.Module  # the model, or its DistributedDataParallel wrapper
    hooks: Hooks
    loss_fn: LossFn | None
    dtype: torch.dtype
    group: ProcessGroup
    lr: float


def _batch_loss(run: _Run, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if y.shape[0] == 0:  # an empty shard (a global batch smaller than the world): no loss, but a graph for DDP
        return logits.sum() * 0.0
    if run.loss_fn is None:
        return nn.functional.cross_entropy(*per_token(logits, y))
    return run.loss_fn(logits, y, x)


def _check_loss(run: _Run, loss: object, x: torch.Tensor) -> torch.Tensor:
    state = run.state
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"the loss must be a scalar tensor (from loss_fn or set by on_loss), got "
                        f"{type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
    if not torch.isfinite(loss):
        where = f"at epoch {state.epoch}, step {state.step + 1}"
        bad = _non_finite_rows(x)
        cause = (f"{bad} of the {x.shape[0]} inputs of this batch hold NaN or Inf" if bad
                 else f"lower lr (now {run.lr})")
        raise FloatingPointError(f"training loss became {float(loss.detach())} {where}: {cause}")
    return loss


def _train_step(run: _Run, batch: _Batch) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """One optimizer step on ``batch``; returns the loss times the number of predictions (samples, or tokens of a
    language model), that number and the number of correct predictions (``None`` when the outputs are not class
    scores), all detached."""
    state, opt = run.state, run.state.optimizer
    x, y = to_model(batch.inputs, state.device, run.dtype), batch.targets.to(state.device)
    state.batch = (x, y)
    run.hooks("on_batch_begin", state)
    opt.zero_grad(set_to_none=True)
    logits, features = split_outputs(run.forward(x))
    state.outputs, state.features = logits, features
    state.loss = _batch_loss(run, logits, y, x)
    run.hooks("on_loss", state)
    loss = _check_loss(run, state.loss, x)
    (loss if batch.scale == 1.0 else loss * batch.scale).backward()
    run.hooks("on_after_backward", state)
    opt.step()
    state.step += 1
    run.hooks("on_batch_end", state)
    scores, y = per_token(logits.detach(), y)
    correct = (scores.argmax(1) == y).sum() if _is_classification(scores, y) else None
    return loss.detach().double() * y.shape[0], y.shape[0], correct


def _train_epoch(run: _Run, train: Data, batch_size: int, generator: torch.Generator | None) -> dict[str, float]:
    """One pass over ``train``; returns the epoch's record (mean loss and accuracy over all processes, lr)."""
    state = run.state
    device = state.device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n, classification = 0, True
    for batch in _batches(train, batch_size, run.group, shuffle=True, generator=generator):
        loss_sum, count, c = _train_step(run, batch)
        total_loss += loss_sum
        if c is None:
            classification = False
        else:
            correct += c
        n += count
    total, right, n = run.group.sum([float(total_loss), float(correct), n], device)
    if n == 0:
        raise ValueError("train must hold at least one sample, got an empty data set")
    record: dict[str, float] = {"epoch": state.epoch, "loss": total / n}
    if classification:
        record["accuracy"] = int(right) / n
    record["lr"] = state.optimizer.param_groups[0]["lr"]
    return record


# ---------------------------------------------------------------- fit


def _check_fit_arguments(model, epochs, batch_size, lr, weight_decay) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if isinstance(weight_decay, bool) or not (isinstance(weight_decay, int | float) and weight_decay >= 0
                                              and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def _begin(run: _Run, scheduler):
    """``on_train_begin``, then what depends on the parameters it may add: the optimizer's param groups, the
    scheduler (it records each group's initial lr) and the DistributedDataParallel wrapper. Returns the scheduler."""
    state = run.state
    before = {id(p) for p in state.model.parameters()}
    run.hooks("on_train_begin", state)
    state.model.to(state.device)  # parameters a callback added
    _add_new_parameters(state.optimizer, state.model, before)
    run.forward = _wrap(state.model, state.device, run.group)
    return _make_scheduler(scheduler, state.optimizer, state.epochs)


def _test_metrics(run: _Run, test: Data) -> dict[str, float]:
    """``test_accuracy`` and ``test_loss`` after an epoch (over all processes' shards), in eval mode."""
    model = run.state.model
    with kept_modes(model, False):
        ev = _to_evaluation(_evaluate_sums(model, test, run.state.device, 1000, run.group))
    return {"test_accuracy": ev.accuracy, "test_loss": ev.loss}


def _progress_bar(epochs: int, progress: bool, group: ProcessGroup):
    with warnings.catch_warnings():  # tqdm.auto warns at import when Jupyter lacks ipywidgets, then falls back to text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    enabled = bool(progress) and group.rank == 0 and os.environ.get("TQDM_DISABLE", "").lower() not in (
        "1", "true", "yes")
    return tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not enabled)


def _wrap(model: nn.Module, device: torch.device, group: ProcessGroup) -> nn.Module:
    """The module to call forward on: ``model``, or a DistributedDataParallel wrapper that averages gradients."""
    if not group.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _save(model: nn.Module, path: Path, group: ProcessGroup) -> None:
    """``model.state_dict()`` to ``path`` by the main process alone (atomic: written aside, then renamed)."""
    if group.rank == 0:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    group.barrier()


def fit(
    model: nn.Module,
    train: Data,
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
    test: Data | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` **in place** with mini-batch gradient descent and return the per-epoch history.

    Each epoch shuffles ``train`` (a ``torch.Generator`` seeded with ``seed``), and for every batch computes
    ``outputs = model(inputs)``, ``loss = loss_fn(logits, targets, inputs)`` (default: cross-entropy of the logits
    and ``targets``), lets the ``on_loss`` hooks change it, back-propagates and steps the optimizer. A model may
    return ``(logits, features...)`` or a dict with ``"logits"``: the loss and accuracy use the logits, the
    callbacks see the features (:class:`~tensorcompress.train.FitState`). Floating inputs are cast to the model's
    dtype, integer inputs (tokens) are passed as they are; a language model's ``(B, T, V)`` logits with ``(B, T)``
    integer targets are scored per token (cross-entropy and accuracy over the ``B·T`` next-token predictions, the
    history's ``loss`` a mean over tokens). The model is left in the train/eval mode it
    had before the call, on ``device``. Global state is left as it was: seeding and deterministic mode are scoped
    to the call (``with set_seed(seed)``).

    Under ``torchrun`` (or in an initialised process group) training is data-parallel: the model is wrapped in
    DistributedDataParallel, each process takes its shard of every global batch of ``batch_size`` samples and the
    loss is scaled so that each step equals one step of a single process on the whole batch
    (:mod:`~tensorcompress.train.distributed`); the history's losses and accuracies are over all processes; only
    rank 0 shows progress and writes ``checkpoint``. All processes must call :func:`fit` with the same arguments.
    Under ``torchrun`` without a process group, :func:`fit` initialises the default one (gloo on the CPU, NCCL on
    CUDA) and leaves it up for the rest of the script.
    BatchNorm statistics stay per process (use ``nn.SyncBatchNorm`` to share them).

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to ``device``).
    train : Dataset or DataLoader
        Yields ``(inputs, targets)``. A DataLoader is used as given (its own shuffling and, when distributed, its
        own sampler, e.g. ``DistributedSampler``; ``batch_size`` ignored).
    epochs, lr, batch_size : int, float, int
        Passes over ``train``, learning rate, samples per step (the global batch when distributed).
    device : torch.device or str, optional
        Default: where the model's parameters are.
    seed : int or None
        Seeds python, numpy, torch and the shuffling for the duration of the call (:func:`set_seed` as a context
        manager); ``None`` leaves the global random state alone and shuffles from it.
    optimizer : {"adam", "adamw", "sgd"} or torch.optim.Optimizer
        ``"sgd"`` uses momentum 0.9. An optimizer instance (built on ``model``'s parameters) is used as is
        (``lr`` and ``weight_decay`` then ignored). Trainable parameters that appear in ``on_train_begin`` and that
        the callback did not add to the optimizer itself join it as one param group with its defaults.
    progress : bool
        A tqdm bar over epochs; also off when the environment sets ``TQDM_DISABLE=1``.
    callbacks : sequence of callbacks, optional
        Objects with some of the hooks of :class:`Callback`.
    loss_fn : callable ``(logits, targets, inputs) -> scalar tensor``, optional
        Replaces cross-entropy (a mean over the batch), e.g. a distillation loss that calls a teacher on ``inputs``.
    weight_decay : float
        L2 penalty passed to the optimizer.
    scheduler : None, "cosine" or callable ``optimizer -> LRScheduler``
        Stepped once per epoch. ``"cosine"`` anneals to 0 over ``epochs``.
    test : Dataset or DataLoader, optional
        Evaluated (as :func:`evaluate`) after every epoch; adds ``test_accuracy`` and ``test_loss`` to the history.
    checkpoint : path, optional
        Where the main process saves ``model.state_dict()`` at the end.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``loss`` (mean training loss, after the ``on_loss`` hooks),
        ``accuracy`` (training accuracy over the epoch, measured on the fly while the weights change; left out when
        the outputs are not ``N × C`` class scores, or ``B × T × V`` token scores, for integer targets), ``lr``,
        and ``test_accuracy``/``test_loss`` if ``test`` was given.
    """
    _check_fit_arguments(model, epochs, batch_size, lr, weight_decay)
    train = _check_data(train, "train")
    test = None if test is None else _check_data(test, "test")
    hooks = Hooks(callbacks)
    device = torch.device(device) if device is not None else device_of(model)
    seeding = set_seed(seed) if seed is not None else contextlib.nullcontext()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    group = process_group(device)
    with seeding, kept_modes(model, True):
        model.to(device)
        opt = _make_optimizer(optimizer, model, lr, weight_decay)
        state = FitState(model=model, optimizer=opt, epochs=epochs, device=device, rank=group.rank,
                         world_size=group.world_size)
        run = _Run(state, model, hooks, loss_fn, dtype_of(model), group, lr)
        bar = _progress_bar(epochs, progress, group)
        try:
            sched = _begin(run, scheduler)
            for epoch in bar:
                state.epoch = epoch
                model.train()
                hooks("on_epoch_begin", state)
                record = _train_epoch(run, train, batch_size, generator)
                if sched is not None:
                    sched.step()
                if test is not None:
                    record.update(_test_metrics(run, test))
                state.history.append(record)
                bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
                hooks("on_epoch_end", state)
                if state.stop:
                    break
            hooks("on_train_end", state)
            if checkpoint is not None:
                _save(model, Path(checkpoint), group)
        finally:
            bar.close()
            state.batch = state.outputs = state.features = state.loss = None
    return state.history

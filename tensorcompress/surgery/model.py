"""What every transform needs to know about a whole model, written once: a faithful copy, where it lives and in what
dtype it computes, its per-submodule train/eval modes kept across a pass, and the inputs of a batch.

Why each exists:

* :func:`copy_model` — ``copy.deepcopy`` refuses a model pruned through ``torch.nn.utils.prune`` after a forward
  pass (its ``weight`` is then a non-leaf tensor) and drops gradients, which gradient-based criteria read.
* :func:`kept_modes` — ``model.eval()`` followed by ``model.train(was_training)`` is *not* a restore: ``train()``
  is recursive, so a model whose BatchNorms were frozen in eval mode inside a training model comes back with them
  training. The context manager records the flag of every submodule and puts each one back.
* :func:`inputs_of` / :func:`input_batches` — a batch is ``x`` or ``(x, y, ...)``; data are one tensor, a
  ``Dataset`` or an iterable of batches. One reading of both for calibration, activation statistics and capture.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from .._validation import check_positive_int

__all__ = ["copy_model", "device_of", "dtype_of", "kept_modes", "inputs_of", "input_batches", "run_over"]


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on a model pruned through ``torch.nn.utils.prune`` after a forward pass
    (its ``weight`` is then a non-leaf tensor, which deepcopy refuses; the copy's pre-hook recomputes it), and keeps
    the parameters' gradients (for gradient-based criteria)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    stash = []
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            for method in getattr(hook, "_pruning_methods", (hook,)):
                if isinstance(method, tprune.BasePruningMethod):
                    name = method._tensor_name
                    t = getattr(module, name)
                    if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                        stash.append((module, name, t))
                        setattr(module, name, t.detach())
    try:
        new = copy.deepcopy(model)
    finally:
        for module, name, t in stash:
            setattr(module, name, t)
    for old, p in zip(model.parameters(), new.parameters(), strict=True):  # deepcopy drops a Parameter's .grad
        if old.grad is not None:
            p.grad = old.grad.clone()
    return new


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter, else of its first buffer, else the CPU."""
    t = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype a model computes in, the one its inputs are cast to: its first parameter's if floating,
    else torch's default dtype (a model without parameters, or with integer ones)."""
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()


@contextlib.contextmanager
def kept_modes(model: nn.Module, training: bool | None = None) -> Iterator[nn.Module]:
    """Run the block with ``model`` in train (``True``) or eval (``False``) mode — or as it is (``None``) — then give
    every submodule back the train/eval flag it had, one by one (a recursive ``train()`` would not)."""
    modes = [(m, m.training) for m in model.modules()]
    if training is not None:
        model.train(training)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def inputs_of(batch: object) -> object:
    """The model inputs of a batch: ``x`` of ``(x, y, ...)``, or the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def input_batches(data: object, *, batch_size: int = 64) -> Iterator[object]:
    """The model inputs of ``data``, batch by batch: one tensor (a single batch), a ``Dataset`` (read in order in
    batches of ``batch_size``) or an iterable of ``x`` or ``(x, y, ...)`` batches (a ``DataLoader``)."""
    if isinstance(data, torch.Tensor):
        yield data
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a tensor, a Dataset or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        yield inputs_of(batch)


def run_over(model: nn.Module, data: object, *, n_batches: int | None = None, batch_size: int = 64) -> int:
    """Run ``model`` over ``data`` for what its hooks and observers record: in eval mode, without gradients, each
    batch moved to the model's device, every submodule's mode given back; the number of batches read.

    Parameters
    ----------
    model : nn.Module
        The model; its state changes only through what its own hooks and observers do.
    data : tensor, Dataset or iterable of batches
        Read as :func:`input_batches` reads it.
    n_batches : int, optional
        Read at most this many batches (default: all).
    batch_size : int
        Batch size when ``data`` is a ``Dataset``.

    Raises
    ------
    ValueError
        If ``data`` gives no batch.
    """
    if n_batches is not None:
        check_positive_int(n_batches, "n_batches")
    device, read = device_of(model), 0
    with kept_modes(model, False), torch.no_grad():
        for x in input_batches(data, batch_size=batch_size):
            if n_batches is not None and read >= n_batches:
                break
            model(x.to(device))
            read += 1
    if read == 0:
        raise ValueError("data gave no batch")
    return read

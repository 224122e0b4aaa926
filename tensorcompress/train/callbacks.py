"""The hooks through which schedules, regularisers and logging take part in :func:`~tensorcompress.fit`.

A callback is any object with one or more of the methods in :data:`HOOKS` (a :class:`typing.Protocol`, so no base
class is needed); each receives the :class:`FitState`. Subclassing :class:`Callback` is allowed and gives no-op
defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["Callback", "FitState", "HOOKS"]

#: The hooks :func:`~tensorcompress.fit` calls, in the order of one training run (per epoch, per batch).
HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_batch_begin",
    "on_loss",
    "on_after_backward",
    "on_batch_end",
    "on_epoch_end",
    "on_train_end",
)


@dataclass
class FitState:
    """What a callback sees: the model and optimizer being trained and where training stands.

    ``epoch`` counts from 1; ``step`` is the number of optimizer steps taken so far. During a batch, ``batch`` is
    this process's ``(inputs, targets)``, ``outputs`` the logits, ``features`` whatever else the model returned
    (the rest of a tuple, the other entries of a dict; ``None`` for a plain tensor), and ``loss`` the batch loss, a
    tensor that :meth:`Callback.on_loss` may replace before ``backward``. ``history`` holds the per-epoch records so
    far. Setting ``stop = True`` ends training after the current epoch.

    ``model`` is the caller's module, never a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper;
    ``rank`` and ``world_size`` describe the process group (``0`` and ``1`` without one): only the main process
    (``is_main``) should write files or print.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = 0
    step: int = 0
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    outputs: torch.Tensor | None = None
    features: Any = None
    loss: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is the process that logs and saves (rank 0)."""
        return self.rank == 0


class Callback(Protocol):
    """Hooks into :func:`~tensorcompress.fit`. Any object with some of these methods is a callback: define only the
    hooks you need (or subclass this class for no-op defaults).

    Order per training run::

        on_train_begin                 (the optimizer exists; parameters added to the model here join it)
        for each epoch: on_epoch_begin
            for each batch: on_batch_begin, forward, loss, on_loss, backward, on_after_backward,
                            optimizer.step, on_batch_end
        on_epoch_end                   (after the epoch's record, with test metrics, is in state.history)
        on_train_end

    ``on_loss`` may set ``state.loss`` to a new scalar tensor (add a distillation term computed from
    ``state.outputs`` or ``state.features``, a regulariser of ``state.model``'s weights); ``backward`` runs on what
    it leaves there. Examples of the others: a sparsity schedule stepped in ``on_epoch_begin``, gradients masked
    in ``on_after_backward``, observers frozen for quantisation-aware training in ``on_epoch_end``.
    """

    def on_train_begin(self, state: FitState) -> None: ...

    def on_epoch_begin(self, state: FitState) -> None: ...

    def on_batch_begin(self, state: FitState) -> None: ...

    def on_loss(self, state: FitState) -> None: ...

    def on_after_backward(self, state: FitState) -> None: ...

    def on_batch_end(self, state: FitState) -> None: ...

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_train_end(self, state: FitState) -> None: ...


class Hooks:
    """The callbacks' methods grouped by hook, called in the order the callbacks were given.

    Raises ``TypeError`` for an object with none of :data:`HOOKS`, or with an ``on_*`` method that is not one of them
    (a misspelt hook would otherwise never run).
    """

    def __init__(self, callbacks: Iterable[object] | None) -> None:
        if callbacks is not None and not isinstance(callbacks, Iterable):
            raise TypeError(f"callbacks must be a sequence of callbacks, got {type(callbacks).__name__}")
        self._table: dict[str, list[Callable[[FitState], None]]] = {name: [] for name in HOOKS}
        for k, cb in enumerate(callbacks or ()):
            methods = {name: getattr(cb, name, None) for name in HOOKS}
            methods = {name: m for name, m in methods.items() if callable(m)}
            unknown = sorted(a for a in dir(type(cb)) if a.startswith("on_") and a not in HOOKS)
            if unknown:
                raise TypeError(f"callbacks[{k}] ({type(cb).__name__}) has method(s) {unknown} that fit never "
                                f"calls; the hooks are {', '.join(HOOKS)}")
            if not methods:
                raise TypeError(f"callbacks[{k}] must have at least one of the methods {', '.join(HOOKS)} "
                                f"(see tc.Callback), got {type(cb).__name__}")
            for name, m in methods.items():
                self._table[name].append(m)

    def __call__(self, name: str, state: FitState) -> None:
        for method in self._table[name]:
            method(state)

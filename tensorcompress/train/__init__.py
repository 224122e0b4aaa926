"""One training loop for the whole series: :func:`fit`, :func:`evaluate`, :func:`set_seed` and the callback protocol
(:class:`Callback`) through which pruning schedules, quantisation-aware training, distillation or logging take part.

Where a technique's state lives. Masks, fake-quantizers and learnable quantisation steps belong to the **model**, as
``torch.nn.utils.prune`` and ``torch.nn.utils.parametrize`` keep them: buffers, parametrizations or submodules. They
are then in ``state_dict``, act in :func:`evaluate` and in every forward pass, and survive saving and loading.
Callbacks only **drive schedules**: raise a sparsity target each epoch, freeze observers, anneal a distillation
temperature. A callback that held a mask itself would lose it when training ends.

What :func:`fit` offers the next techniques:

* ``on_loss`` runs between the loss and ``backward`` and may replace ``state.loss`` (distillation terms,
  regularisers); ``loss_fn(logits, targets, inputs)`` replaces the cross-entropy altogether;
* parameters a callback adds to the model in ``on_train_begin`` (learnable step sizes, LSQ) join the optimizer;
* a model may return ``(logits, features)`` or ``{"logits": ..., ...}``: loss and accuracy use the logits,
  callbacks see ``state.features``;
* callbacks are duck-typed (:class:`typing.Protocol`): any object with some of the hooks works.

Global state. :func:`fit` seeds and turns on deterministic algorithms only for its own duration and restores the
random states and flags afterwards; :func:`evaluate` restores the model's mode and device. ``tc.set_seed(0)`` alone
changes them for the process (a notebook's first cell); ``with tc.set_seed(0):`` scopes them.

Reproducibility: two CPU runs from the same initial weights with the same arguments give bit-identical weights on
the same machine and thread count (the model's *initial* weights are the caller's: seed before building it). Another
CPU, BLAS or thread count sums in another order: compare accuracies within a tolerance, never weights bit for bit.

Past one machine: under ``torchrun`` the same call trains data-parallel (:mod:`~tensorcompress.train.distributed`);
the process group it initialises there stays up for the rest of the script (re-initialising one is unsafe).
"""

from .callbacks import HOOKS as HOOKS  # reachable as tc.train.NAME, kept out of the top-level namespace
from .callbacks import Callback, FitState
from .distributed import is_main_process as is_main_process
from .loop import Evaluation, evaluate, fit
from .loop import channels_last_images as channels_last_images
from .loop import per_token as per_token
from .loop import split_outputs as split_outputs
from .loop import to_model as to_model
from .seed import SeedScope as SeedScope
from .seed import set_seed

__all__ = ["fit", "evaluate", "set_seed", "Callback", "FitState", "Evaluation"]

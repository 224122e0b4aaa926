r"""Teacher–student training on :func:`~tensorcompress.fit`: the :class:`Distiller` callback and :func:`distill`.

Per batch, ``on_batch_begin`` runs the teacher once on the batch's inputs (eval mode, under ``torch.no_grad()``),
the student's forward pass runs in :func:`~tensorcompress.fit` as usual, and ``on_loss`` replaces the loss by

.. math:: \mathcal L = \underbrace{\alpha T^2 \mathrm{KL} + (1-\alpha)\,\mathrm{CE}}_{\text{kd\_loss}}
          + \lambda_h \sum_{(g, h)} \tfrac12\|u_h - r_{g}(v_g)\|^2
          + \sum_{(s, t)} \tfrac\beta2 \|\mathrm{at}(A_s) - \mathrm{at}(A_t)\|_2

(:mod:`~tensorcompress.distillation.losses`): ``alpha = 0`` is training on labels alone, ``hints`` and
``attention`` add FitNets and attention-transfer terms on layers named by the user, whose outputs forward hooks
capture (:class:`~tensorcompress.distillation.FeatureHooks`). The regressors :math:`r_g` are built in
``on_train_begin`` from the shapes of one example batch and added to the optimizer as their own param group (they
are not part of the student, whose ``state_dict`` is unchanged; they are kept in ``Distiller.regressors``).

The teacher is not changed: its parameters and buffers keep their values and ``requires_grad`` flags, they get no
gradient, its forward hooks are removed, and its train/eval mode (per submodule) and device are restored when
training ends or fails. A student that holds one of the teacher's tensors -- a shared layer, a shared
``BatchNorm`` whose running statistics the student's forward would update, a parameter built on the teacher's
storage -- is refused with a ``ValueError`` naming the tensor in both models, rather than silently copying the
teacher: the user decides whether the shared part should be the teacher's (``copy.deepcopy`` the student's part) or
the student's (``copy.deepcopy(teacher)``). A shared module without tensors (an activation, ``Dropout``) is
allowed and runs in eval mode in the teacher's forward pass, whatever mode training gives it; it cannot be a hint or
attention layer (its hooks would fire in both networks' forward passes).

**Caching the teacher.** Without data augmentation the teacher sees the same images every epoch and, frozen in eval
mode, gives the same logits: for a small student its forward pass is a large share of the cost of a distillation
epoch (LeNet-5 teaching a 15 k-parameter student in notebook 17). ``cache_teacher=True`` computes each
sample's logits once, on its first visit, and reuses them, keyed by a 128-bit BLAKE2b digest of the sample's input
bytes (a batch of new samples runs through the teacher together; the cache holds ``K`` numbers and 16 bytes per
distinct sample). With augmentation every input is new and the cache only grows: leave it off. It caches logits
only, so it is refused with ``hints`` or ``attention``, which need the teacher's features of every batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .._validation import Checked
from ..surgery import device_of, dtype_of, kept_modes
from ..train.loop import fit, per_token, split_outputs, to_model
from .hooks import FeatureHooks
from .losses import attention_transfer_loss, check_alpha, check_temperature, hint_loss, hint_regressor, kd_loss

__all__ = ["Distiller", "distill"]


def _pairs(pairs: object, arg: str) -> dict[str, str]:
    """``{student layer: teacher layer}`` from a mapping or a sequence of pairs."""
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        items = list(pairs.items())
    elif isinstance(pairs, Sequence) and not isinstance(pairs, str):
        items = list(pairs)
    else:
        raise TypeError(f"{arg} must map student layer names to teacher layer names, got {type(pairs).__name__}")
    out = {}
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            raise TypeError(f"{arg} must hold (student layer, teacher layer) name pairs, got {item!r}")
        out[item[0]] = item[1]
    return out


def _weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _storage_key(t: torch.Tensor) -> tuple:
    """Equal for two tensors that read or write the same memory (views included)."""
    if t.numel() == 0 or t.device.type == "meta" or t.layout != torch.strided:  # no storage of its own to compare
        return ("object", id(t))
    return ("storage", t.device, t.untyped_storage().data_ptr())


def _named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def _check_nothing_shared(student: nn.Module, teacher: nn.Module) -> None:
    """ValueError naming each student tensor (parameter or buffer) whose memory is also one of the teacher's."""
    held = {}
    for name, t in _named_tensors(teacher):
        held.setdefault(_storage_key(t), name)
    shared = [(name, held[k]) for name, t in _named_tensors(student) if (k := _storage_key(t)) in held]
    if shared:
        pairs = ", ".join(f"student {s!r} is teacher {t!r}" for s, t in shared[:5])
        more = f", ... ({len(shared)} in all)" if len(shared) > 5 else ""
        raise ValueError(f"the student shares {len(shared)} tensor(s) with the teacher ({pairs}{more}); training the "
                         "student would change the teacher (its weights, or a BatchNorm's running statistics): give "
                         "the student its own copy of the shared layers, or pass copy.deepcopy(teacher)")


class Distiller:
    """A :func:`~tensorcompress.fit` callback that trains the model being fitted (the student) from ``teacher``.

    Parameters
    ----------
    teacher : nn.Module
        Returns ``N × K`` logits (or ``(logits, features...)``) like the student; an
        :class:`~tensorcompress.distillation.Ensemble` works. Never trained; its mode and device are restored.
    T, alpha : float
        Temperature (``> 0``) and weight of the soft targets (``[0, 1]``) of :func:`kd_loss`.
    hints : mapping student layer → teacher layer, optional
        FitNets pairs; each gets a regressor (:func:`hint_regressor`) trained with the student.
    hint_weight : float
        :math:`\\lambda_h \\ge 0`, the weight of the hint terms.
    attention : mapping student layer → teacher layer, optional
        Attention-transfer pairs (maps of equal spatial size).
    beta : float
        :math:`\\beta \\ge 0` of :func:`attention_transfer_loss`.
    example_input : torch.Tensor, optional
        A batch of inputs for sizing the regressors (required with ``hints``; :func:`distill` takes it from the
        training data). Run once through both networks in eval mode, without gradients.
    cache_teacher : bool
        Compute the teacher's logits once per distinct input and reuse them (module docstring: for training data
        without augmentation; not with ``hints`` or ``attention``). ``Distiller.teacher_calls`` counts the samples
        the teacher actually ran on.

    Use it as a context manager (or call :meth:`close`) so that the hooks are removed and the teacher restored even
    when training fails; ``on_train_end`` does the same after a run that completes.
    """

    def __init__(self, teacher: nn.Module, *, T: float = 4.0, alpha: float = 0.9,
                 hints: Mapping[str, str] | None = None, hint_weight: float = 1.0,
                 attention: Mapping[str, str] | None = None, beta: float = 1.0,
                 example_input: torch.Tensor | None = None, cache_teacher: bool = False) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher
        self.T, self.alpha = T, alpha
        self.hints, self.attention = _pairs(hints, "hints"), _pairs(attention, "attention")
        self.hint_weight, self.beta = _weight(hint_weight, "hint_weight"), _weight(beta, "beta")
        if self.hints and not isinstance(example_input, torch.Tensor):
            raise ValueError("hints need example_input (a batch of inputs) to size their regressors; distill() "
                             "passes one from the training data")
        self.example_input = example_input
        if not isinstance(cache_teacher, bool):
            raise TypeError(f"cache_teacher must be True or False, got {cache_teacher!r}")
        if cache_teacher and (self.hints or self.attention):
            raise ValueError("cache_teacher=True caches the teacher's logits only; hints and attention need its "
                             "features of every batch: leave cache_teacher off with them")
        self._cache: dict[bytes, torch.Tensor] | None = {} if cache_teacher else None
        self.teacher_calls = 0
        # the teacher's layers are checked now, the student's when fit starts
        self._teacher_hooks = FeatureHooks(teacher, [*self.hints.values(), *self.attention.values()],
                                           arg="hints/attention (teacher layers)")
        self._student_hooks: FeatureHooks | None = None
        self.regressors = nn.ModuleDict()
        self._teacher_logits: torch.Tensor | None = None
        self._saved: tuple[dict[nn.Module, bool], torch.device | None] | None = None
        self._shared_modules: list[nn.Module] = []

    # ------------------------------------------------------------ hyperparameters (a callback may anneal them)

    T = Checked(check_temperature, "The temperature; may be changed between batches (validated: ``> 0``).")
    alpha = Checked(check_alpha, "The weight of the soft targets; may be changed between batches (validated: in "
                                 "``[0, 1]``).")

    # ------------------------------------------------------------ teacher

    def _teacher_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher_calls += x.shape[0]
        # a module shared with the student (tensor-free: _check_nothing_shared) is in the mode training gave it
        modes = {m: m.training for m in self._shared_modules}
        for m in modes:
            m.training = False
        try:
            with torch.no_grad():
                return split_outputs(self.teacher(to_model(x, x.device, dtype_of(self.teacher))))[0]
        finally:
            for m, mode in modes.items():
                m.training = mode

    def _cached_teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x``, from the cache where present; the missing rows run as one batch."""
        rows = x.detach().reshape(x.shape[0], -1).cpu().contiguous().view(torch.uint8)  # any dtype, as bytes
        keys = [hashlib.blake2b(r.numpy().tobytes(), digest_size=16).digest() for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            new = self._teacher_forward(x[missing])
            for i, z in zip(missing, new, strict=True):
                self._cache.setdefault(keys[i], z)  # a sample repeated within the batch keeps its first result
        return torch.stack([self._cache[k] for k in keys]).to(x.device)

    def _freeze_teacher(self, device: torch.device) -> None:
        self._saved = ({m: m.training for m in self.teacher.modules()}, device_of(self.teacher))
        self.teacher.eval()
        self.teacher.to(device)

    def _restore_teacher(self) -> None:
        if self._saved is None:
            return
        modes, home = self._saved
        if home is not None:
            self.teacher.to(home)
        for m, mode in modes.items():
            m.training = mode
        self._saved = None

    # ------------------------------------------------------------ hooks of fit

    def on_train_begin(self, state) -> None:
        student = state.model
        if student is self.teacher:
            raise ValueError("the teacher must not be the model being trained")
        _check_nothing_shared(student, self.teacher)
        in_student = {id(m) for m in student.modules()}
        self._shared_modules = [m for m in self.teacher.modules() if id(m) in in_student]
        self._student_hooks = FeatureHooks(student, [*self.hints, *self.attention],
                                           arg="hints/attention (student layers)")
        self._check_hooked_layers_not_shared(student)
        self._freeze_teacher(state.device)
        self._teacher_hooks.attach()
        self._student_hooks.attach()
        if self.hints:
            self._build_regressors(state)

    def _check_hooked_layers_not_shared(self, student: nn.Module) -> None:
        """ValueError for a hint or attention layer that is one module in both networks: its forward hooks would fire
        in both forward passes, so the teacher's recorded features would be the student's."""
        shared = {id(m) for m in self._shared_modules}
        for hooks, whose in ((self._teacher_hooks, "teacher"), (self._student_hooks, "student")):
            layers = dict(hooks.model.named_modules())
            for name in hooks.names:
                if id(layers[name]) in shared:
                    raise ValueError(f"hints/attention: the {whose} layer {name!r} is also a layer of the "
                                     f"{'student' if whose == 'teacher' else 'teacher'}; its hooks would record both "
                                     "networks' outputs: give the student its own copy of it")

    def _build_regressors(self, state) -> None:
        """One regressor per hint pair, sized on ``example_input``, on the student's device and dtype, added to the
        optimizer as one param group (its defaults: lr, weight decay)."""
        student = state.model
        dtype = dtype_of(student)
        x = self.example_input.to(state.device, dtype)
        with kept_modes(student, False), torch.no_grad():  # no batch-norm statistics updated, no dropout
            student(x)
            self._teacher_forward(x)
        self.regressors = nn.ModuleDict()
        for k, (s_name, t_name) in enumerate(self.hints.items()):
            reg = hint_regressor(self._student_hooks[s_name], self._teacher_hooks[t_name])
            self.regressors[str(k)] = reg.to(device=state.device, dtype=dtype)
        state.optimizer.add_param_group({"params": list(self.regressors.parameters())})

    def on_batch_begin(self, state) -> None:
        x = state.batch[0]
        self._teacher_logits = self._teacher_forward(x) if self._cache is None else self._cached_teacher_logits(x)

    def on_loss(self, state) -> None:
        z, y = state.outputs, state.batch[1]
        if z.shape[0] == 0:  # an empty shard in data-parallel training: keep fit's zero loss
            return
        v = self._teacher_logits
        if v.shape != z.shape:
            raise ValueError(f"the teacher's logits have shape {tuple(v.shape)} but the student's {tuple(z.shape)}: "
                             "they must classify the same classes")
        z, y = per_token(z, y)  # a language model's (B, T, V) logits, (B, T) targets: one prediction per token
        v = v.reshape(z.shape)
        loss = kd_loss(z, v.to(z.dtype), y, T=self.T, alpha=self.alpha)
        for k, (s_name, t_name) in enumerate(self.hints.items()):
            h = hint_loss(self._student_hooks[s_name], self._teacher_hooks[t_name], self.regressors[str(k)])
            loss = loss + self.hint_weight * h
        for s_name, t_name in self.attention.items():
            loss = loss + attention_transfer_loss(self._student_hooks[s_name], self._teacher_hooks[t_name],
                                                  beta=self.beta)
        state.loss = loss

    def on_batch_end(self, state) -> None:
        # drop this batch's features and teacher outputs (and the student's graph they hold) before the next forward
        self._teacher_hooks.features.clear()
        self._student_hooks.features.clear()
        self._teacher_logits = None

    def on_train_end(self, state) -> None:
        self.close()

    # ------------------------------------------------------------ clean-up

    def close(self) -> None:
        """Remove the hooks, restore the teacher's modes and device, drop the cached teacher outputs."""
        self._teacher_hooks.remove()
        if self._student_hooks is not None:
            self._student_hooks.remove()
        self._restore_teacher()
        self._teacher_logits = None
        if self._cache is not None:
            self._cache.clear()  # the teacher may change before this distiller is used again

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_inputs(data: object, n: int = 2) -> torch.Tensor:
    """A batch of (up to) ``n`` inputs from a Dataset or DataLoader, for sizing regressors."""
    if isinstance(data, DataLoader):
        return next(iter(data))[0]
    if isinstance(data, Dataset):
        k = min(n, len(data))
        return default_collate([data[i] for i in range(k)])[0]
    raise TypeError(f"train must be a torch Dataset or DataLoader, got {type(data).__name__}")


def distill(student: nn.Module, teacher: nn.Module, train, *, T: float = 4.0, alpha: float = 0.9,
            hints: Mapping[str, str] | None = None, hint_weight: float = 1.0,
            attention: Mapping[str, str] | None = None, beta: float = 1.0, cache_teacher: bool = False,
            callbacks=None, **fit_options) -> list[dict[str, float]]:
    r"""Train ``student`` **in place** from ``teacher`` with :func:`~tensorcompress.fit`; return fit's history.

    The loss is :func:`kd_loss` (``T``, ``alpha``) plus the hint and attention terms of the named layer pairs
    (:class:`Distiller`, module docstring). The history's ``loss`` is that total; ``accuracy`` and
    ``test_accuracy`` are the student's.

    Parameters
    ----------
    student, teacher : nn.Module
        The teacher is left as it was (parameters, buffers, ``requires_grad``, per-module train/eval mode,
        device). A student holding one of the teacher's parameters or buffers is a ``ValueError`` naming both
        (:class:`Distiller`, module docstring).
    train : Dataset or DataLoader
        ``(inputs, targets)``; the teacher sees the same batches as the student.
    T, alpha, hints, hint_weight, attention, beta, cache_teacher
        As in :class:`Distiller`.
    callbacks : sequence, optional
        More callbacks, run after the distiller's.
    **fit_options
        Passed to :func:`~tensorcompress.fit` (``epochs``, ``lr``, ``batch_size``, ``seed``, ``test``, ...);
        ``loss_fn`` is refused (the distiller sets the loss).

    Examples
    --------
    >>> train, test = tc.data.load_digits()
    >>> teacher = tc.models.SmallCNN(input_size=8); tc.fit(teacher, train, epochs=5)
    >>> student = tc.models.SmallCNN(input_size=8, channels=(8, 16))
    >>> history = tc.distillation.distill(student, teacher, train, T=4.0, alpha=0.9, epochs=5,
    ...                                   attention={"features.0": "features.0"}, test=test)
    """
    if "loss_fn" in fit_options:
        raise TypeError("distill sets the loss (kd_loss + hints + attention); loss_fn is not allowed")
    example = _first_inputs(train) if hints else None
    with Distiller(teacher, T=T, alpha=alpha, hints=hints, hint_weight=hint_weight, attention=attention, beta=beta,
                   example_input=example, cache_teacher=cache_teacher) as distiller:
        return fit(student, train, callbacks=[distiller, *(callbacks or ())], **fit_options)

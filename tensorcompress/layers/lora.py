r"""Low-rank adapters (LoRA; Hu et al. 2021): fine-tune a frozen linear map through a trainable low-rank update.

A frozen layer :math:`y = W x + b` (:math:`W \in \mathbb R^{m \times n}`) gets a parallel path through
:math:`A \in \mathbb R^{r \times n}` and :math:`B \in \mathbb R^{m \times r}`,

.. math:: y = W x + b + \frac{\alpha}{r} B A x,

and only :math:`A` and :math:`B` are trained: :math:`r(m + n)` parameters instead of :math:`mn`. :math:`A` starts
Kaiming-uniform and :math:`B` at zero, so the adapted model equals the base one at initialisation and the update
grows from there. The scale :math:`\alpha/r` (``alpha=None`` meaning :math:`\alpha = r`, a scale of 1) keeps the size
of the update's initial steps from depending on the rank.

**Merging.** After training, :math:`W' = W + \frac{\alpha}{r} BA` is one matrix of the base's shape: the adapted
layer becomes a plain ``nn.Linear`` again and costs nothing at inference (:func:`merge_lora`). A base whose weight is
stored quantized (a weight-only layer: QLoRA, Dettmers et al. 2023, trains adapters over NF4 weights) cannot absorb
the update without quantizing it again; such a layer keeps its adapters, whose
:math:`r(m + n)` parameters are counted beside the base's bytes.

**Storage.** Rank :math:`r` on a layer of :math:`m \times n` weights adds :math:`r(m + n)` parameters, a fraction
:math:`r(m + n)/(mn)` of the layer (rank 8 on a :math:`128 \times 128` projection: 12.5 %; on a
:math:`512 \times 128` MLP layer: 7.8 %).

Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen (2021), "LoRA: low-rank adaptation of large language models",
ICLR 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import surgery
from .._validation import check_int_in, check_real, compute_dtype
from ..surgery import Detail, LayerChange, Patterns, Selected

__all__ = ["LoRALinear", "LoRALayer", "LoRAReport", "add_lora", "merge_lora"]


def _check_base(base: object) -> nn.Module:
    if not isinstance(base, nn.Module):
        raise TypeError(f"base must be a torch.nn.Module computing a linear map, got {type(base).__name__}")
    for attr in ("in_features", "out_features"):
        value = getattr(base, attr, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TypeError(f"base must have a positive int {attr} (an nn.Linear or a layer computing a linear map), "
                            f"got {type(base).__name__} with {attr}={value!r}")
    return base


def _float_dtype(base: nn.Module) -> torch.dtype:
    """The dtype the adapters are built in: the base's first floating parameter's (an ``nn.Linear``'s weight, a
    weight-only layer's bias), else torch's default."""
    p = next((p for p in base.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.get_default_dtype()


class LoRALinear(nn.Module):
    r"""``y = base(x) + (alpha / rank) · lora_b(lora_a(x))``: a frozen linear map plus a trainable low-rank update.

    Parameters
    ----------
    base : nn.Module
        Any module with ``in_features`` / ``out_features`` computing a linear map (an ``nn.Linear``, a weight-only
        quantized layer). Kept as the submodule ``base`` (not copied) and frozen: its parameters'
        ``requires_grad`` is set to ``False``.
    rank : int
        :math:`r`, ``1 <= rank <= min(in_features, out_features)``.
    alpha : float, optional
        :math:`\alpha > 0`; the update is scaled by :math:`\alpha/r`. ``None``: :math:`\alpha = r`.
    seed : int
        Seeds the Kaiming-uniform draw of :math:`A` (drawn in float32 on the CPU, then cast and moved, so a seed
        gives the same :math:`A` on every device).

    Attributes
    ----------
    lora_a : nn.Linear
        :math:`A`, ``nn.Linear(in_features, rank, bias=False)``, Kaiming-uniform as ``nn.Linear``'s default.
    lora_b : nn.Linear
        :math:`B`, ``nn.Linear(rank, out_features, bias=False)``, zero.
    rank, alpha, scaling : int, float, float
        :math:`r`, :math:`\alpha` and :math:`\alpha/r`.

    The adapters are built on the base's device, in the dtype of its first floating parameter.
    """

    def __init__(self, base: nn.Module, *, rank: int, alpha: float | None = None, seed: int = 0) -> None:
        super().__init__()
        base = _check_base(base)
        m, n = base.out_features, base.in_features
        self.rank = check_int_in(rank, "rank", 1, min(m, n), why=f" (min(in_features, out_features) = {min(m, n)})")
        self.alpha = float(rank) if alpha is None else check_real(alpha, "alpha")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (the update is scaled by alpha / rank), got {alpha!r}")
        check_int_in(seed, "seed", 0, 2**63 - 1)
        self.scaling = self.alpha / self.rank
        self.in_features, self.out_features = n, m
        self.base = base.requires_grad_(False)
        kwargs = {"device": surgery.device_of(base), "dtype": _float_dtype(base)}
        self.lora_a = nn.Linear(n, self.rank, bias=False, **kwargs)
        self.lora_b = nn.Linear(self.rank, m, bias=False, **kwargs)
        a = torch.empty(self.rank, n)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            self.lora_a.weight.copy_(a)
            self.lora_b.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        r""":math:`\frac{\alpha}{r} BA` (``out_features × in_features``), computed in float32 for half-precision
        adapters and returned in their dtype."""
        b = self.lora_b.weight
        return self._delta(compute_dtype(b, "lora_b.weight")).to(b.dtype)

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        b, a = self.lora_b.weight.detach(), self.lora_a.weight.detach()
        return self.scaling * (b.to(dtype) @ a.to(dtype))

    def merged(self) -> nn.Linear:
        r"""The ``nn.Linear`` with weight :math:`W + \frac{\alpha}{r} BA` and the base's bias (same device and dtype,
        ``requires_grad`` as the base's parameters); ``TypeError`` when the base is not an ``nn.Linear``."""
        if type(self.base) is not nn.Linear:
            raise TypeError(f"only an nn.Linear base can absorb its adapters, got {type(self.base).__name__}: a "
                            f"quantized weight would have to be quantized again. Keep the adapters (LoRALinear) and "
                            f"count their bytes beside the base's")
        w = self.base.weight.detach()
        dtype = compute_dtype(w, "base.weight")
        merged = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None, device=w.device,
                           dtype=w.dtype)
        with torch.no_grad():
            merged.weight.copy_(w.to(dtype) + self._delta(dtype))  # one rounding, at the end
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        for name, p in merged.named_parameters():
            p.requires_grad_(getattr(self.base, name).requires_grad)
        return merged

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}")


@dataclass(frozen=True)
class LoRALayer(LayerChange):
    """One row of :func:`add_lora`'s or :func:`merge_lora`'s report (a :class:`~tensorcompress.surgery.LayerChange`)
    with the adapter's ``rank`` and ``alpha``."""

    rank = Detail(int, "The adapter's rank :math:`r`.")
    alpha = Detail(float, r"The adapter's :math:`\alpha` (the update is scaled by :math:`\alpha/r`).")


class LoRAReport(list):
    """What :func:`add_lora` did: the list of :class:`LoRALayer` rows, one per adapted layer, with the parameter
    counts of the new model.

    Parameters
    ----------
    layers : list of LayerChange
        The rows.
    trainable : int
        Parameter entries that require gradients (the adapters).
    total : int
        Every parameter entry of the new model, base and adapters.
    """

    def __init__(self, layers: list[LayerChange], trainable: int, total: int) -> None:
        super().__init__(layers)
        self.trainable, self.total = trainable, total

    @property
    def layers(self) -> list[LayerChange]:
        """The rows, as a plain list."""
        return list(self)

    @property
    def fraction(self) -> float:
        """``trainable / total``: the share of the adapted model's parameters that training updates."""
        return self.trainable / self.total

    @property
    def fraction_of_base(self) -> float:
        """``trainable / (total - trainable)``: the adapters' size relative to the model they adapt."""
        return self.trainable / (self.total - self.trainable)

    def __str__(self) -> str:
        summary = (f"{self.trainable:,} of {self.total:,} parameters trainable ({100 * self.fraction:.2f} %; "
                   f"{100 * self.fraction_of_base:.2f} % of the base model's {self.total - self.trainable:,})")
        return "\n".join([*map(str, self), summary])


def _linear_maps(model: nn.Module) -> tuple[type, ...]:
    """The classes of ``model``'s modules with int ``in_features`` / ``out_features`` (an ``nn.Linear``, a
    factorised or weight-only layer), adapters excepted."""
    return tuple({type(m) for m in model.modules()
                  if isinstance(getattr(m, "in_features", None), int)
                  and isinstance(getattr(m, "out_features", None), int) and not isinstance(m, LoRALinear)})


def _outermost(model: nn.Module, chosen: list[Selected]) -> list[Selected]:
    """``chosen`` without the modules that sit inside another chosen one, inside an adapter (the inner
    ``nn.Linear`` of a factorised layer, an adapter's base) or inside an ``nn.MultiheadAttention`` (which reads its
    ``out_proj.weight`` directly instead of calling it)."""
    inside = {id(sub) for sel in chosen for sub in list(sel.module.modules())[1:]}
    inside |= {id(sub) for m in model.modules() if isinstance(m, LoRALinear | nn.MultiheadAttention)
               for sub in m.modules()}
    return [sel for sel in chosen if id(sel.module) not in inside]


def add_lora(model: nn.Module, *, rank: int, alpha: float | None = None, seed: int = 0, include: Patterns = None,
             exclude: Patterns = None) -> tuple[nn.Module, LoRAReport]:
    r"""A copy of ``model`` whose linear layers are wrapped in :class:`LoRALinear` adapters, the only trainable
    parameters.

    Parameters
    ----------
    model : nn.Module
        Not modified (copied).
    rank : int
        :math:`r` of every adapter, ``1 <= rank <= min(in_features, out_features)`` of each selected layer.
    alpha : float, optional
        :math:`\alpha`; ``None``: :math:`\alpha = r`.
    seed : int
        Seeds :math:`A` of every adapter (the same draw for layers of equal shape, as each adapter seeds its own).
    include, exclude : str or sequence of str, optional
        ``fnmatch`` patterns on module names, as :func:`tensorcompress.surgery.select` reads them. Candidates: every
        module with int ``in_features`` / ``out_features`` (``nn.Linear``, a factorised or weight-only layer), the
        outermost one where they nest; modules inside an adapter or an ``nn.MultiheadAttention`` (which reads its
        projection's weight without calling it) are never candidates.

    Returns
    -------
    (nn.Module, LoRAReport)
        The new model, in which every parameter but the adapters' :math:`A` and :math:`B` has
        ``requires_grad=False``, and the report (one :class:`LoRALayer` per adapted layer, trainable and total
        parameter counts). A weight tied between layers stays tied: each base is kept as it is.

    Examples
    --------
    >>> import torch, tensorcompress as tc
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    >>> adapted, report = tc.layers.add_lora(net, rank=4)
    >>> report.trainable, report.total  # 4 · (64 + 32) + 4 · (32 + 10) adapters beside 2,410 weights and biases
    (552, 2962)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int_in(rank, "rank", 1, 2**31)
    types = _linear_maps(model) or (nn.Linear,)
    chosen = _outermost(model, surgery.select(model, types, include=include, exclude=exclude, action="add_lora"))
    small = [(s.name, min(s.module.in_features, s.module.out_features)) for s in chosen
             if rank > min(s.module.in_features, s.module.out_features)]
    if small:
        raise ValueError(f"rank={rank} exceeds min(in_features, out_features) of layers {small}; lower the rank or "
                         f"leave them out with exclude=")

    def build(sel: Selected) -> tuple[nn.Module, dict]:
        new = LoRALinear(sel.module, rank=rank, alpha=alpha, seed=seed)
        return new, {"rank": new.rank, "alpha": new.alpha}

    new_model, rows = surgery.transform(model, types, build, include=chosen, allow_tied=True, row_type=LoRALayer,
                                        action="add_lora")
    new_model.requires_grad_(False)
    for m in new_model.modules():
        if isinstance(m, LoRALinear):
            m.lora_a.requires_grad_(True)
            m.lora_b.requires_grad_(True)
    trainable = sum(p.numel() for p in new_model.parameters() if p.requires_grad)
    return new_model, LoRAReport(rows, trainable, sum(p.numel() for p in new_model.parameters()))


def merge_lora(model: nn.Module, *, include: Patterns = None, exclude: Patterns = None
               ) -> tuple[nn.Module, list[LoRALayer]]:
    r"""A copy of ``model`` whose :class:`LoRALinear` adapters are merged into their ``nn.Linear`` bases:
    :math:`W' = W + \frac{\alpha}{r} BA` (:meth:`LoRALinear.merged`).

    Parameters
    ----------
    model : nn.Module
        Not modified (copied).
    include, exclude : str or sequence of str, optional
        ``fnmatch`` patterns on the names of the :class:`LoRALinear` modules (default: all).

    Returns
    -------
    (nn.Module, list of LoRALayer)
        The new model, whose outputs equal the adapted model's to the rounding of its dtype, and one row per merged
        layer. Every ``requires_grad`` flag stays as it was (a merged layer takes its base's: frozen after
        :func:`add_lora`; ``model.requires_grad_(True)`` makes all trainable).

    Raises
    ------
    ValueError
        A selected adapter whose base is not an ``nn.Linear`` (a weight-only quantized layer): its weight would have
        to be quantized again. Keep such adapters (leave them out with ``exclude=``) and count their bytes beside the
        base's. A base whose weight is tied to another layer is refused too (merging would untie it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chosen = surgery.select(model, LoRALinear, include=include, exclude=exclude, action="merge_lora")
    refused = [f"{s.name} ({type(s.module.base).__name__})" for s in chosen if type(s.module.base) is not nn.Linear]
    if refused:
        raise ValueError(f"merge_lora: the bases of {refused} are not nn.Linear, so they cannot absorb their adapters "
                         f"(a quantized weight would have to be quantized again). Keep those adapters, leaving them "
                         f"out with exclude=, and count their bytes beside the base's")

    def build(sel: Selected) -> tuple[nn.Module, dict]:
        return sel.module.merged(), {"rank": sel.module.rank, "alpha": sel.module.alpha}

    return surgery.transform(model, LoRALinear, build, include=chosen, row_type=LoRALayer, action="merge_lora")

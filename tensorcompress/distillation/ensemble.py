r"""Ensembles of classifiers ("model fusion"): one ``nn.Module`` that averages its members.

For members :math:`m = 1..M` with logits :math:`z^{(m)}` the ensemble returns scores :math:`s` whose ``argmax`` is
its prediction and whose softmax is its class distribution, so it can be evaluated, measured and used as a teacher:

* ``"mean_logits"``: :math:`s = \frac1M \sum_m z^{(m)}` (a geometric mean of the members' distributions; summed in
  float64, so float32 logits near float32's largest number do not overflow);
* ``"mean_probs"``: :math:`s = \log \frac1M \sum_m \mathrm{softmax}(z^{(m)})`, computed as
  ``logsumexp(log_softmax(z), over m) - log M`` (no probability that underflowed is logged);
* ``"vote"``: :math:`s = \log \max(f, \epsilon)` with :math:`f_k` the fraction of members whose ``argmax`` is
  :math:`k` and :math:`\epsilon` the dtype's smallest normal number (finite scores; ties go to the lower class
  index; its softmax is the vote distribution up to :math:`\epsilon`).

Cost: the sum of the members' parameters, bytes and FLOPs; :func:`~tensorcompress.model_size_bytes` of an ensemble
counts every member (their state dicts are its state dict). Distilling an ensemble into one network is the cheap
way to keep most of its accuracy (Hinton et al. 2015, Sec. 3; Bucilă, Caruana & Niculescu-Mizil 2006).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..train.loop import split_outputs

__all__ = ["Ensemble"]

MODES = ("mean_logits", "mean_probs", "vote")


class Ensemble(nn.Module):
    """The members' predictions combined by ``mode`` (module docstring).

    Parameters
    ----------
    models : sequence of nn.Module
        At least one member; each returns ``N × K`` logits (or ``(logits, features...)``, of which the logits are
        used) with the same ``K``. They are held, not copied: training the ensemble trains them.
    mode : {"mean_logits", "mean_probs", "vote"}
    """

    def __init__(self, models: Iterable[nn.Module], mode: str = "mean_logits") -> None:
        super().__init__()
        if isinstance(models, nn.Module) and not isinstance(models, nn.ModuleList | nn.Sequential):
            raise TypeError(f"models must be a sequence of nn.Module, got a single {type(models).__name__}")
        if not isinstance(models, Iterable):
            raise TypeError(f"models must be a sequence of nn.Module, got {type(models).__name__}")
        models = list(models)
        if not models:
            raise ValueError("models must hold at least one model, got an empty sequence")
        for k, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{k}] must be an nn.Module, got {type(m).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.members = nn.ModuleList(models)
        self.mode = mode

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: ``M × N × K``."""
        outs = [split_outputs(m(x))[0] for m in self.members]
        for k, z in enumerate(outs):
            if z.shape != outs[0].shape or z.ndim != 2:
                raise ValueError(f"the ensemble's members must return N × K logits of one shape: models[0] gave "
                                 f"{tuple(outs[0].shape)}, models[{k}] gave {tuple(z.shape)}")
        return torch.stack(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.member_logits(x)
        if self.mode == "mean_logits":
            # accumulated in float64 (at least): a float32 sum of logits near float32's largest number overflowed
            return z.mean(0, dtype=torch.promote_types(z.dtype, torch.float64)).to(z.dtype)
        if self.mode == "mean_probs":
            return torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - math.log(z.shape[0])
        votes = F.one_hot(z.argmax(-1), z.shape[-1]).sum(0).to(z.dtype) / z.shape[0]
        return votes.clamp_min(torch.finfo(z.dtype).tiny).log()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

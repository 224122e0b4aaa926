"""Knowledge distillation: teaching a small (or compressed) network from a larger one, or from an ensemble.

* :func:`kd_loss` — soft targets at temperature ``T`` weighted by ``alpha`` against the labels (Hinton et al. 2015;
  the :math:`T^2` factor derived in :mod:`~tensorcompress.distillation.losses`), for class scores or a language
  model's per-token logits (averaged over the tokens, ``ignore_index`` left out);
* :func:`hint_loss` with :func:`hint_regressor` (FitNets) and :func:`attention_transfer_loss` /
  :func:`attention_map` (Zagoruyko & Komodakis 2017) on features captured by :class:`FeatureHooks`;
* :func:`distill` and the :class:`Distiller` callback: teacher–student training on :func:`~tensorcompress.fit`;
* :class:`Ensemble` — several networks averaged into one module, usable as a teacher.

The student can be any network, including one factorised, pruned or quantized by this library: distillation only
needs its logits (and, for hints and attention, the names of its layers).
"""

from .distiller import Distiller, distill
from .ensemble import Ensemble
from .hooks import FeatureHooks
from .losses import attention_map, attention_transfer_loss, hint_loss, hint_regressor, kd_loss

__all__ = [
    "kd_loss",
    "hint_loss",
    "hint_regressor",
    "attention_map",
    "attention_transfer_loss",
    "FeatureHooks",
    "Distiller",
    "distill",
    "Ensemble",
]

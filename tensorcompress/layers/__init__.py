"""Factorised layers: drop-in replacements for ``nn.Linear`` and ``nn.Conv2d`` built from matrix and tensor
decompositions, and :func:`factorize` to convert a trained model.

* :class:`LowRankLinear` — truncated SVD (Denton et al. 2014);
* :class:`CPConv2d` — CP kernel as 1×1 → k×1 → 1×k → 1×1 (Lebedev et al. 2015);
* :class:`TuckerConv2d` — Tucker-2 kernel as 1×1 → k×k → 1×1 (Kim et al. 2016), ranks by :func:`evbmf`;
* :class:`TTLinear` — TT-matrix weight (Novikov et al. 2015);
* :class:`LoRALinear` — a frozen linear map plus a trainable low-rank update (Hu et al. 2021), with
  :func:`add_lora` and :func:`merge_lora`.

Each factorised layer has ``from_linear`` / ``from_conv``, ``rank``, ``n_params`` and ``to_dense()``, follows the
device and dtype of the layer it replaces (a float16 / bfloat16 weight is decomposed in float32, the library's one
dtype rule, and the layer built in the weight's dtype), and compiles with ``torch.jit.script``. :func:`factorize`,
:func:`add_lora` and :func:`merge_lora` are built on :mod:`tensorcompress.surgery`, like every whole-model transform.
"""

from .cp_conv import CPConv2d, cp_exact_rank
from .factorize import FactorizedLayer, factorize, tt_modes
from .lora import LoRALayer, LoRALinear, LoRAReport, add_lora, merge_lora
from .low_rank_linear import LowRankLinear
from .tt_linear import TTLinear, factor_dimension
from .tucker_conv import TuckerConv2d, tucker2_ranks
from .vbmf import VBMFResult, evbmf, evbmf_tau

__all__ = [
    "LowRankLinear",
    "CPConv2d",
    "cp_exact_rank",
    "TuckerConv2d",
    "tucker2_ranks",
    "TTLinear",
    "factor_dimension",
    "VBMFResult",
    "evbmf",
    "evbmf_tau",
    "factorize",
    "FactorizedLayer",
    "tt_modes",
    "LoRALinear",
    "LoRALayer",
    "LoRAReport",
    "add_lora",
    "merge_lora",
]

"""Pruning: importance criteria, masks through ``torch.nn.utils.prune``, physical removal of pruned filters and
neurons, schedules. Sparse storage (CSR with relative indices) is in :mod:`tensorcompress.export`.

``tc.pruning.prune(model, amount=...)`` masks; ``tc.pruning.shrink(model, example_input)`` makes the pruned
network physically smaller; ``tc.pruning.wanda`` and ``tc.pruning.sparsegpt`` prune from calibration data, one
layer at a time (:mod:`~tensorcompress.pruning.llm`). See each submodule's docstring for the formulas and papers.
"""

from .criteria import *  # noqa: F403
from .criteria import __all__ as _criteria_all
from .llm import CalibratedPrunedLayer, sparsegpt, sparsegpt_layer, wanda
from .masks import *  # noqa: F403
from .masks import __all__ as _masks_all
from .schedules import *  # noqa: F403
from .schedules import __all__ as _schedules_all
from .shrink import ShrunkLayer, shrink

__all__ = [*_criteria_all, *_masks_all, *_schedules_all, "shrink", "ShrunkLayer", "wanda", "sparsegpt_layer",
           "sparsegpt", "CalibratedPrunedLayer"]

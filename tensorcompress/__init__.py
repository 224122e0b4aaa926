"""tensorcompress: compressing deep networks — a tested reference library behind a graded notebook series.

``import tensorcompress as tc`` gives the whole public API:

* tensor algebra (:mod:`tensorcompress.tensor`): ``unfold``, ``fold``, ``mode_dot``, ``multi_mode_dot``,
  ``khatri_rao``, ``kronecker``, ``relative_error``;
* decompositions (:mod:`tensorcompress.decompositions`): CP, Tucker and tensor-train;
* factorised layers (:mod:`tensorcompress.layers`) and ``factorize``;
* the workbench: :mod:`tensorcompress.data`, :mod:`tensorcompress.models`, :mod:`tensorcompress.train`,
  :mod:`tensorcompress.metrics`;
* model surgery shared by every whole-model transform (:mod:`tensorcompress.surgery`);
* pruning (:mod:`tensorcompress.pruning`, as ``tc.pruning``): criteria, masks, ``shrink``, schedules;
* knowledge distillation and ensembles (:mod:`tensorcompress.distillation`);
* pipelines: Deep Compression, structure search (:mod:`tensorcompress.pipelines`);
* the compressed-model file and its coders (:mod:`tensorcompress.export`);
* checks for the notebooks' exercises (:mod:`tensorcompress.exercises`);
* measurement, the leaderboard and mean ± std over seeds (:mod:`tensorcompress.metrics`);
* quantization: uniform and non-uniform quantizers, observers, fake-quantized, integer-only and half-precision
  models (:mod:`tensorcompress.quantization`);
* ``available_devices``.
"""

from . import (
    data,
    decompositions,
    distillation,
    exercises,
    export,
    layers,
    metrics,
    models,
    pipelines,
    pruning,
    quantization,
    surgery,
    train,
)
from .decompositions import *  # noqa: F403
from .devices import available_devices
from .layers import *  # noqa: F403
from .metrics import *  # noqa: F403
from .tensor import fold, khatri_rao, kronecker, mode_dot, multi_mode_dot, relative_error, unfold
from .train import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "available_devices",
    "fold",
    "khatri_rao",
    "kronecker",
    "mode_dot",
    "multi_mode_dot",
    "relative_error",
    "unfold",
    "data",
    "decompositions",
    "distillation",
    "exercises",
    "export",
    "layers",
    "metrics",
    "models",
    "pipelines",
    "pruning",
    "quantization",
    "surgery",
    "train",
]
__all__ += decompositions.__all__ + layers.__all__ + metrics.__all__ + train.__all__

"""Quantization: uniform (affine and symmetric) quantizers bit-exact with PyTorch's fake-quant kernels.

* :mod:`~tensorcompress.quantization.uniform` — :class:`QParams`, :func:`qparams`, :func:`quantize`,
  :func:`dequantize`, :func:`fake_quantize`;
* :mod:`~tensorcompress.quantization.observers` — ranges from data: min-max, moving average, percentile, MSE;
* :mod:`~tensorcompress.quantization.nonuniform` — power-of-two, binary, ternary and k-means (shared) weights,
  :func:`share_weights` for whole models (dense, or pruned with ``keep_zeros=True``: the one weight sharing of
  the library, also Deep Compression's stage 2 in :mod:`tensorcompress.pipelines`);
* :mod:`~tensorcompress.quantization.model` — :func:`quantize_model` (PTQ, QAT, LSQ) and :func:`calibrate`;
* :mod:`~tensorcompress.quantization.integer` — integer-only inference: :func:`quantize_multiplier`,
  :func:`to_integer`;
* :mod:`~tensorcompress.quantization.precision` — half precision: :func:`to_half`, :func:`autocast`;
* :mod:`~tensorcompress.quantization.weight_only` — weight-only layers (:class:`WeightOnlyLinear`: packed codes,
  float16 scales per group) and :func:`quantize_weights` (group-wise round to nearest, NF4);
* :mod:`~tensorcompress.quantization.gptq` — :func:`gptq_layer`, :func:`gptq` (Frantar et al. 2022);
* :mod:`~tensorcompress.quantization.smoothing` — :func:`awq` (Lin et al. 2023), :func:`smoothquant` (Xiao et al.
  2023).
"""

from .gptq import gptq, gptq_layer
from .integer import (
    IntegerAdd,
    IntegerClamp,
    IntegerizedLayer,
    IntegerLayer,
    IntegerMeanPool,
    IntegerNet,
    IntegerRequantize,
    float32_is_exact,
    quantize_multiplier,
    requantize,
    to_integer,
)
from .model import (
    ActivationQuantizer,
    FakeQuantizedAdd,
    FakeQuantizedLayer,
    QuantizedAdd,
    QuantizedLayer,
    WeightQuantizer,
    calibrate,
    lsq_fake_quantize,
    lsq_initial_step,
    quantize_model,
    quantizers,
)
from .nonuniform import (
    SharedLayer,
    SharedWeight,
    binarize,
    centroid_gradient,
    kmeans_quantize,
    log2_quantize,
    pack_indices,
    share_weights,
    ternarize,
    unpack_indices,
)
from .observers import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from .precision import *  # noqa: F403
from .precision import __all__ as _precision_all
from .smoothing import SmoothedLayer, awq, awq_scales, smoothquant
from .uniform import QParams, dequantize, fake_quantize, integer_dtype, qparams, qrange, quantize
from .weight_only import NF4_TABLE, WeightOnlyLayer, WeightOnlyLinear, nf4_levels, quantize_weights, rtn, rtn_grid

__all__ = ["QParams", "qparams", "qrange", "quantize", "dequantize", "fake_quantize", "integer_dtype",
           "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver", "MSEObserver",
           "OBSERVERS", "make_observer",
           "log2_quantize", "binarize", "ternarize", "kmeans_quantize", "centroid_gradient",
           "pack_indices", "unpack_indices", "SharedWeight", "SharedLayer", "share_weights",
           "quantize_model", "calibrate", "quantizers", "lsq_fake_quantize", "lsq_initial_step", "ActivationQuantizer",
           "WeightQuantizer", "QuantizedLayer", "QuantizedAdd", "FakeQuantizedLayer", "FakeQuantizedAdd",
           "quantize_multiplier", "requantize", "float32_is_exact", "to_integer", "IntegerLayer",
           "IntegerMeanPool", "IntegerClamp", "IntegerAdd", "IntegerRequantize", "IntegerNet", "IntegerizedLayer",
           *_precision_all,
           "WeightOnlyLinear", "WeightOnlyLayer", "quantize_weights", "rtn", "rtn_grid", "nf4_levels", "NF4_TABLE",
           "gptq_layer", "gptq", "awq", "awq_scales", "smoothquant", "SmoothedLayer"]

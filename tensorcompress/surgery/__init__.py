r"""Model surgery shared by every whole-model transform: select layers, replace them, report what changed; the one
traced view of a model; conv–BatchNorm folding; the shared facts about a model (copy, device, dtype, modes).

Every transform of a whole model in this library has one shape::

    new_model, report = transform(model, data=None, *, include=None, exclude=None, **options)

with the input model untouched. Submodules:

* :mod:`.core` — :func:`select`, :func:`replace`, :func:`transform`, :func:`tied_parameters`, :func:`per_layer`,
  the report row :class:`LayerChange`;
* :mod:`.model` — :func:`copy_model`, :func:`device_of`, :func:`dtype_of`, :func:`kept_modes`, :func:`inputs_of`,
  :func:`input_batches`;
* :mod:`.graph` — :func:`trace`: the data flow of one forward pass (:class:`Graph`, :class:`Node`);
* :mod:`.groups` — :func:`channel_groups`: the channels that must be removed together (residual additions,
  depthwise convolutions), :class:`ChannelGroup`;
* :mod:`.capture` — :func:`capture_inputs`: what chosen layers receive, for calibration and layer-wise Hessians;
* :mod:`.calibration` — what the data-driven methods share: calibration batches, per-layer input statistics, the
  layers grouped by the tensor they read, the dampened inverse Hessian factor, a layer's relative output error;
* :mod:`.ops` — :class:`Add`: a residual addition as a leaf module, so that quantization can attach to it;
* :mod:`.fusion` — :func:`fuse_conv_bn`: fold each BatchNorm into the layer that feeds it (:class:`FusionReport`).
"""

from .capture import capture_inputs
from .core import *  # noqa: F403
from .core import __all__ as _core_all
from .fusion import FusedLayer, FusionReport, Skipped, fuse_conv_bn
from .graph import Graph, Node, tensors_in, trace
from .groups import ChannelGroup, channel_groups, is_depthwise
from .model import *  # noqa: F403
from .model import __all__ as _model_all
from .ops import Add

__all__ = [*_core_all, *_model_all, "capture_inputs", "Graph", "Node", "trace", "tensors_in", "fuse_conv_bn",
           "FusedLayer", "FusionReport", "Skipped", "Add", "ChannelGroup", "channel_groups", "is_depthwise"]

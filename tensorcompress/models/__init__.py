"""The baseline networks of the series and their trained checkpoints.

* :class:`LeNet300100` — fully connected 784–300–100–10 (Han et al. 2015);
* :class:`LeNet5` — Caffe's LeNet-5, 20–50–500 (Han et al. 2015, 2016);
* :class:`SmallCNN` — a small VGG-style network with BatchNorm;
* :class:`ResNet8` — a residual network (basic blocks, projection shortcuts);
* :class:`MobileNetV2Tiny` — inverted residuals with depthwise convolutions and ReLU6;
* :class:`TinyGPT` — a small decoder-only transformer over character tokens;
* :func:`pretrained` — the trained baselines shipped in the package (hash-checked); :func:`manifest` — their records;
  :func:`baseline` — a baseline's one stored score on the validation or test split.
"""

from .lenet import LeNet5, LeNet300100
from .pretrained import ARCHITECTURES, BaselineScore, baseline, manifest, pretrained
from .residual import MobileNetV2Tiny, ResNet8
from .smallcnn import SmallCNN
from .tinygpt import TinyGPT

__all__ = ["LeNet300100", "LeNet5", "SmallCNN", "ResNet8", "MobileNetV2Tiny", "TinyGPT",
           "pretrained", "manifest", "baseline", "BaselineScore",
           "ARCHITECTURES"]

"""The baseline networks of the series and their trained checkpoints.

* :class:`LeNet300100` — fully connected 784–300–100–10 (Han et al. 2015);
* :class:`LeNet5` — Caffe's LeNet-5, 20–50–500 (Han et al. 2015, 2016);
* :class:`SmallCNN` — a small VGG-style network with BatchNorm;
* :class:`TinyGPT` — a small decoder-only transformer over character tokens;
* :func:`pretrained` — the trained baselines shipped in the package (hash-checked); :func:`manifest` — their records.
"""

from .lenet import LeNet5, LeNet300100
from .pretrained import ARCHITECTURES, manifest, pretrained
from .smallcnn import SmallCNN
from .tinygpt import TinyGPT

__all__ = ["LeNet300100", "LeNet5", "SmallCNN", "TinyGPT", "pretrained", "manifest", "ARCHITECTURES"]

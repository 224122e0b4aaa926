"""The LeNet networks used by Han et al. (2015, 2016) for pruning and Deep Compression on MNIST."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_int

__all__ = ["LeNet300100", "LeNet5"]


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected ``in_features``–300–100–``num_classes`` network with ReLU.

    LeCun et al. (1998), "Gradient-based learning applied to document recognition"; the pruning baseline of
    Han et al. (2015), "Learning both weights and connections for efficient neural networks". With the defaults
    it has :math:`785\\cdot300 + 301\\cdot100 + 101\\cdot10 = 266{,}610` parameters. The input is flattened, so
    ``N × 1 × 28 × 28`` images and ``N × 784`` vectors both work.

    Attributes ``fc1``, ``fc2``, ``fc3`` are the three :class:`torch.nn.Linear` layers.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        check_positive_int(in_features, "in_features")
        check_positive_int(num_classes, "num_classes", minimum=2)
        self.in_features = in_features
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"LeNet300100 expects {self.in_features} input features per sample, got input of shape "
                f"{tuple(x.shape)} after flattening"
            )
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant: conv 20@5×5 → max-pool 2 → conv 50@5×5 → max-pool 2 → fc 500 → ReLU → fc.

    The network of Caffe's ``examples/mnist/lenet_train_test.prototxt`` used by Han et al. (2015, 2016) (no
    non-linearity after the convolutions, as there). With the defaults (28×28 grey-scale input, 10 classes) it
    has :math:`520 + 25{,}050 + 400{,}500 + 5{,}010 = 431{,}080` parameters. The spatial size after the feature
    extractor is :math:`s' = \\lfloor(\\lfloor(s-4)/2\\rfloor - 4)/2\\rfloor`, so ``input_size`` must be at least 16.

    Attributes: ``conv1``, ``conv2`` (:class:`torch.nn.Conv2d`), ``fc1``, ``fc2`` (:class:`torch.nn.Linear`).

    Parameters
    ----------
    in_channels : int
        Channels of the input images (1 for grey-scale).
    num_classes : int
        Outputs of ``fc2``, at least 2.
    input_size : int
        Side of the square input, at least 16.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes", minimum=2)
        check_positive_int(input_size, "input_size")
        if input_size < 16:
            raise ValueError(f"input_size must be >= 16 for LeNet5 (two 5x5 convolutions and two 2x2 pools), "
                             f"got {input_size}")
        self.in_channels, self.input_size = in_channels, input_size
        s = ((input_size - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * s * s, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(
                f"LeNet5 expects input of shape N x {self.in_channels} x {self.input_size} x {self.input_size}, "
                f"got {tuple(x.shape)}"
            )
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

"""A small VGG-style network with BatchNorm: the target of structured pruning and convolution decompositions."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_int

__all__ = ["SmallCNN"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two (3×3 conv, BatchNorm, ReLU) layers then a 2×2 max-pool (Simonyan & Zisserman 2015)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Small VGG-style CNN: two blocks of (3×3 conv–BN–ReLU)×2 + max-pool, global average pool, linear classifier.

    VGG's pattern (Simonyan & Zisserman 2015) with batch normalisation (Ioffe & Szegedy 2015). Convolutions have
    no bias (the following BatchNorm has one). Global average pooling makes the classifier independent of the input
    size, so 8×8 digits (8 → 4 → 2) and 28×28 MNIST (28 → 14 → 7) both work; ``input_size`` must be at least 4.
    With ``channels=(32, 64)``, one input channel and 10 classes it has 65,834 parameters.

    Attributes: ``features`` (an :class:`torch.nn.Sequential` of two blocks, each a Sequential whose indices
    0 and 3 are the convolutions and 1 and 4 their BatchNorms), ``classifier`` (:class:`torch.nn.Linear`).

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    num_classes : int
        Outputs of the classifier, at least 2.
    input_size : int
        Side of the square input, at least 4 (only checked: global pooling makes the weights size-independent).
    channels : (int, int)
        Width of the first and the second block.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, channels: tuple[int, int] = (32, 64)
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes", minimum=2)
        check_positive_int(input_size, "input_size", minimum=4)
        if len(channels) != 2:
            raise ValueError(f"channels must be a pair (c1, c2), got {channels!r}")
        for i, c in enumerate(channels):
            check_positive_int(c, f"channels[{i}]")
        self.in_channels, self.input_size = in_channels, input_size
        self.features = nn.Sequential(_block(in_channels, channels[0]), _block(channels[0], channels[1]))
        self.classifier = nn.Linear(channels[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(
                f"SmallCNN expects input of shape N x {self.in_channels} x {self.input_size} x {self.input_size}, "
                f"got {tuple(x.shape)}"
            )
        return self.classifier(self.features(x).mean(dim=(2, 3)))

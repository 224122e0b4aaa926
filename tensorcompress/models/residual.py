r"""Residual and depthwise networks for 28×28 images: where channels are coupled across layers.

* :class:`ResNet8` — He et al. (2016)'s basic blocks: ``y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with
  an identity shortcut where the shape is kept and a 1×1 convolution + BatchNorm (the "projection", option B)
  where a block halves the resolution and widens the channels. A stem convolution, three blocks of widths
  (16, 32, 64), global average pooling and a linear classifier: 1 + 3·2 + 1 = 8 weighted layers on the main path.
* :class:`MobileNetV2Tiny` — Sandler et al. (2018)'s inverted residual: a 1×1 *expansion* to t·c channels, a 3×3
  *depthwise* convolution (``groups`` = channels: 9 weights per channel instead of 9·c), ReLU6, and a linear 1×1
  *projection* back to c' channels, with the residual added only where stride is 1 and c = c'. A depthwise layer
  costs 9·HW·c multiply–adds against a dense 3×3's 9·HW·c²: it moves as many bytes as it computes, which is why
  such layers are memory-bound on a CPU (notebook 22's roofline).

Every residual addition is a :class:`tc.surgery.Add <tensorcompress.surgery.Add>` module, so quantization can
put observers at its inputs and output; every BatchNorm directly follows its convolution, so it folds.

Coupled channels: the output channels of every layer that feeds one addition must be pruned together (the
residual *stream*), and a depthwise convolution's input and output channels are the same channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_int
from ..surgery import Add

__all__ = ["ResNet8", "MobileNetV2Tiny"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers and a shortcut (identity, or 1×1 conv–BN when ``stride`` > 1 or widths differ)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3)
        projected = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if projected else nn.Identity()
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(y, self.shortcut(x)))


class _Checked(nn.Module):
    """Input-shape check shared by the 28×28 networks."""

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, 28, 28):
            raise ValueError(f"{type(self).__name__} expects input of shape N x {self.in_channels} x 28 x 28, "
                             f"got {tuple(x.shape)}")


class ResNet8(_Checked):
    """A residual network for 28×28 images: stem, three basic blocks, global average pooling, classifier.

    Widths ``(16, 32, 64)`` at resolutions 28, 14 and 7; the second and third blocks halve the resolution and have
    1×1 projection shortcuts, the first an identity. With the defaults: 77,754 parameters and 18.7 M FLOPs
    (9.3 M multiply–adds) per image, as :func:`tc.flops <tensorcompress.metrics.flops>` counts them.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    num_classes : int
        Outputs of the classifier, at least 2.
    widths : (int, int, int)
        Channels of the three stages.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes", minimum=2)
        if not isinstance(widths, (tuple, list)):
            raise TypeError(f"widths must be a tuple of three ints, got {type(widths).__name__} ({widths!r})")
        if len(widths) != 3:
            raise ValueError(f"widths must have three entries, got {widths!r}")
        for i, w in enumerate(widths):
            check_positive_int(w, f"widths[{i}]")
        # the constructor's arguments, kept so that a compressed file can name them (tc.export's registry)
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, tuple(widths)
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU())
        self.blocks = nn.Sequential(
            BasicBlock(widths[0], widths[0]), BasicBlock(widths[0], widths[1], 2), BasicBlock(widths[1], widths[2], 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """1×1 expansion–BN–ReLU6, 3×3 depthwise–BN–ReLU6, 1×1 projection–BN (linear), plus ``x`` where shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Sequential(*_conv_bn(c_in, hidden, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6())
        self.project = nn.Sequential(*_conv_bn(hidden, c_out, 1))
        self.add = Add() if stride == 1 and c_in == c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return y if self.add is None else self.add(y, x)


class MobileNetV2Tiny(_Checked):
    """MobileNetV2's inverted residuals, scaled to 28×28 digits.

    A 3×3 stem to 16 channels, then inverted residual blocks (expansion 4) of outputs 16, 24 (stride 2), 24, 32
    (stride 2), 32 — three of them with a residual addition — a 1×1 conv to 128 channels, global average pooling
    and a classifier. Every activation is ReLU6 (Sandler et al. 2018), whose fixed range suits 8-bit codes.
    34,682 parameters and 11.5 M FLOPs per image with the defaults: fewer of both than :class:`ResNet8`, but
    the 64-channel depthwise layer at 28×28 moves many activation bytes per multiply–add.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    num_classes : int
        Outputs of the classifier, at least 2.
    expand : int
        Expansion factor t of every block: its depthwise layer has t·c channels for c input channels.
    """

    SETTING = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1))  # (output channels, stride) per block

    def __init__(self, in_channels: int = 1, num_classes: int = 10, expand: int = 4) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes", minimum=2)
        check_positive_int(expand, "expand")
        self.in_channels, self.num_classes, self.expand = in_channels, num_classes, expand  # as ResNet8
        self.stem = nn.Sequential(*_conv_bn(in_channels, 16, 3), nn.ReLU6())
        blocks, c = [], 16
        for c_out, stride in self.SETTING:
            blocks.append(InvertedResidual(c, c_out, stride, expand))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(c, 128, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.classifier(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))

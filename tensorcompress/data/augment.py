"""Deterministic data augmentation: translated copies of a small image training set."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["shift_augment"]

_SHIFTS_1 = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def _shift(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """``x`` (``N × C × H × W``) translated by ``dy`` rows and ``dx`` columns, uncovered pixels set to ``fill``."""
    out = torch.full_like(x, fill)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def shift_augment(train: TensorDataset, shifts=_SHIFTS_1) -> TensorDataset:
    """The training set plus copies translated by each ``(dy, dx)`` in ``shifts`` (default: the original and the four
    one-pixel shifts, 5× the data).

    Uncovered pixels get the smallest value of the set (the normalised background). A classic, deterministic
    augmentation for MNIST (LeCun et al. 1998, Simard et al. 2003). Use it on a *training* split only.
    """
    if not isinstance(train, TensorDataset) or train.tensors[0].ndim != 4:
        raise TypeError("train must be a TensorDataset of N x C x H x W images and labels")
    x, y = train.tensors[0], train.tensors[1]
    fill = float(x.min())
    for dy, dx in shifts:
        if abs(dy) >= x.shape[-2] or abs(dx) >= x.shape[-1]:
            raise ValueError(f"shift {(dy, dx)} must be smaller than the image size {tuple(x.shape[-2:])}")
    return TensorDataset(torch.cat([_shift(x, dy, dx, fill) for dy, dx in shifts]), y.repeat(len(shifts)))

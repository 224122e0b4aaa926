"""The course's one protocol: every data set split once, the same way, wherever it is used.

A pretrained baseline has seen all of its training split, so a validation split carved from the training data is not
held out for it. The held-out images are therefore halved instead, stratified by label and fixed by ``seed=0``
(:func:`~tensorcompress.data.train_val_split`): decisions (a rank, a sparsity, a learning rate, an epoch count) are
taken on ``val``; ``test`` is read once, at the end.

=================  ============  ==================  ==================
data set           ``train``     ``val``             ``test``
=================  ============  ==================  ==================
``mnist_sample``   4,000         500 (of 1,000)      500 (of 1,000)
``digits``         1,437         180 (of 360)        180 (of 360)
=================  ============  ==================  ==================

With 500 test images the standard error of an accuracy near 98 % is :math:`\\sqrt{0.98 \\cdot 0.02 / 500} \\approx
0.6` points; with 180 digits near 99 % it is 0.7 points — one image is 0.56 points. Differences below that are not
told apart by accuracy; :func:`~tensorcompress.metrics.fidelity` measures finer.
"""

from __future__ import annotations

from typing import NamedTuple

from torch.utils.data import TensorDataset

from .datasets import load_digits, load_mnist_sample
from .splits import train_val_split

__all__ = ["Splits", "load_splits", "SPLIT_SIZES"]

#: Validation (= test) images per data set: half of its held-out split.
SPLIT_SIZES = {"mnist_sample": 500, "digits": 180}

_LOADERS = {"mnist_sample": load_mnist_sample, "digits": load_digits}


class Splits(NamedTuple):
    """The three splits of a data set: ``train`` (what baselines were trained on), ``val`` (decisions), ``test``."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


def load_splits(name: str, *, normalize: bool = True) -> Splits:
    """The protocol's ``(train, val, test)`` of ``"mnist_sample"`` or ``"digits"`` (module docstring).

    Parameters
    ----------
    name : str
        ``"mnist_sample"`` (4,000 / 500 / 500) or ``"digits"`` (1,437 / 180 / 180).
    normalize : bool
        As the loaders: standardised with the training split's pixel mean and standard deviation.

    Returns
    -------
    Splits
        A named tuple ``(train, val, test)`` of ``TensorDataset``; the same on every machine.
    """
    if name not in _LOADERS:
        raise ValueError(f"name must be one of {sorted(_LOADERS)}, got {name!r}")
    train, heldout = _LOADERS[name](normalize=normalize)
    test, val = train_val_split(heldout, SPLIT_SIZES[name], seed=0)
    return Splits(train, val, test)

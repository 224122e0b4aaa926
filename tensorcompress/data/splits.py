r"""A stratified, deterministic train/validation split of a labelled data set.

Decisions (ranks, epochs, learning rates) are taken on a validation split carved out of the *training* data, so the
test split is touched once, at the end. :func:`train_val_split` keeps every class's share on both sides: with
:math:`n` samples, :math:`n_c` of class :math:`c` and :math:`v` validation samples in all, class :math:`c` gets

.. math:: v_c \in \{\lfloor q_c \rfloor, \lceil q_c \rceil\}, \qquad q_c = v\, n_c / n, \qquad \sum_c v_c = v,

by the largest-remainder rule (Hamilton's apportionment: every class gets :math:`\lfloor q_c \rfloor`, the
:math:`v - \sum_c \lfloor q_c \rfloor` left go to the largest fractional parts, ties to the smaller label), so each
class is within one sample of its exact proportion. The samples of each class are shuffled by NumPy's PCG64
generator seeded with ``seed`` — the same stream on every platform, so the same seed gives the same split on any
machine. Both halves keep the original order of the samples.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["train_val_split"]


def _labels(dataset: object) -> np.ndarray:
    """The integer labels of ``dataset``: the second tensor of a TensorDataset, or a ``targets`` attribute."""
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise TypeError("dataset must be labelled: a TensorDataset of (inputs, labels, ...), got one tensor")
        labels = dataset.tensors[1]
    elif isinstance(dataset, Dataset) and hasattr(dataset, "targets"):
        labels = dataset.targets
    else:
        raise TypeError(f"dataset must be a labelled TensorDataset (inputs, labels) or a Dataset with a `targets` "
                        f"attribute, got {type(dataset).__name__}")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"dataset's labels must be integer class labels, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"dataset's labels must be one label per sample (1-D), got shape {tuple(labels.shape)}")
    return labels.cpu().numpy()


def _n_val(val_size: object, n: int) -> int:
    """The number of validation samples: ``val_size`` itself (an int) or ``round(val_size * n)`` (a float)."""
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise TypeError(f"val_size must be a fraction (float in (0, 1)) or a count (int), got {val_size!r}")
    if not isinstance(val_size, numbers.Integral):
        if not 0 < val_size < 1:
            raise ValueError(f"val_size as a fraction must be in (0, 1), got {val_size}")
        n_val = round(val_size * n)
    else:
        n_val = int(val_size)
    if not 1 <= n_val <= n - 1:
        raise ValueError(f"val_size must leave at least one sample on each side: got {val_size!r}, i.e. {n_val} "
                         f"of {n} samples for validation (allowed: 1 to {n - 1})")
    return n_val


def _apportion(counts: np.ndarray, n_val: int) -> np.ndarray:
    """Largest-remainder split of ``n_val`` in proportion to ``counts`` (exact integer arithmetic)."""
    n = int(counts.sum())
    quota = counts.astype(np.int64) * n_val  # q_c * n, so the floor and the remainders are exact integers
    v = quota // n
    left = n_val - int(v.sum())
    order = np.lexsort((np.arange(len(counts)), -(quota % n)))  # largest remainder first, then smaller label
    v[order[:left]] += 1
    return v


def train_val_split(dataset: Dataset, val_size: int | float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split a labelled data set into ``(train, val)``, stratified by label and fixed by ``seed``.

    Parameters
    ----------
    dataset : TensorDataset or Dataset
        A ``TensorDataset`` whose second tensor holds integer class labels (one per sample), or any ``Dataset`` with
        an integer ``targets`` attribute (as torchvision's).
    val_size : float or int
        Fraction of the samples in ``(0, 1)`` (rounded to the nearest count) or the number of validation samples.
    seed : int
        Seeds the within-class shuffle (NumPy PCG64: the same split on every machine).

    Returns
    -------
    (train, val) : tuple of Dataset
        ``TensorDataset`` halves for a ``TensorDataset`` (all its tensors indexed alike), ``Subset`` otherwise.
        Each class is within one sample of its exact share ``val_size``; samples keep their original order.

    Raises
    ------
    TypeError
        ``dataset`` is not labelled with integers, or ``val_size`` / ``seed`` has the wrong type.
    ValueError
        ``val_size`` leaves a side empty, a class has fewer than two samples, or the split leaves a class with no
        sample on one side (choose a larger or smaller ``val_size``).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    labels = _labels(dataset)
    n = labels.shape[0]
    if n < 2:
        raise ValueError(f"dataset must hold at least two samples to split, got {n}")
    n_val = _n_val(val_size, n)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = classes[counts < 2]
    if small.size:
        raise ValueError(f"every class needs at least two samples to be stratified, but class(es) "
                         f"{small.tolist()} have {counts[counts < 2].tolist()}")
    v = _apportion(counts, n_val)
    smallest = int(np.ceil(n / counts.min()))
    empty = [int(c) for c, vc, nc in zip(classes, v, counts, strict=True) if vc == 0 or vc == nc]
    if empty:
        raise ValueError(f"val_size={val_size!r} ({n_val} of {n} samples) leaves class(es) {empty} with no sample on "
                         f"one side; with a smallest class of {counts.min()} samples, try between about "
                         f"{smallest} and {n - smallest} validation samples")
    rng = np.random.default_rng(int(seed))
    val_idx = []
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        val_idx.append(rng.permutation(members)[: v[k]])
    is_val = np.zeros(n, dtype=bool)
    is_val[np.concatenate(val_idx)] = True
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if isinstance(dataset, TensorDataset):
        tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        return (TensorDataset(*(t[tr.to(t.device)] for t in dataset.tensors)),
                TensorDataset(*(t[va.to(t.device)] for t in dataset.tensors)))
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())

"""The stored baselines: checkpoints shipped inside the package with a manifest of SHA-256 and training settings.

They live in ``tensorcompress/models/checkpoints/`` (:data:`CHECKPOINT_DIR`), so that a plain ``pip install .`` or a
wheel carries them (package data); the repository's top-level ``data/`` holds only the git-ignored data caches.
``python -m tensorcompress.baselines`` writes them; :func:`pretrained` loads one, checks its hash and returns it in
eval mode.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .lenet import LeNet5, LeNet300100
from .residual import MobileNetV2Tiny, ResNet8
from .smallcnn import SmallCNN
from .tinygpt import TinyGPT

__all__ = ["pretrained", "manifest", "baseline", "BaselineScore", "ARCHITECTURES", "CHECKPOINT_DIR", "sha256_file"]

#: The folder of the shipped checkpoints and their ``manifest.json`` (package data, installed with the package).
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: name → constructor of the untrained network the checkpoint was trained from.
ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "lenet300100": lambda: LeNet300100(in_features=784, num_classes=10),
    "lenet5": lambda: LeNet5(in_channels=1, num_classes=10, input_size=28),
    "smallcnn": lambda: SmallCNN(in_channels=1, num_classes=10, input_size=8),
    "resnet8": lambda: ResNet8(in_channels=1, num_classes=10, widths=(16, 32, 64)),
    "mobilenetv2_tiny": lambda: MobileNetV2Tiny(in_channels=1, num_classes=10, expand=4),
    # the 103 characters of tensorcompress.data.load_text()'s corpus
    "tinygpt": lambda: TinyGPT(103, d_model=128, n_layers=4, n_heads=4, context=128),
}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest(*, root: str | Path | None = None) -> dict[str, dict]:
    """The baselines' manifest: name → file, SHA-256, bytes, test accuracy, seed and training settings.

    Read from ``root/manifest.json`` (default: :data:`CHECKPOINT_DIR`, the checkpoints shipped with the package).
    """
    root = Path(root) if root is not None else CHECKPOINT_DIR
    path = root / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in {root}: run `python -m tensorcompress.baselines` to create it")
    return json.loads(path.read_text())


class BaselineScore(NamedTuple):
    """A baseline's stored score on one split of the protocol (:func:`tensorcompress.data.load_splits`)."""

    accuracy: float  # top-1, a fraction
    loss: float  # mean cross-entropy, nats per example
    n: int  # the split's size


def baseline(name: str, split: str = "test", *, root: str | Path | None = None) -> BaselineScore:
    """The one stored score of baseline ``name`` on ``split`` — every notebook quotes this number, never its own.

    Parameters
    ----------
    name : str
        An image classifier of :func:`pretrained` (``"lenet300100"``, ``"lenet5"``, ``"smallcnn"``, ``"resnet8"``,
        ``"mobilenetv2_tiny"``).
    split : str
        ``"val"`` or ``"test"``: the halves of the held-out images made by
        :func:`tensorcompress.data.load_splits` (500 / 500 MNIST images, 180 / 180 digits).
    root : str or Path, optional
        Folder of ``manifest.json`` (default: the shipped checkpoints).

    Returns
    -------
    BaselineScore
        ``(accuracy, loss, n)`` as ``python -m tensorcompress.baselines`` measured and stored them.
    """
    entries = manifest(root=root)
    if name not in entries:
        raise ValueError(f"name must be one of {sorted(entries)}, got {name!r}")
    splits = entries[name].get("splits", {})
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)} for {name!r}, got {split!r}")
    return BaselineScore(**splits[split])


def pretrained(name: str, *, root: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """A trained baseline network, in eval mode.

    ====================  =============================  =========================================
    name                  network                        trained on
    ====================  =============================  =========================================
    ``lenet300100``       :class:`LeNet300100`           MNIST sample (:func:`~tensorcompress.data.load_mnist_sample`)
    ``lenet5``            :class:`LeNet5`                MNIST sample
    ``smallcnn``          :class:`SmallCNN` (8×8 input)  digits (:func:`~tensorcompress.data.load_digits`)
    ``resnet8``           :class:`ResNet8` (residual,    MNIST sample
                          widths 16, 32, 64)
    ``mobilenetv2_tiny``  :class:`MobileNetV2Tiny`       MNIST sample
                          (inverted residuals,
                          depthwise, ReLU6)
    ``tinygpt``           :class:`TinyGPT` (d 128, 4     Python documentation characters
                          layers, 4 heads, context 128)  (:func:`~tensorcompress.data.load_text`)
    ====================  =============================  =========================================

    The test accuracy (perplexity for ``tinygpt``), seed and training settings are in ``manifest.json`` next to the
    checkpoints.

    Parameters
    ----------
    name : str
        One of the names above.
    root : str or Path, optional
        Folder holding ``manifest.json`` and the ``.pt`` files (default: :data:`CHECKPOINT_DIR`, shipped with the
        package).
    device : torch.device or str
        Where the returned model lives.

    Raises
    ------
    ValueError
        On an unknown name, a checkpoint missing from the manifest, or a SHA-256 mismatch (a corrupted or
        replaced file).
    FileNotFoundError
        If the manifest or the checkpoint file is missing.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    root = Path(root) if root is not None else CHECKPOINT_DIR
    manifest_path = root / "manifest.json"
    entries = manifest(root=root)
    if name not in entries:
        raise ValueError(f"{manifest_path} has no entry {name!r} (it has {sorted(entries)})")
    entry = entries[name]
    path = root / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} listed in {manifest_path} is missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"SHA-256 mismatch for {path}: the file hashes to {digest} but {manifest_path} records "
            f"{entry['sha256']}; the checkpoint is corrupted or was replaced: "
            "rerun `python -m tensorcompress.baselines`"
        )
    model = ARCHITECTURES[name]()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()

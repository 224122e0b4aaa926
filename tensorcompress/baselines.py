"""Train the series' baseline networks and store them: ``python -m tensorcompress.baselines [names...]``.

``--check`` retrains and compares the test accuracy with the manifest instead (exit status 1 on a difference).

Writes ``data/{name}.pt`` (the ``state_dict``) and ``data/manifest.json`` (SHA-256, test accuracy, seed, training
settings, split sizes, torch version, training time) for each name in :data:`BASELINES`. Training runs on the CPU
with one thread so that a rerun with the same seed reproduces the stored weights and accuracy on the same machine;
:func:`tensorcompress.models.pretrained` loads the result.

Recipe (all): Adam, cosine learning-rate decay to 0, batch 64, seed 0, cross-entropy. The MNIST-sample networks
train on the 4,000 training images plus their four one-pixel translations
(:func:`tensorcompress.data.shift_augment`, 20,000 images per epoch); accuracies are on the untouched test split.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from . import data as tcdata
from .data._cache import repo_data_dir
from .models.pretrained import ARCHITECTURES, sha256_file
from .train import evaluate, fit, set_seed

__all__ = ["BASELINES", "BaselineConfig", "train_baseline", "main"]


@dataclass(frozen=True)
class BaselineConfig:
    """How one baseline is trained."""

    dataset: str  # "mnist_sample" or "digits"
    epochs: int
    lr: float
    batch_size: int = 64
    seed: int = 0
    optimizer: str = "adam"
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    augment: bool = False  # shift_augment the training split


BASELINES: dict[str, BaselineConfig] = {
    "lenet300100": BaselineConfig(dataset="mnist_sample", epochs=10, lr=1e-3, augment=True),
    "lenet5": BaselineConfig(dataset="mnist_sample", epochs=8, lr=1e-3, augment=True),
    "smallcnn": BaselineConfig(dataset="digits", epochs=10, lr=1e-3),
}

_LOADERS: dict[str, Callable[[], tuple[TensorDataset, TensorDataset]]] = {
    "mnist_sample": tcdata.load_mnist_sample,
    "digits": tcdata.load_digits,
}


def train_baseline(name: str, *, progress: bool = False) -> tuple[nn.Module, dict]:
    """Train baseline ``name`` from scratch on the CPU (one thread) and return ``(model, record)``.

    ``record`` holds the test accuracy and loss, the configuration, split sizes and wall-clock training seconds.
    """
    if name not in BASELINES:
        raise ValueError(f"name must be one of {sorted(BASELINES)}, got {name!r}")
    cfg = BASELINES[name]
    train, test = _LOADERS[cfg.dataset]()
    fit_data = tcdata.shift_augment(train) if cfg.augment else train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        set_seed(cfg.seed)
        model = ARCHITECTURES[name]()
        start = time.perf_counter()
        fit(model, fit_data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, device="cpu", seed=cfg.seed,
            optimizer=cfg.optimizer, scheduler=cfg.scheduler, weight_decay=cfg.weight_decay, progress=progress)
        seconds = time.perf_counter() - start
        ev = evaluate(model, test, device="cpu")
    finally:
        torch.set_num_threads(threads)
    record = {
        "test_accuracy": ev.accuracy,
        "test_loss": round(ev.loss, 6),
        **asdict(cfg),
        "train_size": len(train),
        "train_size_augmented": len(fit_data),
        "test_size": len(test),
        "train_seconds": round(seconds, 1),
        "threads": 1,
        "torch_version": torch.__version__,
    }
    return model.eval(), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(BASELINES), help=f"subset of {list(BASELINES)}")
    parser.add_argument("--out", type=Path, default=repo_data_dir(), help="folder for the checkpoints (data/)")
    parser.add_argument("--check", action="store_true",
                        help="retrain and compare the test accuracy with the manifest in --out; write nothing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BASELINES))
    if unknown:
        parser.error(f"unknown baseline(s) {unknown}: choose from {list(BASELINES)}")
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if args.check:
        failed = 0
        for name in args.names:
            _, record = train_baseline(name, progress=True)
            stored = manifest.get(name, {}).get("test_accuracy")
            same = stored == record["test_accuracy"]
            failed += not same
            print(f"{name}: retrained {100 * record['test_accuracy']:.2f}%, stored "
                  f"{'-' if stored is None else f'{100 * stored:.2f}%'}: {'reproduced' if same else 'DIFFERENT'}")
        return 1 if failed else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        model, record = train_baseline(name, progress=True)
        path = args.out / f"{name}.pt"
        torch.save(model.state_dict(), path)
        manifest[name] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, **record}
        print(f"{name}: test accuracy {100 * record['test_accuracy']:.2f}% ({record['test_size']} images), "
              f"{record['train_seconds']} s, {path.stat().st_size:,} bytes -> {path}")
        manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: automatic compression's time per network — the full sensitivity scan and the fine-tuning.

Run ``python benchmarks/automatic.py`` (``--threads 2`` by default: the series' two cores; ``--quick`` for a smoke
run with a two-setting grid). For each shipped baseline (LeNet-300-100 and LeNet-5 on the MNIST sample, SmallCNN on
scikit-learn's digits) it runs :func:`tensorcompress.pipelines.auto_compress` with the default grid
(:data:`~tensorcompress.pipelines.DEFAULT_GRID`: 18 options and "keep" per layer) under a byte budget of
``--fraction`` of the model's compressed-file size, fine-tuning by distillation for ``--epochs`` over all training
images, and prints the wall-clock time of the scan (every option applied alone, measured in file bytes and KL
divergence on the validation half of the held-out images), of the fine-tuning, and their sum — wall-clock, and the
CPU seconds of the process (``time.process_time``), which a busy machine inflates less; the file's bytes;
the predicted and measured KL divergence; validation and test accuracy (the other half). Times depend on the machine
and its load (the script prints the load average before and after); the bytes and accuracies do not.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import tensorcompress as tc

DATA = {"lenet300100": "mnist", "lenet5": "mnist", "smallcnn": "digits"}


def _data(kind: str):
    train, heldout = tc.data.load_mnist_sample() if kind == "mnist" else tc.data.load_digits()
    test, val = tc.data.train_val_split(heldout, 0.5, seed=0)
    return train, val, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--fraction", type=float, default=0.1, help="byte budget as a fraction of the file")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (distillation)")
    parser.add_argument("--quick", action="store_true", help="two settings per method, one epoch")
    parser.add_argument("--models", nargs="*", default=list(DATA), choices=list(DATA))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = {"factorize": (0.9,), "prune": (0.8,), "quantize": (2, 4), "share": (3,)} if args.quick else None
    epochs = 1 if args.quick else args.epochs
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} threads; budget {args.fraction:g} of the file; "
          f"{epochs} epochs of distillation")
    print(f"{'model':12s} {'options':>7s} {'scan s':>7s} {'tune s':>7s} {'total s':>8s} {'cpu s':>6s} {'file':>10s} "
          f"{'budget':>10s} {'KL pred':>8s} {'KL meas':>8s} {'val %':>6s} {'test %':>6s}  choice")
    for name, kind in DATA.items():
        if name not in args.models:
            continue
        train, val, test = _data(kind)
        model = tc.models.pretrained(name).eval()
        budget = int(args.fraction * len(tc.export.encode_compressed(model)[0]))
        start, cpu = time.perf_counter(), time.process_time()
        _, scan = tc.pipelines.auto_compress(model, train, val=val, budget=budget, grid=grid, epochs=0)
        scanned = time.perf_counter() - start
        start = time.perf_counter()
        net, report = tc.pipelines.auto_compress(model, train, val=val, budget=budget, candidates=scan,
                                                 epochs=epochs)
        tuned = time.perf_counter() - start
        cpu = time.process_time() - cpu
        choice = ", ".join(f"{o.layer}: {o.label}" for o in report.choice)
        print(f"{name:12s} {len(scan.candidates):7d} {scanned:7.1f} {tuned:7.1f} {scanned + tuned:8.1f} {cpu:6.0f} "
              f"{report.file_bytes:10,} {budget:10,} {report.predicted_loss:8.4f} {report.measured_loss:8.4f} "
              f"{100 * report.final_accuracy:6.1f} {100 * tc.evaluate(net, test).accuracy:6.1f}  {choice}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

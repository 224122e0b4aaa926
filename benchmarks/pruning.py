"""Benchmark: what a mask, a physically smaller network and a sparse file cost (untrained weights; sizes and
FLOPs do not depend on training, latency does not either).

Run ``python benchmarks/pruning.py`` (about a minute on a quiet core). For SmallCNN (28x28 input, batch 64) it
prunes filters (``tc.pruning.prune(structure="filters")``), removes them (``tc.pruning.shrink``) and reports
parameters, bytes (``tc.model_size_bytes``: what ``torch.save`` writes), FLOPs (``tc.flops``) and CPU latency
(``tc.latency``: ``torch.utils.benchmark`` median, one thread) of the dense, masked and shrunk models. For
LeNet-300-100 it prunes 92 % of the weights globally and reports the dense, masked and compressed-file bytes
(``tc.export.save_compressed``: CSR values, Huffman-coded 5- and 8-bit relative indices). Latency depends on the
machine and its load.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

import tensorcompress as tc
from tensorcompress import pruning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per latency measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    cnn = tc.models.SmallCNN().eval()
    x = torch.randn(64, 1, 28, 28)
    base = tc.latency(cnn, x, min_run_time=args.min_run_time).median
    print(f"SmallCNN dense: {tc.count_parameters(cnn)} parameters, {tc.model_size_bytes(cnn)} bytes, "
          f"{tc.flops(cnn, x) / 1e9:.2f} GFLOP, {base * 1e3:.1f} ms")
    for amount in (0.25, 0.5, 0.75):
        masked, _ = pruning.prune(cnn, x, amount=amount, structure="filters", include="features.*")
        small, _ = pruning.shrink(masked, x)
        t_mask = tc.latency(masked, x, min_run_time=args.min_run_time).median
        t_small = tc.latency(small, x, min_run_time=args.min_run_time).median
        print(f"  filters {amount:.0%}: masked {tc.model_size_bytes(masked)} bytes, {t_mask * 1e3:.1f} ms; shrunk "
              f"{tc.count_parameters(small)} parameters, {tc.model_size_bytes(small)} bytes, "
              f"{tc.flops(small, x) / 1e9:.2f} GFLOP, {t_small * 1e3:.1f} ms ({base / t_small:.1f}x faster)")
    lenet = tc.models.LeNet300100()
    masked, _ = pruning.prune(lenet, amount=0.92, scope="global")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {b: tc.export.save_compressed(masked, os.path.join(tmp, f"w{b}.tcdc"), index_bits=b) for b in (5, 8)}
    print(f"LeNet-300-100, 92 % pruned globally: dense {tc.model_size_bytes(lenet)} bytes, masked "
          f"{tc.model_size_bytes(masked)} bytes, {tc.count_parameters(masked, nonzero=True)} non-zero parameters, "
          f"CSR file {sizes[5]} bytes (5-bit gaps), {sizes[8]} bytes (8-bit gaps)")


if __name__ == "__main__":
    main()

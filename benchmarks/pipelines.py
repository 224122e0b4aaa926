"""Benchmark: Deep Compression's bytes per stage and the coders' time — Huffman vs ANS vs the entropy bound.

Run ``python benchmarks/pipelines.py`` (about half a minute on a quiet core). The pretrained LeNet-300-100 and
LeNet-5 are pruned one shot per layer (notebook 19's sparsities; no fine-tuning: the bytes depend on the masks and
the weight distribution, not on the accuracy) and their kept weights shared by k-means
(``tc.quantization.share_weights`` with ``keep_zeros=True``). For each model and relative-index width it prints
the bytes of each stage —
float ``torch.save``, the pruned model's file (``tc.export.save_compressed``: float32 values, Huffman-coded
relative indices), fixed-length codes + codebooks (the report's count), the Huffman and ANS files of the shared
model (``tc.export.save_compressed``), and the entropy bound
(:math:`nH/8` of the two streams + codebooks + biases) — and the median time to write and to read each file
(``timeit``, best of five). Times depend on the machine and its load; the bytes do not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit

import torch

import tensorcompress as tc

SPARSITY = {"lenet300100": {"fc1": 0.95, "fc2": 0.9, "fc3": 0.7},
            "lenet5": {"conv1": 0.4, "conv2": 0.85, "fc1": 0.94, "fc2": 0.8}}


def _shared(name: str, bits: int, index_bits: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = tc.models.pretrained(name)
    for layer, s in SPARSITY[name].items():
        model, _ = tc.pruning.prune(model, amount=s, include=[layer])
    shared, _ = tc.quantization.share_weights(model, bits=bits, keep_zeros=True, index_bits=index_bits)
    return shared, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=5, help="codebook index width")
    parser.add_argument("--repeat", type=int, default=5, help="timings: best of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = (f"{'model':12s} {'idx':>3s} {'float':>9s} {'P (CSR)':>9s} {'P+Q':>8s} {'Huffman':>8s} {'ANS':>8s} "
            f"{'entropy':>8s} {'x Huff':>7s} {'Huff w/r ms':>12s} {'ANS w/r ms':>11s}")
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for name in SPARSITY:
            for index_bits in (4, 5, 6, 8):
                shared, pruned = _shared(name, args.bits, index_bits)
                rep = tc.pipelines.measure_compressed(shared, original_bytes=tc.model_size_bytes(
                    tc.models.pretrained(name)))
                csr = tc.export.save_compressed(pruned, os.path.join(tmp, "p.tcdc"), index_bits=index_bits)
                times = {}
                for coder in ("huffman", "ans"):
                    path = os.path.join(tmp, f"m.{coder}")
                    write = min(timeit.repeat(lambda m=shared, c=coder, p=path: tc.export.save_compressed(
                        m, p, coder=c), number=1, repeat=args.repeat))
                    read = min(timeit.repeat(lambda p=path: tc.export.load_compressed(p), number=1,
                                             repeat=args.repeat))
                    assert os.path.getsize(path) == rep.file_bytes[coder]
                    times[coder] = f"{1e3 * write:.0f}/{1e3 * read:.0f}"
                sb = rep.stage_bytes
                print(f"{name:12s} {index_bits:3d} {rep.original_bytes:9d} {csr:9d} {sb['P+Q']:8d} "
                      f"{rep.file_bytes['huffman']:8d} {rep.file_bytes['ans']:8d} {sb['entropy']:8d} "
                      f"{rep.compression():7.1f} {times['huffman']:>12s} {times['ans']:>11s}")


if __name__ == "__main__":
    main()

"""Benchmark: factorised layers against the dense layer they replace, CPU, one thread and all threads.

Run ``python benchmarks/layers.py`` (about 1-2 minutes on 2 cores) or ``--quick``. For each case the dense layer
(``nn.Linear`` / ``nn.Conv2d``) and its factorised replacement (random weights of the given ranks: the timing does
not depend on the values) run on the same input. Latency: median of :func:`tensorcompress.latency`
(``torch.utils.benchmark.Timer.blocked_autorange`` under ``inference_mode``), FLOPs: :func:`tensorcompress.flops`
(``torch.utils.flop_counter``: multiply-accumulate = 2 FLOPs). Speed-up = dense time / factorised time (> 1: the
factorised layer is faster); FLOP ratio = dense FLOPs / factorised FLOPs (what an ideal kernel would gain).
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch import nn

import tensorcompress as tc


def cases(quick: bool):
    """(layer, factorisation, dense layer, factorised layer, input)."""
    torch.manual_seed(0)
    out = []
    lin_sizes = [(784, 300, 64), (1024, 1024, 64)] if not quick else [(784, 300, 16)]
    for n_in, n_out, batch in lin_sizes:
        dense = nn.Linear(n_in, n_out)
        x = torch.randn(batch, n_in)
        for r in (16, 64, 256) if not quick else (16,):
            if r < min(n_in, n_out):
                out.append((f"Linear {n_in}->{n_out} b{batch}", f"SVD r={r}", dense,
                            tc.LowRankLinear(n_in, n_out, r), x))
        in_modes, out_modes = tc.tt_modes(n_in), tc.tt_modes(n_out)
        for r in (4, 16) if not quick else (4,):
            out.append((f"Linear {n_in}->{n_out} b{batch}", f"TT {in_modes}x{out_modes} r={r}", dense,
                        tc.TTLinear(in_modes, out_modes, r), x))
    conv_sizes = [(64, 64, 32, 8), (256, 256, 14, 8)] if not quick else [(32, 32, 16, 2)]
    for c_in, c_out, hw, batch in conv_sizes:
        dense = nn.Conv2d(c_in, c_out, 3, padding=1)
        x = torch.randn(batch, c_in, hw, hw)
        for r in (c_in // 16, c_in // 4) if not quick else (8,):
            out.append((f"Conv {c_in}->{c_out} 3x3 {hw}x{hw} b{batch}", f"CP r={r}", dense,
                        tc.CPConv2d(c_in, c_out, 3, r, padding=1), x))
        for r in (c_in // 8, c_in // 2) if not quick else (8,):
            out.append((f"Conv {c_in}->{c_out} 3x3 {hw}x{hw} b{batch}", f"Tucker-2 r=({r},{r})", dense,
                        tc.TuckerConv2d(c_in, c_out, 3, (r, r), padding=1), x))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case of each kind")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per latency measurement")
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{all_threads} threads available")
    header = (f"| {'layer':<28} | {'factorisation':<30} | {'params':>13} | {'FLOP ratio':>10} | "
              f"{'1 thread: dense / fact. (ms)':>28} | {'speed-up':>8} | {f'{all_threads} threads (ms)':>18} | "
              f"{'speed-up':>8} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, what, dense, fact, x in cases(args.quick):
        f_d, f_f = tc.flops(dense, x), tc.flops(fact, x)
        p_d, p_f = tc.count_parameters(dense), tc.count_parameters(fact)
        cells = []
        for threads in (1, all_threads):
            t_d = tc.latency(dense, x, threads=threads, min_run_time=args.min_run_time).median
            t_f = tc.latency(fact, x, threads=threads, min_run_time=args.min_run_time).median
            cells.append((t_d * 1e3, t_f * 1e3, t_d / t_f))
        (a1, b1, s1), (a2, b2, s2) = cells
        print(f"| {name:<28} | {what:<30} | "
              f"{f'{p_d}/{p_f}':>13} | {f_d / f_f:>10.1f} | {f'{a1:.3f} / {b1:.3f}':>28} | {s1:>8.2f} | "
              f"{f'{a2:.3f} / {b2:.3f}':>18} | {s2:>8.2f} |")


if __name__ == "__main__":
    main()

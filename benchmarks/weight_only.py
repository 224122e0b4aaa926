"""Benchmark: weight-only layers (``tc.quantization.WeightOnlyLinear``) against ``nn.Linear`` on the CPU.

Run ``python benchmarks/weight_only.py`` (about a minute on 2 cores) or ``--quick``. For the linear shapes of the
library's TinyGPT (d 128: ``128 -> 128``, ``128 -> 512``, ``512 -> 128``) and one larger layer (``1024 -> 4096``),
at one token (decoding) and 32 x 128 tokens (a batch of full windows), it times

* ``nn.Linear`` in float32;
* ``WeightOnlyLinear`` at 8, 4 and 3 bits (RTN, groups of 32) and NF4 (blocks of 64): the same product after
  unpacking and dequantizing the whole weight, in eager PyTorch;
* the dequantization alone (``layer.dequantize()``), which is the whole difference;

and the real bytes of each layer's state (:func:`tensorcompress.surgery.state_bytes`). Then the whole TinyGPT
(the shipped checkpoint, or random weights of its shape when it is missing) as tokens per second at batch 1 and 32.

Why the weight-only layer is slower here: PyTorch has no fused low-bit matrix product on the CPU, so every forward
rebuilds the float weight (bit unpacking through ``int64``, a subtraction and a multiplication over every entry,
and writing the float weight to memory) before running the very GEMM ``nn.Linear`` runs. Deployed int4 kernels
(torchao's ``tinygemm``, Marlin, llama.cpp) dequantize inside the product, in registers, and gain where reading the
weight from memory bounds the product (batch 1); at a large batch the product is bound by arithmetic and weight
compression cannot speed it up. Latency: median of :func:`tensorcompress.latency` (``torch.utils.benchmark``,
``blocked_autorange``, ``inference_mode``), one thread. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q

VARIANTS = [("RTN 8b g32", {"bits": 8, "group_size": 32}), ("RTN 4b g32", {"bits": 4, "group_size": 32}),
            ("RTN 3b g32", {"bits": 3, "group_size": 32}), ("NF4 b64", {"bits": 4, "method": "nf4"})]


class Dequantize(nn.Module):
    """Runs only the dequantization of a weight-only layer (what it adds to the product)."""

    def __init__(self, layer: Q.WeightOnlyLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.dequantize(x.dtype)


def ms(model: nn.Module, x: torch.Tensor, quick: bool) -> float:
    return tc.latency(model, x, threads=1, min_run_time=0.05 if quick else 0.3).median * 1e3


def layers(quick: bool) -> None:
    shapes = [(128, 128), (128, 512), (512, 128)] + ([] if quick else [(1024, 4096)])
    print(f"{'layer':<14} {'tokens':>6} {'variant':<11} {'bytes':>9} {'ms':>8} {'x float':>8} {'dequant ms':>10}")
    for n_in, n_out in shapes:
        torch.manual_seed(0)
        dense = nn.Linear(n_in, n_out).eval()
        for tokens in (1, 32 * 128):
            x = torch.randn(tokens, n_in)
            base = ms(dense, x, quick)
            print(f"{n_in}->{n_out:<8} {tokens:>6} {'float32':<11} {tc.surgery.state_bytes(dense):>9,} "
                  f"{base:>8.3f} {1.0:>8.2f} {'':>10}")
            for label, options in VARIANTS:
                layer = Q.WeightOnlyLinear.from_linear(dense, **options).eval()
                t = ms(layer, x, quick)
                d = ms(Dequantize(layer), x, quick)
                print(f"{'':<14} {tokens:>6} {label:<11} {tc.surgery.state_bytes(layer):>9,} {t:>8.3f} "
                      f"{t / base:>8.2f} {d:>10.3f}")


def whole_model(quick: bool) -> None:
    try:
        model = tc.models.pretrained("tinygpt")
        source = "shipped checkpoint"
    except (FileNotFoundError, KeyError, ValueError):
        torch.manual_seed(0)
        model = tc.models.TinyGPT(103, d_model=128, n_layers=4, n_heads=4, context=128).eval()
        source = "random weights (no checkpoint found)"
    print(f"\nTinyGPT ({source}), head kept in float32; tokens per second of one forward over full windows")
    variants = [("float32", model)] + [(label, Q.quantize_weights(model, exclude="head", **opt)[0])
                                       for label, opt in VARIANTS[1:]]
    for batch in (1, 32):
        x = torch.randint(0, model.vocab_size, (batch, model.context))
        for label, m in variants:
            t = ms(m, x, quick) / 1e3
            print(f"batch {batch:>2}  {label:<11} {batch * model.context / t:>12,.0f} tokens/s  "
                  f"{tc.metrics.model_size_bytes(m):>10,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread\n")
    layers(args.quick)
    whole_model(args.quick)


if __name__ == "__main__":
    main()

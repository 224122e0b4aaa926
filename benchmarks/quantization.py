"""Benchmark: quantized networks against float32 on the CPU — real bytes and latency.

Run ``python benchmarks/quantization.py`` (about two minutes on 2 cores) or ``--quick``. For LeNet-300-100,
LeNet-5 (MNIST sample) and SmallCNN (digits, BatchNorm folded with ``tc.surgery.fuse_conv_bn``) — the stored
baselines, or random weights when they are missing — it measures, at batch 64:

* float32, and float16 / bfloat16 casts (the simplest baseline);
* ``tc.quantization`` fake-quantized W8A8 (float arithmetic that simulates int8: slower than float32 by design);
* ``tc.quantization.to_integer`` (int8 weights, int32 accumulation in PyTorch's generic integer kernels: a
  **correctness reference** for the arithmetic, not a fast kernel — expect it to be slower than float32);
* PyTorch's real int8 CPU kernels (fbgemm / x86 through ``torch.ao.quantization``): dynamic quantization of the
  linear layers, and static W8A8 quantization of the whole network where its eager-mode flow applies.
  ``torch.ao.quantization`` is deprecated in favour of torchao; where it is missing the rows say so.

and, at the level of one matrix product (LeNet-5's ``fc1`` at batch 64, and a 256 x 1024 x 1024 product), float32
``torch.mm`` against ``torch._int_mm`` (int8 x int8 -> int32, PyTorch's real int8 GEMM; a private op, reported as
unavailable where it is missing or refuses the shape) and the int32 ``torch.mm`` that ``to_integer`` runs. On CPU
builds ``torch._int_mm`` is correct but may have no tuned kernel behind it (measured far slower than float32 with
torch 2.13 on x86-64): PyTorch's fast int8 CPU path is fbgemm/onednn behind ``torch.ao`` (and torchao), not
``_int_mm``, which is tuned for CUDA.

Latency: median of :func:`tensorcompress.latency` / ``torch.utils.benchmark`` (``blocked_autorange``), one thread.
Bytes: :func:`tensorcompress.model_size_bytes` (what ``torch.save`` writes). Timings depend on the machine and its
load; int8 kernels can be slower than float32 on small layers or with a misconfigured thread pool (pytorch#42113).
"""

from __future__ import annotations

import argparse
import copy
import platform
import warnings

import torch
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q
from tensorcompress.models.pretrained import ARCHITECTURES


def baseline(name: str) -> nn.Module:
    try:
        return tc.models.pretrained(name)
    except FileNotFoundError:
        torch.manual_seed(0)
        return ARCHITECTURES[name]().eval()


def torch_int8(model: nn.Module, calib: torch.Tensor, dynamic: bool) -> nn.Module | str:
    """PyTorch's own int8 model (dynamic: linear layers only; static: W8A8 with quant/dequant stubs)."""
    try:
        from torch.ao import quantization as ao
    except ImportError:
        return "torch.ao.quantization is not available"
    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    if engine not in torch.backends.quantized.supported_engines:
        return f"no int8 CPU engine (supported: {torch.backends.quantized.supported_engines})"
    torch.backends.quantized.engine = engine
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated")
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
    if dynamic:
        return ao.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    wrapped = nn.Sequential(ao.QuantStub(), copy.deepcopy(model), ao.DeQuantStub()).eval()
    wrapped.qconfig = ao.get_default_qconfig(engine)
    try:
        prepared = ao.prepare(wrapped)
        prepared(calib)
        converted = ao.convert(prepared)
        converted(calib[:2])
    except (RuntimeError, NotImplementedError) as err:
        return f"static int8 failed: {str(err).splitlines()[0][:80]}"
    return converted


def rows_for(name: str, quick: bool) -> list[tuple[str, int, float | str]]:
    net = baseline(name)
    if name == "smallcnn":  # integer inference needs BatchNorm folded; the float row is the unfused network
        train, _ = tc.data.load_digits()
        model, _ = tc.surgery.fuse_conv_bn(net)
    else:
        train, _ = tc.data.load_mnist_sample()
        model = net
    x = torch.stack([train[i][0] for i in range(64)])
    qm, _ = Q.quantize_model(model)
    Q.calibrate(qm, torch.utils.data.Subset(train, range(256)))
    models: dict[str, nn.Module | str] = {
        "float32": net,
        "float16 cast": copy.deepcopy(net).half(),
        "bfloat16 cast": copy.deepcopy(net).to(torch.bfloat16),
        "tc fake-quant W8A8": qm,
        "tc to_integer W8A8": Q.to_integer(qm, x)[0],
        "torch int8 dynamic (linear)": torch_int8(model, x, dynamic=True),
        "torch int8 static W8A8": torch_int8(model, x, dynamic=False),
    }
    out = []
    t_run = 0.05 if quick else 0.3
    for label, m in models.items():
        if isinstance(m, str):
            out.append((label, 0, m))
            continue
        dtype = next(m.parameters(), torch.empty(0)).dtype
        xin = x.to(dtype) if dtype in (torch.float16, torch.bfloat16) else x
        out.append((label, tc.model_size_bytes(m), tc.latency(m, xin, threads=1, min_run_time=t_run).median))
    return out


def matmul_rows(quick: bool) -> list[tuple[str, float | str]]:
    """float32 vs int8 (``torch._int_mm``) vs int32 matrix products, one thread."""
    from torch.utils import benchmark

    g = torch.Generator().manual_seed(0)
    t_run = 0.05 if quick else 0.3
    out = []
    for m, k, n in ((64, 800, 500), (256, 1024, 1024)):
        a8 = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        b8 = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
        cases = {"float32 torch.mm": (a8.float(), b8.float(), "torch.mm(a, b)"),
                 "int8 torch._int_mm": (a8, b8, "torch._int_mm(a, b)"),
                 "int32 torch.mm (to_integer)": (a8.int(), b8.int(), "torch.mm(a, b)")}
        for label, (a, b, stmt) in cases.items():
            name = f"{m}x{k}x{n} {label}"
            if "_int_mm" in stmt:
                try:
                    if not hasattr(torch, "_int_mm") or not torch.equal(torch._int_mm(a, b), a.int() @ b.int()):
                        out.append((name, "torch._int_mm is not available or wrong on this build"))
                        continue
                except RuntimeError as err:
                    out.append((name, f"torch._int_mm refused: {str(err).splitlines()[0][:70]}"))
                    continue
            timer = benchmark.Timer(stmt=stmt, globals={"torch": torch, "a": a, "b": b}, num_threads=1)
            out.append((name, timer.blocked_autorange(min_run_time=t_run).median))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timing runs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, batch 64, "
          f"int8 engines {torch.backends.quantized.supported_engines}")
    print("\nmatrix products, one thread (float32 vs PyTorch's int8 GEMM vs the int32 product of to_integer)")
    for label, t in matmul_rows(args.quick):
        print(f"{label:45s} {t if isinstance(t, str) else f'{1e3 * t:8.3f}ms'}")
    for name in ("lenet300100", "lenet5", "smallcnn"):
        rows = rows_for(name, args.quick)
        base_bytes, base_t = rows[0][1], rows[0][2]
        print(f"\n{name}")
        print(f"{'model':30s} {'bytes':>10s} {'x fewer':>8s} {'latency':>10s} {'speed-up':>8s}")
        for label, nbytes, t in rows:
            if isinstance(t, str):
                print(f"{label:30s} {'-':>10s} {'-':>8s} {t}")
                continue
            print(f"{label:30s} {nbytes:>10,d} {base_bytes / nbytes:8.2f} {1e3 * t:8.3f}ms {base_t / t:8.2f}")


if __name__ == "__main__":
    main()

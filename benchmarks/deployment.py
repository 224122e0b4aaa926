"""Benchmark: deployment through ONNX Runtime — eager PyTorch float32 against ONNX Runtime float32 and int8 (QDQ).

Run ``python benchmarks/deployment.py`` (about two minutes on a quiet core; ``--quick`` for a smoke run). For
LeNet-5 and ResNet-8 — the stored baselines, or random weights where a baseline is missing (the table says which;
speed does not depend on the weights' values) — at batch 1 and 256, one thread:

* ``eager float32`` — the PyTorch model, ``torch.inference_mode``;
* ``ORT float32`` — :func:`tensorcompress.export.to_onnx` of the float model, run by
  :func:`tensorcompress.export.onnx_session` (1 intra-op and 1 inter-op thread, no spinning);
* ``ORT int8 QDQ`` — the same of the calibrated fake-quantized model (BatchNorm folded by
  ``tc.surgery.fuse_conv_bn`` first, ``quantize_model``, 256 MNIST-sample training images to calibrate): ONNX
  Runtime fuses the QDQ groups into int8 kernels (``QLinearConv``, ``QLinearAdd``, ``QGemm``) when it opens the
  session;
* ``ORT int8 QDQ, pre-processed`` — the same file after ``onnxruntime.quantization.quant_pre_process``
  (``to_onnx(..., preprocess=True)``);
* ``ORT int8 QDQ, first conv in float`` — pre-processed, of a model quantized with its first convolution left in
  float32: ONNX Runtime's int8 convolution is slow on one input channel (ResNet-8's stem took about 7x its float
  time in a profile of the runtime, 2026-12-07), and the layer is memory-bound either way.

Before timing, every ONNX float32 graph is checked against eager PyTorch (max |Δ| ≤ 1e-4) and the int8 graphs'
top-1 agreement with the fake-quantized model is printed. Protocol (that of ``benchmarks/floors.py``, whose timer
this script uses): one thread; the comparators interleaved in every repeat; each repeat one
``torch.utils.benchmark.Timer.blocked_autorange`` median; the table gives the median of the repeats (at least 7),
their interquartile range and the speed-up over eager float32. The clock is the process's CPU time by default
(``--clock wall`` for wall time). The 1-minute load average is printed before and after: above 0.5 the machine was
not quiet and the absolute times are noisy (ratios less so).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from floors import interleaved, load, timing_args, timing_parser
from torch import nn

import tensorcompress as tc

MODELS = {"lenet5": tc.models.LeNet5, "resnet8": tc.models.ResNet8}
BATCHES = (1, 256)


def baseline(name: str) -> tuple[nn.Module, str]:
    """The stored baseline, or a seeded random one (and which)."""
    try:
        return tc.models.pretrained(name), "trained"
    except (FileNotFoundError, KeyError, ValueError):
        torch.manual_seed(0)
        return MODELS[name]().eval(), "random"


def quantized(model: nn.Module, calibration: torch.Tensor, *, first_in_float: bool = False) -> nn.Module:
    """fuse_conv_bn (where there is a BatchNorm) → quantize_model (a ``QuantizedAdd`` at each residual addition,
    fused with the ReLU that reads it; ``first_in_float``: the first convolution left in float32) → calibrate."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model, _ = tc.surgery.fuse_conv_bn(model, calibration[:2])
    first = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    qmodel, _ = tc.quantization.quantize_model(model, calibration[:2], exclude=[first] if first_in_float else None)
    return tc.quantization.calibrate(qmodel, calibration)


def eager(model: nn.Module, x: torch.Tensor):
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def ort(session, x: torch.Tensor):
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)[0]


def section(name: str, calibration: torch.Tensor, test: torch.Tensor, folder: str, args) -> None:
    model, weights = baseline(name)
    qmodel = quantized(model, calibration)
    mixed = quantized(model, calibration, first_in_float=True)
    files = {}
    for label, m, pre in (("float", model, False), ("int8", qmodel, False), ("int8_pre", qmodel, True),
                          ("int8_first_float", mixed, True)):
        files[label] = os.path.join(folder, f"{name}_{label}.onnx")
        tc.export.to_onnx(m, calibration[:2], files[label], preprocess=pre)
    sessions = {label: tc.export.onnx_session(path) for label, path in files.items()}
    with torch.inference_mode():
        want, fake, fake_mixed = model(test).numpy(), qmodel(test).numpy(), mixed(test).numpy()
    err = np.abs(ort(sessions["float"], test)() - want).max()
    if err > 1e-4:
        raise AssertionError(f"{name}: ONNX float32 differs from PyTorch by {err:.2e}")
    agree = {label: (ort(sessions[label], test)().argmax(1) == f.argmax(1)).mean()
             for label, f in (("int8", fake), ("int8_pre", fake), ("int8_first_float", fake_mixed))}
    print(f"\n{name} ({weights} weights): ONNX float32 max |Δ| {err:.1e}; int8 top-1 agreement with fake "
          f"quantization on {len(test)} test images: {agree['int8']:.1%} (pre-processed {agree['int8_pre']:.1%}, "
          f"first convolution in float {agree['int8_first_float']:.1%}); "
          f"files {', '.join(f'{k} {os.path.getsize(v):,} B' for k, v in files.items())}")
    print(f"  {'batch':>5s} {'comparator':32s} {'median ms':>10s} {'IQR ms':>9s} {'x eager':>8s}")
    for batch in BATCHES:
        x = test[:batch] if batch <= len(test) else test.repeat(batch // len(test) + 1, 1, 1, 1)[:batch]
        cases = {"eager float32": eager(model, x), "ORT float32": ort(sessions["float"], x),
                 "ORT int8 QDQ": ort(sessions["int8"], x),
                 "ORT int8 QDQ, pre-processed": ort(sessions["int8_pre"], x),
                 "ORT int8 QDQ, first conv in float": ort(sessions["int8_first_float"], x)}
        times = interleaved(cases, args.repeats, args.min_run_time, args.clock)
        base = times["eager float32"][0]
        for label, (med, iqr) in times.items():
            print(f"  {batch:5d} {label:32s} {1e3 * med:10.4f} {1e3 * iqr:9.4f} {base / med:8.2f}")


def main() -> None:
    args = timing_args(timing_parser(__doc__))
    splits = tc.data.load_splits("mnist_sample")
    calibration = torch.stack([splits.train[i][0] for i in range(256)])
    test = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    start = load()
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, 1 thread, {args.repeats} repeats, "
          f"{args.clock} time, 1-minute load average before: {start:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            section(name, calibration, test, folder, args)
    print(f"\n1-minute load average: {start:.2f} before, {load():.2f} after")


if __name__ == "__main__":
    main()

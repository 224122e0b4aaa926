"""Honest measurements of a network: parameters, bytes on disk, FLOPs, latency, and a report comparing models.

What each number is, and what it is not:

* :func:`count_parameters` — entries of the parameter tensors; ``nonzero=True`` counts the non-zero entries of
  the *effective* weights (a ``torch.nn.utils.prune`` mask applied). A masked or pruned weight is **not** a
  smaller model: the dense tensor (and the mask) are still stored and multiplied.
* :func:`model_size_bytes` — exactly the bytes ``torch.save(model.state_dict())`` writes: dtype, buffers, masks
  and pickling overhead included. Parameter count × 4 is only an estimate of it.
* :func:`flops` — the multiply-adds of the matrix products and convolutions of one forward pass, times 2 (FLOPs =
  2 × MACs), as :class:`torch.utils.flop_counter.FlopCounterMode` counts them: the work the dense kernels *do*,
  zeros included. Bias additions, activations, pooling, normalisation (BatchNorm) and other element-wise work are
  **not** counted, so folding a BatchNorm into the preceding convolution leaves this number unchanged.
* :func:`latency` — wall-clock time of a forward pass measured by :mod:`torch.utils.benchmark` (median and
  inter-quartile range). FLOPs are not latency: memory traffic, kernel launch overhead, layer shapes and threads
  decide the time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import surgery
from .._validation import check_positive_int, check_tensor

__all__ = [
    "count_parameters",
    "model_size_bytes",
    "flops",
    "latency",
    "Latency",
    "compression_report",
    "CompressionReport",
    "ReportRow",
]


def _check_module(model: object, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the forward pass uses: ``weight`` (mask applied) for pruned ``weight_orig``, parametrised values."""
    out: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # handled through the parent's property
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations:
                out.append(getattr(module, pname))
        for pname, p in module._parameters.items():
            if p is None:
                continue
            if pname.endswith("_orig") and isinstance(getattr(module, pname[: -len("_orig")], None), torch.Tensor):
                out.append(getattr(module, pname[: -len("_orig")]))  # torch.nn.utils.prune: weight = weight_orig * mask
            else:
                out.append(p)
    return out


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameter entries of ``model`` (shared parameters counted once).

    Parameters
    ----------
    model : nn.Module
    nonzero : bool
        Count only non-zero entries of the effective weights: for a module pruned with ``torch.nn.utils.prune`` the
        masked ``weight`` replaces ``weight_orig``; for a ``torch.nn.utils.parametrize`` parametrisation the
        computed tensor replaces the original. This measures sparsity, not size: see :func:`model_size_bytes`.

    Examples
    --------
    ``nn.Linear(10, 5)`` has :math:`10\\cdot5 + 5 = 55` parameters.
    """
    _check_module(model)
    if not nonzero:
        return sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        return sum(int(torch.count_nonzero(t)) for t in _effective_tensors(model))


def model_size_bytes(model: nn.Module) -> int:
    """Bytes written by ``torch.save(model.state_dict())`` into an in-memory buffer.

    A file holds the same bytes up to the zip records' folder name, which ``torch.save`` takes from the file's stem
    (``archive`` for a buffer), so a file named ``archive.pt`` has exactly this size and others differ by a few
    dozen bytes of names and alignment padding.

    Counts parameters *and* buffers (BatchNorm statistics, pruning masks) at their stored dtype, plus the zip/pickle
    container. A pruned model whose zeros are stored densely is not smaller; only a different storage format is.
    """
    return surgery.state_bytes(_check_module(model))


def flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Floating point operations of one forward pass of ``model`` on ``example_input``: the multiply-adds (MACs) of its
    matrix products and convolutions, times 2.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which has formulas for ``mm``, ``addmm``, ``bmm``,
    ``baddbmm`` (so ``nn.Linear``, ``matmul`` and ``einsum``, which lower to them), convolutions (grouped,
    depthwise and transposed included) and scaled-dot-product attention, each as :math:`2 \\times` its MACs (the
    exact count of a length-:math:`k` dot product, :math:`2k - 1`, is rounded up to :math:`2k`). Everything else
    counts 0: the bias addition of ``addmm`` and of a convolution, activations (ReLU, ...), pooling, normalisation
    (BatchNorm, LayerNorm), softmax outside attention, element-wise arithmetic. A padded convolution counts the full
    kernel at every output position, zeros included, and a masked weight costs as much as a dense one.

    The count is for the whole batch in ``example_input``: divide by the batch size for FLOPs per sample.
    ``nn.Linear(10, 5)`` on a batch of one costs :math:`2\\cdot10\\cdot5 = 100` FLOPs (its 5 bias additions are not
    counted). Runs in eval mode under ``torch.no_grad`` and restores the model's mode.
    """
    _check_module(model)
    check_tensor(example_input, "example_input")
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with surgery.kept_modes(model, False), torch.no_grad(), counter:
        model(example_input)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Latency:
    """Forward-pass time in seconds: ``median`` and inter-quartile range ``iqr`` over ``runs`` timed blocks."""

    median: float
    iqr: float
    runs: int
    device: str
    threads: int

    def __str__(self) -> str:
        # the spread is an inter-quartile range, not a standard deviation: printed as such, never as "±"
        return f"{self.median * 1e3:.3f} ms (IQR {self.iqr * 1e3:.3f} ms, {self.runs} runs, {self.device})"


def latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    threads: int = 1,
    min_run_time: float = 0.2,
) -> Latency:
    """Median wall-clock time of ``model(example_input)`` under ``torch.inference_mode`` on ``device``.

    Measured with :meth:`torch.utils.benchmark.Timer.blocked_autorange` (which synchronises CUDA), on a deep copy
    of the model in eval mode (``model`` itself is not moved or changed), with ``threads`` CPU threads.
    Machine-dependent: print it in notebooks only in cells marked ``# NBVAL_IGNORE_OUTPUT``.
    """
    _check_module(model)
    check_tensor(example_input, "example_input")
    check_positive_int(threads, "threads")
    from torch.utils import benchmark

    device = torch.device(device)
    m = surgery.copy_model(model).to(device).eval()  # a pruned model too: deepcopy refuses it after a forward
    x = example_input.to(device)

    def forward() -> None:
        with torch.inference_mode():
            m(x)

    forward()  # warm-up
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    meas = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(median=float(meas.median), iqr=float(meas.iqr), runs=len(meas.times), device=str(device),
                   threads=threads)


@dataclass(frozen=True)
class ReportRow:
    """One model in a :class:`CompressionReport`. Ratios are original ÷ this model (``> 1`` = smaller/faster)."""

    name: str
    accuracy: float
    delta_accuracy: float
    params: int
    nonzero_params: int
    bytes: int
    flops: int
    latency_s: float | None
    compression_ratio: float
    flops_ratio: float
    speedup: float | None


def _byte_label(b: float, digits: int = 3) -> str:
    """A size in decimal units with ``digits`` significant digits: ``500 B``, ``20 kB``, ``1.5 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.{digits}g} {unit}"
    return f"{b:.{digits}g} B"


def _byte_labels(ticks: list[float]) -> list[str]:
    """Labels for ``ticks`` with as few significant digits (at least 3) as state each tick exactly."""
    scales = {"B": 1.0, "kB": 1e3, "MB": 1e6, "GB": 1e9}

    def exact(label: str, t: float) -> bool:
        value, unit = label.split()
        return math.isclose(float(value) * scales[unit], t, rel_tol=1e-9)

    for digits in range(3, 16):
        labels = [_byte_label(t, digits) for t in ticks]
        if all(exact(label, t) for label, t in zip(labels, ticks, strict=True)):
            break
    return labels


def _byte_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick positions in ``[lo, hi]`` for a log axis: the coarsest of ``{1}``, ``{1, 2, 5}``, ``{1, ..., 9}``
    times powers of ten that gives at least two (thinned to at most ``most``); on a range too narrow for that,
    round linear steps (matplotlib's ``MaxNLocator``)."""
    from matplotlib.ticker import MaxNLocator

    exponents = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(m * 10.0**e) for e in exponents for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 2:
            return ticks[:: math.ceil(len(ticks) / most)]
    return [float(t) for t in MaxNLocator(nbins=4).tick_values(lo, hi) if lo <= t <= hi]


@dataclass(frozen=True)
class CompressionReport:
    """Rows comparing compressed models with the original; ``str(report)`` is a text table, :meth:`plot` draws it."""

    rows: tuple[ReportRow, ...]

    def to_dict(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def __str__(self) -> str:
        header = ["model", "accuracy", "Δacc", "params", "nonzero", "bytes", "FLOPs", "latency ms", "size ×",
                  "FLOPs ×", "speed-up ×"]
        lines = []
        for r in self.rows:
            lines.append([
                r.name,
                f"{100 * r.accuracy:.2f}%",
                f"{100 * r.delta_accuracy:+.2f}",
                f"{r.params:,}",
                f"{r.nonzero_params:,}",
                f"{r.bytes:,}",
                f"{r.flops:,}",
                "-" if r.latency_s is None else f"{1e3 * r.latency_s:.3f}",
                f"{r.compression_ratio:.2f}",
                f"{r.flops_ratio:.2f}",
                "-" if r.speedup is None else f"{r.speedup:.2f}",
            ])
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

        def fmt(cells: list[str]) -> str:
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

        return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])

    def __repr__(self) -> str:
        return str(self)

    def plot(self, ax=None):
        """Accuracy against bytes on disk (log scale), one labelled point per model; returns the axes.

        The x ticks are a few round sizes in kB/MB (:func:`_byte_ticks`), so that their labels never overlap, however
        close together or far apart the models' sizes are.
        """
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        for r in self.rows:
            ax.scatter(r.bytes, 100 * r.accuracy)
            ax.annotate(r.name, (r.bytes, 100 * r.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.autoscale_view()
        lo, hi = ax.get_xlim()
        ticks = _byte_ticks(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter(_byte_labels(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())  # the log scale's minor labels are what overlapped
        ax.set_xlim(lo, hi)
        ax.set_xlabel("bytes on disk (torch.save of the state_dict)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        return ax


def compression_report(
    original: nn.Module,
    compressed: nn.Module | Mapping[str, nn.Module],
    test_data,
    *,
    example_input: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    measure_latency: bool = True,
    threads: int = 1,
) -> CompressionReport:
    """Compare ``original`` with one or more compressed models on the same held-out ``test_data``.

    Each row: test accuracy and its change from the original, parameters (all and non-zero), bytes on disk
    (:func:`model_size_bytes`), FLOPs of one forward pass on ``example_input`` (:func:`flops`), latency
    (:func:`latency`, optional) and the ratios original ÷ model. No model is changed (evaluation and timing use deep
    copies on ``device``).

    Parameters
    ----------
    original : nn.Module
    compressed : nn.Module or mapping name → nn.Module
        A single model is named ``"compressed"``.
    test_data : Dataset
        Yields ``(inputs, targets)``.
    example_input : torch.Tensor, optional
        Input for FLOPs and latency; default: the first sample of ``test_data`` as a batch of one.
    """
    from ..train import evaluate

    _check_module(original, "original")
    models = {"compressed": compressed} if isinstance(compressed, nn.Module) else dict(compressed)
    if not models:
        raise ValueError("compressed must hold at least one model, got an empty mapping")
    for k, m in models.items():
        _check_module(m, f"compressed[{k!r}]")
    if example_input is None:
        example_input = test_data[0][0].unsqueeze(0)
    device = torch.device(device)

    def measure(name: str, model: nn.Module) -> dict:
        m = surgery.copy_model(model).to(device).eval()
        x = example_input.to(device)
        return {
            "name": name,
            "accuracy": evaluate(m, test_data, device=device).accuracy,
            "params": count_parameters(m),
            "nonzero_params": count_parameters(m, nonzero=True),
            "bytes": model_size_bytes(m),
            "flops": flops(m, x),
            "latency_s": latency(m, x, device=device, threads=threads).median if measure_latency else None,
        }

    base = measure("original", original)
    results = [base] + [measure(k, m) for k, m in models.items()]
    rows = []
    for r in results:
        rows.append(ReportRow(
            **r,
            delta_accuracy=r["accuracy"] - base["accuracy"],
            compression_ratio=base["bytes"] / r["bytes"],
            flops_ratio=base["flops"] / r["flops"] if r["flops"] else math.inf,
            speedup=None if r["latency_s"] is None else base["latency_s"] / r["latency_s"],
        ))
    return CompressionReport(rows=tuple(rows))

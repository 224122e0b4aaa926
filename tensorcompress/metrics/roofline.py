r"""Why a network is (not) faster: the roofline of each layer, the machine's two peaks, latency against batch size.

A layer that does :math:`F` floating point operations and moves :math:`B` bytes between memory and the cores takes
at least

.. math:: t \ge \max\left(\frac{F}{P}, \frac{B}{W}\right)

on a machine with peak arithmetic :math:`P` (FLOP/s) and memory bandwidth :math:`W` (bytes/s) — the *roofline*
model (Williams, Waterman & Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 2009). The ratio :math:`I = F / B` is the layer's *arithmetic intensity*: below the ridge
:math:`P / W` the bytes bind ("memory-bound": a depthwise 3×3 convolution does 9 multiply–adds per activation it
reads, ReLU, pooling and residual additions none), above it the arithmetic does ("compute-bound": a dense
convolution with many channels, a large matrix product). Removing FLOPs from a memory-bound layer does not make it
faster; removing bytes (fewer channels, int8 activations, fusing a ReLU into the convolution before it) does.

* :func:`machine_peaks` — :math:`P` and :math:`W` as this process measures them (:class:`MachinePeaks`), once per
  device and thread count.
* :func:`roofline` — one row per leaf layer of the traced forward pass (:func:`tc.surgery.trace
  <tensorcompress.surgery.trace>`): FLOPs (as :func:`~tensorcompress.metrics.flops` counts them: matrix products
  and convolutions only, so the rows sum to ``tc.flops``), bytes moved (the layer's weights and buffers, its input
  and output activations, each read or written once, in their dtype), intensity, the bound above and which term
  binds, and the layer's own measured time on the input it received (:class:`Roofline`).
* :func:`latency_vs_batch` — median time and throughput per batch size, for an ``nn.Module`` or an ONNX Runtime
  session (:class:`BatchLatency`). Per-sample cost falls with the batch while fixed costs (Python, kernel launch,
  reading the weights) are shared by more samples; past the point where the activations leave the caches it stops
  falling.

Bytes "moved once each" is a model, not a measurement: a layer whose tensors stay in the caches moves fewer bytes
to and from memory, and a kernel that reads its input several times (an unfused im2col) moves more. Measured times
are machine-dependent: print them in notebooks only in cells marked ``# NBVAL_IGNORE_OUTPUT``.

Timing protocol (:func:`roofline`'s layers and :func:`latency_vs_batch`): every case is called twice to warm up
(the second call sizes its blocks: as many calls as fill ``min_run_time``, at least one), then timed in
``repeats`` rounds (at least 7), the cases interleaved within each round, each round one block timed by
:meth:`torch.utils.benchmark.Timer.timeit` (wall-clock time per call, the accelerator synchronised); the result is
the median of the rounds and their interquartile range.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .. import surgery
from .._validation import check_positive_int, check_real, check_tensor
from .measure import _check_module
from .measure import flops as count_flops

__all__ = ["MachinePeaks", "machine_peaks", "LayerRoofline", "Roofline", "roofline", "BatchLatency",
           "latency_vs_batch"]

BINDS = ("compute", "memory", "none")
"""What bounds a layer's time: its FLOPs, its bytes, or nothing (a view such as ``flatten`` moves no bytes)."""


# ---------------------------------------------------------------- timing


def _timed(cases: dict[object, Callable[[], object]], *, threads: int, repeats: int, min_run_time: float
           ) -> dict[object, tuple[float, float]]:
    """``{key: (median, interquartile range)}`` in seconds per call: the protocol of the module docstring."""
    import time

    from torch.utils import benchmark

    timers, numbers = {}, {}
    for k, fn in cases.items():
        fn()  # warm-up (allocations, lazy initialisation, caches)
        timers[k] = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        start = time.perf_counter()
        timers[k].timeit(1)  # a second warm-up call, timed to size the blocks
        numbers[k] = max(1, round(min_run_time / max(time.perf_counter() - start, 1e-9)))
    samples: dict[object, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, timer in timers.items():
            samples[k].append(float(timer.timeit(numbers[k]).median))
    out = {}
    for k, s in samples.items():
        q1, _, q3 = statistics.quantiles(s, n=4)
        out[k] = (statistics.median(s), q3 - q1)
    return out


def _check_protocol(repeats: object, min_run_time: object) -> None:
    check_positive_int(repeats, "repeats", minimum=7)
    if check_real(min_run_time, "min_run_time") <= 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time}")


# ---------------------------------------------------------------- machine peaks


@dataclass(frozen=True)
class MachinePeaks:
    """The two ceilings of the roofline: ``flops_per_s`` (float32 matrix-product FLOP/s), ``bytes_per_s`` (memory
    bandwidth, bytes read + written per second), the CPU ``threads`` they were measured with and the ``device``.

    Give explicit values to compute a roofline for another machine, or independently of this one (as tests do).
    """

    flops_per_s: float
    bytes_per_s: float
    threads: int
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("flops_per_s", "bytes_per_s"):
            value = check_real(getattr(self, name), name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        check_positive_int(self.threads, "threads")

    @property
    def ridge(self) -> float:
        """The intensity (FLOP/byte) where the ceilings meet: layers below it are memory-bound."""
        return self.flops_per_s / self.bytes_per_s

    def bound(self, flops: int, nbytes: int) -> tuple[float, str]:
        """``(max(flops / P, nbytes / W) seconds, "compute" | "memory" | "none")`` for one layer."""
        t_compute, t_memory = flops / self.flops_per_s, nbytes / self.bytes_per_s
        if t_compute == t_memory == 0:
            return 0.0, "none"
        return max(t_compute, t_memory), "compute" if t_compute >= t_memory else "memory"

    def __str__(self) -> str:
        unit = "thread" if self.threads == 1 else "threads"
        return (f"{self.flops_per_s / 1e9:.1f} GFLOP/s, {self.bytes_per_s / 1e9:.1f} GB/s ({self.device}, "
                f"{self.threads} {unit}; ridge {self.ridge:.1f} FLOP/byte)")


_PEAKS: dict[tuple[str, int], MachinePeaks] = {}
"""A cache of measured peaks per (device, threads): each is measured once per process."""

_GEMM_SIZE = {"cpu": 1024, "cuda": 4096}  # large enough for the best kernel's blocking to reach its steady state
_MIN_STREAM_BYTES = 64 * 2**20


def _last_level_cache_bytes(device: torch.device) -> int:
    """The largest cache of ``device`` (the CPU's last level from sysfs, a GPU's L2), 32 MiB if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 * 2**20)


def _best(fn: Callable[[], object], threads: int, calls: int) -> float:
    """The fastest of ``calls`` timed calls of ``fn`` (after one untimed call), in seconds."""
    from torch.utils import benchmark

    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return min(float(timer.timeit(1).median) for _ in range(calls))


def _gemm_flops_per_s(device: torch.device, threads: int) -> float:
    n = _GEMM_SIZE[device.type]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    c = torch.empty(n, n, device=device)
    return 2 * n**3 / _best(lambda: torch.mm(a, b, out=c), threads, 10)


def _stream_bytes_per_s(device: torch.device, threads: int) -> float:
    n = max(_last_level_cache_bytes(device), _MIN_STREAM_BYTES) // 4  # 3 arrays: 3x the cache
    a = torch.full((n,), 1.0, device=device)  # written, so the pages exist before the timing (and no denormals)
    b = torch.full((n,), 2.0, device=device)
    c = torch.empty_like(a)
    return 3 * 4 * n / _best(lambda: torch.add(a, b, out=c), threads, 5)


def machine_peaks(*, threads: int | None = None, device: torch.device | str = "cpu") -> MachinePeaks:
    r"""Peak float32 matrix-product FLOP/s and memory bandwidth of ``device`` with ``threads`` CPU threads.

    Measured once per process, device and thread count, and cached (a second call returns the same object). Torch's
    thread count is set to ``threads`` only while measuring (by :class:`torch.utils.benchmark.Timer`).

    * ``flops_per_s`` — :math:`2n^3` over the fastest time of ``torch.mm`` of two :math:`n \times n` float32
      matrices (:math:`n` = 1024 on a CPU, 4096 on a GPU): what PyTorch's own best kernel attains on the most
      favourable shape. It is **not** the data sheet's peak (cores × vector width × FMA × clock), which no library
      reaches, nor what a convolution, a small or skinny product or an int8 kernel reaches (int8 and bfloat16
      kernels have other, higher peaks).
    * ``bytes_per_s`` — the bytes read and written by ``torch.add(a, b, out=c)`` over float32 arrays each as
      large as the last-level cache (at least 64 MiB), per second, at its fastest: the bandwidth of streaming from main
      memory, counted like the STREAM benchmark's "Add" (:math:`3 \times 4n` bytes; the cache's own reads of ``c``
      before writing it are not counted). It is **not** the bandwidth of the caches: a layer whose tensors stay in
      a cache can move its bytes faster than this ceiling, and attain more than the roofline predicts.

    Both are the best of several timed calls (10 products, 5 additions): a lower bound on what the machine can do,
    noisy where other processes share it.

    Parameters
    ----------
    threads : int, optional
        CPU threads (default: torch's current thread count).
    device : torch.device or str
        ``"cpu"`` or a CUDA device.

    Returns
    -------
    MachinePeaks
    """
    threads = torch.get_num_threads() if threads is None else check_positive_int(threads, "threads")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a torch.device or a string, got {type(device).__name__}")
    device = torch.device(device)
    if device.type not in _GEMM_SIZE:
        raise ValueError(f"device must be a CPU or CUDA device, got {device}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), threads)
    if key not in _PEAKS:
        with torch.no_grad():
            _PEAKS[key] = MachinePeaks(_gemm_flops_per_s(device, threads), _stream_bytes_per_s(device, threads),
                                       threads, str(device))
    return _PEAKS[key]


# ---------------------------------------------------------------- roofline


@dataclass(frozen=True)
class LayerRoofline:
    """One row of a :class:`Roofline`: one call of a leaf module or one torch function of the forward pass.

    ``flops`` as :func:`~tensorcompress.metrics.flops` counts them; ``bytes`` = ``weight_bytes`` (the module's
    parameters and buffers, or the model's tensors a function reads) + its input activations + its output, each
    once (an in-place operation reads and writes its tensor: both counted; a view or identity moves nothing);
    ``intensity`` = flops / bytes (NaN when nothing is moved); ``bound`` = max(flops / P, bytes / W) seconds and
    ``binds`` which term is the larger; ``measured`` and ``measured_iqr`` the layer's median time alone on the input
    it received in the traced pass and its interquartile range (``None`` when not measured, and for the FLOPs
    outside every traced layer, which run only inside the whole pass).
    """

    name: str
    kind: str
    flops: int
    bytes: int
    weight_bytes: int
    intensity: float
    bound: float
    binds: str
    measured: float | None = None
    measured_iqr: float | None = None

    @property
    def attained(self) -> float | None:
        """FLOP/s the layer attained (``flops / measured``), ``None`` when not measured."""
        return None if not self.measured else self.flops / self.measured


@dataclass(frozen=True)
class Roofline:
    """Per-layer FLOPs, bytes, intensity, time bound and measured time of one forward pass (see :func:`roofline`).

    ``model_time`` is the median time of the whole forward pass measured in the same rounds (``None`` when not
    measured): it differs from the sum of the layers' times by what runs between layers (Python, the model's own
    control flow) and by the caches, warm for a layer timed alone.
    """

    rows: tuple[LayerRoofline, ...]
    machine: MachinePeaks
    batch_size: int
    model_time: float | None = None

    @property
    def flops(self) -> int:
        """FLOPs of the whole forward pass (the sum of the rows, equal to ``tc.flops``)."""
        return sum(r.flops for r in self.rows)

    @property
    def bytes(self) -> int:
        """Bytes moved by all the layers (each layer's own count: a tensor passed on is counted by both layers)."""
        return sum(r.bytes for r in self.rows)

    @property
    def bound(self) -> float:
        """Seconds the rows' bounds add up to: what the machine's peaks allow layer after layer."""
        return sum(r.bound for r in self.rows)

    @property
    def measured(self) -> float | None:
        """Sum of the layers' measured times (``None`` when not measured)."""
        if self.model_time is None:
            return None
        return sum(r.measured for r in self.rows if r.measured is not None)

    def share(self, binds: str) -> float:
        """Fraction of the layers' measured time spent in rows that ``binds`` ("compute", "memory" or "none")."""
        if binds not in BINDS:
            raise ValueError(f"binds must be one of {BINDS}, got {binds!r}")
        total = self.measured
        if total is None:
            raise ValueError("share needs measured times: call roofline(..., measure=True)")
        return sum(r.measured for r in self.rows if r.binds == binds and r.measured is not None) / total

    def table(self) -> str:
        """The rows as a text table, with totals and the machine's peaks."""
        head = (f"{'layer':28s} {'kind':18s} {'MFLOP':>9s} {'kB':>9s} {'FLOP/B':>7s} {'bound us':>9s} {'binds':>7s} "
                f"{'meas. us':>9s} {'x bound':>8s}")
        lines = [head, "-" * len(head)]

        def line(name: str, kind: str, flops: int, nbytes: int, bound: float, binds: str, measured: float | None):
            intensity = f"{flops / nbytes:7.2f}" if nbytes else f"{'-':>7s}"
            meas = f"{measured * 1e6:9.1f}" if measured is not None else f"{'-':>9s}"
            ratio = f"{measured / bound:8.1f}" if measured is not None and bound > 0 else f"{'-':>8s}"
            return (f"{name[:28]:28s} {kind[:18]:18s} {flops / 1e6:9.3f} {nbytes / 1e3:9.1f} {intensity} "
                    f"{bound * 1e6:9.1f} {binds:>7s} {meas} {ratio}")

        for r in self.rows:
            lines.append(line(r.name, r.kind, r.flops, r.bytes, r.bound, r.binds, r.measured))
        lines.append("-" * len(head))
        lines.append(line("total (layers)", "", self.flops, self.bytes, self.bound, "", self.measured))
        if self.model_time is not None:
            lines.append(f"whole forward pass measured: {self.model_time * 1e6:.1f} us")
        lines.append(f"batch {self.batch_size}; peaks {self.machine}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, ax=None, labels: bool = True):
        """Log-log roofline: each layer that does FLOPs at its intensity and attained FLOP/s (at its bound when not
        measured), coloured by what binds it and named if ``labels``, under the two ceilings min(P, I·W); returns
        the axes. Layers without FLOPs (activations, pooling, additions) have no place on these axes: they are in
        :meth:`table`."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        rows = [r for r in self.rows if r.flops > 0 and r.bytes > 0]
        peaks = self.machine
        xs = [r.intensity for r in rows] + [peaks.ridge]
        grid = torch.logspace(math.log10(min(xs) / 4), math.log10(max(xs) * 4), 200).tolist()
        ax.plot(grid, [min(peaks.flops_per_s, i * peaks.bytes_per_s) for i in grid], color="black", lw=1.5,
                label=f"ceilings: {peaks.flops_per_s / 1e9:.0f} GFLOP/s, {peaks.bytes_per_s / 1e9:.0f} GB/s")
        colours = {"compute": "tab:blue", "memory": "tab:orange"}
        for binds, colour in colours.items():
            pts = [r for r in rows if r.binds == binds]
            ys = [r.attained if r.measured is not None else r.flops / r.bound for r in pts]
            ax.scatter([r.intensity for r in pts], ys, color=colour, label=f"{binds}-bound", zorder=3)
            for r, y in zip(pts, ys, strict=True) if labels else ():
                ax.annotate(r.name, (r.intensity, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("FLOP/s" + ("" if self.measured is not None else " (at the bound: not measured)"))
        ax.legend(fontsize=8)
        return ax


def _leaves(obj: object) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dict values, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for o in items for t in _leaves(o)]


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list({id(t): t for t in tensors}.values())


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _call(node: surgery.Node) -> Callable[[], object]:
    """A function that runs ``node`` again on the arguments it received in the traced pass."""
    if isinstance(node.target, nn.Module):
        return lambda: node.target(*node.args)
    args, kwargs = node.args
    return lambda: node.target(*args, **kwargs)


def _row(node: surgery.Node, name: str, state: set[int], machine: MachinePeaks) -> LayerRoofline:
    """Run ``node`` once under the FLOP counter and count its bytes (``state``: ids of the model's tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(node.target, nn.Module):
        weights = _unique([*node.target.parameters(), *node.target.buffers()])
        inputs = _unique(_leaves(node.args))
    else:
        read = _unique(_leaves(node.args))
        weights = [t for t in read if id(t) in state]
        inputs = [t for t in read if id(t) not in state]
    versions = [t._version for t in inputs]  # an in-place operation bumps the version of the tensor it writes
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = _unique(_leaves(_call(node)()))
    in_place = any(t._version != v for t, v in zip(inputs, versions, strict=True))
    storages = {t.untyped_storage().data_ptr() for t in inputs}
    view = not in_place and all(t.untyped_storage().data_ptr() in storages for t in outputs)
    flops = int(counter.get_total_flops())
    nbytes = 0 if view else _nbytes(weights) + _nbytes(inputs) + _nbytes(outputs)
    bound, binds = machine.bound(flops, nbytes)
    return LayerRoofline(name, node.name, flops, nbytes, _nbytes(weights), flops / nbytes if nbytes else math.nan,
                         bound, binds)


def _names(nodes: list[surgery.Node]) -> list[str]:
    """Row names: the module's name (``fc[2]`` for its second call), a function's name numbered (``add[2]``)."""
    seen: dict[str, int] = {}
    out = []
    for node in nodes:
        base = node.module_name if node.module_name is not None else node.name
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}[{seen[base]}]")
    return out


def roofline(model: nn.Module, example_input: torch.Tensor, *, machine: MachinePeaks | None = None,
             measure: bool = True, repeats: int = 7, min_run_time: float = 0.01) -> Roofline:
    r"""The roofline table of one forward pass of ``model`` on ``example_input``: one row per leaf-module call and
    per torch function outside a leaf (:func:`tc.surgery.trace <tensorcompress.surgery.trace>`), in call order.

    Each row is computed by running that layer again, alone, on the input it received in the traced pass, under
    :class:`torch.utils.flop_counter.FlopCounterMode`: its FLOPs are what :func:`~tensorcompress.metrics.flops`
    counts for it, and the rows sum to ``tc.flops(model, example_input)`` (work done outside every traced layer —
    a product of two parameters in ``forward`` — is one more row, ``(outside the traced layers)``, without bytes).
    Rows without FLOPs (activations, pooling, residual additions) are kept: they are where memory-bound time goes.
    See :class:`LayerRoofline` for what each column counts and the module docstring for the timing protocol.

    The model is copied (and run in eval mode, without gradients): ``model`` is not changed, observers in it do not
    see the layer-by-layer runs.

    Parameters
    ----------
    model : nn.Module
    example_input : torch.Tensor
        One batch, on the model's device; its batch size is part of what is counted and measured.
    machine : MachinePeaks, optional
        The ceilings (default: :func:`machine_peaks` of the input's device with torch's current thread count). The
        layers are timed with ``machine.threads`` threads.
    measure : bool
        Time every layer alone and the whole forward pass; ``False`` gives the counts and bounds only (no timing).
    repeats : int >= 7
        Rounds of the timing protocol.
    min_run_time : float
        Seconds of each round's block per layer (a block holds at least one call).

    Returns
    -------
    Roofline

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``, ``example_input`` not a tensor or ``machine`` not a
        :class:`MachinePeaks`.
    """
    _check_module(model)
    check_tensor(example_input, "example_input", min_ndim=1)
    if machine is not None and not isinstance(machine, MachinePeaks):
        raise TypeError(f"machine must be a MachinePeaks or None, got {type(machine).__name__}")
    if not isinstance(measure, bool):
        raise TypeError(f"measure must be a bool, got {type(measure).__name__}")
    _check_protocol(repeats, min_run_time)
    machine = machine_peaks(device=example_input.device) if machine is None else machine
    m = surgery.copy_model(model).eval()
    graph = surgery.trace(m, example_input)
    nodes = graph.nodes[1:]  # node 0 is the input
    state = {id(t) for t in (*m.parameters(), *m.buffers())}
    with torch.no_grad():
        rows = [_row(node, name, state, machine) for node, name in zip(nodes, _names(nodes), strict=True)]
        rest = count_flops(m, example_input) - sum(r.flops for r in rows)
    if rest:
        bound, binds = machine.bound(rest, 0)
        rows.append(LayerRoofline("(outside the traced layers)", "", rest, 0, 0, math.nan, bound, binds))
    model_time = None
    if measure:
        cases: dict[object, Callable[[], object]] = {i: _call(node) for i, node in enumerate(nodes)}
        cases["model"] = lambda: m(example_input)
        times = _timed({k: _in_inference_mode(fn) for k, fn in cases.items()}, threads=machine.threads,
                       repeats=repeats, min_run_time=min_run_time)
        model_time = times.pop("model")[0]
        # the FLOPs outside every traced layer (the last row, if any) ran only inside the whole pass: not timed
        rows = [replace(r, measured=times[i][0], measured_iqr=times[i][1]) if i in times else r
                for i, r in enumerate(rows)]
    return Roofline(tuple(rows), machine, int(example_input.shape[0]), model_time)


def _in_inference_mode(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return fn()

    return run


# ---------------------------------------------------------------- latency against batch size


@dataclass(frozen=True)
class BatchLatency:
    """Time of one forward pass (or session run) at ``batch_size``: ``median`` and ``iqr`` in seconds over
    ``repeats`` rounds, with ``threads`` threads (a session's intra-op threads, ``None`` if it does not say)."""

    batch_size: int
    median: float
    iqr: float
    repeats: int
    threads: int | None

    @property
    def throughput(self) -> float:
        """Samples per second: ``batch_size / median``."""
        return self.batch_size / self.median

    def __str__(self) -> str:
        return (f"batch {self.batch_size}: {self.median * 1e3:.3f} ms (IQR {self.iqr * 1e3:.3f} ms), "
                f"{self.throughput:.0f} samples/s")


def _batch(x, size: int):
    """``size`` rows from ``x`` (a tensor or NumPy array): its first rows, repeated cyclically if it has fewer."""
    n = x.shape[0]
    if size <= n:
        return x[:size]
    index = torch.arange(size) % n
    return x[index.to(x.device)] if isinstance(x, torch.Tensor) else x[index.numpy()]


def _check_batch_sizes(batch_sizes: object) -> tuple[int, ...]:
    if not isinstance(batch_sizes, (list, tuple)) or not batch_sizes:
        raise TypeError(f"batch_sizes must be a non-empty list or tuple of ints, got {batch_sizes!r}")
    for b in batch_sizes:
        check_positive_int(b, "batch_sizes[i]")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError(f"batch_sizes must not repeat a size, got {batch_sizes!r}")
    return tuple(batch_sizes)


def _session_call(session, example_input, threads: int, input_name: str | None):
    """``(run(x), x as a NumPy array, the session's threads)`` for a session with ``.run(None, {name: array})``."""
    import numpy as np

    if isinstance(example_input, torch.Tensor):
        example_input = example_input.detach().cpu().numpy()
    if not isinstance(example_input, np.ndarray) or example_input.ndim < 1:
        raise TypeError(f"example_input of a session must be a tensor or NumPy array with a batch dimension, got "
                        f"{type(example_input).__name__}")
    if input_name is None:
        if not callable(getattr(session, "get_inputs", None)):
            raise TypeError("input_name is needed for a session without get_inputs()")
        input_name = session.get_inputs()[0].name
    elif not isinstance(input_name, str):
        raise TypeError(f"input_name must be a string or None, got {type(input_name).__name__}")
    session_threads = None
    if callable(getattr(session, "get_session_options", None)):
        session_threads = session.get_session_options().intra_op_num_threads
        if session_threads != threads:
            raise ValueError(f"the session runs with intra_op_num_threads={session_threads} (0: all cores) and "
                             f"threads={threads} was asked for: create it with SessionOptions whose "
                             f"intra_op_num_threads is {threads}")
    return (lambda x: session.run(None, {input_name: x})), example_input, session_threads


def latency_vs_batch(model, example_input, batch_sizes: Sequence[int] = (1, 8, 64, 256), *, threads: int = 1,
                     repeats: int = 7, min_run_time: float = 0.05, input_name: str | None = None
                     ) -> list[BatchLatency]:
    """Median time and throughput of ``model`` at each batch size, the batch sizes interleaved in every round.

    Parameters
    ----------
    model : nn.Module or session
        A module (a copy is timed, in eval mode, under ``torch.inference_mode``, with ``threads`` torch threads),
        or any object with an ONNX Runtime–like ``run(None, {input_name: array})`` (``onnxruntime.InferenceSession``
        is one); a session fixes its threads when it is created, and one that reports them
        (``get_session_options()``) must run with ``threads`` intra-op threads. For 1 thread::

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    example_input : torch.Tensor or numpy.ndarray
        Rows to build each batch from: the first ``b`` rows, repeated cyclically when there are fewer than ``b``. A
        session receives a NumPy array.
    batch_sizes : sequence of int
        Distinct positive batch sizes.
    threads : int
        Threads of the measurement.
    repeats, min_run_time :
        Rounds (at least 7) and seconds of each round's block per batch size (the module docstring's protocol).
    input_name : str, optional
        A session's input name (default: ``session.get_inputs()[0].name``).

    Returns
    -------
    list of BatchLatency
        One per batch size, in the order given.

    Raises
    ------
    TypeError
        If ``model`` is neither a module nor has a callable ``run``, or an argument has the wrong type.
    ValueError
        If a batch size repeats or is not positive, or a session's threads differ from ``threads``.
    """
    sizes = _check_batch_sizes(batch_sizes)
    check_positive_int(threads, "threads")
    _check_protocol(repeats, min_run_time)
    if isinstance(model, nn.Module):
        check_tensor(example_input, "example_input", min_ndim=1)
        run, x, used = surgery.copy_model(model).eval(), example_input, threads
    elif callable(getattr(model, "run", None)):
        run, x, used = _session_call(model, example_input, threads, input_name)
    else:
        raise TypeError(f"model must be an nn.Module or a session with run(None, {{name: array}}), got "
                        f"{type(model).__name__}")
    cases = {b: partial(run, _batch(x, b)) for b in sizes}
    if isinstance(model, nn.Module):
        cases = {b: _in_inference_mode(fn) for b, fn in cases.items()}
    times = _timed(cases, threads=threads, repeats=repeats, min_run_time=min_run_time)
    return [BatchLatency(b, times[b][0], times[b][1], repeats, used) for b in sizes]


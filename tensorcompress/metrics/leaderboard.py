r"""One table of every compression method: accuracy (mean ± std over seeds) against real bytes and measured latency.

A method is worth using only if nothing else is at least as accurate *and* at least as small: the **Pareto front**
of the (bytes, accuracy) plane. Entry :math:`a` dominates :math:`b` when

.. math:: \text{bytes}_a \le \text{bytes}_b,\quad \overline{\text{acc}}_a \ge \overline{\text{acc}}_b,
          \quad\text{one of them strict,}

and the front is the set of entries no other entry dominates (the same with latency in place of bytes). With three
seeds a mean accuracy is uncertain by about one standard deviation, so two entries whose means differ by less than
their spread are not really ranked; the table prints the spread next to the mean for that reason.

What each column is:

* **accuracy** — test accuracy in percent, one value per model given (one per training seed), mean ± sample std
  (:class:`tensorcompress.metrics.SeedStats`); a single deterministic model gives one value and no spread;
* **bytes** — real bytes: what ``torch.save`` writes for the model's ``state_dict``
  (:func:`tensorcompress.metrics.model_size_bytes`), or, where the method writes its own file (a sparse or
  entropy-coded file), that file's size, passed as ``nbytes`` (the table says which);
* **FLOPs** — :func:`tensorcompress.metrics.flops` (:class:`torch.utils.flop_counter.FlopCounterMode`): what the
  dense kernels do — a masked weight costs as much as a dense one;
* **latency** — :func:`tensorcompress.metrics.latency` (``torch.utils.benchmark``), median of the first model,
  machine-dependent.

Ratios are the baseline's ÷ the entry's (``> 1`` = smaller / faster). A user adds a row for their own method with
:meth:`Leaderboard.add` (models measured here) or :meth:`Leaderboard.add_entry` (numbers measured elsewhere).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .. import surgery
from .measure import _byte_labels, _byte_ticks, count_parameters, flops, latency, model_size_bytes
from .seeds import SeedStats

__all__ = ["Entry", "Leaderboard"]

_AXES = ("bytes", "latency_s")


@dataclass(frozen=True)
class Entry:
    """One method's row: ``accuracy`` values in percent (one per seed), real ``bytes`` (``bytes_from`` says what
    was measured), ``flops``, ``latency_s`` (or ``None``), ``params`` and a free ``note``."""

    name: str
    family: str
    accuracy: tuple[float, ...]
    bytes: int
    bytes_from: str = "torch.save"
    flops: int | None = None
    latency_s: float | None = None
    params: int | None = None
    note: str = ""

    @property
    def mean(self) -> float:
        """Mean accuracy in percent."""
        return math.fsum(self.accuracy) / len(self.accuracy)

    @property
    def stats(self) -> SeedStats | None:
        """Mean ± sample std over the seeds (``None`` for a single value)."""
        n = len(self.accuracy)
        return SeedStats.from_values(self.accuracy, range(n)) if n > 1 else None

    def accuracy_label(self) -> str:
        """``"97.1 ± 0.3"`` over seeds, ``"97.1"`` for one deterministic model."""
        stats = self.stats
        return f"{self.mean:.1f}" if stats is None else str(stats)


def _check_entry(entry: Entry) -> None:
    if not isinstance(entry.name, str) or not entry.name:
        raise ValueError(f"name must be a non-empty str, got {entry.name!r}")
    ok = all(isinstance(a, numbers.Real) and not isinstance(a, bool) and 0.0 <= a <= 100.0 for a in entry.accuracy)
    if not entry.accuracy or not ok:
        raise ValueError(f"accuracy of {entry.name!r} must be one or more percentages in [0, 100], "
                         f"got {entry.accuracy!r}")
    if isinstance(entry.bytes, bool) or not isinstance(entry.bytes, int) or entry.bytes <= 0:
        raise ValueError(f"bytes of {entry.name!r} must be a positive int, got {entry.bytes!r}")
    if entry.latency_s is not None and not (entry.latency_s > 0 and math.isfinite(entry.latency_s)):
        raise ValueError(f"latency_s of {entry.name!r} must be a positive number or None, got {entry.latency_s!r}")


def _dominates(a: Entry, b: Entry, axis: str) -> bool:
    ca, cb = getattr(a, axis), getattr(b, axis)
    return ca <= cb and a.mean >= b.mean and (ca < cb or a.mean > b.mean)


class Leaderboard:
    """Entries measured on the same test data, the first (or the one of family ``"baseline"``) the reference.

    Parameters
    ----------
    test_data : Dataset
        Yields ``(inputs, targets)``; every model is evaluated on it (:func:`tensorcompress.evaluate`).
    example_input : Tensor
        Input for FLOPs and latency (a batch of one for a per-sample latency).
    measure_latency : bool
        Time each entry's first model (default ``True``).
    threads : int
        CPU threads for the latency measurement.

    Examples
    --------
    >>> board = Leaderboard(test, test.tensors[0][:1])            # doctest: +SKIP
    >>> board.add("float32", lenet5, family="baseline")            # doctest: +SKIP
    >>> board.add("W8 per-channel", [q0, q1, q2], family="quantized")  # doctest: +SKIP
    >>> print(board); board.plot()                                 # doctest: +SKIP
    """

    def __init__(self, test_data, example_input: torch.Tensor, *, measure_latency: bool = True,
                 threads: int = 1) -> None:
        if not isinstance(example_input, torch.Tensor):
            raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
        self.test_data, self.example_input = test_data, example_input
        self.measure_latency, self.threads = bool(measure_latency), threads
        self._entries: list[Entry] = []

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    @property
    def baseline(self) -> Entry:
        """The first entry of family ``"baseline"``, else the first entry."""
        if not self._entries:
            raise ValueError("the leaderboard is empty: add the baseline first")
        return next((e for e in self._entries if e.family == "baseline"), self._entries[0])

    def add_entry(self, entry: Entry) -> Entry:
        """Add a row measured elsewhere (checked: a unique name, percentages, positive bytes)."""
        if not isinstance(entry, Entry):
            raise TypeError(f"entry must be a Leaderboard Entry, got {type(entry).__name__}")
        _check_entry(entry)
        entry = replace(entry, accuracy=tuple(float(a) for a in entry.accuracy))
        if any(e.name == entry.name for e in self._entries):
            raise ValueError(f"an entry named {entry.name!r} is already on the leaderboard")
        self._entries.append(entry)
        return entry

    def add(self, name: str, models: nn.Module | Sequence[nn.Module], *, family: str, nbytes: int | None = None,
            bytes_from: str | None = None, note: str = "") -> Entry:
        """Measure ``models`` (one per seed, or one deterministic model) and add the row.

        Accuracy is measured on every model; bytes (unless ``nbytes`` gives the size of the method's own file,
        described by ``bytes_from``), parameters, FLOPs and latency on the first. Models are not changed.
        """
        from ..train import evaluate

        models = [models] if isinstance(models, nn.Module) else list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError(f"models must be an nn.Module or a non-empty sequence of them, got {models!r}")
        first = models[0]
        acc = tuple(100.0 * float(evaluate(m, self.test_data).accuracy) for m in models)
        # the input in the model's dtype, as evaluate casts it (a float16 copy takes float16 inputs)
        x = self.example_input.to(dtype=surgery.dtype_of(first)) if self.example_input.is_floating_point() \
            else self.example_input
        lat = latency(first, x, threads=self.threads).median if self.measure_latency else None
        if nbytes is None:
            nbytes, bytes_from = model_size_bytes(first), "torch.save"
        return self.add_entry(Entry(name, family, acc, nbytes, bytes_from or "file", flops(first, x),
                                    lat, count_parameters(first), note))

    def pareto(self, axis: str = "bytes") -> list[Entry]:
        """Entries no other entry dominates on (``axis``, mean accuracy), by increasing ``axis``."""
        if axis not in _AXES:
            raise ValueError(f"axis must be one of {_AXES}, got {axis!r}")
        pool = [e for e in self._entries if getattr(e, axis) is not None]
        front = [e for e in pool if not any(_dominates(o, e, axis) for o in pool if o is not e)]
        return sorted(front, key=lambda e: (getattr(e, axis), -e.mean))

    def rows(self) -> list[dict]:
        """The table as dicts (the entry's fields plus ratios to the baseline and Pareto membership)."""
        base, front = self.baseline, {id(e) for e in self.pareto("bytes")}
        out = []
        for e in self._entries:
            row = asdict(e)
            row.update(mean=e.mean, delta=e.mean - base.mean, bytes_ratio=base.bytes / e.bytes,
                       speedup=(base.latency_s / e.latency_s if base.latency_s and e.latency_s else None),
                       pareto=id(e) in front)
            out.append(row)
        return out

    def __str__(self) -> str:
        header = ["method", "family", "accuracy %", "Δ pts", "bytes", "size ×", "FLOPs", "latency ms", "speed ×",
                  "front"]
        lines = []
        for e, r in zip(self._entries, self.rows(), strict=True):
            lines.append([e.name, e.family, e.accuracy_label(), f"{r['delta']:+.1f}",
                          f"{e.bytes:,}" + ("" if e.bytes_from == "torch.save" else "*"), f"{r['bytes_ratio']:.1f}",
                          "-" if e.flops is None else f"{e.flops:,}",
                          "-" if e.latency_s is None else f"{1e3 * e.latency_s:.3f}",
                          "-" if r["speedup"] is None else f"{r['speedup']:.2f}", "●" if r["pareto"] else ""])
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        text = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)]
        if any(e.bytes_from != "torch.save" for e in self._entries):
            text.append("* bytes of the method's own file (" + "; ".join(
                sorted({e.bytes_from for e in self._entries if e.bytes_from != "torch.save"})) + ")")
        return "\n".join(text)

    def __repr__(self) -> str:
        return str(self)

    def plot(self, ax=None, axis: str = "bytes"):
        """Accuracy (mean, with ± std bars) against ``axis`` on a log scale, one colour per family, the Pareto front
        as a step line; returns the axes."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

        front = self.pareto(axis)  # validates axis
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        families = list(dict.fromkeys(e.family for e in self._entries))
        colours = plt.get_cmap("tab10")
        for e in self._entries:
            x = getattr(e, axis)
            if x is None:
                continue
            k = families.index(e.family)
            ax.errorbar(x, e.mean, yerr=e.stats.std if e.stats else None, fmt="o", color=colours(k % 10),
                        label=e.family if e is next(o for o in self._entries if o.family == e.family) else None)
            ax.annotate(e.name, (x, e.mean), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.step([getattr(e, axis) for e in front], [e.mean for e in front], where="post", color="k", alpha=0.4,
                lw=1, label="Pareto front")
        ax.set_xscale("log")
        if axis == "bytes":
            ax.autoscale_view()
            lo, hi = ax.get_xlim()
            ticks = _byte_ticks(lo, hi)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FixedFormatter(_byte_labels(ticks)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(lo, hi)
            ax.set_xlabel("real bytes (torch.save, or the method's file)")
        else:
            ax.set_xlabel("latency per forward pass (s)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return ax

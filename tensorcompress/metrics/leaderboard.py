r"""One table of compressed models: a quality metric (mean ± std over seeds) against real bytes, FLOPs and measured
latency, with ratios against a baseline and the Pareto fronts.

A method is worth using only if nothing else is at least as good *and* at least as small: the **Pareto front** of
the (bytes, metric) plane. With the metric's direction (``higher_is_better`` for accuracy, lower for perplexity or
cross-entropy) written as "better", entry :math:`a` dominates :math:`b` when

.. math:: \text{bytes}_a \le \text{bytes}_b,\quad \overline{m}_a \text{ at least as good as } \overline{m}_b,
          \quad\text{one of them strictly,}

and the front is the set of entries no other entry dominates (the same with latency or FLOPs in place of bytes).
With three seeds a mean is uncertain by about one standard deviation, so two entries whose means differ by less
than their spread are not really ranked; the table prints the spread next to the mean for that reason.

What each column is:

* **the metric** — a :class:`Metric`: its name, its direction and how it is measured on the test data; one value
  per model given (one per training seed), mean ± sample std (:class:`tensorcompress.metrics.SeedStats`); a single
  deterministic model gives one value and no spread. Accuracy is a fraction in ``[0, 1]``, printed in percent;
  ``"cross_entropy"`` (mean negative log-likelihood in nats) and ``"perplexity"`` (its exponential) are lower-is-
  better;
* **bytes** — real bytes: what ``torch.save`` writes for the model's ``state_dict``
  (:func:`tensorcompress.metrics.model_size_bytes`), or, where the method writes its own file (a sparse or
  entropy-coded file), that file's size, passed as ``nbytes`` (the table says which);
* **params** — parameter entries (:func:`tensorcompress.metrics.count_parameters`), and the non-zero ones of the
  effective weights where they differ (a masked weight is stored and multiplied densely);
* **FLOPs** — :func:`tensorcompress.metrics.flops` on the example input: what the dense kernels do;
* **latency** — :func:`tensorcompress.metrics.latency` (``torch.utils.benchmark``), median, on the model's device,
  for one forward pass of the example input, whose **batch size** each row states: a latency at batch 1 and one at
  batch 256 measure different things, so a speed-up is only computed between rows of the same batch size.

Ratios are the baseline's ÷ the entry's (``> 1`` = smaller / cheaper / faster). A user adds a row for their own
method with :meth:`Leaderboard.add` (models measured here) or :meth:`Leaderboard.add_entry` (numbers measured
elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .. import surgery
from .._validation import check_fraction, check_positive_int, check_real
from ..train import evaluate
from .measure import count_parameters, flops, latency, model_size_bytes
from .seeds import SeedStats

__all__ = ["Metric", "METRICS", "Entry", "Row", "Leaderboard"]

_AXES = ("bytes", "latency_s", "flops")


@dataclass(frozen=True)
class Metric:
    """A quality measured on test data: its ``name``, its direction and how to measure it.

    ``fn(model, test_data) -> float`` measures one model (``None``: the metric only reads entries added with
    :meth:`Leaderboard.add_entry`); ``fraction`` says the value is a fraction in ``[0, 1]`` (checked), printed in
    percent.
    """

    name: str
    higher_is_better: bool
    fn: Callable[[nn.Module, Any], float] | None = None
    fraction: bool = False

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b`` in this metric's direction."""
        return a > b if self.higher_is_better else a < b

    def shown(self, value: float) -> float:
        """The value as printed: in percent for a fraction."""
        return 100.0 * value if self.fraction else value


def _perplexity(model: nn.Module, data: Any) -> float:
    return math.exp(evaluate(model, data).loss)


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", True, lambda m, d: evaluate(m, d).accuracy, fraction=True),
    "cross_entropy": Metric("cross_entropy", False, lambda m, d: evaluate(m, d).loss),
    "perplexity": Metric("perplexity", False, _perplexity),
}
"""The metrics a :class:`Leaderboard` knows by name, measured by :func:`tensorcompress.evaluate`: top-1 accuracy
(a fraction), the mean cross-entropy in nats, and perplexity :math:`\\exp` (cross-entropy)."""


@dataclass(frozen=True)
class Entry:
    """One method's row as measured: ``values`` of the board's metric (one per seed), real ``bytes``
    (``bytes_from`` says what was measured), ``flops``, ``latency_s`` for one forward pass of a batch of
    ``latency_batch`` inputs (both or neither), ``params``, ``nonzero_params`` and a free ``note``."""

    name: str
    family: str
    values: tuple[float, ...]
    bytes: int
    bytes_from: str = "torch.save"
    flops: int | None = None
    latency_s: float | None = None
    latency_batch: int | None = None
    params: int | None = None
    nonzero_params: int | None = None
    note: str = ""

    @property
    def mean(self) -> float:
        """Mean of the metric's values."""
        return math.fsum(self.values) / len(self.values)

    @property
    def stats(self) -> SeedStats | None:
        """Mean ± sample std over the seeds (``None`` for a single value)."""
        n = len(self.values)
        return SeedStats.from_values(self.values, range(n)) if n > 1 else None


@dataclass(frozen=True)
class Row:
    """An entry read against the baseline: ``delta`` = mean − the baseline's mean, ratios the baseline's ÷ the
    entry's (``None`` where either number is missing, or, for ``speedup``, where the batch sizes differ), and
    ``pareto``: on the (bytes, metric) front."""

    name: str
    family: str
    mean: float
    std: float | None
    delta: float
    bytes: int
    bytes_from: str
    bytes_ratio: float
    params: int | None
    nonzero_params: int | None
    flops: int | None
    flops_ratio: float | None
    latency_s: float | None
    latency_batch: int | None
    speedup: float | None
    pareto: bool


def _ratio(base: float | None, value: float | None) -> float | None:
    if base is None or value is None:
        return None
    return base / value if value else math.inf


def _check_count(value: object, name: str) -> None:
    if value is not None:
        check_positive_int(value, name, minimum=0)


def _check_entry(entry: Entry, metric: Metric) -> Entry:
    """The entry with its values as floats, or ``TypeError``/``ValueError`` naming the field and the entry."""
    if not isinstance(entry.name, str) or not entry.name:
        raise ValueError(f"name must be a non-empty str, got {entry.name!r}")
    who = f"of {entry.name!r}"
    if isinstance(entry.values, (str, bytes)) or not isinstance(entry.values, Sequence) or not entry.values:
        raise ValueError(f"values {who} must be one or more numbers (one per seed), got {entry.values!r}")
    check = check_fraction if metric.fraction else check_real
    what = f"{metric.name} {who}" + (" (a fraction, not percent)" if metric.fraction else "")
    values = tuple(check(v, what) for v in entry.values)
    check_positive_int(entry.bytes, f"bytes {who}")
    for field_name in ("flops", "params", "nonzero_params"):
        _check_count(getattr(entry, field_name), f"{field_name} {who}")
    if (entry.latency_s is None) != (entry.latency_batch is None):
        raise ValueError(f"latency_s and latency_batch {who} go together: a latency is for one batch size, got "
                         f"latency_s={entry.latency_s!r}, latency_batch={entry.latency_batch!r}")
    if entry.latency_s is not None:
        if not check_real(entry.latency_s, f"latency_s {who}") > 0:
            raise ValueError(f"latency_s {who} must be positive seconds, got {entry.latency_s!r}")
        check_positive_int(entry.latency_batch, f"latency_batch {who}")
    return replace(entry, values=values)


class Leaderboard:
    """Entries measured on the same test data with one metric, the first (or the one of family ``"baseline"``) the
    reference.

    Parameters
    ----------
    test_data : Dataset
        Yields ``(inputs, targets)``; every model is measured on it with ``metric``.
    example_input : Tensor, optional
        Input for FLOPs and latency; its first dimension is the batch size the latency rows state. Default: the
        first sample of ``test_data`` as a batch of one.
    metric : str or Metric
        ``"accuracy"`` (default), ``"cross_entropy"``, ``"perplexity"`` (:data:`METRICS`) or a :class:`Metric`.
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

    def __init__(self, test_data, example_input: torch.Tensor | None = None, *, metric: str | Metric = "accuracy",
                 measure_latency: bool = True, threads: int = 1) -> None:
        if example_input is None:
            try:
                example_input = surgery.inputs_of(test_data[0]).unsqueeze(0)
            except (TypeError, KeyError, IndexError, AttributeError) as err:
                raise TypeError(f"example_input is needed when test_data has no first sample to take it from "
                                f"(test_data is {type(test_data).__name__})") from err
        if not isinstance(example_input, torch.Tensor):
            raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
        if isinstance(metric, str):
            if metric not in METRICS:
                raise ValueError(f"metric must be one of {sorted(METRICS)} or a Metric, got {metric!r}")
            metric = METRICS[metric]
        if not isinstance(metric, Metric):
            raise TypeError(f"metric must be a str or a Metric, got {type(metric).__name__}")
        self.test_data, self.example_input, self.metric = test_data, example_input, metric
        self.measure_latency, self.threads = bool(measure_latency), check_positive_int(threads, "threads")
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
        """Add a row measured elsewhere (checked: a unique name, values of the metric, positive bytes, a latency
        with its batch size)."""
        if not isinstance(entry, Entry):
            raise TypeError(f"entry must be a Leaderboard Entry, got {type(entry).__name__}")
        entry = _check_entry(entry, self.metric)
        if any(e.name == entry.name for e in self._entries):
            raise ValueError(f"an entry named {entry.name!r} is already on the leaderboard")
        self._entries.append(entry)
        return entry

    def add(self, name: str, models: nn.Module | Sequence[nn.Module], *, family: str, nbytes: int | None = None,
            bytes_from: str | None = None, note: str = "") -> Entry:
        """Measure ``models`` (one per seed, or one deterministic model) and add the row.

        The metric is measured on every model; bytes (unless ``nbytes`` gives the size of the method's own file,
        described by ``bytes_from``), parameters, FLOPs and latency on the first. Models are not changed: every
        submodule keeps its train/eval mode (:func:`tensorcompress.surgery.kept_modes`).

        Parameters
        ----------
        name : str
            The row's name, unique on the board.
        models : nn.Module or non-empty sequence of nn.Module
            One model per seed (the row shows their mean and spread) or one deterministic model; each is measured
            in eval mode.
        family : str
            The kind of method (``"baseline"`` marks the reference row, others are free text such as
            ``"quantized"``).
        nbytes : int > 0, optional
            The size of the method's own compressed file; ``None`` measures what ``torch.save`` writes for the
            first model (:func:`model_size_bytes`).
        bytes_from : str, optional
            What ``nbytes`` measured (printed with the table; ``"file"`` when ``nbytes`` is given without it).
        note : str
            Free text carried on the row.

        Returns
        -------
        Entry
            The row added.
        """
        if self.metric.fn is None:
            raise ValueError(f"metric {self.metric.name!r} has no fn to measure a model: add entries measured "
                             f"elsewhere with add_entry")
        models = [models] if isinstance(models, nn.Module) else list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError(f"models must be an nn.Module or a non-empty sequence of them, got {models!r}")
        values = []
        for m in models:
            with surgery.kept_modes(m, False):
                values.append(float(self.metric.fn(m, self.test_data)))
        first = models[0]
        # the input on the model's device and in its dtype, as evaluate casts it (a float16 copy takes float16)
        x = self.example_input.to(surgery.device_of(first))
        x = x.to(surgery.dtype_of(first)) if x.is_floating_point() else x
        timed = self.measure_latency
        lat = latency(first, x, device=x.device, threads=self.threads).median if timed else None
        if nbytes is None:
            nbytes, bytes_from = model_size_bytes(first), "torch.save"
        return self.add_entry(Entry(name, family, tuple(values), nbytes, bytes_from or "file", flops(first, x), lat,
                                    (x.shape[0] if x.ndim else 1) if timed else None, count_parameters(first),
                                    count_parameters(first, nonzero=True), note))

    def _dominates(self, a: Entry, b: Entry, axis: str) -> bool:
        ca, cb = getattr(a, axis), getattr(b, axis)
        as_good = not self.metric.better(b.mean, a.mean)
        return ca <= cb and as_good and (ca < cb or self.metric.better(a.mean, b.mean))

    def pareto(self, axis: str = "bytes") -> list[Entry]:
        """Entries no other entry dominates on (``axis``, mean of the metric in its direction), by increasing
        ``axis`` (ties: the better mean first). ``axis`` is ``"bytes"``, ``"latency_s"`` or ``"flops"``; entries
        without that number take no part (and latencies only against those of the baseline's batch size)."""
        if axis not in _AXES:
            raise ValueError(f"axis must be one of {_AXES}, got {axis!r}")
        pool = [e for e in self._entries if getattr(e, axis) is not None]
        if axis == "latency_s" and pool:
            batch = (self.baseline if self.baseline.latency_s is not None else pool[0]).latency_batch
            pool = [e for e in pool if e.latency_batch == batch]
        front = [e for e in pool if not any(self._dominates(o, e, axis) for o in pool if o is not e)]
        sign = -1.0 if self.metric.higher_is_better else 1.0
        return sorted(front, key=lambda e: (getattr(e, axis), sign * e.mean))

    def rows(self) -> list[Row]:
        """The table: each entry against the baseline (:class:`Row`)."""
        base, front = self.baseline, {id(e) for e in self.pareto("bytes")}
        out = []
        for e in self._entries:
            same_batch = e.latency_batch is not None and e.latency_batch == base.latency_batch
            out.append(Row(e.name, e.family, e.mean, e.stats.std if e.stats else None, e.mean - base.mean, e.bytes,
                           e.bytes_from, base.bytes / e.bytes, e.params, e.nonzero_params, e.flops,
                           _ratio(base.flops, e.flops), e.latency_s, e.latency_batch,
                           _ratio(base.latency_s, e.latency_s) if same_batch else None, id(e) in front))
        return out

    def _value_label(self, e: Entry) -> str:
        stats = e.stats
        spec = ".1f" if self.metric.fraction else ".4g"
        if stats is None:
            return format(self.metric.shown(e.mean), spec)
        return format(stats.scaled(100.0) if self.metric.fraction else stats, spec)

    def __str__(self) -> str:
        unit = " %" if self.metric.fraction else ""
        nonzero = any(e.nonzero_params not in (None, e.params) for e in self._entries)
        header = ["method", "family", f"{self.metric.name}{unit}", "Δ" + (" pts" if self.metric.fraction else ""),
                  "bytes", "size ×", "params", *(["nonzero"] if nonzero else []), "FLOPs", "FLOPs ×", "latency ms",
                  "batch", "speed ×", "front"]

        def num(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        lines = []
        for e, r in zip(self._entries, self.rows(), strict=True):
            delta = format(self.metric.shown(r.delta), "+.1f" if self.metric.fraction else "+.4g")
            lines.append([e.name, e.family, self._value_label(e), delta,
                          f"{e.bytes:,}" + ("" if e.bytes_from == "torch.save" else "*"), f"{r.bytes_ratio:.1f}",
                          num(e.params, ","), *([num(e.nonzero_params, ",")] if nonzero else []), num(e.flops, ","),
                          num(r.flops_ratio, ".2f"), num(None if e.latency_s is None else 1e3 * e.latency_s, ".3f"),
                          num(e.latency_batch, "d"), num(r.speedup, ".2f"), "●" if r.pareto else ""])
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
        """The metric (mean, with ± std bars; accuracy in percent) against ``axis`` on a log scale, one colour per
        family, the Pareto front as a step line; returns the axes. On the bytes axis the ticks are a few round
        sizes in kB/MB (:func:`_byte_ticks`), so that their labels never overlap."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

        front = self.pareto(axis)  # validates axis
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        families = list(dict.fromkeys(e.family for e in self._entries))
        colours = plt.get_cmap("tab10")
        shown = self.metric.shown
        for e in self._entries:
            x = getattr(e, axis)
            if x is None:
                continue
            k = families.index(e.family)
            ax.errorbar(x, shown(e.mean), yerr=shown(e.stats.std) if e.stats else None, fmt="o",
                        color=colours(k % 10),
                        label=e.family if e is next(o for o in self._entries if o.family == e.family) else None)
            ax.annotate(e.name, (x, shown(e.mean)), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.step([getattr(e, axis) for e in front], [shown(e.mean) for e in front], where="post", color="k",
                alpha=0.4, lw=1, label="Pareto front")
        ax.set_xscale("log")
        if axis == "bytes":
            ax.autoscale_view()
            lo, hi = ax.get_xlim()
            ticks = _byte_ticks(lo, hi)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FixedFormatter(_byte_labels(ticks)))
            ax.xaxis.set_minor_locator(NullLocator())  # the log scale's minor labels are what overlapped
            ax.set_xlim(lo, hi)
            ax.set_xlabel("real bytes (torch.save, or the method's file)")
        else:
            ax.set_xlabel({"latency_s": "latency per forward pass (s)", "flops": "FLOPs per forward pass"}[axis])
        ax.set_ylabel(self.metric.name + (" (%)" if self.metric.fraction else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return ax


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

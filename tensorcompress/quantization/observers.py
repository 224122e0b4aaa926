r"""Observers: collect a range :math:`[r_{\min}, r_{\max}]` from data, then turn it into quantization parameters.

Every observer is an ``nn.Module`` (its statistics are buffers, so they live in the model's ``state_dict``) with one
protocol: ``update(x)`` for each calibration batch (``forward`` does the same and returns ``x`` unchanged), then
``qparams()`` gives a :class:`~tensorcompress.quantization.QParams` through
:func:`~tensorcompress.quantization.qparams`. With ``axis`` set, each statistic is a vector with one entry per
channel along ``axis`` (all other dimensions reduced).

* :class:`MinMaxObserver` — the running minimum and maximum. Never clips, so one outlier widens the step for all.
  Equals ``torch.ao.quantization.MinMaxObserver`` / ``PerChannelMinMaxObserver``.
* :class:`MovingAverageMinMaxObserver` — :math:`m \leftarrow m + c\,(m_{\text{batch}} - m)` (first batch taken as
  is), ``torch.ao``'s rule for activations during QAT.
* :class:`PercentileObserver` — the :math:`p`-th and :math:`(100-p)`-th percentiles of each batch, averaged over
  batches: clips the rare extremes.
* :class:`MSEObserver` — for each batch, the range :math:`\alpha\,[r_{\min}, r_{\max}]`, with :math:`\alpha` on a grid
  of ``n_grid`` values in :math:`(0, 1]`, that minimises the mean squared error of fake quantization, averaged over
  batches. It balances the two errors of a quantizer: clipping error, which grows as the range shrinks, against
  rounding error :math:`\Delta^2/12` with :math:`\Delta \propto` range, which grows as it widens (Nagel et al. 2021,
  "A white paper on neural network quantization", sec. 3.2; Banner et al. 2019).

The percentile and MSE observers average per-batch ranges (as NNCF's "mean" range estimators) rather than pool all
samples, so memory stays constant; with batches of one distribution the two agree closely.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_bits, check_finite, check_fraction, check_positive_int, check_tensor
from .uniform import QParams, qparams, qrange

__all__ = ["Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver", "MSEObserver",
           "OBSERVERS", "make_observer"]


class Observer(nn.Module):
    """Base class: range statistics in buffers ``min_val`` / ``max_val``; subclasses override :meth:`_combine`.

    A batch's range is its minimum and maximum unless a subclass overrides :meth:`_batch_range`; a NaN or an
    infinity reaches the minimum or the maximum, so the batch is checked for them through its range, without a
    pass of its own (``_range_is_min_max``).

    Parameters
    ----------
    bits, symmetric, signed, narrow_range
        As :func:`~tensorcompress.quantization.qparams`.
    axis : int, optional
        Per-channel statistics along this axis of the observed tensors; ``None``: per-tensor.
    """

    _range_is_min_max = True

    def __init__(self, *, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                 narrow_range: bool = False, axis: int | None = None):
        super().__init__()
        check_bits(bits)
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise TypeError(f"axis must be an int or None, got {axis!r}")
        self.bits, self.symmetric, self.narrow_range, self.axis = bits, bool(symmetric), bool(narrow_range), axis
        self.signed = self.symmetric if signed is None else bool(signed)
        qrange(bits, signed=self.signed, narrow_range=narrow_range)  # validates narrow_range with bits
        shape = (0,) if axis is not None else ()
        self.register_buffer("min_val", torch.full(shape, float("inf")))
        self.register_buffer("max_val", torch.full(shape, float("-inf")))
        self.register_buffer("n_batches", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, symmetric={self.symmetric}, signed={self.signed}, "
                f"narrow_range={self.narrow_range}, axis={self.axis}")

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float32, per-channel: one row per channel."""
        x = x.detach().to(torch.float32)
        if self.axis is None:
            return x.reshape(1, -1)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"observer axis={self.axis} is out of range for x of shape {tuple(x.shape)}")
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rows.shape[0] == 1:  # one row: the whole-tensor reduction is vectorised, the per-row one is not
            lo, hi = torch.aminmax(rows)
            return lo.reshape(1), hi.reshape(1)
        return torch.aminmax(rows, dim=1)

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range after a batch whose range is ``[lo, hi]``: by default each bound moved by :meth:`_move`."""
        return self._move(self.min_val, lo), self._move(self.max_val, hi)

    def _move(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A running bound ``old`` moved towards the batch's bound ``new``."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the batch ``x`` into the statistics."""
        check_tensor(x, "x", floating=True)
        if not self._range_is_min_max:
            check_finite(x, "x")
        if x.numel() == 0:
            raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
        rows = self._flat(x)
        lo, hi = self._batch_range(rows)
        if self._range_is_min_max and not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            check_finite(x, "x")  # raises, counting the entries that are NaN or infinite
        if self.axis is None:
            lo, hi = lo[0], hi[0]
        elif self.n_batches > 0 and lo.shape != self.min_val.shape:
            raise ValueError(f"x has {lo.numel()} channels along axis {self.axis}, the observer saw "
                             f"{self.min_val.numel()} before")
        if self.n_batches == 0:
            new_lo, new_hi = lo, hi
        else:
            new_lo, new_hi = self._combine(lo, hi)
        self.min_val, self.max_val = new_lo.to(self.min_val.device), new_hi.to(self.max_val.device)
        self.n_batches += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``update(x)`` and return ``x`` unchanged."""
        self.update(x)
        return x

    def reset(self) -> None:
        """Forget every batch seen."""
        self.min_val = torch.full_like(self.min_val, float("inf"))
        self.max_val = torch.full_like(self.max_val, float("-inf"))
        self.n_batches.zero_()

    def qparams(self) -> QParams:
        """The quantization parameters of the observed range."""
        if int(self.n_batches) == 0:
            raise RuntimeError(f"{type(self).__name__} has seen no data: call update(x) (calibrate) first")
        return qparams(self.min_val, self.max_val, bits=self.bits, symmetric=self.symmetric, signed=self.signed,
                       narrow_range=self.narrow_range, axis=self.axis)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # per-channel buffers start empty and take their length from the first batch (or from a saved state)
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MinMaxObserver(Observer):
    """Running minimum and maximum (``torch.ao.quantization.MinMaxObserver``)."""

    def _combine(self, lo, hi):
        return torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of the batch minimum and maximum, ``averaging_constant`` ``c`` in (0, 1]."""

    def __init__(self, *, averaging_constant: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.averaging_constant = check_fraction(averaging_constant, "averaging_constant", low_open=True)

    def _move(self, old, new):
        # the same expression (and float32 order of operations) as torch.ao's observer
        return old + self.averaging_constant * (new - old)


class _MeanOfBatches(Observer):
    """Per-batch ranges averaged over batches (running mean)."""

    def _move(self, old, new):
        return old + (new - old) / (float(self.n_batches) + 1)


class PercentileObserver(_MeanOfBatches):
    """The ``(100 - percentile)``-th and ``percentile``-th percentiles of each batch, averaged over batches."""

    _range_is_min_max = False

    def __init__(self, *, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise TypeError(f"percentile must be a real number, got {type(percentile).__name__} ({percentile!r})")
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def _batch_range(self, rows):
        n = rows.shape[1]
        # order statistics by kthvalue (torch.quantile refuses inputs above 16M entries); nearest rank
        k_hi = max(1, min(n, round(self.percentile / 100 * n)))
        k_lo = n + 1 - k_hi
        return rows.kthvalue(k_lo, dim=1).values, rows.kthvalue(k_hi, dim=1).values


class MSEObserver(_MeanOfBatches):
    """The range :math:`\\alpha\\,[\\min, \\max]`, :math:`\\alpha \\in \\{1/n, 2/n, \\dots, 1\\}` (``n = n_grid``),
    with the least fake-quantization MSE on each batch (per channel with ``axis``), averaged over batches."""

    _range_is_min_max = False

    def __init__(self, *, n_grid: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.n_grid = check_positive_int(n_grid, "n_grid")

    def _batch_range(self, rows):
        lo, hi = super()._batch_range(rows)
        alphas = torch.arange(1, self.n_grid + 1, dtype=torch.float32, device=rows.device) / self.n_grid
        n_rows = rows.shape[0]
        errs = []
        # candidates in chunks of 10: one qparams call per chunk, then one fake-quantization kernel per candidate
        # (PyTorch's per-channel kernel, bit-exact with fake_quantize) written as its difference from the rows
        # into one buffer, whose rows are reduced together: the errors of reducing 10 x rows at once
        buffer = torch.empty(min(10, self.n_grid) * n_rows, rows.shape[1], dtype=rows.dtype, device=rows.device)
        for a in alphas.split(10):
            lo_c, hi_c = (a[:, None] * lo).reshape(-1), (a[:, None] * hi).reshape(-1)
            qp = qparams(lo_c, hi_c, bits=self.bits, symmetric=self.symmetric, signed=self.signed,
                         narrow_range=self.narrow_range, axis=0)
            diff = buffer[:a.numel() * n_rows]
            for i, part in enumerate(diff.split(n_rows)):
                own = slice(i * n_rows, (i + 1) * n_rows)
                fq = torch.fake_quantize_per_channel_affine(rows, qp.scale[own], qp.zero_point[own], 0, qp.qmin,
                                                            qp.qmax)
                torch.sub(fq, rows, out=part)
            errs.append(diff.pow_(2).mean(dim=1).reshape(a.numel(), -1))
        best = torch.cat(errs).argmin(dim=0)  # first (smallest) alpha among equal errors
        a = alphas[best]
        return a * lo, a * hi


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(observer: str | type[Observer], **kwargs) -> Observer:
    """An observer from its name (a key of :data:`OBSERVERS`) or class, with ``kwargs`` for its constructor."""
    if isinstance(observer, type) and issubclass(observer, Observer):
        return observer(**kwargs)
    if not isinstance(observer, str) or observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)} or an Observer subclass, got {observer!r}")
    return OBSERVERS[observer](**kwargs)

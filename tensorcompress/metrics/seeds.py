r"""Run an experiment over several seeds and report mean ± standard deviation.

One accuracy from one seed is an anecdote: initialisation, shuffling and augmentation move a retrained accuracy by
tenths of a point. :func:`over_seeds` calls ``fn(seed)`` for each seed and summarises each number it returns by the
mean and the **sample** standard deviation (Bessel's correction, ``ddof = 1``)

.. math:: \bar x = \frac1n \sum_{i=1}^n x_i, \qquad s = \sqrt{\frac{1}{n - 1}\sum_{i=1}^n (x_i - \bar x)^2},

the unbiased estimate of the variance across seeds (NumPy's ``np.std(x, ddof=1)``, PyTorch's ``torch.std`` default).
With three seeds :math:`s` is itself rough (its relative standard error is about 50 %): read "97.1 ± 0.3" as "the
first decimal is noise-level", not as a confidence interval.

Both numbers are computed in exact rational arithmetic (:class:`fractions.Fraction`: every float is a rational) and
rounded once, so they are the floats nearest the true values (ties to even) at any magnitude: equal values give
their value and exactly 0, deviations near 1e300 neither overflow nor those near 1e-320 underflow in a square. The
square root is taken on integers: with :math:`s^2 = p/q`, :math:`r = \lfloor\sqrt{\lfloor p\,4^m/q \rfloor}\rfloor`
(``math.isqrt``) for :math:`m` making :math:`r \ge 2^{55}`, so every rounding boundary of a float at that scale is
an integer and :math:`r\,2^{-m}` (exact) or :math:`(r + \tfrac12)\,2^{-m}` (inexact) rounds as
:math:`\sqrt{p/q}` does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["SeedStats", "over_seeds"]


@dataclass(frozen=True)
class SeedStats:
    """``mean`` and sample standard deviation ``std`` (ddof = 1) of ``values``, one per seed in ``seeds``.

    ``str(stats)`` is ``"97.1 ± 0.3"`` (one decimal); ``format(stats, ".2f")`` applies the format to both numbers.
    """

    mean: float
    std: float
    values: tuple[float, ...]
    seeds: tuple[int, ...]

    def __format__(self, spec: str) -> str:
        spec = spec or ".1f"
        return f"{self.mean:{spec}} ± {self.std:{spec}}"

    def __str__(self) -> str:
        return format(self)

    def scaled(self, factor: float) -> SeedStats:
        """The same statistics for every value multiplied by ``factor`` (e.g. 100 for a fraction in percent)."""
        return SeedStats(self.mean * factor, self.std * abs(factor), tuple(v * factor for v in self.values),
                         self.seeds)

    @classmethod
    def from_values(cls, values: Iterable[float], seeds: Iterable[int]) -> SeedStats:
        """Mean and sample standard deviation (ddof = 1) of at least two finite ``values``, each correctly rounded
        (module docstring); a standard deviation beyond the largest float is ``inf``."""
        values, seeds = tuple(float(v) for v in values), tuple(seeds)
        if len(values) < 2 or len(values) != len(seeds):
            raise ValueError(f"need at least two values, one per seed, got {len(values)} values for seeds {seeds}")
        exact = [Fraction(v) for v in values]  # ValueError for NaN or Inf
        mean = sum(exact) / len(exact)
        var = sum((x - mean) ** 2 for x in exact) / (len(exact) - 1)
        return cls(float(mean), _rounded_sqrt(var), values, seeds)


def _rounded_sqrt(x: Fraction) -> float:
    r""":math:`\sqrt{x}` for a rational ``x >= 0``, rounded once to the nearest float (ties to even); ``inf`` beyond
    the largest float."""
    p, q = x.numerator, x.denominator
    if p == 0:
        return 0.0
    # p 4^m / q >= 2^110, so that r = isqrt(...) >= 2^55: float boundaries at that scale are integers
    m = max(0, -((p.bit_length() - q.bit_length() - 111) // 2))
    n = p << (2 * m)
    r = math.isqrt(n // q)
    inexact = r * r * q != n
    try:
        return (2 * r + inexact) / (1 << (m + 1))  # int / int is correctly rounded (subnormals included)
    except OverflowError:
        return math.inf


def _check_seeds(seeds: object) -> tuple[int, ...]:
    if isinstance(seeds, str) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be a sequence of ints, got {seeds!r}")
    seeds = tuple(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral)]
    if bad:
        raise TypeError(f"seeds must be ints, got {bad!r} in {seeds!r}")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must hold at least two distinct seeds (a standard deviation needs two runs), "
                         f"got {seeds!r}")
    return tuple(int(s) for s in seeds)


def _check_value(value: object, seed: int, key: str | None) -> float:
    where = f"fn({seed})" + (f"[{key!r}]" if key is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must return a real number (or a mapping of names to numbers), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} returned {value}: a mean over seeds needs finite numbers")
    return float(value)


def over_seeds(fn: Callable[[int], float | Mapping[str, float]], seeds: Iterable[int] = (0, 1, 2)
               ) -> SeedStats | dict[str, SeedStats]:
    """Call ``fn(seed)`` for each seed and summarise the results as mean ± sample standard deviation.

    Parameters
    ----------
    fn : callable ``seed -> number`` or ``seed -> mapping of names to numbers``
        One run of the experiment; it must use ``seed`` for everything random (initialisation, shuffling: e.g.
        ``tc.set_seed(seed)`` before building a model and ``tc.fit(..., seed=seed)``).
    seeds : sequence of int
        At least two distinct seeds; default ``(0, 1, 2)``.

    Returns
    -------
    SeedStats, or dict of name -> SeedStats
        A :class:`SeedStats` when ``fn`` returns a number; one per name, in ``fn``'s order, when it returns a mapping
        (every run must return the same names).

    Examples
    --------
    >>> stats = over_seeds(lambda seed: 97.0 + 0.1 * seed)
    >>> str(stats)
    '97.1 ± 0.1'
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(seed), got {type(fn).__name__}")
    seeds = _check_seeds(seeds)
    runs = [fn(seed) for seed in seeds]
    if not isinstance(runs[0], Mapping):
        if any(isinstance(r, Mapping) for r in runs):
            raise TypeError("fn must return the same kind of result (a number, or a mapping) for every seed")
        return SeedStats.from_values((_check_value(r, s, None) for r, s in zip(runs, seeds, strict=True)), seeds)
    keys = list(runs[0])
    for r, s in zip(runs, seeds, strict=True):
        if not isinstance(r, Mapping) or list(r) != keys:
            got = list(r) if isinstance(r, Mapping) else r
            raise ValueError(f"fn must return the same names for every seed: fn({seeds[0]}) gave {keys}, "
                             f"fn({s}) gave {got!r}")
    return {k: SeedStats.from_values((_check_value(r[k], s, k) for r, s in zip(runs, seeds, strict=True)), seeds)
            for k in keys}

r"""Run an experiment over several seeds and report mean ± standard deviation.

One accuracy from one seed is an anecdote: initialisation, shuffling and augmentation move a retrained accuracy by
tenths of a point. :func:`over_seeds` calls ``fn(seed)`` for each seed and summarises each number it returns by the
mean and the **sample** standard deviation (Bessel's correction, ``ddof = 1``)

.. math:: \bar x = \frac1n \sum_{i=1}^n x_i, \qquad s = \sqrt{\frac{1}{n - 1}\sum_{i=1}^n (x_i - \bar x)^2},

the unbiased estimate of the variance across seeds (NumPy's ``np.std(x, ddof=1)``, PyTorch's ``torch.std`` default).
With three seeds :math:`s` is itself rough (its relative standard error is about 50 %): read "97.1 ± 0.3" as "the
first decimal is noise-level", not as a confidence interval.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

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
        """Mean and sample standard deviation (ddof = 1) of at least two ``values``."""
        values, seeds = tuple(float(v) for v in values), tuple(seeds)
        if len(values) < 2 or len(values) != len(seeds):
            raise ValueError(f"need at least two values, one per seed, got {len(values)} values for seeds {seeds}")
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return cls(mean, std, values, seeds)


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

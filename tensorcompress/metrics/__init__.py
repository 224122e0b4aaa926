"""Measurement: honest numbers of a network (parameters, bytes, FLOPs, latency), the comparison of models side by
side (the leaderboard and its Pareto fronts, the compression report) and mean ± std over seeds.

* :mod:`.measure` — :func:`count_parameters`, :func:`model_size_bytes`, :func:`flops`, :func:`latency`,
  :func:`compression_report`;
* :mod:`.leaderboard` — :class:`Leaderboard`, :class:`Entry`;
* :mod:`.seeds` — :func:`over_seeds`, :class:`SeedStats`.
"""

from .leaderboard import Entry, Leaderboard
from .measure import *  # noqa: F403
from .measure import __all__ as _measure_all
from .seeds import SeedStats, over_seeds

__all__ = [*_measure_all, "Entry", "Leaderboard", "SeedStats", "over_seeds"]

"""Measurement: honest numbers of a network (parameters, bytes, FLOPs, latency), the comparison of models side by
side (the leaderboard: any metric with its direction, ratios against a baseline, Pareto fronts) and mean ± std over
seeds.

* :mod:`.measure` — :func:`count_parameters`, :func:`model_size_bytes`, :func:`flops`, :func:`latency`;
* :mod:`.leaderboard` — :class:`Leaderboard`, :class:`Metric`, :class:`Entry`, :class:`Row`;
* :mod:`.seeds` — :func:`over_seeds`, :class:`SeedStats`;
* :mod:`.language` — :func:`perplexity`, :func:`bits_per_character` of a language model on held-out tokens.
"""

from .language import bits_per_character, perplexity
from .leaderboard import METRICS, Entry, Leaderboard, Metric, Row
from .measure import *  # noqa: F403
from .measure import __all__ as _measure_all
from .seeds import SeedStats, over_seeds

__all__ = [*_measure_all, "Entry", "Leaderboard", "Metric", "METRICS", "Row", "SeedStats", "over_seeds", "perplexity",
           "bits_per_character"]

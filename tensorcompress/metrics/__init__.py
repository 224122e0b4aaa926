"""Measurement: honest numbers of a network (parameters, bytes, FLOPs, latency), the comparison of models side by
side (the leaderboard: any metric with its direction, ratios against a baseline, Pareto fronts) and mean ± std over
seeds.

* :mod:`.measure` — :func:`count_parameters`, :func:`model_size_bytes`, :func:`flops`, :func:`latency`;
* :mod:`.leaderboard` — :class:`Leaderboard`, :class:`Metric`, :class:`Entry`, :class:`Row`;
* :mod:`.seeds` — :func:`over_seeds`, :class:`SeedStats`;
* :mod:`.fidelity` — :func:`fidelity` (accuracy, cross-entropy, KL to the uncompressed network, top-1 agreement) and
  :func:`separated` (do two methods' mean ± std intervals overlap?);
* :mod:`.language` — :func:`perplexity`, :func:`bits_per_character` of a language model on held-out tokens;
* :mod:`.roofline` — why a network is (not) faster: :func:`roofline` (per-layer FLOPs, bytes, intensity, the bound
  the machine's peaks put on each layer, its measured time), :func:`machine_peaks`, :func:`latency_vs_batch`.
"""

from .fidelity import Fidelity, fidelity, separated
from .language import bits_per_character, perplexity
from .leaderboard import METRICS, Entry, Leaderboard, Metric, Row
from .measure import *  # noqa: F403
from .measure import __all__ as _measure_all
from .roofline import BatchLatency, LayerRoofline, MachinePeaks, Roofline, latency_vs_batch, machine_peaks, roofline
from .seeds import SeedStats, over_seeds

__all__ = [*_measure_all, "Entry", "Leaderboard", "Metric", "METRICS", "Row", "SeedStats", "over_seeds",
           "Fidelity", "fidelity", "separated", "perplexity", "bits_per_character",
           "MachinePeaks", "machine_peaks", "LayerRoofline", "Roofline", "roofline", "BatchLatency", "latency_vs_batch"]

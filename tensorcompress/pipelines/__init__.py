"""Pipelines (issue 13): the pieces that chain techniques into a deployable model — operator fusion, half
precision, Deep Compression (its file is :mod:`tensorcompress.export`), structure search — and the leaderboard of
every method.

Each whole-model transform has the library's one shape, ``f(model, *, include=None, exclude=None, **options) ->
(new_model, report)``, with the input model untouched. See each submodule's docstring for the formulas and papers.
"""

from .deep_compression import DeepCompressionReport, deep_compression, measure_compressed
from .fusion import fuse_conv_bn
from .leaderboard import Entry, Leaderboard
from .precision import *  # noqa: F403
from .precision import __all__ as _precision_all
from .search import *  # noqa: F403
from .search import __all__ as _search_all

__all__ = ["fuse_conv_bn", "deep_compression", "DeepCompressionReport", "measure_compressed", "Entry", "Leaderboard",
           *_precision_all, *_search_all]

"""Pipelines: techniques chained into a deployable model — Deep Compression to a real file
(:mod:`.deep_compression`) and structure search (:mod:`.search`).

Each whole-model transform has the library's one shape, ``f(model, data=None, *, include=None, exclude=None,
**options) -> (new_model, report)``, with the input model untouched. See each submodule's docstring for the
formulas and papers.
"""

from .coding import load_compressed, save_compressed
from .deep_compression import DeepCompressionReport, deep_compression, measure_compressed
from .search import *  # noqa: F403
from .search import __all__ as _search_all

__all__ = ["deep_compression", "DeepCompressionReport", "measure_compressed", "save_compressed",
           "load_compressed", *_search_all]

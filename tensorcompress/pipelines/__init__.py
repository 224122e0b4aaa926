"""Pipelines: techniques chained into a deployable model — Deep Compression (:mod:`.deep_compression`; its file is
:mod:`tensorcompress.export`), structure search (:mod:`.search`) and automatic compression, one technique per layer
under a budget (:mod:`.automatic`).

Each whole-model transform has the library's one shape, ``f(model, data=None, *, include=None, exclude=None,
**options) -> (new_model, report)``, with the input model untouched. See each submodule's docstring for the
formulas and papers.
"""

from .automatic import *  # noqa: F403
from .automatic import __all__ as _automatic_all
from .deep_compression import DeepCompressionReport, deep_compression, measure_compressed
from .search import *  # noqa: F403
from .search import __all__ as _search_all

__all__ = ["deep_compression", "DeepCompressionReport", "measure_compressed", *_search_all, *_automatic_all]

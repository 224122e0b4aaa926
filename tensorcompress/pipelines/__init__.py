"""Pipelines (issue 13): operator fusion, half precision, Deep Compression, structure search."""

from .precision import *  # noqa: F403
from .precision import __all__ as _precision_all
from .search import *  # noqa: F403
from .search import __all__ as _search_all

__all__ = [*_precision_all, *_search_all]

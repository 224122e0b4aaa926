"""The ``notebooks`` extra: what the teaching tools (tour, student version, lab) need beyond the library.

``import tensorcompress`` needs none of it; each tool imports it itself and, where it is missing, says how to get it
instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

INSTALL = 'pip install "tensorcompress[notebooks]"'


def missing_message(tool: str, modules: Iterable[str | None]) -> str:
    """The message of the ImportError a teaching tool raises when ``modules`` cannot be imported."""
    names = dict.fromkeys(repr((m or "?").split(".")[0]) for m in modules)  # top-level packages, in order, once
    return (f"{tool} needs {', '.join(names)}, which the library itself does not; it comes with the notebooks extra: "
            f"{INSTALL} (in a checkout: pip install -e \".[notebooks]\", or make install)")


def require(tool: str, modules: Iterable[str]) -> None:
    """ImportError (:func:`missing_message`) unless every top-level module of ``modules`` can be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(missing_message(tool, missing), name=missing[0])

"""Where the workbench keeps its files: the repository's ``data/`` folder, else a per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_data_dir", "cache_dir"]


def repo_data_dir() -> Path:
    """The repository's ``data/`` folder (holds the committed checkpoints and the git-ignored ``.npz`` caches)."""
    return Path(__file__).resolve().parents[2] / "data"


def cache_dir() -> Path:
    """A writable folder for ``.npz`` caches.

    The repository's ``data/`` when it exists and is writable (an editable install, a clone), else
    ``$XDG_CACHE_HOME/tensorcompress`` (default ``~/.cache/tensorcompress``), created on demand.
    """
    repo = repo_data_dir()
    if repo.is_dir() and os.access(repo, os.W_OK):
        return repo
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tensorcompress"
    base.mkdir(parents=True, exist_ok=True)
    return base

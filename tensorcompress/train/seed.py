"""Seeding and deterministic mode, process-wide or scoped to a ``with`` block.

``tc.set_seed(0)`` seeds python's ``random``, numpy's legacy global state and torch (CPU and CUDA) and turns on
deterministic algorithms for the rest of the process, as a notebook's first cell wants. ``with tc.set_seed(0): ...``
does the same inside the block and afterwards puts back everything it changed: the random states and the
deterministic-mode flags. :func:`~tensorcompress.fit` uses the scoped form, so training leaves no process-wide state
changed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["set_seed", "SeedScope"]

_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@dataclass(frozen=True)
class _GlobalState:
    """Everything :func:`set_seed` may change, as it was before."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None  # None: CUDA was not initialised, its generators were not touched yet
    deterministic: bool
    warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    cublas_config: str | None

    @classmethod
    def capture(cls) -> _GlobalState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(
            python=random.getstate(),
            numpy=np.random.get_state(),  # noqa: NPY002 -- the legacy global state is what set_seed seeds
            torch_cpu=torch.get_rng_state(),
            torch_cuda=cuda,
            deterministic=torch.are_deterministic_algorithms_enabled(),
            warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cublas_config=os.environ.get(_CUBLAS),
        )

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)  # noqa: NPY002
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        if self.cublas_config is None:
            os.environ.pop(_CUBLAS, None)
        else:
            os.environ[_CUBLAS] = self.cublas_config


class SeedScope:
    """What :func:`set_seed` returns: used in a ``with`` statement, it restores the state from before the call on
    exit (also on an exception); otherwise it can be ignored. :meth:`restore` does the same by hand."""

    def __init__(self, before: _GlobalState) -> None:
        self._before = before

    def restore(self) -> None:
        """Put back the random states and deterministic-mode flags from before :func:`set_seed`."""
        self._before.restore()

    def __enter__(self) -> SeedScope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def set_seed(seed: int, *, deterministic: bool = True) -> SeedScope:
    """Seed python's ``random``, numpy and torch (CPU and every CUDA device) with ``seed``.

    With ``deterministic=True`` also asks torch for deterministic algorithms
    (``torch.use_deterministic_algorithms(True, warn_only=True)``: a warning, not an error, where an operation has
    no deterministic implementation), turns cuDNN benchmarking off and sets ``CUBLAS_WORKSPACE_CONFIG`` if unset.
    A CPU run is then reproducible on one machine with the same thread count (not across CPUs: the order of
    floating-point sums differs).

    Called alone, the settings hold for the rest of the process. As a context manager, ``with set_seed(seed):``, they
    hold inside the block only: on exit the random states of python, numpy and torch (and of CUDA where it was
    initialised before the call) and the deterministic-mode flags are restored.

    Returns
    -------
    SeedScope
        The context manager that restores the previous state.

    Examples
    --------
    >>> with set_seed(0):
    ...     a = torch.rand(2)
    >>> with set_seed(0):
    ...     b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__} ({deterministic!r})")
    before = _GlobalState.capture()
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- the legacy global state is what user code draws from
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault(_CUBLAS, ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return SeedScope(before)

r"""The operand layout of CP-ALS's two large GEMMs: a fixed rule by default, timing on request.

Each sweep of :func:`tensorcompress.cp_als` does two products over the whole tensor (see its dimension tree): with the
last mode's factor :math:`A` (``I x R``) and :math:`X_{(N)}` viewed as ``P x I`` (``kind="last"``),
:math:`T = A^\top X_{(N)}^\top`, and with the first mode's factor and :math:`X_{(1)}` (``I x Q``, ``kind="first"``),
:math:`T = A^\top X_{(1)}`. Each can be computed in four layouts, which are the four names of ``layout``:

* ``"rank_first_at"`` — the result ``(R, P)`` row-major, the factor read from its stored transpose :math:`A^\top`;
* ``"rank_first_a"`` — the result row-major, the factor read as :math:`A` through a transposed view;
* ``"rank_last_a"`` — the result computed as ``(P, R)`` and used through its ``(R, P)`` view, the factor read as
  :math:`A`;
* ``"rank_last_at"`` — the result ``(P, R)``, the factor read from :math:`A^\top` through a transposed view.

The four give the same numbers up to rounding (a BLAS sums in an order that depends on the layout), but not the
same bits, and their speed depends on the dtype, the BLAS, the CPU and the thread count by up to about 2x.

``layout="fixed"`` (the default) picks one by a fixed rule, essentially the layout that reads no operand transposed
(:func:`fixed_layout`): no timing and no state, so a seed gives the same bits on every run of a machine.
``layout="auto"`` times the four the first time a shape is seen (per dtype, device and thread count), together with
the cheap contraction that follows, whose cost depends on the result's layout, and keeps the fastest for the rest of
the process (a process-wide cache, :data:`_TIMED`): within a process a seed then gives the same bits, across
processes it may not. A layout name forces that layout for both products. On CUDA ``"fixed"`` and ``"auto"`` both
take ``"rank_first_at"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

__all__ = ["LAYOUTS", "check_layout", "fixed_layout", "gemm"]

LAYOUTS = ("rank_first_at", "rank_first_a", "rank_last_a", "rank_last_at")

# T = A^T (X_(N) as P x I_N)^T, (R, P), in the four layouts of LAYOUTS (m, a, at = X_(N), A, A^T, all contiguous)
_LAST = (lambda m, a, at: at @ m.mT, lambda m, a, at: a.mT @ m.mT,
         lambda m, a, at: (m @ a).mT, lambda m, a, at: (m @ at.mT).mT)
# T = A^T (X_(1) as I_1 x Q), likewise
_FIRST = (lambda m, a, at: at @ m, lambda m, a, at: a.mT @ m,
          lambda m, a, at: (m.mT @ a).mT, lambda m, a, at: (m.mT @ at.mT).mT)
_PRODUCTS = {"last": _LAST, "first": _FIRST}

# layout chosen by timing, per (kind, dtype, device type, shape of X's unfolding, R, threads); only layout="auto"
# reads or writes it
_TIMED: dict[tuple, int] = {}


def check_layout(layout: object) -> str:
    """``layout`` if it is ``"fixed"``, ``"auto"`` or one of :data:`LAYOUTS` (``TypeError`` / ``ValueError``
    otherwise)."""
    allowed = ("fixed", "auto", *LAYOUTS)
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a str, one of {allowed}, got {type(layout).__name__} ({layout!r})")
    if layout not in allowed:
        raise ValueError(f"layout must be one of {allowed}, got {layout!r}")
    return layout


# float64 unfoldings above this many entries take the last mode's product rank-first (see fixed_layout)
_LARGE_FLOAT64 = 2**23


def fixed_layout(kind: str, m: torch.Tensor) -> int:
    """The default layout (an index into :data:`LAYOUTS`) of the product ``kind`` on the unfolding ``m``.

    On the CPU, the layout of each product in which no operand is read through a transposed view: the unfolding as
    stored (row-major), the factor in the contiguous form the product needs. ``kind="first"``:
    :math:`A^\top X_{(1)}` from the stored :math:`A^\top` (``"rank_first_at"``); ``kind="last"``:
    :math:`X_{(N)} A` from the stored :math:`A` (``"rank_last_a"``), used through its ``(R, P)`` view. One measured
    exception: a float64 unfolding of more than :math:`2^{23}` entries takes the last mode's product rank-first
    (``"rank_first_a"``), 10–15 % faster for the whole sweep at 250^3 (MKL, AMD EPYC, one thread), where the
    rank-last one is faster up to 160^3. The rule reads only the kind, the dtype, the size and the device, so it
    is the same in every process; the table against the timed choice is in the README (``python
    benchmarks/decompositions.py --layouts``). Off the CPU, ``"rank_first_at"`` for both."""
    if m.device.type != "cpu" or kind == "first":
        return 0
    if m.dtype == torch.float64 and m.numel() > _LARGE_FLOAT64:
        return 1
    return 2


def _timed_layout(key: tuple, candidates, operands: tuple, then: Callable) -> int:
    """The index of the layout for which ``then(candidates[i](*operands))`` ran fastest, chosen once per key (the
    best of three timings each, the candidates taking turns so that a change of machine load hits them alike)."""
    choice = _TIMED.get(key)
    if choice is None:
        if operands[0].device.type != "cpu":
            choice = 0
        else:
            times = [math.inf] * len(candidates)
            for _ in range(3):
                for i, candidate in enumerate(candidates):
                    start = time.perf_counter()
                    then(candidate(*operands))
                    times[i] = min(times[i], time.perf_counter() - start)
            choice = min(range(len(candidates)), key=times.__getitem__)
        _TIMED[key] = choice
    return choice


def gemm(kind: str, layout: str, m: torch.Tensor, a: torch.Tensor, at: torch.Tensor,
         then: Callable[[torch.Tensor], object]) -> torch.Tensor:
    """The product ``kind`` (``"last"`` or ``"first"``, see the module docstring) of the unfolding ``m`` with the
    factor ``a`` = :math:`A` and ``at`` = :math:`A^\\top` (both contiguous), shape ``(R, P)``, in the layout
    ``layout`` selects (``then``, the contraction that follows, is timed with it under ``"auto"``)."""
    candidates = _PRODUCTS[kind]
    if layout == "fixed":
        choice = fixed_layout(kind, m)
    elif layout == "auto":
        key = (kind, m.dtype, m.device.type, tuple(m.shape), a.shape[1], torch.get_num_threads())
        choice = _timed_layout(key, candidates, (m, a, at), then)
    else:
        choice = LAYOUTS.index(layout)
    return candidates[choice](m, a, at)

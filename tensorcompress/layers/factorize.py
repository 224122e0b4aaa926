r"""``factorize``: replace a model's ``nn.Linear`` / ``nn.Conv2d`` layers by factorised ones.

Rank from ``ratio`` (the fraction of a layer's weight parameters to keep, bias excluded since it is unchanged),
solving the closed-form parameter counts (:math:`T` out, :math:`S` in channels, :math:`k_h \times k_w` kernel,
:math:`m \times n` weight):

* ``"svd"`` (:class:`LowRankLinear`): :math:`r(m + n) \le \rho mn \Rightarrow r = \lfloor \rho mn/(m + n) \rfloor`;
* ``"cp"`` (:class:`CPConv2d`): :math:`R(S + k_h + k_w + T) \le \rho TSk_hk_w`;
* ``"tucker"`` (:class:`TuckerConv2d`), ranks proportional to the channels, :math:`R_T = cT, R_S = cS`:
  :math:`cST \cdot 2 + c^2 ST k_h k_w = \rho ST k_h k_w \Rightarrow c = (\sqrt{1 + \rho k_h^2 k_w^2} - 1)/(k_h k_w)`;
* ``"tt"`` (:class:`TTLinear`): the largest equal inner rank :math:`r` with
  :math:`\sum_k r_{k-1} m_k n_k r_k \le \rho mn`.

Every rank is at least 1 and at most what the layer allows, so the kept fraction can exceed ``ratio`` for tiny layers.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ._common import check_energy, check_rank
from .cp_conv import CPConv2d, cp_exact_rank
from .low_rank_linear import LowRankLinear
from .tt_linear import TTLinear, factor_dimension
from .tucker_conv import TuckerConv2d

__all__ = ["factorize", "FactorizedLayer", "tt_modes"]

_TARGET = {"svd": nn.Linear, "tt": nn.Linear, "cp": nn.Conv2d, "tucker": nn.Conv2d}


@dataclass(frozen=True)
class FactorizedLayer:
    """One row of :func:`factorize`'s report: module ``name``, its old and new ``type``, parameter counts (weights
    and bias) ``params_before`` / ``params_after``, and the ``rank`` chosen (int, pair, or TT ranks)."""

    name: str
    type_before: str
    type_after: str
    params_before: int
    params_after: int
    rank: object

    @property
    def compression(self) -> float:
        """``params_before / params_after``."""
        return self.params_before / self.params_after


def tt_modes(n: int, d: int = 3) -> tuple[int, ...]:
    """The TT modes ``factorize(method="tt")`` uses for a dimension: :func:`factor_dimension` (balanced)."""
    return factor_dimension(n, d)


def _tt_params(in_modes, out_modes, r: int) -> int:
    ranks = [1] + [r] * (len(in_modes) - 1) + [1]
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(out_modes, in_modes, strict=True)))


def _ratio_rank(method: str, layer: nn.Module, ratio: float, d: int):
    if method == "svd":
        m, n = layer.weight.shape
        return max(1, min(int(ratio * m * n / (m + n)), m, n))
    t, s, kh, kw = (layer.weight.shape if layer.weight.ndim == 4 else (*layer.weight.shape, 1, 1))
    if method == "cp":
        return max(1, min(int(ratio * t * s * kh * kw / (s + kh + kw + t)), cp_exact_rank((t, s, kh, kw))))
    if method == "tucker":
        k = kh * kw
        c = (math.sqrt(1 + ratio * k * k) - 1) / k
        return (max(1, min(int(c * t), t)), max(1, min(int(c * s), s)))
    # tt
    in_modes, out_modes = tt_modes(s, d), tt_modes(t, d)
    budget = ratio * t * s
    r = 1
    while r < max(t, s) and _tt_params(in_modes, out_modes, r + 1) <= budget:
        r += 1
    return r


def _matches(name: str, patterns: Sequence[str] | str | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def factorize(model: nn.Module, method: str, *, rank=None, ratio: float | None = None, energy: float | None = None,
              include: Sequence[str] | str | None = None, exclude: Sequence[str] | str | None = None,
              tt_order: int = 3, n_iter_max: int = 100) -> tuple[nn.Module, list[FactorizedLayer]]:
    r"""A copy of ``model`` with its ``nn.Linear`` (``"svd"``, ``"tt"``) or ``nn.Conv2d`` (``"cp"``, ``"tucker"``)
    layers replaced by factorised ones.

    Parameters
    ----------
    model : nn.Module
        Not modified (deep-copied).
    method : {"svd", "cp", "tucker", "tt"}
        :class:`LowRankLinear`, :class:`CPConv2d`, :class:`TuckerConv2d`, :class:`TTLinear`.
    rank : int, pair or "vbmf", optional
        The same rank for every replaced layer (an int; for "tucker" an int ``r`` means ``(r, r)`` capped at the
        channels, a pair ``(r_out, r_in)``, or ``"vbmf"``; for "tt" the inner TT rank); capped at what each layer
        allows.
    ratio : float, optional
        Fraction in ``(0, 1]`` of each layer's weight parameters to keep; the rank is solved from the closed-form
        count (see the module docstring).
    energy : float, optional
        ``"svd"`` and ``"tucker"``: keep this fraction of the singular-value energy (per unfolding for Tucker);
        ``"tt"``: relative accuracy ``eps = sqrt(1 - energy)`` of the TT-SVD.
        Give exactly one of ``rank``, ``ratio``, ``energy``.
    include, exclude : str or sequence of str, optional
        ``fnmatch`` patterns on the module names (as in ``model.named_modules()``, e.g. ``"features.*"``): only
        names matching ``include`` (default: all), minus those matching ``exclude``.
    tt_order : int
        Number of TT cores for ``"tt"``: each dimension is split into ``tt_order`` balanced factors
        (:func:`tt_modes`, e.g. 784 → (14, 8, 7), 300 → (10, 6, 5)).
    n_iter_max : int
        CP-ALS sweeps for ``"cp"`` (:meth:`CPConv2d.from_conv`).

    Returns
    -------
    (nn.Module, list of FactorizedLayer)
        The new model and one report row per replaced layer, in module order.

    Examples
    --------
    >>> import torch, tensorcompress as tc
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    >>> small, report = tc.factorize(net, "svd", ratio=0.25, include="0")
    >>> [(r.name, r.params_before, r.params_after, r.rank) for r in report]
    [('0', 2080, 512, 5)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in _TARGET:
        raise ValueError(f"method must be one of {sorted(_TARGET)}, got {method!r}")
    given = {k: v for k, v in (("rank", rank), ("ratio", ratio), ("energy", energy)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank, ratio, energy; got {given or 'none'}")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"ratio must be a float in (0, 1], got {ratio!r}")
    if energy is not None:
        check_energy(energy)
        if method == "cp":
            raise ValueError("energy is not defined for method='cp' (CP has no nested ranks): use rank or ratio")
    if rank is not None and method in ("svd", "cp", "tt"):
        check_rank(rank, "rank")
    check_rank(tt_order, "tt_order")
    new = copy.deepcopy(model)
    target = _TARGET[method]
    chosen = [(name, mod) for name, mod in new.named_modules()
              if type(mod) is target and name and (include is None or _matches(name, include))
              and not _matches(name, exclude)]
    report = []
    for name, layer in chosen:
        if method == "svd":
            r = min(rank, *layer.weight.shape) if rank is not None else (
                _ratio_rank(method, layer, ratio, tt_order) if ratio is not None else None)
            repl = LowRankLinear.from_linear(layer, r, energy=energy if r is None else None)
            used = repl.rank
        elif method == "cp":
            r = rank if rank is not None else _ratio_rank(method, layer, ratio, tt_order)
            repl = CPConv2d.from_conv(layer, r, n_iter_max=n_iter_max)
            used = repl.rank
        elif method == "tucker":
            if ratio is not None:
                ranks = _ratio_rank(method, layer, ratio, tt_order)
            elif isinstance(rank, int) and not isinstance(rank, bool):
                check_rank(rank, "rank")
                ranks = (min(rank, layer.out_channels), min(rank, layer.in_channels))
            else:
                ranks = rank
            repl = TuckerConv2d.from_conv(layer, ranks, energy=energy) if energy is None or ranks is None \
                else TuckerConv2d.from_conv(layer, ranks)
            used = repl.ranks
        else:
            in_modes, out_modes = tt_modes(layer.in_features, tt_order), tt_modes(layer.out_features, tt_order)
            if energy is not None:
                repl = TTLinear.from_linear(layer, in_modes, out_modes, eps=math.sqrt(max(1 - energy, 0.0)) or None)
            else:
                r = rank if rank is not None else _ratio_rank(method, layer, ratio, tt_order)
                repl = TTLinear.from_linear(layer, in_modes, out_modes, ranks=r)
            used = repl.ranks
        before = sum(p.numel() for p in layer.parameters())
        _set_submodule(new, name, repl)
        report.append(FactorizedLayer(name, type(layer).__name__, type(repl).__name__, before, repl.n_params, used))
    return new, report


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)

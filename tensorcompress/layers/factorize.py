r"""``factorize``: replace a model's ``nn.Linear`` / ``nn.Conv2d`` layers by factorised ones.

Rank from ``ratio`` (the fraction of a layer's weight parameters to keep, bias excluded since it is unchanged),
solving the closed-form parameter counts (:math:`T` out, :math:`S` in channels, :math:`k_h \times k_w` kernel,
:math:`m \times n` weight):

* ``"svd"`` (:class:`LowRankLinear`): :math:`r(m + n) \le \rho mn \Rightarrow r = \lfloor \rho mn/(m + n) \rfloor`;
* ``"cp"`` (:class:`CPConv2d`): :math:`R(S + k_h + k_w + T) \le \rho TSk_hk_w`;
* ``"tucker"`` (:class:`TuckerConv2d`), ranks proportional to the channels, :math:`R_T = cT, R_S = cS`, with
  :math:`k = k_h k_w`: :math:`c(S^2 + T^2) + c^2 STk = \rho STk \Rightarrow
  c = \bigl(\sqrt{(S^2 + T^2)^2 + 4\rho k^2 S^2 T^2} - (S^2 + T^2)\bigr)/(2kST)`
  (:math:`(\sqrt{1 + \rho k^2} - 1)/k` when :math:`S = T`);
* ``"tt"`` (:class:`TTLinear`): the largest equal inner rank :math:`r` with
  :math:`\sum_k r_{k-1} m_k n_k r_k \le \rho mn`.

Every rank is at least 1 and at most what the layer allows, so the kept fraction can exceed ``ratio`` for tiny layers.

With ``calibration`` data, ``"svd"`` is activation-aware (SVD-LLM; :mod:`.low_rank_linear`): each layer's factors
minimise :math:`\|(W - W_r)X\|` on the inputs :math:`X` it receives when the original model runs over the data,
through the Cholesky factor of :math:`XX^\top` accumulated in float64 over every token (batch and sequence
positions alike). The ranks follow the same rules, ``energy`` read from the spectrum of :math:`WS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import surgery
from ..surgery import LayerChange, Patterns, Selected, transform
from ._common import check_energy, check_rank
from .cp_conv import CPConv2d, cp_exact_rank
from .low_rank_linear import LowRankLinear
from .tt_linear import TTLinear, factor_dimension
from .tucker_conv import TuckerConv2d

__all__ = ["factorize", "FactorizedLayer", "tt_modes"]

_TARGET = {"svd": nn.Linear, "tt": nn.Linear, "cp": nn.Conv2d, "tucker": nn.Conv2d}


@dataclass(frozen=True)
class FactorizedLayer(LayerChange):
    """One row of :func:`factorize`'s report: a :class:`tensorcompress.surgery.LayerChange` (``name``,
    ``type_before``, ``type_after``, ``params_before`` / ``params_after`` counting weights and bias, ``compression``,
    ``aliases``) whose ``detail`` holds the ``rank`` chosen (int, pair, or TT ranks)."""

    @property
    def rank(self) -> object:
        """The rank of the new layer: an int (``"svd"``, ``"cp"``), ``(R_T, R_S)`` (``"tucker"``), the TT ranks
        ``(1, r_1, ..., 1)`` (``"tt"``)."""
        return self.detail["rank"]


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
        k, q = kh * kw, s * s + t * t
        c = (math.sqrt(q * q + 4 * ratio * (k * s * t) ** 2) - q) / (2 * k * s * t)
        return (max(1, min(int(c * t), t)), max(1, min(int(c * s), s)))
    # tt
    in_modes, out_modes = tt_modes(s, d), tt_modes(t, d)
    budget = ratio * t * s
    r = 1
    while r < max(t, s) and _tt_params(in_modes, out_modes, r + 1) <= budget:
        r += 1
    return r


def _check_options(method: str, rank, ratio, energy, tt_order) -> None:
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
    if method == "tucker" and rank is not None:
        if isinstance(rank, str):
            if rank != "vbmf":
                raise ValueError(f"rank for method='tucker' must be an int, a pair (r_out, r_in) or 'vbmf', got "
                                 f"{rank!r}")
        elif isinstance(rank, Sequence):
            if len(rank) != 2:
                raise ValueError(f"rank for method='tucker' must be a pair (r_out, r_in), got {rank!r}")
            check_rank(rank[0], "rank[0] (r_out)")
            check_rank(rank[1], "rank[1] (r_in)")
        else:
            check_rank(rank, "rank")
    check_rank(tt_order, "tt_order")


def _layer_rank(method: str, layer: nn.Module, rank, ratio, tt_order: int):
    """The rank for one layer: solved from ``ratio``, or ``rank`` capped at the layer (``None`` with ``energy``)."""
    if ratio is not None:
        return _ratio_rank(method, layer, ratio, tt_order)
    if rank is None or isinstance(rank, str):
        return rank  # energy=... or "vbmf"
    if method == "svd":
        return min(rank, *layer.weight.shape)
    if method == "tucker":
        r_out, r_in = (rank, rank) if isinstance(rank, int) else rank
        return (min(r_out, layer.out_channels), min(r_in, layer.in_channels))
    return rank  # "cp" and "tt": from_conv / the TT-SVD cap it


def _input_grams(model: nn.Module, calibration: object, chosen: list[Selected]) -> dict[str, torch.Tensor]:
    """:math:`XX^\\top` (float64) of the inputs each ``chosen`` layer receives while ``model`` runs over
    ``calibration`` (read as :func:`tensorcompress.surgery.input_batches` reads it), one batch at a time, inputs
    flattened over every leading dimension; keyed by each layer's first name."""
    names, grams, tokens = [sel.name for sel in chosen], {}, 0
    for batch in surgery.input_batches(calibration):
        try:
            captured = surgery.capture_inputs(model, [batch], names)
        except RuntimeError as e:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"calibration does not match the model: its forward pass fails on a batch {shape} "
                             f"({e})") from e
        for name, x in captured.items():
            x = x.reshape(-1, x.shape[-1]).double()
            grams[name] = x.T @ x if name not in grams else grams[name] + x.T @ x
            tokens += x.shape[0]
    if not tokens:
        raise ValueError("calibration is empty: it gave no batch of inputs")
    return grams


def _builder(method: str, rank, ratio, energy, tt_order: int, n_iter_max: int,
             grams: dict[str, torch.Tensor] | None = None):
    """The callback :func:`tensorcompress.surgery.transform` calls for each selected layer."""

    def build(sel: Selected) -> tuple[nn.Module, dict]:
        layer = sel.module
        r = _layer_rank(method, layer, rank, ratio, tt_order)
        if method == "svd":
            new = LowRankLinear.from_linear(layer, r, energy=energy if r is None else None,
                                            gram=None if grams is None else grams[sel.name])
        elif method == "cp":
            new = CPConv2d.from_conv(layer, r, n_iter_max=n_iter_max)
        elif method == "tucker":
            new = TuckerConv2d.from_conv(layer, r, energy=energy if r is None else None)
        else:
            eps = (math.sqrt(max(1 - energy, 0.0)) or None) if r is None else None
            new = TTLinear.from_linear(layer, tt_modes(layer.in_features, tt_order),
                                       tt_modes(layer.out_features, tt_order), rank=r, eps=eps)
        return new, {"rank": new.rank}

    return build


def factorize(model: nn.Module, calibration: object = None, *, method: str = "svd", rank=None,
              ratio: float | None = None, energy: float | None = None, tt_order: int = 3, n_iter_max: int = 100,
              include: Patterns = None, exclude: Patterns = None) -> tuple[nn.Module, list[FactorizedLayer]]:
    r"""A copy of ``model`` with its ``nn.Linear`` (``"svd"``, ``"tt"``) or ``nn.Conv2d`` (``"cp"``, ``"tucker"``)
    layers replaced by factorised ones.

    Built on :func:`tensorcompress.surgery.transform`: a layer reached under several names (a shared module) is
    factorised once and every name points at the one replacement; a layer whose weight or bias is tied to another
    module is refused with a ``ValueError`` (replacing it would untie them); each new layer keeps the train/eval mode
    of the old one, and its parameters the ``requires_grad`` of the weight (the bias of the bias) they replace.

    Parameters
    ----------
    model : nn.Module
        Not modified (deep-copied).
    calibration : tensor, Dataset or iterable of batches, optional
        Model inputs (``x`` of ``(x, y, ...)`` batches). Given, ``"svd"`` factors each layer in the metric of the
        inputs it receives, minimising :math:`\|(W - W_r)X\|` instead of :math:`\|W - W_r\|` (module docstring);
        ``None``: the plain truncated SVD. Only ``"svd"`` reads it.
    method : {"svd", "cp", "tucker", "tt"}, default "svd"
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
        names matching ``include`` (default: all), minus those matching ``exclude``. An ``include`` pattern that
        matches no layer of the method's type is a ``ValueError`` (a typo is not a silent no-op).
    tt_order : int
        Number of TT cores for ``"tt"``: each dimension is split into ``tt_order`` balanced factors
        (:func:`tt_modes`, e.g. 784 → (14, 8, 7), 300 → (10, 6, 5)).
    n_iter_max : int
        CP-ALS sweeps for ``"cp"`` (:meth:`CPConv2d.from_conv`).

    Returns
    -------
    (nn.Module, list of FactorizedLayer)
        The new model and one report row per replaced layer (shared layers once), in module order.

    Examples
    --------
    >>> import torch, tensorcompress as tc
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    >>> small, report = tc.factorize(net, method="svd", ratio=0.25, include="0")
    >>> [(r.name, r.params_before, r.params_after, r.rank) for r in report]
    [('0', 2080, 512, 5)]
    >>> print(report[0])
    0: Linear -> LowRankLinear, 2080 -> 512 parameters, 10,149 -> 4,129 bytes (2.46x), rank 5
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_options(method, rank, ratio, energy, tt_order)
    grams = None
    if calibration is not None:
        if method != "svd":
            raise ValueError(f"calibration is read by method='svd' only (activation-aware SVD), got method={method!r}")
        grams = _input_grams(model, calibration, surgery.select(model, nn.Linear, include=include, exclude=exclude,
                                                               action="factorize"))
    build = _builder(method, rank, ratio, energy, tt_order, n_iter_max, grams)
    return transform(model, _TARGET[method], build, include=include, exclude=exclude, row_type=FactorizedLayer,
                     action="factorize")

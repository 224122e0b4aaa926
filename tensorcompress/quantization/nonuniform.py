r"""Non-uniform weight quantization: power-of-two levels, binary and ternary weights, k-means weight sharing.

* **Power-of-two** (Miyashita et al. 2016, "Convolutional neural networks using logarithmic data
  representation"): :math:`\hat w = \operatorname{sign}(w)\,2^{e}`, :math:`e = \operatorname{round}(\log_2|w|)`
  clipped to the :math:`L = 2^{b-1} - 1` exponents below :math:`e_{\max} = \operatorname{round}(\log_2\max|w|)`;
  magnitudes whose exponent falls below the window become 0. One bit for the sign, :math:`b - 1` for the exponent
  (one code kept for 0): a multiplication by :math:`\hat w` is a shift.
* **Binary** (Rastegari et al. 2016, XNOR-Net): :math:`\min_{\alpha, B \in \{\pm 1\}^n}\|W - \alpha B\|^2` is solved
  by :math:`B = \operatorname{sign}(W)` and :math:`\alpha = \langle W, B\rangle / n = \operatorname{mean}|W|`.
* **Ternary** (Li & Liu 2016, TWN): :math:`T \in \{-1, 0, 1\}^n` with :math:`T_i = \operatorname{sign}(W_i)` where
  :math:`|W_i| > \Delta`; for a fixed support :math:`I` the best scale is :math:`\alpha = \operatorname{mean}_{I}|W|`,
  and the best threshold maximises :math:`(\sum_I |W_i|)^2 / |I|`. For weights uniform on :math:`[-a, a]` it is
  :math:`a/3 = \tfrac23\operatorname{mean}|W|`, for Gaussian ones :math:`\approx 0.61\sigma \approx
  0.76\operatorname{mean}|W|`; TWN takes :math:`\Delta = 0.7\,\operatorname{mean}|W|` for both.
* **k-means weight sharing** (Han et al. 2016, Deep Compression): cluster the weights of a layer into
  :math:`k = 2^b` centroids by Lloyd's iteration (assign to the nearest centroid, move each centroid to the mean of its
  members), started from :math:`k` centroids spaced linearly over :math:`[\min W, \max W]`, which keeps the rare large
  weights that matter most. Storage: :math:`b` bits per weight plus :math:`k` float32 centroids per layer. While
  fine-tuning, a centroid's gradient is the sum of its members' gradients (:func:`centroid_gradient`).

Storage of binary / ternary weights: 1 bit / :math:`\log_2 3 \approx 1.58` bits per weight plus one float scale.

Whole models: :func:`share_weights` replaces the weight of every selected ``nn.Linear`` / ``nn.Conv2d`` by
``codebook[indices]`` through a ``torch.nn.utils.parametrize`` parametrization (:class:`SharedWeight`): the
``(k,)`` codebook is the layer's only weight parameter (``parametrizations.weight.original``), so it trains with
``tc.fit`` and autograd gives it exactly the summed member gradients; the indices are stored *packed*,
:math:`\lceil n b / 8\rceil` bytes (:func:`pack_indices`, the bit order of ``numpy.packbits``), so that
``tc.metrics.model_size_bytes`` counts real bytes: :math:`n b/8 + 4k` per layer instead of :math:`4n`.
For a pruned layer (``keep_zeros=True``, Deep Compression's second stage after pruning) only the :math:`m` non-zero
weights are clustered and the weight is ``where(mask, codebook[indices], 0)``: the zeros stay exactly zero and
receive no gradient; the mask costs :math:`\lceil n/8\rceil` more bytes (the file of
:func:`tensorcompress.export.save_compressed` stores it as entropy-coded relative indices instead).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.utils.prune as tprune
from torch import nn
from torch.nn.utils import parametrize

from .. import surgery
from .._bits import pack_bits, packed_size, unpack_bits
from .._validation import check_bits, check_finite, check_mode, check_positive_int, check_real, compute_dtype

__all__ = ["log2_quantize", "binarize", "ternarize", "kmeans_quantize", "centroid_gradient", "pack_indices",
           "unpack_indices", "SharedWeight", "SharedLayer", "share_weights"]


def _check_weight(w: object, name: str = "w") -> torch.dtype:
    dt = compute_dtype(w, name)  # TypeError for non-float, ValueError for empty
    check_finite(w, name)
    return dt


def log2_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Round each entry of ``w`` to 0 or :math:`\\pm 2^e` with ``2**(bits-1) - 1`` exponents (``bits >= 2``), the
    largest :math:`e_{\\max} = \\operatorname{round}(\\log_2 \\max|w|)`; rounding is to the nearest level in the
    log domain. Returns a tensor like ``w``."""
    dt = _check_weight(w)
    check_bits(bits)
    if bits < 2:
        raise ValueError(f"bits must be >= 2 for log2_quantize (one sign bit, at least one exponent bit), got {bits}")
    x = w.detach().to(dt)
    mag = x.abs()
    top = float(mag.max())
    if top == 0:
        return torch.zeros_like(w)
    e_max = round(torch.log2(torch.tensor(top, dtype=torch.float64)).item())
    e_min = e_max - (2 ** (bits - 1) - 2)
    e = torch.round(torch.log2(mag.clamp_min(torch.finfo(dt).tiny)))
    out = torch.sign(x) * torch.exp2(e.clamp(max=e_max))
    return torch.where(e < e_min, torch.zeros_like(out), out).to(w.dtype)


def _reduce_dims(w: torch.Tensor, axis: int | None) -> tuple[int, ...] | None:
    if axis is None:
        return None
    axis = check_mode(axis, w.ndim, "axis")
    return tuple(d for d in range(w.ndim) if d != axis)


def binarize(w: torch.Tensor, *, axis: int | None = None) -> torch.Tensor:
    """:math:`\\alpha\\,\\operatorname{sign}(w)` with :math:`\\alpha = \\operatorname{mean}|w|` (per slice along
    ``axis`` if given, as XNOR-Net's per-filter scales); ``sign(0) = +1``."""
    dt = _check_weight(w)
    x = w.detach().to(dt)
    dims = _reduce_dims(x, axis)
    alpha = x.abs().mean() if dims is None else x.abs().mean(dim=dims, keepdim=True)
    b = torch.where(x >= 0, 1.0, -1.0).to(dt)
    return (alpha * b).to(w.dtype)


def ternarize(w: torch.Tensor, *, threshold: float = 0.7, axis: int | None = None) -> torch.Tensor:
    """TWN: :math:`\\alpha T` with :math:`\\Delta = ` ``threshold`` :math:`\\cdot\\operatorname{mean}|w|`,
    :math:`T_i = \\operatorname{sign}(w_i)\\,[|w_i| > \\Delta]` and :math:`\\alpha` the mean of :math:`|w_i|` over
    the kept entries.

    Parameters
    ----------
    w : tensor
        Weights (floating point, finite).
    threshold : float in [0, 1)
        :math:`\\Delta` as a multiple of :math:`\\operatorname{mean}|w|` (TWN's 0.7).
    axis : int, optional
        One :math:`\\Delta` and :math:`\\alpha` per slice along ``axis``; default one for the tensor.

    Returns
    -------
    tensor
        Like ``w``.
    """
    dt = _check_weight(w)
    if not 0 <= check_real(threshold, "threshold") < 1:
        raise ValueError(f"threshold must be in [0, 1) (a multiple of mean|w|), got {threshold}")
    x = w.detach().to(dt)
    dims = _reduce_dims(x, axis)
    mag = x.abs()
    mean = mag.mean() if dims is None else mag.mean(dim=dims, keepdim=True)
    keep = mag > threshold * mean
    kept = keep.to(dt)
    s = (mag * kept).sum() if dims is None else (mag * kept).sum(dim=dims, keepdim=True)
    n = kept.sum() if dims is None else kept.sum(dim=dims, keepdim=True)
    alpha = s / n.clamp_min(1)
    return (alpha * torch.sign(x) * kept).to(w.dtype)


INITS = ("linear", "random", "density")


def _check_init(init: object) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _boundaries(xs: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """For the sorted values ``xs`` and a sorted codebook, ``b[j]`` = the number of values at most the midpoint of
    centroids ``j`` and ``j + 1``: centroid ``j`` owns the ranks ``b[j-1] <= r < b[j]`` (nearest centroid, a tie to
    the lower one), exactly the assignment ``bucketize(x, midpoints)`` of each value."""
    mid = (codebook[1:] + codebook[:-1]) / 2
    return torch.searchsorted(xs, mid, right=True)


def _moved_ranks(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The ranks whose centroid changes when the boundaries move from ``old`` to ``new``: those between each
    boundary's two positions (with repeats where ranges overlap)."""
    lo, hi = torch.minimum(old, new), torch.maximum(old, new)
    lengths = hi - lo
    starts = torch.repeat_interleave(lo - (torch.cumsum(lengths, 0) - lengths), lengths)
    return starts + torch.arange(int(lengths.sum()), device=old.device)


def _lloyd(x: torch.Tensor, codebook: torch.Tensor, n_iter_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iteration from ``codebook`` (sorted): ``(codebook, idx)``, ``idx`` each value's nearest centroid.

    The values are sorted once: an assignment is then ``k - 1`` boundaries in the sorted order (a binary search
    each), an iteration has converged when no boundary moves, and only the values between a boundary's old and new
    positions are relabelled. The centroids are the members' sums over their counts, the sums accumulated by
    ``index_add_`` over the values in their original order — the arithmetic of the textbook iteration (assign every
    value, sum, divide), so that the result is the same to the bit."""
    k = codebook.numel()
    xs, perm = x.sort()  # any order of equal values: they share every boundary test
    ranks = torch.arange(x.numel(), device=x.device)
    pos = _boundaries(xs, codebook)
    idx = torch.empty_like(perm)
    idx[perm] = torch.searchsorted(pos, ranks, right=True)  # rank r belongs to the number of boundaries <= r
    edges = torch.tensor([0, x.numel()], device=x.device)
    for _ in range(n_iter_max):
        sums = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, idx, x)
        counts = torch.diff(torch.cat([edges[:1], pos, edges[1:]])).to(x.dtype)
        codebook = torch.where(counts > 0, sums / counts.clamp_min(1), codebook).sort().values
        new = _boundaries(xs, codebook)
        if torch.equal(new, pos):
            break
        moved = _moved_ranks(pos, new)
        idx[perm[moved]] = torch.searchsorted(new, moved, right=True)
        pos = new
    return codebook, idx


def kmeans_quantize(w: torch.Tensor, bits: int, *, seed: int = 0, init: str = "linear", n_iter_max: int = 100,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the entries of ``w`` into ``2**bits`` shared values by Lloyd's iteration.

    Parameters
    ----------
    w : tensor
        Weights (any shape).
    bits : int
        Index width, 1 to 16: ``k = 2**bits`` centroids.
    seed : int
        Seeds the ``"random"`` initialisation (the default ``"linear"`` one is deterministic).
    init : {"linear", "random", "density"}
        ``"linear"`` (Deep Compression's choice): ``k`` values evenly spaced over ``[min w, max w]``. ``"random"``
        (Forgy): ``k`` distinct entries of ``w`` drawn with ``seed``. ``"density"``: the quantiles
        :math:`(2j + 1)/(2k)` of ``w`` (evenly spaced on the CDF's axis), which crowd the centroids where the weights
        are dense and leave few for the rare large ones.
    n_iter_max : int
        Lloyd iterations at most (0 keeps the initial centroids); stops earlier when no assignment changes.

    Returns
    -------
    (codebook, indices)
        ``codebook``: ``(k,)`` sorted centroids in ``w``'s dtype (a centroid left without members keeps its last
        value); ``indices``: ``w``'s shape, uint8 for ``bits <= 8``, else int32, with
        ``codebook[indices.long()]`` the quantized weights.
    """
    dt = _check_weight(w)
    check_bits(bits)
    _check_init(init)
    check_positive_int(n_iter_max, "n_iter_max", minimum=0)
    x = w.detach().to(dt).reshape(-1)
    k = 2**bits
    if init == "linear":
        lo, hi = x.min(), x.max()
        codebook = lo + (hi - lo) * torch.linspace(0, 1, k, dtype=dt, device=x.device)
    elif init == "density":
        levels = (2 * torch.arange(k, dtype=torch.float64) + 1) / (2 * k)
        # sort-based order statistics (torch.quantile refuses inputs over 2**24 entries)
        xs = x.sort().values
        codebook = xs[(levels * (x.numel() - 1)).round().long().to(x.device)]
    else:
        g = torch.Generator().manual_seed(seed)
        uniq = torch.unique(x)
        pick = torch.randperm(uniq.numel(), generator=g)[:k].to(x.device)
        codebook = uniq[pick].sort().values
        if codebook.numel() < k:  # fewer distinct values than centroids
            codebook = torch.cat([codebook, codebook[-1:].expand(k - codebook.numel())])
    codebook, idx = _lloyd(x, codebook, n_iter_max)
    index_dtype = torch.uint8 if bits <= 8 else torch.int32
    return codebook.to(w.dtype), idx.reshape(w.shape).to(index_dtype)


def centroid_gradient(grad: torch.Tensor, indices: torch.Tensor, n_centroids: int) -> torch.Tensor:
    """The gradient of a shared codebook: :math:`\\partial L/\\partial c_k = \\sum_{i: \\text{idx}_i = k}
    \\partial L/\\partial w_i` (Han et al. 2016, eq. 3).

    Parameters
    ----------
    grad : tensor
        :math:`\\partial L/\\partial w`, the weight's shape.
    indices : integer tensor
        Each weight's centroid, the weight's shape.
    n_centroids : int
        The codebook's length.

    Returns
    -------
    tensor
        ``(n_centroids,)``, ``grad``'s dtype and device.
    """
    if grad.shape != indices.shape:
        raise ValueError(f"grad and indices must have one shape, got {tuple(grad.shape)} and {tuple(indices.shape)}")
    out = torch.zeros(n_centroids, dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, indices.reshape(-1).long(), grad.reshape(-1))


def _check_indices(indices: object, bits: int) -> torch.Tensor:
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"indices must have an integer dtype, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= 2**bits):
        raise ValueError(f"indices must lie in [0, 2**bits - 1] = [0, {2**bits - 1}] for bits={bits}, "
                         f"got values in [{int(indices.min())}, {int(indices.max())}]")
    return indices


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into a ``uint8`` bit stream of :math:`\\lceil n\\,b/8 \\rceil` bytes.

    Each code is written most significant bit first, codes one after another in row-major order, the last byte
    padded with zeros: the layout of ``numpy.packbits`` applied to the codes' bits. The result is on ``indices``'
    device; :func:`unpack_indices` inverts it.
    """
    check_bits(bits)
    return pack_bits(_check_indices(indices, bits), bits)


def unpack_indices(packed: torch.Tensor, bits: int, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The codes packed by :func:`pack_indices`, as an ``int64`` tensor of ``shape`` on ``packed``'s device.

    Parameters
    ----------
    packed : uint8 tensor
        The bit stream, exactly ``ceil(n * bits / 8)`` bytes for ``n = prod(shape)`` codes.
    bits : int in [1, 16]
        Bits per code, as packed.
    shape : tuple of int or torch.Size
        The shape of the codes.

    Raises
    ------
    TypeError
        ``packed`` is not a uint8 tensor, or ``bits`` not an int.
    ValueError
        ``bits`` out of range, or ``packed`` not of the size ``shape`` and ``bits`` need.
    """
    check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    n = math.prod(shape)
    if packed.numel() != packed_size(n, bits):
        raise ValueError(f"packed must hold ceil(n * bits / 8) = {packed_size(n, bits)} bytes for shape "
                         f"{tuple(shape)} at bits={bits}, got {packed.numel()}")
    return unpack_bits(packed, bits, n).reshape(tuple(shape))


ONE_BYTE = " (one-byte codes)"
"""What the bound 8 on ``share_weights``' ``bits`` and ``index_bits`` is for, in their error messages."""


def _versions(value: torch.Tensor | tuple) -> tuple[int, ...]:
    """The version counters of a tensor or of a tuple of tensors (``None`` entries skipped)."""
    items = value if isinstance(value, tuple) else (value,)
    return tuple(t._version for t in items if t is not None)


class SharedWeight(nn.Module):
    """Parametrization ``codebook -> codebook[indices]``, or ``where(mask, codebook[indices], 0)`` for a pruned
    layer: a weight of ``shape`` whose entries share the ``k`` values of a codebook, the indices held packed at
    ``bits`` bits per entry (buffer ``packed``) and the optional mask at one bit per entry (buffer ``packed_mask``,
    absent for a dense layer), both in the ``state_dict``.

    Registered on a layer (``parametrize.register_parametrization(layer, "weight", SharedWeight(...))``) the layer's
    only weight parameter is the ``(k,)`` codebook; autograd through the gather gives each centroid the sum of its
    members' gradients (:func:`centroid_gradient`), and a masked position has none. ``right_inverse(w)`` maps a
    full weight to the codebook that reproduces it best with the fixed indices (and mask) — the mean of each
    centroid's members (a centroid without members keeps its value from ``codebook``).

    Parameters
    ----------
    codebook : tensor of shape ``(k,)``, ``k <= 2**bits``
    indices : integer tensor, the weight's shape, values in ``[0, k)``
    bits : int
        Width of a codebook index, 1 to 16.
    mask : bool tensor of the weight's shape, optional
        ``False`` where the weight is pruned: it stays exactly 0 (Han et al. 2016). ``None``: dense.
    index_bits : int in [1, 8]
        Width of a relative index (the gap between kept weights) in the file of
        :func:`tensorcompress.export.save_compressed`; unused by the forward pass.
    """

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, bits: int, *,
                 mask: torch.Tensor | None = None, index_bits: int = 5):
        super().__init__()
        check_bits(bits)
        if not isinstance(codebook, torch.Tensor) or codebook.ndim != 1 or codebook.numel() > 2**bits:
            raise ValueError(f"codebook must be a 1-d tensor with at most 2**bits = {2**bits} entries, "
                             f"got {getattr(codebook, 'shape', type(codebook).__name__)}")
        self.bits, self.shape = bits, tuple(indices.shape)
        self.index_bits = check_bits(index_bits, "index_bits", hi=8, why=ONE_BYTE)
        self.register_buffer("packed", pack_indices(indices, bits))
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                                 or tuple(mask.shape) != self.shape):
            raise ValueError(f"mask must be None or a bool tensor of the indices' shape {self.shape}, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        self.register_buffer("packed_mask", None if mask is None else pack_indices(mask.to(torch.uint8), 1))
        self._fallback = codebook.detach().clone()
        self._cache: dict[str, tuple] = {}

    def extra_repr(self) -> str:
        kept = "" if self.packed_mask is None else f", kept={int(self.mask().sum())}/{math.prod(self.shape)}"
        return f"shape={self.shape}, bits={self.bits}{kept}"

    def indices(self) -> torch.Tensor:
        """The unpacked codes (``int64``, the weight's shape; 0 at masked positions)."""
        return unpack_indices(self.packed, self.bits, self.shape)

    def mask(self) -> torch.Tensor:
        """``False`` where the weight is pruned (bool, the weight's shape; all ``True`` for a dense layer)."""
        if self.packed_mask is None:
            return torch.ones(self.shape, dtype=torch.bool, device=self.packed.device)
        return unpack_indices(self.packed_mask, 1, self.shape).bool()

    def _cached(self, slot: str, tensors: tuple[torch.Tensor | None, ...], compute):
        """``compute()``, kept in ``slot`` until one of ``tensors`` is replaced, moved or changed in place (its
        identity, ``_version`` counter, storage, dtype or device), or the kept value itself is changed in place.
        Inference tensors have no version counter: with one among ``tensors`` nothing is cached. The check runs on
        every access of the weight, so it is kept to one tuple of plain numbers compared at once."""
        try:
            stamp = tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors if t is not None)
        except RuntimeError:  # "Inference tensors do not track version counter"
            return compute()
        hit = self._cache.get(slot)
        if hit is not None and hit[0] == stamp and _versions(hit[1]) == hit[2]:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, reusable outside inference mode
            value = compute()
        # holding the tensors keeps their ids unique while the stamp names them
        self._cache[slot] = (stamp, value, _versions(value), tensors)
        return value

    def _decode(self, codebook: torch.Tensor) -> torch.Tensor:
        idx, keep = self._cached("codes", (self.packed, self.packed_mask),
                                 lambda: (self.indices(), None if self.packed_mask is None else self.mask()))
        shared = codebook[idx]
        if keep is None:
            return shared
        return torch.where(keep, shared, torch.zeros((), dtype=shared.dtype, device=shared.device))

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        # the codes are unpacked once (until the buffers change); the weight is decoded once while no gradient is
        # asked of the codebook (inference), and gathered anew otherwise so that autograd reaches the codebook
        if torch.is_grad_enabled() and codebook.requires_grad:
            return self._decode(codebook)
        return self._cached("weight", (codebook, self.packed, self.packed_mask),
                            lambda: self._decode(codebook.detach()))

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        idx = self.indices().reshape(-1)
        flat = w.detach().reshape(-1)
        if self.packed_mask is not None:  # pruned positions are no centroid's members
            keep = self.mask().reshape(-1)
            idx, flat = idx[keep], flat[keep]
        k = self._fallback.numel()
        sums = torch.zeros(k, dtype=w.dtype, device=w.device).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=k).to(w.dtype)
        return torch.where(counts > 0, sums / counts.clamp_min(1), self._fallback.to(w.device, w.dtype))


def _cluster(w: torch.Tensor, bits: int, keep_zeros: bool, **kmeans) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor | None]:
    """(codebook, indices, mask) of one weight; with ``keep_zeros`` only its non-zero entries are clustered."""
    if not keep_zeros:
        return (*kmeans_quantize(w, bits, **kmeans), None)
    mask = w != 0
    indices = torch.zeros(w.shape, dtype=torch.uint8, device=w.device)
    if not mask.any():  # an all-zero layer: any codebook will do
        return torch.zeros(2**bits, dtype=w.dtype, device=w.device), indices, mask
    codebook, indices[mask] = kmeans_quantize(w[mask], bits, **kmeans)
    return codebook, indices, mask


class SharedLayer(surgery.LayerChange):
    """A report row of :func:`share_weights`, its details typed."""

    bits = surgery.Detail(int, "Width of a weight's index: ``2**bits`` shared values.")
    rel_error = surgery.Detail(float, "Relative squared error of the shared weight, to six digits.")
    kept = surgery.Detail(int, "Weights kept by the mask (``keep_zeros=True``).", optional=True)


def share_weights(model: nn.Module, *, bits: int | Mapping[str, int] = 2, include=None, exclude=None,
                  init: str = "linear", seed: int = 0, n_iter_max: int = 100, keep_zeros: bool = False,
                  index_bits: int = 5) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A copy of ``model`` whose selected ``nn.Linear`` / ``nn.Conv*d`` weights share ``2**bits`` values per layer.

    Each weight is clustered by :func:`kmeans_quantize` and parametrized by :class:`SharedWeight`: the codebook is a
    trainable parameter (fine-tune it with ``tc.fit``, Deep Compression's centroid fine-tuning), the indices are
    fixed and stored packed. Biases are left in floating point. A layer pruned through ``torch.nn.utils.prune`` is
    made permanent first (in the copy).

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    bits : int or mapping layer name -> int
        Index width, 1 to 8: ``k = 2**bits`` centroids per layer (a mapping names every selected layer).
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns (:func:`tensorcompress.surgery.select`); a selection that keeps no
        layer is a ``ValueError``.
    init, seed, n_iter_max
        Passed to :func:`kmeans_quantize`.
    keep_zeros : bool
        ``True`` for a pruned layer (Deep Compression, Han et al. 2016): its zeros form a mask, stay exactly 0 and
        are not clustered; only the non-zero weights share the ``2**bits`` values. ``False``: every entry is
        clustered (a zero becomes its centroid).
    index_bits : int in [1, 8]
        Relative-index width stored with each layer for :func:`tensorcompress.export.save_compressed` (Deep
        Compression uses 5 for fully connected, 8 for convolutional layers).

    Returns
    -------
    (nn.Module, list of LayerChange)
        One row per layer; ``detail`` holds ``bits``, ``centroids``, the packed ``index_bytes`` and the weight's
        relative squared error ``rel_error`` :math:`\\|W - \\hat W\\|^2 / \\|W\\|^2`; with ``keep_zeros`` also
        ``kept`` (the non-zero weights) and ``mask_bytes``.
    """

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_init(init)
    check_bits(index_bits, "index_bits", hi=8, why=ONE_BYTE)
    check_positive_int(n_iter_max, "n_iter_max", minimum=0)
    for sel in surgery.select(model, surgery.LAYERS, include=include, exclude=exclude, exact_type=False):
        if parametrize.is_parametrized(sel.module, "weight"):  # its class is now Parametrized<Linear>
            raise ValueError(f"layer {sel.name!r} already has a weight parametrization (shared already?)")
    chosen = surgery.select(model, surgery.LAYERS, include=include, exclude=exclude, action="share_weights")
    one_byte = functools.partial(check_bits, hi=8, why=ONE_BYTE)
    widths = surgery.per_layer(bits, [s.name for s in chosen], one_byte, "bits")
    model = surgery.copy_model(model)  # deepcopy refuses a pruned weight computed by a forward pass
    for sel in surgery.select(model, surgery.LAYERS, include=include, exclude=exclude):
        if tprune.is_pruned(sel.module) and hasattr(sel.module, "weight_mask"):
            tprune.remove(sel.module, "weight")

    def build(sel: surgery.Selected) -> tuple[nn.Module, dict[str, Any]]:
        # parametrizing changes the module's class in place: work on a copy so the report names the original type
        layer = copy.deepcopy(sel.module)
        w, b = layer.weight.detach(), widths[sel.name]
        codebook, idx, mask = _cluster(w, b, keep_zeros, seed=seed, init=init, n_iter_max=n_iter_max)
        sw = SharedWeight(codebook, idx, b, mask=mask, index_bits=index_bits)
        parametrize.register_parametrization(layer, "weight", sw)
        err = float((layer.weight.detach() - w).pow(2).sum() / w.pow(2).sum().clamp_min(torch.finfo(w.dtype).tiny))
        detail = {"bits": b, "centroids": 2**b, "index_bytes": sw.packed.numel(), "rel_error": round(err, 6)}
        if mask is not None:
            detail |= {"kept": int(mask.sum()), "mask_bytes": sw.packed_mask.numel()}
        return layer, detail

    return surgery.transform(model, surgery.LAYERS, build, include=include, exclude=exclude, row_type=SharedLayer,
                             action="share_weights")

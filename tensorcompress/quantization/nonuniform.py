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
"""

from __future__ import annotations

import torch

from .._validation import check_finite, compute_dtype
from .uniform import check_bits

__all__ = ["log2_quantize", "binarize", "ternarize", "kmeans_quantize", "centroid_gradient"]


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
    if isinstance(axis, bool) or not isinstance(axis, int) or not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis must be None or an int in [-{w.ndim}, {w.ndim}), got {axis!r}")
    return tuple(d for d in range(w.ndim) if d != axis % w.ndim)


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
    the kept entries (per slice along ``axis`` if given)."""
    dt = _check_weight(w)
    if not 0 <= threshold < 1:
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


def _assign(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (codebook sorted ascending); a tie goes to the lower centroid."""
    mid = (codebook[1:] + codebook[:-1]) / 2
    return torch.bucketize(x, mid, right=False)


def kmeans_quantize(w: torch.Tensor, bits: int, *, seed: int = 0, init: str = "linear", max_iter: int = 100,
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
    init : {"linear", "random"}
        ``"linear"`` (Deep Compression's choice): ``k`` values evenly spaced over ``[min w, max w]``. ``"random"``
        (Forgy): ``k`` distinct entries of ``w`` drawn with ``seed``.
    max_iter : int
        Lloyd iterations at most; stops earlier when no assignment changes.

    Returns
    -------
    (codebook, indices)
        ``codebook``: ``(k,)`` sorted centroids in ``w``'s dtype (a centroid left without members keeps its last
        value); ``indices``: ``w``'s shape, uint8 for ``bits <= 8``, else int32, with
        ``codebook[indices.long()]`` the quantized weights.
    """
    dt = _check_weight(w)
    check_bits(bits)
    if init not in ("linear", "random"):
        raise ValueError(f"init must be 'linear' or 'random', got {init!r}")
    x = w.detach().to(dt).reshape(-1)
    k = 2**bits
    if init == "linear":
        lo, hi = x.min(), x.max()
        codebook = lo + (hi - lo) * torch.linspace(0, 1, k, dtype=dt, device=x.device)
    else:
        g = torch.Generator().manual_seed(seed)
        uniq = torch.unique(x)
        pick = torch.randperm(uniq.numel(), generator=g)[:k].to(x.device)
        codebook = uniq[pick].sort().values
        if codebook.numel() < k:  # fewer distinct values than centroids
            codebook = torch.cat([codebook, codebook[-1:].expand(k - codebook.numel())])
    idx = _assign(x, codebook)
    for _ in range(max_iter):
        sums = torch.zeros(k, dtype=dt, device=x.device).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(dt)
        codebook = torch.where(counts > 0, sums / counts.clamp_min(1), codebook).sort().values
        new = _assign(x, codebook)
        if torch.equal(new, idx):
            break
        idx = new
    index_dtype = torch.uint8 if bits <= 8 else torch.int32
    return codebook.to(w.dtype), idx.reshape(w.shape).to(index_dtype)


def centroid_gradient(grad: torch.Tensor, indices: torch.Tensor, n_centroids: int) -> torch.Tensor:
    """The gradient of a shared codebook: :math:`\\partial L/\\partial c_k = \\sum_{i: \\text{idx}_i = k}
    \\partial L/\\partial w_i` (Han et al. 2016, eq. 3), as a ``(n_centroids,)`` tensor."""
    if grad.shape != indices.shape:
        raise ValueError(f"grad and indices must have one shape, got {tuple(grad.shape)} and {tuple(indices.shape)}")
    out = torch.zeros(n_centroids, dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, indices.reshape(-1).long(), grad.reshape(-1))

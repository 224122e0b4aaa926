"""Helpers shared by the decompositions: input checks, rank parsing, rank selection, seeded generators, and the
small base class every result (CPTensor, TuckerTensor, TTTensor, TTMatrix) derives from."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .._validation import check_finite, check_positive_int, check_tensor, compute_dtype, max_abs
from ..tensor import ldexp, mode_dot, scale_exponent, unfold

__all__: list[str] = []


def check_input(x: object, name: str = "x", *, min_ndim: int = 2) -> torch.Tensor:
    """A floating point, finite, non-empty tensor of order ``>= min_ndim`` (the input to every decomposition)."""
    check_tensor(x, name, min_ndim=min_ndim)
    compute_dtype(x, name)
    check_finite(x, name)
    return x


def prepare(x: object, name: str = "x", *, min_ndim: int = 2) -> tuple[torch.Tensor, int]:
    """The input of a decomposition, checked (as :func:`check_input`), cast to its compute dtype (the one rule,
    :func:`tensorcompress._validation.compute_dtype`: float16/bfloat16 compute in float32) and scaled by an exact
    power of two ``2**-exp`` when its largest entry is far from 1, so that norms, Gram matrices and squared
    singular values neither overflow nor underflow. Returns ``(scaled, exp)``: multiply a result back by
    ``2**exp`` (:func:`tensorcompress.tensor.ldexp`), then cast to ``x.dtype``. One pass over ``x`` finds both its
    largest entry and whether it is finite (the maximum of ``|x|`` is NaN or Inf otherwise)."""
    check_tensor(x, name, min_ndim=min_ndim)
    xc = x.to(compute_dtype(x, name))
    largest = max_abs(xc)
    if not math.isfinite(largest):
        check_finite(x, name)
    exp = scale_exponent(xc, largest)
    return ldexp(xc, -exp), exp


def check_tol(value: object, name: str, *, allow_none: bool = False, positive: bool = False) -> float | None:
    """A real number ``>= 0`` (``> 0`` if ``positive``), or ``None`` if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number{' or None' if allow_none else ''}, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def parse_ranks(rank: object, shape: Sequence[int], name: str = "rank") -> list[int]:
    """One rank per mode, ``1 <= R_n <= I_n``; an int means the same rank for every mode."""
    n = len(shape)
    if isinstance(rank, int) and not isinstance(rank, bool):
        rank = [rank] * n
    elif isinstance(rank, torch.Size):
        rank = list(rank)
    if not isinstance(rank, Sequence) or isinstance(rank, str):
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {type(rank).__name__} ({rank!r})")
    if len(rank) != n:
        raise ValueError(f"{name} must hold one rank per mode ({n} for shape {tuple(shape)}), got {len(rank)}: "
                         f"{list(rank)}")
    out = []
    for k, (r, size) in enumerate(zip(rank, shape, strict=True)):
        check_positive_int(r, f"{name}[{k}]")
        if r > size:
            raise ValueError(f"{name}[{k}]={r} exceeds the size {size} of mode {k} (shape {tuple(shape)}): "
                             f"allowed 1..{size}")
        out.append(int(r))
    return out


def rank_for_tail(sq_values: torch.Tensor, budget: float) -> int:
    r"""Smallest ``r >= 1`` with :math:`\sum_{i > r} s_i \le` ``budget`` for non-increasing ``sq_values`` ``s_i``
    (squared singular values)."""
    # tails[r] = sum_{i >= r} s_i (0-based), tails[len] = 0
    tails = torch.flip(torch.cumsum(torch.flip(sq_values, [0]), 0), [0])
    ok = (tails <= budget).nonzero()
    r = int(ok[0]) if ok.numel() else len(sq_values)
    return max(r, 1)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    r"""Smallest :math:`r \ge 1` with :math:`\sum_{i \le r} \sigma_i^2 \ge` ``energy`` :math:`\sum_i \sigma_i^2`.

    The same rule as the decompositions' tail budget (:func:`rank_for_tail`): keeping a fraction ``energy`` of
    :math:`\sum_i \sigma_i^2` is leaving a tail of at most :math:`(1 - \text{energy}) \sum_i \sigma_i^2` (plus a
    relative :math:`10^{-12}` for rounding). Squares are summed in float64, so float32 singular values of any scale
    neither overflow nor underflow. Used by the layers' ``energy=`` options.

    Parameters
    ----------
    singular_values : torch.Tensor
        Non-increasing singular values (1-D).
    energy : float
        The fraction to keep, ``0 < energy <= 1``.
    """
    check_tensor(singular_values, "singular_values")
    if singular_values.ndim != 1:
        raise ValueError(f"singular_values must be 1-D, got shape {tuple(singular_values.shape)}")
    energy = check_tol(energy, "energy")
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy} is out of range: allowed 0 < energy <= 1")
    sq = singular_values.detach().double() ** 2
    return rank_for_tail(sq, (1 - energy + 1e-12) * float(sq.sum()))


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded if ``seed`` is given; random numbers are drawn on the CPU, then moved, so a seed
    gives the same numbers on every device."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} ({seed!r})")
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def randn(shape: Sequence[int], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers drawn in float64 on the CPU, returned with ``like``'s dtype and device."""
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def gram_is_accurate(tail: float, total: float, rank: int, size: int, dtype: torch.dtype) -> bool:
    r"""Whether the leading ``rank`` eigenvectors of a Gram matrix :math:`Y Y^\top` (``size`` × ``size``) give a
    truncation as accurate as an SVD of :math:`Y` would.

    Forming the Gram matrix and its symmetric eigensolver are backward stable: the eigenvectors are exact for
    :math:`YY^\top + E` with :math:`\|E\| \lesssim c\,\epsilon_{\text{mach}} \|Y\|^2`. By Weyl's inequality
    the energy they capture then falls short of the best by at most :math:`2\,\text{rank}\,\|E\|`, so the
    squared truncation error grows by at most that much. That is negligible (below 1 %) when the discarded energy
    ``tail`` is at least 200 × ``rank`` × ``size`` × :math:`\epsilon_{\text{mach}}` × ``total``. Below it (the
    condition number squared: exact low rank, graded spectra) the caller takes an SVD of :math:`Y` instead.
    """
    if rank >= size:  # every eigenvector kept: an orthonormal basis of the whole space, exact
        return True
    return tail >= 200.0 * rank * size * torch.finfo(dtype).eps * total


def svd(matrix: torch.Tensor, *, full_matrices: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(matrix, full_matrices=...)``, a wide matrix factored through its transposed view: LAPACK
    (gesdd through torch) is several times faster on the tall form (20 x 160000 float32, one thread: 0.5 s against
    2.8 s). ``full_matrices`` only matters for a tall matrix (the left vectors of a wide one are square already)."""
    if matrix.shape[0] < matrix.shape[1]:
        u, s, vh = torch.linalg.svd(matrix.mT, full_matrices=False)
        return vh.mT, s, u.mT
    return torch.linalg.svd(matrix, full_matrices=full_matrices)


def widen(t: torch.Tensor) -> torch.Tensor:
    r"""``t`` in the dtype that small dense steps should run in: float64 for a float32 tensor, else unchanged.

    LAPACK's float32 SVD gives singular vectors orthonormal and accurate only to a few :math:`n\,\epsilon_{32}`,
    and those errors pass straight into a Tucker core: on an exact multilinear-rank-16 tensor of size 30³ with a
    graded core HOOI ends at a relative error of 5.9e-7 with float32 SVDs and 2.5e-7 with float64 ones, the level of
    TensorLy's numpy back-end (2.3e-7), whose ``numpy.linalg`` computes float32 input in float64 the same way. The
    same holds for the small projections that follow each pass over the full tensor (the projected unfoldings, the
    core): accumulated in float32 they leave HOOI's result at 1.5–2.0e-7 there, in float64 at 1.0–1.1e-7, below
    TensorLy's 1.4–1.7e-7 (errors of the stored numbers, reconstructed in float64, six seeds). These steps work on
    the projected tensor (:math:`I_n \times \prod_{k \ne n} R_k`), so float64 costs little next to the passes over
    the full tensor, which stay in the input's dtype."""
    return t.double() if t.dtype == torch.float32 else t


def unfolding_gram(y: torch.Tensor, mode: int) -> torch.Tensor:
    r""":math:`Y_{(n)} Y_{(n)}^\top` (``mode`` = :math:`n`), without copying ``y`` when ``mode`` is the first or the
    last; a middle mode contracts the ``(before, I_n, after)`` view over its outer indices."""
    shape = y.shape
    if mode == 0:
        m = y.reshape(shape[0], -1)
        return m @ m.mT
    if mode == y.ndim - 1:
        m = y.reshape(-1, shape[-1])
        return m.mT @ m
    m = y.reshape(math.prod(shape[:mode]), shape[mode], -1)
    return torch.tensordot(m, m, dims=([0, 2], [0, 2]))


def leading_left_singular(
    y: torch.Tensor, mode: int, gram: torch.Tensor, *, rank: int | None = None, budget: float | None = None
) -> torch.Tensor:
    r"""Leading left singular vectors of the unfolding :math:`Y_{(n)}`, ``mode`` = :math:`n`, given its Gram
    matrix ``gram`` = :math:`Y_{(n)} Y_{(n)}^\top`: ``rank`` of them, or (``budget``) as many as
    :func:`rank_for_tail` needs for the squared singular values. Eigenvectors of ``gram`` where they are provably
    as accurate as an SVD (:func:`gram_is_accurate`), else an SVD of :math:`Y_{(n)}` (whose vectors keep their
    digits down to :math:`\epsilon_{\text{mach}} \sigma_1`, where the Gram route stops at
    :math:`\sqrt{\epsilon_{\text{mach}}}\, \sigma_1`)."""
    vals, vecs = leading_eigvecs(gram)
    r = rank if rank is not None else rank_for_tail(vals, budget)
    total = float(vals.sum())
    if total == 0 or gram_is_accurate(float(vals[r:].sum()), total, r, gram.shape[0], gram.dtype):
        return vecs[:, :r]
    u, s, _ = svd(widen(unfold(y, mode)), full_matrices=True)
    if rank is None:
        r = rank_for_tail(s**2, budget)
    # orthonormal to ~eps, not gesdd's ~n eps (see tucker's _leading_svd)
    return torch.linalg.qr(u[:, :r]).Q.to(y.dtype)


def uniform(shape: Sequence[int], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Numbers uniform on [0, 1) drawn in float64 on the CPU, returned with ``like``'s dtype and device."""
    return torch.rand(tuple(shape), generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def leading_eigvecs(gram: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors of a symmetric PSD matrix, the leading ``rank``
    eigenvectors if ``rank`` is given. For ``gram = Y Yᵀ`` these are the squared singular values and left singular
    vectors of ``Y``."""
    vals, vecs = torch.linalg.eigh(gram)
    vals = torch.flip(vals, [0]).clamp_min(0)
    vecs = torch.flip(vecs, [1])
    if rank is not None:
        vecs = vecs[:, :rank]
    return vals, vecs


def project(x: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    r"""n-mode product :math:`X \times_n M^\top` with ``matrix`` :math:`M` of shape ``(I_n, J)``: projection onto
    a factor's columns, as HOSVD/HOOI need it (``tensorcompress.mode_dot`` does the copy-free batched GEMM)."""
    return mode_dot(x, matrix.mT, mode)


def _as_torch(obj: object) -> object:
    """``obj`` with every array converted by ``torch.as_tensor`` (lists and tuples become lists; ``None`` stays)."""
    if obj is None:
        return None
    if isinstance(obj, list | tuple):
        return [_as_torch(o) for o in obj]
    return torch.as_tensor(obj)


class Factorized:
    """What every result class (CPTensor, TuckerTensor, TTTensor, TTMatrix) shares: iteration, ``shape``-free
    plumbing (``dtype``, ``device``, ``to``, ``clone``, ``repr``) and the TensorLy round trip.

    A subclass defines ``_parts()`` — the items iteration yields, which is also what TensorLy's class takes: a pair
    ``(weights, factors)`` / ``(core, factors)`` or a list of cores —, the classmethod ``_from_parts(parts)`` (the
    inverse), ``_tensorly_class`` (where TensorLy's class lives, imported only when asked for), ``shape``,
    ``n_params``, ``to_tensor()`` and ``_rank_repr()``.
    """

    def _parts(self) -> tuple | list:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _from_parts(cls, parts: list):  # pragma: no cover - abstract
        raise NotImplementedError

    _tensorly_class: tuple[str, str]  # (TensorLy's module, class name), e.g. ("cp_tensor", "CPTensor")

    def _rank_repr(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self):
        """``weights, factors = cp``, ``core, factors = tucker``, ``for core in tt``."""
        return iter(self._parts())

    def _tensors(self) -> list[torch.Tensor]:
        """Every stored tensor, in order."""
        return [t for p in self._parts() for t in (p if isinstance(p, list) else [p])]

    def _rebuild(self, tensors: list[torch.Tensor]):
        """A result of the same structure holding ``tensors`` (in :meth:`_tensors`' order)."""
        it = iter(tensors)
        parts = [[next(it) for _ in p] if isinstance(p, list) else next(it) for p in self._parts()]
        return self._from_parts(parts)

    @property
    def dtype(self) -> torch.dtype:
        return self._tensors()[0].dtype

    @property
    def device(self) -> torch.device:
        return self._tensors()[0].device

    def to(self, *args, **kwargs):
        """A copy with every tensor passed through ``torch.Tensor.to(*args, **kwargs)`` (device and/or dtype)."""
        return self._rebuild([t.to(*args, **kwargs) for t in self._tensors()])

    def clone(self):
        """A deep copy (every tensor cloned)."""
        return self._rebuild([t.clone() for t in self._tensors()])

    def to_tensorly(self):
        """TensorLy's object of the same kind (``CPTensor``, ``TuckerTensor``, ``TTTensor``, ``TTMatrix``) holding
        these torch tensors (no copy)."""
        import tensorly as tl

        parts = self._parts()
        payload = tuple(list(p) if isinstance(p, list) else p for p in parts) if isinstance(parts, tuple) else parts
        module, name = self._tensorly_class
        with tl.backend_context("pytorch"):
            return getattr(getattr(tl, module), name)(payload)

    @classmethod
    def from_tensorly(cls, obj):
        """From TensorLy's object of the same kind, or the plain form it iterates as (a ``(weights, factors)`` /
        ``(core, factors)`` pair, a list of cores), of torch tensors or NumPy arrays."""
        return cls._from_parts(_as_torch(list(obj)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={tuple(self.shape)}, {self._rank_repr()}, n_params={self.n_params}, "
                f"dtype={self.dtype}, device={self.device})")


class FactorMatrices(Factorized):
    """A result made of a head tensor (CP's ``weights``, Tucker's ``core``) and one factor matrix per mode:
    ``shape`` is the factors' rows, ``n_params`` counts the head and the factors, and :meth:`_check_factors` checks
    the factors against the head once, for both."""

    factors: list[torch.Tensor]

    @staticmethod
    def _check_factors(factors: Sequence[torch.Tensor], head: torch.Tensor, head_name: str,
                       columns: Sequence[int], why: Callable[[int], str]) -> list[torch.Tensor]:
        """``factors`` as a list if each ``factors[k]`` has ``columns[k]`` columns (else ``ValueError`` ending with
        ``why(k)``, what the head asks for) and ``head``'s dtype and device."""
        for k, f in enumerate(factors):
            if f.shape[1] != columns[k]:
                raise ValueError(f"factors[{k}] has {f.shape[1]} columns (shape {tuple(f.shape)}) but {why(k)}")
            if f.device != head.device or f.dtype != head.dtype:
                raise ValueError(f"factors[{k}] is {f.dtype} on {f.device} but {head_name} is {head.dtype} on "
                                 f"{head.device}: use one dtype and device")
        return list(factors)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(f.shape[0] for f in self.factors)

    @property
    def n_params(self) -> int:
        return self._parts()[0].numel() + sum(f.numel() for f in self.factors)

    def _rank_repr(self) -> str:
        return f"rank={self.rank}"

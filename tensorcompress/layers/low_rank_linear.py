r"""Low-rank linear layer: a truncated SVD of the weight as two thin matrices (Denton et al. 2014).

.. math:: W \approx U_r \Sigma_r V_r^\top = \underbrace{(U_r \Sigma_r^{1/2})}_{B\ (m \times r)}
          \underbrace{(\Sigma_r^{1/2} V_r^\top)}_{A\ (r \times n)}, \qquad y = B (A x) + b,

:math:`r(m + n)` weights instead of :math:`mn`, and by Eckart–Young the best rank-:math:`r` approximation in Frobenius
norm. Denton, Zaremba, Bruna, LeCun & Fergus (2014), "Exploiting linear structure within convolutional networks for
efficient evaluation", NIPS.

**Activation-aware** (in the metric of the data, SVD-LLM: Wang, Zheng, Wan & Zhang 2024, "SVD-LLM:
truncation-aware singular value decomposition for large language model compression", ICLR 2025). A layer's error
is what it does to its inputs :math:`X` (:math:`n \times N`, one column per token), :math:`\|(W - W_r)X\|_F`, not
:math:`\|W - W_r\|_F`. With :math:`G = XX^\top + \lambda I = SS^\top` (:math:`S` the lower Cholesky factor,
:math:`\lambda = 0.01` of the mean diagonal of :math:`XX^\top` so that :math:`S` is invertible),
:math:`\|\Delta X\|_F^2 + \lambda\|\Delta\|_F^2 = \operatorname{tr}(\Delta G \Delta^\top) = \|\Delta S\|_F^2`, so by
Eckart–Young on :math:`WS`

.. math:: W_r = [WS]_r\, S^{-1} = \underbrace{(U_r \Sigma_r^{1/2})}_{B}\,
          \underbrace{(\Sigma_r^{1/2} V_r^\top S^{-1})}_{A}, \qquad WS = U \Sigma V^\top,

the same :math:`r(m + n)` weights. It never does worse on :math:`X` than the plain SVD :math:`W_p` of the same rank:
:math:`\|\Delta_r X\|^2 + \lambda\|\Delta_r\|^2 \le \|\Delta_p X\|^2 + \lambda\|\Delta_p\|^2` (optimality) and
:math:`\|\Delta_p\| \le \|\Delta_r\|` (Eckart–Young) give :math:`\|\Delta_r X\| \le \|\Delta_p X\|`; when
:math:`XX^\top = cI` it is the plain SVD.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_finite, check_tensor
from ..decompositions import rank_for_energy
from ._common import check_energy, check_linear, check_rank, weight_to_decompose

__all__ = ["LowRankLinear", "whitening"]

DAMP = 0.01
"""The fraction of the mean diagonal of :math:`XX^\\top` added to it before its Cholesky factor is taken."""


def whitening(gram: torch.Tensor, n: int | None = None) -> torch.Tensor:
    r"""The lower Cholesky factor :math:`S` of :math:`XX^\top + \lambda I`, :math:`\lambda = 0.01\,
    \overline{\operatorname{diag}}(XX^\top)`, in float64 (module docstring).

    Parameters
    ----------
    gram : torch.Tensor
        :math:`XX^\top`, the ``n × n`` Gram matrix of a layer's inputs (any positive scale: a sum or a mean over
        tokens give the same factors). All zero (inputs that were all zero): :math:`S = I`, the plain SVD.
    n : int, optional
        The layer's ``in_features``, checked against the shape.
    """
    g = check_tensor(gram, "gram", floating=True)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or (n is not None and g.shape[0] != n):
        want = "square" if n is None else f"{n} × {n} (in_features squared)"
        raise ValueError(f"gram must be a {want} matrix XXᵀ of the layer's inputs, got shape {tuple(g.shape)}")
    g = check_finite(g, "gram").double()
    lam = DAMP * g.diagonal().mean()
    if lam == 0:
        return torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    factor, info = torch.linalg.cholesky_ex(g + lam * torch.eye(g.shape[0], dtype=g.dtype, device=g.device))
    if int(info):
        raise ValueError("gram is not positive semi-definite (its Cholesky factor does not exist even after adding "
                         f"{DAMP} of its mean diagonal): pass XXᵀ of the layer's inputs")
    return factor


class LowRankLinear(nn.Module):
    r"""``y = second(first(x))``: ``first`` an ``nn.Linear(in_features, rank, bias=False)``, ``second`` an
    ``nn.Linear(rank, out_features, bias=bias)``.

    Parameters
    ----------
    in_features, out_features, rank : int
        Sizes; ``1 <= rank``.
    bias : bool
        Whether ``second`` has a bias.
    device, dtype : optional
        Where and in which dtype the parameters live (as ``nn.Linear``).

    Attributes
    ----------
    n_params : int
        :math:`r(m + n)` (+ :math:`m` with bias).

    The layer can be compiled with ``torch.jit.script`` (``n_params`` is a Python-only property).
    """

    __jit_unused_properties__ = ["n_params"]

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *, device=None,
                 dtype=None):
        super().__init__()
        check_rank(in_features, "in_features")
        check_rank(out_features, "out_features")
        check_rank(rank, "rank")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @property
    def n_params(self) -> int:
        """Number of parameter entries (weights and bias)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int | None = None, *, energy: float | None = None,
                    gram: torch.Tensor | None = None) -> LowRankLinear:
        r"""Truncated SVD of ``linear.weight`` (of :math:`WS` with ``gram``), :math:`\Sigma^{1/2}` split evenly between
        the two factors.

        Parameters
        ----------
        linear : nn.Linear
            Not modified; the new layer has its device, dtype and bias.
        rank : int, optional
            ``1 <= rank <= min(in, out)``; ``min(in, out)`` reproduces the layer exactly.
        energy : float, optional
            Instead of ``rank``: the smallest rank keeping this fraction of :math:`\sum_i \sigma_i^2` (of :math:`WS`
            with ``gram``).
        gram : torch.Tensor, optional
            :math:`XX^\top` of the layer's inputs: the factors then minimise :math:`\|(W - W_r)X\|` (activation-aware,
            module docstring; computed in float64, the layer built in the weight's dtype). ``None``: the plain SVD.

        float16 / bfloat16 weights are decomposed in float32 and the layer is built in the weight's dtype; int,
        bool, complex, empty or non-finite weights are refused.
        """
        check_linear(linear)
        w = weight_to_decompose(linear, "linear")
        full = min(w.shape)
        if (rank is None) == (energy is None):
            raise ValueError(f"give exactly one of rank or energy, got rank={rank!r}, energy={energy!r}")
        chol = None if gram is None else whitening(gram.to(w.device), linear.in_features)
        u, s, vh = torch.linalg.svd(w if chol is None else w.double() @ chol, full_matrices=False)
        rank = check_rank(rank, "rank", full) if rank is not None else rank_for_energy(s, check_energy(energy))
        root = s[:rank].sqrt()
        if chol is not None:  # V_rᵀ S⁻¹, by a triangular solve
            vh = torch.linalg.solve_triangular(chol, vh[:rank], upper=False, left=False)
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                    device=w.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.first.weight.copy_(root[:, None] * vh[:rank])
            layer.second.weight.copy_(u[:, :rank] * root)
            if linear.bias is not None:
                layer.second.bias.copy_(linear.bias)
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` with weight :math:`BA` (same device and dtype)."""
        w = self.second.weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.second.bias is not None, device=w.device,
                          dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.second.weight @ self.first.weight)
            if self.second.bias is not None:
                dense.bias.copy_(self.second.bias)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

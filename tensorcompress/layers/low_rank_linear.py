r"""Low-rank linear layer: a truncated SVD of the weight as two thin matrices (Denton et al. 2014).

.. math:: W \approx U_r \Sigma_r V_r^\top = \underbrace{(U_r \Sigma_r^{1/2})}_{B\ (m \times r)}
          \underbrace{(\Sigma_r^{1/2} V_r^\top)}_{A\ (r \times n)}, \qquad y = B (A x) + b,

:math:`r(m + n)` weights instead of :math:`mn`, and by Eckart–Young the best rank-:math:`r` approximation in Frobenius
norm. Denton, Zaremba, Bruna, LeCun & Fergus (2014), "Exploiting linear structure within convolutional networks for
efficient evaluation", NIPS.
"""

from __future__ import annotations

import torch
from torch import nn

from ..decompositions import rank_for_energy
from ._common import check_energy, check_linear, check_rank, weight_to_decompose

__all__ = ["LowRankLinear"]


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
    def from_linear(cls, linear: nn.Linear, rank: int | None = None, *, energy: float | None = None) -> LowRankLinear:
        r"""Truncated SVD of ``linear.weight``, :math:`\Sigma^{1/2}` split evenly between the two factors.

        Parameters
        ----------
        linear : nn.Linear
            Not modified; the new layer has its device, dtype and bias.
        rank : int, optional
            ``1 <= rank <= min(in, out)``; ``min(in, out)`` reproduces the layer exactly.
        energy : float, optional
            Instead of ``rank``: the smallest rank keeping this fraction of :math:`\sum_i \sigma_i^2`.

        float16 / bfloat16 weights are decomposed in float32 and the layer is built in the weight's dtype; int,
        bool, complex, empty or non-finite weights are refused.
        """
        check_linear(linear)
        w = weight_to_decompose(linear, "linear")
        full = min(w.shape)
        if (rank is None) == (energy is None):
            raise ValueError(f"give exactly one of rank or energy, got rank={rank!r}, energy={energy!r}")
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        rank = check_rank(rank, "rank", full) if rank is not None else rank_for_energy(s, check_energy(energy))
        root = s[:rank].sqrt()
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

r"""Tensor-train (TT-matrix) fully connected layer (Novikov et al. 2015).

The weight :math:`W \in \mathbb R^{M \times N}`, :math:`M = \prod_k m_k` (``out_modes``), :math:`N = \prod_k n_k`
(``in_modes``), is a TT-matrix

.. math:: W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] \cdots G_d[:, i_d, j_d, :], \qquad
          G_k \in \mathbb R^{r_{k-1} \times m_k \times n_k \times r_k},\ r_0 = r_d = 1,

with :math:`\sum_k r_{k-1} m_k n_k r_k` parameters. The forward pass :math:`y = W x + b` for a batch of :math:`B`
inputs has three contraction orders (:func:`tensorcompress.contraction_flops` counts each, 2 FLOPs per
multiply-add, from the shapes, the ranks and :math:`B` alone):

* ``"left"``: the cores with the input one at a time, from the first to the last,
  :math:`2B \sum_k r_{k-1} m_k n_k r_k \prod_{j<k} m_j \prod_{j>k} n_j` FLOPs;
* ``"right"``: from the last to the first, :math:`2B \sum_k r_{k-1} m_k n_k r_k \prod_{j<k} n_j \prod_{j>k} m_j`;
* ``"dense"``: :math:`W` formed once, :math:`2 \sum_{k \ge 2} r_{k-1} r_k \prod_{j \le k} m_j n_j` FLOPs that do
  not grow with :math:`B`, then multiplied, :math:`2BMN`.

A core-by-core order can cost more than the dense layer's :math:`2BMN` (a middle core carries a rank on both sides
and the modes not yet contracted), and forming :math:`W` pays off from a batch large enough. ``order="auto"`` (the
default) takes, for each batch, the order with the fewest FLOPs by this count — the first of ``left``, ``right``,
``dense`` on a tie (:func:`tensorcompress.contraction_order`) — decided by counting, never by timing, so the same
shapes always take the same order; the other values force one. Every order computes the same product up to
floating-point rounding, and the order is an attribute, not stored with the weights.
Novikov, Podoprikhin, Osokin & Vetrov (2015), "Tensorizing neural networks", NIPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_dims
from ..decompositions import TTMatrix, tt_matrix_contract, tt_matrix_svd
from ..decompositions.tt import parse_tt_rank
from ..decompositions.tt_matrix import ORDERS
from ._common import check_linear, check_rank, weight_to_decompose

__all__ = ["TTLinear", "factor_dimension"]


def factor_dimension(n: int, d: int) -> tuple[int, ...]:
    r"""Split ``n`` into ``d`` integer factors as equal as possible (descending), e.g. ``784 -> (14, 8, 7)``,
    ``300 -> (10, 6, 5)``: prime factors, largest first, each multiplied into the currently smallest factor
    (padding with 1s when ``n`` has fewer than ``d`` prime factors)."""
    check_rank(n, "n")
    check_rank(d, "d")
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    out = [1] * d
    for q in sorted(primes, reverse=True):
        out[out.index(min(out))] *= q
    return tuple(sorted(out, reverse=True))


def _check_order(order: object) -> str:
    if not isinstance(order, str):
        raise TypeError(f"order must be a str, got {type(order).__name__}")
    if order not in (*ORDERS, "auto"):
        raise ValueError(f"order must be one of {(*ORDERS, 'auto')}, got {order!r}")
    return order


class TTLinear(nn.Module):
    r"""``y = W x + b`` with :math:`W` in TT-matrix format (see the module docstring).

    Parameters
    ----------
    in_modes, out_modes : sequence of int
        :math:`(n_1..n_d)` with product ``in_features`` and :math:`(m_1..m_d)` with product ``out_features`` (same
        length ``d``; pad with 1s).
    rank : int or sequence of int
        The ``d - 1`` inner TT ranks (an int: all equal, capped at what each unfolding of the merged modes
        :math:`(m_k n_k)` allows; ``d + 1`` values with 1 at both ends also accepted; the rule of
        :func:`tensorcompress.tt_svd`).
    bias : bool
    order : str
        The contraction order of the forward pass: ``"auto"`` (default), the one with the fewest FLOPs for each
        batch (:func:`tensorcompress.contraction_order`), or one of ``"left"``, ``"right"``, ``"dense"`` forced (see
        the module docstring). The output is the same up to floating-point rounding; an attribute, not in
        ``state_dict``.
    device, dtype : optional

    Attributes
    ----------
    cores : nn.ParameterList
        :math:`G_k` of shape ``(r_{k-1}, m_k, n_k, r_k)``; random normal at construction, scaled so that the
        entries of :math:`W` have variance ``1 / in_features``.
    rank : tuple of int
        The TT ranks ``(1, r_1, ..., r_{d-1}, 1)`` (as :attr:`tensorcompress.TTTensor.rank`).
    n_params : int
        :math:`\sum_k r_{k-1} m_k n_k r_k` (+ ``out_features``).

    The layer can be compiled with ``torch.jit.script`` (``n_params`` is a Python-only property); a batch of zero
    inputs gives an empty output.
    """

    __jit_unused_properties__ = ["n_params"]

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], rank: int | Sequence[int] | None = None,
                 bias: bool = True, *, order: str = "auto", device=None, dtype=None):
        super().__init__()
        in_modes, out_modes = check_dims(in_modes, "in_modes"), check_dims(out_modes, "out_modes")
        if len(in_modes) != len(out_modes):
            raise ValueError(f"in_modes and out_modes must have the same length, got {in_modes} and {out_modes}")
        d = len(in_modes)
        if rank is None:
            raise TypeError("TTLinear needs rank= (an int or the d - 1 inner TT ranks)")
        self.order = _check_order(order)
        # the rank rule of the TT functions, on the merged modes (m_k n_k): a sequence above what an unfolding
        # allows is refused, an int is capped there (more could not be reached)
        inner = parse_tt_rank(rank, [m * n for m, n in zip(out_modes, in_modes, strict=True)], strict=True)
        self.in_modes, self.out_modes, self.rank = in_modes, out_modes, (1, *inner, 1)
        self.in_features, self.out_features = math.prod(in_modes), math.prod(out_modes)
        std = (1.0 / self.in_features / math.prod(inner)) ** (0.5 / d)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.randn(self.rank[k], out_modes[k], in_modes[k], self.rank[k + 1], device=device,
                                     dtype=dtype) * std)
            for k in range(d))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)  # a typed None: torch.jit.script needs it

    def tt_matrix(self) -> TTMatrix:
        """The weight as a :class:`tensorcompress.TTMatrix` (sharing the parameters; differentiable)."""
        return TTMatrix(list(self.cores))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel of :func:`tensorcompress.tt_matrix_vector_product`, without the TTMatrix object and its checks
        # (so torch.jit.script compiles it).
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features in its last dimension, got shape "
                             f"{list(x.shape)}")
        shape = list(x.shape[:-1])
        shape.append(self.out_features)
        cores: list[torch.Tensor] = []
        for core in self.cores:
            cores.append(core)
        t = tt_matrix_contract(cores, x.reshape(x.numel() // self.in_features, self.in_features), self.order)
        y = t.reshape(shape)
        bias = self.bias
        if bias is not None:
            y = y + bias
        return y

    @property
    def n_params(self) -> int:
        """Number of parameter entries (cores and bias)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_modes: Sequence[int], out_modes: Sequence[int],
                    rank: int | Sequence[int] | None = None, eps: float | None = None, *, order: str = "auto"
                    ) -> TTLinear:
        r"""TT-SVD of ``linear.weight`` (:func:`tensorcompress.tt_matrix_svd`, row modes ``out_modes``, column modes
        ``in_modes``).

        Parameters
        ----------
        linear : nn.Linear
            Not modified; its device, dtype and bias are kept.
        rank : int or sequence of int, optional
            Maximum inner TT ranks (capped at what the unfoldings allow).
        eps : float, optional
            Relative accuracy :math:`\|W - \hat W\|_F \le \epsilon \|W\|_F` instead of ``rank``. Neither: exact.
        order : str
            The layer's contraction order (as in the constructor; default ``"auto"``).

        float16 / bfloat16 weights are decomposed in float32 and the layer is built in the weight's dtype; int,
        bool, complex, empty or non-finite weights are refused.
        """
        check_linear(linear)
        _check_order(order)
        in_modes, out_modes = check_dims(in_modes, "in_modes"), check_dims(out_modes, "out_modes")
        if math.prod(in_modes) != linear.in_features or math.prod(out_modes) != linear.out_features:
            raise ValueError(f"in_modes {in_modes} and out_modes {out_modes} multiply to ({math.prod(in_modes)}, "
                             f"{math.prod(out_modes)}) but linear has in_features={linear.in_features}, "
                             f"out_features={linear.out_features}")
        w = weight_to_decompose(linear, "linear")
        tt = tt_matrix_svd(w, out_modes, in_modes, rank, eps=eps)
        layer = cls(in_modes, out_modes, list(tt.rank), bias=linear.bias is not None, order=order,
                    device=w.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            for p, c in zip(layer.cores, tt.cores, strict=True):
                p.copy_(c)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (forms :math:`W`)."""
        w = self.cores[0]
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device,
                          dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.tt_matrix().to_matrix())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        order = "" if self.order == "auto" else f", order={self.order!r}"
        return f"in_modes={self.in_modes}, out_modes={self.out_modes}, rank={self.rank}{order}"

r"""Tucker-2 convolution (Kim et al. 2016): 1×1 → k_h×k_w core → 1×1.

A Tucker decomposition of the kernel :math:`W \in \mathbb R^{T \times S \times k_h \times k_w}` on the two channel
modes only,

.. math:: W = G \times_1 U^{(T)} \times_2 U^{(S)}, \qquad G \in \mathbb R^{R_T \times R_S \times k_h \times k_w},

is a 1×1 convolution reducing :math:`S` input channels to :math:`R_S` (:math:`U^{(S)\top}`), a full
:math:`k_h \times k_w` convolution :math:`R_S \to R_T` with kernel :math:`G` (carrying the stride, padding, dilation)
and a 1×1 convolution :math:`R_T \to T` (:math:`U^{(T)}`, with the bias): :math:`S R_S + R_T R_S k_h k_w + R_T T`
parameters. ``ranks = (R_T, R_S)`` is in the weight's mode order (output channels first). The factors come from the
HOSVD of the kernel with the spatial modes kept at full rank (their orthogonal factors absorbed into the core).
Kim, Park, Yoo, Choi, Yang & Shin (2016), "Compression of deep convolutional neural networks for fast and low power
mobile applications", ICLR; ranks by VBMF (:func:`evbmf`) on the mode-1 and mode-2 unfoldings, as they did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import compute_dtype
from ..decompositions import hosvd, rank_for_energy
from ..tensor import mode_dot, multi_mode_dot, unfold
from ._common import (
    check_conv2d,
    check_energy,
    check_pair,
    check_rank,
    conv_padding,
    dense_conv2d,
    weight_to_decompose,
)
from .vbmf import evbmf

__all__ = ["TuckerConv2d", "tucker2_ranks"]


def tucker2_ranks(weight: torch.Tensor, rank: object = None, *, energy: float | None = None) -> tuple[int, int]:
    r"""``(R_T, R_S)`` for a conv kernel: given (checked), ``"vbmf"`` (EVBMF rank of the mode-0 and mode-1
    unfoldings, at least 1), or by ``energy`` (smallest ranks keeping that fraction of each unfolding's
    :math:`\sum \sigma_i^2`).

    Parameters
    ----------
    weight : (T, S, ...) tensor
        A conv kernel, output channels first; float16 and bfloat16 kernels are read in float32.
    rank : (int, int) or ``"vbmf"``, optional
        ``(R_T, R_S)`` with ``1 <= R_T <= T`` and ``1 <= R_S <= S`` (returned as given, after the check), or
        ``"vbmf"``. Give exactly one of ``rank`` and ``energy``.
    energy : float in (0, 1], optional
        The fraction of each unfolding's squared singular values to keep.

    Returns
    -------
    (int, int)
        ``(R_T, R_S)``.
    """
    weight = weight.to(compute_dtype(weight, "weight"))  # float16 / bfloat16: the SVDs run in float32
    t, s = weight.shape[:2]
    if (rank is None) == (energy is None):
        raise ValueError(f"give exactly one of rank or energy, got rank={rank!r}, energy={energy!r}")
    if energy is not None:
        check_energy(energy)
        return tuple(rank_for_energy(torch.linalg.svdvals(unfold(weight, n)), energy) for n in (0, 1))
    if isinstance(rank, str):
        if rank != "vbmf":
            raise ValueError(f"rank must be (r_out, r_in), 'vbmf', or None with energy=..., got {rank!r}")
        return tuple(max(evbmf(unfold(weight, n)).rank, 1) for n in (0, 1))
    if not isinstance(rank, Sequence) or len(rank) != 2:
        raise TypeError(f"rank must be a pair (r_out, r_in), 'vbmf', or None with energy=..., got {rank!r}")
    return check_rank(rank[0], "rank[0] (r_out)", t), check_rank(rank[1], "rank[1] (r_in)", s)


class TuckerConv2d(nn.Module):
    r"""A convolution with a Tucker-2 kernel as three convolutions (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation : int or (int, int)
        As ``nn.Conv2d`` (integer zero padding).
    rank : (int, int)
        ``(R_T, R_S)``: output-side and input-side ranks.
    bias : bool
    device, dtype : optional

    Attributes
    ----------
    first, core, last : nn.Conv2d
        Weights :math:`U^{(S)\top}` (R_S, S, 1, 1), :math:`G` (R_T, R_S, k_h, k_w), :math:`U^{(T)}` (T, R_T, 1, 1).
    rank : (int, int)
        ``(R_T, R_S)``.
    n_params : int
        :math:`S R_S + R_T R_S k_h k_w + R_T T` (+ :math:`T`).

    Sizes, ranks, kernel size, stride and dilation must be ``>= 1``, padding ``>= 0`` (``ValueError`` otherwise).
    The layer can be compiled with ``torch.jit.script`` (``n_params`` is a Python-only property).
    """

    __jit_unused_properties__ = ["n_params"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 rank: Sequence[int] | None = None, *, stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        check_rank(in_channels, "in_channels")
        check_rank(out_channels, "out_channels")
        if isinstance(rank, str) or not isinstance(rank, Sequence) or len(rank) != 2:
            raise TypeError(f"rank must be a pair (r_out, r_in), got {rank!r}")
        r_out, r_in = check_rank(rank[0], "rank[0] (r_out)"), check_rank(rank[1], "rank[1] (r_in)")
        kw_ = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, (r_out, r_in)
        self.kernel_size = check_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = check_pair(stride, "stride", minimum=1)
        self.padding = check_pair(padding, "padding", minimum=0)
        self.dilation = check_pair(dilation, "dilation", minimum=1)
        self.first = nn.Conv2d(in_channels, r_in, 1, bias=False, **kw_)
        self.core = nn.Conv2d(r_in, r_out, self.kernel_size, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, bias=False, **kw_)
        self.last = nn.Conv2d(r_out, out_channels, 1, bias=bias, **kw_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    @property
    def n_params(self) -> int:
        """Number of parameter entries (weights and bias)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: Sequence[int] | str | None = None, *,
                  energy: float | None = None) -> TuckerConv2d:
        r"""Tucker-2 decomposition of ``conv.weight`` (HOSVD, spatial modes at full rank) as a :class:`TuckerConv2d`.

        Parameters
        ----------
        conv : nn.Conv2d
            ``groups=1``, ``padding_mode='zeros'``; not modified. Device, dtype, stride, padding, dilation and bias
            are kept.
        rank : (int, int) or "vbmf", optional
            ``(R_T, R_S)`` with ``1 <= R_T <= T``, ``1 <= R_S <= S`` (``(T, S)`` reproduces ``conv``), or
            ``"vbmf"``: chosen by :func:`evbmf` on the mode-0 and mode-1 unfoldings (Kim et al. 2016).
        energy : float, optional
            Instead of ``rank``: per mode, the smallest rank keeping this fraction of the unfolding's energy.

        float16 / bfloat16 kernels are decomposed in float32 and the layer is built in the kernel's dtype; int,
        bool, complex, empty or non-finite kernels are refused.
        """
        check_conv2d(conv)
        w = weight_to_decompose(conv, "conv")
        r_out, r_in = tucker2_ranks(w, rank, energy=energy)
        kh, kw = w.shape[2:]
        tk = hosvd(w, [r_out, r_in, kh, kw])
        core = multi_mode_dot(tk.core, tk.factors[2:], modes=[2, 3])  # absorb the (square, orthogonal) spatial ones
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, (r_out, r_in), stride=conv.stride,
                    padding=conv_padding(conv), dilation=conv.dilation, bias=conv.bias is not None,
                    device=w.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.first.weight.copy_(tk.factors[1].T.reshape(layer.first.weight.shape))
            layer.core.weight.copy_(core)
            layer.last.weight.copy_(tk.factors[0].reshape(layer.last.weight.shape))
            if conv.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        r"""The equivalent ``nn.Conv2d`` with kernel :math:`G \times_1 U^{(T)} \times_2 U^{(S)}`."""
        g = self.core.weight
        u_t = self.last.weight.reshape(self.out_channels, self.rank[0])
        u_s = self.first.weight.reshape(self.rank[1], self.in_channels).T
        with torch.no_grad():
            kernel = mode_dot(mode_dot(g, u_t, 0), u_s, 1)
        return dense_conv2d(self, kernel, self.last.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")

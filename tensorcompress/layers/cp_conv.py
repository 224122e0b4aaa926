r"""CP-decomposed convolution (Lebedev et al. 2015): 1×1 → depthwise k_h×1 → depthwise 1×k_w → 1×1.

A rank-:math:`R` CP decomposition of the kernel :math:`W \in \mathbb R^{T \times S \times k_h \times k_w}`

.. math:: W[t, s, i, j] = \sum_{r=1}^R A^{(T)}_{tr} A^{(S)}_{sr} A^{(h)}_{ir} A^{(w)}_{jr}

turns the convolution into four small ones: project the :math:`S` input channels to :math:`R` (1×1,
:math:`A^{(S)}`), filter each of the :math:`R` channels vertically (:math:`k_h \times 1`, :math:`A^{(h)}`) and
horizontally (:math:`1 \times k_w`, :math:`A^{(w)}`), and mix back to :math:`T` channels (1×1, :math:`A^{(T)}`, with
the CP weights :math:`\lambda` absorbed). Stride, padding and dilation split exactly along the two spatial axes.
Parameters :math:`R(S + k_h + k_w + T)` (+ :math:`T` bias) instead of :math:`TSk_hk_w`.
Lebedev, Ganin, Rakhuba, Oseledets & Lempitsky (2015), "Speeding-up convolutional neural networks using fine-tuned
CP-decomposition", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..decompositions import cp_als
from ..tensor import unfold
from ._common import check_conv2d, check_pair, check_rank, conv_padding, dense_conv2d, weight_to_decompose

__all__ = ["CPConv2d", "cp_exact_rank"]


def cp_exact_rank(shape: Sequence[int]) -> int:
    r"""A rank at which every tensor of ``shape`` has an exact CP decomposition: :math:`\prod_n I_n / \max_n I_n`
    (one component per fibre of the longest mode, the other factors one-hot)."""
    return math.prod(shape) // max(shape)


def _exact_cp(w: torch.Tensor) -> list[torch.Tensor]:
    """Exact CP factors of ``w`` with :func:`cp_exact_rank` components: the longest mode's factor is its unfolding,
    the others select the matching index (one-hot columns)."""
    m = max(range(w.ndim), key=lambda n: w.shape[n])
    others = [n for n in range(w.ndim) if n != m]
    rank = cp_exact_rank(w.shape)
    idx = torch.unravel_index(torch.arange(rank, device=w.device), tuple(w.shape[n] for n in others))
    factors: list[torch.Tensor] = [None] * w.ndim  # type: ignore[list-item]
    factors[m] = unfold(w, m)  # columns: other modes in increasing order, C order = the unravel order
    for n, i in zip(others, idx, strict=True):
        factors[n] = torch.eye(w.shape[n], device=w.device, dtype=w.dtype)[:, i]
    return factors


class CPConv2d(nn.Module):
    r"""A convolution with a rank-``rank`` CP kernel, as four convolutions (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels, rank : int
    kernel_size, stride, padding, dilation : int or (int, int)
        As ``nn.Conv2d`` (integer zero padding).
    bias : bool
        Whether the last 1×1 convolution has a bias.
    device, dtype : optional

    Attributes
    ----------
    first, vertical, horizontal, last : nn.Conv2d
        Weights :math:`A^{(S)\top}` (R, S, 1, 1), :math:`A^{(h)\top}` (R, 1, k_h, 1), :math:`A^{(w)\top}`
        (R, 1, 1, k_w), :math:`A^{(T)}` (T, R, 1, 1).
    n_params : int
        :math:`R(S + k_h + k_w + T)` (+ :math:`T`).

    Sizes, kernel size, stride and dilation must be ``>= 1``, padding ``>= 0`` (``ValueError`` otherwise). The layer
    can be compiled with ``torch.jit.script`` (``n_params`` is a Python-only property).
    """

    __jit_unused_properties__ = ["n_params"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], rank: int, *,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        check_rank(in_channels, "in_channels")
        check_rank(out_channels, "out_channels")
        check_rank(rank, "rank")
        kh, kw = check_pair(kernel_size, "kernel_size", minimum=1)
        sh, sw = check_pair(stride, "stride", minimum=1)
        ph, pw = check_pair(padding, "padding", minimum=0)
        dh, dw = check_pair(dilation, "dilation", minimum=1)
        kw_ = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.kernel_size, self.stride, self.padding, self.dilation = (kh, kw), (sh, sw), (ph, pw), (dh, dw)
        self.first = nn.Conv2d(in_channels, rank, 1, bias=False, **kw_)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                                  groups=rank, bias=False, **kw_)
        self.horizontal = nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                                    groups=rank, bias=False, **kw_)
        self.last = nn.Conv2d(rank, out_channels, 1, bias=bias, **kw_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    @property
    def n_params(self) -> int:
        """Number of parameter entries (weights and bias)."""
        return sum(p.numel() for p in self.parameters())

    def factors(self) -> list[torch.Tensor]:
        """The CP factors ``[A_T, A_S, A_h, A_w]`` (weights absorbed in ``A_T``), each ``(I_n, R)``."""
        r = self.rank
        return [self.last.weight.reshape(self.out_channels, r), self.first.weight.reshape(r, -1).T,
                self.vertical.weight.reshape(r, -1).T, self.horizontal.weight.reshape(r, -1).T]

    def set_factors(self, factors: Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> CPConv2d:
        """Load CP factors ``[A_T, A_S, A_h, A_w]`` (shapes ``(I_n, R)``) and optional weights ``(R,)``."""
        a_t, a_s, a_h, a_w = factors
        if weights is not None:
            a_t = a_t * weights
        shapes = [tuple(f.shape) for f in (a_t, a_s, a_h, a_w)]
        want = [(self.out_channels, self.rank), (self.in_channels, self.rank), (self.kernel_size[0], self.rank),
                (self.kernel_size[1], self.rank)]
        if shapes != want:
            raise ValueError(f"factors must have shapes {want}, got {shapes}")
        with torch.no_grad():
            self.last.weight.copy_(a_t.reshape(self.last.weight.shape))
            self.first.weight.copy_(a_s.T.reshape(self.first.weight.shape))
            self.vertical.weight.copy_(a_h.T.reshape(self.vertical.weight.shape))
            self.horizontal.weight.copy_(a_w.T.reshape(self.horizontal.weight.shape))
        return self

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, *, n_iter_max: int = 100, tol: float = 1e-8,
                  seed: int | None = 0) -> CPConv2d:
        r"""CP-decompose ``conv.weight`` (:func:`tensorcompress.cp_als`, SVD initialisation) into a :class:`CPConv2d`.

        Parameters
        ----------
        conv : nn.Conv2d
            ``groups=1``, ``padding_mode='zeros'``; not modified. Device, dtype, stride, padding, dilation, bias
            are kept.
        rank : int
            ``>= 1``. At or above :func:`cp_exact_rank` (:math:`TSk_hk_w / \max(T, S, k_h, k_w)`) the exact
            decomposition of that rank is built directly (no ALS) and the layer reproduces ``conv``.
        n_iter_max, tol, seed :
            Passed to :func:`tensorcompress.cp_als`.

        float16 / bfloat16 kernels are decomposed in float32 and the layer is built in the kernel's dtype; int,
        bool, complex, empty or non-finite kernels are refused.
        """
        check_conv2d(conv)
        check_rank(rank, "rank")
        w = weight_to_decompose(conv, "conv")
        exact = cp_exact_rank(w.shape)
        if rank >= exact:
            rank, weights, factors = exact, None, _exact_cp(w)
        else:
            cp = cp_als(w, rank, n_iter_max=n_iter_max, tol=tol, init="svd", seed=seed)
            weights, factors = cp.weights, cp.factors
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, stride=conv.stride,
                    padding=conv_padding(conv), dilation=conv.dilation, bias=conv.bias is not None,
                    device=w.device, dtype=conv.weight.dtype)
        layer.set_factors(factors, weights)
        if conv.bias is not None:
            with torch.no_grad():
                layer.last.bias.copy_(conv.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` with kernel :math:`\\sum_r a^{(T)}_r \\circ a^{(S)}_r \\circ a^{(h)}_r \\circ
        a^{(w)}_r`."""
        a_t, a_s, a_h, a_w = self.factors()
        with torch.no_grad():
            kernel = torch.einsum("tr,sr,ir,jr->tsij", a_t, a_s, a_h, a_w)
        return dense_conv2d(self, kernel, self.last.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")

r"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: accurate post-training quantization for generative
pre-trained transformers", arXiv:2210.17323): Optimal Brain Surgeon, one column at a time.

A linear layer :math:`y = Wx` quantized to :math:`Q` changes its outputs on the calibration inputs
:math:`X \in \mathbb R^{n \times N}` (columns = tokens) by :math:`\|(W - Q)X\|_F^2`. Rows are independent and share
the Hessian of this error, :math:`H = 2XX^\top/N`. Optimal Brain Surgeon (Hassibi & Stork 1993) quantizes one
weight :math:`w_j` of a row to :math:`q_j` and moves the not yet quantized weights :math:`F` to absorb the error:

.. math:: \delta_F = -\frac{w_j - q_j}{[H_F^{-1}]_{jj}}\,(H_F^{-1})_{:,j}, \qquad
          H_{F \setminus j}^{-1} = \Big(H_F^{-1} - \frac{1}{[H_F^{-1}]_{jj}} H_{F,j}^{-1} H_{j,F}^{-1}
          \Big)_{F \setminus j}.

GPTQ's Algorithm 1 quantizes the columns in one fixed order for every row, so every row needs the same sequence of
inverses. Their rows are the rows of the upper Cholesky factor :math:`U` of :math:`H^{-1}` (:math:`H^{-1} =
U^\top U`): row :math:`j` of :math:`U` is :math:`(H_F^{-1})_{j,:}/\sqrt{[H_F^{-1}]_{jj}}`. So, column by column,

.. math:: q = \operatorname{quant}(w_{:,j}), \qquad e = (w_{:,j} - q)/U_{jj}, \qquad
          W_{:, j:} \mathrel{-}= e\,U_{j, j:}.

*Lazy batches*: the update of the columns after a block of 128 is deferred and applied as one matrix product
:math:`W_{:, i_2:} \mathrel{-}= E\,U_{i_1:i_2,\, i_2:}` — the same arithmetic in another order (up to rounding).
*Dampening*: :math:`\lambda = \text{damp}\cdot\operatorname{mean}(\operatorname{diag} H)` is added to the diagonal
(1 % by default) so that the Cholesky factorisation exists. *Dead inputs* (:math:`H_{jj} = 0`: an input that is
always 0) get :math:`H_{jj} = 1` and :math:`w_{:,j} = 0`.

The grid is the asymmetric min–max grid of :func:`~tensorcompress.quantization.rtn_grid`. With groups, each group's
grid is taken from the *error-updated* weights at its first column, when the quantization reaches it (the reference
code's behaviour without static groups; here every lazy block starts on a group boundary, so the grid sees every
earlier update). ``act_order`` visits the columns by decreasing :math:`H_{jj}` (the inputs with the largest
energy first, while many weights are still free to absorb their error); the groups then stay consecutive in the
original column order and take their grids from the original weights (the reference code's ``static_groups``), so
that a layer stores the same groups as without it.

:func:`gptq` quantizes a whole model layer by layer in the order of the forward pass, each layer on the inputs that
the already quantized earlier layers produce (the reference code's "true sequential" mode), the layers that read
one tensor (the query, key and value projections) from one pass. Cost per layer: :math:`O(n^3)` for the Cholesky
factors and :math:`O(mn^2)` for the updates; memory :math:`O(n^2)`. The weights are stored as
:class:`~tensorcompress.quantization.WeightOnlyLinear` (its float16 scales are the only rounding after GPTQ).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import surgery
from .._validation import check_matrix, compute_dtype
from ..surgery.calibration import (
    calibration_batches,
    check_damp,
    check_hessian,
    inverse_factor,
    layerwise_statistics,
)
from .weight_only import (
    WeightOnlyLayer,
    WeightOnlyLinear,
    check_weight_bits,
    grid_codes,
    group_count,
    minmax_grid,
    selected_linears,
    weight_only_detail,
)

__all__ = ["gptq_layer", "gptq"]

BLOCK = 128
"""Columns per lazy batch (the reference code's ``blocksize``), rounded to whole groups."""


def gptq_layer(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int | None = None,
               damp: float = 0.01, act_order: bool = False, return_qparams: bool = False):
    """GPTQ's Algorithm 1 on one weight matrix (see the module docstring).

    Parameters
    ----------
    weight : tensor (m, n)
        Rows are outputs; float32 or float64 (half precision is computed in float32). Not changed.
    hessian : tensor (n, n)
        :math:`H = 2XX^\\top/N` of the layer's inputs (symmetric positive semi-definite).
    bits : int in [2, 8]
    group_size : int, optional
        Inputs per grid, dividing ``n``; ``None``: one grid per row.
    damp : float in [0, 1]
        Dampening, a fraction of the mean diagonal of :math:`H`.
    act_order : bool
        Visit columns by decreasing :math:`H_{jj}` (static groups).
    return_qparams : bool
        Also return the codes, scales and zero points.

    Returns
    -------
    tensor or tuple
        The dequantized weight (``weight``'s shape and dtype, computed in its dtype with exact scales); with
        ``return_qparams``, ``(weight, codes, scales, zeros)``: int64 codes ``(m, n)``, scales ``(m, n_groups)`` in
        the compute dtype, int64 zero points ``(m, n_groups)`` (as :func:`~tensorcompress.quantization.rtn_grid`).
    """
    dt = check_matrix(weight)
    bits = check_weight_bits(bits)
    m, n = weight.shape
    check_hessian(hessian, n)
    damp = check_damp(damp)
    if not isinstance(act_order, bool):
        raise TypeError(f"act_order must be a bool, got {type(act_order).__name__}")
    g, k = group_count(n, group_size)
    w = weight.detach().to(dt).clone()
    h = hessian.detach().to(device=w.device, dtype=dt).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    static = act_order or k == 1  # grids fixed from the weights before any update
    scales = w.new_empty(m, k)
    zeros = w.new_empty(m, k)
    if static:
        scales[:], zeros[:] = minmax_grid(w.reshape(m, k, g), bits)
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(
        n, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    u = inverse_factor(h)
    group_of = (perm // g).tolist()
    block = BLOCK if static else g * max(1, BLOCK // g)  # non-static: every block starts on a group boundary
    q = torch.zeros_like(w)
    codes = torch.zeros(m, n, dtype=torch.int64, device=w.device)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            j = group_of[i1 + i]
            if not static and (i1 + i) % g == 0:  # the group's grid from the error-updated weights
                scales[:, j], zeros[:, j] = minmax_grid(w1[:, i:i + g], bits)
            c = grid_codes(w1[:, i], scales[:, j], zeros[:, j], bits)
            codes[:, i1 + i] = c
            q[:, i1 + i] = scales[:, j] * (c - zeros[:, j])
            err1[:, i] = (w1[:, i] - q[:, i1 + i]) / u1[i, i]
            w1[:, i:] -= err1[:, i:i + 1] * u1[i:i + 1, i:]
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # the lazy update of the later columns
    inv = torch.argsort(perm)
    out = q[:, inv].to(weight.dtype)
    if return_qparams:
        return out, codes[:, inv], scales, zeros.to(torch.int64)
    return out


def _float_twin(layer: WeightOnlyLinear, lin: nn.Linear) -> nn.Linear:
    """An ``nn.Linear`` computing what ``layer`` computes (its dequantized weight, its bias): the later passes run
    through it without unpacking the codes at every call."""
    twin = copy.deepcopy(lin)
    with torch.no_grad():
        twin.weight.copy_(layer.dequantize(lin.weight.dtype))
    return twin


def gptq(model: nn.Module, calibration, *, bits: int, group_size: int | None = None, damp: float = 0.01,
         act_order: bool = False, include=None, exclude=None) -> tuple[nn.Module, list[surgery.LayerChange]]:
    """A copy of ``model`` whose selected ``nn.Linear`` layers are quantized by :func:`gptq_layer`, layer by layer
    in the order of the forward pass, each on the inputs the already quantized layers produce.

    Parameters
    ----------
    model : nn.Module
        Left untouched.
    calibration : tensor, Dataset or iterable of batches
        Model inputs, read as :func:`~tensorcompress.quantization.calibrate` reads them (``x`` of ``(x, y, ...)``);
        for a language model, token windows.
    bits, group_size, damp, act_order
        As :func:`gptq_layer`; ``group_size`` must divide every selected layer's inputs.
    include, exclude : str or sequence of str, optional
        Layer names or ``fnmatch`` patterns; default every ``nn.Linear``.

    Returns
    -------
    (nn.Module, list of WeightOnlyLayer)
        The model (layers :class:`~tensorcompress.quantization.WeightOnlyLinear`) and one row per layer with the
        relative output error on the inputs it was quantized on.
    """
    bits = check_weight_bits(bits)
    damp = check_damp(damp)
    if not isinstance(act_order, bool):
        raise TypeError(f"act_order must be a bool, got {type(act_order).__name__}")
    selected_linears(model, group_size, include, exclude, "gptq")
    batches = calibration_batches(calibration)
    work = surgery.copy_model(model)
    chosen = surgery.select(work, nn.Linear, include=include, exclude=exclude)
    built = {}
    for sel, stats in layerwise_statistics(work, batches, chosen):
        lin = sel.module
        h = stats.hessian(compute_dtype(lin.weight))
        _, codes, scales, zeros = gptq_layer(lin.weight, h, bits=bits, group_size=group_size, damp=damp,
                                             act_order=act_order, return_qparams=True)
        layer = WeightOnlyLinear.from_codes(codes, scales, zeros, lin.bias, bits=bits)
        built[sel.name] = layer, weight_only_detail(layer, lin.weight, "gptq", h, act_order=act_order, damp=damp)
        surgery.replace(work, sel.names, _float_twin(layer, lin))
    return surgery.transform(model, nn.Linear, lambda sel: built[sel.name], include=include, exclude=exclude,
                             row_type=WeightOnlyLayer, action="gptq")

r"""Capture of what chosen layers receive: the inputs that calibration and second-order methods are built from.

Post-training methods look at a layer through the data it sees. Calibration reads the range of its inputs; Optimal
Brain Surgeon, GPTQ and SparseGPT need the layer-wise Hessian of the squared reconstruction error,

.. math:: H = \frac{2}{N} \sum_{n=1}^{N} x_n x_n^\top = \frac{2}{N} X^\top X,

with :math:`X` the :math:`N \times d` matrix of the inputs the layer received (a convolution's unfolded patches,
a transformer's tokens flattened over batch and position). :func:`capture_inputs` runs the data through the model
once, in eval mode and without gradients, and returns, per layer, the first positional input of every call,
concatenated over the batches; every submodule's mode is given back afterwards and the model is not changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .model import run_over

__all__ = ["capture_inputs"]


def _modules(model: nn.Module, names: str | Sequence[str]) -> dict[str, nn.Module]:
    names = [names] if isinstance(names, str) else list(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a module name or a non-empty sequence of them, got {names!r}")
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known or not n]
    if missing:
        raise ValueError(f"names {missing} are not submodules of the model")
    return {n: known[n] for n in names}


def capture_inputs(model: nn.Module, data: object, names: str | Sequence[str], *, n_batches: int | None = None,
                   batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The inputs each named layer receives while ``model`` runs over ``data``.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode without gradients; every submodule's mode is given back and nothing else changes.
    data : tensor, Dataset or iterable of batches
        Model inputs, read as :func:`~tensorcompress.surgery.input_batches` reads them (``x`` of ``(x, y, ...)``).
    names : str or sequence of str
        The layers (names as ``model.named_modules()`` gives them).
    n_batches, batch_size : int
        How many batches to read at most (default: all) and, for a ``Dataset``, their size; as
        :func:`~tensorcompress.surgery.run_over` reads them.

    Returns
    -------
    dict of str to Tensor
        Per name, the first positional input of every call, concatenated along dimension 0 (a layer called twice per
        forward pass contributes both calls, in order).

    Raises
    ------
    ValueError
        An unknown name, a layer that the forward pass never calls, or data that give no batch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _modules(model, names)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: seen[n].append(args[0].detach()))
               for n, m in layers.items()]
    try:
        run_over(model, data, n_batches=n_batches, batch_size=batch_size)
    finally:
        for h in handles:
            h.remove()
    silent = [n for n, xs in seen.items() if not xs]
    if silent:
        raise ValueError(f"layers {silent} were never called in the forward pass")
    return {n: torch.cat(xs) for n, xs in seen.items()}

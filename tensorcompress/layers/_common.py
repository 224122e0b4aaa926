"""Checks shared by the factorised layers: which ``nn.Linear`` / ``nn.Conv2d`` a layer can replace, in which dtype
its weight is decomposed, and argument checks for the constructors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_finite, compute_dtype

__all__ = ["check_linear", "check_conv2d", "conv_padding", "factory_kwargs", "check_rank", "check_energy",
           "weight_to_decompose", "check_pair", "dense_conv2d"]


def check_linear(linear: object, name: str = "linear") -> nn.Linear:
    """Return ``linear`` if it is an ``nn.Linear`` whose weight can be decomposed (:func:`weight_to_decompose`),
    else raise ``TypeError`` (not a Linear; an int, bool or complex weight) or ``ValueError`` (an empty or
    non-finite weight)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{name} must be a torch.nn.Linear, got {type(linear).__name__}")
    weight_to_decompose(linear, name)
    return linear


def weight_to_decompose(module: nn.Module, name: str) -> torch.Tensor:
    """``module.weight``, detached, in the dtype the library computes in (:func:`tensorcompress._validation.
    compute_dtype`: float16 / bfloat16 are decomposed in float32, since LAPACK has no half-precision SVD; the layer is
    then built in the module's own dtype). Raises ``TypeError`` for int, bool or complex weights and ``ValueError``
    for a size-0 or non-finite weight."""
    w = module.weight.detach()
    dtype = compute_dtype(w, f"{name}.weight")
    check_finite(w, f"{name}.weight")
    return w.to(dtype)


def check_pair(value: object, name: str, *, minimum: int) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each ``>= minimum``) as a pair, else ``TypeError`` / ``ValueError``."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(a, int) and not isinstance(a, bool) for a in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}={value!r} is out of range: each entry must be >= {minimum}")
    return pair


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The conv's zero padding as two ints; ``'valid'`` is ``(0, 0)``, ``'same'`` is resolved when symmetric."""
    pad = conv.padding
    if pad == "valid":
        return (0, 0)
    if pad == "same":
        out = []
        for k, d in zip(conv.kernel_size, conv.dilation, strict=True):
            total = d * (k - 1)
            if total % 2:
                raise ValueError(f"conv has padding='same' with kernel_size={conv.kernel_size} and dilation="
                                 f"{conv.dilation}, which pads asymmetrically: use an explicit integer padding")
            out.append(total // 2)
        return tuple(out)
    return tuple(int(p) for p in pad)


def check_conv2d(conv: object, name: str = "conv") -> nn.Conv2d:
    """Return ``conv`` if it is an ``nn.Conv2d`` the factorised convolutions can replace, else raise.

    Supported: ``groups=1``, ``padding_mode='zeros'``, any kernel size, stride, dilation, integer (or 'valid' /
    symmetric 'same') padding, with or without bias, a weight :func:`weight_to_decompose` accepts.
    """
    if not isinstance(conv, nn.Conv2d) or type(conv).__name__ in ("ConvTranspose2d",):
        raise TypeError(f"{name} must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"{name} has groups={conv.groups}: only groups=1 convolutions can be factorised")
    if conv.padding_mode != "zeros":
        raise ValueError(f"{name} has padding_mode={conv.padding_mode!r}: only 'zeros' is supported")
    weight_to_decompose(conv, name)
    conv_padding(conv)
    return conv


def factory_kwargs(tensor: torch.Tensor) -> dict:
    """``device`` and ``dtype`` of ``tensor``, for building modules that follow it."""
    return {"device": tensor.device, "dtype": tensor.dtype}


def dense_conv2d(layer: nn.Module, kernel: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """The ``nn.Conv2d`` of ``layer``'s geometry (channels, kernel size, stride, padding, dilation) holding
    ``kernel`` and ``bias`` (copies), in ``kernel``'s device and dtype: what a factorised conv's ``to_dense``
    returns."""
    dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                      padding=layer.padding, dilation=layer.dilation, bias=bias is not None, **factory_kwargs(kernel))
    with torch.no_grad():
        dense.weight.copy_(kernel)
        if bias is not None:
            dense.bias.copy_(bias)
    return dense


def check_rank(rank: object, name: str, maximum: int | None = None) -> int:
    """An int ``>= 1`` (and ``<= maximum`` when given)."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{name} must be an int, got {type(rank).__name__} ({rank!r})")
    if rank < 1 or (maximum is not None and rank > maximum):
        allowed = ">= 1" if maximum is None else f"1..{maximum}"
        raise ValueError(f"{name}={rank} is out of range: allowed {allowed}")
    return rank


def check_energy(energy: object, name: str = "energy") -> float:
    """A float in ``(0, 1]``."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(energy).__name__} ({energy!r})")
    if not 0 < energy <= 1:
        raise ValueError(f"{name}={energy} is out of range: allowed 0 < {name} <= 1")
    return float(energy)

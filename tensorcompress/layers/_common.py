"""Checks shared by the factorised layers: which ``nn.Linear`` / ``nn.Conv2d`` a layer can replace."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_linear", "check_conv2d", "conv_padding", "factory_kwargs", "check_rank", "check_energy",
           "rank_for_energy"]


def check_linear(linear: object, name: str = "linear") -> nn.Linear:
    """Return ``linear`` if it is an ``nn.Linear`` with a floating point weight, else raise ``TypeError``."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{name} must be a torch.nn.Linear, got {type(linear).__name__}")
    if not linear.weight.is_floating_point():
        raise TypeError(f"{name}.weight must be floating point, got {linear.weight.dtype}")
    return linear


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
    symmetric 'same') padding, with or without bias.
    """
    if not isinstance(conv, nn.Conv2d) or type(conv).__name__ in ("ConvTranspose2d",):
        raise TypeError(f"{name} must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"{name} has groups={conv.groups}: only groups=1 convolutions can be factorised")
    if conv.padding_mode != "zeros":
        raise ValueError(f"{name} has padding_mode={conv.padding_mode!r}: only 'zeros' is supported")
    if not conv.weight.is_floating_point():
        raise TypeError(f"{name}.weight must be floating point, got {conv.weight.dtype}")
    conv_padding(conv)
    return conv


def factory_kwargs(tensor: torch.Tensor) -> dict:
    """``device`` and ``dtype`` of ``tensor``, for building modules that follow it."""
    return {"device": tensor.device, "dtype": tensor.dtype}


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


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    r"""Smallest :math:`r \ge 1` with :math:`\sum_{i \le r} \sigma_i^2 \ge` ``energy`` :math:`\sum_i \sigma_i^2`."""
    sq = singular_values.double() ** 2
    cum = torch.cumsum(sq, 0)
    ok = (cum >= energy * cum[-1] * (1 - 1e-12)).nonzero()
    return max(int(ok[0]) + 1 if ok.numel() else len(sq), 1)

"""Which torch devices this machine offers."""

from __future__ import annotations

import torch

__all__ = ["available_devices"]


def available_devices() -> list[torch.device]:
    """The torch devices present: ``cpu`` first, then ``cuda`` when a CUDA GPU is available.

    Tests and notebooks loop over this list so that the same checks run on every device a machine has.
    """
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices

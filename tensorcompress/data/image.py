"""A real RGB photograph for the matrix/tensor decomposition notebooks."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["sample_image"]


def sample_image(*, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Grace Hopper's portrait from matplotlib's bundled sample data as an ``H × W × 3`` tensor in ``[0, 1]``.

    The JPEG (``matplotlib.cbook.get_sample_data('grace_hopper.jpg')``, 600 × 512 pixels, 8 bits per channel) is
    decoded by matplotlib and divided by 255. Nothing is downloaded.

    Parameters
    ----------
    dtype : torch.dtype
        A floating point dtype (default ``float32``).
    device : torch.device or str, optional
        Where the tensor lives (default CPU).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    import matplotlib.cbook as cbook
    import matplotlib.image as mpimg

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = np.array(mpimg.imread(f, format="jpg"))  # a writable copy
    return (torch.from_numpy(img).to(device=device, dtype=dtype) / 255).contiguous()

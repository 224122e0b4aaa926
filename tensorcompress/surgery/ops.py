r"""Functions written as modules, so that a module swap can attach state to them.

A residual addition ``y = a + b`` written with ``+`` is a torch function: it has no place for an observer or a
quantization scale, and a module-swapping transform (``tc.quantization.quantize_model``) cannot reach it — the
reason ``torch.ao`` has ``FloatFunctional``. Written as :class:`Add`, the same addition is a leaf module: the
traced graph (:func:`.graph.trace`) shows it as one node with two inputs, and quantization can replace it by an
addition with quantizers at both inputs and at the output (integer-only inference requantizes both inputs to the
output's scale, which needs that output scale).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Add"]


class Add(nn.Module):
    """``Add()(a, b) == a + b``: a residual addition as a leaf module (no parameters, no state)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The elementwise sum ``a + b`` (broadcasting as ``+`` does)."""
        return a + b

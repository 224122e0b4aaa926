"""How well a language model predicts held-out text: :func:`perplexity` and :func:`bits_per_character`.

For tokens :math:`x_1 \\dots x_N` and a model that gives :math:`p(x_t \\mid x_{<t})`,

.. math:: \\mathrm{PPL} = \\exp\\Big(-\\frac{1}{N-1}\\sum_{t=2}^{N} \\ln p(x_t \\mid x_{s_t} \\dots x_{t-1})\\Big),
          \\qquad \\mathrm{bpc} = \\log_2 \\mathrm{PPL}

The text is cut into windows of ``context + 1`` tokens that overlap by one token (window :math:`j` starts at
:math:`j \\cdot \\text{context}`): in each the model reads the first ``context`` tokens and predicts the next one at
every position, so every token after the first is predicted exactly once, from the 1 to ``context`` tokens of its
window before it (:math:`s_t` is its window's start). The last, shorter window is included, and
the mean is over tokens (not windows), accumulated in float64. A model that spreads its probability uniformly over
:math:`V` tokens has perplexity :math:`V`; perplexity is the effective number of tokens the model hesitates
between, and bits per character (with character tokens) what an entropy coder driven by the model would spend.
Non-overlapping windows make this cheaper and slightly pessimistic compared with a sliding window of stride 1 (the
first tokens of each window see little context); it is the same measure for every model compared here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import surgery
from .._validation import check_positive_int

__all__ = ["perplexity", "bits_per_character"]


def _check_tokens(tokens: object) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
        got = f"a tensor of dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be an integer torch.Tensor, got {got}")
    if tokens.ndim != 1 or tokens.numel() < 2:
        raise ValueError(f"tokens must be 1-D with at least 2 tokens (one to read, one to predict), got shape "
                         f"{tuple(tokens.shape)}")
    return tokens


def _context(model: nn.Module, context: object) -> int:
    if context is None:
        context = getattr(model, "context", None)
        if context is None:
            raise ValueError(f"context must be given: {type(model).__name__} has no `context` attribute")
    return check_positive_int(context, "context")


def _summed_nll(model: nn.Module, windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Summed negative log-likelihood (float64) of ``windows[:, 1:]`` given ``windows[:, :-1]``."""
    windows = windows.to(device)
    logits = model(windows[:, :-1])
    if isinstance(logits, tuple | list):  # (logits, features...)
        logits = logits[0]
    nll = nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="none")
    return nll.double().sum()


def _mean_nll(model: nn.Module, tokens: torch.Tensor, context: int | None, batch_size: int) -> float:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tokens = _check_tokens(tokens)
    context = _context(model, context)
    check_positive_int(batch_size, "batch_size")
    n_full = (tokens.numel() - 1) // context
    full = tokens[: n_full * context + 1]
    device = surgery.device_of(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with surgery.kept_modes(model, False), torch.no_grad():
        starts = torch.arange(n_full) * context
        for chunk in starts.split(batch_size):
            total += _summed_nll(model, full[chunk[:, None] + torch.arange(context + 1)], device)
        if n_full * context + 1 < tokens.numel():  # the shorter last window
            total += _summed_nll(model, tokens[n_full * context:][None], device)
    mean = float(total) / (tokens.numel() - 1)
    if not math.isfinite(mean):
        raise ValueError(f"the model's cross-entropy on tokens is {mean}: check its weights for NaN or Inf")
    return mean


def perplexity(model: nn.Module, tokens: torch.Tensor, *, context: int | None = None, batch_size: int = 32) -> float:
    """Perplexity of a language model on a 1-D token sequence: exp of the mean next-token cross-entropy.

    Every token after the first is predicted once, from windows of ``context + 1`` tokens overlapping by one (module
    docstring); runs in eval mode without gradients on the model's device and restores its modes.

    Parameters
    ----------
    model : nn.Module
        Maps integer tokens ``(B, T)`` to logits ``(B, T, V)`` (or a tuple whose first element they are).
    tokens : torch.Tensor
        1-D integer tokens, at least 2 (e.g. ``tc.data.load_text().test``).
    context : int, optional
        Tokens the model reads per window; default: ``model.context``.
    batch_size : int
        Windows per forward pass.

    Raises
    ------
    ValueError
        For fewer than 2 tokens, no context (given or ``model.context``), or a non-finite cross-entropy.
    """
    return math.exp(_mean_nll(model, tokens, context, batch_size))


def bits_per_character(model: nn.Module, tokens: torch.Tensor, *, context: int | None = None,
                       batch_size: int = 32) -> float:
    """:math:`\\log_2` of :func:`perplexity`: the mean bits per token (per character with character tokens).

    Same arguments and errors as :func:`perplexity`.
    """
    return _mean_nll(model, tokens, context, batch_size) / math.log(2)

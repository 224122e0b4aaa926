"""A small decoder-only transformer (GPT) over character tokens: the language model of the series.

One block, pre-LayerNorm (GPT-2; Radford et al. 2019, Xiong et al. 2020), on the residual stream
:math:`h \\in \\mathbb{R}^{T \\times d}`:

.. math:: h \\leftarrow h + O\\,\\mathrm{Attn}(\\mathrm{LN}_1(h)), \\qquad
          h \\leftarrow h + W_2\\,\\mathrm{GELU}(W_1\\,\\mathrm{LN}_2(h))

with causal multi-head attention (Vaswani et al. 2017) per head of width :math:`d_h = d / H`:

.. math:: \\mathrm{Attn}(x) = \\mathrm{softmax}\\Big(\\frac{QK^\\top}{\\sqrt{d_h}} + M\\Big) V, \\qquad
          Q = xW_q^\\top,\\ K = xW_k^\\top,\\ V = xW_v^\\top,\\ M_{ts} = -\\infty \\text{ for } s > t

The input is a token embedding plus a learned position embedding; the output a final LayerNorm and an untied
linear ``head`` to the vocabulary. No dropout. Everything that carries weights is an ``nn.Embedding``,
``nn.LayerNorm`` or ``nn.Linear``, so every transform of the library (quantizers, pruning, factorisation) acts on it;
the Linears are named ``blocks.{i}.attn.{q,k,v,o}`` and ``blocks.{i}.mlp.{fc1,fc2}``.

Attention is written as explicit matrix products rather than ``F.scaled_dot_product_attention``: PyTorch's FLOP
counter counts 0 for the fused kernel on the CPU, and a count of the model's cost must include the two
:math:`T \\times T` products (:math:`4 T^2 d` FLOPs per block and sequence).

Parameters per block: :math:`4(d^2 + d)` (attention) :math:`+\\ 8d^2 + 5d` (MLP, 4× wide) :math:`+\\ 4d`
(LayerNorms) :math:`= 12d^2 + 13d`; plus :math:`Vd + Td` embeddings, :math:`2d` final LayerNorm and :math:`dV`
head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_positive_int

__all__ = ["TinyGPT", "causal_attention"]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal scaled dot-product attention as explicit matrix products: ``softmax(q kᵀ/√d_h + M) v``.

    ``q``, ``k``, ``v`` are ``(..., T, d_h)``; position ``t`` attends to positions ``0 .. t``. Equal to
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``, but counted by
    :func:`tensorcompress.metrics.flops` (two products of :math:`2T^2 d_h` FLOPs each).
    """
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


class Attention(nn.Module):
    """Causal multi-head self-attention with its four projections ``q``, ``k``, ``v`` (inputs) and ``o`` (output)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d_h)
            return y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        y = causal_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """``fc2(GELU(fc1(x)))``, ``fc1`` four times as wide as the model."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.ln2, self.mlp = nn.LayerNorm(d_model), MLP(d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class TinyGPT(nn.Module):
    """A decoder-only transformer language model: integer tokens ``(B, T)`` → next-token logits ``(B, T, V)``.

    Submodules: ``tok`` and ``pos`` (token and position embeddings), ``blocks`` (an ``nn.ModuleList`` of pre-LN
    blocks, each with ``ln1``, ``attn.{q,k,v,o}``, ``ln2``, ``mlp.{fc1,fc2}``), ``ln_f`` and ``head`` (untied, no
    bias). Initialisation as GPT-2: weights normal with standard deviation 0.02, the projections into the residual
    stream (``attn.o``, ``mlp.fc2``) with :math:`0.02/\\sqrt{2L}`, biases 0.

    Parameters
    ----------
    vocab_size : int
        Number of tokens, at least 2.
    d_model : int
        Width of the residual stream, a positive multiple of 64 (so that group-wise quantizers find whole groups).
    n_layers : int
        Number of blocks (>= 1).
    n_heads : int
        Attention heads; must divide ``d_model``.
    context : int
        Longest input sequence (number of learned positions).
    """

    def __init__(self, vocab_size: int, *, d_model: int, n_layers: int, n_heads: int, context: int) -> None:
        super().__init__()
        check_positive_int(vocab_size, "vocab_size", minimum=2)
        check_positive_int(d_model, "d_model", minimum=64)
        if d_model % 64:
            raise ValueError(f"d_model must be a multiple of 64, got {d_model}")
        check_positive_int(n_layers, "n_layers")
        check_positive_int(n_heads, "n_heads")
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model = {d_model}, got {n_heads}")
        check_positive_int(context, "context")
        self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.context = (
            vocab_size, d_model, n_layers, n_heads, context)
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            else:
                residual = name.endswith(("attn.o.weight", "mlp.fc2.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.n_layers) if residual else 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"TinyGPT expects integer tokens, got "
                            f"{f'dtype {tokens.dtype}' if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.context:
            raise ValueError(f"TinyGPT expects tokens of shape B x T with 1 <= T <= context = {self.context}, "
                             f"got {tuple(tokens.shape)}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, d_model={self.d_model}, n_layers={self.n_layers}, "
                f"n_heads={self.n_heads}, context={self.context}")

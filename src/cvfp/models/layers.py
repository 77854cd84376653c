"""Building blocks shared by both architectures.

Shapes: B batch rows, C context width, E embedding width, k input tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_widths(start: int, end: int, steps: int) -> list[int]:
    """Widths falling linearly from ``start`` to ``end`` in ``steps`` steps.

    ``w[i] = start - ((start - end) * i) // steps`` for i = 0..steps (SPEC 1,
    equal-decrease variant); constant when start == end.
    """
    return [start - ((start - end) * i) // steps for i in range(steps + 1)]


class ContextLayer(nn.Module):
    """``c' = LN(R(c) + ReLU(W [c ; x] + b))`` (SPEC 1, ContextLayer).

    ``c``: (B, ctx_in); ``x``: (B, tok_in) or None when tok_in == 0;
    returns (B, out). R is the identity when ctx_in == out, else a Linear.
    """

    def __init__(self, ctx_in: int, tok_in: int, out: int) -> None:
        super().__init__()
        self.ctx_in, self.tok_in, self.out = ctx_in, tok_in, out
        self.fc = nn.Linear(ctx_in + tok_in, out)
        self.residual = nn.Linear(ctx_in, out) if ctx_in != out else None
        self.norm = nn.LayerNorm(out)

    def forward(self, c: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        inp = c if x is None or self.tok_in == 0 else torch.cat([c, x], dim=-1)
        res = c if self.residual is None else self.residual(c)
        return self.norm(res + F.relu(self.fc(inp)))


class TokenLayer(nn.Module):
    """``t' = LN(R(t) + ReLU(W [c_l ; t] + b))`` (SPEC 1, TokenLayer).

    ``c_l``: (B, ctx_in) from ContextBlock layer l; ``t``: (B, tok_in);
    returns (B, out). R is the identity when tok_in == out, else a Linear.
    """

    def __init__(self, ctx_in: int, tok_in: int, out: int) -> None:
        super().__init__()
        self.ctx_in, self.tok_in, self.out = ctx_in, tok_in, out
        self.fc = nn.Linear(ctx_in + tok_in, out)
        self.residual = nn.Linear(tok_in, out) if tok_in != out else None
        self.norm = nn.LayerNorm(out)

    def forward(self, c_l: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        res = t if self.residual is None else self.residual(t)
        return self.norm(res + F.relu(self.fc(torch.cat([c_l, t], dim=-1))))


def init_block_(module: nn.Module, weight_std: float, bias_std: float, generator: torch.Generator) -> None:
    """SPEC 1 init: every Linear N(0, weight_std) / N(0, bias_std); LN 1 / 0."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            with torch.no_grad():
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * weight_std)
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=generator) * bias_std)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def frozen_table(cfg, embedding_table: torch.Tensor) -> torch.Tensor:
    """The frozen (V, E) table as a float32 copy, checked against the model config's V and E."""
    if embedding_table.shape != (cfg.vocab_size, cfg.embed_dim):
        raise ValueError(
            f"embedding table has shape {tuple(embedding_table.shape)}, but the model config "
            f"expects (vocab_size={cfg.vocab_size}, embed_dim={cfg.embed_dim})"
        )
    return embedding_table.detach().float().clone()

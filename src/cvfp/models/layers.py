"""Building blocks shared by both architectures.

Shapes: B batch rows, C context width, E embedding width, k input tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """The blocks' nonlinearity (``ModelConfig.activation``) on a freshly computed ``h`` (ReLU in place)."""
    return h.relu_() if activation == "relu" else F.gelu(h)


def linear_widths(start: int, end: int, steps: int) -> list[int]:
    """Widths falling linearly from ``start`` to ``end`` in ``steps`` steps.

    ``w[i] = start - ((start - end) * i) // steps`` for i = 0..steps (algorithm §1,
    equal-decrease variant); constant when start == end.
    """
    return [start - ((start - end) * i) // steps for i in range(steps + 1)]


class ContextLayer(nn.Module):
    """``c' = LN(R(c) + ReLU(W [c ; x] + b))`` (algorithm §1, ContextLayer; GELU with ``activation="gelu"``).

    ``c``: (B, ctx_in); ``x``: (B, tok_in) or None when tok_in == 0;
    returns (B, out). R is the identity when ctx_in == out, else a Linear.

    ``W [c ; x] + b`` is computed as ``W_c c + (W_x x + b)``, the two column
    blocks of one stored weight ``fc.weight`` (out, ctx_in + tok_in): no
    gradient is formed for a half that needs none (the frozen token half in
    Phase 1), and the token half, which does not depend on the recurrence, can
    be computed for a whole stream at once (``token_part``) before the
    sequential loop runs the context half step by step (``mix``).
    """

    def __init__(self, ctx_in: int, tok_in: int, out: int, activation: str = "relu") -> None:
        super().__init__()
        self.ctx_in, self.tok_in, self.out, self.activation = ctx_in, tok_in, out, activation
        self.fc = nn.Linear(ctx_in + tok_in, out)
        self.residual = nn.Linear(ctx_in, out) if ctx_in != out else None
        self.norm = nn.LayerNorm(out)

    def token_part(self, x: torch.Tensor | None) -> torch.Tensor:
        """``W_x x + b`` (B, out); just ``b`` (out,) when the layer reads no token."""
        if x is None or self.tok_in == 0:
            return self.fc.bias
        return F.linear(x, self.fc.weight[:, self.ctx_in :], self.fc.bias)

    def context_weight(self) -> torch.Tensor:
        """``W_c^T`` (ctx_in, out): the context half of the stored weight, as a view."""
        return self.fc.weight[:, : self.ctx_in].t()

    def mix(self, c: torch.Tensor, token_part: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output from its context input and its precomputed ``token_part`` (``context_step``);
        ``weight``: ``context_weight()`` or a contiguous copy of it (the sequential loops')."""
        return context_step(self, c, token_part, self.context_weight() if weight is None else weight)

    def forward(self, c: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        return self.mix(c, self.token_part(x))


def context_step(layer: ContextLayer, c: torch.Tensor, token_part: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One ContextLayer, ``LN(R(c) + act(W_c c + (W_x x + b)))``, from its token half ``token_part`` and its
    context half's ``weight`` (ctx_in, out): the one home of the layer's math, used by the model, the fast
    sequential loop and the CUDA-graph block alike."""
    h = activate(torch.addmm(token_part, c, weight), layer.activation)  # fused product, activation in place
    h = h + (c if layer.residual is None else layer.residual(c))
    return F.layer_norm(h, (layer.out,), layer.norm.weight, layer.norm.bias, layer.norm.eps)


def step_window(emb: torch.Tensor, k: int) -> torch.Tensor:
    """(..., n + k - 1, E) consecutive embeddings -> (..., n, kE) step inputs.

    Row j concatenates embeddings j..j+k-1, oldest first: the k-token window
    of the step that reads the last of them.
    """
    rows = emb.shape[-2] - k + 1
    return torch.cat([emb[..., j : j + rows, :] for j in range(k)], dim=-1)


class TokenLayer(nn.Module):
    """``t' = LN(R(t) + ReLU(W [c_l ; t] + b))`` (algorithm §1, TokenLayer; GELU with ``activation="gelu"``).

    ``c_l``: (B, ctx_in) from ContextBlock layer l; ``t``: (B, tok_in);
    returns (B, out). R is the identity when tok_in == out, else a Linear.
    ``W [c_l ; t]`` is computed in its two column blocks, like ContextLayer's,
    so that Phase 2 forms no gradient for the frozen context half.
    """

    def __init__(self, ctx_in: int, tok_in: int, out: int, activation: str = "relu") -> None:
        super().__init__()
        self.ctx_in, self.tok_in, self.out, self.activation = ctx_in, tok_in, out, activation
        self.fc = nn.Linear(ctx_in + tok_in, out)
        self.residual = nn.Linear(tok_in, out) if tok_in != out else None
        self.norm = nn.LayerNorm(out)

    def forward(self, c_l: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        """``c_l`` is None for a layer that reads no context (ctx_in = 0, the "split" mode's middle layers)."""
        res = t if self.residual is None else self.residual(t)
        w = self.fc.weight
        mixed = F.linear(t, w[:, self.ctx_in :], self.fc.bias)
        if self.ctx_in:
            mixed = torch.addmm(mixed, c_l, w[:, : self.ctx_in].t())
        return self.norm(res + activate(mixed, self.activation))


def init_block_(module: nn.Module, weight_std: float, bias_std: float, generator: torch.Generator) -> None:
    """algorithm §1 init: every Linear Normal(0, weight_std) / Normal(0, bias_std); LN 1 / 0."""
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

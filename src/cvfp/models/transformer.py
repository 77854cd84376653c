"""Transformer baseline: a small causal Transformer in the nanoGPT style.

Body: Linear(E -> M) + learned positions (W x M), L pre-LayerNorm blocks
(causal self-attention with ``transformer_heads`` heads, MLP 4M, GELU), final
LayerNorm, Linear(M -> E), then LayerNorm(x + that) with the token's input x (``baseline_identity``;
LayerNorm(that) without), then the shared head. The width M is sized so
the body matches the CVFP model's ContextBlock + TokenBlock parameters.

Context window W = ``transformer_window``. Training runs each target in the window that scoring reads
it in (``transformer_train_windows = "overlapping"``: W/2 .. W-1 tokens of context, so the model is
trained as it is scored, at twice the body's compute per target), or (``"disjoint"``, cvfp before) cuts
each span into windows of W tokens (a token sees its window's earlier tokens). Scoring slides windows of
W tokens with stride W/2 and scores each token once: the first window's tokens with 0..W-1 tokens of left
context, every later token with between W/2 and W-1 (the head runs on the scored rows only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cvfp.config import ModelConfig
from cvfp.models.sequence import SequenceLM, match_width


def transformer_body_parameters(cfg: ModelConfig, width: int) -> int:
    e, d, w, layers = cfg.embed_dim, width, cfg.transformer_window, cfg.num_layers
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return (e * d + d) + w * d + layers * block + 2 * d + (d * e + e) + 2 * e


def transformer_flops_per_target(cfg: ModelConfig, width: int) -> int:
    """Body training FLOPs per trained target: 6 x parameters plus attention's 6 L W d, times the tokens the
    body runs over per target (2 with overlapping windows)."""
    per_token = 6 * transformer_body_parameters(cfg, width) + 6 * cfg.num_layers * cfg.transformer_window * width
    return per_token * (2 if cfg.transformer_train_windows == "overlapping" else 1)


def transformer_width(cfg: ModelConfig, target: float) -> int:
    """The width (a multiple of the heads) whose body parameters (or, ``model.baseline_match = "compute"``,
    training FLOPs per target) are closest to ``target``."""
    if cfg.baseline_match == "compute":
        return match_width(lambda d: transformer_flops_per_target(cfg, d), target, multiple=cfg.transformer_heads)
    return match_width(lambda d: transformer_body_parameters(cfg, d), target, multiple=cfg.transformer_heads)


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TransformerLM(SequenceLM):
    def __init__(self, cfg: ModelConfig, embedding_table: torch.Tensor, width: int, seed: int = 0) -> None:
        super().__init__(cfg, embedding_table, seed)
        self.window = cfg.transformer_window
        self.width = width
        self.inp = nn.Linear(cfg.embed_dim, width)
        self.pos = nn.Parameter(torch.zeros(self.window, width))
        self.blocks = nn.ModuleList(Block(width, cfg.transformer_heads) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        generator = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():  # nanoGPT's init: Normal(0, 0.02), residual outputs scaled down
            if name.startswith("head.") or p.dim() < 2:
                continue
            std = 0.02 / math.sqrt(2 * cfg.num_layers) if name.endswith(("out.weight", "mlp.2.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        for name, p in self.named_parameters():
            if name.endswith(".bias") and not name.startswith("head."):
                nn.init.zeros_(p)

    def attention_flops_per_token(self) -> int:
        """6 L W M (Kaplan et al. 2020's 2 n_layer n_ctx d_attn forward, times 3 with the backward)."""
        return 6 * self.cfg.num_layers * self.window * self.width

    def scoring_note(self) -> str:
        w = self.window
        return (
            f"windows of {w} tokens, stride {max(1, w // 2)}: each token scored once with {w // 2}-{w - 1} "
            "tokens of left context (0 at the stream start)"
        )

    def windows_features(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, T <= W) ids -> (B, T, E) head inputs, each row causal within itself."""
        inputs = self.embed(windows)
        x = self.inp(inputs) + self.pos[: windows.shape[1]]
        for block in self.blocks:
            x = block(x)
        body = self.proj(self.ln_f(x))
        return self.norm(inputs + body if self.cfg.baseline_identity else body)

    def windows_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, T <= W) ids -> (B, T, V) logits."""
        return self.logits(self.windows_features(windows))

    def body_tokens_per_target(self) -> int:
        """Tokens the body runs over per trained target: 2 with overlapping windows (each trains its new half)."""
        return 2 if self.cfg.transformer_train_windows == "overlapping" else 1

    def span_features(self, ids, start, end, state, training):
        """Training: the windows scoring uses (``transformer_train_windows = "overlapping"``), or disjoint
        windows of W starting at ``start``. Scoring: see ``score_features``."""
        if self.cfg.transformer_train_windows == "overlapping":
            return self._scored_windows(ids, start, end), None
        span = ids[start:end]
        pieces = [span[i : i + self.window] for i in range(0, len(span), self.window)]
        full = [p for p in pieces if len(p) == self.window]
        features = []
        if full:
            features.append(self.windows_features(torch.stack(full)).reshape(-1, self.cfg.embed_dim))
        if len(pieces[-1]) < self.window:
            features.append(self.windows_features(pieces[-1][None])[0])
        return torch.cat(features), None

    def _scored_windows(self, ids: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Head inputs of positions [start, end), each from the window ``score_features`` scores it in: the
        first window [0, W) for p < W, else the window of W ending within the stride after p."""
        w, stride = self.window, max(1, self.window // 2)
        groups: dict[int, list[int]] = {}  # window start -> [first position, end position)
        for p in range(start, end):
            first = 0 if p < w else ((p - w) // stride + 1) * stride
            groups.setdefault(first, [p, p])[1] = p + 1
        rows = {}
        for length in sorted({b - ws for ws, (_, b) in groups.items()}):
            same = [(ws, a, b) for ws, (a, b) in groups.items() if b - ws == length]
            out = self.windows_features(torch.stack([ids[ws:b] for ws, _, b in same]))
            rows |= {a: out[row, a - ws :] for row, (ws, a, _) in enumerate(same)}
        return torch.cat([rows[a] for a in sorted(rows)])

    def score_features(self, ids: torch.Tensor, batch: int = 16):
        """Yield (first position, head input) covering positions 0..T-2 once each, sliding
        windows of W with stride W/2 (see the module docstring)."""
        n, w = ids.shape[0] - 1, self.window
        stride = max(1, w // 2)
        jobs, start, scored = [], 0, 0  # jobs: (window start, window end, first position it scores)
        while scored < n:
            end = min(start + w, n)
            jobs.append((start, end, scored))
            scored, start = end, start + stride
        for i in range(0, len(jobs), batch):
            group = jobs[i : i + batch]
            for length in sorted({e - s for s, e, _ in group}):
                same = [j for j in group if j[1] - j[0] == length]
                out = self.windows_features(torch.stack([ids[s:e] for s, e, _ in same]))
                for row, (s, _, first) in enumerate(same):
                    yield first, out[row, first - s :]  # the head reads the scored rows only

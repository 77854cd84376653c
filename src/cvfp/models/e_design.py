"""The "E design": token input on every ContextLayer (algorithm §1).

ContextLayer l maps [c_{l-1} (C) ; x (kE)] -> c_l (C) for every l, so the
context keeps width C through the block and every layer sees the token.
"""

from __future__ import annotations

from cvfp.config import ModelConfig


def context_layer_widths(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """(context in, token in, out) of each ContextLayer."""
    token_width = cfg.input_tokens * cfg.embed_dim
    return [(cfg.context_dim, token_width, cfg.context_dim) for _ in range(cfg.context_depth)]

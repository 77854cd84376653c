"""The equal-decrease design, the original's comparison baseline (algorithm §1).

Only ContextLayer 0 receives the token: [c (C) ; x (kE)] -> dims[1]. Later
layers map dims[l] -> dims[l+1] with no token input, where
``dims = linear_widths(C + kE, C, L)`` (1536, 1408, ..., 768 at C=E=768,
L=6). Layer 0's residual projects c (C) to dims[1].
"""

from __future__ import annotations

from cvfp.config import ModelConfig
from cvfp.models.layers import linear_widths


def context_layer_widths(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """(context in, token in, out) of each ContextLayer."""
    token_width = cfg.input_tokens * cfg.embed_dim
    dims = linear_widths(cfg.context_dim + token_width, cfg.context_dim, cfg.context_depth)
    widths = [(cfg.context_dim, token_width, dims[1])]
    widths += [(dims[i], 0, dims[i + 1]) for i in range(1, cfg.context_depth)]
    return widths

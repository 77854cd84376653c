"""CVFPModel: frozen embedding, ContextBlock, TokenBlock and output head.

Shape glossary (used throughout the package):
    T   tokens in a stream            B   rows of a batch
    V   vocabulary size               E   width of one token embedding
    k   tokens fed per step           X = k*E, width of the step input x
    C   context width                 L   layers of each block
    D_l width of ContextBlock layer l's output c_l (C in the E design);
    D   = sum_l D_l, width of a "flat" context row [c_1 ; ... ; c_L].

Recurrence (algorithm §1): c_0 = 0; for each token t
    (c_1..c_L) = ContextBlock(c_prev, x_t)      # each layer reads x_t (E design)
    logits     = head(TokenBlock(c_1..c_L, x_t))  # TokenLayer l reads c_l
    c_prev     = c_L
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvfp.config import ModelConfig
from cvfp.models.heads import HeadMixin, build_head
from cvfp.models.layers import ContextLayer, TokenLayer, frozen_table, init_block_, linear_widths, step_window


@dataclasses.dataclass(frozen=True)
class Design:
    """A CVFP design: its ContextLayer widths, (context in, token in, out) per layer, and where the TokenBlock's
    contexts come from: "trained" (Phase 1), "random" (the ContextBlock left at its random init) or "zero"
    (the TokenBlock reads zeros; Phase 1 is skipped). The designs are rows of ``cvfp.models.registry``."""

    context_layer_widths: Callable[[ModelConfig], list[tuple[int, int, int]]]
    context: typing.Literal["trained", "random", "zero"] = "trained"


def token_reads(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """For each TokenLayer, the contexts it reads: 0 is the previous token's final context c_{i-1}, m >= 1 is
    ContextLayer m's output c_m (see ModelConfig.context_mode)."""
    lc, lt = cfg.context_depth, cfg.token_depth
    if cfg.context_mode == "e":
        return [(-(-(l + 1) * lc // lt),) for l in range(lt)]  # ceil((l + 1) L / T): l + 1 at equal depths
    if cfg.context_mode == "final":
        return [(lc,)] * lt
    if lt == 1:  # split with one TokenLayer: it is both the first and the last
        return [(0, lc)]
    return [(0,), *[()] * (lt - 2), (lc,)]


class CVFPModel(HeadMixin, nn.Module):
    """The whole model. The embedding table is a frozen, non-persistent buffer."""

    def __init__(self, cfg: ModelConfig, embedding_table: torch.Tensor, design: Design, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.design = design
        # (V, E), frozen; followed by an untrained LayerNorm (no parameters).
        self.register_buffer("embedding", frozen_table(cfg, embedding_table), persistent=False)
        widths = design.context_layer_widths(cfg)
        self.context_widths = [out for _, _, out in widths]  # D_l for l = 1..L
        self.context_layers = nn.ModuleList(ContextLayer(*w, activation=cfg.activation) for w in widths)
        # What each TokenLayer reads (context_mode), and its token width, falling linearly from kE to E.
        self.token_reads = token_reads(cfg)
        read_widths = [cfg.context_dim, *self.context_widths]  # index 0: the previous token's final context
        tok = linear_widths(cfg.input_tokens * cfg.embed_dim, cfg.embed_dim, cfg.token_depth)
        self.token_layers = nn.ModuleList(
            TokenLayer(sum(read_widths[r] for r in reads), tok[l], tok[l + 1], cfg.activation)
            for l, reads in enumerate(self.token_reads)
        )
        generator = torch.Generator().manual_seed(seed)
        init_block_(self.context_layers, cfg.init_weight_std, cfg.init_bias_std, generator)
        init_block_(self.token_layers, cfg.init_weight_std, cfg.init_bias_std, generator)
        self.head = build_head(cfg, generator)  # after the blocks: their draws are the same with every head

    # ----------------------------------------------------------------- inputs
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) token ids -> (..., E): frozen table then parameter-free LayerNorm."""
        return F.layer_norm(self.embedding[ids], (self.cfg.embed_dim,))

    def step_inputs(self, ids: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Step inputs x for positions [start, end) of the stream ``ids`` (T,).

        Returns (end - start, X): embeddings of positions p-k+1..p, oldest
        first, with zeros for positions before the stream start.
        """
        end = ids.shape[0] if end is None else end
        k = self.cfg.input_tokens
        lo = max(0, start - k + 1)
        emb = self.embed(ids[lo:end])  # (end - lo, E)
        pad = (k - 1) - (start - lo)
        if pad:
            emb = torch.cat([emb.new_zeros(pad, emb.shape[1]), emb], dim=0)
        return step_window(emb, k)

    # ------------------------------------------------------------------ blocks
    def context_step(self, c: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """ContextBlock: c (B, C), x (B, X) -> [c_1 (B, D_1), ..., c_L (B, C)]."""
        outs = []
        for layer in self.context_layers:
            c = layer(c, x if layer.tok_in else None)
            outs.append(c)
        return outs

    def token_features(
        self, contexts: list[torch.Tensor], x: torch.Tensor, previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """TokenBlock: [c_1..c_L], x (B, X) -> the head's input t (B, E).

        ``previous`` (B, C): the previous token's final context c_{i-1}, the
        ContextBlock's input; read only in the "split" context mode. A "zero"
        design's TokenBlock reads zeros in place of every context.
        """
        if self.design.context == "zero":
            contexts = [torch.zeros_like(c) for c in contexts]
            previous = None if previous is None else torch.zeros_like(previous)
        available = [previous, *contexts]
        t = x
        for layer, reads in zip(self.token_layers, self.token_reads):
            if 0 in reads and previous is None:
                raise ValueError("the split context mode reads the previous token's context: pass previous")
            parts = [available[r] for r in reads]
            t = layer(None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1), t)
        return t

    @property
    def reads_previous(self) -> bool:
        """Whether a TokenLayer reads the previous token's final context (the "split" context mode)."""
        return any(0 in reads for reads in self.token_reads)

    def token_logits(
        self, contexts: list[torch.Tensor], x: torch.Tensor, previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """TokenBlock + head: [c_1..c_L], x (B, X) -> logits (B, V) (``previous``: see token_features)."""
        return self.head_output(self.token_features(contexts, x, previous))

    def flatten_contexts(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """[c_1..c_L] -> (B, D)."""
        return torch.cat(contexts, dim=-1)

    def split_contexts(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(B, D) -> [c_1..c_L]."""
        return list(torch.split(flat, self.context_widths, dim=-1))

    def step(self, c: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: (c_prev (B, C), x (B, X)) -> (c_next (B, C), logits (B, V))."""
        contexts = self.context_step(c, x)
        return contexts[-1], self.token_logits(contexts, x, previous=c)

    # ------------------------------------------------------------- parameters
    def trainable_phase2_parameters(self) -> list[nn.Parameter]:
        params = list(self.token_layers.parameters())
        if self.head is not None:
            params += list(self.head.parameters())
        return params

    def body_parameters(self) -> int:
        """Trainable parameters outside the head: ContextBlock + TokenBlock."""
        return sum(p.numel() for p in self.context_layers.parameters()) + sum(
            p.numel() for p in self.token_layers.parameters()
        )

    def parameter_counts(self) -> dict[str, int]:
        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        counts = {
            "context_block": count(self.context_layers),
            "token_block": count(self.token_layers),
            "head": count(self.head),
            "embedding_frozen": self.embedding.numel(),
        }
        counts["trainable"] = counts["context_block"] + counts["token_block"] + counts["head"]
        counts["total"] = counts["trainable"] + counts["embedding_frozen"]
        return counts

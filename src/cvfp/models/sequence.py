"""What the end-to-end baselines share: the frozen input, the head, scoring by spans.

A baseline reads exactly what a CVFP model reads (the frozen embedding table
followed by a parameter-free LayerNorm) and ends in the same head
(``ModelConfig.head``, ``cvfp.models.heads``), so that only the body differs. A body's
one entry point is ``span_features(ids, start, end, state)``: the head's
input (end - start, E) for predicting ids[start+1 : end+1], plus the state
to carry to the next span of the same stream (None for stateless models).
Training and scoring take features (``head_loss`` and ``head_scores``, as for
CVFP's Phase 2: ``score_features``); ``span_logits`` / ``score_logits`` apply
the head for sampling and the tests.

Shapes: T stream tokens, E embedding width, V vocabulary, H hidden width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvfp.config import ModelConfig
from cvfp.data.order import visit_order
from cvfp.models.heads import HeadMixin, build_head
from cvfp.models.layers import frozen_table


class SequenceLM(HeadMixin, nn.Module):
    """Base of the end-to-end baselines; subclasses define their body (``span_features``)."""

    def __init__(self, cfg: ModelConfig, embedding_table: torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("embedding", frozen_table(cfg, embedding_table), persistent=False)
        # Its own generator: the body's init draws are the same whichever head is chosen.
        self.head = build_head(cfg, torch.Generator().manual_seed(seed + 1))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) ids -> (..., E): the frozen table, then the untrained LayerNorm (as CVFPModel.embed)."""
        return F.layer_norm(self.embedding[ids], (self.cfg.embed_dim,))

    def span_features(
        self, ids: torch.Tensor, start: int, end: int, state: Any, training: bool
    ) -> tuple[torch.Tensor, Any]:
        """The head's input (end - start, E) for targets ids[start+1 : end+1], and the state to carry."""
        raise NotImplementedError

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The shared head: features (..., E) -> (..., V) scores whose softmax is the distribution."""
        return self.head_output(features.reshape(-1, features.shape[-1])).reshape(*features.shape[:-1], -1)

    def span_logits(
        self, ids: torch.Tensor, start: int, end: int, state: Any, training: bool
    ) -> tuple[torch.Tensor, Any]:
        """Logits (end - start, V) for targets ids[start+1 : end+1], and the state to carry."""
        features, state = self.span_features(ids, start, end, state, training)
        return self.logits(features), state

    def train_batches(self, ids: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
        """Yield (head input (B, E), targets (B,)) of one epoch's training steps over the stream
        ``ids``, ``batch_size`` tokens per step. Default: contiguous spans in stream order, carrying
        ``span_features``'s state from span to span; with a ``generator`` (``phase2.shuffle``), the same spans
        in a drawn order, each from a fresh state (a stateless body, the Transformer, loses nothing)."""
        n, state = ids.shape[0] - 1, None
        spans = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
        for i in visit_order(len(spans), generator):
            s, e = spans[i]
            features, state = self.span_features(ids, s, e, state if generator is None else None, training=True)
            yield features, ids[s + 1 : e + 1]

    def body_tokens_per_target(self) -> int:
        """Tokens the body runs over (forward and backward) per trained target, for the FLOP count: 1 by default."""
        return 1

    def train_steps(self, targets: int, batch_size: int) -> int:
        """How many steps ``train_batches`` yields for a stream of ``targets`` targets (a schedule's length)."""
        return -(-targets // batch_size)

    def score_features(self, ids: torch.Tensor):
        """Yield (first position, head input (B, E)) covering positions 0..T-2 once each, for scoring.
        Default: the recurrence over the whole stream (stateful models)."""
        return recurrent_score_features(self, ids)

    def score_logits(self, ids: torch.Tensor):
        """``score_features`` through the head: (first position, logits)."""
        for first, features in self.score_features(ids):
            yield first, self.logits(features)

    # The body's hidden width H (set by each subclass).
    width: int = 0

    def attention_flops_per_token(self) -> int:
        """Training FLOPs per token beyond 6 x parameters (attention; ``training.flops``): 0 by default."""
        return 0

    def scoring_note(self) -> str | None:
        """How scoring gives each token its context, when that differs from the recurrence (for the summary)."""
        return None

    def body_parameters(self) -> int:
        """Trainable parameters outside the head."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("head."))

    def parameter_counts(self) -> dict[str, int]:
        body = self.body_parameters()
        head = 0 if self.head is None else sum(p.numel() for p in self.head.parameters())
        return {
            "body": body,
            "head": head,
            "embedding_frozen": self.embedding.numel(),
            "trainable": body + head,
            "total": body + head + self.embedding.numel(),
        }


def match_width(count: Any, target: int, low: int = 1, high: int = 1 << 14, multiple: int = 1) -> int:
    """The width w (a multiple of ``multiple``) whose ``count(w)`` is closest to ``target``."""
    candidates = range(max(multiple, low - low % multiple), high + 1, multiple)
    return min(candidates, key=lambda w: abs(count(w) - target))


def recurrent_score_features(model: SequenceLM, ids: torch.Tensor, chunk: int = 2048):
    """(first position, head input) over positions 0..T-2 of a stateful model, carrying its state
    from chunk to chunk: the true recurrence from a zero state."""
    n, state = ids.shape[0] - 1, None
    for s in range(0, n, chunk):
        features, state = model.span_features(ids, s, min(n, s + chunk), state, training=False)
        yield s, features


# Segments of the stream a recurrent model trains side by side (the LSTM, the RNN-trained cell).
STREAMS = 8


def stream_steps(n: int, batch_size: int, generator: torch.Generator | None, device: torch.device):
    """(S, t) positions of each training step of a recurrent model over a stream of ``n`` targets: S = STREAMS
    consecutive segments read side by side, each step advancing every segment by batch_size / S positions (so a
    step holds ``batch_size`` tokens as for every other model; the state is carried from step to step). The last
    n mod S positions are not trained on. With a ``generator`` (``phase2.shuffle``) the segments start at a
    drawn rotation of the stream, each still read in order (its end wraps to its start, as a conversation
    boundary does)."""
    streams = min(STREAMS, n)
    seg = n // streams
    steps = max(1, batch_size // streams)
    shift = 0 if generator is None else int(torch.randint(n, (1,), generator=generator))
    starts = torch.arange(streams, device=device) * seg + shift
    for s in range(0, seg, steps):
        yield (starts[:, None] + s + torch.arange(min(steps, seg - s), device=device)) % n


def stream_step_count(targets: int, batch_size: int) -> int:
    """How many steps ``stream_steps`` yields for ``targets`` targets."""
    streams = min(STREAMS, targets)
    return -(-(targets // streams) // max(1, batch_size // streams))

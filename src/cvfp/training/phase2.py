"""Phase 2: next-token training of TokenBlock + head on cached contexts (algorithm §4).

The ContextBlock and the embedding stay frozen. Row i of a context cache
pairs with step input x_i and target token i+1. Batches are contiguous
slices of a pinned size, in stream order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cvfp.config import Phase2Config
from cvfp.models import CVFPModel
from cvfp.training.caches import ContextSource
from cvfp.training.head_loss import CHUNK_ROWS, linear_cross_entropy
from cvfp.training.next_token import TrainResult, early_stop, make_adam, score, train_next_token
from cvfp.training.resume import StateStore

__all__ = ["Phase2Result", "early_stop", "evaluate_cached", "make_adam", "phase2_state", "run_phase2"]


@torch.no_grad()
def evaluate_cached(
    model: CVFPModel,
    source: ContextSource,
    ids: torch.Tensor,
    batch_size: int,
    target_bytes: int | None = None,
) -> dict:
    """Loss, PPL, top-1 accuracy (and bits per byte) of targets ids[1:]."""
    return score(_scored_chunks(model, source, ids, batch_size), target_bytes)


def _features(model: CVFPModel, source: ContextSource, ids: torch.Tensor, batch_size: int):
    """(head input t (B, E), targets (B,)) of contiguous batches of cache rows, in stream order."""
    n = len(source)
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        previous = source.inputs(s, e) if model.reads_previous else None
        yield model.token_features(source.layers(s, e), model.step_inputs(ids, s, e), previous), ids[s + 1 : e + 1]


def _scored_chunks(model: CVFPModel, source: ContextSource, ids: torch.Tensor, batch_size: int):
    """(logits, targets) at most CHUNK_ROWS rows at a time: never a whole large batch's logits."""
    weight, bias = model.head_weights()
    for t, targets in _features(model, source, ids, batch_size):
        for s in range(0, t.shape[0], CHUNK_ROWS):
            yield F.linear(t[s : s + CHUNK_ROWS], weight, bias), targets[s : s + CHUNK_ROWS]


# Phase 2's result: the shared loop's.
Phase2Result = TrainResult


def phase2_state(model: CVFPModel) -> dict[str, torch.Tensor]:
    """The Phase 2 trainable weights (TokenBlock and untied head), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(("token_layers.", "head."))}


def run_phase2(
    model: CVFPModel,
    train: ContextSource,
    train_ids: torch.Tensor,
    val: ContextSource,
    val_ids: torch.Tensor,
    cfg: Phase2Config,
    val_bytes: int | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    state: StateStore | None = None,
) -> Phase2Result:
    """Train TokenBlock + head in place; return per-epoch metrics and the best epoch."""

    def batch_losses():
        weight, bias = model.head_weights()
        for t, targets in _features(model, train, train_ids, cfg.batch_size):
            yield linear_cross_entropy(t, weight, bias, targets), targets.shape[0]

    return train_next_token(
        model,
        model.trainable_phase2_parameters(),
        batch_losses,
        lambda: evaluate_cached(model, val, val_ids, cfg.batch_size, val_bytes),
        lambda: phase2_state(model),
        cfg,
        on_record=on_record,
        progress=progress,
        state=state,
    )

"""Phase 2: next-token training of TokenBlock + head on cached contexts (SPEC 4).

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
from cvfp.training.next_token import TrainResult, early_stop, make_adam, score, train_next_token

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
    return score(_cached_batches(model, source, ids, batch_size), target_bytes)


def _cached_batches(model: CVFPModel, source: ContextSource, ids: torch.Tensor, batch_size: int):
    """(logits, targets) of contiguous batches of cache rows, in stream order."""
    n = len(source)
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        logits = model.token_logits(model.split_contexts(source.rows(s, e)), model.step_inputs(ids, s, e))
        yield logits, ids[s + 1 : e + 1]


# Phase 2's result: the shared loop's.
Phase2Result = TrainResult


def phase2_state(model: CVFPModel) -> dict[str, torch.Tensor]:
    """The Phase 2 trainable weights (TokenBlock and untied head), cloned."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.startswith(("token_layers.", "head."))
    }


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
) -> Phase2Result:
    """Train TokenBlock + head in place; return per-epoch metrics and the best epoch."""

    def batch_losses():
        for logits, targets in _cached_batches(model, train, train_ids, cfg.batch_size):
            yield F.cross_entropy(logits, targets), targets.shape[0]

    return train_next_token(
        model,
        model.trainable_phase2_parameters(),
        batch_losses,
        lambda: evaluate_cached(model, val, val_ids, cfg.batch_size, val_bytes),
        lambda: phase2_state(model),
        cfg,
        on_record=on_record,
        progress=progress,
    )

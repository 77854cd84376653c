"""Training and scoring of the baselines on the same tokens as CVFP.

The LSTM and the Transformer train through ``next_token.train_next_token``,
the loop CVFP's Phase 2 uses (same Adam, batch, clip, epochs, patience and
best-epoch restore); only the logits of a batch come from another model. The
n-gram model is counted, then scored like the others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cvfp.config import Phase2Config
from cvfp.metrics import bits_per_byte, perplexity
from cvfp.models.ngram import KneserNey
from cvfp.models.sequence import SequenceLM
from cvfp.training.head_loss import linear_cross_entropy
from cvfp.training.next_token import TrainResult, score, train_next_token
from cvfp.training.resume import StateStore


@torch.no_grad()
def evaluate_sequence(model: SequenceLM, ids: torch.Tensor, target_bytes: int | None = None) -> dict:
    """Loss, PPL, accuracy (and bits per byte) of predicting ids[1:] (see each model's ``score_logits``)."""
    pairs = ((logits, ids[first + 1 : first + 1 + logits.shape[0]]) for first, logits in model.score_logits(ids))
    return score(pairs, target_bytes)


def train_sequence(
    model: SequenceLM,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: Phase2Config,
    val_bytes: int | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    state: StateStore | None = None,
) -> TrainResult:
    """Train an end-to-end baseline, ``cfg.batch_size`` tokens per step (batched as the model says:
    ``SequenceLM.train_batches``)."""

    def batch_losses():  # the head and its loss as in CVFP's Phase 2
        for features, targets in model.train_batches(train_ids, cfg.batch_size):
            yield linear_cross_entropy(features, model.head.weight, model.head.bias, targets), targets.shape[0]

    def snapshot() -> dict:  # the trained weights (the frozen table and input LayerNorm never change)
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    return train_next_token(
        model,
        [p for p in model.parameters() if p.requires_grad],
        batch_losses,
        lambda: evaluate_sequence(model, val_ids, val_bytes),
        snapshot,
        cfg,
        on_record=on_record,
        progress=progress,
        label=model.cfg.arch,
        state=state,
    )


def score_ngram(model: KneserNey, stream: np.ndarray, target_bytes: int | None = None) -> dict:
    """The same metrics as ``next_token.score`` for the n-gram model."""
    totals = model.score(stream)
    loss = totals["nats"] / totals["count"]
    out = {"loss": loss, "ppl": perplexity(loss), "acc": totals["correct"] / totals["count"], "tokens": totals["count"]}
    if target_bytes is not None:
        out["bpb"] = bits_per_byte(totals["nats"], target_bytes)
    return out

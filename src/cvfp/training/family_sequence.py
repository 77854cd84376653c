"""A point of an end-to-end baseline (LSTM, Transformer): the shared next-token loop on its own body.

The baselines train through ``next_token.train_next_token``, the loop CVFP's Phase 2 uses (same Adam,
batch, clip, epochs, patience and best-epoch restore); only the logits of a batch come from another model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cvfp.config import Phase2Config, RunConfig
from cvfp.data.protocols import DataSplit
from cvfp.models import SequenceLM, build_model, e_design_body_parameters
from cvfp.scoring import Documents, score_sequence_model
from cvfp.training.divergence import exploded_loss
from cvfp.training.flops import sequence_flops
from cvfp.training.next_token import TrainResult, train_next_token
from cvfp.training.point_types import PointContext, Trained
from cvfp.training.resume import StateStore


def train_sequence(
    model: SequenceLM,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: Phase2Config,
    val_documents: Documents | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    state: StateStore | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train an end-to-end baseline, ``cfg.batch_size`` tokens per step (batched as the model says:
    ``SequenceLM.train_batches``, in an order drawn from ``seed`` under ``cfg.shuffle``)."""

    def batch_losses(generator: torch.Generator | None):  # the head and its loss as in CVFP's Phase 2
        for features, targets in model.train_batches(train_ids, cfg.batch_size, generator):
            yield model.head_loss(features, targets), targets.shape[0]

    def snapshot() -> dict:  # the trained weights (the frozen table and input LayerNorm never change)
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    return train_next_token(
        model,
        [p for p in model.parameters() if p.requires_grad],
        batch_losses,
        lambda: score_sequence_model(model, val_ids, val_documents).metrics(),
        snapshot,
        cfg,
        on_record=on_record,
        progress=progress,
        label=model.cfg.arch,
        state=state,
        loss_limit=exploded_loss(model.cfg.vocab_size),
        steps_per_epoch=model.train_steps(train_ids.shape[0] - 1, cfg.batch_size),
        seed=seed,
    )


def train_sequence_point(cfg: RunConfig, split: DataSplit, ctx: PointContext) -> Trained:
    """Train the baseline on the train stream, validation choosing the best epoch."""
    model = build_model(cfg.model, ctx.resources.table.table, seed=cfg.seed).to(ctx.device)
    train_ids = torch.from_numpy(split.train).to(ctx.device)
    model.prepare_head(train_ids)
    val_ids = torch.from_numpy(split.val).to(ctx.device)
    result = train_sequence(
        model,
        train_ids,
        val_ids,
        cfg.phase2,
        ctx.val_documents,
        on_record=ctx.run.log_metric,
        progress=ctx.progress,
        state=ctx.state,
        seed=cfg.seed,
    )
    model.load_state_dict(result.best_state, strict=False)
    counts = model.parameter_counts()
    factor = model.body_tokens_per_target()
    per_token = counts["body"] * factor + model.head_parameters_per_token(train_ids)
    attention = model.attention_flops_per_token() * factor
    flops = sequence_flops(per_token, len(split.train) - 1, result.stopped_epoch, attention)
    details = {
        "parameters": counts,
        "width": model.width,
        "e_design_body_parameters": e_design_body_parameters(cfg.model),
    }
    if model.scoring_note() is not None:
        details["scoring"] = model.scoring_note()

    def test(stream: np.ndarray, documents: Documents) -> dict:
        return score_sequence_model(model, torch.from_numpy(stream).to(ctx.device), documents).metrics()

    return Trained.from_loop(
        result,
        fields={},
        trainable_parameters=counts["trainable"],
        train_flops=flops,
        details=details,
        model=model,
        test=test,
    )

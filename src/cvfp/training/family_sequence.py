"""A point of an end-to-end baseline (LSTM, Transformer): the shared next-token loop on its own body."""

from __future__ import annotations

import numpy as np
import torch

from cvfp.config import RunConfig
from cvfp.data.protocols import DataSplit
from cvfp.models import build_model, e_design_body_parameters
from cvfp.training.baselines import evaluate_sequence, train_sequence
from cvfp.training.flops import sequence_flops
from cvfp.training.point_types import PointContext, Trained


def train_sequence_point(cfg: RunConfig, split: DataSplit, ctx: PointContext) -> Trained:
    """Train the baseline on the train stream, validation choosing the best epoch."""
    model = build_model(cfg.model, ctx.resources.table.table, seed=cfg.seed).to(ctx.device)
    train_ids = torch.from_numpy(split.train).to(ctx.device)
    val_ids = torch.from_numpy(split.val).to(ctx.device)
    result = train_sequence(model, train_ids, val_ids, cfg.phase2, ctx.val_bytes, on_record=ctx.run.log_metric,
                            progress=ctx.progress, state=ctx.state)  # fmt: skip
    model.load_state_dict(result.best_state, strict=False)
    counts = model.parameter_counts()
    flops = sequence_flops(counts["trainable"], len(split.train) - 1, result.stopped_epoch,
                           model.attention_flops_per_token())  # fmt: skip
    details = {"parameters": counts, "width": model.width,
               "e_design_body_parameters": e_design_body_parameters(cfg.model)}  # fmt: skip
    if model.scoring_note() is not None:
        details["scoring"] = model.scoring_note()

    def test(stream: np.ndarray, target_bytes: int) -> dict:
        return evaluate_sequence(model, torch.from_numpy(stream).to(ctx.device), target_bytes)

    return Trained.from_loop(result, fields={}, trainable_parameters=counts["trainable"], train_flops=flops,
                             details=details, model=model, test=test)  # fmt: skip

"""A point of the n-gram baseline: counted on the train stream, its order chosen on validation."""

from __future__ import annotations

import time

from cvfp.config import RunConfig
from cvfp.data.protocols import DataSplit
from cvfp.models.ngram import KneserNey
from cvfp.scoring import score_ngram
from cvfp.training.point_types import PointContext, Trained


def train_ngram_point(cfg: RunConfig, split: DataSplit, ctx: PointContext) -> Trained:
    """Count the n-gram models, keep the order with the lowest validation loss."""
    t0 = time.perf_counter()
    tried = {}
    for order in cfg.model.ngram_orders:
        model = KneserNey(split.train, order, cfg.model.vocab_size, cfg.model)
        tried[order] = (model, score_ngram(model, split.val, ctx.val_documents).metrics())
        metrics = tried[order][1]
        ctx.run.log_metric({"phase": "ngram", "order": order, "val_loss": metrics["loss"], "val_ppl": metrics["ppl"]})
    order = min(tried, key=lambda o: tried[o][1]["loss"])
    model, best = tried[order]
    details = {
        "order": order,
        "val_loss_by_order": {str(o): m["loss"] for o, (_, m) in tried.items()},
        "discounts": model.discounts[1:],
    }
    return Trained(
        fields={},
        best=best,
        epochs=[],
        best_epoch=0,
        stopped_epoch=0,
        phase2_seconds=time.perf_counter() - t0,
        trainable_parameters=0,
        train_flops=0,
        details=details,
        model=model,
        test=lambda stream, documents: score_ngram(model, stream, documents).metrics(),
    )

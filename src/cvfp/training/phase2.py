"""Phase 2: next-token training of TokenBlock + head on cached contexts (SPEC 4).

The ContextBlock and the embedding stay frozen. Row i of a context cache
pairs with step input x_i and target token i+1. Batches are contiguous
slices of a pinned size, in stream order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cvfp.training.caches import ContextSource
from cvfp.config import Phase2Config
from cvfp.metrics import bits_per_byte, perplexity
from cvfp.models import CVFPModel

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_cached(
    model: CVFPModel,
    source: ContextSource,
    ids: torch.Tensor,
    batch_size: int,
    target_bytes: int | None = None,
) -> dict:
    """Loss, PPL, top-1 accuracy (and bits per byte) of targets ids[1:]."""
    total_nats, correct, n = 0.0, 0, len(source)
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        logits = model.token_logits(model.split_contexts(source.rows(s, e)), model.step_inputs(ids, s, e))
        targets = ids[s + 1 : e + 1]
        total_nats += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == targets).sum().item()
    loss = total_nats / n
    result = {"loss": loss, "ppl": perplexity(loss), "acc": correct / n, "tokens": n}
    if target_bytes is not None:
        result["bpb"] = bits_per_byte(total_nats, target_bytes)
    return result


def early_stop(bad_epochs: int, patience: int) -> bool:
    """Stop after ``patience`` epochs in a row without improvement (0: never)."""
    return patience > 0 and bad_epochs >= patience


@dataclasses.dataclass
class Phase2Result:
    epochs: list[dict]  # one record per epoch
    best_epoch: int  # 1-based
    stopped_epoch: int  # last epoch run, 1-based
    best: dict  # validation metrics of the best epoch
    best_state: dict  # TokenBlock + head weights of the best epoch
    seconds: float


def phase2_state(model: CVFPModel) -> dict[str, torch.Tensor]:
    """The Phase 2 trainable weights (TokenBlock and untied head), cloned."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.startswith(("token_layers.", "head."))
    }


def make_adam(params: list[torch.nn.Parameter], cfg: Phase2Config) -> torch.optim.Adam:
    """Adam with the configured implementation (see Phase2Config.adam)."""
    if cfg.adam == "fused":
        return torch.optim.Adam(params, lr=cfg.learning_rate, fused=True)
    return torch.optim.Adam(params, lr=cfg.learning_rate, foreach=False)


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
    start_time = time.perf_counter()
    params = model.trainable_phase2_parameters()
    optimizer = make_adam(params, cfg)
    n = len(train)
    epochs: list[dict] = []
    best: dict | None = None
    best_epoch, bad_epochs, best_state = 0, 0, phase2_state(model)
    epoch_bar = tqdm(range(1, cfg.epochs + 1), desc="phase 2", disable=not progress, leave=False)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        model.train()
        train_nats = 0.0
        for s in range(0, n, cfg.batch_size):
            e = min(n, s + cfg.batch_size)
            contexts = model.split_contexts(train.rows(s, e))
            logits = model.token_logits(contexts, model.step_inputs(train_ids, s, e))
            loss = F.cross_entropy(logits, train_ids[s + 1 : e + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            train_nats += loss.item() * (e - s)
        model.eval()
        metrics = evaluate_cached(model, val, val_ids, cfg.batch_size, val_bytes)
        improved = best is None or metrics["loss"] < best["loss"]
        if improved:
            best, best_epoch, bad_epochs, best_state = metrics, epoch, 0, phase2_state(model)
        else:
            bad_epochs += 1
        record = {
            "phase": 2,
            "epoch": epoch,
            "train_ppl": perplexity(train_nats / n),
            "val_loss": metrics["loss"],
            "val_ppl": metrics["ppl"],
            "val_acc": metrics["acc"],
            "val_bpb": metrics.get("bpb"),
            "best": improved,
            "seconds": time.perf_counter() - t0,
        }
        epochs.append(record)
        log.info(
            "Epoch %d: train_ppl=%.1f val_ppl=%.1f acc=%.1f%%%s",
            epoch, record["train_ppl"], record["val_ppl"], 100 * record["val_acc"],
            " *best" if improved else "",
        )
        if on_record is not None:
            on_record(record)
        epoch_bar.set_postfix(val_ppl=f"{record['val_ppl']:.1f}")
        if early_stop(bad_epochs, cfg.patience):
            break
    epoch_bar.close()
    if cfg.restore_best:
        model.load_state_dict(best_state, strict=False)
    assert best is not None
    return Phase2Result(
        epochs=epochs,
        best_epoch=best_epoch,
        stopped_epoch=epochs[-1]["epoch"],
        best=best,
        best_state=best_state,
        seconds=time.perf_counter() - start_time,
    )

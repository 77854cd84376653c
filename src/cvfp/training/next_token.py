"""The next-token training loop every model shares (scoring: ``cvfp.scoring``).

CVFP's Phase 2 (on cached contexts) and the end-to-end baselines differ only
in how a batch's logits are produced; the epochs, Adam, gradient clip, early
stopping, best-epoch restore and the metrics are this one loop, so that a
comparison between them changes nothing but the model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from cvfp.config import Phase2Config
from cvfp.data.order import epoch_generator
from cvfp.metrics import perplexity
from cvfp.training.divergence import require_finite
from cvfp.training.resume import StateStore, load_optimizer_state, optimizer_state, take_prefix, with_prefix

log = logging.getLogger(__name__)


def early_stop(bad_epochs: int, patience: int) -> bool:
    """Stop after ``patience`` epochs in a row without improvement (0: never)."""
    return patience > 0 and bad_epochs >= patience


def make_adam(params: list[nn.Parameter], cfg: Phase2Config) -> torch.optim.Optimizer:
    """Adam with the configured implementation (see Phase2Config.adam); AdamW with ``cfg.weight_decay`` > 0."""
    kind = {"fused": True} if cfg.adam == "fused" else {"foreach": False}
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **kind)
    return torch.optim.Adam(params, lr=cfg.learning_rate, **kind)


def learning_rate_at(cfg: Phase2Config, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total`` (the epoch cap's steps): a linear
    warmup to ``cfg.learning_rate`` over ``warmup_fraction`` of the steps, then constant or a cosine or linear
    decay to 0 over the rest."""
    base, warm = cfg.learning_rate, round(cfg.warmup_fraction * total)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.schedule == "constant":
        return base
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return base * (0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress)


def scheduled(cfg: Phase2Config) -> bool:
    return cfg.schedule != "constant" or cfg.warmup_fraction > 0


@dataclasses.dataclass
class TrainResult:
    epochs: list[dict]  # one record per epoch
    best_epoch: int  # 1-based
    stopped_epoch: int  # last epoch run, 1-based
    best: dict  # validation metrics of the best epoch
    best_state: dict  # trained weights of the best epoch
    seconds: float


@dataclasses.dataclass
class _Progress:
    """Where the loop stands: the epochs run, the best so far, and the epochs since it."""

    epochs: list[dict]
    best: dict | None
    best_epoch: int
    bad_epochs: int
    best_state: dict

    def add(self, epoch: int, train_loss: float, metrics: dict, seconds: float, snapshot) -> dict:
        """Record an epoch: the best so far (and its weights, ``snapshot()``) when its validation loss is lower;
        returns the epoch's record (``val_bpb`` None when ``evaluate`` gives no bits per byte)."""
        improved = self.best is None or metrics["loss"] < self.best["loss"]
        if improved:
            self.best, self.best_epoch, self.bad_epochs, self.best_state = metrics, epoch, 0, snapshot()
        else:
            self.bad_epochs += 1
        record = {"phase": 2, "epoch": epoch, "train_ppl": perplexity(train_loss), "val_loss": metrics["loss"],
                  "val_ppl": metrics["ppl"], "val_acc": metrics["acc"], "val_bpb": metrics.get("bpb"),
                  "best": improved, "seconds": seconds}  # fmt: skip
        self.epochs.append(record)
        return record


def _resume(
    state: StateStore | None,
    cfg: Phase2Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    snapshot: Callable[[], dict],
) -> _Progress | None:
    """The saved state of the loop restored into the model and Adam (None when there is none)."""
    saved = state.load("phase2") if state is not None and cfg.save_state else None
    if saved is None:
        return None
    tensors, info = saved
    model.load_state_dict(take_prefix("model.", tensors), strict=False)
    device = next(model.parameters()).device
    best_state = {k: v.to(device) for k, v in take_prefix("best.", tensors).items()}
    if not best_state:  # saved at its best epoch: the current weights are the best
        best_state = snapshot()
    load_optimizer_state(optimizer, take_prefix("adam.", tensors), info["param_groups"])
    return _Progress(info["epochs"], info["best"], info["best_epoch"], info["bad_epochs"], best_state)


def _save(
    state: StateStore, optimizer: torch.optim.Optimizer, run: _Progress, improved: bool, snapshot: Callable[[], dict]
) -> None:
    """The loop's state after an epoch; the best epoch's weights are stored apart only when they are not the
    current ones."""
    adam, groups = optimizer_state(optimizer)
    best_apart = {} if improved else with_prefix("best.", run.best_state)
    tensors = {
        **with_prefix("model.", run.best_state if improved else snapshot()),
        **best_apart,
        **with_prefix("adam.", adam),
    }
    state.save(
        "phase2",
        tensors,
        {
            "epochs": run.epochs,
            "best": run.best,
            "best_epoch": run.best_epoch,
            "bad_epochs": run.bad_epochs,
            "param_groups": groups,
        },
    )


def _train_epoch(
    batch_losses: Iterator[tuple[torch.Tensor, int]],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    cfg: Phase2Config,
    all_reduce,
    steps: range | None = None,
) -> float:
    """One epoch of clipped Adam steps; its mean train loss (summed over the ranks with ``all_reduce``).
    ``steps``: the epoch's optimizer steps in the whole run's schedule (None: the rate never changes)."""
    train_nats, train_tokens = 0.0, 0  # a tensor on the loss's device after the first batch
    for i, (loss, count) in enumerate(batch_losses):
        if steps is not None:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(cfg, steps.start + i, steps.stop)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        train_nats = train_nats + loss.detach().double() * count  # no host copy per batch
        train_tokens += count
    if all_reduce is not None:
        totals = torch.tensor([float(train_nats), float(train_tokens)], dtype=torch.float64)
        all_reduce([totals])
        train_nats, train_tokens = totals.tolist()
    return float(train_nats) / train_tokens


def train_next_token(
    model: nn.Module,
    params: list[nn.Parameter],
    batch_losses: Callable[[torch.Generator | None], Iterator[tuple[torch.Tensor, int]]],
    evaluate: Callable[[], dict],
    snapshot: Callable[[], dict],
    cfg: Phase2Config,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    label: str = "phase 2",
    state: StateStore | None = None,
    all_reduce: Callable[[list[torch.Tensor]], None] | None = None,
    loss_limit: float | None = None,
    steps_per_epoch: int | None = None,
    seed: int = 0,
) -> TrainResult:
    """Epochs of ``batch_losses(generator)`` (the loss to minimise, and the weight that makes ``loss x weight``
    the batch's summed nats: its token count; ``generator`` draws the epoch's data order under ``cfg.shuffle``
    from ``seed``, else None), each followed by ``evaluate()``; early stopping on validation
    loss; the best epoch's ``snapshot()`` restored at the end when ``cfg.restore_best``.
    With a ``state`` store (and ``cfg.save_state``), the state after every epoch
    is saved there, and a saved state is continued from. ``all_reduce`` (a sharded point: every rank
    holds a part of each batch) sums the epoch's train nats and tokens over the ranks. A train or validation loss
    above ``loss_limit`` (``divergence.exploded_loss``) stops the run as diverged, as a non-finite one does.
    A learning-rate schedule (``cfg.schedule``, ``cfg.warmup_fraction``) needs ``steps_per_epoch``: it runs over
    the epoch cap's steps, so a resumed run continues it where it stopped."""
    if scheduled(cfg) and not steps_per_epoch:
        raise ValueError("a learning-rate schedule needs the number of steps per epoch")
    start_time = time.perf_counter()
    optimizer = make_adam(params, cfg)
    run = _resume(state, cfg, model, optimizer, snapshot)
    first = 1
    if run is None:
        run = _Progress([], None, 0, 0, snapshot())
    else:
        for record in run.epochs:
            if on_record is not None:
                on_record(record)
        log.info("%s: resumed after epoch %d (%s)", label, run.epochs[-1]["epoch"], state.folder)
        first = cfg.epochs + 1 if early_stop(run.bad_epochs, cfg.patience) else run.epochs[-1]["epoch"] + 1
    epoch_bar = tqdm(range(first, cfg.epochs + 1), desc=label, disable=not progress, leave=False)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        model.train()
        steps = None
        if scheduled(cfg):
            steps = range((epoch - 1) * steps_per_epoch, cfg.epochs * steps_per_epoch)
        batches = batch_losses(epoch_generator(cfg, seed, epoch))
        train_loss = _train_epoch(batches, optimizer, params, cfg, all_reduce, steps)
        model.eval()
        metrics = evaluate() if math.isfinite(train_loss) else {"loss": math.nan}
        require_finite(
            f"{label} epoch {epoch}",
            {"train loss": train_loss, "validation loss": metrics["loss"]},
            f"epoch {run.best_epoch}, validation PPL {run.best['ppl']:.2f}" if run.best else "none (the first epoch)",
            "lower phase2.learning_rate",
            loss_limit,
        )
        record = run.add(epoch, train_loss, metrics, time.perf_counter() - t0, snapshot)
        improved = record["best"]
        log.info("Epoch %d: train_ppl=%.1f val_ppl=%.1f acc=%.1f%%%s", epoch, record["train_ppl"], record["val_ppl"],
                 100 * record["val_acc"], " *best" if improved else "")  # fmt: skip
        if on_record is not None:
            on_record(record)
        if state is not None and cfg.save_state:
            _save(state, optimizer, run, improved, snapshot)
        epoch_bar.set_postfix(val_ppl=f"{record['val_ppl']:.1f}")
        if early_stop(run.bad_epochs, cfg.patience):
            break
    epoch_bar.close()
    if cfg.restore_best:
        model.load_state_dict(run.best_state, strict=False)
    assert run.best is not None
    seconds = time.perf_counter() - start_time
    return TrainResult(run.epochs, run.best_epoch, run.epochs[-1]["epoch"], run.best, run.best_state, seconds)

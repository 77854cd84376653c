"""Phase 2: next-token training of TokenBlock + head on cached contexts (algorithm §4).

The ContextBlock and the embedding stay frozen. Row i of a context cache
pairs with step input x_i and target token i+1. Batches are contiguous
slices of a pinned size, visited in stream order (or, with ``phase2.shuffle``,
in an order drawn from the run seed and the epoch).

A sharded point (``share``: rank r of W) splits every batch over the ranks
(``BatchShare.rows``): each rank's loss on its part, weighted by W x its
rows / the batch's rows, so that the average DistributedDataParallel takes of
the gradients is the single-process batch mean; scoring splits the same way
and sums over the ranks. Every rank then takes the single-process step, up
to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvfp.config import Phase2Config
from cvfp.data.order import visit_order
from cvfp.distributed import BatchShare, all_reduce_sum
from cvfp.models import CVFPModel
from cvfp.models.heads import CHUNK_ROWS
from cvfp.scoring import Documents, Scorer
from cvfp.training.caches import ContextSource
from cvfp.training.divergence import exploded_loss
from cvfp.training.next_token import TrainResult, early_stop, make_adam, train_next_token
from cvfp.training.resume import StateStore

__all__ = ["Phase2Result", "early_stop", "evaluate_cached", "make_adam", "phase2_state", "run_phase2"]


@torch.no_grad()
def evaluate_cached(
    model: CVFPModel,
    source: ContextSource,
    ids: torch.Tensor,
    batch_size: int,
    documents: Documents | None = None,
    share: BatchShare | None = None,
) -> dict:
    """``Scores.metrics`` of targets ids[1:] per document (with ``share``: this rank scores its part of
    every batch, and the sums are added over the ranks)."""
    scorer = Scorer(ids, documents)
    for first, t, buffer in _scored_chunks(model, source, ids, batch_size, share):
        scorer.add_features(first, model, t, buffer)
    if share is not None and share.world > 1:
        all_reduce_sum(scorer.result().tensors())
    return scorer.result().metrics()


def _batch_rows(n: int, batch_size: int, share: BatchShare | None):
    """(start, end, batch rows) of every batch of ``n`` rows in stream order, or this rank's part of each."""
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        yield (s, e, e - s) if share is None else (*share.rows(s, e), e - s)


def _batch_features(model: CVFPModel, source: ContextSource, ids: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """The head's input t (e - s, E) of cache rows [s, e)."""
    previous = source.inputs(s, e) if model.reads_previous else None
    return model.token_features(source.layers(s, e), model.step_inputs(ids, s, e), previous)


def _scored_chunks(
    model: CVFPModel, source: ContextSource, ids: torch.Tensor, batch_size: int, share: BatchShare | None = None
):
    """(first row, head input, logits buffer) at most CHUNK_ROWS rows at a time over contiguous batches of
    cache rows; a linear head's logits go into one reused buffer (the scorer consumes each chunk's before the
    next is made)."""
    buffer = None
    for first, e, _ in _batch_rows(len(source), batch_size, share):
        if e == first:
            continue
        t = _batch_features(model, source, ids, first, e)
        for s in range(0, t.shape[0], CHUNK_ROWS):
            rows = t[s : s + CHUNK_ROWS]
            if buffer is None and not model.adaptive:
                buffer = rows.new_empty(min(batch_size, CHUNK_ROWS), model.cfg.vocab_size)
            yield first + s, rows, None if buffer is None else buffer[: len(rows)]


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
    val_documents: Documents | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    state: StateStore | None = None,
    share: BatchShare | None = None,
    seed: int = 0,
) -> Phase2Result:
    """Train TokenBlock + head in place; return per-epoch metrics and the best epoch (``share``: a sharded
    point's rank, see the module doc; ``train`` then holds at least this rank's part of every batch; ``seed``:
    the run seed, which draws the batch order under ``cfg.shuffle``)."""
    share = share if share is not None and share.world > 1 else None  # one rank: not sharded
    batch_loss = _BatchLoss(model, train, train_ids)
    step = batch_loss if share is None else DistributedDataParallel(batch_loss, broadcast_buffers=False)

    def batch_losses(generator: torch.Generator | None):
        batches = list(_batch_rows(len(train), cfg.batch_size, share))
        for s, e, rows in (batches[i] for i in visit_order(len(batches), generator)):
            if share is None:
                yield step(s, e), rows
            else:  # DDP averages over W ranks: scaled by W x part / batch, the average is the batch mean
                yield step(s, e, share.world * (e - s) / rows), rows / share.world

    return train_next_token(
        model,
        model.trainable_phase2_parameters(),
        batch_losses,
        lambda: evaluate_cached(model, val, val_ids, cfg.batch_size, val_documents, share),
        lambda: phase2_state(model),
        cfg,
        on_record=on_record,
        progress=progress,
        state=state,
        all_reduce=None if share is None else all_reduce_sum,
        loss_limit=exploded_loss(model.cfg.vocab_size),
        steps_per_epoch=-(-len(train) // cfg.batch_size),
        seed=seed,
    )


class _BatchLoss(nn.Module):
    """The mean loss of cache rows [s, e), times ``scale``: the module DistributedDataParallel wraps (its
    parameters are the model's; the frozen ones are not synchronised)."""

    def __init__(self, model: CVFPModel, source: ContextSource, ids: torch.Tensor) -> None:
        super().__init__()
        self.model, self.source, self.ids = model, source, ids

    def forward(self, s: int, e: int, scale: float = 1.0) -> torch.Tensor:
        if e == s:  # an empty part of a batch: a zero loss that still reaches every trained parameter
            return sum(p.sum() for p in self.model.trainable_phase2_parameters()) * 0.0
        t = _batch_features(self.model, self.source, self.ids, s, e)
        loss = self.model.head_loss(t, self.ids[s + 1 : e + 1])
        return loss if scale == 1.0 else loss * scale

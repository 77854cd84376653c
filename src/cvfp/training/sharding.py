"""One CVFP point over torchrun's ranks (``RunConfig.shard_point``; docs/distributed.md).

Phase 1 runs on contiguous shards of the train stream (whole batches per rank), Phase 2 on each
rank's part of every batch. This module decides the ranks a point trains on and builds what a
sharded point needs from Phase 1's shards: its part of the parallel train cache, and the rows the
context gap and the effective ranks read.
"""

from __future__ import annotations

import dataclasses

import torch

from cvfp import distributed
from cvfp.config import ConfigError, RunConfig
from cvfp.models import CVFPModel, spec
from cvfp.training.caches import ContextCache, ContextSource, recurrence_finals, share_cache

# Train tokens on which parallel (train-cache) and sequential contexts are compared (``context_gap``).
GAP_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class PointRanks:
    """The ranks one point trains on: one process, or all of torchrun's (``RunConfig.shard_point``)."""

    shard: bool = False
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The one rank that writes the point's folder."""
        return self.rank == 0


def point_ranks(cfg: RunConfig) -> PointRanks:
    """This process's place in a point: sharded over every rank when ``cfg.shard_point`` and torchrun
    started more than one (refused, before any work, for what a sharded point does not support)."""
    me = distributed.ranks()
    if not cfg.shard_point or me.world == 1:
        return PointRanks()
    if spec(cfg.model.arch).family != "cvfp":
        raise ConfigError(
            f"--shard-point trains CVFP designs over ranks; {cfg.model.arch!r} is a baseline "
            "(spread its points instead: leave --shard-point out)"
        )
    if cfg.phase1.noise != "counter":
        raise ConfigError(
            "a sharded point needs --set phase1.noise=counter (each batch's noise from its own "
            "seed; the original's one-stream draw cannot be cut into shards)"
        )
    if not cfg.phase2.recompute_contexts:
        raise ConfigError("a sharded point keeps one context per row: phase2.recompute_contexts must be true")
    distributed.init()
    return PointRanks(True, me.rank, me.world)


def phase1_shard(tokens: int, batch: int, ranks: PointRanks) -> distributed.Shard:
    """This rank's Phase 1 shard: whole batches of ``batch`` tokens (refused when there are fewer than ranks)."""
    try:
        return distributed.shard_rows(tokens, batch, ranks.rank, ranks.world)
    except ValueError as err:
        raise ConfigError(
            f"a sharded point gives each rank whole Phase 1 batches, and {err}: train on more tokens, "
            f"use fewer ranks, or set a smaller phase1.batch_tokens (which changes Phase 1's "
            "batches, and so its result)"
        ) from None


def gap_cache(model: CVFPModel, ids: torch.Tensor, contexts: torch.Tensor, shard: distributed.Shard, batch: int):
    """A sharded point's train cache of its first GAP_TOKENS rows (``context_gap``'s), from Phase 1's shards."""
    n = min(GAP_TOKENS, len(ids) - 1)
    previous = distributed.exchange_rows(contexts, shard, batch, torch.arange(n))
    return ContextCache(model, ids[: n + 1], previous)


def sharded_train_cache(
    model: CVFPModel,
    cfg: RunConfig,
    ids: torch.Tensor,
    contexts: torch.Tensor,
    shard: distributed.Shard,
    share: distributed.BatchShare,
    progress: bool,
) -> ContextSource:
    """This rank's part of every Phase 2 batch: from Phase 1's shards (a parallel train cache), or from the
    true recurrence, which is one stream that every rank runs (a sequential one)."""
    p1, p2 = cfg.phase1, cfg.phase2
    if p2.train_cache == "parallel":
        return share_cache(model, ids, contexts, shard, p1.batch_tokens, share, p2.batch_size, p2.cache_dtype)
    finals, _ = recurrence_finals(model, ids, p2.cache_dtype, progress, cuda_graphs=cfg.cuda_graphs)
    whole = distributed.Shard(0, len(finals), len(finals))
    return share_cache(model, ids, finals, whole, len(finals), share, p2.batch_size, p2.cache_dtype)

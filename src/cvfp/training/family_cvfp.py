"""A point of a CVFP design (algorithm §2-5): Phase 1, the context caches, Phase 2, test scoring.

``train_cvfp`` reads top-down: train the ContextBlock (or leave it random, or skip it for the
zero-context control), freeze it, measure the contexts, build the train and validation caches,
train the TokenBlock and head, and hand back the best epoch's model with a test scorer. A sharded
point (``training.sharding``) differs only in where its caches come from.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from cvfp import distributed
from cvfp.config import RunConfig
from cvfp.data.protocols import DataSplit
from cvfp.errors import stage
from cvfp.metrics import effective_rank_centered, effective_rank_uncentred, sample_index
from cvfp.models import CVFPModel, build_model
from cvfp.scoring import Documents
from cvfp.training import sharding
from cvfp.training.caches import (
    DTYPES,
    ContextSource,
    ReplacedContexts,
    cache_from_contexts,
    parallel_cache,
    recurrence_finals,
    sequential_cache,
)
from cvfp.training.end_to_end import run_end_to_end
from cvfp.training.flops import cvfp_flops, end_to_end_flops
from cvfp.training.phase1 import Phase1Result, run_phase1
from cvfp.training.phase2 import evaluate_cached, run_phase2
from cvfp.training.point_types import PointContext, Trained


def context_gap(model: CVFPModel, ids: torch.Tensor, train_cache: ContextSource) -> dict:
    """How far the train cache's contexts are from the true recurrence's
    (algorithm §9.2), on the first GAP_TOKENS train tokens, final layer."""
    n = min(sharding.GAP_TOKENS, len(train_cache))
    seq = sequential_cache(model, ids[: n + 1]).layers(0, n)[-1]
    par = train_cache.layers(0, n)[-1]
    mse = (seq - par).pow(2).mean().item()
    rel = (torch.linalg.norm(seq - par) / torch.linalg.norm(seq)).item()
    return {"tokens": n, "mse": mse, "relative_norm": rel}


def eval_cache(
    model: CVFPModel, ids: torch.Tensor, cfg: RunConfig, progress: bool
) -> tuple[ContextSource, torch.Tensor, dict | None]:
    """A validation or test stream's cache by the configured recurrence, its final contexts, and Jacobi's record."""
    p2, ev = cfg.phase2, cfg.evaluation
    tolerance = ev.jacobi_tolerance if ev.recurrence == "jacobi" else None
    finals, info = recurrence_finals(
        model, ids, p2.cache_dtype, progress, tolerance, ev.jacobi_max_sweeps, cfg.cuda_graphs
    )
    return cache_from_contexts(model, ids, finals, p2.cache_dtype, p2.recompute_contexts, p2.batch_size), finals, info


def _phase1(model: CVFPModel, ids: torch.Tensor, cfg: RunConfig, ctx: PointContext, shard) -> Phase1Result:
    """Phase 1 as the design asks: trained, run without updates ("random"), or skipped (zero contexts: the "zero"
    design, or the end-to-end objective without its warm start)."""
    context = model.design.context
    p1 = cfg.phase1.replace(update_context_block=False) if context == "random" else cfg.phase1
    dtype = DTYPES[cfg.phase2.cache_dtype]
    if context == "zero" or (p1.objective == "lm" and not p1.lm_warm_start):
        rows = len(ids) if shard is None else shard.end - shard.start
        return Phase1Result(
            torch.zeros(rows, cfg.model.context_dim, dtype=dtype, device=ids.device), 0, 0.0, False, [], 0.0
        )
    generator = torch.Generator(device=ids.device).manual_seed(cfg.seed)
    return run_phase1(
        model,
        ids,
        p1,
        generator,
        on_record=ctx.run.log_metric,
        progress=ctx.progress,
        store_dtype=dtype,
        state=ctx.state,
        shard=shard,
    )


@dataclasses.dataclass
class _Ranks:
    """Effective ranks of the Phase 1 (train) contexts and the validation recurrence's."""

    train: float | None = None
    train_centered: float | None = None
    train_rows: int | None = None
    val: float | None = None
    val_centered: float | None = None
    val_rows: int | None = None


def _train_ranks(cfg: RunConfig, contexts: torch.Tensor, shard, generator: torch.Generator) -> _Ranks:
    """The Phase 1 contexts' effective ranks: drawn as one process draws them, gathered when sharded."""
    m = cfg.metrics

    def rows(count: int) -> torch.Tensor:
        if shard is None:
            return contexts
        idx = sample_index(shard.total, count, generator)
        idx = torch.arange(shard.total) if idx is None else idx
        return distributed.exchange_rows(contexts, shard, cfg.phase1.batch_tokens, idx)

    er = effective_rank_uncentred(rows(m.er_max_rows), m.er_max_rows, generator)
    centered, used = effective_rank_centered(rows(m.er_centered_rows), m.er_centered_rows, generator)
    return _Ranks(er, centered, used)


def _train_cache(model: CVFPModel, cfg: RunConfig, ids: torch.Tensor, phase1: Phase1Result, shard, share,
                 progress: bool) -> ContextSource:  # fmt: skip
    """The train cache Phase 2 reads: Phase 1's contexts (the original's parallel cache), the true recurrence
    (a sequential one), or this rank's part of either on a sharded point. Phase 1's contexts are freed."""
    p2 = cfg.phase2
    if shard is not None:
        cache = sharding.sharded_train_cache(model, cfg, ids, phase1.contexts, shard, share, progress)
    elif p2.train_cache == "parallel":  # Phase 1's contexts become the cache (no copy in the cache's dtype)
        cache = parallel_cache(model, ids, phase1.contexts, p2.batch_size, p2.cache_dtype, p2.recompute_contexts)
    else:
        phase1.contexts = None  # freed before the recurrence's own contexts exist
        cache = sequential_cache(
            model, ids, p2.cache_dtype, progress, p2.recompute_contexts, p2.batch_size, cfg.cuda_graphs
        )
    phase1.contexts = None
    return cache


def _fields(phase1: Phase1Result, ranks: _Ranks, cfg: RunConfig, cache_seconds: float, gap, jacobi_info) -> dict:
    """The summary fields only a CVFP design has (``point.CVFP_FIELDS``)."""
    return {
        "val_er": ranks.val, "val_er_centered": ranks.val_centered, "val_er_centered_rows": ranks.val_rows,
        "train_er": ranks.train, "train_er_centered": ranks.train_centered, "train_er_centered_rows": ranks.train_rows,
        "phase1_iterations": phase1.iterations, "phase1_converged": phase1.converged,
        "phase1_stop_rule": cfg.phase1.stop_rule, "phase1_final_rate": phase1.final_rate,
        "phase1_seconds": phase1.seconds, "cache_seconds": cache_seconds, "context_gap": gap, "jacobi": jacobi_info,
    }  # fmt: skip


def train_cvfp(cfg: RunConfig, split: DataSplit, ctx: PointContext) -> Trained:
    """Phase 1, caches and Phase 2 of a CVFP design (algorithm §2-5); sharded over ``ctx.ranks`` when asked."""
    p1, p2, device, ranks = cfg.phase1, cfg.phase2, ctx.device, ctx.ranks
    train_ids, val_ids = torch.from_numpy(split.train).to(device), torch.from_numpy(split.val).to(device)
    model = build_model(cfg.model, ctx.resources.table.table, seed=cfg.seed).to(device)
    model.prepare_head(train_ids)
    reads_context = model.design.context != "zero"  # the zero-context control's contexts are never read
    shard = sharding.phase1_shard(len(train_ids), p1.batch_tokens, ranks) if ranks.shard else None
    share = distributed.BatchShare(ranks.rank, ranks.world) if ranks.shard else None
    with stage("Phase 1"):
        phase1 = _phase1(model, train_ids, cfg, ctx, shard)
    end_to_end = None
    if p1.objective == "lm":  # beyond the original: the whole model trained through the fixed point
        with stage("end-to-end training"):
            end_to_end = run_end_to_end(model, train_ids, phase1.contexts, cfg, ctx.run.log_metric, ctx.state)
        phase1.contexts = end_to_end.contexts.to(DTYPES[p2.cache_dtype])
    model.context_layers.requires_grad_(False)
    er_gen = torch.Generator().manual_seed(cfg.seed)
    context_ranks = _train_ranks(cfg, phase1.contexts, shard, er_gen) if reads_context else _Ranks()

    t0 = time.perf_counter()
    with stage("building the context caches"):
        gap_source = None
        if shard is not None:
            gap_source = sharding.gap_cache(model, train_ids, phase1.contexts, shard, p1.batch_tokens)
        train_cache = _train_cache(model, cfg, train_ids, phase1, shard, share, ctx.progress)
        # Every rank computes the validation stream's contexts (one stream); scoring is what is split.
        val_cache, val_final, jacobi_info = eval_cache(model, val_ids, cfg, ctx.progress)
    cache_seconds = time.perf_counter() - t0
    if reads_context:
        m = cfg.metrics
        context_ranks.val = effective_rank_uncentred(val_final, m.er_max_rows, er_gen)
        context_ranks.val_centered, context_ranks.val_rows = effective_rank_centered(
            val_final, m.er_centered_rows, er_gen
        )
    del val_final
    gap = context_gap(model, train_ids, train_cache if gap_source is None else gap_source) if reads_context else None

    with stage("Phase 2"):
        phase2 = run_phase2(model, train_cache, train_ids, val_cache, val_ids, p2, ctx.val_documents,
                            on_record=ctx.run.log_metric, progress=ctx.progress, state=ctx.state, share=share, seed=cfg.seed)  # fmt: skip
    del train_cache
    model.load_state_dict(phase2.best_state, strict=False)  # the reported model is the best epoch's

    def test(stream: np.ndarray, documents: Documents) -> dict:
        ids = torch.from_numpy(stream).to(device)
        cache = eval_cache(model, ids, cfg, ctx.progress)[0]
        scores = evaluate_cached(model, cache, ids, p2.batch_size, documents, share)
        if reads_context:  # the same test set with each token's contexts replaced: what do they carry?
            shuffled = torch.randperm(len(cache), generator=torch.Generator().manual_seed(cfg.seed))
            scores["context_use"] = {
                name: evaluate_cached(model, ReplacedContexts(cache, rows), ids, p2.batch_size, documents, share)
                for name, rows in (("shuffled", shuffled), ("zero", None))
            }
        return scores

    counts = model.parameter_counts()
    updated = p1.update_context_block and model.design.context == "trained"
    phase2_params = counts["token_block"] + counts["head"]
    per_token = counts["token_block"] + model.head_parameters_per_token(train_ids)
    flops = cvfp_flops(counts["context_block"], per_token, len(split.train) - 1, phase1.iterations, updated,
                       phase2.stopped_epoch, p2.recompute_contexts)  # fmt: skip
    details = {"parameters": counts}
    if end_to_end is not None:
        flops += end_to_end_flops(counts["context_block"], per_token, len(split.train) - 1, p1)
        details["end_to_end"] = {"epochs": end_to_end.history, "seconds": end_to_end.seconds}
    return Trained.from_loop(
        phase2, fields=_fields(phase1, context_ranks, cfg, cache_seconds, gap, jacobi_info),
        trainable_parameters=counts["trainable"] if updated else phase2_params, train_flops=flops,
        details=details, model=model, test=test,
    )  # fmt: skip

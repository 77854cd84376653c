"""One training run: data split, Phase 1, caches, Phase 2, metrics, checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cvfp import distributed
from cvfp.config import CVFP_ARCHS, ConfigError, RunConfig
from cvfp.data.corpora import Corpus, load_corpus
from cvfp.data.embeddings import EmbeddingTable, load_embeddings, resolve_config
from cvfp.data.protocols import DataSplit, default_cache_dir, make_split
from cvfp.data.tokenizers import Tokenizer, get_tokenizer
from cvfp.errors import stage
from cvfp.io.checkpoint import save_checkpoint
from cvfp.io.records import PointRecord
from cvfp.io.rundir import RunConfigMismatch, RunDir, check_output, finished_summary, run_differences
from cvfp.io.trackers import check_available
from cvfp.metrics import effective_rank_centered, effective_rank_uncentred, sample_index
from cvfp.models import SEQUENCE_ARCHS, CVFPModel, build_model, e_design_body_parameters
from cvfp.models.ngram import KneserNey
from cvfp.training.baselines import evaluate_sequence, score_ngram, train_sequence
from cvfp.training.caches import (
    DTYPES,
    ContextCache,
    ContextSource,
    cache_from_contexts,
    parallel_cache,
    recurrence_finals,
    sequential_cache,
    share_cache,
)  # fmt: skip
from cvfp.training.flops import cvfp_flops, sequence_flops
from cvfp.training.memory import check_fits, estimate, peak, reset_peak
from cvfp.training.phase1 import run_phase1
from cvfp.training.phase2 import evaluate_cached, run_phase2
from cvfp.training.resume import StateStore

log = logging.getLogger(__name__)

# Train tokens on which parallel (train-cache) and sequential contexts are compared.
GAP_TOKENS = 2048


@dataclasses.dataclass
class Resources:
    """What every point of a sweep shares: corpus, frozen table, tokenizer."""

    corpus: Corpus
    table: EmbeddingTable
    tokenizer: Tokenizer


def load_resources(cfg: RunConfig) -> Resources:
    table = load_embeddings(cfg.data.embeddings, seed=cfg.seed)
    return Resources(load_corpus(cfg.data.corpus), table, get_tokenizer(table.tokenizer))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TensorFloat-32 matrix products on CUDA (``RunConfig.tf32``); CPU arithmetic is left alone."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def checked_config(cfg: RunConfig, table: EmbeddingTable) -> RunConfig:
    """``cfg`` resolved (``resolve_config``: the CLI has done it already), checked against the loaded table."""
    cfg = resolve_config(cfg)
    if table.shape != (cfg.model.vocab_size, cfg.model.embed_dim):
        raise ConfigError(f"embedding table {table.name!r} is {table.shape[0]} x {table.shape[1]}, not the "
                          f"{cfg.model.vocab_size} x {cfg.model.embed_dim} its name promises")  # fmt: skip
    return cfg


def context_gap(model: CVFPModel, ids: torch.Tensor, train_cache: ContextSource) -> dict:
    """How far the train cache's contexts are from the true recurrence's
    (algorithm §9.2), on the first GAP_TOKENS train tokens, final layer."""
    n = min(GAP_TOKENS, len(train_cache))
    seq = sequential_cache(model, ids[: n + 1]).layers(0, n)[-1]
    par = train_cache.layers(0, n)[-1]
    mse = (seq - par).pow(2).mean().item()
    rel = (torch.linalg.norm(seq - par) / torch.linalg.norm(seq)).item()
    return {"tokens": n, "mse": mse, "relative_norm": rel}


def _phase1_shard(tokens: int, batch: int, ranks: PointRanks) -> distributed.Shard:
    """This rank's Phase 1 shard: whole batches of ``batch`` tokens (refused when there are fewer than ranks)."""
    try:
        return distributed.shard_rows(tokens, batch, ranks.rank, ranks.world)
    except ValueError as err:
        raise ConfigError(
            f"a sharded point gives each rank whole Phase 1 batches, and {err}: train on more tokens, "
            f"use fewer ranks, or set a smaller phase1.batch_tokens (which changes Phase 1's "
            "batches, and so its result)"
        ) from None


def _gap_cache(model: CVFPModel, ids: torch.Tensor, contexts: torch.Tensor, shard: distributed.Shard,
               batch: int) -> ContextCache:  # fmt: skip
    """A sharded point's train cache of its first GAP_TOKENS rows (``context_gap``'s), from Phase 1's shards."""
    n = min(GAP_TOKENS, len(ids) - 1)
    previous = distributed.exchange_rows(contexts, shard, batch, torch.arange(n))
    return ContextCache(model, ids[: n + 1], previous)


def eval_cache(
    model: CVFPModel, ids: torch.Tensor, cfg: RunConfig, progress: bool
) -> tuple[ContextSource, torch.Tensor, dict | None]:
    """A validation or test stream's cache by the configured recurrence, its final contexts, and Jacobi's record."""
    p2, ev = cfg.phase2, cfg.evaluation
    jacobi = ev.recurrence == "jacobi"
    finals, info = recurrence_finals(model, ids, p2.cache_dtype, progress, ev.jacobi_tolerance if jacobi else None,
                                     ev.jacobi_max_sweeps, cfg.cuda_graphs)  # fmt: skip
    return cache_from_contexts(model, ids, finals, p2.cache_dtype, p2.recompute_contexts, p2.batch_size), finals, info


# Disk room for a run's records beside its checkpoint (config, metrics, summary: well under this).
RECORD_BYTES = 1 << 20

# Summary fields that only a CVFP design has; None for the baselines.
CVFP_FIELDS = (
    "val_er", "val_er_centered", "val_er_centered_rows", "train_er", "train_er_centered", "train_er_centered_rows",
    "phase1_iterations", "phase1_converged", "phase1_stop_rule", "phase1_final_rate", "phase1_seconds",
    "cache_seconds", "context_gap", "jacobi",
)  # fmt: skip


@dataclasses.dataclass
class Trained:
    """What an architecture's trainer hands back to ``train_point``."""

    fields: dict  # summary fields of this architecture (CVFP_FIELDS for CVFP designs)
    best: dict  # validation metrics of the reported model
    epochs: list[dict]
    best_epoch: int
    stopped_epoch: int
    phase2_seconds: float
    trainable_parameters: int
    train_flops: int
    details: dict  # architecture-specific facts (parameter split, widths, n-gram order)
    model: torch.nn.Module | KneserNey  # the reported model (a neural one on its best weights), checkpointed
    test: Callable[[np.ndarray, int], dict]  # metrics of a test stream (and its target bytes), reported model


def train_point(
    cfg: RunConfig,
    samples: int,
    out: Path,
    resources: Resources | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate one model of ``cfg.model.arch`` on ``samples`` conversations; write ``out``.

    From here on the run's config is ``cfg.point(samples)``: complete, as config.json stores it."""
    with stage(f"the run in {out} (N={samples}, seed {cfg.seed})"):
        return _train_point(cfg.point(samples), Path(out), resources, cache_dir, progress)


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
    if cfg.model.arch not in CVFP_ARCHS:
        raise ConfigError(f"--shard-point trains CVFP designs over ranks; {cfg.model.arch!r} is a baseline "
                          "(spread its points instead: leave --shard-point out)")  # fmt: skip
    if cfg.phase1.noise != "counter":
        raise ConfigError('a sharded point needs --set phase1.noise=counter (each batch\'s noise from its own '
                          'seed; the seed\'s one-stream draw cannot be cut into shards)')  # fmt: skip
    if not cfg.phase2.recompute_contexts:
        raise ConfigError("a sharded point keeps one context per row: phase2.recompute_contexts must be true")
    distributed.init()
    return PointRanks(True, me.rank, me.world)


def _train_point(cfg: RunConfig, out: Path, resources: Resources | None, cache_dir: Path | None,
                 progress: bool) -> dict:  # fmt: skip
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    set_tf32(device, cfg.tf32)
    res = resources or load_resources(cfg)
    cfg = checked_config(cfg, res.table)
    ranks = point_ranks(cfg)
    finished_summary(out, cfg)  # a folder that holds a finished run of another config is refused, untouched
    check_output(out, estimate(cfg, 0, 0).weights_bytes + RECORD_BYTES)
    check_available(cfg.log_to)
    with stage("tokenisation and split"):
        split: DataSplit = make_split(res.corpus, res.tokenizer, cfg.data.samples, cfg.data,
                                      cache_dir or default_cache_dir())  # fmt: skip
    eval_tokens = len(split.val) + (0 if split.test is None else len(split.test))
    memory_estimate = check_fits(cfg, len(split.train), eval_tokens, device)  # refuses before any work
    reset_peak(device)
    with contextlib.ExitStack() as stack:
        if ranks.shard:  # every rank computes; rank 0 alone writes the folder (the others, a scratch one)
            state, folder = None, out if ranks.main else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            state, folder = StateStore(out / "resume"), out
            if not _same_run(out, cfg):
                state.clear()  # a state of another config or size is never resumed
        run = RunDir(folder, cfg.log_to if ranks.main else ())
        stack.callback(run.close)
        environment = run.start(cfg.to_dict(), device)
        return _train_and_save(cfg, run, split, res, device, progress and ranks.main, state, environment,
                               memory_estimate, start, ranks)  # fmt: skip


def _train_and_save(cfg: RunConfig, run: RunDir, split: DataSplit, res: Resources, device, progress: bool,
                    state: StateStore | None, environment: dict, memory_estimate, start: float,
                    ranks: PointRanks = PointRanks()) -> dict:  # fmt: skip
    val_bytes = split.target_bytes(split.val, res.tokenizer)
    arch = cfg.model.arch
    if arch in CVFP_ARCHS:
        trained = _train_cvfp(cfg, split, res, device, val_bytes, run, progress, state, ranks)
    elif arch in SEQUENCE_ARCHS:
        trained = _train_sequence(cfg, split, res, device, val_bytes, run, progress, state)
    else:
        trained = _train_ngram(cfg, split, res, val_bytes, run)
    test = None
    if split.test is not None:
        test = trained.test(split.test, split.target_bytes(split.test, res.tokenizer))

    best = trained.best
    summary = {
        "samples": cfg.data.samples,
        "seed": cfg.seed,
        "arch": arch,
        "protocol": split.protocol,
        **split.info,
        "val_loss": best["loss"],
        "val_ppl": best["ppl"],
        "val_acc": best["acc"],
        "val_bpb": best["bpb"],
        "val_bytes": val_bytes,
        **{key: None for key in CVFP_FIELDS},
        **trained.fields,
        "phase2_seconds": trained.phase2_seconds,
        "best_epoch": trained.best_epoch,
        "stopped_epoch": trained.stopped_epoch,
        "epochs": trained.epochs,
        "test": test,
        "trainable_parameters": trained.trainable_parameters,
        "train_flops": trained.train_flops,
        "details": trained.details,
        "memory": {**peak(device), "estimate_bytes": None if memory_estimate is None else memory_estimate.total_bytes},
        "seconds": time.perf_counter() - start,
    }
    PointRecord.from_summary(summary)  # the summary holds every field the sweep's results read
    if ranks.main:
        with stage("saving the checkpoint and summary"):
            _save(run, trained, res, cfg, summary, environment)
    if state is not None:
        state.clear()
    log.info(
        "%s N=%d: tokens %s val_ppl %.1f acc %.1f%% best/stop %d/%d time %.1f min",
        arch, cfg.data.samples, f"{split.info['train_tokens']:,}", best["ppl"], 100 * best["acc"], trained.best_epoch,
        trained.stopped_epoch, summary["seconds"] / 60,
    )  # fmt: skip
    return summary


def _save(run: RunDir, trained: Trained, res: Resources, cfg: RunConfig, summary: dict, environment: dict) -> None:
    """The checkpoint (the reported model's weights; the n-gram model's stream and order), then summary.json:
    written last, it marks the run finished."""
    save_checkpoint(
        run.path / "checkpoint",
        trained.model,
        res.table,
        cfg.seed,
        {
            "run_config": cfg.to_dict(),
            "samples": cfg.data.samples,
            "train_tokens": summary["train_tokens"],
            "metrics": {k: summary[k] for k in ("val_ppl", "val_acc", "val_bpb", "best_epoch")},
            "environment": environment,
        },
    )
    run.finish(summary)


def _same_run(out: Path, cfg: RunConfig) -> bool:
    """Whether ``out`` was started (config.json written) by this very run: the same config (size included)."""
    if not (out / "config.json").exists():
        return False
    try:
        return not run_differences(out, cfg)
    except RunConfigMismatch:  # an unreadable config.json: not this run
        return False


def _train_cvfp(cfg: RunConfig, split: DataSplit, res: Resources, device, val_bytes: int, run: RunDir,
                progress: bool, state: StateStore | None, ranks: PointRanks = PointRanks()) -> Trained:  # fmt: skip
    """Phase 1, caches and Phase 2 of a CVFP design (algorithm §2-5); sharded over ``ranks`` when asked."""
    p2 = cfg.phase2
    train_ids = torch.from_numpy(split.train).to(device)
    val_ids = torch.from_numpy(split.val).to(device)
    # random-context: Phase 1's sweeps run (they build the train cache's contexts) but never update the block.
    p1 = cfg.phase1.replace(update_context_block=False) if cfg.model.arch == "random-context" else cfg.phase1
    model = CVFPModel(cfg.model, res.table.table, seed=cfg.seed).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    shard = _phase1_shard(len(train_ids), p1.batch_tokens, ranks) if ranks.shard else None
    share = distributed.BatchShare(ranks.rank, ranks.world) if ranks.shard else None
    with stage("Phase 1"):
        phase1 = run_phase1(model, train_ids, p1, generator, on_record=run.log_metric, progress=progress,
                            store_dtype=DTYPES[p2.cache_dtype], state=state, shard=shard)  # fmt: skip
    model.context_layers.requires_grad_(False)

    er_gen = torch.Generator().manual_seed(cfg.seed)
    m = cfg.metrics

    def train_rows(rows: int) -> torch.Tensor:
        """The Phase 1 contexts an effective rank reads: drawn as one process draws them, gathered when sharded."""
        if shard is None:
            return phase1.contexts
        idx = sample_index(shard.total, rows, er_gen)
        idx = torch.arange(shard.total) if idx is None else idx
        return distributed.exchange_rows(phase1.contexts, shard, p1.batch_tokens, idx)

    train_er = effective_rank_uncentred(train_rows(m.er_max_rows), m.er_max_rows, er_gen)
    train_er_c, train_er_rows = effective_rank_centered(train_rows(m.er_centered_rows), m.er_centered_rows, er_gen)

    t0 = time.perf_counter()
    recompute = p2.recompute_contexts
    with stage("building the context caches"):
        if shard is not None:
            gap_cache = _gap_cache(model, train_ids, phase1.contexts, shard, p1.batch_tokens)
            if p2.train_cache == "parallel":  # this rank's part of every Phase 2 batch, from Phase 1's shards
                train_cache = share_cache(model, train_ids, phase1.contexts, shard, p1.batch_tokens, share,
                                          p2.batch_size, p2.cache_dtype)  # fmt: skip
            else:  # the true recurrence is one stream: every rank runs it, and keeps its part
                finals, _ = recurrence_finals(model, train_ids, p2.cache_dtype, progress,
                                              cuda_graphs=cfg.cuda_graphs)  # fmt: skip
                whole = distributed.Shard(0, len(finals), len(finals))
                train_cache = share_cache(model, train_ids, finals, whole, len(finals), share, p2.batch_size,
                                          p2.cache_dtype)  # fmt: skip
                del finals
            phase1.contexts = None
        elif p2.train_cache == "parallel":
            # Phase 1's contexts become the cache (no copy when they are already in the cache's dtype).
            train_cache = parallel_cache(model, train_ids, phase1.contexts, p2.batch_size, p2.cache_dtype, recompute)
        else:
            phase1.contexts = None  # not needed any more: free them before the recurrence's own contexts exist
            train_cache = sequential_cache(model, train_ids, p2.cache_dtype, progress, recompute, p2.batch_size,
                                           cfg.cuda_graphs)  # fmt: skip
        # Every rank computes the validation stream's contexts (one stream); scoring is what is split.
        val_cache, val_final, jacobi_info = eval_cache(model, val_ids, cfg, progress)
    cache_seconds = time.perf_counter() - t0
    val_er = effective_rank_uncentred(val_final, m.er_max_rows, er_gen)
    val_er_c, val_er_rows = effective_rank_centered(val_final, m.er_centered_rows, er_gen)
    del val_final
    gap = context_gap(model, train_ids, train_cache if shard is None else gap_cache)

    with stage("Phase 2"):
        phase2 = run_phase2(
            model, train_cache, train_ids, val_cache, val_ids, p2, val_bytes, on_record=run.log_metric,
            progress=progress, state=state, share=share,
        )  # fmt: skip
    del train_cache
    phase1.contexts = None
    # The reported model is the best epoch's: score test and save it with those weights.
    model.load_state_dict(phase2.best_state, strict=False)

    def test(stream: np.ndarray, target_bytes: int) -> dict:
        ids = torch.from_numpy(stream).to(device)
        return evaluate_cached(model, eval_cache(model, ids, cfg, progress)[0], ids, p2.batch_size, target_bytes,
                               share)  # fmt: skip

    counts = model.parameter_counts()
    tokens = len(split.train) - 1
    flops = cvfp_flops(counts["context_block"], counts["token_block"] + counts["head"], tokens, phase1.iterations,
                       p1.update_context_block, phase2.stopped_epoch, p2.recompute_contexts)  # fmt: skip
    fields = {
        "val_er": val_er, "val_er_centered": val_er_c, "val_er_centered_rows": val_er_rows,
        "train_er": train_er, "train_er_centered": train_er_c, "train_er_centered_rows": train_er_rows,
        "phase1_iterations": phase1.iterations, "phase1_converged": phase1.converged,
        "phase1_stop_rule": p1.stop_rule,
        "phase1_final_rate": phase1.final_rate, "phase1_seconds": phase1.seconds, "cache_seconds": cache_seconds,
        "context_gap": gap, "jacobi": jacobi_info,
    }  # fmt: skip
    trainable = counts["trainable"] if p1.update_context_block else counts["token_block"] + counts["head"]
    return Trained(fields, phase2.best, phase2.epochs, phase2.best_epoch, phase2.stopped_epoch, phase2.seconds,
                   trainable, flops, {"parameters": counts}, model, test)  # fmt: skip


def _train_sequence(cfg: RunConfig, split: DataSplit, res: Resources, device, val_bytes: int, run: RunDir,
                    progress: bool, state: StateStore) -> Trained:  # fmt: skip
    """An end-to-end baseline through the shared next-token loop."""
    model = build_model(cfg.model, res.table.table, seed=cfg.seed).to(device)
    train_ids = torch.from_numpy(split.train).to(device)
    val_ids = torch.from_numpy(split.val).to(device)
    result = train_sequence(model, train_ids, val_ids, cfg.phase2, val_bytes, on_record=run.log_metric,
                            progress=progress, state=state)  # fmt: skip
    model.load_state_dict(result.best_state, strict=False)
    counts = model.parameter_counts()
    width = model.lstm.hidden_size if cfg.model.arch == "lstm" else model.inp.out_features
    attention = (
        6 * cfg.model.num_layers * cfg.model.transformer_window * width if cfg.model.arch == "transformer" else 0
    )
    flops = sequence_flops(counts["trainable"], len(split.train) - 1, result.stopped_epoch, attention)
    details = {"parameters": counts, "width": width, "e_design_body_parameters": e_design_body_parameters(cfg.model)}
    if cfg.model.arch == "transformer":
        details["scoring"] = (f"windows of {cfg.model.transformer_window} tokens, stride "
                              f"{max(1, cfg.model.transformer_window // 2)}: each token scored once with "
                              f"{cfg.model.transformer_window // 2}-{cfg.model.transformer_window - 1} tokens of "
                              "left context (0 at the stream start)")  # fmt: skip

    def test(stream: np.ndarray, target_bytes: int) -> dict:
        return evaluate_sequence(model, torch.from_numpy(stream).to(device), target_bytes)

    return Trained({}, result.best, result.epochs, result.best_epoch, result.stopped_epoch, result.seconds,
                   counts["trainable"], flops, details, model, test)  # fmt: skip


def _train_ngram(cfg: RunConfig, split: DataSplit, res: Resources, val_bytes: int, run: RunDir) -> Trained:
    """Count the n-gram models, keep the order with the lowest validation loss."""
    t0 = time.perf_counter()
    vocab = cfg.model.vocab_size
    tried = {}
    for order in cfg.model.ngram_orders:
        model = KneserNey(split.train, order, vocab, cfg.model)
        tried[order] = (model, score_ngram(model, split.val, val_bytes))
        run.log_metric({"phase": "ngram", "order": order, "val_loss": tried[order][1]["loss"],
                        "val_ppl": tried[order][1]["ppl"]})  # fmt: skip
    order = min(tried, key=lambda o: tried[o][1]["loss"])
    model, best = tried[order]
    details = {"order": order, "val_loss_by_order": {str(o): m["loss"] for o, (_, m) in tried.items()},
               "discounts": model.discounts[1:]}  # fmt: skip
    return Trained({}, best, [], 0, 0, time.perf_counter() - t0, 0, 0, details, model,
                   lambda stream, target_bytes: score_ngram(model, stream, target_bytes))  # fmt: skip

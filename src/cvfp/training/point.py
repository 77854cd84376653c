"""One point end to end: data split, the family's training, test scoring, summary and checkpoint.

``train_point`` reads top-down: resolve and check the config, refuse what cannot fit or would
overwrite another run, split the data, open the run folder, hand the point to its family's trainer
(``family_cvfp``, ``family_sequence``, ``family_count``: the registry's ``family`` picks it), score
test, then write the checkpoint and, last, the summary that marks the point finished.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

from cvfp.config import ConfigError, RunConfig
from cvfp.data.corpora import load_corpus
from cvfp.data.embeddings import EmbeddingTable, load_embeddings, resolve_config
from cvfp.data.protocols import DataSplit, make_split
from cvfp.data.tokenizers import get_tokenizer
from cvfp.device import resolve_device, set_tf32
from cvfp.errors import stage
from cvfp.io.checkpoint import save_checkpoint
from cvfp.io.lock import folder_lock
from cvfp.io.records import PointRecord
from cvfp.io.rundir import RunConfigMismatch, RunDir, check_output, finished_summary, run_differences
from cvfp.io.trackers import check_available
from cvfp.models import spec
from cvfp.training.family_count import train_ngram_point
from cvfp.training.family_cvfp import train_cvfp
from cvfp.training.family_sequence import train_sequence_point
from cvfp.training.memory import check_fits, estimate, peak, reset_peak
from cvfp.training.point_types import DEFAULT_OPTIONS, PointContext, Resources, RunOptions, Trained

__all__ = ["DEFAULT_OPTIONS", "Resources", "RunOptions", "Trained", "checked_config", "load_resources", "train_point"]
from cvfp.training.resume import StateStore
from cvfp.training.sharding import point_ranks

log = logging.getLogger(__name__)

# The trainer of each family of the registry.
TRAINERS = {"cvfp": train_cvfp, "sequence": train_sequence_point, "count": train_ngram_point}

# Disk room for a run's records beside its checkpoint (config, metrics, summary: well under this).
RECORD_BYTES = 1 << 20

# Summary fields that only a CVFP design has; None for the baselines.
CVFP_FIELDS = (
    "val_er",
    "val_er_centered",
    "val_er_centered_rows",
    "train_er",
    "train_er_centered",
    "train_er_centered_rows",
    "phase1_iterations",
    "phase1_converged",
    "phase1_stop_rule",
    "phase1_final_rate",
    "phase1_seconds",
    "cache_seconds",
    "context_gap",
    "jacobi",
)


def disk_bytes(cfg: RunConfig, train_tokens: int) -> int:
    """What a point writes at most at once: its checkpoint, the Phase 2 resume state (weights, the best
    epoch's weights and Adam's two moments: 4 x the weights), the Phase 1 state (its contexts, float32 per
    train token, beside the block) and its records."""
    weights = estimate(cfg, 0, 0).weights_bytes
    return 5 * weights + 4 * cfg.model.context_dim * train_tokens + RECORD_BYTES


def load_resources(cfg: RunConfig) -> Resources:
    table = load_embeddings(cfg.data.embeddings, seed=cfg.seed)
    return Resources(load_corpus(cfg.data.corpus), table, get_tokenizer(table.tokenizer))


def checked_config(cfg: RunConfig, table: EmbeddingTable) -> RunConfig:
    """``cfg`` resolved (``resolve_config``: the CLI has done it already), checked against the loaded table."""
    cfg = resolve_config(cfg)
    if table.shape != (cfg.model.vocab_size, cfg.model.embed_dim):
        raise ConfigError(
            f"embedding table {table.name!r} is {table.shape[0]} x {table.shape[1]}, not the "
            f"{cfg.model.vocab_size} x {cfg.model.embed_dim} its name promises"
        )
    design = spec(cfg.model.arch).design
    if cfg.phase1.objective == "lm" and design is not None and (design.context != "trained" or cfg.shard_point):
        raise ConfigError(
            f'phase1.objective = "lm" trains the ContextBlock: not with {cfg.model.arch} (its contexts are '
            f"{design.context}) nor on a sharded point"
        )
    return cfg


def train_point(
    cfg: RunConfig, samples: int, out: Path, resources: Resources | None = None, options: RunOptions = DEFAULT_OPTIONS
) -> dict:
    """Train and evaluate one model of ``cfg.model.arch`` on ``samples`` conversations; write ``out``.

    From here on the run's config is ``cfg.point(samples)``: complete, as config.json stores it."""
    with stage(f"the run in {out} (N={samples}, seed {cfg.seed})"):
        return _train_point(cfg.point(samples), Path(out), resources, options)


def _train_point(cfg: RunConfig, out: Path, resources: Resources | None, options: RunOptions) -> dict:
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    set_tf32(device, cfg.tf32)
    res = resources or load_resources(cfg)
    cfg = checked_config(cfg, res.table)
    ranks = point_ranks(cfg)
    finished_summary(out, cfg)  # a folder that holds a finished run of another config is refused, untouched
    check_available(cfg.log_to)
    with stage("tokenisation and split"):
        split = make_split(res.corpus, res.tokenizer, cfg.data.samples, cfg.data, options.token_cache())
    check_output(out, disk_bytes(cfg, len(split.train)))
    eval_tokens = len(split.val) + (0 if split.test is None else len(split.test))
    memory_estimate = check_fits(cfg, len(split.train), eval_tokens, device)  # refuses before any work
    reset_peak(device)
    with contextlib.ExitStack() as stack:
        if ranks.main:  # one writer per folder (a sharded point's other ranks write a scratch folder)
            stack.enter_context(folder_lock(out))
        resuming = False  # the same run continued in its own folder (never on a sharded point: no resume state)
        if ranks.shard:  # every rank computes; rank 0 alone writes the folder (the others, a scratch one)
            state, folder = None, out if ranks.main else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            state, folder = StateStore(out / "resume"), out
            resuming = _same_run(out, cfg)
            if not resuming:
                state.clear()  # a state of another config or size is never resumed
        run = RunDir(folder, cfg.log_to if ranks.main else ())
        stack.callback(run.close)
        environment = run.start(cfg.to_dict(), device, resuming=resuming)
        ctx = PointContext(
            res, device, run, state, options.progress and ranks.main, ranks, split.documents("val", res.tokenizer)
        )
        trained = TRAINERS[spec(cfg.model.arch).family](cfg, split, ctx)
        summary = _summary(cfg, split, res, trained, ctx, memory_estimate, start)
        if ranks.main:
            with stage("saving the checkpoint and summary"):
                _save(run, trained, res, cfg, summary, environment)
        if state is not None:
            state.clear()
    _log_point(cfg, split, summary)
    return summary


def _summary(
    cfg: RunConfig, split: DataSplit, res: Resources, trained: Trained, ctx: PointContext, memory_estimate, start: float
) -> dict:
    """summary.json: the split, the reported (best) epoch's validation metrics, test, cost and the family's
    fields; checked against the typed point record the sweep's results read."""
    test = None
    if split.test is not None and cfg.evaluation.score_test:
        test = trained.test(split.test, split.documents("test", res.tokenizer))
    best = trained.best
    summary = {
        "samples": cfg.data.samples,
        "seed": cfg.seed,
        "arch": cfg.model.arch,
        "protocol": split.protocol,
        **split.info,
        "val_loss": best["loss"],
        "val_ppl": best["ppl"],
        "val_acc": best["acc"],
        "val_bpb": best["bpb"],
        "val_bytes": int(ctx.val_documents.target_bytes.sum()),
        "val_documents": best["documents"],
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
        "memory": {
            **peak(ctx.device),
            "estimate_bytes": None if memory_estimate is None else memory_estimate.total_bytes,
        },
        "seconds": time.perf_counter() - start,
    }
    PointRecord.from_summary(summary)  # the summary holds every field the sweep's results read
    return summary


def _log_point(cfg: RunConfig, split: DataSplit, summary: dict) -> None:
    log.info(
        "%s N=%d: tokens %s val_ppl %.1f acc %.1f%% best/stop %d/%d time %.1f min",
        cfg.model.arch,
        cfg.data.samples,
        f"{split.info['train_tokens']:,}",
        summary["val_ppl"],
        100 * summary["val_acc"],
        summary["best_epoch"],
        summary["stopped_epoch"],
        summary["seconds"] / 60,
    )


def _save(run: RunDir, trained: Trained, res: Resources, cfg: RunConfig, summary: dict, environment: dict) -> None:
    """The checkpoint (the reported model's weights; the n-gram model's stream and order), then summary.json:
    written last, it marks the run finished."""
    meta = {
        "run_config": cfg.to_dict(),
        "samples": cfg.data.samples,
        "train_tokens": summary["train_tokens"],
        "metrics": {k: summary[k] for k in ("val_ppl", "val_acc", "val_bpb", "best_epoch")}
        | {"test_ppl": summary["test"]["ppl"] if summary.get("test") else None},
        "environment": environment,
    }
    save_checkpoint(run.path / "checkpoint", trained.model, res.table, cfg.seed, meta)
    run.finish(summary)


def _same_run(out: Path, cfg: RunConfig) -> bool:
    """Whether ``out`` was started (config.json written) by this very run: the same config (size included)."""
    if not (out / "config.json").exists():
        return False
    try:
        return not run_differences(out, cfg)
    except RunConfigMismatch:  # an unreadable config.json: not this run
        return False

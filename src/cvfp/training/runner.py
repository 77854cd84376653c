"""One training run: data split, Phase 1, caches, Phase 2, metrics, checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from cvfp.training.caches import parallel_cache, sequential_cache
from cvfp.io.checkpoint import save_checkpoint
from cvfp.config import RunConfig
from cvfp.data.corpora import Corpus, load_corpus
from cvfp.data.embeddings import EmbeddingTable, load_embeddings
from cvfp.data.protocols import DataSplit, default_cache_dir, make_split
from cvfp.data.tokenizers import Tokenizer, get_tokenizer
from cvfp.metrics import effective_rank_centered, effective_rank_seed
from cvfp.models import CVFPModel
from cvfp.training.phase1 import run_phase1
from cvfp.training.phase2 import evaluate_cached, run_phase2
from cvfp.io.rundir import RunDir

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
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def resolve_config(cfg: RunConfig, table: EmbeddingTable) -> RunConfig:
    """Derive the model's vocabulary size and embedding width from the table."""
    vocab, width = table.shape
    return cfg.replace(model=cfg.model.replace(vocab_size=vocab, embed_dim=width))


def context_gap(model: CVFPModel, ids: torch.Tensor, train_rows: torch.Tensor) -> dict:
    """How far the train cache's contexts are from the true recurrence's
    (SPEC 9.2), on the first GAP_TOKENS train tokens, final layer."""
    n = min(GAP_TOKENS, train_rows.shape[0])
    seq = sequential_cache(model, ids[: n + 1]).final_layer(model.cfg.context_dim)
    par = train_rows[:n, -model.cfg.context_dim :].float()
    mse = (seq - par).pow(2).mean().item()
    rel = (torch.linalg.norm(seq - par) / torch.linalg.norm(seq)).item()
    return {"tokens": n, "mse": mse, "relative_norm": rel}


def train_point(
    cfg: RunConfig,
    samples: int,
    out: Path,
    resources: Resources | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate one model on ``samples`` conversations; write ``out``."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    res = resources or load_resources(cfg)
    cfg = resolve_config(cfg, res.table)
    torch.manual_seed(cfg.seed)
    split: DataSplit = make_split(res.corpus, res.tokenizer, samples, cfg.data, cache_dir or default_cache_dir())
    run = RunDir(out)
    environment = run.start({"samples": samples, **cfg.to_dict()}, device)
    p2 = cfg.phase2
    train_ids = torch.from_numpy(split.train).to(device)
    val_ids = torch.from_numpy(split.val).to(device)

    model = CVFPModel(cfg.model, res.table.table, seed=cfg.seed).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    phase1 = run_phase1(model, train_ids, cfg.phase1, generator, on_record=run.log_metric, progress=progress)
    model.context_layers.requires_grad_(False)

    er_gen = torch.Generator().manual_seed(cfg.seed)
    m = cfg.metrics
    train_er = effective_rank_seed(phase1.contexts, m.er_max_rows, er_gen)
    train_er_c, train_er_rows = effective_rank_centered(phase1.contexts, m.er_centered_rows, er_gen)

    t0 = time.perf_counter()
    if p2.train_cache == "parallel":
        train_cache = parallel_cache(model, train_ids, phase1.contexts, cfg.phase1.batch_tokens, p2.cache_dtype)
    else:
        train_cache = sequential_cache(model, train_ids, p2.cache_dtype, progress=progress)
    val_cache = sequential_cache(model, val_ids, p2.cache_dtype, progress=progress)
    cache_seconds = time.perf_counter() - t0
    val_final = val_cache.final_layer(cfg.model.context_dim)
    val_er = effective_rank_seed(val_final, m.er_max_rows, er_gen)
    val_er_c, val_er_rows = effective_rank_centered(val_final, m.er_centered_rows, er_gen)
    gap = context_gap(model, train_ids, train_cache.data)

    val_bytes = split.target_bytes(split.val, res.tokenizer)
    phase2 = run_phase2(
        model, train_cache, train_ids, val_cache, val_ids, p2, val_bytes, on_record=run.log_metric, progress=progress
    )
    del train_cache
    # The reported model is the best epoch's: score test and save it with those weights.
    model.load_state_dict(phase2.best_state, strict=False)
    test = None
    if split.test is not None:
        test_ids = torch.from_numpy(split.test).to(device)
        test_cache = sequential_cache(model, test_ids, p2.cache_dtype, progress=progress)
        test = evaluate_cached(model, test_cache, test_ids, p2.batch_size, split.target_bytes(split.test, res.tokenizer))

    best = phase2.best
    summary = {
        "samples": samples,
        "seed": cfg.seed,
        "protocol": split.protocol,
        **split.info,
        "val_loss": best["loss"],
        "val_ppl": best["ppl"],
        "val_acc": best["acc"],
        "val_bpb": best["bpb"],
        "val_bytes": val_bytes,
        "val_er": val_er,
        "val_er_centered": val_er_c,
        "val_er_centered_rows": val_er_rows,
        "train_er": train_er,
        "train_er_centered": train_er_c,
        "train_er_centered_rows": train_er_rows,
        "phase1_iterations": phase1.iterations,
        "phase1_converged": phase1.converged,
        "phase1_final_rate": phase1.final_rate,
        "phase1_seconds": phase1.seconds,
        "cache_seconds": cache_seconds,
        "phase2_seconds": phase2.seconds,
        "best_epoch": phase2.best_epoch,
        "stopped_epoch": phase2.stopped_epoch,
        "epochs": phase2.epochs,
        "context_gap": gap,
        "test": test,
        "parameters": model.parameter_counts(),
        "seconds": time.perf_counter() - start,
    }
    save_checkpoint(
        run.path / "checkpoint",
        model,
        res.table,
        cfg.seed,
        {
            "run_config": cfg.to_dict(),
            "samples": samples,
            "metrics": {k: summary[k] for k in ("val_ppl", "val_acc", "val_bpb", "best_epoch")},
            "environment": environment,
        },
    )
    run.finish(summary)
    log.info(
        "N=%d: tokens %s val_ppl %.1f acc %.1f%% ER %.1f%% P1 iter %d best/stop %d/%d time %.1f min",
        samples, f"{split.info['train_tokens']:,}", best["ppl"], 100 * best["acc"], 100 * val_er,
        phase1.iterations, phase2.best_epoch, phase2.stopped_epoch, summary["seconds"] / 60,
    )
    return summary

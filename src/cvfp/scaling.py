"""The scaling experiment: one training run per sample size, then the fit.

Idempotent and resumable: every finished point lives in
``OUT/points/n<N>/summary.json`` (written last, atomically) and
``OUT/results.json`` is rewritten atomically after each point. Rerunning the
same command skips finished points; a point whose config differs from the
current one is an error, never silently mixed in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cvfp.config import RunConfig
from cvfp.fit import fit_power_law, fit_saturating
from cvfp.report import write_report
from cvfp.rundir import environment_info, read_json, write_json_atomic
from cvfp.runner import load_resources, resolve_device, train_point

log = logging.getLogger(__name__)

POINT_KEYS = (
    "samples", "train_tokens", "val_tokens", "test_tokens", "val_loss", "val_ppl", "val_acc", "val_bpb",
    "val_er", "val_er_centered", "val_er_centered_rows", "train_er", "train_er_centered", "phase1_iterations",
    "phase1_converged", "best_epoch", "stopped_epoch", "seconds", "epochs", "context_gap", "test",
)  # fmt: skip


class SweepConfigMismatch(RuntimeError):
    """An output folder holds points of a different configuration."""


def point_dir(out: Path, samples: int) -> Path:
    return Path(out) / "points" / f"n{samples}"


def build_results(
    cfg: RunConfig, samples: list[int], summaries: list[dict], failures: list[dict], preset, environment: dict
) -> dict:
    points = [{k: s[k] for k in POINT_KEYS} | {"max_epochs": cfg.phase2.epochs} for s in summaries]
    points.sort(key=lambda p: p["samples"])
    fit = sat = None
    if len(points) >= 2:
        fit = fit_power_law([p["train_tokens"] for p in points], [p["val_ppl"] for p in points])
        sat = fit_saturating([p["train_tokens"] for p in points], [p["val_loss"] for p in points])
    return {
        "settings": {
            "preset": preset,
            "arch": cfg.model.arch,
            "corpus": cfg.data.corpus,
            "embeddings": cfg.data.embeddings,
            "protocol": cfg.data.protocol,
            "samples": list(samples),
            "seed": cfg.seed,
            "config": cfg.to_dict(),
        },
        "points": points,
        "fit": fit,
        "saturating_fit": sat,
        "failures": failures,
        "environment": environment,
    }


def run_scaling(
    cfg: RunConfig,
    samples: list[int],
    out: Path,
    preset: str | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resources = None
    summaries, failures = [], []
    environment = environment_info(resolve_device(cfg.device))
    for n in samples:
        pdir = point_dir(out, n)
        summary_path = pdir / "summary.json"
        if summary_path.exists():
            stored = read_json(pdir / "config.json")
            stored.pop("samples", None)
            stored_cfg = RunConfig.from_dict(stored)
            if _comparable(stored_cfg) != _comparable(cfg):
                raise SweepConfigMismatch(
                    f"{pdir} was trained with a different configuration; use a fresh --out folder "
                    "or delete that point"
                )
            log.info("N=%d: finished earlier, skipped (%s)", n, summary_path)
            summaries.append(read_json(summary_path))
            continue
        if resources is None:
            resources = load_resources(cfg)
        try:
            summaries.append(
                train_point(cfg, n, pdir, resources=resources, cache_dir=cache_dir, progress=progress)
            )
        except (RuntimeError, ValueError) as err:  # a failed point is recorded, not zeroed
            log.error("N=%d failed: %s", n, err)
            failures.append({"samples": n, "error": f"{type(err).__name__}: {err}"})
        results = build_results(cfg, samples, summaries, failures, preset, environment)
        write_json_atomic(out / "results.json", results)
    results = build_results(cfg, samples, summaries, failures, preset, environment)
    write_json_atomic(out / "results.json", results)
    write_report(results, out)
    return results


def _comparable(cfg: RunConfig) -> dict:
    """Config as stored by a point: embed_dim / vocab_size are derived from the table."""
    d = cfg.to_dict()
    d["model"].pop("embed_dim")
    d["model"].pop("vocab_size")
    return d

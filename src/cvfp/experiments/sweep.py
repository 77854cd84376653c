"""The scaling experiment: one training run per sample size and seed, then the fits.

Idempotent and resumable: every finished run lives in
``OUT/points/n<N>-seed<S>/summary.json`` (written last, atomically) and
``OUT/results.json`` is rewritten atomically after each run. Rerunning the
same command skips finished runs; a run whose config differs from the
current one is an error that names the differing fields, never silently mixed in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cvfp.config import RunConfig
from cvfp.experiments.report import write_report
from cvfp.experiments.results import build_results
from cvfp.io.rundir import environment_info, read_json, write_json_atomic
from cvfp.training.runner import load_resources, resolve_device, train_point

log = logging.getLogger(__name__)


class SweepConfigMismatch(RuntimeError):
    """An output folder holds runs of a different configuration."""


def point_dir(out: Path, samples: int, seed: int) -> Path:
    return Path(out) / "points" / f"n{samples}-seed{seed}"


def finished_summary(pdir: Path, cfg: RunConfig) -> dict | None:
    """The summary of a finished run at ``pdir`` trained with ``cfg``; None if unfinished.

    Raises SweepConfigMismatch, naming the fields that differ, when the run
    was trained with another configuration.
    """
    if not (pdir / "summary.json").exists():
        return None
    stored = read_json(pdir / "config.json")
    stored.pop("samples", None)
    differ = _differences(comparable(RunConfig.from_dict(stored)), comparable(cfg))
    if differ:
        raise SweepConfigMismatch(
            f"{pdir} was trained with a different configuration ({', '.join(differ)}); use a fresh --out "
            "folder or delete that run"
        )
    return read_json(pdir / "summary.json")


def run_scaling(
    cfg: RunConfig,
    samples: list[int],
    out: Path,
    preset: str | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    seeds: list[int] | None = None,
) -> dict:
    """Train every (seed, size) run not yet finished under ``out``; write results and report.

    ``seeds`` defaults to the config's own seed. Seeds are the outer loop, so
    a sweep stopped early holds complete curves for its first seeds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) if seeds else [cfg.seed]
    resources = None
    summaries, failures = [], []
    environment = environment_info(resolve_device(cfg.device))
    for seed in seeds:
        seed_cfg = cfg.replace(seed=seed)
        for n in samples:
            pdir = point_dir(out, n, seed)
            done = finished_summary(pdir, seed_cfg)
            if done is not None:
                log.info("N=%d seed %d: finished earlier, skipped (%s)", n, seed, pdir)
                summaries.append(done)
                continue
            if resources is None:
                resources = load_resources(cfg)
            try:
                summaries.append(
                    train_point(seed_cfg, n, pdir, resources=resources, cache_dir=cache_dir, progress=progress)
                )
            except (RuntimeError, ValueError) as err:  # a failed run is recorded, not zeroed
                log.error("N=%d seed %d failed: %s", n, seed, err)
                failures.append({"samples": n, "seed": seed, "error": f"{type(err).__name__}: {err}"})
            write_json_atomic(out / "results.json", build_results(cfg, samples, seeds, summaries, failures, preset,
                                                                  environment))  # fmt: skip
    results = build_results(cfg, samples, seeds, summaries, failures, preset, environment)
    write_json_atomic(out / "results.json", results)
    write_report(results, out)
    return results


def comparable(cfg: RunConfig) -> dict:
    """A config as it decides a run's result, without the fields derived from the embedding table."""
    d = cfg.to_dict()
    d["model"].pop("embed_dim")
    d["model"].pop("vocab_size")
    return d


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)  # a key missing on one side is itself a difference
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out

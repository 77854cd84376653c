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
from cvfp.data.protocols import check_size
from cvfp.errors import stage
from cvfp.experiments.report import write_report
from cvfp.experiments.results import build_results
from cvfp.io.rundir import environment_info, finished_summary, refuse_other_configs, write_json_atomic
from cvfp.training.runner import load_resources, resolve_device, train_point

log = logging.getLogger(__name__)


def point_dir(out: Path, samples: int, seed: int) -> Path:
    return Path(out) / "points" / f"n{samples}-seed{seed}"


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
    seeds = list(seeds) if seeds else [cfg.seed]
    refuse_other_configs(out / "points", cfg)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    resources = None
    if any(finished_summary(point_dir(out, n, s), cfg.replace(seed=s), n) is None for s in seeds for n in samples):
        resources = load_resources(cfg)
        check_size(resources.corpus, max(samples), cfg.data)  # the largest size must exist before any is trained
    summaries, failures = [], []
    environment = environment_info(resolve_device(cfg.device))
    for seed in seeds:
        seed_cfg = cfg.replace(seed=seed)
        for n in samples:
            pdir = point_dir(out, n, seed)
            done = finished_summary(pdir, seed_cfg, n)
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
    with stage(f"writing the results and report of {out}"):
        write_json_atomic(out / "results.json", results)
        write_report(results, out)
    return results

"""The scaling experiment: one training run per sample size and seed, then the fits.

Idempotent and resumable: every finished run lives in
``OUT/points/n<N>-seed<S>/summary.json`` (written last, atomically) and
``OUT/results.json`` is rewritten atomically after each run. Rerunning the
same command skips finished runs; a run whose config differs from the
current one is an error that names the differing fields, never silently mixed in.

Under torchrun (``cvfp.distributed``) the unfinished points of every sweep
given to ``run_sweeps`` (one sweep, a grid's cells, a comparison's
architectures) are handed out to the ranks, costliest first, each rank
training its share on its own device; rank 0 writes the results, fits and
reports once all ranks are done. The points are the same runs as in one
process, so the results are too. With ``shard_point`` every rank trains every
point instead, each point sharded over all of them (``training.sharding``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

from cvfp import distributed
from cvfp.config import RunConfig
from cvfp.data.protocols import check_size
from cvfp.device import resolve_device
from cvfp.errors import stage
from cvfp.experiments.report import write_report
from cvfp.experiments.results import build_results
from cvfp.io.lock import folder_lock
from cvfp.io.rundir import environment_info, finished_summary, refuse_other_configs, write_json_atomic
from cvfp.io.trackers import check_available
from cvfp.training.point import DEFAULT_OPTIONS, Resources, RunOptions, load_resources, train_point

log = logging.getLogger(__name__)


def point_dir(out: Path, samples: int, seed: int) -> Path:
    return Path(out) / "points" / f"n{samples}-seed{seed}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep folder: every (seed, size) run of one config."""

    cfg: RunConfig
    samples: list[int]
    out: Path
    seeds: list[int]
    preset: str | None = None

    def __post_init__(self) -> None:
        # The sweep's own config has no size: each point's is cfg.point(N, seed).
        object.__setattr__(self, "cfg", self.cfg.point(None))

    def runs(self) -> list[tuple[int, int]]:
        """(seed, samples) of every run; seeds are the outer loop, so a sweep stopped early holds
        complete curves for its first seeds."""
        return [(seed, n) for seed in self.seeds for n in self.samples]


@dataclasses.dataclass(frozen=True)
class _Task:
    sweep: int  # index into the sweeps
    seed: int
    samples: int


def run_scaling(
    cfg: RunConfig, samples: list[int], out: Path, seeds: list[int] | None = None, options: RunOptions = DEFAULT_OPTIONS
) -> dict:
    """Train every (seed, size) run not yet finished under ``out``; write results and report.

    ``seeds`` defaults to the config's own seed.
    """
    sweep = Sweep(cfg, list(samples), Path(out), list(seeds) if seeds else [cfg.seed], options.preset)
    return run_sweeps([sweep], options)[0]


def run_sweeps(sweeps: list[Sweep], options: RunOptions = DEFAULT_OPTIONS) -> list[dict]:
    """Train the unfinished runs of every sweep (this rank's share of them); return each sweep's results,
    written to its folder by rank 0 once every rank is done."""
    me = distributed.init()  # joins torchrun's process group when launched by it (idempotent)
    for sweep in sweeps:
        check_available(sweep.cfg.log_to)  # a missing tracker is refused before any work, not per point
        refuse_other_configs(sweep.out / "points", sweep.cfg)  # before anything is written, the lock included
    locks = contextlib.ExitStack()
    if me.main:  # rank 0 writes every sweep's results: it holds their folders (each point's trainer holds its own)
        for sweep in sweeps:
            locks.enter_context(folder_lock(sweep.out))
    with locks:
        return _run_sweeps(sweeps, options, me)


def _run_sweeps(sweeps: list[Sweep], options: RunOptions, me) -> list[dict]:
    environment = environment_info(resolve_device(sweeps[0].cfg.device)) if sweeps else {}  # probed once
    tasks, resources = [], {}
    done: dict[int, dict[tuple[int, int], dict]] = {i: {} for i in range(len(sweeps))}  # summaries by (seed, N)
    for i, sweep in enumerate(sweeps):
        refuse_other_configs(sweep.out / "points", sweep.cfg)  # again, now under the lock: no writer came between
        sweep.out.mkdir(parents=True, exist_ok=True)
        pending = []
        for seed, n in sweep.runs():
            pdir = point_dir(sweep.out, n, seed)
            summary = finished_summary(pdir, sweep.cfg.point(n, seed))
            if summary is None:
                pending.append((seed, n))
            else:
                done[i][(seed, n)] = summary
                log.info("N=%d seed %d: finished earlier, skipped (%s)", n, seed, pdir)
        if pending:
            res = _resources(sweep.cfg, resources)
            check_size(
                res.corpus, max(sweep.samples), sweep.cfg.data, res.tokenizer, options.token_cache()
            )  # the largest size exists before any trains
        tasks += [_Task(i, seed, n) for seed, n in pending]
    owners = distributed.assign([float(t.samples) for t in tasks], me.world)
    if any(sweep.cfg.shard_point for sweep in sweeps):  # every point on every rank, each sharded over them
        owners = [me.rank] * len(tasks)
    mine = [t for t, owner in zip(tasks, owners) if owner == me.rank]
    if me.world > 1:
        log.info("rank %d of %d: %d of the %d unfinished runs", me.rank, me.world, len(mine), len(tasks))
    failures: dict[int, list[dict]] = {i: [] for i in range(len(sweeps))}
    for task in mine:
        sweep = sweeps[task.sweep]
        try:
            done[task.sweep][(task.seed, task.samples)] = train_point(
                sweep.cfg.replace(seed=task.seed),
                task.samples,
                point_dir(sweep.out, task.samples, task.seed),
                resources=_resources(sweep.cfg, resources),
                options=options,
            )
        except (RuntimeError, ValueError) as err:  # a failed run is recorded, not zeroed
            log.error("N=%d seed %d failed: %s", task.samples, task.seed, err)
            failures[task.sweep].append(
                {"samples": task.samples, "seed": task.seed, "error": f"{type(err).__name__}: {err}"}
            )
        if me.world == 1:  # one process: the results so far, after every run
            write_json_atomic(
                sweep.out / "results.json", _results(sweep, done[task.sweep], failures[task.sweep], environment)
            )
    if me.world > 1:  # every rank's summaries and failures, once all are done
        for other_done, other_failures in distributed.gather((done, failures)):
            for i in range(len(sweeps)):
                done[i] |= other_done[i]
                failures[i] += [f for f in other_failures[i] if f not in failures[i]]
    out = []
    for i, sweep in enumerate(sweeps):
        results = _results(sweep, done[i], failures[i], environment)
        if me.main:
            with stage(f"writing the results and report of {sweep.out}"):
                write_json_atomic(sweep.out / "results.json", results)
                write_report(results, sweep.out)
        out.append(results)
    distributed.barrier()  # no rank goes on before the reports exist
    return out


def _resources(cfg: RunConfig, loaded: dict) -> Resources:
    """The corpus, table and tokenizer of a config, loaded once per distinct (corpus, table, seed)."""
    key = (cfg.data.corpus, cfg.data.embeddings, cfg.seed)
    if key not in loaded:
        loaded[key] = load_resources(cfg)
    return loaded[key]


def _results(sweep: Sweep, done: dict[tuple[int, int], dict], failures: list[dict], environment: dict) -> dict:
    """The sweep's results from its finished runs' summaries (in seed, size order) and its failures."""
    summaries = [done[run] for run in sweep.runs() if run in done]
    failures = sorted(failures, key=lambda f: sweep.runs().index((f["seed"], f["samples"])))
    return build_results(sweep.cfg, sweep.samples, sweep.seeds, summaries, failures, sweep.preset, environment)

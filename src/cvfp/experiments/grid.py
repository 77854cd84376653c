"""Design grids: a full scaling sweep per cell of a product of config values.

``cvfp scaling --grid model.num_layers=1,2 --grid model.context_dim=128,256``
runs every cell (every combination of the values) as its own sweep in
``OUT/cells/<key=value,...>/``, each resumable run by run, then writes the grid
report at the top of ``OUT``: per cell alpha with its intervals, validation
and test PPL, bits per byte and effective rank at the largest size, Phase 1
iterations and convergence rate, wall time, and Spearman rank correlations
between Phase 1's figures and the results across cells.

Designs that are not a product of axes are named variants:
``--variant seed: --variant final:model.context_mode=final
--variant c1t1:model.context_layers=1;model.token_layers=1`` makes one cell per
variant (``seed:`` with no overrides is the base config), crossed with any
``--grid`` axes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from pathlib import Path

from scipy import stats

from cvfp import distributed
from cvfp.config import ConfigError, ModelConfig, RunConfig, parse_value
from cvfp.experiments.formatting import ci, fixed, pct, spread
from cvfp.experiments.paired import MARGIN, Paired, against, paired_table, rule_text
from cvfp.experiments.plots import plot_curve, save_figure
from cvfp.experiments.results import spread as seed_spread
from cvfp.experiments.sweep import Sweep, run_sweeps
from cvfp.files import atomic_write_text
from cvfp.io.lock import writer_lock
from cvfp.io.rundir import RunConfigMismatch, comparable, read_json, write_json_atomic
from cvfp.strict import upgrade_run_dict
from cvfp.training.point import DEFAULT_OPTIONS, RunOptions

log = logging.getLogger(__name__)

# Phase 1's figures and the results they are correlated with across cells.
PHASE1_FIGURES = ("phase1_iterations", "phase1_final_rate", "train_er")
OUTCOMES = ("val_ppl", "alpha")


# Fields set for each run by the sweep, never by a grid axis or a variant.
PER_POINT = {"seed": "use --seeds to repeat runs over seeds", "data.samples": "use --samples for the sizes"}


@dataclasses.dataclass(frozen=True)
class Axis:
    key: str  # dotted config field, e.g. "model.num_layers"
    values: tuple

    @classmethod
    def parse(cls, spec: str) -> Axis:
        """``KEY=V1,V2,...``; each value is read as JSON when it parses, else as a string."""
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {spec!r} is not of the form KEY=V1,V2,...")
        if key in PER_POINT:
            raise ConfigError(f"--grid {key}=...: {PER_POINT[key]}")
        values = tuple(parse_value(v.strip()) for v in raw.split(","))
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(f"--grid {key}: a value is listed twice")
        if len(values) < 2:
            raise ConfigError(f"--grid {spec!r} has one value: a grid axis varies a field; use --set {spec} instead")
        return cls(key, values)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # the cell's folder name
    overrides: dict  # dotted config field -> value; empty for the base config

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``NAME:KEY=V;KEY=V`` (``NAME:`` alone is the base config); values as in ``--grid``."""
        name, sep, raw = spec.partition(":")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--variant {spec!r} is not of the form NAME:KEY=V;KEY=V (or NAME: for the base)")
        if "/" in name or name.startswith(".") or "=" in name or "," in name:
            raise ConfigError(f"--variant name {name!r} must not contain '/', '=' or ',' or start with '.'")
        overrides = {}
        for part in filter(None, (p.strip() for p in raw.split(";"))):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or not key or not value.strip():
                raise ConfigError(f"--variant {name}: {part!r} is not of the form KEY=VALUE")
            if key in PER_POINT:
                raise ConfigError(f"--variant {name}: {key}=...: {PER_POINT[key]}")
            if key in overrides:
                raise ConfigError(f"--variant {name}: {key} is set twice")
            overrides[key] = parse_value(value.strip())
        return cls(name, overrides)


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str  # folder name: "key=value,key=value"
    overrides: dict
    cfg: RunConfig


def grid_cells(cfg: RunConfig, axes: list[Axis], variants: list[Variant] = ()) -> list[Cell]:
    """Every combination of the variants and the axes' values, validated as configs."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid names a field twice: {keys}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"--variant names a variant twice: {names}")
    for v in variants:
        if both := sorted(set(v.overrides) & set(keys)):
            raise ConfigError(f"--variant {v.name} sets {both}, which --grid also varies")
    cells = []
    for variant, combo in itertools.product(variants or [None], itertools.product(*(a.values for a in axes))):
        axis_values = dict(zip(keys, combo))
        overrides = {**(variant.overrides if variant else {}), **axis_values}
        cell_cfg = cfg.override([f"{k}={json.dumps(v)}" for k, v in overrides.items()])
        parts = ([variant.name] if variant else []) + [f"{k}={v}" for k, v in axis_values.items()]
        name = ",".join(parts)
        if "/" in name or name.startswith("."):
            raise ConfigError(f"grid value gives an unusable folder name: {name!r}")
        cells.append(Cell(name, overrides, cell_cfg))
    return cells


def _plan(cfg: RunConfig, axes: list[Axis], samples: list[int], seeds: list[int], variants: list[Variant] = ()) -> dict:
    plan = {
        "base_config": comparable(cfg),
        "axes": {a.key: list(a.values) for a in axes},
        "samples": list(samples),
        "seeds": list(seeds),
    }
    if variants:  # absent rather than empty, so that grids written before variants existed still resume
        plan["variants"] = {v.name: v.overrides for v in variants}
    return plan


def _stored_plan_matches(path: Path, plan: dict) -> bool:
    """Whether the grid folder's plan.json is this plan; a damaged or edited one is refused by name."""
    try:
        return _same_plan(read_json(path), plan)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise RunConfigMismatch(f"{path} is damaged ({type(err).__name__}: {err}); use a fresh --out folder") from None


def _same_plan(stored: dict, plan: dict) -> bool:
    """Whether a stored plan is this one; its base config is read as a config, so fields that
    cvfp added since (with their defaults) do not count as a difference."""
    try:
        base = comparable(RunConfig.from_dict(upgrade_run_dict(_with_derived(stored["base_config"]))))
    except (ConfigError, KeyError):
        return False
    return {**stored, "base_config": base} == json.loads(json.dumps(plan))


def _with_derived(config: dict) -> dict:
    """A stored comparable config with placeholder derived fields, so that it parses."""
    model = dict(config.get("model", {}))  # a missing section fails in from_dict, not here
    model.setdefault("embed_dim", ModelConfig.embed_dim)
    model.setdefault("vocab_size", ModelConfig.vocab_size)
    return {**config, "model": model}


def cell_summary(cell: Cell, results: dict) -> dict:
    """One cell's row of the grid report, from its sweep's results."""
    points = results["points"]
    fit, boot = results["fit"], results["alpha_bootstrap_seeds"]
    ok_fit = fit is not None and "error" not in fit
    largest = results["sizes"][-1] if results["sizes"] else None
    row = {
        "cell": cell.name,
        "overrides": cell.overrides,
        "runs": len(points),
        "failures": len(results["failures"]),
        "alpha": fit["alpha"] if ok_fit else None,
        "alpha_ci95": fit["alpha_ci95"] if ok_fit else None,
        "alpha_seed_spread_ci95": boot["ci95"] if boot and "error" not in boot else None,
        "largest_samples": largest["samples"] if largest else None,
    }
    for key in ("val_ppl", "val_loss", "test_ppl", "val_bpb", "val_er", "best_epoch"):  # at the largest size
        row[key] = largest[key] if largest else None
    row["seconds"] = (
        seed_spread([sum(p["seconds"] for p in points if p["seed"] == s) for s in sorted({p["seed"] for p in points})])
        if points
        else None
    )
    for key in PHASE1_FIGURES:
        row[key] = seed_spread([p[key] for p in points])  # None for baselines, which have no Phase 1
    # The train/evaluation context gap (relative norm, train cache vs the true recurrence) at the largest size.
    top = [p for p in points if largest and p["samples"] == largest["samples"] and p["context_gap"]]
    row["context_gap"] = seed_spread([p["context_gap"]["relative_norm"] for p in top]) if top else None
    return row


def correlations(cells: list[dict]) -> list[dict]:
    """Spearman's rho (and its p-value) of each Phase 1 figure against each outcome, across cells."""
    out = []
    for x_key, y_key in itertools.product(PHASE1_FIGURES, OUTCOMES):
        pairs = [(_mean(c[x_key]), _mean(c[y_key])) for c in cells]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None and math.isfinite(y)]
        row = {"x": x_key, "y": y_key, "cells": len(pairs), "rho": None, "p": None, "note": None}
        if len(pairs) < 3:
            row["note"] = "fewer than 3 cells"
        elif len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
            row["note"] = "constant across cells"
        else:
            res = stats.spearmanr([x for x, _ in pairs], [y for _, y in pairs])
            row["rho"], row["p"] = float(res.statistic), float(res.pvalue)
        out.append(row)
    return out


def _mean(value) -> float | None:
    if value is None or isinstance(value, float):
        return value
    return value["mean"]


def run_grid(
    cfg: RunConfig,
    axes: list[Axis],
    samples: list[int],
    out: Path,
    seeds: list[int] | None = None,
    variants: list[Variant] = (),
    options: RunOptions = DEFAULT_OPTIONS,
    margin: float = MARGIN,
) -> dict:
    """Run (or resume) every cell's sweep, then write grid.json, grid.md and grid.png (with every cell against
    the first, paired on test, ``margin`` the equivalence margin of the verdicts)."""
    out = Path(out)
    seeds = list(seeds) if seeds else [cfg.seed]
    cfg = cfg.point(None)  # the grid's base config has no size: every cell's sweep sets it per point
    cells = grid_cells(cfg, axes, variants)
    plan = _plan(cfg, axes, samples, seeds, variants)
    plan_path = out / "plan.json"
    if plan_path.exists() and not _stored_plan_matches(plan_path, plan):
        raise RunConfigMismatch(
            f"{out} holds a grid with another base config, axes, sizes or seeds (see {plan_path}); "
            "use a fresh --out folder"
        )
    with writer_lock(out):  # one writer per folder: rank 0 holds it
        if distributed.ranks().main:
            write_json_atomic(plan_path, plan)
        log.info("grid: %d cells: %s", len(cells), ", ".join(c.name for c in cells))
        sweeps = [Sweep(c.cfg, list(samples), out / "cells" / c.name, seeds, options.preset) for c in cells]
        all_results = {cell.name: results for cell, results in zip(cells, run_sweeps(sweeps, options))}
        grid = grid_record(plan, options.preset, cells, all_results, margin)
        if distributed.ranks().main:
            write_grid(out, grid, all_results, axes, variants)
        distributed.barrier()
        return grid


def grid_record(plan: dict, preset: str | None, cells: list[Cell], all_results: dict, margin: float) -> dict:
    """grid.json: the plan, one row per cell, the correlations, every cell against the first (paired)."""
    rows = [cell_summary(cell, all_results[cell.name]) | {"dir": f"cells/{cell.name}"} for cell in cells]
    pairs = against(cells[0].name, all_results, margin) if len(cells) > 1 else []
    return {
        "plan": plan,
        "preset": preset,
        "cells": rows,
        "correlations": correlations(rows),
        "margin": margin,
        "paired": [p if isinstance(p, dict) else p.to_dict() for p in pairs],
    }


def write_grid(out: Path, grid: dict, all_results: dict, axes: list[Axis], variants: list[Variant]) -> None:
    write_json_atomic(out / "grid.json", grid)
    plot_grid(grid, all_results, axes if not variants else [], out / "grid.png")
    atomic_write_text(out / "grid.md", render_grid(grid, axes, variants))


# ---------------------------------------------------------------- reporting
def _title(axes: list[Axis], variants: list[Variant]) -> str:
    parts = [f"{a.key} in {list(a.values)}" for a in axes]
    if variants:
        parts.insert(0, f"{len(variants)} variants")
    return " x ".join(parts)


def render_grid(grid: dict, axes: list[Axis], variants: list[Variant] = ()) -> str:
    plan = grid["plan"]
    seeds = plan["seeds"]
    lines = [f"# Design grid: {_title(axes, variants)}", ""]
    if variants:
        lines += ["| Variant | Overrides of the base config |", "|---|---|"]
        lines += [
            f"| {v.name} | {'; '.join(f'`{k}={json.dumps(x)}`' for k, x in v.overrides.items()) or '(base)'} |"
            for v in variants
        ]
        lines.append("")
    lines += [
        (
            f"Base: preset {grid['preset']}; sizes {plan['samples']}; seeds {seeds} "
            f"({len(seeds)} run(s) per size and cell). Each cell is a full sweep with its own report "
            "(`cells/<cell>/report.md`). Val PPL and ER are at the largest size (mean ± sd over seeds); Phase 1 "
            "figures are the mean over all the cell's runs. Context gap: the train cache's final-layer contexts against "
            "the true recurrence's on the first 2,048 train tokens (relative norm; about 0 for a sequential train cache). "
            "Seconds: the cell's whole sweep, per seed."
        ),
        "",
        (
            "| Cell | Runs | alpha | 95% t-interval | seed spread 95% | Val PPL (largest N) | Test PPL | Val bits/byte | "
            "Val ER | Phase 1 Iter | Phase 1 final rate | Train ER | Context gap | Seconds |"
        ),
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in grid["cells"]:
        alpha = "-" if c["alpha"] is None else f"{c['alpha']:.3f}"
        lines.append(
            f"| [{c['cell']}]({c['dir']}/report.md) | {c['runs']} | {alpha} | {ci(c['alpha_ci95'])} | "
            f"{ci(c['alpha_seed_spread_ci95'])} | {spread(c['val_ppl'], fixed(1))} | {spread(c['test_ppl'], fixed(1))} | "
            f"{spread(c['val_bpb'], fixed(3))} | {spread(c['val_er'], pct)} | "
            f"{spread(c['phase1_iterations'], fixed(1))} | {spread(c['phase1_final_rate'], pct)} | "
            f"{spread(c['train_er'], pct)} | {spread(c['context_gap'], pct)} | "
            f"{spread(c['seconds'], fixed(0))} |"
        )
    if grid["paired"]:
        lines += ["", f"## Every cell against {grid['cells'][0]['cell']}, at the largest size", ""]
        lines += [
            rule_text(grid["margin"]),
            "",
            paired_table([p if "error" in p else Paired(**p) for p in grid["paired"]]),
        ]
    lines += [
        "",
        "## Does Phase 1 predict the result? (Spearman rank correlation across cells)",
        "",
        f"With {len(grid['cells'])} cells a p-value cannot be small; read rho as a direction, not a finding.",
        "",
        "| Phase 1 figure | Outcome | Cells | rho | p |",
        "|---|---|---:|---:|---:|",
    ]
    for r in grid["correlations"]:
        rho = r["note"] if r["rho"] is None else f"{r['rho']:+.2f}"
        p = "-" if r["p"] is None else f"{r['p']:.2f}"
        lines.append(f"| {r['x']} | {r['y']} | {r['cells']} | {rho} | {p} |")
    failed = [c for c in grid["cells"] if c["failures"]]
    if failed:
        lines += ["", "Cells with failed runs: " + ", ".join(f"{c['cell']} ({c['failures']})" for c in failed)]
    lines += ["", "![grid](grid.png)", ""]
    return "\n".join(lines)


def plot_grid(grid: dict, all_results: dict, axes: list[Axis], path: Path) -> None:
    """Every cell's curve on one log-log plot, and for two axes a heat map of
    the largest size's val PPL annotated with alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    two = len(axes) == 2
    fig, axs = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 7, 5))
    curve_ax = axs[0] if two else axs
    for name, results in all_results.items():
        plot_curve(curve_ax, results, label=name, band=False)
    curve_ax.legend(fontsize=7)
    curve_ax.set_title("validation PPL per cell")
    if two:
        a, b = axes
        grid_vals = [[math.nan] * len(b.values) for _ in a.values]
        notes = [[""] * len(b.values) for _ in a.values]
        for c in grid["cells"]:
            i = a.values.index(c["overrides"][a.key])
            j = b.values.index(c["overrides"][b.key])
            if c["val_ppl"] is not None:
                grid_vals[i][j] = c["val_ppl"]["mean"]
                notes[i][j] = f"{c['val_ppl']['mean']:.0f}\nalpha " + (
                    "-" if c["alpha"] is None else f"{c['alpha']:.2f}"
                )
        ax = axs[1]
        im = ax.imshow(grid_vals, cmap="viridis_r", aspect="auto")
        for i in range(len(a.values)):
            for j in range(len(b.values)):
                ax.text(j, i, notes[i][j], ha="center", va="center", color="white", fontsize=9)
        ax.set_xticks(range(len(b.values)), [str(v) for v in b.values])
        ax.set_yticks(range(len(a.values)), [str(v) for v in a.values])
        ax.set_xlabel(b.key)
        ax.set_ylabel(a.key)
        ax.set_title(f"val PPL at the largest size (mean of {len(grid['plan']['seeds'])} seed(s)) and alpha")
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)

"""``cvfp report FOLDER``: rebuild the reports of a sweep, a grid or a comparison from what it stored.

Older files are read in one place each: configs by ``cvfp.strict.upgrade_run_dict``, results and their runs by
``cvfp.experiments.results.check_format``; a grid's rows and a comparison's pairs are always recomputed from
the runs, so no report reads a field that an older cvfp did not write.

A sweep folder holds ``results.json`` (its runs); a grid folder ``plan.json`` and ``grid.json`` with one sweep
per cell under ``cells/``; a comparison folder a ``results.json`` naming its architectures, one sweep per
architecture (and its search grids). Every report is rebuilt from the sweeps' stored runs with this version's
statistics (older results files are upgraded and written back in this version's format), never by training
anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.config import ConfigError
from cvfp.errors import CvfpError
from cvfp.experiments.paired import MARGIN, check_pairs, merged_pairs
from cvfp.experiments.report import terminal_summary, write_report
from cvfp.experiments.results import ResultsFormatError, check_format
from cvfp.io.rundir import read_json, write_json_atomic
from cvfp.models.registry import names


def read_results(folder: Path) -> dict:
    """A sweep's results.json in this version's format, or a one-line ResultsFormatError."""
    path = Path(folder) / "results.json"
    try:
        return check_format(read_json(path), str(path))
    except FileNotFoundError:
        raise ResultsFormatError(f"{path} does not exist: not a cvfp sweep, grid or comparison folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsFormatError(f"{path} cannot be read as JSON: {err}") from None


def rebuild(folder: Path, pairs: list[tuple[str, str]] = ()) -> tuple[str, Path]:
    """Rebuild the folder's report; (text for the terminal, the report's path). A comparison's report adds
    ``pairs`` (A, B) to the pairs it stored, kept for later rebuilds."""
    folder = Path(folder)
    try:
        stored = None if (folder / "grid.json").exists() else _compare_record(folder)
        if stored is not None:
            stored["pairs"] = merged_pairs(stored.get("pairs", []), pairs)
            check_pairs(stored["pairs"], stored["archs"])
            return _compare(folder, stored)
        if pairs:
            raise ConfigError(f"--pair: {folder} is not a comparison folder (cvfp compare's output)")
        if (folder / "grid.json").exists():
            return _grid(folder)
        results = _sweep(folder)
        return terminal_summary(results), folder / "report.md"
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # a hand-edited or damaged file
        if isinstance(err, CvfpError):
            raise
        raise ResultsFormatError(f"{folder} holds a malformed record: {type(err).__name__}: {err}") from None


def _compare_record(folder: Path) -> dict | None:
    """A comparison folder's stored record (None for any other folder)."""
    stored = read_json(folder / "results.json") if (folder / "results.json").exists() else None
    if isinstance(stored, dict) and "archs" in stored:
        return stored
    archs = [arch for arch in names() if (folder / arch / "results.json").exists()]
    if stored is None and archs:  # a comparison written before it stored its own results.json
        return {"archs": archs, "search_samples": None, "margin": MARGIN}
    return None


def _sweep(folder: Path) -> dict:
    """A sweep's report and plots, and its results.json in this version's format (its fits recomputed);
    returns the results."""
    results = read_results(folder)
    write_json_atomic(folder / "results.json", results)
    write_report(results, folder)
    return results


def regrid(folder: Path):
    """A grid folder's record rebuilt from its cells' stored runs, each cell's own report rebuilt on the way:
    (grid, results per cell, axes, variants)."""
    from cvfp.experiments.grid import Axis, Cell, Variant, grid_record

    stored, plan = read_json(folder / "grid.json"), read_json(folder / "plan.json")
    axes = [Axis(key, tuple(values)) for key, values in plan["axes"].items()]
    variants = [Variant(name, overrides) for name, overrides in plan.get("variants", {}).items()]
    cells = [Cell(row["cell"], row["overrides"], None) for row in stored["cells"]]
    all_results = {cell.name: _sweep(folder / "cells" / cell.name) for cell in cells}  # every cell's report too
    grid = grid_record(plan, stored.get("preset"), cells, all_results, stored.get("margin", MARGIN))
    return grid, all_results, axes, variants


def _grid(folder: Path) -> tuple[str, Path]:
    from cvfp.experiments.grid import write_grid

    write_grid(folder, *regrid(folder))
    return (folder / "grid.md").read_text(encoding="utf-8"), folder / "grid.md"


def _compare(folder: Path, stored: dict) -> tuple[str, Path]:
    from cvfp.experiments.compare import best_cell, write_compare

    if "tuning" in stored:
        return _tuned_compare(folder, stored)
    results = {arch: _sweep(folder / arch) for arch in stored["archs"]}  # every model's own report first
    searched = [arch for arch in stored["archs"] if (folder / arch / "search" / "grid.json").exists()]
    tuned = {arch: best_cell(regrid(folder / arch / "search")[0]) for arch in searched}
    search_size = stored["search_samples"] or max(p["samples"] for r in results.values() for p in r["points"])
    write_compare(folder, results, tuned, search_size, stored["margin"], variants=stored.get("variants"),
                  asked=stored["pairs"])  # fmt: skip
    return (folder / "compare.md").read_text(encoding="utf-8"), folder / "compare.md"


def _tuned_compare(folder: Path, stored: dict) -> tuple[str, Path]:
    """A ``compare --tune`` folder: each trained model's tuned curve, its choices recomputed from its tuning runs."""
    from cvfp.experiments.compare import write_compare
    from cvfp.experiments.grid import Axis
    from cvfp.experiments.tune import Tuned, Tuning, choose

    record = stored["tuning"]
    tuning = Tuning(tuple(Axis(k, tuple(v)) for k, v in record["grid"].items()), tuple(record["seeds"]))
    results, choices = {}, {}
    for arch in stored["archs"]:
        if arch not in record["choices"]:  # a counted model: its one sweep
            results[arch] = _sweep(folder / arch)
            continue
        names = list(record["choices"][arch][0]["val_loss"])  # every cell of the grid, in its order
        cells = {name: read_results(folder / arch / "tune" / name) for name in names}
        settings = {name: _cell_overrides(name, tuning) for name in names}
        choices[arch] = [choose(ch["samples"], settings, cells) for ch in record["choices"][arch]]
        results[arch] = _sweep(folder / arch / "tuned")
    tuned = Tuned(tuning, choices)
    write_compare(folder, results, {}, stored["search_samples"], stored["margin"], tuned, stored.get("variants"),
                  stored["pairs"])  # fmt: skip
    return (folder / "compare.md").read_text(encoding="utf-8"), folder / "compare.md"


def _cell_overrides(name: str, tuning) -> dict:
    """A tuning cell's setting from its name ("key=value,key=value"), each value as the grid declared it."""
    values = dict(part.split("=", 1) for part in name.split(","))
    return {a.key: next(v for v in a.values if str(v) == values[a.key]) for a in tuning.axes}

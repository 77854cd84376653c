"""``cvfp report FOLDER``: rebuild the reports of a sweep, a grid or a comparison from what it stored.

A sweep folder holds ``results.json`` (its runs); a grid folder ``plan.json`` and ``grid.json`` with one sweep
per cell under ``cells/``; a comparison folder a ``results.json`` naming its architectures, one sweep per
architecture (and its search grids). Every report is rebuilt from the sweeps' stored runs with this version's
statistics (older results files are upgraded on reading), never by training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from cvfp.experiments.results import ResultsFormatError, check_format
from cvfp.io.rundir import read_json


def read_results(folder: Path) -> dict:
    """A sweep's results.json in this version's format, or a one-line ResultsFormatError."""
    path = Path(folder) / "results.json"
    try:
        return check_format(read_json(path), str(path))
    except FileNotFoundError:
        raise ResultsFormatError(f"{path} does not exist: not a cvfp sweep, grid or comparison folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsFormatError(f"{path} cannot be read as JSON: {err}") from None


def rebuild(folder: Path) -> tuple[str, Path]:
    """Rebuild the folder's report; (text for the terminal, the report's path)."""
    folder = Path(folder)
    try:
        if (folder / "grid.json").exists():
            return _grid(folder)
        stored = read_json(folder / "results.json") if (folder / "results.json").exists() else None
        if isinstance(stored, dict) and "archs" in stored:
            return _compare(folder, stored)
        return _sweep(folder)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # a hand-edited or damaged file
        if isinstance(err, ResultsFormatError):
            raise
        raise ResultsFormatError(f"{folder} holds a malformed record: {type(err).__name__}: {err}") from None


def _sweep(folder: Path) -> tuple[str, Path]:
    from cvfp.experiments.report import terminal_summary, write_report

    results = read_results(folder)
    return terminal_summary(results), write_report(results, folder)


def _grid(folder: Path) -> tuple[str, Path]:
    from cvfp.experiments.grid import Axis, Cell, Variant, grid_record, write_grid

    stored, plan = read_json(folder / "grid.json"), read_json(folder / "plan.json")
    axes = [Axis(key, tuple(values)) for key, values in plan["axes"].items()]
    variants = [Variant(name, overrides) for name, overrides in plan.get("variants", {}).items()]
    cells = [Cell(row["cell"], row["overrides"], None) for row in stored["cells"]]
    all_results = {cell.name: read_results(folder / "cells" / cell.name) for cell in cells}
    grid = grid_record(plan, stored.get("preset"), cells, all_results, stored.get("margin", 0.01))
    write_grid(folder, grid, all_results, axes, variants)
    return (folder / "grid.md").read_text(encoding="utf-8"), folder / "grid.md"


def _compare(folder: Path, stored: dict) -> tuple[str, Path]:
    from cvfp.experiments.compare import best_cell, write_compare

    results = {arch: read_results(folder / arch) for arch in stored["archs"]}
    tuned = {
        arch: best_cell(read_json(folder / arch / "search" / "grid.json"))
        for arch in stored["archs"]
        if (folder / arch / "search" / "grid.json").exists()
    }
    write_compare(folder, results, tuned, stored["search_samples"], stored["margin"])
    return (folder / "compare.md").read_text(encoding="utf-8"), folder / "compare.md"

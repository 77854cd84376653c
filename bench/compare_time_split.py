"""Where a compare run's wall time went, from its own records: per architecture, the minutes spent training
rows, in the per-epoch fixed work (validation scoring, the state save), and outside the epochs.

Every Phase 2 epoch record carries its seconds, and every point its train tokens, so within one sweep the
epochs' seconds are fitted as ``ms_per_train_row x train tokens + fixed`` (least squares over every epoch of
every size); ``fixed / validation tokens`` is then the cost of scoring one validation row (plus the epoch's
small fixed work). With the head's GEMM floors (``bench/head_throughput.py``: ms per train row for the three
products of a step, per scored row for one) it prints what those products alone would take for the rows the
run trained and scored.

    python bench/compare_time_split.py runs/compare-timed3 [--train-floor-ms 1.507 --score-floor-ms 0.498]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class SweepSplit:
    arch: str
    minutes: float  # the points' seconds, summed
    epochs: int  # epochs run, summed over the points
    train_rows: int  # epochs x train tokens, summed
    scored_rows: int  # validation rows every epoch, then the test rows once per trained point
    ms_per_train_row: float | None  # the fit's slope (None: no epochs, the n-gram model)
    fixed_seconds_per_epoch: float | None  # its intercept
    val_ms_per_row: float | None  # the intercept per validation row
    outside_epochs_minutes: float  # Phase 1, caches, test scoring, checkpoints, plots


def sweep_split(folder: Path) -> SweepSplit:
    """The split of one sweep folder, from its results.json (each point's seconds and epoch records)."""
    points = json.loads((folder / "results.json").read_text())["points"]
    tokens, seconds, outside, train_rows, scored_rows, val_tokens = [], [], 0.0, 0, 0, None
    for p in points:
        epochs = [r["seconds"] for r in p.get("epochs") or []]
        tokens += [p["train_tokens"]] * len(epochs)
        seconds += epochs
        outside += p["seconds"] - sum(epochs)
        train_rows += p["train_tokens"] * len(epochs)
        if epochs:
            scored_rows += p["val_tokens"] * len(epochs) + p["test_tokens"]
        val_tokens = p["val_tokens"]
    slope = intercept = None
    if len(set(tokens)) >= 2:  # a line needs two sizes
        slope, intercept = np.polyfit(np.array(tokens, dtype=float), np.array(seconds), 1)
    return SweepSplit(
        arch=folder.name,
        minutes=sum(p["seconds"] for p in points) / 60,
        epochs=len(seconds),
        train_rows=train_rows,
        scored_rows=scored_rows,
        ms_per_train_row=None if slope is None else slope * 1e3,
        fixed_seconds_per_epoch=intercept,
        val_ms_per_row=None if intercept is None or not val_tokens else intercept / val_tokens * 1e3,
        outside_epochs_minutes=outside / 60,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a cvfp compare --out folder")
    parser.add_argument("--train-floor-ms", type=float, default=None, help="the head's three GEMMs per train row")
    parser.add_argument("--score-floor-ms", type=float, default=None, help="the head's one GEMM per scored row")
    args = parser.parse_args()
    folders = sorted(p.parent for p in args.folder.glob("*/results.json"))
    if not folders:
        raise SystemExit(f"no sweep folders (*/results.json) under {args.folder}")
    splits = [sweep_split(f) for f in folders]
    print(
        "| Sweep | Minutes | Epochs | Train rows | Scored rows | ms per train row | Fixed s per epoch "
        "| = ms per validation row | Minutes outside epochs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in splits:
        print(f"| {s.arch} | {s.minutes:.1f} | {s.epochs} | {s.train_rows:,} | {s.scored_rows:,} "
              f"| {_fmt(s.ms_per_train_row, '.3f')} | {_fmt(s.fixed_seconds_per_epoch, '.1f')} "
              f"| {_fmt(s.val_ms_per_row, '.3f')} | {s.outside_epochs_minutes:.1f} |")  # fmt: skip
    fitted = [s for s in splits if s.ms_per_train_row is not None]
    train_min = sum(s.ms_per_train_row * s.train_rows for s in fitted) / 6e4
    fixed_min = sum(s.fixed_seconds_per_epoch * s.epochs for s in fitted) / 60
    outside_min = sum(s.outside_epochs_minutes for s in splits)
    train_rows, scored_rows = sum(s.train_rows for s in splits), sum(s.scored_rows for s in splits)
    print(f"\nSum of the points: {sum(s.minutes for s in splits):.1f} min = training rows {train_min:.1f} "
          f"+ per-epoch fixed work {fixed_min:.1f} + outside the epochs {outside_min:.1f} "
          f"(fit residual {sum(s.minutes for s in splits) - train_min - fixed_min - outside_min:+.1f})")  # fmt: skip
    print(f"Rows: {train_rows:,} trained, {scored_rows:,} scored")
    if args.train_floor_ms is not None and args.score_floor_ms is not None:
        floor = (train_rows * args.train_floor_ms + scored_rows * args.score_floor_ms) / 6e4
        print(
            f"The head's GEMMs alone for those rows at {args.train_floor_ms} / {args.score_floor_ms} ms: "
            f"{floor:.1f} min"
        )


if __name__ == "__main__":
    main()

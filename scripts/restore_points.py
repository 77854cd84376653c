"""Recreate the finished-run markers of a comparison copied into docs/sweeps, so a rerun continues it.

docs/sweeps keeps each sweep's results.json and reports, not its points/ folders (checkpoints, caches).
A rerun of the same command skips a run only when ``points/n<N>-seed<S>/`` holds its summary.json and
config.json. This script writes those two files for every run recorded in every results.json under FROM,
into the same layout under TO: the summary is the run's stored record and the config the one stored in
results.json's settings (so a rerun whose config differs is still refused, naming the fields). A run's
markers go into the deepest folder that records it: a tuned model's ``tuned/results.json`` gathers its sizes,
each trained by the sweep in ``tuned/n<N>/``.

    python scripts/restore_points.py docs/sweeps/medium-tuned-cpu runs/compare-medium-tuned

Runs cut before their summary was written are not recorded in results.json and train again.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cvfp.config import RunConfig
from cvfp.experiments.sweep import point_dir
from cvfp.io.rundir import read_json, write_json_atomic


def restore(source: Path, target: Path) -> int:
    """Copy every results.json under ``source`` into ``target`` and write the markers of each run a sweep
    recorded; return the runs written."""
    records = {path.parent: read_json(path) for path in sorted(source.rglob("results.json"))}
    recording = [folder for folder, results in records.items() if "points" in results]
    # a tuned model's record of its sizes holds folders that record them too: only the deepest trained them
    sweeps = {folder for folder in recording if not any(folder in other.parents for other in recording)}
    written = 0
    for published, results in records.items():
        folder = target / published.relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(published / "results.json", folder / "results.json")
        if published not in sweeps:
            continue
        cfg = RunConfig.from_dict(results["settings"]["config"])
        for point in results["points"]:
            run = point_dir(folder, point["samples"], point["seed"])
            if (run / "summary.json").exists():
                continue  # a run this machine trained: its own files stay
            run.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run / "config.json", cfg.point(point["samples"], point["seed"]).to_dict())
            write_json_atomic(run / "summary.json", point)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a comparison folder under docs/sweeps")
    parser.add_argument("target", type=Path, help="the --out folder of the rerun")
    args = parser.parse_args()
    print(f"{restore(args.source, args.target)} finished runs restored into {args.target}")


if __name__ == "__main__":
    main()

"""Copy a comparison's records and reports from its run folder into docs/sweeps: restore_points' counterpart.

For every folder under FROM (outside ``points/``, which holds checkpoints and caches) that has a results.json,
its results.json, reports (*.md) and figures (*.png) go to the same path under TO, unless TO already holds a
results.json that records the same runs (a sweep: the same ``points`` and ``failures``; a comparison's own
record: the same everything but ``environment``). A rerun that only skipped finished runs rewrites its
sweeps' files with its own revision, thread count and config serialisation; the published ones keep naming
the revision and settings that trained them. Name model folders to publish only those.

    python scripts/publish_points.py runs/medium-b docs/sweeps/medium-tuned-cpu lm-k1 lm-k4

restore_points.py reads such a folder back into a run folder, so the next session continues it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cvfp.io.rundir import read_json

COPIED = ("results.json", "*.md", "*.png")


def _recorded(results: dict) -> dict:
    """What a results.json says about runs: a sweep's runs and failures, or a comparison's record."""
    if "points" in results:
        return {"points": results["points"], "failures": results.get("failures")}
    return {key: value for key, value in results.items() if key != "environment"}


def _changed(source: Path, target: Path) -> bool:
    """Whether the folder ``source`` records runs or a comparison that the published ``target`` does not."""
    if not (target / "results.json").exists():
        return True
    return _recorded(read_json(source / "results.json")) != _recorded(read_json(target / "results.json"))


def publish(source: Path, target: Path, models: list[str] | None = None) -> list[Path]:
    """Copy each changed sweep folder's records, reports and figures; return the copied files under ``target``."""
    roots = [source / model for model in models] if models else [source]
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such model folder to publish")
    copied = []
    for root in roots:
        for record in sorted(root.rglob("results.json")):
            folder = record.parent
            if "points" in folder.relative_to(source).parts:
                continue
            published = target / folder.relative_to(source)
            if not _changed(folder, published):
                continue
            published.mkdir(parents=True, exist_ok=True)
            for pattern in COPIED:
                for file in sorted(folder.glob(pattern)):
                    shutil.copy2(file, published / file.name)
                    copied.append(published / file.name)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the --out folder of a comparison")
    parser.add_argument("target", type=Path, help="its folder under docs/sweeps")
    parser.add_argument("models", nargs="*", help="model folders to publish (default: all)")
    args = parser.parse_args()
    copied = publish(args.source, args.target, args.models or None)
    print(f"{len(copied)} files published into {args.target}")


if __name__ == "__main__":
    main()

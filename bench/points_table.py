"""Time, tokens per second of each phase and peak memory of every point of a sweep folder.

python bench/points_table.py runs/gpu-bench
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    rows = []
    for path in sorted(Path(sys.argv[1]).glob("points/*/summary.json")):
        s = json.loads(path.read_text())
        tokens = s["train_tokens"]
        p1 = s.get("phase1_seconds") or 0.0
        iters = max(1, (s.get("phase1_iterations") or 1) - 1)
        epochs = max(1, s.get("stopped_epoch") or 1)
        memory = s.get("memory") or {}
        rows.append((s["samples"], s["seed"], tokens, s["seconds"], tokens * iters / p1 if p1 else None,
                     s.get("cache_seconds"), tokens * epochs / s["phase2_seconds"] if s["phase2_seconds"] else None,
                     memory.get("peak_rss_bytes"), memory.get("peak_cuda_bytes"), s["val_ppl"]))  # fmt: skip
    rows.sort()
    print(f"{'N':>6}{'seed':>6}{'train tokens':>14}{'total s':>9}{'phase 1 tok/s':>15}{'caches s':>10}"
          f"{'phase 2 tok/s':>15}{'peak RSS GB':>13}{'CUDA peak GB':>14}{'val PPL':>10}")  # fmt: skip
    for n, seed, tokens, total, p1, cache, p2, rss, cuda, ppl in rows:
        print(f"{n:>6}{seed:>6}{tokens:>14,}{total:>9.1f}{fmt(p1, ',.0f'):>15}{fmt(cache, '.1f'):>10}{fmt(p2, ',.0f'):>15}"
              f"{fmt(rss and rss / 1e9, '.2f'):>13}{fmt(cuda and cuda / 1e9, '.2f'):>14}{ppl:>10.1f}")  # fmt: skip
    if not rows:
        raise SystemExit(f"no finished points under {sys.argv[1]}/points")


if __name__ == "__main__":
    main()

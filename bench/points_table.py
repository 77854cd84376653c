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
    print("| N | seed | train tokens | total s | phase 1 tok/s | caches s | phase 2 tok/s | peak RSS GB | CUDA peak GB "
          "| val PPL |")  # fmt: skip
    print("|---:" * 10 + "|")
    for n, seed, tokens, total, p1, cache, p2, rss, cuda, ppl in rows:
        cells = [str(n), str(seed), f"{tokens:,}", f"{total:.1f}", fmt(p1, ",.0f"), fmt(cache, ".1f"), fmt(p2, ",.0f"),
                 fmt(rss and rss / 1e9, ".2f"), fmt(cuda and cuda / 1e9, ".2f"), f"{ppl:.1f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    if not rows:
        raise SystemExit(f"no finished points under {sys.argv[1]}/points")


if __name__ == "__main__":
    main()

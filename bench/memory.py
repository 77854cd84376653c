"""Peak memory per training token: one run configuration at two sizes, each in its own process.

Runs ``cvfp train`` at each of ``--samples`` (default 30 and 120, the seed
config with a 64-wide random table, 3 Phase 1 iterations and 1 Phase 2 epoch:
the probe of the scale issue), reads each point's peak resident memory and
CUDA peak from its summary (measured from the point's start, after the corpus
and table are loaded: ``cvfp.training.memory``) and the whole child
process's peak from the kernel (``os.wait4``), and
prints the slope between the two sizes in bytes per training token, and the
estimate ``cvfp.training.memory`` made before the run started. Extra
``--set`` options are passed through (e.g. ``--set
phase2.cache_dtype=bfloat16``).

    python bench/memory.py [--samples 30,120] [--set phase2.cache_dtype=bfloat16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = ["--preset", "seed", "--embeddings", "random-64", "--set", "phase1.max_iterations=3", "--set",
         "phase2.epochs=1"]  # fmt: skip


def run(samples: int, probe: list[str], device: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cvfp.cli", "train", *probe, "--samples", str(samples), "--device", device,
           "--out", str(out), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    process_rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"samples": samples, "tokens": summary["train_tokens"], "process_rss": process_rss,
            "rss": summary["memory"]["peak_rss_bytes"],
            "cuda": summary["memory"]["peak_cuda_bytes"], "estimate": summary["memory"]["estimate_bytes"],
            "seconds": summary["seconds"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="30,120")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", default=None, help="replace the probe's cvfp train options (one string)")
    args = parser.parse_args()
    probe = (PROBE if args.probe is None else args.probe.split()) + [x for s in args.overrides for x in ("--set", s)]
    sizes = [int(s) for s in args.samples.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, probe, args.device, Path(tmp) / f"n{n}") for n in sizes]
    print(f"probe: cvfp train {' '.join(probe)} --device {args.device}")
    print("| samples | train tokens | process peak GB | point peak GB | CUDA peak GB | estimate GB | seconds |")
    print("|---:" * 7 + "|")
    for r in rows:
        cuda = "-" if r["cuda"] is None else f"{r['cuda'] / 1e9:.2f}"
        cells = [str(r["samples"]), f"{r['tokens']:,}", f"{r['process_rss'] / 1e9:.2f}", f"{r['rss'] / 1e9:.2f}", cuda,
                 f"{r['estimate'] / 1e9:.2f}", f"{r['seconds']:.0f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    a, b = rows[0], rows[-1]
    dt = b["tokens"] - a["tokens"]
    print(
        f"slope: {(b['rss'] - a['rss']) / dt:,.0f} bytes of the point's peak RSS per train token "
        f"({(b['process_rss'] - a['process_rss']) / dt:,.0f} of the whole process's)",
        end="",
    )
    if a["cuda"] is not None:
        print(f", {(b['cuda'] - a['cuda']) / dt:,.0f} bytes of CUDA peak per train token", end="")
    print(f"; fixed part {(a['rss'] - (b['rss'] - a['rss']) / dt * a['tokens']) / 1e9:.2f} GB (RSS)")


if __name__ == "__main__":
    main()

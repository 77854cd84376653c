"""How exactly a resumed point matches an uninterrupted one, on this device.

    python bench/resume.py --preset quick --samples 16 --interrupt-at 3 [--device cuda]

Trains the point twice in a temporary folder: once straight through, once interrupted when it logs its
``--interrupt-at``-th metric record (Phase 1 iterations count first, then Phase 2 epochs) and rerun. Prints
the largest difference in validation loss over the epochs and in the checkpoint's weights. On CPU both
are 0 (tests/test_resume.py asserts it); on CUDA this is the measurement behind the stated tolerance.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from cvfp.cli import build_config
from cvfp.cli_args import add_run_options
from cvfp.io.rundir import RunDir, read_json
from cvfp.training.point import RunOptions, train_point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser, "the point's sample count")
    parser.add_argument("--interrupt-at", type=int, default=3, help="the metric record to interrupt at")
    args = parser.parse_args()
    cfg, samples = build_config(args)
    n = samples[-1]
    with tempfile.TemporaryDirectory() as tmp:
        straight, resumed = Path(tmp) / "straight", Path(tmp) / "resumed"
        train_point(cfg, n, straight, options=RunOptions(cache_dir=args.cache_dir, progress=False))
        original, count = RunDir.log_metric, []

        def log_metric(self, record):
            original(self, record)
            count.append(1)
            if len(count) == args.interrupt_at:
                raise KeyboardInterrupt

        RunDir.log_metric = log_metric
        try:
            train_point(cfg, n, resumed, options=RunOptions(cache_dir=args.cache_dir, progress=False))
        except KeyboardInterrupt:
            print(f"interrupted at metric record {args.interrupt_at}; resuming")
        RunDir.log_metric = original
        train_point(cfg, n, resumed, options=RunOptions(cache_dir=args.cache_dir, progress=False))
        a, b = read_json(straight / "summary.json"), read_json(resumed / "summary.json")
        losses = [abs(x["val_loss"] - y["val_loss"]) for x, y in zip(a["epochs"], b["epochs"], strict=True)]
        wa = load_file(str(straight / "checkpoint" / "model.safetensors"))
        wb = load_file(str(resumed / "checkpoint" / "model.safetensors"))
        weights = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        print(
            f"device {cfg.device}: epochs {len(a['epochs'])} vs {len(b['epochs'])}, best epoch {a['best_epoch']} "
            f"vs {b['best_epoch']}; largest |val loss difference| {max(losses):.3e}; largest |weight difference| "
            f"{weights:.3e}; bitwise equal: {max(losses) == 0 and weights == 0}"
        )


if __name__ == "__main__":
    main()

"""Choose the offline default embedding table by measurement (issue 3).

Runs the seed protocol on the default corpus with each offline table and
everything else equal, and prints validation bits per byte (PPLs under
different tokenizers are not comparable).

    python bench/compare_embeddings.py --samples 50 --out runs/embeddings
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cvfp.config import DataConfig, ModelConfig, Phase2Config, RunConfig
from cvfp.io.rundir import read_json, write_json_atomic
from cvfp.training.point import train_point

TABLES = ("whisper-tiny-en", "smollm2-135m", "random-384")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50, help="training conversations")
    parser.add_argument("--epochs", type=int, default=3, help="max Phase 2 epochs (patience 1, as the seed)")
    parser.add_argument("--out", type=Path, default=Path("runs/embeddings"), help="output folder (resumable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    rows = []
    for name in TABLES:
        cfg = RunConfig(
            model=ModelConfig(num_layers=2, context_dim=256),
            phase2=Phase2Config(epochs=args.epochs, patience=1),
            data=DataConfig(corpus="sharegpt", embeddings=name, protocol="seed"),
            device="cpu",
        )
        out = args.out / name
        summary = (
            read_json(out / "summary.json")
            if (out / "summary.json").exists()
            else train_point(cfg, args.samples, out, progress=False)
        )
        rows.append((name, summary))
    lines = [
        "| Embeddings | Train tokens | Val bits/byte | Val PPL (own tokenizer) | Val acc | Best/stop epoch | Time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['train_tokens']:,} | {s['val_bpb']:.3f} | {s['val_ppl']:.1f} | "
            f"{100 * s['val_acc']:.1f}% | {s['best_epoch']}/{s['stopped_epoch']} | {s['seconds'] / 60:.1f} min |"
        )
    table = "\n".join(lines)
    write_json_atomic(args.out / "table.json", {"rows": [{"embeddings": n, **s} for n, s in rows]})
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()

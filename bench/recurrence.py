"""The sequential recurrence: the fast loop against the plain per-token loop, and Jacobi evaluation.

Times, on one stream (batch 1) at the seed config (6 layers, C = 768; E = 768,
the GPT-2 table the seed used), the plain per-token loop
(``recurrence.sequential_reference``: ``model.context_step`` per token), the
fast loop (``recurrence.sequential``: every layer's token half for the whole
chunk in one GEMM, then only the C x C half per step) and, with
``--streams S``, S independent streams side by side. Both loops run in the
same process on the same tokens, alternately; the fastest of the repeats
counts (other jobs on a shared machine only slow a run down). The loops must
agree: the largest difference of any context entry is printed.

With ``--checkpoint DIR`` (a trained CVFP model) it also runs Jacobi
evaluation on a stream of ``--jacobi-tokens`` tokens at several tolerances
and prints sweeps, residual, the largest error against the sequential
contexts and the PPL of both (random tokens, or ``--text FILE`` tokenised
with the checkpoint's tokenizer).

    python bench/recurrence.py [--device cpu|cuda] [--tokens 2000] [--streams 8]
    python bench/recurrence.py --checkpoint runs/quick/points/n64/checkpoint --text some.txt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from timing import seconds  # bench/timing.py (scripts run from bench/)

from cvfp.config import ModelConfig
from cvfp.inference import CVFPLM
from cvfp.models import build_model
from cvfp.models.recurrence import jacobi, sequential, sequential_reference, sequential_streams


def fastest(fn, repeats: int, device: torch.device) -> float:
    return min(seconds(fn, device) for _ in range(repeats))


def loops(args: argparse.Namespace, device: torch.device) -> None:
    cfg = ModelConfig(num_layers=args.layers, context_dim=args.context_dim, embed_dim=args.embed_dim,
                      vocab_size=args.vocab)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    model = build_model(cfg, torch.randn(args.vocab, args.embed_dim, generator=g), seed=0).to(device).eval()
    ids = torch.randint(0, args.vocab, (args.tokens + 1,), generator=g).to(device)
    plain = sequential_reference(model, ids)
    loops = {"fast loop": {"cuda_graphs": False}}
    if device.type == "cuda":
        loops["fast loop, CUDA graphs"] = {"cuda_graphs": True}
    diffs = {name: (plain - torch.cat([f for _, f in sequential(model, ids, **kw)])).abs().max().item()
             for name, kw in loops.items()}  # fmt: skip
    times = {name: [] for name in ["plain", *loops]}
    for _ in range(args.repeats):  # alternate, so that all see the same machine
        times["plain"].append(fastest(lambda: sequential_reference(model, ids), 1, device))
        for name, kw in loops.items():
            times[name].append(fastest(lambda kw=kw: list(sequential(model, ids, **kw)), 1, device))
    t_plain = min(times["plain"])
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; L = {args.layers}, "
          f"C = {args.context_dim}, E = {args.embed_dim}, {args.tokens} tokens, batch 1")  # fmt: skip
    print(f"plain per-token loop   {t_plain / args.tokens * 1e6:8.1f} us/token")
    for name in loops:
        t = min(times[name])
        print(f"{name:<23}{t / args.tokens * 1e6:8.1f} us/token   {t_plain / t:5.2f}x the plain loop"
              f"   (largest difference {diffs[name]:.1e})")  # fmt: skip
    if args.streams > 1:
        streams = [
            torch.randint(0, args.vocab, (args.tokens + 1,), generator=g).to(device) for _ in range(args.streams)
        ]
        t = fastest(lambda: sequential_streams(model, streams), args.repeats, device)
        total = args.streams * args.tokens
        print(f"{args.streams} streams side by side {t / total * 1e6:8.1f} us/token   {t_plain / args.tokens * total / t:5.2f}x "
              "the plain loop per token")  # fmt: skip


def jacobi_check(args: argparse.Namespace, device: torch.device) -> None:
    lm = CVFPLM.from_checkpoint(args.checkpoint, device=str(device))
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            tokens = np.asarray(lm.tokenizer.encode(f.read()))[: args.jacobi_tokens + 1]
    else:
        tokens = np.random.default_rng(0).integers(0, lm.model.cfg.vocab_size, args.jacobi_tokens + 1)
    ids = torch.as_tensor(tokens, device=device)
    start = time.perf_counter()
    exact = lm.evaluate([tokens])
    t_seq = time.perf_counter() - start
    truth = torch.cat([f for _, f in sequential(lm.model, ids)])
    print(f"\nJacobi evaluation, {args.checkpoint}, {len(tokens) - 1} tokens: sequential PPL {exact['ppl']:.6g} "
          f"({t_seq:.2f} s)")  # fmt: skip
    for tol in (1e-3, 1e-4, 1e-5):
        start = time.perf_counter()
        swept = lm.evaluate([tokens], jacobi_tolerance=tol, jacobi_max_sweeps=10_000)
        elapsed = time.perf_counter() - start
        error = (jacobi(lm.model, ids, tol, 10_000).finals - truth).abs().max().item()
        info = swept["jacobi"]
        print(f"  tolerance {tol:.0e}: {info['sweeps']:4d} sweeps, residual {info['residual']:.1e}, largest error "
              f"{error:.1e}, PPL {swept['ppl']:.6g} ({elapsed:.2f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--context-dim", type=int, default=768)
    parser.add_argument("--embed-dim", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=1000, help="does not enter the recurrence's cost")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--text", default=None)
    parser.add_argument("--jacobi-tokens", type=int, default=3000)
    args = parser.parse_args()
    device = torch.device(args.device)
    loops(args, device)
    if args.checkpoint:
        jacobi_check(args, device)


if __name__ == "__main__":
    main()

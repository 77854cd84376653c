"""The shared head's cost per token, fast paths beside their reference paths and a plain GEMM.

Every model ends in the same untied 576 x 49,152 head, and on a CPU that head
is most of a compare run's time. At the quick preset's batch (512 rows), on
random data with the default table's shape, this times:

- training: the loss and its gradients, as ``reference_cross_entropy``
  (``F.linear`` + ``F.cross_entropy`` + autograd) and as ``linear_cross_entropy``
  (chunked, gradients formed in the forward, logits in a reused buffer);
- scoring: ``F.linear`` + ``reference_row_scores`` (log-softmax copy, argmax)
  and ``head_logits`` into a reused buffer + ``row_scores`` (in place);
- the GEMMs alone: one ``torch.mm`` into a preallocated output (the floor of
  scoring) and three (the floor of a training step), and their rate beside a square
  2048 x 2048 product's (about the most this CPU's GEMM reaches),

as milliseconds per token and as a ratio to the GEMM floor measured in the
same run (the figure to read on a shared machine).

    python bench/head_throughput.py [--rows 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import VOCAB, WIDTH, mean_ms  # bench/timing.py (scripts run from bench/)

from cvfp.models.heads import (
    head_logits,
    linear_cross_entropy,
    reference_cross_entropy,
    reference_row_scores,
    row_scores,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512, help="rows (tokens) per call (quick preset: 512)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    b = args.rows
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(VOCAB, WIDTH, generator=gen) * 0.02).requires_grad_()
    bias = (torch.randn(VOCAB, generator=gen) * 0.1).requires_grad_()
    t = torch.randn(b, WIDTH, generator=gen).requires_grad_()
    targets = torch.randint(0, VOCAB, (b,), generator=gen)
    grad_logits = torch.randn(b, VOCAB, generator=gen)
    out = torch.empty(b, VOCAB)
    w, x = weight.detach(), t.detach()

    def train(loss_fn) -> Callable[[], None]:
        def step() -> None:
            weight.grad = bias.grad = t.grad = None
            loss_fn(t, weight, bias, targets).backward()

        return step

    def three_gemms() -> None:
        torch.mm(x, w.t(), out=out)
        grad_logits @ w
        grad_logits.t() @ x

    def reference_score() -> None:
        with torch.no_grad():
            reference_row_scores(F.linear(x, w, bias), targets)

    def fast_score() -> None:
        with torch.no_grad():
            row_scores(head_logits(x, w, bias.detach(), out=out), targets)

    rows = [
        ("GEMM floor of scoring: one torch.mm into a preallocated output", mean_ms(lambda: torch.mm(x, w.t(), out=out), args.repeats)),
        ("GEMM floor of training: the three torch.mm of a step", mean_ms(three_gemms, args.repeats)),
        ("training, reference (F.linear + F.cross_entropy + autograd)", mean_ms(train(reference_cross_entropy), args.repeats)),
        ("training, linear_cross_entropy", mean_ms(train(linear_cross_entropy), args.repeats)),
        ("scoring, reference (F.linear + log-softmax + argmax)", mean_ms(reference_score, args.repeats)),
        ("scoring, head_logits + row_scores", mean_ms(fast_score, args.repeats)),
    ]  # fmt: skip
    square = torch.randn(2048, 2048, generator=gen)
    square_ms = mean_ms(lambda: square @ square, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {b} rows, V = {VOCAB}, E = {WIDTH}")
    print("| part | ms per token | x its GEMM floor |")
    print("|---|---:|---:|")
    for name, ms in rows:
        floor = rows[1][1] if name.startswith(("training", "GEMM floor of training")) else rows[0][1]
        print(f"| {name} | {ms / b:.3f} | {ms / floor:.2f} |")
    head_flop = 2 * b * VOCAB * WIDTH  # one of the head's products
    print(
        f"\nGFLOP/s: the scoring floor {head_flop / rows[0][1] / 1e6:.0f}, the training floor "
        f"{3 * head_flop / rows[1][1] / 1e6:.0f}, a square 2048 x 2048 torch.mm {2 * 2048**3 / square_ms / 1e6:.0f}"
    )


if __name__ == "__main__":
    main()

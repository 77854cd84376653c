"""Phase 1 and Phase 2 steps against plain GEMMs of the same shapes, timed in the same process.

A step's useful work is its matrix products; everything else (softmax, LayerNorm,
the optimizer, Python) is overhead. For each phase this script counts the
step's matrix-product FLOPs analytically, times the real step (the code the
runner uses), times plain ``torch.mm`` calls of exactly the same shapes, and
prints the step's rate as a share of the plain GEMMs' rate (the target is
>= 85% on CPU). Shapes: the quick preset's (L = 2, C = 256) with the default
table's 49,152 x 576, or the seed preset's (L = 6, C = 768) with ``--preset
seed``. Weights are random: the values do not change the time.

    python bench/step_rate.py [--preset quick|seed] [--device cpu|cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import seconds  # bench/timing.py (scripts run from bench/)

from cvfp.models import build_model
from cvfp.models.heads import linear_cross_entropy
from cvfp.presets import quick_preset, seed_preset
from cvfp.training.next_token import make_adam
from cvfp.training.phase1 import diversity_loss

VOCAB, WIDTH = 49152, 576  # smollm2-135m


def plain_gemms(shapes: list[tuple[int, int, int]], device: torch.device) -> tuple[Callable[[], object], int]:
    """One plain (m x k) @ (k x n) product per shape, and their FLOPs."""
    mats = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for m, k, n in shapes]
    return (lambda: [a @ b for a, b in mats]), sum(2 * m * k * n for m, k, n in shapes)


def linear_shapes(rows: int, fan_in: int, out: int, grad_input: bool, grad_weight: bool) -> list[tuple[int, int, int]]:
    """The products of a Linear layer's forward and backward."""
    shapes = [(rows, fan_in, out)]  # y = x W^T
    if grad_input:
        shapes.append((rows, out, fan_in))  # dx = dy W
    if grad_weight:
        shapes.append((out, rows, fan_in))  # dW = dy^T x
    return shapes


def report(name: str, step: Callable[[], object], shapes: list[tuple[int, int, int]], device: torch.device,
           repeats: int, tokens: int) -> None:  # fmt: skip
    """Time the step and the plain GEMMs alternately (after a warm-up of each); the fastest of each counts.

    On a shared machine other jobs only ever slow a call down, so the minimum
    of interleaved repeats is the fairest estimate of both rates.
    """
    plain, flops = plain_gemms(shapes, device)
    step(), plain()
    step_s, plain_s = zip(*[(seconds(step, device), seconds(plain, device)) for _ in range(repeats)])
    step_rate, plain_rate = flops / min(step_s) / 1e9, flops / min(plain_s) / 1e9
    print(f"{name:<36}{min(step_s) * 1e3:>10.1f}{min(step_s) / tokens * 1e3:>10.3f}{step_rate:>9.1f}"
          f"{plain_rate:>9.1f}{100 * step_rate / plain_rate:>8.1f}%")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("quick", "seed"), default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--phase1-batch", type=int, default=None, help="default: the preset's phase1.batch_tokens")
    parser.add_argument("--phase2-batch", type=int, default=None, help="default: the preset's phase2.batch_size")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg, _ = quick_preset() if args.preset == "quick" else seed_preset()
    mcfg = cfg.model.replace(vocab_size=args.vocab, embed_dim=WIDTH)
    g = torch.Generator().manual_seed(0)
    model = build_model(mcfg, torch.randn(args.vocab, WIDTH, generator=g) * 0.02, seed=0).to(device)
    b1 = args.phase1_batch or cfg.phase1.batch_tokens
    b2 = args.phase2_batch or cfg.phase2.batch_size
    C = mcfg.context_dim

    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}: "
          f"L = {mcfg.num_layers}, C = {C}, E = {WIDTH}, V = {args.vocab}")  # fmt: skip
    print(f"{'step':<36}{'ms':>10}{'ms/tok':>10}{'GF/s':>9}{'GEMM':>9}{'share':>9}")

    # Phase 1: one mini-batch of the ContextBlock, forward and backward (gradients of the weights only).
    ids = torch.randint(0, args.vocab, (b1 + 1,), generator=g).to(device)
    inputs = torch.randn(b1, C, generator=g).to(device)
    prev = torch.randn(b1, C, generator=g).to(device)
    x = model.step_inputs(ids, 0, b1)

    def phase1_batch() -> None:
        out = model.context_step(inputs, x)[-1]
        loss = 0.2 * torch.nn.functional.mse_loss(out, prev) + 0.8 * diversity_loss(out)
        model.zero_grad(set_to_none=True)
        loss.backward()

    shapes = []
    for i, layer in enumerate(model.context_layers):
        shapes += linear_shapes(b1, layer.ctx_in, layer.out, grad_input=i > 0, grad_weight=True)  # context half
        shapes += linear_shapes(b1, layer.tok_in, layer.out, grad_input=False, grad_weight=True)  # token half
    report(f"phase 1 batch ({b1} tokens)", phase1_batch, shapes, device, args.repeats, b1)

    # Phase 2: one training step on recomputed contexts (ContextBlock forward, TokenBlock, chunked head loss,
    # clip, fused Adam), as run_phase2 takes it.
    model.context_layers.requires_grad_(False)
    ids = torch.randint(0, args.vocab, (b2 + 1,), generator=g).to(device)
    previous = torch.randn(b2, C, generator=g).to(device)
    params = model.trainable_phase2_parameters()
    optimizer = make_adam(params, cfg.phase2)
    weight, bias = model.head_weights()

    def phase2_step() -> None:
        with torch.no_grad():
            contexts = model.context_step(previous, model.step_inputs(ids, 0, b2))
        t = model.token_features(contexts, model.step_inputs(ids, 0, b2))
        loss = linear_cross_entropy(t, weight, bias, ids[1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.phase2.grad_clip)
        optimizer.step()

    shapes = []
    for layer in model.context_layers:  # the recomputed contexts: forward only
        shapes += linear_shapes(b2, layer.ctx_in + layer.tok_in, layer.out, grad_input=False, grad_weight=False)
    for i, layer in enumerate(model.token_layers):
        shapes += linear_shapes(b2, layer.ctx_in, layer.out, grad_input=False, grad_weight=True)
        shapes += linear_shapes(b2, layer.tok_in, layer.out, grad_input=i > 0, grad_weight=True)
        if layer.residual is not None:
            shapes += linear_shapes(b2, layer.tok_in, layer.out, grad_input=i > 0, grad_weight=True)
    shapes += linear_shapes(b2, WIDTH, args.vocab, grad_input=True, grad_weight=True)  # the head
    report(f"phase 2 step ({b2} tokens)", phase2_step, shapes, device, args.repeats, b2)


if __name__ == "__main__":
    main()

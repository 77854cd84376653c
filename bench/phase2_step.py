"""Where Phase 2's time goes: one training step and one scoring pass, per token.

Builds the quick preset's model with the default table's shape (49,152 x 576;
the values do not matter for timing, so the table is random) and times, on
random contexts, the parts of one Phase 2 step for each Adam implementation
and the evaluation pass, as milliseconds per step and per token.

    python bench/phase2_step.py [--device cpu|cuda] [--batch 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cvfp.models import build_model
from cvfp.presets import quick_preset
from cvfp.training.phase2 import make_adam

VOCAB, WIDTH = 49152, 576  # smollm2-135m


def timed(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Mean milliseconds of ``fn`` after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512, help="tokens per Phase 2 batch (quick preset: 512)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg, _ = quick_preset()
    model_cfg = cfg.model.replace(vocab_size=VOCAB, embed_dim=WIDTH)
    generator = torch.Generator().manual_seed(0)
    model = build_model(model_cfg, torch.randn(VOCAB, WIDTH, generator=generator) * 0.02, seed=0).to(device)
    model.context_layers.requires_grad_(False)
    b = args.batch
    ids = torch.randint(0, VOCAB, (b + 1,), generator=generator).to(device)
    flat = torch.randn(b, sum(model.context_widths), generator=generator).to(device)
    params = model.trainable_phase2_parameters()

    def forward() -> torch.Tensor:
        return model.token_logits(model.split_contexts(flat), model.step_inputs(ids, 0, b))

    def forward_backward() -> None:
        loss = F.cross_entropy(forward(), ids[1:])
        model.zero_grad(set_to_none=True)
        loss.backward()

    @torch.no_grad()
    def score() -> None:
        logits = forward()
        F.cross_entropy(logits, ids[1:], reduction="sum").item()
        (logits.argmax(dim=-1) == ids[1:]).sum().item()

    rows = [("forward + backward", timed(forward_backward, args.repeats, device))]
    rows.append(("gradient clipping", timed(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), args.repeats, device)))
    for adam in ("reference", "fused"):
        optimizer = make_adam(params, cfg.phase2.replace(adam=adam))
        rows.append((f"Adam step ({adam})", timed(optimizer.step, args.repeats, device)))
    rows.append(("scoring pass (no grad)", timed(score, args.repeats, device)))
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {b}")
    print(f"{'part':<28}{'ms/step':>10}{'ms/token':>10}")
    for name, ms in rows:
        print(f"{name:<28}{ms:>10.1f}{ms / b:>10.3f}")


if __name__ == "__main__":
    main()

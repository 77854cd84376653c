"""What training the contexts for the task costs: one training step of each way, per token, in one run.

At the quick preset's model (2 layers, C = 256, E = 576, V = 49,152; ``--head`` full or adaptive) on random
ids and contexts (the values do not matter for timing), one step of ``--batch`` tokens of:

- Phase 2 (TokenBlock + head on cached contexts, the ContextBlock frozen): the reference;
- the parallel end-to-end step of ``phase1.objective = "lm"`` (``training.end_to_end``): K Jacobi sweeps of the
  ContextBlock, the gradient through the last K' of them, the whole model updated;
- the RNN-trained cell (``--arch e-rnn``): truncated BPTT over the true sequential recurrence.

Prints milliseconds per step and per token (the fastest of ``--repeats`` rounds, every step timed in turn in
each round), and each step's cost relative to Phase 2's.

    python bench/end_to_end.py [--device cpu|cuda] [--batch 512] [--repeats 3] [--head full|adaptive]
"""

from __future__ import annotations

import argparse

import torch
from phase2_step import VOCAB, WIDTH, timed

from cvfp.models import build_model
from cvfp.presets import quick_preset
from cvfp.training.end_to_end import jacobi
from cvfp.training.phase2 import make_adam

# (K, K') of the end-to-end steps timed.
SWEEPS = ((1, 1), (2, 1), (4, 1), (2, 2), (4, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--head", choices=["full", "adaptive"], default="full")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size (tests: a small one)")
    args = parser.parse_args()
    device, b = torch.device(args.device), args.batch
    cfg, _ = quick_preset()
    model_cfg = cfg.model.replace(vocab_size=args.vocab, embed_dim=WIDTH, head=args.head)
    model_cfg = model_cfg.replace(adaptive_cutoffs=tuple(c for c in model_cfg.adaptive_cutoffs if c < args.vocab - 1))
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(args.vocab, WIDTH, generator=generator) * 0.02
    ids = torch.randint(0, args.vocab, (b + 1,), generator=generator).to(device)
    model = build_model(model_cfg, table, seed=0).to(device)
    model.prepare_head(ids)
    stored = torch.randn(b, model_cfg.context_dim, generator=generator).to(device) * 0.1
    x, zero = model.step_inputs(ids, 0, b), stored.new_zeros(1, model_cfg.context_dim)
    phase2_params = model.trainable_phase2_parameters()
    phase2_adam = make_adam(phase2_params, cfg.phase2)
    all_params = [p for p in model.parameters() if p.requires_grad]
    e2e_adam = make_adam(all_params, cfg.phase2)  # every step with the Adam its run uses

    def phase2_step() -> None:
        with torch.no_grad():
            layers = model.context_step(torch.cat([zero, stored[:-1]]), x)
        loss = model.head_loss(model.token_features(layers, x), ids[1:])
        phase2_adam.zero_grad(set_to_none=True)
        loss.backward()
        phase2_adam.step()

    def e2e_step(sweeps: int, grad_sweeps: int) -> None:
        layers, _, _ = jacobi(model, x, zero, stored, sweeps, grad_sweeps)
        loss = model.head_loss(model.token_features(layers, x), ids[1:])
        e2e_adam.zero_grad(set_to_none=True)
        loss.backward()
        e2e_adam.step()

    rnn = build_model(model_cfg.replace(arch="e-rnn"), table, seed=0).to(device)
    rnn.prepare_head(ids)
    rnn_adam = make_adam([p for p in rnn.parameters() if p.requires_grad], cfg.phase2)

    def rnn_step() -> None:
        features, targets = next(iter(rnn.train_batches(ids, b)))
        loss = rnn.head_loss(features, targets)
        rnn_adam.zero_grad(set_to_none=True)
        loss.backward()
        rnn_adam.step()

    steps = {"Phase 2 (cached contexts)": phase2_step}
    steps |= {f"end-to-end, K = {k}, K' = {kk}": (lambda k=k, kk=kk: e2e_step(k, kk)) for k, kk in SWEEPS}
    steps["RNN-trained cell (TBPTT)"] = rnn_step
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # round-robin: a disturbed moment of the machine hits every step alike
        for name, step in steps.items():
            times[name].append(timed(step, 1, device))  # one warm-up call, then one timed
    rows = [(name, min(ms)) for name, ms in times.items()]
    reference = rows[0][1]
    print(f"quick model, V = {args.vocab}, {args.head} head, batch {b} tokens, {args.device}, "
          f"fastest of {args.repeats} round-robin rounds\n")  # fmt: skip
    print("| Step | ms / step | ms / token | x Phase 2 |")
    print("|---|---:|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {ms / b:.3f} | {ms / reference:.2f} |")


if __name__ == "__main__":
    main()

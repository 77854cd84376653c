"""Throughput of every architecture at the quick preset's shapes: which one dominates a compare run?

For each model, on random data with the default table's shape (49,152 x 576; a
random table, the values do not matter for timing), times one training step
of ``--batch`` tokens (forward, backward, clip, fused Adam) and the scoring of
``--batch`` tokens, as milliseconds per token, beside the E design's Phase 2
step measured in the same process (the ratio is the figure to read on a
shared machine). For the E design, Phase 1 (one sweep, forward + backward of
the ContextBlock) and the sequential recurrence (per token) are timed too; for
the n-gram model, counting and scoring with the full distribution.

    python bench/baselines_throughput.py [--batch 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from timing import VOCAB, WIDTH, mean_ms  # bench/timing.py (scripts run from bench/)

from cvfp.models import CVFPModel, build_model
from cvfp.models.heads import head_logits, linear_cross_entropy
from cvfp.models.ngram import KneserNey
from cvfp.presets import quick_preset
from cvfp.scoring import Scorer, score_sequence_model
from cvfp.training.caches import sequential_cache
from cvfp.training.next_token import make_adam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512, help="tokens per training step (quick preset: 512)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg, _ = quick_preset()
    p2 = cfg.phase2
    b = args.batch
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(VOCAB, WIDTH, generator=gen) * 0.02
    ids = torch.randint(0, VOCAB, (4 * b + 1,), generator=gen)
    rows = []

    def train_step(model, features_fn) -> Callable[[], None]:
        """One step as trained: the head's input from ``features_fn``, the head and its loss by
        ``linear_cross_entropy`` (as in Phase 2 and ``train_sequence``)."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_adam(params, p2)

        def step() -> None:
            weight, bias = model.head.weight, model.head.bias
            loss = linear_cross_entropy(features_fn(), weight, bias, ids[1 : b + 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, p2.grad_clip)
            optimizer.step()

        return step

    for arch in ("e", "lstm", "transformer"):
        model_cfg = cfg.model.replace(arch=arch, vocab_size=VOCAB, embed_dim=WIDTH)
        model = build_model(model_cfg, table, seed=0)
        if isinstance(model, CVFPModel):
            model.context_layers.requires_grad_(False)
            flat = torch.randn(b, sum(model.context_widths), generator=gen)
            step = train_step(
                model, lambda m=model, f=flat: m.token_features(m.split_contexts(f), m.step_inputs(ids, 0, b))
            )

            def score_cached(m=model, f=flat) -> None:
                with torch.no_grad():
                    t = m.token_features(m.split_contexts(f), m.step_inputs(ids, 0, b))
                    Scorer(ids[: b + 1]).add_logits(0, head_logits(t, *m.head_weights()))

            rows.append((f"{arch}: Phase 2 train step", mean_ms(step, args.repeats)))
            rows.append((f"{arch}: Phase 2 scoring (cached contexts)", mean_ms(score_cached, args.repeats)))
            model.context_layers.requires_grad_(True)
            prev = torch.randn(b, model_cfg.context_dim, generator=gen)

            def phase1(m=model, c=prev) -> None:
                out = m.context_step(c, m.step_inputs(ids, 0, b))[-1]
                out.pow(2).mean().backward()

            rows.append((f"{arch}: Phase 1 sweep (ContextBlock fwd+bwd)", mean_ms(phase1, args.repeats)))
            with torch.no_grad():
                rows.append((f"{arch}: sequential recurrence (contexts)",
                             mean_ms(lambda m=model: sequential_cache(m, ids[: b + 1]), args.repeats)))  # fmt: skip
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = make_adam(params, p2)

            def step(m=model, params=params, optimizer=optimizer) -> None:
                features, targets = next(iter(m.train_batches(ids[: b + 1], b)))
                loss = linear_cross_entropy(features, m.head.weight, m.head.bias, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, p2.grad_clip)
                optimizer.step()

            rows.append((f"{arch}: train step (as trained)", mean_ms(step, args.repeats)))
            if arch == "lstm":
                one = train_step(model, lambda m=model: m.span_features(ids, 0, b, None, training=True)[0])
                rows.append(("lstm: train step, one stream of 512", mean_ms(one, args.repeats)))

            def score_sequence(m=model) -> None:
                score_sequence_model(m, ids[: b + 1])

            rows.append((f"{arch}: scoring", mean_ms(score_sequence, args.repeats)))
    stream = np.random.default_rng(0).integers(0, VOCAB, 26_000)
    rows.append(("ngram (order 5): counting", mean_ms(lambda: KneserNey(stream, 5, VOCAB), 1) * b / len(stream)))
    model = KneserNey(stream, 5, VOCAB)
    rows.append(("ngram (order 5): scoring (full distribution)", mean_ms(lambda: model.score_rows(stream[: b + 1]), 1)))
    reference = rows[0][1]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {b} tokens per step, V = {VOCAB}, E = {WIDTH}"
    )
    print("| part | ms per token | x E design's Phase 2 train step |")
    print("|---|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms / b:.3f} | {ms / reference:.2f} |")


if __name__ == "__main__":
    main()

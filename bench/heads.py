"""The output heads side by side: a Phase 2 training step and a scoring pass with the full, adaptive and tied
heads, at the quick and the original's (seed preset) configs, in one run.

For each config, the model is the preset's (with the default table's shape, 49,152 x 576; the table itself
is random, as values do not change the cost) and the targets are real text: the quick preset's corpus
(chitchat) through SmolLM2's tokenizer, so the adaptive head's clusters see real token frequencies (its
clusters are set from that stream, as training sets them from the train stream). Times per token:

- a Phase 2 step: TokenBlock forward on given contexts, the head's loss, backward, clip and a fused Adam step;
- a scoring pass: TokenBlock forward and the head's per-row nats and top-1 hits, in chunks as evaluation does;
- each head's GEMM floor: the matrix products its loss needs at these row counts (full: B x E x V, three for
  training, one for scoring; adaptive: its shortlist product and, per tail cluster, the products of the rows
  whose target falls there), as plain ``torch.mm`` calls,

and the full head's time over the adaptive head's (the speed-up), measured in the same run.

    python bench/heads.py [--configs quick,seed] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import VOCAB, WIDTH, best_ms

from cvfp.data.corpora import load_corpus
from cvfp.data.protocols import default_cache_dir, tokenize_conversations
from cvfp.data.tokenizers import get_tokenizer
from cvfp.models import build_model
from cvfp.models.heads import CHUNK_ROWS
from cvfp.presets import PRESETS
from cvfp.training.next_token import make_adam


def real_tokens(count: int) -> torch.Tensor:
    """The first ``count`` + 1 tokens of the quick preset's corpus pool (its first 1,000 chats)."""
    convs = tokenize_conversations(load_corpus("chitchat"), get_tokenizer("smollm2"), 1000, default_cache_dir())
    stream = torch.from_numpy(np.concatenate(convs))
    return stream[: count + 1].clone() if len(stream) > count else stream.repeat(count // len(stream) + 2)[: count + 1]


def zipf_tokens(count: int, vocab: int) -> torch.Tensor:
    """``count`` + 1 tokens drawn with Zipf frequencies (exponent 1.1) over a shuffled vocabulary."""
    g = torch.Generator().manual_seed(0)
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** 1.1
    return torch.randperm(vocab, generator=g)[torch.multinomial(weights, count + 1, True, generator=g)]


def gemm_floor(model, rows: int, targets: torch.Tensor, training: bool, device, repeats: int) -> float:
    width, vocab = model.cfg.embed_dim, model.cfg.vocab_size
    """Milliseconds of the plain products the head's loss needs for these rows and targets."""
    g = torch.Generator().manual_seed(1)
    mats = []  # (rows, in, out) of each product
    if not model.adaptive:
        mats.append((rows, width, vocab))
    else:
        head = model.head
        mats.append((rows, width, head.head_size))
        ranked = head.rank[targets]
        for i, (projection, output) in enumerate(head.tail):
            n = int(((ranked >= head.cutoffs[i]) & (ranked < head.cutoffs[i + 1])).sum())
            if n:
                mats += [(n, width, projection.out_features), (n, projection.out_features, output.out_features)]
    pairs = [(torch.randn(r, k, generator=g).to(device), torch.randn(k, n, generator=g).to(device)) for r, k, n in mats]

    def products() -> None:
        for a, b in pairs:
            out = a @ b
            if training:  # the gradients with respect to the input and the weight
                out @ b.t()
                a.t() @ out

    return best_ms(products, repeats, device)


def measure(preset: str, head: str, tokens: torch.Tensor, args: argparse.Namespace) -> dict:
    device, repeats, vocab, width = torch.device(args.device), args.repeats, args.vocab, args.width
    cfg = PRESETS[preset]().config
    if args.rows:
        cfg = cfg.replace(phase2=cfg.phase2.replace(batch_size=args.rows))
    model_cfg = cfg.model.replace(head=head, vocab_size=vocab, embed_dim=width)
    if args.cutoffs:
        model_cfg = model_cfg.replace(adaptive_cutoffs=tuple(int(c) for c in args.cutoffs.split(",")))
    g = torch.Generator().manual_seed(0)
    model = build_model(model_cfg, torch.randn(vocab, width, generator=g) * 0.02, seed=0)
    model.prepare_head(tokens)
    model = model.to(device)
    model.context_layers.requires_grad_(False)
    b = cfg.phase2.batch_size
    ids = tokens[: b + 1].to(device)
    contexts = model.split_contexts(torch.randn(b, sum(model.context_widths), generator=g).to(device))
    params = model.trainable_phase2_parameters()
    optimizer = make_adam(params, cfg.phase2)

    def step() -> None:
        loss = model.head_loss(model.token_features(contexts, model.step_inputs(ids, 0, b)), ids[1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.phase2.grad_clip)
        optimizer.step()

    buffer = None if model.adaptive else torch.empty(min(b, CHUNK_ROWS), vocab, device=device)

    @torch.no_grad()
    def score() -> None:
        t = model.token_features(contexts, model.step_inputs(ids, 0, b))
        for s in range(0, b, CHUNK_ROWS):
            rows = t[s : s + CHUNK_ROWS]
            model.head_scores(rows, ids[s + 1 : s + 1 + len(rows)], None if buffer is None else buffer[: len(rows)])

    return {
        "rows": b,
        "head parameters": model.parameter_counts()["head"],
        "train": best_ms(step, repeats, device) / b,
        "score": best_ms(score, repeats, device) / b,
        "train floor": gemm_floor(model, b, ids[1:].cpu(), True, device, repeats) / b,
        "score floor": gemm_floor(model, b, ids[1:].cpu(), False, device, repeats) / b,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="quick,seed", help="presets whose model and Phase 2 batch to use")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="V (default: the default table's)")
    parser.add_argument("--width", type=int, default=WIDTH, help="E (default: the default table's)")
    parser.add_argument("--rows", type=int, help="rows per Phase 2 batch (default: each preset's)")
    parser.add_argument("--cutoffs", help="the adaptive head's cutoffs, e.g. 256,1024 (default: the config's)")
    parser.add_argument("--text", choices=["chitchat", "zipf"], default="chitchat",
                        help="targets: real chitchat tokens (needs V = 49,152) or Zipf-distributed ones")  # fmt: skip
    args = parser.parse_args()
    presets = args.configs.split(",")
    count = args.rows or max(PRESETS[p]().config.phase2.batch_size for p in presets)
    tokens = real_tokens(count) if args.text == "chitchat" else zipf_tokens(count, args.vocab)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, V = {args.vocab}, "
          f"E = {args.width}, {args.text} targets")  # fmt: skip
    print("| config | head | head params | rows | train ms/token | x its floor | score ms/token | x its floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for preset in presets:
        results = {head: measure(preset, head, tokens, args) for head in ("full", "adaptive", "tied")}
        for head, r in results.items():
            print(f"| {preset} | {head} | {r['head parameters']:,} | {r['rows']} | {r['train']:.3f} | "
                  f"{r['train'] / r['train floor']:.2f} | {r['score']:.3f} | {r['score'] / r['score floor']:.2f} |")  # fmt: skip
        full, adaptive = results["full"], results["adaptive"]
        print(f"| {preset} | full / adaptive | | | **{full['train'] / adaptive['train']:.2f}x** | | "
              f"**{full['score'] / adaptive['score']:.2f}x** | |")  # fmt: skip


if __name__ == "__main__":
    main()

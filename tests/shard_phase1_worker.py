"""One rank of tests/test_distributed.py's sharded Phase 1 check, started by torchrun.

Every rank runs Phase 1 twice on the same stream and the same initial model: once whole (no
collectives: the single-process reference) and once sharded over the ranks. It writes what the
test compares to OUT/rank<r>.json: its shard, the largest differences of its shard's contexts and
of the trained block's weights, and both runs' per-iteration records.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/shard_phase1_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cvfp import distributed
from cvfp.config import ModelConfig, Phase1Config
from cvfp.models import build_model
from cvfp.training.phase1 import run_phase1

TOKENS, BATCH = 230, 32  # 8 batches, the last one short: ranks hold 4 and 4 (3 and 3 and 2 with 3 ranks)


def phase1(shard: distributed.Shard | None):
    cfg = ModelConfig(arch="e", num_layers=2, context_dim=8, embed_dim=6, vocab_size=30)
    model = build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=1)
    ids = torch.randint(0, 30, (TOKENS,), generator=torch.Generator().manual_seed(2))
    p1 = Phase1Config(noise="counter", batch_tokens=BATCH, max_iterations=6, stop_rule="fixed", save_every=0)
    result = run_phase1(model, ids, p1, torch.Generator().manual_seed(7), progress=False, shard=shard)
    return result, model


def main() -> None:
    out = Path(sys.argv[1])
    me = distributed.init()
    shard = distributed.shard_rows(TOKENS, BATCH, me.rank, me.world)
    whole, whole_model = phase1(None)
    sharded, sharded_model = phase1(shard)
    weights = [(a - b).abs().max().item() for a, b in zip(whole_model.context_layers.parameters(),
                                                          sharded_model.context_layers.parameters())]  # fmt: skip
    keys = ("converged_rate", "loss", "fixed_point_loss", "diversity_loss", "grad_norm")
    record = {
        "shard": [shard.start, shard.end],
        "rows": sharded.contexts.shape[0],
        "context_diff": (whole.contexts[shard.start : shard.end] - sharded.contexts).abs().max().item(),
        "context_scale": whole.contexts.abs().max().item(),
        "weight_diff": max(weights),
        "whole": [{k: r[k] for k in keys} for r in whole.history],
        "sharded": [{k: r[k] for k in keys} for r in sharded.history],
    }
    (out / f"rank{me.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()

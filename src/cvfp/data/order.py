"""The order in which an epoch visits the train stream (``phase2.shuffle``), the same for every model."""

from __future__ import annotations

import torch

from cvfp.config import Phase2Config


def epoch_generator(cfg: Phase2Config, seed: int, epoch: int) -> torch.Generator | None:
    """The random source of epoch ``epoch``'s data order under ``cfg.shuffle`` (None: stream order). Drawn from
    the run seed and the epoch alone, so every rank and a resumed run visit the same order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch) if cfg.shuffle else None


def visit_order(count: int, generator: torch.Generator | None) -> list[int]:
    """The order in which an epoch visits its ``count`` batches: stream order, or a permutation."""
    return list(range(count)) if generator is None else torch.randperm(count, generator=generator).tolist()

"""Evaluation metrics (algorithm §5): perplexity, accuracy, bits per byte, effective rank."""

from __future__ import annotations

import math

import torch


def perplexity(mean_nats: float) -> float:
    """exp of the token-weighted mean cross-entropy (inf on overflow)."""
    return math.exp(mean_nats) if mean_nats < 700 else math.inf


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Total cross-entropy in bits divided by the UTF-8 bytes of the predicted text."""
    return total_nats / math.log(2) / total_bytes


def _entropy_rank(singular_values: torch.Tensor) -> float:
    s = singular_values[singular_values > 0]
    p = s / s.sum()
    return math.exp(-(p * p.log()).sum().item())


def sample_index(n: int, rows: int, generator: torch.Generator) -> torch.Tensor | None:
    """The rows an effective rank of ``n`` rows reads: ``rows`` random ones, or None (all) when n <= rows."""
    return None if n <= rows else torch.randperm(n, generator=generator)[:rows]


def _sample_rows(x: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    idx = sample_index(x.shape[0], rows, generator)
    return x if idx is None else x[idx.to(x.device)]


def effective_rank_uncentred(x: torch.Tensor, max_rows: int, generator: torch.Generator) -> float:
    """The original's effective rank of (n, C) contexts (algorithm §5), as a fraction of C.

    Uncentred; at most ``max_rows`` random rows; ER = exp(entropy of S/sum S).
    """
    sample = _sample_rows(x, max_rows, generator).float()  # sample first: no float copy of every row
    return _entropy_rank(torch.linalg.svdvals(sample.cpu().double())) / x.shape[1]


def effective_rank_centered(x: torch.Tensor, rows: int, generator: torch.Generator) -> tuple[float, int]:
    """Effective rank of column-centred contexts on ``rows`` random rows, as a fraction of C.

    Returns (fraction, rows used): all rows when fewer than ``rows`` exist,
    which makes the value incomparable; the row count is reported with it.
    """
    sample = _sample_rows(x, rows, generator).cpu().double()
    sample = sample - sample.mean(dim=0, keepdim=True)
    return _entropy_rank(torch.linalg.svdvals(sample)) / x.shape[1], sample.shape[0]

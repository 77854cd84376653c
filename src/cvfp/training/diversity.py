"""Phase 1's diversity terms: a registry of functions of a mini-batch of contexts X (B, C).

Phase 1 minimises ``(1 - w) * MSE(out, prev) + w * D(out)`` (``phase1.dist_reg_weight``
= w; w = 1 is the diversity-only objective). ``phase1.diversity`` names D:
``seed`` is the original's and the default; the others are the terms its author
compared in the week after the original report (``docs/variants.md``). Below,
mu is the row mean of X, sigma_j^2 the variance of column j and cov the
column covariance, both with 1 / (B - 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def seed(x: torch.Tensor) -> torch.Tensor:
    """MCDL, the original's: D(X) = -||X - mu||_F / B."""
    return -torch.linalg.norm(x - x.mean(dim=0, keepdim=True)) / x.shape[0]


def oacd(x: torch.Tensor) -> torch.Tensor:
    """OACD: D(X) = -||X - mu||_F / B + 0.1 ||mu||_2^2 (the original's term plus a pull of the mean to 0)."""
    return seed(x) + 0.1 * x.mean(dim=0).pow(2).sum()


def vicreg(x: torch.Tensor) -> torch.Tensor:
    """ODCM, VICReg-style: D(X) = mean_j relu(1 - sqrt(sigma_j^2 + 1e-4)) + 0.04 sum_{i != j} cov_ij^2 / C."""
    rows, width = x.shape
    centred = x - x.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / max(rows - 1, 1)
    variance = torch.relu(1 - torch.sqrt(cov.diagonal() + 1e-4)).mean()
    off_diagonal = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return variance + 0.04 * off_diagonal / width


def nuclear(x: torch.Tensor) -> torch.Tensor:
    """NUC: D(X) = -||X - mu||_* / B (nuclear norm: the sum of the singular values)."""
    return -torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True)).sum() / x.shape[0]


def log_rank(x: torch.Tensor) -> torch.Tensor:
    """SDL: D(X) = -H(p), p = s / sum(s) for the singular values s of X: minus the log of the effective rank."""
    s = torch.linalg.svdvals(x)
    p = s / s.sum()
    return (p * torch.log(p.clamp_min(1e-30))).sum()


DIVERSITY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "seed": seed,
    "oacd": oacd,
    "vicreg": vicreg,
    "nuclear": nuclear,
    "log-rank": log_rank,
}

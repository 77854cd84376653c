"""Memory: what a CVFP point will need, checked before it starts, and what it used.

A point's memory is a fixed part (weights, optimizer states, the frozen
table, one Phase 1 mini-batch, one Phase 2 batch with one chunk of head
logits) plus a part proportional to its tokens: one context of C values per
train token (Phase 1's contexts, which become the parallel train cache) and
per validation/test token, in ``phase2.cache_dtype``, plus the token ids.
``estimate`` counts both from the config; ``check_fits`` refuses a point
that cannot fit before any work starts, naming the numbers and the largest
number of train tokens that would fit. The estimate is an upper-bound
model, calibrated against measured peaks (``bench/memory.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import sys

import torch

from cvfp.config import RunConfig
from cvfp.errors import CvfpError
from cvfp.models import build_model, spec
from cvfp.models.heads import CHUNK_ROWS, head_parameters

log = logging.getLogger(__name__)

GB = 1024**3
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Interpreter, torch, tokenizer and corpus text: measured about 0.6-0.9 GB on CPU; rounded up.
RUNTIME_BYTES = 1 * GB
# Per token besides its context: the int64 id tensor and the numpy split it is made from.
ID_BYTES = 16


class InsufficientMemory(CvfpError, RuntimeError):
    """A point would not fit in the memory available to it."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    fixed_bytes: int
    per_train_token: int
    per_eval_token: int
    train_tokens: int
    eval_tokens: int
    weights_bytes: int = 0  # the trained weights in float32: what a checkpoint needs on disk

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.per_train_token * self.train_tokens + self.per_eval_token * self.eval_tokens

    def max_train_tokens(self, available: int) -> int:
        """The most train tokens that fit in ``available`` bytes at this config and evaluation size."""
        room = available - self.fixed_bytes - self.per_eval_token * self.eval_tokens
        return max(0, room // self.per_train_token)


def estimate(cfg: RunConfig, train_tokens: int, eval_tokens: int) -> MemoryEstimate:
    """The memory model of one point of a CVFP design (see the module doc)."""
    m, p1, p2 = cfg.model, cfg.phase1, cfg.phase2
    width = m.input_tokens * m.embed_dim
    layers, c = max(m.context_depth, m.token_depth), m.context_dim
    trainable = trainable_parameters(cfg)
    table = 2 * m.vocab_size * m.embed_dim * 4  # the loaded table and the model's float32 copy
    weights = 4 * trainable
    optimizers = 12 * trainable  # gradients + two Adam moments
    phase1_batch = 4 * p1.batch_tokens * (2 * width + layers * 8 * c)  # inputs, window, activations kept for backward
    phase2_batch = (
        4 * p2.batch_size * (2 * width + layers * (c + 8 * width))
        + 3 * 4 * min(p2.batch_size, CHUNK_ROWS) * m.vocab_size
    )
    fixed = RUNTIME_BYTES + table + weights + optimizers + max(phase1_batch, phase2_batch)
    dtype = BYTES[p2.cache_dtype]
    stored_layers = 0 if p2.recompute_contexts else layers * c * dtype
    per_train = c * dtype + stored_layers + ID_BYTES
    return MemoryEstimate(fixed, per_train, per_train, train_tokens, eval_tokens, weights)


def trainable_parameters(cfg: RunConfig) -> int:
    """The model's own count of its trainable parameters (0 for a counted model): its body built at a
    two-token vocabulary with a tied head (cheap, and independent of V), plus its head's (``head_parameters``)."""
    m = cfg.model
    if spec(m.arch).family == "count":
        return 0
    body = build_model(m.replace(vocab_size=2, head="tied"), torch.zeros(2, m.embed_dim)).body_parameters()
    return body + head_parameters(m)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new point: CUDA's free memory, or the OS's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return _proc_bytes("/proc/meminfo", "MemAvailable:")


def check_fits(cfg: RunConfig, train_tokens: int, eval_tokens: int, device: torch.device) -> MemoryEstimate | None:
    """Refuse, before any work, a CVFP point whose estimate exceeds the memory available (None: not a CVFP point)."""
    if spec(cfg.model.arch).family != "cvfp":
        return None
    est = estimate(cfg, train_tokens, eval_tokens)
    free = available_bytes(device)
    if free is not None and est.total_bytes > free:
        lean = estimate(
            cfg.replace(phase2=cfg.phase2.replace(cache_dtype="bfloat16", recompute_contexts=True)),
            train_tokens,
            eval_tokens,
        )
        hint = ""
        if lean.total_bytes < est.total_bytes:
            hint = (
                f"; with phase2.cache_dtype=bfloat16 and recompute_contexts=true it would need "
                f"{lean.total_bytes / GB:.1f} GB (at most {lean.max_train_tokens(free):,} train tokens)"
            )
        raise InsufficientMemory(
            f"this point needs about {est.total_bytes / GB:.1f} GB on {device} ({est.fixed_bytes / GB:.1f} GB fixed + "
            f"{est.per_train_token} bytes x {train_tokens:,} train tokens + {est.per_eval_token} bytes x "
            f"{eval_tokens:,} validation/test tokens) but {free / GB:.1f} GB are available: at most "
            f"{est.max_train_tokens(free):,} train tokens fit{hint}"
        )
    if free is not None:
        log.info(
            "memory: this point needs about %.1f GB of the %.1f GB available on %s; at this config at most "
            "%s train tokens would fit",
            est.total_bytes / GB,
            free / GB,
            device,
            f"{est.max_train_tokens(free):,}",
        )
    return est


def reset_peak(device: torch.device) -> None:
    """Start measuring a point's peak here: CUDA's peak statistics, and on Linux the process's resident
    high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs), so that the corpus and table loaded
    before the point do not set its peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: the peak is the process's lifetime peak (getrusage)


def _proc_bytes(path: str, key: str) -> int | None:
    """The value of the ``key`` line (in KiB) of a Linux /proc file, in bytes; None where there is none."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak(device: torch.device) -> dict:
    """Peak resident memory since ``reset_peak`` (Linux; elsewhere the process's lifetime peak) and CUDA's peak
    allocation since ``reset_peak``, in bytes."""
    rss = _proc_bytes("/proc/self/status", "VmHWM:")
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"peak_rss_bytes": rss, "peak_cuda_bytes": cuda}

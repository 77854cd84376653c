"""The timers the bench scripts share: wall seconds of one call (synchronised on CUDA), mean milliseconds of
repeated calls; and the default table's shape."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (CUDA work queued before and by it included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# The default table's shape (smollm2-135m): vocabulary V and width E.
VOCAB, WIDTH = 49152, 576


def best_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of ``repeats`` calls of ``fn`` in milliseconds, after one warm-up call (synchronised on
    CUDA): on a shared machine the minimum is the figure least disturbed by other work."""
    fn()
    return min(seconds(fn, device) for _ in range(repeats)) * 1e3


def mean_ms(fn: Callable[[], object], repeats: int) -> float:
    """Mean milliseconds of ``fn`` on the CPU after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3

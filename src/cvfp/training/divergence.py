"""Divergence: a loss or a context that is no longer a finite number, or a loss that exploded.

Both phases check once per Phase 1 iteration / Phase 2 epoch (where they
already copy their figures to the host) and stop the run with a message that
names the phase, the iteration or epoch, and the last good values; a sweep
records the failure and goes on, and no NaN or infinity reaches a result or a plot.

A next-token loss has a natural scale: a model that knows nothing (every
token equally likely) scores ln V nats. A train or validation loss above
``EXPLODED_FACTOR`` x ln V is far worse than knowing nothing: the run has
diverged even while the numbers are still finite (their PPL may already be
an overflow).
"""

from __future__ import annotations

import math

from cvfp.errors import CvfpError

# A next-token loss above this many times ln V (the uniform distribution's) has diverged.
EXPLODED_FACTOR = 3.0


class Divergence(CvfpError, RuntimeError):
    """Training produced a NaN, an infinity, or a loss that exploded."""


def exploded_loss(vocab_size: int) -> float:
    """The next-token loss (nats) above which a run has diverged: EXPLODED_FACTOR x ln V."""
    return EXPLODED_FACTOR * math.log(vocab_size)


def require_finite(
    where: str, values: dict[str, float], last_good: str, advice: str, limit: float | None = None
) -> None:
    """Raise Divergence naming ``where``, the non-finite ``values`` (or those above ``limit``) and the last good
    state."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if limit is not None:
        bad |= {k: v for k, v in values.items() if math.isfinite(v) and v > limit}
    if bad:
        figures = ", ".join(f"{k} {v:.4g}" if math.isfinite(v) else f"{k} {v}" for k, v in bad.items())
        above = f" (above {limit:.1f} nats, {EXPLODED_FACTOR:g} x ln V: worse than guessing)" if limit else ""
        raise Divergence(f"{where} diverged: {figures}{above}; last good: {last_good}; {advice}")

"""Divergence: a loss or a context that is no longer a finite number.

Both phases check once per Phase 1 iteration / Phase 2 epoch (where they
already copy their figures to the host) and stop the run with a message that
names the phase, the iteration or epoch, and the last good values; a sweep
records the failure and goes on, and no NaN reaches a result or a plot.
"""

from __future__ import annotations

import math

from cvfp.errors import CvfpError


class Divergence(CvfpError, RuntimeError):
    """Training produced a NaN or an infinity."""


def require_finite(where: str, values: dict[str, float], last_good: str, advice: str) -> None:
    """Raise Divergence naming ``where``, the non-finite ``values`` and the last good state."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        figures = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise Divergence(f"{where} diverged: {figures}; last good: {last_good}; {advice}")

"""How reports write numbers and the lines every report shares: one home for the formats of report.md,
compare.md and grid.md."""

from __future__ import annotations

import math
from collections.abc import Callable

from cvfp.data.protocols import Composition
from cvfp.models.registry import ARCHS, spec

PROTOCOL_TEXT = {
    "seed": "original protocol (algorithm §6): validation = last 10% of each N's own stream, so every N is "
    "scored on different text; this is the original's measurement, not a held-out estimate",
    "heldout": "held-out protocol: validation and test are fixed conversations shared by every N and never trained on",
}


def model_label(name: str) -> str:
    """A compared model's name in reports: an architecture's label, or a ``--variant``'s own name."""
    return spec(name).label if name in ARCHS else name


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal ("-" when missing)."""
    return "-" if x is None else f"{100 * x:.1f}%"


def num(x) -> str:
    """An integer as is, a float with one decimal (non-finite ones by name), a string as is, None as "-"."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    return f"{x:.1f}" if math.isfinite(x) else str(x)


def count(x: float | None) -> str:
    """A count (iterations, epochs): an integer as one ("10", not "10.0"), a mean over seeds with one decimal."""
    if x is None:
        return "-"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def fixed(digits: int) -> Callable[[float], str]:
    """A formatter with ``digits`` decimals."""
    return lambda v: f"{v:.{digits}f}"


def ci(interval) -> str:
    """A 95% interval as "[lo, hi]" with three decimals ("-" when missing)."""
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "-"


def spread(s: dict | None, fmt: Callable = num) -> str:
    """'mean ± sd' over seeds ('mean' alone for one run; "-" when missing)."""
    if s is None:
        return "-"
    if s["sd"] is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} ± {fmt(s['sd'])}"


def flops(x: float | None) -> str:
    return "-" if x is None else ("0" if x == 0 else f"{x:.2e}")


def protocol_line(settings: dict) -> str:
    return f"Protocol: {settings['protocol']} ({PROTOCOL_TEXT[settings['protocol']]})."


def composition_line(results: dict) -> str:
    """What the held-out sets are made of (from the first run; every run shares them), or "" without them."""
    point = next((p for p in results["points"] if p["val_composition"]), None)
    if point is None:
        return ""
    sets = [("validation", point["val_composition"]), ("test", point["test_composition"])]
    return "Held-out sets: " + "; ".join(f"{name}: {Composition(**c).text()}" for name, c in sets if c) + "."


def seeds_line(results: dict) -> str:
    seeds = results["settings"]["seeds"]
    runs = len(results["points"])
    if len(seeds) == 1:
        return f"One seed ({seeds[0]}) per size: no seed-to-seed spread is measured."
    return f"Seeds {', '.join(map(str, seeds))}: {runs} runs; tables give mean ± sample standard deviation over seeds."

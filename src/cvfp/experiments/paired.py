"""Paired comparisons: is model A better than model B on the same held-out conversations (and seeds)?

Two models of one comparison were scored on the same test conversations with the same seeds, so their
difference is measured per conversation and per seed, and its uncertainty comes from which conversations
(and seeds) happened to be drawn. The statistic is the difference in nats per token, A - B, averaged over
the paired seeds, reported as the relative change of perplexity exp(A - B) - 1. Its 95% interval is a
percentile bootstrap: each resample draws the conversations with replacement (one draw shared by both
models and every seed, since all were scored on the same conversations) and, with two or more paired
seeds, the seeds with replacement too.

The verdict follows a rule stated in advance: A is *better* (or *worse*) when the interval excludes 0;
*equivalent* within the margin (default ±1% PPL) when the interval lies inside it; otherwise
*undetermined*. Test is the reported set: validation chose each run's epoch (and any tuned setting).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cvfp.config import ConfigError
from cvfp.experiments.fits import BOOTSTRAP_RESAMPLES

# Default equivalence margin: a relative PPL difference within ±1% counts as no practical difference.
MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class Paired:
    """A - B on one held-out set: the relative PPL difference, its 95% interval, and the verdict."""

    a: str
    b: str
    samples: int
    metric: str  # "test" or "val"
    seeds: list[int]
    conversations: int
    difference: float  # exp(mean nats/token of A - B) - 1
    ci95: list[float] | None
    resampled: str  # what the bootstrap draws
    margin: float
    verdict: str

    def text(self) -> str:
        return f"{self.a} - {self.b} = {100 * self.difference:+.1f}% {pct_interval(self.ci95)}: {self.a} {self.verdict}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def pct_interval(ci95: list[float] | None) -> str:
    """A relative interval as "[-1.2%, +0.4%]" ("-" when there is none)."""
    return "-" if ci95 is None else f"[{100 * ci95[0]:+.1f}%, {100 * ci95[1]:+.1f}%]"


def verdict(ci95: list[float] | None, margin: float) -> str:
    """The stated rule, on the relative PPL difference A - B, for A: better / worse / equivalent /
    undetermined."""
    if ci95 is None:
        return "undetermined (no interval: one conversation and one seed)"
    lo, hi = ci95
    inside = -margin <= lo and hi <= margin
    if hi < 0 or lo > 0:
        word = "better" if hi < 0 else "worse"
        return f"{word}, by less than the ±{margin:.0%} margin" if inside else word
    return f"equivalent within ±{margin:.0%}" if inside else "undetermined"


def paired_bootstrap(
    a_nats: np.ndarray, b_nats: np.ndarray, tokens: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, list[float] | None, str]:
    """Mean over seeds of (A - B) nats per token, and its 95% percentile interval, both as a relative PPL
    difference. ``a_nats``, ``b_nats``: (seeds, conversations) sums of nats; ``tokens``: (conversations,)
    scored tokens, the same for both. Conversations with no scored token are dropped first."""
    keep = tokens > 0
    diff, tokens = (a_nats - b_nats)[:, keep], tokens[keep].astype(float)
    seeds, docs = diff.shape
    estimate = float(diff.sum(axis=1).mean() / tokens.sum())
    if docs < 2 and seeds < 2:
        return math.expm1(estimate), None, "nothing (one conversation, one seed)"
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(docs, np.full(docs, 1.0 / docs), size=resamples).astype(float)  # (R, D)
    per_seed = (weights @ diff.T) / (weights @ tokens)[:, None]  # (R, S)
    if seeds > 1:
        per_seed = np.take_along_axis(per_seed, rng.integers(0, seeds, size=(resamples, seeds)), axis=1)
    lo, hi = np.percentile(per_seed.mean(axis=1), [2.5, 97.5])
    what = "conversations and seeds" if seeds > 1 else "conversations (one seed)"
    return math.expm1(estimate), [math.expm1(lo), math.expm1(hi)], what


def documents(point: dict, metric: str) -> dict | None:
    """The per-conversation sums of one run on ``metric``'s set (None where the run lacks them)."""
    return (point["test"] or {}).get("documents") if metric == "test" else point.get("val_documents")


def compare_runs(
    a: str, a_results: dict, b: str, b_results: dict, samples: int, margin: float = MARGIN
) -> Paired | dict:
    """A - B at ``samples`` on the test set (validation where the protocol has none), paired by seed and
    conversation; a dict with "error" when the two have no paired runs with per-conversation scores."""
    metric = "test" if all(p["test"] for r in (a_results, b_results) for p in r["points"]) else "val"
    runs = {}
    for name, results in ((a, a_results), (b, b_results)):
        runs[name] = {p["seed"]: documents(p, metric) for p in results["points"] if p["samples"] == samples}
    seeds = sorted(s for s in set(runs[a]) & set(runs[b]) if runs[a][s] and runs[b][s])
    if not seeds:
        return {"a": a, "b": b, "samples": samples, "error": "no seed with per-conversation scores for both"}
    tokens = np.asarray(runs[a][seeds[0]]["tokens"])
    for name in (a, b):
        if any(not np.array_equal(runs[name][s]["tokens"], tokens) for s in seeds):
            return {"a": a, "b": b, "samples": samples, "error": "the runs were not scored on the same conversations"}
    nats = {name: np.array([runs[name][s]["nats"] for s in seeds]) for name in (a, b)}
    difference, ci95, what = paired_bootstrap(nats[a], nats[b], tokens)
    return Paired(
        a, b, samples, metric, seeds, int((tokens > 0).sum()), difference, ci95, what, margin, verdict(ci95, margin)
    )


def paired_table(pairs: list[Paired | dict]) -> str:
    """One row per comparison, in the rule's words (A is the row's first model)."""
    rows = [
        "| N | A | B | Set | Seeds | Conversations | A - B (PPL) | 95% interval | Resampled | Verdict for A |",
        "|---:|---|---|---|---|---:|---:|---|---|---|",
    ]
    for p in pairs:
        if isinstance(p, dict):
            rows.append(f"| {p['samples']} | {p['a']} | {p['b']} | - | - | - | - | - | - | {p['error']} |")
            continue
        interval = pct_interval(p.ci95)
        rows.append(
            f"| {p.samples} | {p.a} | {p.b} | {p.metric} | {', '.join(map(str, p.seeds))} | {p.conversations} | "
            f"{100 * p.difference:+.1f}% | {interval} | {p.resampled} | {p.verdict} |"
        )
    return "\n".join(rows)


def rule_text(margin: float) -> str:
    return (
        "A - B is the relative change of perplexity, exp(mean nats per token of A - B) - 1, on the test set "
        "(validation selects; it is reported only where the protocol has no test set), paired by seed and "
        "conversation; its 95% interval is a percentile bootstrap over conversations (and seeds, where there "
        f"are several). Verdict by a rule fixed in advance: A better or worse when the interval excludes 0, "
        f"equivalent when it lies within ±{margin:.0%}, otherwise undetermined."
    )


def against(reference: str, results: dict[str, dict], margin: float = MARGIN, every_size: bool = False) -> list:
    """``reference`` - each other sweep of ``results`` (name -> results.json), at the largest size they all
    finished (or at every such size), as ``Paired`` records (dicts with "error" where no pair exists)."""
    common = set.intersection(*({p["samples"] for p in r["points"]} for r in results.values())) if results else set()
    sizes = sorted(common) if every_size else sorted(common)[-1:]
    return [
        compare_runs(reference, results[reference], name, other, n, margin)
        for n in sizes
        for name, other in results.items()
        if name != reference
    ]


def between(a: str, b: str, results: dict[str, dict], margin: float = MARGIN) -> list:
    """``a`` - ``b`` at every size both finished (a pair asked for beside the reference's); one row with
    "error" where they finished none in common, so that an asked-for pair is never silently missing."""
    sizes = sorted({p["samples"] for p in results[a]["points"]} & {p["samples"] for p in results[b]["points"]})
    pairs = [compare_runs(a, results[a], b, results[b], n, margin) for n in sizes]
    return pairs or [{"a": a, "b": b, "samples": "-", "error": "no size finished by both"}]


def merged_pairs(stored: list, asked: list) -> list[tuple[str, str]]:
    """The pairs a comparison stored (lists, as results.json keeps them), then those newly asked, once each."""
    kept = [(a, b) for a, b in stored]
    return kept + [(a, b) for a, b in asked if (a, b) not in kept]


def check_pairs(pairs: list[tuple[str, str]], models: list[str]) -> None:
    """Each asked-for pair names two different models of the comparison (ConfigError otherwise)."""
    for a, b in pairs:
        unknown = [name for name in (a, b) if name not in models]
        if unknown:
            raise ConfigError(f"--pair {a},{b}: {', '.join(unknown)} not in this comparison ({', '.join(models)})")
        if a == b:
            raise ConfigError(f"--pair {a},{b}: a model against itself")

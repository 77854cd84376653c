"""Paired comparisons over held-out conversations and seeds (cvfp.experiments.paired)."""

import math

import numpy as np
import pytest

from cvfp.experiments.paired import Paired, between, compare_runs, paired_bootstrap, verdict


def test_the_verdict_rule_in_its_words():
    assert verdict([-0.05, -0.02], 0.01) == "better"
    assert verdict([0.02, 0.05], 0.01) == "worse"
    assert verdict([-0.004, 0.006], 0.01) == "equivalent within ±1%"
    assert verdict([-0.02, 0.006], 0.01) == "undetermined"
    assert verdict([-0.02, 0.006], 0.03) == "equivalent within ±3%"
    assert verdict([-0.008, -0.002], 0.01) == "better, by less than the ±1% margin"
    assert verdict(None, 0.01).startswith("undetermined")


def test_a_constant_gap_per_token_is_measured_exactly():
    """A is worse than B by 0.05 nats on every token of every conversation: every resample says so."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 200, size=60)
    b = rng.uniform(3.0, 6.0, size=(2, 60)) * tokens
    difference, ci95, what = paired_bootstrap(b + 0.05 * tokens, b, tokens, resamples=500)
    assert difference == pytest.approx(math.expm1(0.05)) and ci95 == pytest.approx([math.expm1(0.05)] * 2)
    assert what == "conversations and seeds"
    same, same_ci, _ = paired_bootstrap(b, b, tokens, resamples=500)
    assert same == 0 and same_ci == [0, 0] and verdict(same_ci, 0.01) == "equivalent within ±1%"


def test_the_interval_matches_the_delta_method_over_conversations():
    """One seed: the bootstrap's 95% half-width of a ratio of sums is close to 1.96 x its delta-method
    standard error, computed here from the textbook formula."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(20, 400, size=300).astype(float)
    diff = rng.normal(0.02, 0.3, size=300) * tokens  # nats of A - B per conversation
    difference, (lo, hi), what = paired_bootstrap(diff[None, :], np.zeros((1, 300)), tokens, resamples=20_000)
    ratio = diff.sum() / tokens.sum()
    se = math.sqrt(((diff - ratio * tokens) ** 2).sum()) / tokens.sum()  # delta method, n / (n - 1) ignored
    assert math.log1p(difference) == pytest.approx(ratio)
    half = (math.log1p(hi) - math.log1p(lo)) / 2
    assert half == pytest.approx(1.96 * se, rel=0.08) and what == "conversations (one seed)"


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    tokens = rng.integers(50, 100, size=80)
    b = np.tile(rng.uniform(4, 5, size=80) * tokens, (3, 1))
    shifts = np.array([[-0.06], [0.0], [0.06]])  # seed effects: A - B is -6%, 0, +6% nats per token
    a = b + shifts * tokens
    _, agreeing, _ = paired_bootstrap(a[1:2], b[1:2], tokens, resamples=2000)
    _, disagreeing, what = paired_bootstrap(a, b, tokens, resamples=2000)
    assert what == "conversations and seeds"
    assert disagreeing[1] - disagreeing[0] > 0.05 > agreeing[1] - agreeing[0]
    assert verdict(disagreeing, 0.01) == "undetermined"


def _results(seed_nats: dict[int, list[float]], tokens: list[int], samples: int = 8) -> dict:
    points = [
        {"samples": samples, "seed": seed, "test": {"documents": {"nats": nats, "tokens": tokens}}}
        for seed, nats in seed_nats.items()
    ]
    return {"points": points}


def test_runs_pair_by_seed_and_conversation():
    tokens = [10, 20, 30, 40]
    a = _results({0: [20.0, 40.0, 60.0, 80.0], 1: [21.0, 41.0, 61.0, 81.0], 7: [1.0] * 4}, tokens)
    b = _results({0: [22.0, 44.0, 66.0, 88.0], 1: [23.0, 45.0, 67.0, 89.0]}, tokens)
    pair = compare_runs("a", a, "b", b, 8)
    assert isinstance(pair, Paired) and pair.seeds == [0, 1] and pair.metric == "test" and pair.conversations == 4
    expected = ((200 - 220) / 100 + (204 - 224) / 100) / 2  # nats per token, mean over the paired seeds
    assert math.log1p(pair.difference) == pytest.approx(expected)
    assert pair.verdict == "better" and pair.text().startswith("a - b = -18.1% [")
    other = _results({0: [20.0, 40.0, 60.0], 1: [20.0, 40.0, 60.0]}, [10, 20, 30])
    assert "not scored on the same conversations" in compare_runs("a", a, "o", other, 8)["error"]
    assert "no seed" in compare_runs("a", a, "b", b, 16)["error"]


def test_an_asked_pair_is_measured_at_every_common_size_or_says_why_not():
    tokens = [10, 20]
    a = {"points": _results({0: [20.0, 40.0]}, tokens, 8)["points"] + _results({0: [10.0, 20.0]}, tokens, 16)["points"]}
    b = _results({0: [22.0, 44.0]}, tokens, 8)
    assert [(p.samples, p.a, p.b) for p in between("a", "b", {"a": a, "b": b})] == [(8, "a", "b")]
    (missing,) = between("a", "c", {"a": a, "c": {"points": []}})
    assert missing["error"] == "no size finished by both" and (missing["a"], missing["b"]) == ("a", "c")

"""The results of a sweep (``results.json``): one record per run, per-size
summaries over seeds, and every fit. Built from the runs' summaries alone, so
a resumed or rebuilt sweep gives the same file.
"""

from __future__ import annotations

import math
import statistics

from cvfp.config import RunConfig
from cvfp.errors import CvfpError
from cvfp.experiments.fits import (
    bootstrap_alpha_seeds,
    compare_shapes,
    extrapolation_check,
    fit_power_law,
    fit_saturating,
    sliding_alpha,
)
from cvfp.io.records import PointRecord

# Version of the results.json layout; readers upgrade formats 3 and 4 (their fits recomputed from their
# points) and refuse others.
# 4: the fits' loss floor is "floor" (format 3 called it "E").
# 5: fits on the size means of the reported set ("fit_metric": test where there is one), the floor identified
#    by its interval; the bootstrap over runs is gone (seed replicates are not independent points).
RESULTS_FORMAT = 5

# Per-size figures summarised over seeds (mean, sd, min, max).
SIZE_FIGURES = (
    "val_ppl",
    "val_loss",
    "val_acc",
    "val_bpb",
    "val_er",
    "train_er",
    "phase1_iterations",
    "phase1_final_rate",
    "best_epoch",
    "seconds",
    "train_flops",
)

# Sizes in each window of the sliding-window alpha.
SLIDING_WINDOW = 3


def spread(values: list[float | None]) -> dict | None:
    """Mean, sample standard deviation (None for one value), min and max of the
    values that exist (None when none does: a figure the architecture lacks)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def size_summaries(points: list[dict]) -> list[dict]:
    out = []
    for n in sorted({p["samples"] for p in points}):
        runs = [p for p in points if p["samples"] == n]
        row = {"samples": n, "train_tokens": runs[0]["train_tokens"], "seeds": [p["seed"] for p in runs]}
        for key in SIZE_FIGURES:
            row[key] = spread([None if p[key] is None else float(p[key]) for p in runs])
        tests = [p["test"]["ppl"] for p in runs if p["test"] is not None]
        row["test_ppl"] = spread(tests) if tests else None
        out.append(row)
    return out


def _guarded(fn, *args) -> dict:
    """A fit that fails is recorded as an error, never raised after the runs are saved."""
    try:
        return fn(*args)
    except (ValueError, RuntimeError, FloatingPointError) as err:
        return {"error": f"{type(err).__name__}: {err}"}


def fit_metric(points: list[dict]) -> str:
    """What the fits use: test, where every run has a test set (the held-out protocol: validation chose the
    epoch, so it is not an unbiased estimate); else validation (the seed protocol, which has no test set)."""
    return "test" if points and all(p["test"] is not None for p in points) else "val"


def reported(point: dict, metric: str) -> tuple[float, float]:
    """(PPL, loss) of one run on ``metric``'s set."""
    return (point["test"]["ppl"], point["test"]["loss"]) if metric == "test" else (point["val_ppl"], point["val_loss"])


def fits(points: list[dict]) -> dict:
    """Every fit of the sweep, on the reported set (``fit_metric``) of the runs with a finite PPL there."""
    metric = fit_metric(points)
    good = [p for p in points if all(math.isfinite(v) for v in reported(p, metric))]
    tokens = [p["train_tokens"] for p in good]
    ppl = [reported(p, metric)[0] for p in good]
    loss = [reported(p, metric)[1] for p in good]
    sizes = len(set(tokens))
    out = {
        "fit_metric": metric,
        "fit": None,
        "alpha_bootstrap_seeds": None,
        "sliding_alpha": None,
        "saturating_fit": None,
        "shapes": None,
        "extrapolation": None,
        "runs_excluded_from_fits": len(points) - len(good),
    }
    if sizes >= 2:
        out["fit"] = _guarded(fit_power_law, tokens, ppl)
        out["alpha_bootstrap_seeds"] = _guarded(bootstrap_alpha_seeds, tokens, ppl)
    if sizes > SLIDING_WINDOW:
        out["sliding_alpha"] = _guarded(sliding_alpha, tokens, ppl, SLIDING_WINDOW)
    if sizes >= 3:
        out["saturating_fit"] = _guarded(fit_saturating, tokens, loss)
        out["shapes"] = _guarded(compare_shapes, tokens, loss)
        out["extrapolation"] = _guarded(extrapolation_check, tokens, ppl)
    return out


def build_results(
    cfg: RunConfig,
    samples: list[int],
    seeds: list[int],
    summaries: list[dict],
    failures: list[dict],
    preset: str | None,
    environment: dict,
) -> dict:
    points = [PointRecord.from_summary(s).to_dict() | {"max_epochs": cfg.phase2.epochs} for s in summaries]
    return results_record(settings_record(cfg, samples, seeds, preset), points, failures, environment)


def settings_record(cfg: RunConfig, samples: list[int], seeds: list[int], preset: str | None) -> dict:
    """results.json's "settings": what the sweep ran."""
    return {
        "preset": preset,
        "arch": cfg.model.arch,
        "corpus": cfg.data.corpus,
        "embeddings": cfg.data.embeddings,
        "protocol": cfg.data.protocol,
        "samples": list(samples),
        "seeds": list(seeds),
        "config": cfg.to_dict(),
    }


def results_record(settings: dict, points: list[dict], failures: list[dict], environment: dict) -> dict:
    """A results.json of these runs' records (sorted by size and seed), with their size summaries and fits."""
    points = sorted(points, key=lambda p: (p["samples"], p["seed"]))
    return {
        "format": RESULTS_FORMAT,
        "settings": settings,
        "points": points,
        "sizes": size_summaries(points),
        **fits(points),
        "failures": failures,
        "environment": environment,
    }


class ResultsFormatError(CvfpError, ValueError):
    """A results.json written by another version of cvfp."""


def _upgraded_point(point: dict) -> dict:
    """A run of an older results.json with every field of today's record (those it lacks as None)."""
    fields = PointRecord.__dataclass_fields__
    return {**{name: None for name in fields}, **point}


def check_format(results: dict, source: str) -> dict:
    """``results`` in this version's format (formats 3 and 4: the fits recomputed from the stored points,
    which hold everything they need), or a ResultsFormatError."""
    found = results.get("format") if isinstance(results, dict) else None  # older files have no "format" key
    if found in (3, 4):
        try:
            stale = ("alpha_bootstrap", "fit", "saturating_fit", "shapes", "sliding_alpha", "extrapolation")
            kept = {k: v for k, v in results.items() if k not in stale}
            points = [_upgraded_point(p) for p in results["points"]]
            return kept | {"points": points} | fits(points) | {"format": RESULTS_FORMAT}
        except (TypeError, AttributeError, KeyError) as err:  # a hand-edited or damaged file
            raise ResultsFormatError(f"{source} is malformed: {type(err).__name__}: {err}") from None
    if found != RESULTS_FORMAT:
        raise ResultsFormatError(
            f"{source} has results format {found!r}; this cvfp reads formats 3 to {RESULTS_FORMAT}. "
            "Rerun the sweep command on its folder to rebuild it from the finished runs."
        )
    return results

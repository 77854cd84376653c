"""Reports rebuilt from ``results.json`` alone: the tables and report.md (the plots: ``plots.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cvfp.experiments.formatting import ci, composition_line, count, num, pct, protocol_line, seeds_line, spread
from cvfp.experiments.paired import paired_bootstrap, pct_interval
from cvfp.experiments.plots import plot
from cvfp.experiments.results import reported
from cvfp.files import atomic_write_text


def summary_table(results: dict) -> str:
    rows = [
        (
            "| Samples | Tokens | Runs | Val PPL | Val Acc | Val ER | Phase 1 Iter (with the random 0) | Best Epoch | "
            "Val bits/byte | "
            "Test PPL | Time |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results["sizes"]:
        rows.append(
            f"| {s['samples']} | {s['train_tokens']:,} | {len(s['seeds'])} | {spread(s['val_ppl'])} | "
            f"{spread(s['val_acc'], pct)} | {spread(s['val_er'], pct)} | {spread(s['phase1_iterations'], count)} | "
            f"{spread(s['best_epoch'], count)} | {spread(s['val_bpb'], lambda v: f'{v:.3f}')} | "
            f"{spread(s['test_ppl'])} | {s['seconds']['mean'] / 60:.1f} min |"
        )
    return "\n".join(rows)


def runs_table(points: list[dict]) -> str:
    rows = [
        (
            "| Samples | Seed | Val PPL | Val Acc | Val ER | Phase 1 Iter (with the random 0) | Best/Stop Epoch | Val bits/byte | "
            "Val ER centred (rows) | Train ER | Context gap (rel.) | Test PPL | Time |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        test, gap = p["test"], p["context_gap"]
        rows.append(
            f"| {p['samples']} | {p['seed']} | {num(p['val_ppl'])} | {pct(p['val_acc'])} | {pct(p['val_er'])} | "
            f"{num(p['phase1_iterations'])} | {p['best_epoch']}/{p['stopped_epoch']} | {p['val_bpb']:.3f} | "
            f"{pct(p['val_er_centered'])} ({num(p['val_er_centered_rows'])}) | {pct(p['train_er'])} | "
            f"{'-' if gap is None else format(gap['relative_norm'], '.3f')} | {num(test['ppl'] if test else None)} | "
            f"{p['seconds'] / 60:.1f} min |"
        )
    return "\n".join(rows)


METRIC_TEXT = {
    "test": "test PPL (validation chose each run's epoch, so it is not reported)",
    "val": "validation PPL (the seed protocol has no test set: not a held-out estimate)",
}


def fit_text(results: dict) -> str:
    fit, metric = results["fit"], results["fit_metric"]
    if not fit:
        points = results["points"]
        finite = [p for p in points if math.isfinite(reported(p, metric)[0])]
        sizes = len({p["train_tokens"] for p in finite})
        return (f"No fit: it needs runs at 2 or more distinct train-token counts with a finite PPL; "
                f"{len(points)} run(s) finished, {len(points) - len(finite)} with a non-finite PPL, "
                f"{sizes} distinct token count(s).")  # fmt: skip
    if "error" in fit:
        return f"No fit: {fit['error']}."
    lines = [
        f"Fitted on {METRIC_TEXT[metric]}, one point per size (the mean of log PPL over its seeds).",
        "```",
        "PPL = A x tokens^alpha (OLS of log PPL on log tokens, size means)",
        "",
    ]
    ci_text = f", 95% t-interval {ci(fit['alpha_ci95'])}" if fit["alpha_ci95"] else " (no interval with 2 sizes)"
    lines.append(
        f"alpha = {fit['alpha']:.3f}{ci_text} (R^2 = {fit['r2']:.3f}, {fit['points']} sizes, {fit['runs']} runs)"
    )
    lines.append(f"A     = {fit['A']:,.1f}")
    boot = results["alpha_bootstrap_seeds"]
    if boot and "error" not in boot:
        lines.append(
            f"seed spread of alpha: 95% {ci(boot['ci95'])} (se {boot['se']:.3f}; seeds resampled within each size, "
            f"{boot['resamples']:,} resamples; seed noise only, not an interval for alpha)"
        )
    lines.append("```")
    lines.append(f"2x data reduces PPL by {100 * fit['reduction_per_doubling']:.1f}%.")
    return "\n".join(lines)


def sliding_text(sliding: list[dict] | dict | None) -> str:
    if not sliding:
        return "Sliding-window alpha: needs more sizes than the window (3)."
    if isinstance(sliding, dict):
        return f"Sliding-window alpha: not computed ({sliding['error']})."
    rows = ["| Tokens (window of 3 sizes) | Runs | alpha | 95% t-interval |", "|---|---:|---:|---|"]
    for w in sliding:
        rows.append(f"| {w['tokens'][0]:,} - {w['tokens'][1]:,} | {w['runs']} | {w['alpha']:.3f} | {ci(w['ci95'])} |")
    return "\n".join(rows)


# Sizes a sweep needs before its report extrapolates the fitted curve.
MIN_SIZES_TO_PREDICT = 3


def prediction_table(results: dict) -> str:
    fit = results["fit"]
    if not fit or "error" in fit:
        return ""
    measured = [s["train_tokens"] for s in results["sizes"]]
    if len(measured) < MIN_SIZES_TO_PREDICT:
        return (f"No predictions: {len(measured)} measured size(s); a curve through fewer than "
                f"{MIN_SIZES_TO_PREDICT} says nothing about where it goes.")  # fmt: skip
    rows = ["| Train tokens | PPL | Note |", "|---:|---:|---|"]
    key = f"{results['fit_metric']}_ppl"
    for s in results["sizes"]:
        rows.append(f"| {s['train_tokens']:,} | {spread(s[key])} | measured ({results['fit_metric']}) |")
    shapes = results["shapes"]
    by_shape = {p["tokens"]: p for p in shapes["prediction_spread"]} if shapes and "error" not in shapes else {}
    for pred in fit["predictions"]:
        band = pred["ci95"]
        beyond = pred["tokens"] / max(measured)
        note = f"power law (95% band {band[0]:.0f}-{band[1]:.0f})" if band else "power law"
        note = f"{beyond:.0f}x beyond the largest measured size; {note}"
        if pred["tokens"] in by_shape:
            sp = by_shape[pred["tokens"]]
            note += f"; all shapes {sp['ppl_min']:.0f}-{sp['ppl_max']:.0f}"
        rows.append(f"| {pred['tokens']:,} | {pred['ppl']:.0f} | {note} |")
    return "\n".join(rows)


def extrapolation_text(check: dict | None) -> str:
    """How far the power law fitted without the largest size lands from the measured value there."""
    if not check:
        return "Extrapolation check: needs at least 3 sizes."
    if "error" in check:
        return f"Extrapolation check: not done ({check['error']})."
    band = (
        f" (95% band {check['predicted_ci95'][0]:.0f}-{check['predicted_ci95'][1]:.0f})"
        if check["predicted_ci95"]
        else ""
    )
    return (
        f"Extrapolation check: the power law fitted to the {check['fit_sizes']} smaller sizes only (alpha "
        f"{check['alpha_without_largest']:.3f}) predicts PPL {check['predicted_ppl']:.1f}{band} at "
        f"{check['tokens']:,} tokens; measured {check['measured_ppl']:.1f}: off by {100 * check['relative_error']:+.1f}%. "
        "The predictions below extrapolate much further than this."
    )


def saturating_text(sat: dict | None) -> str:
    if not sat:
        return ""
    if "error" in sat:
        return f"Saturating fit L = floor + B*T^-beta on cross-entropy: not fitted ({sat['error']})."
    verdict = (
        "the floor is identified by these points"
        if sat["identifiable"]
        else f"the floor is NOT identified by these points ({sat['why_not_identifiable']})"
    )
    floor_ci = f", 95% CI {ci(sat['floor_ci95'])}" if sat["floor_ci95"] else ""
    beta_ci = f", 95% CI {ci(sat['beta_ci95'])}" if sat["beta_ci95"] else ""
    return (
        f"Saturating fit on cross-entropy (T: train tokens; size means), L = floor + B*T^-beta: floor = "
        f"{sat['floor']:.3f} nats (se {sat['floor_se']:.3f}{floor_ci}), beta = {sat['beta']:.3f} (se "
        f"{sat['beta_se']:.3f}{beta_ci}), RMSE {sat['rmse']:.4f}, {sat['dof']} residual degree(s) of freedom: "
        f"{verdict}."
    )


def shapes_text(shapes: dict | None) -> str:
    if not shapes:
        return "Curve shapes: need at least 3 sizes."
    if "error" in shapes:
        return f"Curve shapes: not compared ({shapes['error']})."
    crit = shapes["criterion"].upper().replace("AICC", "AICc")
    caution = (
        ""
        if shapes["criterion"] == "aicc"
        else " AICc is undefined with this few sizes (sizes <= parameters "
        "+ 2), so plain AIC ranks them, which under-penalises the 3-parameter shapes: read it as weak."
    )
    rows = [
        f"Fitted to the size means of cross-entropy ({shapes['sizes']} sizes), ranked by {crit} (lower is better; weights are "
        "Akaike weights). Best: **" + shapes["best"] + "**." + caution,
        "",
        f"| Shape | Formula | Parameters | {crit} | delta | weight | "
        + " | ".join(f"PPL at {p['tokens']:,}" for p in shapes["shapes"][0]["predictions"])
        + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(shapes["shapes"][0]["predictions"]),
    ]
    for s in shapes["shapes"]:
        value = s[shapes["criterion"]]
        rows.append(
            f"| {s['name']} | {s['formula']} | {s['k'] - 1} | {value:.2f} | {s['delta']:.2f} | {s['weight']:.2f} | "
            + " | ".join(num(p["ppl"]) for p in s["predictions"])
            + " |"
        )
    return "\n".join(rows)


def context_use_table(points: list[dict]) -> str:
    """Test PPL of each CVFP run with its own contexts, another token's (shuffled) and zeros, and the paired
    differences (over the test conversations): how much the TokenBlock gets from the context."""
    runs = [p for p in points if p["test"] and p["test"].get("context_use")]
    if not runs:
        return ""
    rows = [
        (
            "Test PPL with each token's own contexts, with those of a random other token (shuffled), and with zeros; "
            "own - other is paired over the test conversations (95% bootstrap interval; `docs/statistics.md`)."
        ),
        "",
        "| Samples | Seed | Own | Shuffled | Zero | Own - shuffled | Own - zero |",
        "|---:|---:|---:|---:|---:|---|---|",
    ]
    for p in runs:
        own, use = p["test"], p["test"]["context_use"]
        cells = []
        for other in (use["shuffled"], use["zero"]):
            diff, interval, _ = paired_bootstrap(*(np.array([d["documents"]["nats"]]) for d in (own, other)),
                                                 np.array(own["documents"]["tokens"]), resamples=2000)  # fmt: skip
            cells.append(f"{100 * diff:+.1f}% {pct_interval(interval)}")
        rows.append(
            f"| {p['samples']} | {p['seed']} | {num(own['ppl'])} | {num(use['shuffled']['ppl'])} | "
            f"{num(use['zero']['ppl'])} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(rows)


def end_to_end_table(points: list[dict]) -> str:
    """The end-to-end epochs of ``phase1.objective = "lm"`` runs (``training.end_to_end``): train PPL, the Jacobi
    residual and converged share, the stored contexts' gap to the true recurrence, the map's contraction."""
    runs = [p for p in points if (p["details"] or {}).get("end_to_end")]
    if not runs:
        return ""
    rows = [
        "| Samples | Seed | Epoch | Train PPL | Residual (RMS) | Converged | Context gap (rel.) | Contraction max / mean |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in runs:
        for e in p["details"]["end_to_end"]["epochs"]:
            rows.append(
                f"| {p['samples']} | {p['seed']} | {e['epoch']} | {num(e['train_ppl'])} | {e['residual']:.4f} | "
                f"{pct(e['converged_rate'])} | {e['context_gap']:.3f} | "
                f"{e['contraction_max']:.3f} / {e['contraction_mean']:.3f} |"
            )
    return "\n".join(rows)


def epoch_details(points: list[dict]) -> str:
    out = []
    for p in points:
        out.append(f"### {p['samples']} samples, seed {p['seed']}\n```")
        for e in p["epochs"]:
            star = " *Best" if e["epoch"] == p["best_epoch"] else ""
            out.append(
                f"Epoch {e['epoch']}: train_ppl={num(e['train_ppl'])} val_ppl={num(e['val_ppl'])} "
                f"acc={pct(e['val_acc'])}{star}"
            )
        if p["stopped_epoch"] < p["max_epochs"]:
            out.append("-> Early stop")
        out.append("```")
    return "\n".join(out)


def render_markdown(results: dict) -> str:
    s = results["settings"]
    parts = [
        f"# Scaling experiment: {s['arch']} design, {s['corpus']} corpus, {s['embeddings']} embeddings",
        "",
        protocol_line(s),
        composition_line(results),
        seeds_line(results),
        "",
        "## Summary",
        "",
        f"Validation chose each run's epoch; the fits and every claim use {METRIC_TEXT[results['fit_metric']]}.",
        "",
        summary_table(results),
        "",
        "## Scaling law",
        "",
        fit_text(results),
        "",
        "### Sliding-window alpha",
        "",
        sliding_text(results["sliding_alpha"]),
        "",
        "### Curve shapes",
        "",
        shapes_text(results["shapes"]),
        "",
        saturating_text(results["saturating_fit"]),
        "",
        "## Prediction table",
        "",
        extrapolation_text(results["extrapolation"]),
        "",
        prediction_table(results),
        "",
        "![PPL vs tokens](ppl_vs_tokens.png)",
        "![Validation PPL per epoch](val_ppl_per_epoch.png)",
        "",
        "## Every run",
        "",
        runs_table(results["points"]),
        "",
        "## Context use",
        "",
        context_use_table(results["points"])
        or "No run has a context-use diagnostic (a test set and a design that reads contexts).",
        "",
        "## Phase 2 details",
        "",
        epoch_details(results["points"]),
        "",
    ]
    if end_to_end := end_to_end_table(results["points"]):
        parts += ["## End-to-end training (`phase1.objective = lm`, `docs/end-to-end.md`)", "", end_to_end, ""]
    if results["failures"]:
        parts += ["## Failed runs", ""]
        parts += [f"- {f['samples']} samples, seed {f['seed']}: {f['error']}" for f in results["failures"]]
        parts.append("")
    parts += [
        "## Settings",
        "",
        "```json",
        _json(s),
        "```",
        "",
        "## Environment",
        "",
        "```json",
        _json(results["environment"]),
        "```",
        "",
    ]
    return "\n".join(parts)


def _json(obj) -> str:
    return json.dumps(obj, indent=2)


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    plot(results, out_dir)
    path = out_dir / "report.md"
    atomic_write_text(path, render_markdown(results))
    return path


def terminal_summary(results: dict) -> str:
    return "\n".join(
        [
            protocol_line(results["settings"]),
            seeds_line(results),
            "",
            summary_table(results),
            "",
            fit_text(results),
            "",
            prediction_table(results),
        ]
    )

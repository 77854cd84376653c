"""Reports rebuilt from ``results.json`` alone: tables, report.md and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cvfp.fit import power_law_band

PROTOCOL_TEXT = {
    "seed": "seed protocol (SPEC 6): validation = last 10% of each N's own stream, so every N is "
    "scored on different text",
    "heldout": "held-out protocol: validation and test are fixed conversations shared by every N "
    "and never trained on",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.1f}" if math.isfinite(x) else str(x)


def protocol_line(settings: dict) -> str:
    return f"Protocol: {settings['protocol']} ({PROTOCOL_TEXT[settings['protocol']]})."


def summary_table(points: list[dict]) -> str:
    rows = [
        "| Samples | Tokens | Val PPL | Val Acc | Val ER | Phase 1 Iter | Best/Stop Epoch | Time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        rows.append(
            f"| {p['samples']} | {p['train_tokens']:,} | {_num(p['val_ppl'])} | {_pct(p['val_acc'])} | "
            f"{_pct(p['val_er'])} | {p['phase1_iterations']} | {p['best_epoch']}/{p['stopped_epoch']} | "
            f"{p['seconds'] / 60:.1f} min |"
        )
    return "\n".join(rows)


def detail_table(points: list[dict]) -> str:
    rows = [
        "| Samples | Val tokens | Val bits/byte | Val ER centred (rows) | Train ER | Train-vs-sequential "
        "context gap (rel.) | Test PPL | Test Acc |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        test = p.get("test") or {}
        rows.append(
            f"| {p['samples']} | {p['val_tokens']:,} | {p['val_bpb']:.3f} | {_pct(p['val_er_centered'])} "
            f"({p['val_er_centered_rows']}) | {_pct(p['train_er'])} | {p['context_gap']['relative_norm']:.3f} | "
            f"{_num(test.get('ppl'))} | {_pct(test.get('acc'))} |"
        )
    return "\n".join(rows)


def fit_text(fit: dict | None) -> str:
    if not fit:
        return "No fit (fewer than 2 finished points)."
    lines = ["```", "PPL = A x tokens^alpha", ""]
    ci = fit["alpha_ci95"]
    ci_text = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no CI with 2 points)"
    lines.append(f"alpha = {fit['alpha']:.3f}{ci_text} (R^2 = {fit['r2']:.3f}, {fit['points']} points)")
    lines.append(f"A     = {fit['A']:,.1f}")
    lines.append("```")
    lines.append(f"2x data reduces PPL by {100 * fit['reduction_per_doubling']:.1f}%.")
    return "\n".join(lines)


def prediction_table(points: list[dict], fit: dict | None) -> str:
    if not fit:
        return ""
    rows = ["| Train tokens | PPL | Note |", "|---:|---:|---|"]
    for p in points:
        rows.append(f"| {p['train_tokens']:,} | {_num(p['val_ppl'])} | measured |")
    for pred in fit["predictions"]:
        band = pred["ci95"]
        note = f"predicted (95% CI of the fit {band[0]:.0f}-{band[1]:.0f})" if band else "predicted"
        rows.append(f"| {pred['tokens']:,} | {pred['ppl']:.0f} | {note} |")
    return "\n".join(rows)


def saturating_text(sat: dict | None) -> str:
    if not sat:
        return ""
    if "error" in sat:
        return f"Saturating fit L = E + B*D^-beta on cross-entropy: not fitted ({sat['error']})."
    return (
        f"Saturating fit on cross-entropy, L = E + B*D^-beta: E = {sat['E']:.3f} nats, beta = "
        f"{sat['beta']:.3f}, RMSE {sat['rmse']:.4f} ({sat['dof']} degree(s) of freedom: a sanity check only)."
    )


def epoch_details(points: list[dict]) -> str:
    out = []
    for p in points:
        out.append(f"### {p['samples']} samples\n```")
        for e in p["epochs"]:
            star = " *Best" if e["epoch"] == p["best_epoch"] else ""
            out.append(
                f"Epoch {e['epoch']}: train_ppl={_num(e['train_ppl'])} val_ppl={_num(e['val_ppl'])} "
                f"acc={_pct(e['val_acc'])}{star}"
            )
        if p["stopped_epoch"] < p["max_epochs"]:
            out.append("-> Early stop")
        out.append("```")
    return "\n".join(out)


def render_markdown(results: dict) -> str:
    s = results["settings"]
    points = results["points"]
    parts = [
        f"# Scaling experiment: {s['arch']} design, {s['corpus']} corpus, {s['embeddings']} embeddings",
        "",
        protocol_line(s),
        "",
        "## Summary",
        "",
        summary_table(points),
        "",
        detail_table(points),
        "",
        "## Scaling law",
        "",
        fit_text(results.get("fit")),
        "",
        saturating_text(results.get("saturating_fit")),
        "",
        "## Prediction table",
        "",
        prediction_table(points, results.get("fit")),
        "",
        "![PPL vs tokens](ppl_vs_tokens.png)",
        "![Validation PPL per epoch](val_ppl_per_epoch.png)",
        "",
        "## Phase 2 details",
        "",
        epoch_details(points),
        "",
    ]
    if results.get("failures"):
        parts += ["## Failed points", ""]
        parts += [f"- {f['samples']} samples: {f['error']}" for f in results["failures"]]
        parts.append("")
    parts += ["## Settings", "", "```json", _json(s), "```", "", "## Environment", "", "```json",
              _json(results.get("environment", {})), "```", ""]  # fmt: skip
    return "\n".join(parts)


def _json(obj) -> str:
    return json.dumps(obj, indent=2)


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = results["points"]
    written = []
    if points:
        tokens = np.array([p["train_tokens"] for p in points], dtype=float)
        ppl = np.array([p["val_ppl"] for p in points], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.loglog(tokens, ppl, "o", label="measured (best epoch)")
        fit = results.get("fit")
        if fit:
            grid = np.geomspace(tokens.min() / 1.5, tokens.max() * 1.5, 100)
            band = power_law_band(tokens, ppl, grid)
            ax.loglog(grid, fit["A"] * grid ** fit["alpha"], "-", label=f"fit alpha={fit['alpha']:.3f}")
            if band is not None:
                ax.fill_between(grid, band[1], band[2], alpha=0.2, label="95% CI of the fit")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("train tokens")
        ax.set_ylabel("validation PPL")
        ax.set_title(f"{results['settings']['arch']} design, {results['settings']['protocol']} protocol")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        path = out_dir / "ppl_vs_tokens.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(6, 4.5))
        for p in points:
            ax.plot([e["epoch"] for e in p["epochs"]], [e["val_ppl"] for e in p["epochs"]], "o-",
                    label=f"{p['samples']} samples")  # fmt: skip
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation PPL")
        ax.legend()
        ax.grid(True, alpha=0.3)
        path = out_dir / "val_ppl_per_epoch.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    plot(results, out_dir)
    path = out_dir / "report.md"
    path.write_text(render_markdown(results), encoding="utf-8")
    return path


def terminal_summary(results: dict) -> str:
    return "\n".join(
        [
            protocol_line(results["settings"]),
            "",
            summary_table(results["points"]),
            "",
            fit_text(results.get("fit")),
            "",
            prediction_table(results["points"], results.get("fit")),
            "",
            "Phase 2 details",
            epoch_details(results["points"]),
        ]
    )


def comparison_tables(e: dict, d: dict) -> str:
    """The seed's comparison: largest common N, improvement in %, and alphas."""
    common = sorted({p["samples"] for p in e["points"]} & {p["samples"] for p in d["points"]})
    if not common:
        return "No sample size finished for both designs."
    n = common[-1]
    pe = next(p for p in e["points"] if p["samples"] == n)
    pd = next(p for p in d["points"] if p["samples"] == n)

    def change(a: float, b: float) -> str:
        return f"{100 * (a - b) / b:+.0f}%"

    rows = [
        protocol_line(e["settings"]),
        "",
        f"### Same {n} samples, every other setting equal",
        "",
        "| Design | Val PPL | Val Acc | Val ER | Val bits/byte |",
        "|---|---:|---:|---:|---:|",
        f"| E (token input on all layers) | {pe['val_ppl']:.1f} | {_pct(pe['val_acc'])} | {_pct(pe['val_er'])} | {pe['val_bpb']:.3f} |",
        f"| equal-decrease | {pd['val_ppl']:.1f} | {_pct(pd['val_acc'])} | {_pct(pd['val_er'])} | {pd['val_bpb']:.3f} |",
        f"| change (E vs equal-decrease) | {change(pe['val_ppl'], pd['val_ppl'])} | "
        f"{change(pe['val_acc'], pd['val_acc'])} | {change(pe['val_er'], pd['val_er'])} | "
        f"{change(pe['val_bpb'], pd['val_bpb'])} |",
        "",
        "### alpha",
        "",
        "| Design | alpha | 95% CI | R^2 |",
        "|---|---:|---|---:|",
    ]
    for label, r in (("E (token input on all layers)", e), ("equal-decrease", d)):
        f = r.get("fit")
        if f:
            ci = f"[{f['alpha_ci95'][0]:.3f}, {f['alpha_ci95'][1]:.3f}]" if f["alpha_ci95"] else "-"
            rows.append(f"| {label} | {f['alpha']:.3f} | {ci} | {f['r2']:.3f} |")
        else:
            rows.append(f"| {label} | - | - | - |")
    return "\n".join(rows)

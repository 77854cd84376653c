"""The plots of a sweep (``ppl_vs_tokens.png``, ``val_ppl_per_epoch.png``) and the curve every other plot
(compare, grid) draws per model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cvfp.experiments.fits import power_law_band
from cvfp.experiments.results import reported
from cvfp.files import atomic_write


def save_figure(fig, path: Path) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically (a full disk leaves no partial or empty image) and
    close it, written or not; returns ``path``."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def plot_curve(ax, results: dict, label: str | None = None, color=None, band: bool = True) -> None:
    """Every run (dots), the per-size mean ± sd (error bars) and the power-law fit of one sweep (solid over the
    measured sizes, dashed beyond them), on the reported set."""
    metric = results["fit_metric"]
    points = [p for p in results["points"] if math.isfinite(reported(p, metric)[0])]
    if not points:
        return
    tokens = np.array([p["train_tokens"] for p in points], dtype=float)
    ppl = np.array([reported(p, metric)[0] for p in points], dtype=float)
    sizes = [s for s in results["sizes"] if s[f"{metric}_ppl"]]
    multi = len(results["settings"]["seeds"]) > 1
    line = ax.errorbar(
        [s["train_tokens"] for s in sizes],
        [s[f"{metric}_ppl"]["mean"] for s in sizes],
        yerr=[s[f"{metric}_ppl"]["sd"] or 0.0 for s in sizes],
        fmt="o",
        capsize=3,
        color=color,
        label=(label or "measured") + (" (mean ± sd over seeds)" if multi else " (best epoch)"),
    )
    color = line[0].get_color()
    if multi:
        ax.plot(tokens, ppl, ".", alpha=0.35, color=color)
    fit = results["fit"]
    if fit and "error" not in fit:
        name = f"{label} fit" if label else "fit"
        inside = np.geomspace(tokens.min(), tokens.max(), 100)
        ax.plot(inside, fit["A"] * inside ** fit["alpha"], "-", color=color, label=f"{name}, alpha={fit['alpha']:.3f}")
        for lo, hi in ((tokens.min() / 1.5, tokens.min()), (tokens.max(), tokens.max() * 1.5)):  # beyond the data
            outside = np.geomspace(lo, hi, 20)
            ax.plot(outside, fit["A"] * outside ** fit["alpha"], "--", color=color, alpha=0.7)
        grid = np.geomspace(tokens.min() / 1.5, tokens.max() * 1.5, 100)
        fit_band = power_law_band(tokens, ppl, grid) if band else None
        if fit_band is not None:
            ax.fill_between(grid, fit_band[1], fit_band[2], alpha=0.15, color=color, label="95% band of the fit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    label_log_ticks(ax.xaxis, tokens.max() / tokens.min())
    ax.set_xlabel("train tokens")
    ax.set_ylabel(f"{'test' if metric == 'test' else 'validation'} PPL")
    ax.grid(True, which="both", alpha=0.3)


def label_log_ticks(axis, span: float) -> None:
    """Numbers on a log axis whatever the data's span: within a decade the minor ticks (2x, 5x) are labelled
    too, since the majors alone may be one label or none."""
    import matplotlib.ticker

    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
    axis.set_major_formatter(plain)
    axis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(plain if span < 10 else matplotlib.ticker.NullFormatter())


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = results["points"]
    written = []
    if points:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        plot_curve(ax, results)
        ax.set_title(f"{results['settings']['arch']} design, {results['settings']['protocol']} protocol")
        ax.legend(fontsize=8)
        written.append(save_figure(fig, out_dir / "ppl_vs_tokens.png"))

        fig, ax = plt.subplots(figsize=(6, 4.5))
        for p in points:
            ax.plot(
                [e["epoch"] for e in p["epochs"]],
                [e["val_ppl"] for e in p["epochs"]],
                "o-",
                label=f"{p['samples']} samples, seed {p['seed']}",
            )
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation PPL")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, alpha=0.3)
        written.append(save_figure(fig, out_dir / "val_ppl_per_epoch.png"))
    return written

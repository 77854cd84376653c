"""Architectures side by side: the same sweep (tokens, seeds, settings) per architecture.

``cvfp compare --archs e,equal-decrease,random-context,lstm,transformer,ngram``
runs one sweep per architecture in ``OUT/<arch>/`` (each resumable), then
writes ``OUT/compare.md`` (one table at the largest common size, plus the
original's E-vs-equal-decrease comparison when both are present) and
``OUT/compare.png`` (every model's points and power-law fit on one plot).

``--variant NAME:KEY=V;KEY=V`` adds a model that is a config of an architecture
(``phase1.objective=lm``, a head, a width) under its own name and folder,
compared exactly like one (tuned alike with ``--tune``).

An undertrained baseline proves nothing, so ``--search KEY=V1,V2`` (e.g. the
learning rate and the epoch cap) adds, for every trained architecture, a
small grid at one size (``OUT/<arch>/search/``, a ``run_grid`` each) and a
second table with each architecture's best cell, chosen on validation loss
(never on test), CVFP included: the comparison stays even.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from cvfp import distributed
from cvfp.config import ConfigError, RunConfig
from cvfp.data.protocols import check_size
from cvfp.experiments.formatting import (
    ci,
    composition_line,
    fixed,
    flops,
    model_label,
    pct,
    protocol_line,
    seeds_line,
    spread,
)
from cvfp.experiments.grid import Axis, Variant, grid_cells, run_grid
from cvfp.experiments.paired import (
    MARGIN,
    Paired,
    against,
    between,
    check_pairs,
    merged_pairs,
    paired_table,
    rule_text,
)
from cvfp.experiments.plots import plot_curve, save_figure
from cvfp.experiments.results import reported
from cvfp.experiments.sweep import Sweep, run_sweeps
from cvfp.experiments.tune import Tuned, Tuning, run_tuned
from cvfp.files import atomic_write_text
from cvfp.io.lock import writer_lock
from cvfp.io.rundir import read_json, write_json_atomic
from cvfp.models.registry import ARCHS, ORIGINAL_PAIR, names, spec
from cvfp.training.point import DEFAULT_OPTIONS, RunOptions, load_resources

log = logging.getLogger(__name__)

# How a tuned comparison differs from the shared budget.
TUNED_NOTE = ", except for the settings each trained model was tuned on (below), chosen per model and size"


def parse_archs(text: str) -> list[str]:
    archs = [a.strip() for a in text.split(",") if a.strip()]
    valid = names()
    unknown = [a for a in archs if a not in valid]
    if unknown or not archs:
        raise ConfigError(f"--archs: unknown architecture(s) {unknown}; valid: {', '.join(valid)}")
    if len(set(archs)) != len(archs):
        raise ConfigError(f"--archs lists an architecture twice: {text!r}")
    return archs


def run_compare(
    cfg: RunConfig,
    archs: list[str],
    samples: list[int],
    out: Path,
    seeds: list[int] | None = None,
    search: list[Axis] | None = None,
    search_samples: int | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    margin: float = MARGIN,
    tuning: Tuning | None = None,
    variants: list[Variant] = (),
    pairs: list[tuple[str, str]] = (),
) -> dict[str, dict]:
    """Every model's sweep on the same tokens and seeds (with ``tuning``: each trained model tuned at every size,
    ``experiments.tune``), then OUT/results.json, compare.md and compare.png. The models: ``archs``, then each
    variant (the base config with its overrides, under its own name). The E design is paired against every
    model, and each of ``pairs`` (A, B) A against B."""
    out = Path(out)
    if search and search_samples is not None:  # the search's size exists before anything trains
        if search_samples < 1:
            raise ConfigError(f"--search-samples must be >= 1, got {search_samples}")
        res = load_resources(cfg)
        check_size(res.corpus, search_samples, cfg.data, res.tokenizer, options.token_cache())
    configs = {arch: cfg.replace(model=cfg.model.replace(arch=arch)) for arch in archs}
    configs.update(variant_configs(cfg, variants, archs, tuning))
    archs = list(configs)
    pairs = merged_pairs(kept_pairs(out, archs), pairs)
    check_pairs(pairs, archs)  # before anything trains
    seeds = list(seeds) if seeds else [cfg.seed]
    with writer_lock(out):  # one writer per folder: rank 0 holds it
        choices = {}
        if tuning is not None:
            results, choices = run_tuned(configs, list(samples), out, seeds, tuning, options)
        else:
            sweeps = [Sweep(configs[arch], list(samples), out / arch, seeds, options.preset) for arch in archs]
            results = dict(zip(archs, run_sweeps(sweeps, options)))  # spread over ranks
        tuned = {}
        for arch in archs:
            # a counted model has no learning rate or epochs
            if search and spec(configs[arch].model.arch).trains_by_gradient:
                grid = run_grid(
                    configs[arch],
                    search,
                    [search_samples or max(samples)],
                    out / arch / "search",
                    seeds=seeds,
                    options=options,
                )
                tuned[arch] = best_cell(grid)
        if distributed.ranks().main:
            write_compare(out, results, tuned, search_samples or max(samples), margin, Tuned.of(tuning, choices),
                          {v.name: v.overrides for v in variants}, pairs)  # fmt: skip
        distributed.barrier()
        return results


def kept_pairs(out: Path, models: list[str]) -> list[tuple[str, str]]:
    """The pairs an earlier compare or report of OUT asked for, among ``models``: a rerun keeps them."""
    path = out / "results.json"
    try:
        stored = read_json(path).get("pairs", []) if path.exists() else []
        return [(a, b) for a, b in stored if a in models and b in models]
    except (OSError, ValueError, TypeError, AttributeError) as err:  # the runs matter; the report is rebuilt
        log.warning("%s cannot be read (%s): the pairs it asked for are not kept", path, err)
        return []


def variant_configs(cfg: RunConfig, variants: list[Variant], archs: list[str], tuning: Tuning | None) -> dict:
    """Each variant's config (name -> config), its name distinct from every architecture's and its overrides
    apart from the tuning grid's (which must vary for every model alike)."""
    for v in variants:
        if v.name in ARCHS or v.name in archs:
            raise ConfigError(f"--variant {v.name}: an architecture's name; name the variant otherwise")
        if tuning and (both := sorted(set(v.overrides) & {a.key for a in tuning.axes})):
            raise ConfigError(f"--variant {v.name} sets {both}, which --tune varies for every model")
    return {cell.name: cell.cfg for cell in grid_cells(cfg, [], list(variants))} if variants else {}


def write_compare(
    out: Path,
    results: dict[str, dict],
    tuned: dict,
    search_size: int,
    margin: float,
    tuning: Tuned | None = None,
    variants: dict[str, dict] | None = None,
    asked: list[tuple[str, str]] = (),
) -> None:
    """OUT/results.json (the paired differences, the pairs asked for beside the reference's, the variants'
    overrides, and with ``tuning`` its grid, seeds and every choice; each model's runs are in
    OUT/<name>/results.json, or OUT/<name>/tuned/ when tuned), compare.md and compare.png."""
    pairs = paired_results(results, margin, asked)
    record = {"format": 1, "archs": list(results), "search_samples": search_size, "margin": margin, "paired": pairs}
    if asked:
        record["pairs"] = [list(pair) for pair in asked]
    if variants:
        record["variants"] = variants
    if tuning is not None:
        record["tuning"] = tuning.to_dict()
    write_json_atomic(out / "results.json", record)
    text = render_compare(results, tuned, search_size, pairs, margin, tuning, variants or {})
    atomic_write_text(out / "compare.md", text)
    plot_compare(results, out / "compare.png")


def paired_results(results: dict[str, dict], margin: float, asked: list[tuple[str, str]] = ()) -> list[dict]:
    """The E design (or the first architecture) against every other, paired on test at every common size,
    then each asked-for pair A - B at every size both finished."""
    e_design = ORIGINAL_PAIR[0]
    reference = e_design if e_design in results else next(iter(results))
    pairs = against(reference, results, margin, every_size=True)
    pairs += [p for a, b in asked if a != reference for p in between(a, b, results, margin)]  # E's are in
    return [p if isinstance(p, dict) else p.to_dict() for p in pairs]


def best_cell(grid: dict) -> dict | None:
    """The grid cell with the lowest mean validation loss at its size (None if no cell finished)."""
    done = [c for c in grid["cells"] if c["val_loss"] is not None]
    return min(done, key=lambda c: c["val_loss"]["mean"]) if done else None


def tuned_table(tuned: dict[str, dict | None], size: int, results: dict[str, dict]) -> str:
    rows = [
        (
            f"Each trained architecture's best cell of the search at {size} samples, chosen on validation loss; "
            "test PPL is reported, never used to choose. Beside it, the same architecture under the shared budget at "
            "that size, and the chosen cell's best epoch (a best epoch at the cap means it was still improving)."
        ),
        "",
        "| Model | Chosen setting | Runs | Val PPL | Best epoch | Test PPL | Same budget: Val PPL |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for arch, cell in tuned.items():
        if cell is None:
            rows.append(f"| {model_label(arch)} | no cell finished | - | - | - | - | - |")
            continue
        setting = ", ".join(f"{k}={v}" for k, v in cell["overrides"].items())
        same = next((s["val_ppl"] for s in results[arch]["sizes"] if s["samples"] == size), None)
        epoch = cell["best_epoch"]
        rows.append(
            f"| {model_label(arch)} | {setting} | {cell['runs']} | {spread(cell['val_ppl'])} | "
            f"{spread(epoch, fixed(0)) if epoch else '-'} | {spread(cell['test_ppl'])} | "
            f"{spread(same) if same else '-'} |"
        )
    return "\n".join(rows)


def archs_table(results: dict[str, dict]) -> tuple[int | None, str]:
    """One row per architecture at the largest size every one finished (mean ± sd over seeds)."""
    common = set.intersection(*({s["samples"] for s in r["sizes"]} for r in results.values()))
    if not common:
        return None, "No sample size finished for every architecture."
    n = max(common)
    rows = [
        (
            "| Model | Runs | Val PPL | Test PPL | Val bits/byte | Val Acc | Trainable params | Train FLOPs | Time | "
            "alpha | 95% t-interval | seed spread 95% |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for arch, r in results.items():
        size = next(s for s in r["sizes"] if s["samples"] == n)
        params = next(p["trainable_parameters"] for p in r["points"] if p["samples"] == n)
        fit, boot = r["fit"], r["alpha_bootstrap_seeds"]
        alpha = f"{fit['alpha']:.3f} | {ci(fit['alpha_ci95'])}" if fit and "error" not in fit else "- | -"
        train_flops = size["train_flops"]["mean"] if size["train_flops"] else None
        rows.append(
            f"| {model_label(arch)} | {len(size['seeds'])} | {spread(size['val_ppl'])} | {spread(size['test_ppl'])} | "
            f"{spread(size['val_bpb'], fixed(3))} | {spread(size['val_acc'], pct)} | {params:,} | "
            f"{flops(train_flops)} | {size['seconds']['mean'] / 60:.1f} min | {alpha} | "
            f"{ci(boot['ci95']) if boot and 'error' not in boot else '-'} |"
        )
    return n, "\n".join(rows)


def render_compare(
    results: dict[str, dict],
    tuned: dict[str, dict | None],
    search_size: int,
    pairs: list[dict],
    margin: float,
    tuning: Tuned | None = None,
    variants: dict[str, dict] | None = None,
) -> str:
    first = next(iter(results.values()))
    n, table = archs_table(results)
    budget = "every trained model tuned (below)" if tuning else "the same budget for every model (not tuned)"
    parts = [
        "# Architectures on the same tokens",
        "",
        (
            "Every model ran on the same split (train, validation and test tokens), tokenizer, frozen embedding table "
            "and input LayerNorm, head, and the same Phase 2 optimizer, batch, clip, epochs, patience and "
            f"best-epoch restore{TUNED_NOTE if tuning else ''}; only the model differs. Train FLOPs are analytic "
            "(`cvfp.training.flops`). "
            "Validation chose each run's epoch and is shown for reference; claims are made on test (the paired "
            "differences below)."
        ),
        "",
        protocol_line(first["settings"]),
        composition_line(first),
        seeds_line(first),
        *(variants_line(variants) if variants else []),
        "",
        f"## At {n} samples, {budget}" if n is not None else "## Results",
        "",
        table,
        "",
    ]
    if tuning is not None:
        parts += tuning.sections(results, pairs)
    if pairs:
        parts += ["## Paired differences on test", "", rule_text(margin), ""]
        parts += [paired_table([p if "error" in p else Paired(**p) for p in pairs]), ""]
    if tuned:
        parts += ["## Tuned on validation", "", tuned_table(tuned, search_size, results), ""]
    for arch, r in results.items():  # a model scored otherwise than by its recurrence says how
        if r["points"] and "scoring" in r["points"][0]["details"]:
            parts += [f"{model_label(arch)} scoring: {r['points'][0]['details']['scoring']}.", ""]
    if all(arch in results for arch in ORIGINAL_PAIR):
        parts += [
            "## The original's comparison: E design vs equal-decrease",
            "",
            comparison_tables(*(results[arch] for arch in ORIGINAL_PAIR)),
            "",
        ]
    parts += ["![every model](compare.png)", ""]
    return "\n".join(parts)


def variants_line(variants: dict[str, dict]) -> list[str]:
    """What each named variant changes from its architecture's config."""
    described = "; ".join(f"**{name}**: " + ", ".join(f"{k}={v}" for k, v in o.items()) for name, o in variants.items())
    return [f"Variants (the base config with these fields): {described}."]


def plot_compare(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    measured = []
    for arch, r in results.items():
        plot_curve(ax, r, label=model_label(arch), band=False)
        measured += [reported(p, r["fit_metric"])[0] for p in r["points"]]
    measured = [m for m in measured if math.isfinite(m)]
    if measured:  # the measured range: a steep fit's extension never drags the axis below it
        ax.set_ylim(min(measured) / 1.5, max(measured) * 1.5)
    ax.legend(fontsize=7)
    metric = next(iter(results.values()))["fit_metric"] if results else "val"
    ax.set_title(f"{'test' if metric == 'test' else 'validation'} PPL vs train tokens, every model")
    save_figure(fig, path)


def comparison_tables(e: dict, d: dict) -> str:
    """The original's comparison: largest common N (mean over seeds), change in %, and alphas."""
    common = sorted({s["samples"] for s in e["sizes"]} & {s["samples"] for s in d["sizes"]})
    if not common:
        return "No sample size finished for both designs."
    n = common[-1]
    se = next(s for s in e["sizes"] if s["samples"] == n)
    sd = next(s for s in d["sizes"] if s["samples"] == n)

    def change(key: str) -> str:
        a, b = se[key]["mean"], sd[key]["mean"]
        return f"{100 * (a - b) / b:+.0f}%" if b else "-"

    def row(label: str, s: dict) -> str:
        return (
            f"| {label} | {len(s['seeds'])} | {spread(s['val_ppl'])} | {spread(s['val_acc'], pct)} | "
            f"{spread(s['val_er'], pct)} | {spread(s['val_bpb'], fixed(3))} |"
        )

    rows = [
        protocol_line(e["settings"]),
        seeds_line(e),
        "",
        f"### Same {n} samples, every other setting equal (the original's comparison, on validation)",
        "",
        "| Design | Runs | Val PPL | Val Acc | Val ER | Val bits/byte |",
        "|---|---:|---:|---:|---:|---:|",
        row("E (token input on all layers)", se),
        row("equal-decrease", sd),
        (
            f"| change of the means (E vs equal-decrease) | | {change('val_ppl')} | {change('val_acc')} | "
            f"{change('val_er')} | {change('val_bpb')} |"
        ),
        "",
        "### alpha",
        "",
        "| Design | alpha | 95% t-interval | seed spread 95% | R^2 |",
        "|---|---:|---|---|---:|",
    ]
    for label, r in (("E (token input on all layers)", e), ("equal-decrease", d)):
        f, boot = r["fit"], r["alpha_bootstrap_seeds"]
        if f and "error" not in f:
            b = ci(boot["ci95"]) if boot and "error" not in boot else "-"
            rows.append(f"| {label} | {f['alpha']:.3f} | {ci(f['alpha_ci95'])} | {b} | {f['r2']:.3f} |")
        else:
            rows.append(f"| {label} | - | - | - | - |")
    return "\n".join(rows)

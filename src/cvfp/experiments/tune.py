"""Every trained model at its best: ``cvfp compare --tune``.

One declared grid (``Tuning.axes``; the same for every model) is trained for
every trained architecture at every size with the tuning seeds, which are
never reported seeds, in ``OUT/<arch>/tune/<cell>/``. These runs never score
the test set (``evaluation.score_test = false``): at each size the cell with
the lowest mean validation loss is chosen, so nothing that reports can leak
into the choice. Each chosen setting is then trained with the reported seeds
in ``OUT/<arch>/tuned/n<N>/``; the sizes together make the model's tuned
curve (``OUT/<arch>/tuned/results.json``), which the comparison pairs on test.
A counted model (the n-gram) has no learning rate or epochs: it runs once
with the reported seeds (its order is chosen on validation by itself).

Everything is resumable run by run: a rerun skips finished tuning and
reported runs, and recomputes the same choices from the stored runs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from cvfp import distributed
from cvfp.config import ConfigError, RunConfig
from cvfp.experiments.formatting import flops, model_label, num, spread
from cvfp.experiments.grid import Axis, grid_cells
from cvfp.experiments.paired import pct_interval
from cvfp.experiments.report import write_report
from cvfp.experiments.results import results_record, settings_record
from cvfp.experiments.sweep import Sweep, run_sweeps
from cvfp.io.rundir import write_json_atomic
from cvfp.models.registry import spec
from cvfp.training.point import DEFAULT_OPTIONS, RunOptions

# The declared grid: the learning rate from the shared budget's 1e-3 down (on the quick preset's earlier sets
# every model chose 1e-4 or 3e-4, 3e-3 never won: docs/baselines.md), with and without a cosine decay.
DEFAULT_AXES = (
    Axis("phase2.learning_rate", (0.0001, 0.0003, 0.001)),
    Axis("phase2.schedule", ("constant", "cosine")),
)
# Seeds of the tuning runs when none are given: far from the usual reported seeds.
DEFAULT_TUNE_SEEDS = (1000,)


@dataclasses.dataclass(frozen=True)
class Tuning:
    axes: tuple[Axis, ...] = DEFAULT_AXES
    seeds: tuple[int, ...] = DEFAULT_TUNE_SEEDS

    def check(self, reported: list[int]) -> None:
        if both := sorted(set(self.seeds) & set(reported)):
            raise ConfigError(f"--tune-seeds {both} are also reported seeds (--seeds): selection must use others")
        if not self.axes:
            raise ConfigError("--tune needs a grid (--tune-grid KEY=V1,V2)")


@dataclasses.dataclass(frozen=True)
class Choice:
    """The setting chosen for one model at one size, and every cell's mean validation loss there."""

    samples: int
    cell: str | None  # None: no cell finished at this size
    overrides: dict
    val_loss: dict[str, float | None]  # cell -> mean validation loss over the tuning seeds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Tuned:
    """What a tuned comparison records and reports beside its results: the grid, the seeds, every choice."""

    tuning: Tuning
    choices: dict[str, list[Choice]]

    @classmethod
    def of(cls, tuning: Tuning | None, choices: dict[str, list[Choice]]) -> Tuned | None:
        return None if tuning is None else cls(tuning, choices)

    def to_dict(self) -> dict:
        return {
            "grid": {a.key: list(a.values) for a in self.tuning.axes},
            "seeds": list(self.tuning.seeds),
            "choices": {arch: [ch.to_dict() for ch in per_size] for arch, per_size in self.choices.items()},
        }

    def sections(self, results: dict[str, dict], pairs: list[dict]) -> list[str]:
        """compare.md's tuned sections: every size's table, then the selection behind it."""
        grid = "; ".join(f"{a.key} in {{{', '.join(map(str, a.values))}}}" for a in self.tuning.axes)
        seeds = ", ".join(map(str, self.tuning.seeds))
        edges = search_edges(self.tuning.axes, self.choices, results)
        return [
            "## Every size, every trained model tuned",
            "",
            (
                f"One grid for every trained model at every size ({grid}), trained with tuning seed(s) {seeds} "
                "(never a reported seed, never scored on test); the cell with the lowest mean validation loss is "
                "chosen per model and size, then trained on the reported seeds. The paired differences are on "
                "test, over conversations and the reported seeds."
            ),
            "",
            tuned_tables(results, self.choices, pairs),
            "",
            "### The selection: validation PPL of every cell (tuning seeds; chosen in bold)",
            "",
            selection_table(self.choices),
            "",
            "### Edges of the search",
            "",
            (
                "A chosen value at an end of a numeric axis, or a reported run whose best epoch is the epoch cap "
                "(still improving when it stopped), means the search may have held that model short of its best."
            ),
            "",
            *(
                [f"- {note}" for note in edges]
                or ["None: every choice lies inside the grid, no run stopped improving."]
            ),
            "",
        ]


def search_edges(axes: tuple[Axis, ...], choices: dict[str, list[Choice]], results: dict[str, dict]) -> list[str]:
    """Where the search may have held a model short: a chosen value at an end of a numeric axis, and the reported
    runs whose best epoch is the epoch cap."""
    notes = []
    for arch, per_size in choices.items():
        for ch in (ch for ch in per_size if ch.cell is not None):  # a counted model has no cell
            for axis in axes:
                numbers = [v for v in axis.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
                value = ch.overrides.get(axis.key)
                if len(numbers) > 1 and value in (min(numbers), max(numbers)):
                    end = "lowest" if value == min(numbers) else "highest"
                    notes.append(
                        f"{model_label(arch)} at N = {ch.samples}: {axis.key} = {value}, the grid's {end} value"
                    )
    for arch, r in results.items():
        capped = [p for p in r["points"] if p.get("best_epoch") and p["best_epoch"] == p.get("max_epochs")]
        for n in sorted({p["samples"] for p in capped}):
            at_n = [p for p in capped if p["samples"] == n]
            seeds = ", ".join(str(p["seed"]) for p in at_n)
            notes.append(
                f"{model_label(arch)} at N = {n}: best epoch at the cap of {at_n[0]['max_epochs']} (seeds {seeds})"
            )
    return notes


def choose(samples: int, cells: dict[str, dict], results: dict[str, dict]) -> Choice:
    """The cell with the lowest mean validation loss at ``samples`` (ties: the grid's first); reads validation
    only (``cells``: name -> overrides; ``results``: name -> that cell's sweep results)."""
    losses = {}
    for name, r in results.items():
        size = next((s for s in r["sizes"] if s["samples"] == samples), None)
        loss = size["val_loss"]["mean"] if size and size["val_loss"] else None
        losses[name] = loss if loss is not None and math.isfinite(loss) else None
    finished = [name for name in cells if losses[name] is not None]
    best = min(finished, key=lambda name: losses[name]) if finished else None
    return Choice(samples, best, cells[best] if best else {}, losses)


def run_tuned(
    configs: dict[str, RunConfig],
    samples: list[int],
    out: Path,
    seeds: list[int],
    tuning: Tuning,
    options: RunOptions = DEFAULT_OPTIONS,
) -> tuple[dict[str, dict], dict[str, list[Choice]]]:
    """Tune, choose and train the reported runs; (each model's results on the reported seeds, its choices)."""
    tuning.check(seeds)
    trained = [arch for arch in configs if spec(configs[arch].model.arch).trains_by_gradient]
    cells = {arch: grid_cells(_tuning_config(configs[arch]), list(tuning.axes)) for arch in trained}
    tune_sweeps = [
        Sweep(c.cfg, list(samples), out / arch / "tune" / c.name, list(tuning.seeds), options.preset)
        for arch in trained
        for c in cells[arch]
    ]
    done = iter(run_sweeps(tune_sweeps, options))  # every tuning run of every model first
    choices = {}
    for arch in trained:
        by_cell = {c.name: next(done) for c in cells[arch]}
        choices[arch] = [choose(n, {c.name: c.overrides for c in cells[arch]}, by_cell) for n in samples]
    reported = {}  # (arch, N) or a counted arch -> its sweep on the reported seeds
    for arch, cfg in configs.items():
        if arch not in choices:
            reported[arch] = Sweep(cfg, list(samples), out / arch, seeds, options.preset)
            continue
        for ch in choices[arch]:
            if ch.cell is not None:
                chosen = next(c.cfg for c in cells[arch] if c.name == ch.cell).replace(evaluation=cfg.evaluation)
                reported[(arch, ch.samples)] = Sweep(
                    chosen, [ch.samples], _tuned_dir(out, arch, ch.samples), seeds, options.preset
                )
    finished = dict(zip(reported, run_sweeps(list(reported.values()), options)))
    results = {}
    for arch, cfg in configs.items():
        if arch not in choices:
            results[arch] = finished[arch]
            continue
        parts = {ch.samples: finished[(arch, ch.samples)] for ch in choices[arch] if ch.cell is not None}
        results[arch] = merged(cfg, parts, seeds, options.preset, choices[arch])
        if distributed.ranks().main:
            write_json_atomic(out / arch / "tuned" / "results.json", results[arch])
            write_report(results[arch], out / arch / "tuned")
    return results, choices


def _tuning_config(cfg: RunConfig) -> RunConfig:
    """A tuning run's config: never scored on test."""
    return cfg.replace(evaluation=cfg.evaluation.replace(score_test=False))


def _tuned_dir(out: Path, arch: str, samples: int) -> Path:
    return out / arch / "tuned" / f"n{samples}"


def merged(cfg: RunConfig, parts: dict[int, dict], seeds: list[int], preset: str | None, choices: list[Choice]) -> dict:
    """One model's tuned curve: the reported runs of every size (each trained at its own chosen setting) as one
    sweep's results, the settings naming each size's choice."""
    settings = settings_record(cfg, sorted(parts), seeds, preset)
    settings["tuned"] = {str(ch.samples): ch.overrides for ch in choices if ch.cell is not None}
    points = [p for part in parts.values() for p in part["points"]]
    failures = [f for part in parts.values() for f in part["failures"]]
    first = next(iter(parts.values()), None)
    return results_record(settings, points, failures, first["environment"] if first else {})


def tuned_tables(results: dict[str, dict], choices: dict[str, list[Choice]], pairs: list[dict]) -> str:
    """Per size: every model's tuned test PPL, the reference's paired difference from it, FLOPs and time."""
    reference = next((p["a"] for p in pairs), "the reference")
    header = (
        f"| N | Train tokens | Model | Chosen setting | Val PPL | Test PPL | {reference} - model (test) | "
        f"95% interval | Verdict for {reference} | Train FLOPs | Time per run |"
    )
    rows = [
        header,
        "|---:|---:|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    by_pair = {(p["b"], p["samples"]): p for p in pairs if "error" not in p and p["a"] == reference}
    for n in sorted({s["samples"] for r in results.values() for s in r["sizes"]}):
        for arch, r in results.items():
            size = next((s for s in r["sizes"] if s["samples"] == n), None)
            if size is None:
                continue
            choice = next((ch for ch in choices.get(arch, []) if ch.samples == n), None)
            setting = ", ".join(f"{k}={v}" for k, v in choice.overrides.items()) if choice else "counted, not tuned"
            pair = by_pair.get((arch, n))
            paired = (
                f"{100 * pair['difference']:+.1f}% | {pct_interval(pair['ci95'])} | {pair['verdict']}"
                if pair
                else "reference | - | -"
            )
            rows.append(
                f"| {n} | {size['train_tokens']:,} | {model_label(arch)} | {setting} | {spread(size['val_ppl'])} | "
                f"{spread(size['test_ppl'])} | {paired} | "
                f"{flops(size['train_flops']['mean'] if size['train_flops'] else None)} | "
                f"{size['seconds']['mean'] / 60:.1f} min |"
            )
    return "\n".join(rows)


def selection_table(choices: dict[str, list[Choice]]) -> str:
    """Every cell's mean validation PPL per model and size, the chosen one in bold."""
    rows = ["| Model | N | " + " | ".join(_cells(choices)) + " |", "|---|---:|" + "---:|" * len(_cells(choices))]
    for arch, per_size in choices.items():
        for ch in per_size:
            values = [
                "-" if ch.val_loss.get(c) is None else _bold(num(math.exp(ch.val_loss[c])), c == ch.cell)
                for c in _cells(choices)
            ]
            rows.append(f"| {model_label(arch)} | {ch.samples} | " + " | ".join(values) + " |")
    return "\n".join(rows)


def _cells(choices: dict[str, list[Choice]]) -> list[str]:
    return list(next(iter(next(iter(choices.values()))), Choice(0, None, {}, {})).val_loss) if choices else []


def _bold(text: str, chosen: bool) -> str:
    return f"**{text}**" if chosen else text

import json
import math

import numpy as np
import pytest
import torch
from conftest import load_script, tiny_cli_args

from cvfp.cli import main
from cvfp.data.corpora import CorpusError
from cvfp.experiments import sweep as scaling
from cvfp.experiments.sweep import run_scaling
from cvfp.io.rundir import RunConfigMismatch
from cvfp.models import build_model
from cvfp.training.point import RunOptions, train_point


def test_single_run_directory_is_self_describing(tiny_cfg, tmp_path, cache_dir):
    out = tmp_path / "run"
    summary = train_point(tiny_cfg, 10, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    for name in ("config.json", "command.json", "environment.json", "metrics.jsonl", "summary.json"):
        assert (out / name).exists(), name
    assert (out / "checkpoint" / "model.safetensors").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["phase"] == 1] == list(range(1, summary["phase1_iterations"]))
    assert [r["epoch"] for r in records if r["phase"] == 2] == list(range(1, summary["stopped_epoch"] + 1))
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu"
    assert 0 < summary["val_acc"] < 1 and summary["val_ppl"] > 1 and summary["val_bpb"] > 0
    assert 0 < summary["val_er"] <= 1 and summary["context_gap"]["tokens"] > 0


def test_two_runs_with_the_same_seed_are_bitwise_equal(tiny_cfg, tmp_path, cache_dir):
    a = train_point(tiny_cfg, 8, tmp_path / "a", options=RunOptions(cache_dir=cache_dir, progress=False))
    b = train_point(tiny_cfg, 8, tmp_path / "b", options=RunOptions(cache_dir=cache_dir, progress=False))
    for key in ("val_loss", "val_er", "train_er", "phase1_iterations", "best_epoch"):
        assert a[key] == b[key]
    assert [e["val_loss"] for e in a["epochs"]] == [e["val_loss"] for e in b["epochs"]]
    wa = (tmp_path / "a" / "checkpoint" / "model.safetensors").read_bytes()
    assert wa == (tmp_path / "b" / "checkpoint" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("update", [False, True])
def test_frozen_random_ablation_keeps_the_context_block_at_init(tiny_cfg, tmp_path, cache_dir, update):
    """algorithm §9.3: with phase1.update_context_block=false the saved ContextBlock
    is exactly its random init; with true (the seed) Phase 1 moves it."""
    from cvfp.data.embeddings import resolve_config
    from cvfp.io.checkpoint import load_checkpoint

    cfg = tiny_cfg.override([f"phase1.update_context_block={str(update).lower()}"])
    train_point(cfg, 6, tmp_path / "run", options=RunOptions(cache_dir=cache_dir, progress=False))
    trained, _, table = load_checkpoint(tmp_path / "run" / "checkpoint")
    fresh = build_model(resolve_config(cfg).model, table.table, seed=cfg.seed)
    same = [torch.equal(a, b) for a, b in zip(trained.context_layers.parameters(), fresh.context_layers.parameters())]
    token_moved = any(not torch.equal(a, b) for a, b in zip(trained.token_layers.parameters(),
                                                            fresh.token_layers.parameters()))  # fmt: skip
    assert token_moved  # Phase 2 trained the TokenBlock either way
    assert all(same) if not update else not any(same)


def test_scaling_writes_results_report_and_plots(tiny_cfg, tmp_path, cache_dir):
    out = tmp_path / "sweep"
    results = run_scaling(tiny_cfg, [4, 8, 16], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    points = results["points"]
    assert [p["samples"] for p in points] == [4, 8, 16]
    tokens = [p["train_tokens"] for p in points]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3  # nested, growing train sets
    for p in points:
        assert 1 < p["val_ppl"] == pytest.approx(math.exp(p["val_loss"])) and 0 <= p["val_acc"] <= 1
        assert 0 < p["val_er"] <= 1 and 1 <= p["best_epoch"] <= p["stopped_epoch"] == len(p["epochs"])
    # The fit is the OLS line of log PPL on log tokens over the three points, computed here independently.
    slope, intercept = np.polyfit(np.log(tokens), np.log([p["val_ppl"] for p in points]), 1)
    fit = results["fit"]
    assert fit["alpha"] == pytest.approx(slope, rel=1e-6) and fit["A"] == pytest.approx(math.exp(intercept), rel=1e-6)
    assert 0 <= fit["r2"] <= 1 and fit["alpha_ci95"][0] < fit["alpha"] < fit["alpha_ci95"][1]
    stored = json.loads((out / "results.json").read_text())
    assert stored["settings"]["protocol"] == "seed" and stored["fit"]["alpha"] == results["fit"]["alpha"]
    report = (out / "report.md").read_text()
    predictions = [line for line in report.splitlines() if "beyond the largest measured size" in line]
    assert predictions and all(
        line.startswith(("| 1,000,000 |", "| 5,000,000 |", "| 10,000,000 |")) for line in predictions
    )
    assert f"| {1_000_000 // tokens[-1]}x beyond" in report or f"{1_000_000 / tokens[-1]:.0f}x beyond" in report
    assert report.splitlines()[2].startswith("Protocol: seed")
    assert "| Samples | Tokens | Runs | Val PPL" in report and "alpha =" in report and "Epoch 1:" in report
    assert (out / "ppl_vs_tokens.png").stat().st_size > 1000
    assert (out / "val_ppl_per_epoch.png").stat().st_size > 1000
    # cvfp report rebuilds the report from results.json alone.
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == report


def _recording(calls, fail_at=None):
    """train_point, recording the sample sizes it is called for; interrupted at ``fail_at``."""

    def run(cfg, n, out, **kwargs):
        calls.append(n)
        if n == fail_at:
            raise KeyboardInterrupt
        return train_point(cfg, n, out, **kwargs)

    return run


def test_interrupted_sweep_resumes_without_redoing_points(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    out = tmp_path / "sweep"
    calls = []
    monkeypatch.setattr(scaling, "train_point", _recording(calls, fail_at=8))
    with pytest.raises(KeyboardInterrupt):
        run_scaling(tiny_cfg, [4, 8, 16], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    partial = json.loads((out / "results.json").read_text())
    assert [p["samples"] for p in partial["points"]] == [4]  # the finished point is kept
    calls.clear()
    monkeypatch.setattr(scaling, "train_point", _recording(calls))
    results = run_scaling(tiny_cfg, [4, 8, 16], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert calls == [8, 16]
    assert [p["samples"] for p in results["points"]] == [4, 8, 16]
    calls.clear()
    run_scaling(tiny_cfg, [4, 8, 16], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert calls == []  # idempotent
    with pytest.raises(RunConfigMismatch):
        run_scaling(
            tiny_cfg.override(["phase2.patience=3"]), [4], out, options=RunOptions(cache_dir=cache_dir, progress=False)
        )


def test_a_size_the_corpus_cannot_supply_is_refused_before_any_point(tiny_cfg, tmp_path, cache_dir):
    # (A point that fails while training is recorded, not zeroed: tests/test_faults.py, divergence.)
    with pytest.raises(CorpusError, match="only 40"):
        run_scaling(tiny_cfg, [4, 500], tmp_path / "sweep", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert not list((tmp_path / "sweep").glob("points/*"))


def test_cli_scaling_compare_and_train(tiny_corpus, tmp_path, cache_dir):
    common = tiny_cli_args(tiny_corpus, cache_dir)
    assert main(["train", "--samples", "5", "--out", str(tmp_path / "t"), *common]) == 0
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["test"]["ppl"] > 1
    assert main(["scaling", "--samples", "3,6,12", "--out", str(tmp_path / "s"), *common]) == 0
    assert main(["compare", "--samples", "3,6,12", "--out", str(tmp_path / "c"), *common]) == 0
    text = (tmp_path / "c" / "compare.md").read_text()
    assert "equal-decrease" in text and "alpha" in text and "Same 12 samples" in text
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"phase2": {"patience": 0}}))
    assert main(["train", "--samples", "3", "--out", str(tmp_path / "t2"), "--config", str(cfg_file), *common]) == 0
    stored = json.loads((tmp_path / "t2" / "config.json").read_text())
    assert stored["phase2"]["patience"] == 0 and stored["model"]["num_layers"] == 1


def test_results_points_are_the_typed_record_of_each_summary(tiny_cfg, tmp_path, cache_dir):
    import dataclasses

    from cvfp.io.records import PointRecord, RecordError

    results = run_scaling(tiny_cfg, [4, 6], tmp_path / "s", options=RunOptions(cache_dir=cache_dir, progress=False))
    report = (tmp_path / "s" / "report.md").read_text()
    assert "No predictions: 2 measured size(s)" in report and "beyond the largest" not in report
    table = next(line for line in report.splitlines() if line.startswith("| 4 |"))
    assert ".0 |" not in table.split("|")[7] and table.split("|")[7].strip().isdigit()  # Phase 1 iterations: a count
    fields = [f.name for f in dataclasses.fields(PointRecord)]
    assert all(list(p) == [*fields, "max_epochs"] for p in results["points"])
    summary = json.loads((tmp_path / "s" / "points" / "n4-seed3" / "summary.json").read_text())
    assert PointRecord.from_summary(summary).val_loss == results["points"][0]["val_loss"]
    old = {k: v for k, v in summary.items() if k not in ("memory", "jacobi")}  # written before they existed
    assert PointRecord.from_summary(old).memory is None
    with pytest.raises(RecordError, match="lacks val_bpb, context_gap"):
        PointRecord.from_summary({k: v for k, v in summary.items() if k not in ("val_bpb", "context_gap")})


def test_publishing_copies_records_and_reports_but_not_points_nor_a_mere_revision_change(tiny_cfg, tmp_path, cache_dir):
    """scripts/publish_points.py: what a session copies from its run folder into docs/sweeps."""
    publish = load_script("publish_points").publish
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    options = RunOptions(cache_dir=cache_dir, progress=False)
    run_scaling(tiny_cfg, [4], runs / "model", options=options)
    copied = {path.relative_to(docs).as_posix() for path in publish(runs, docs)}
    assert {"model/results.json", "model/report.md"} <= copied and not (docs / "model" / "points").exists()
    assert json.loads((docs / "model" / "results.json").read_text()) == json.loads(
        (runs / "model" / "results.json").read_text()
    )
    # a rerun that only skipped finished runs: its own revision, threads and config serialisation; they stay
    record = runs / "model" / "results.json"
    results = json.loads(record.read_text())
    results["environment"] |= {"git_revision": "f" * 40, "torch_threads": 7}
    results["settings"]["config"]["phase1"]["lm_learning_rate"] = 0.5
    record.write_text(json.dumps(results))
    (runs / "model" / "report.md").write_text("rewritten")
    assert publish(runs, docs, ["model"]) == []
    assert (docs / "model" / "report.md").read_text() != "rewritten"
    run_scaling(tiny_cfg, [4, 8], runs / "model", options=options)  # a new run: published again
    assert docs / "model" / "results.json" in publish(runs, docs, ["model"])
    assert [p["samples"] for p in json.loads((docs / "model" / "results.json").read_text())["points"]] == [4, 8]
    comparison = {"format": 5, "archs": ["model"], "environment": {"git_revision": "a" * 40}}
    (runs / "results.json").write_text(json.dumps(comparison))
    assert docs / "results.json" in publish(runs, docs)  # a comparison's own record: new
    (runs / "results.json").write_text(json.dumps(comparison | {"environment": {"git_revision": "b" * 40}}))
    assert publish(runs, docs) == []
    (runs / "results.json").write_text(json.dumps(comparison | {"pairs": [["model", "other"]]}))
    assert publish(runs, docs) == [docs / "results.json"]  # the same runs, another pair: republished
    with pytest.raises(FileNotFoundError, match="other: no such model folder"):
        publish(runs, docs, ["other"])


def test_a_sweep_restored_from_its_results_continues_where_it_stopped(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    """scripts/restore_points.py: a sweep copied into docs (results.json only) is continued by a rerun."""
    restore_points = load_script("restore_points")
    options = RunOptions(cache_dir=cache_dir, progress=False)
    first = run_scaling(tiny_cfg, [4, 8], tmp_path / "ran", options=options)
    published = tmp_path / "docs" / "model" / "tuned"  # a tuned comparison's layout: each size's sweep below
    (published / "n8").mkdir(parents=True)
    for folder in (published, published / "n8"):  # the model's record of its sizes, and the sweep that ran them
        (folder / "results.json").write_text((tmp_path / "ran" / "results.json").read_text())
    (tmp_path / "docs" / "results.json").write_text('{"format": 5, "archs": ["model"]}')  # the comparison's own
    assert restore_points.restore(tmp_path / "docs", tmp_path / "again") == 2
    sweep = tmp_path / "again" / "model" / "tuned" / "n8"
    assert not (sweep.parent / "points").exists() and (tmp_path / "again" / "results.json").exists()
    calls = []
    monkeypatch.setattr(scaling, "train_point", _recording(calls))
    results = run_scaling(tiny_cfg, [4, 8, 16], sweep, options=options)
    assert calls == [16]  # the two published runs are skipped, the new size trains
    assert results["points"][:2] == first["points"]
    with pytest.raises(RunConfigMismatch):  # the published config is checked like a run's own
        run_scaling(tiny_cfg.override(["phase2.patience=3"]), [4], sweep, options=options)

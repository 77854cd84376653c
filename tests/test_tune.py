"""``cvfp compare --tune``: one grid for every trained model at every size, chosen on validation with seeds
that are never reported, never reading test; the choice trained on the reported seeds and compared on test."""

import dataclasses
import json
import math

import pytest
from conftest import tiny_cli_args

from cvfp.cli import main
from cvfp.config import ConfigError
from cvfp.experiments import tune
from cvfp.experiments.tune import Choice, Tuning, choose
from cvfp.training import point


def _results(losses_by_size: dict[int, float | None]) -> dict:
    sizes = [{"samples": n, "val_loss": None if v is None else {"mean": v}} for n, v in losses_by_size.items()]
    return {"sizes": sizes}


def test_the_choice_is_the_lowest_mean_validation_loss_at_each_size():
    cells = {"lr=1": {"lr": 1}, "lr=2": {"lr": 2}, "lr=3": {"lr": 3}}
    results = {"lr=1": _results({8: 5.0, 16: 4.0}), "lr=2": _results({8: 4.5, 16: None}),
               "lr=3": _results({8: float("nan"), 16: 4.2})}  # fmt: skip
    assert choose(8, cells, results) == Choice(8, "lr=2", {"lr": 2}, {"lr=1": 5.0, "lr=2": 4.5, "lr=3": None})
    assert choose(16, cells, results).cell == "lr=1"  # a failed or diverged cell is never chosen
    assert choose(32, cells, results) == Choice(32, None, {}, {"lr=1": None, "lr=2": None, "lr=3": None})
    tied = {"lr=1": _results({8: 4.0}), "lr=2": _results({8: 4.0}), "lr=3": _results({8: 4.0})}
    assert choose(8, cells, tied).cell == "lr=1"  # ties: the grid's first


def test_the_report_names_choices_at_the_grids_ends_and_runs_stopped_at_the_epoch_cap():
    axes = (
        tune.Axis("phase2.learning_rate", (0.0001, 0.0003, 0.001)),
        tune.Axis("phase2.schedule", ("constant", "cosine")),
    )
    inside = Choice(8, "mid", {"phase2.learning_rate": 0.0003, "phase2.schedule": "cosine"}, {})
    low = Choice(16, "low", {"phase2.learning_rate": 0.0001, "phase2.schedule": "constant"}, {})
    high = Choice(8, "high", {"phase2.learning_rate": 0.001, "phase2.schedule": "constant"}, {})
    points = [{"samples": 8, "seed": s, "best_epoch": b, "max_epochs": 5} for s, b in ((0, 5), (1, 3), (2, 5))]
    results = {"e": {"points": points}, "lstm": {"points": [{"samples": 8, "seed": 0, "best_epoch": 4, "max_epochs": 5}]},
               "ngram": {"points": [{"samples": 8, "seed": 0, "best_epoch": None, "max_epochs": None}]}}  # fmt: skip
    notes = tune.search_edges(axes, {"e": [inside, low], "lstm": [high]}, results)
    assert notes == [
        "E design (CVFP) at N = 16: phase2.learning_rate = 0.0001, the grid's lowest value",
        "LSTM at N = 8: phase2.learning_rate = 0.001, the grid's highest value",
        "E design (CVFP) at N = 8: best epoch at the cap of 5 (seeds 0, 2)",
    ]  # a string axis (the schedule) has no ends; a counted model has no epochs
    assert tune.search_edges(axes, {"e": [inside]}, {"e": {"points": points[1:2]}}) == []


def test_tuning_seeds_must_not_be_reported_seeds():
    with pytest.raises(ConfigError, match=r"--tune-seeds \[1\] are also reported seeds"):
        Tuning(seeds=(1, 7)).check([0, 1])
    Tuning(seeds=(7,)).check([0, 1])


def test_a_tuned_comparison_never_reads_test_nor_a_reported_seed_to_choose(
    tiny_corpus, tmp_path, cache_dir, monkeypatch
):
    """A spy on every trained run's test scoring and on every choice: tuning runs (seed 9) are never scored on
    test and the choices see only their validation; the reported runs (seeds 0, 1) are trained at the chosen
    setting and scored on test; a named variant of the E design (--variant) is tuned and reported like a model.
    Then a kill between the two stages resumes to the same report."""
    scored, trained, chosen_from = [], [], []
    family = dict(point.TRAINERS)

    def spy_trainer(name):
        def train(cfg, split, ctx):
            trained.append((cfg.model.arch, cfg.seed, cfg.phase2.learning_rate, cfg.evaluation.score_test))
            result = family[name](cfg, split, ctx)
            test = result.test

            def spied_test(stream, documents):
                scored.append((cfg.model.arch, cfg.seed))
                return test(stream, documents)

            return dataclasses.replace(result, test=spied_test)

        return train

    monkeypatch.setattr(point, "TRAINERS", {name: spy_trainer(name) for name in family})
    choose_real = tune.choose

    def spy_choose(samples, cells, results):
        chosen_from.append(samples)
        assert all(p["test"] is None for r in results.values() for p in r["points"])  # nothing of test to read
        assert all(p["seed"] == 9 for r in results.values() for p in r["points"])
        return choose_real(samples, cells, results)

    monkeypatch.setattr(tune, "choose", spy_choose)
    out = tmp_path / "c"
    argv = ["compare", "--archs", "e,lstm,ngram", "--samples", "3,6", "--seeds", "0,1", "--tune", "--tune-seeds", "9",
            "--tune-grid", "phase2.learning_rate=0.001,0.01", "--out", str(out), "--variant", "e-c4:model.context_dim=4",
            *tiny_cli_args(tiny_corpus, cache_dir)]  # fmt: skip
    assert main(argv) == 0
    tuning_runs = [t for t in trained if t[1] == 9]
    assert len(tuning_runs) == 3 * 2 * 2 and not any(score for *_, score in tuning_runs)  # 3 models x 2 cells x 2 N
    assert sorted(set(scored)) == [(a, s) for a in ("e", "lstm", "ngram") for s in (0, 1)]  # reported seeds only
    assert chosen_from == [3, 6, 3, 6, 3, 6]  # one choice per trained model and size
    record = json.loads((out / "results.json").read_text())
    choices = record["tuning"]["choices"]
    assert record["tuning"]["seeds"] == [9] and set(choices) == {"e", "lstm", "e-c4"}
    assert record["variants"] == {"e-c4": {"model.context_dim": 4}}
    for arch, per_size in choices.items():
        for ch in per_size:  # the reported runs ran at the chosen setting
            summary = out / arch / "tuned" / f"n{ch['samples']}" / "points" / f"n{ch['samples']}-seed0" / "config.json"
            config = json.loads(summary.read_text())
            assert {"phase2.learning_rate": config["phase2"]["learning_rate"]} == ch["overrides"]
            assert config["model"]["context_dim"] == (4 if arch == "e-c4" else 8)
            assert ch["val_loss"][ch["cell"]] == min(v for v in ch["val_loss"].values() if v is not None)
    assert [(p["samples"], p["a"], p["b"]) for p in record["paired"]] == [
        (3, "e", "lstm"), (3, "e", "ngram"), (3, "e", "e-c4"), (6, "e", "lstm"), (6, "e", "ngram"), (6, "e", "e-c4")]  # fmt: skip
    text = (out / "compare.md").read_text()
    assert "## Every size, every trained model tuned" in text and "### The selection" in text
    assert "### Edges of the search" in text  # two values: every choice lies at one of the grid's ends
    assert all(f"{label} at N = 6: phase2.learning_rate = " in text for label in ("E design (CVFP)", "LSTM", "e-c4"))
    assert "| 6 | " in text and "counted, not tuned" in text
    assert "| e-c4 | 6 | " in text and "**e-c4**: model.context_dim=4" in text

    # Resume after a kill before the reported runs of N = 6: the same choices, the same report.
    import shutil

    before = text
    for arch in ("e", "lstm", "e-c4"):
        shutil.rmtree(out / arch / "tuned" / "n6")
    trained.clear()
    assert main(argv) == 0
    assert {t[1] for t in trained} == {0, 1} and {t[0] for t in trained} == {"e", "lstm"}  # only what was lost
    after = (out / "compare.md").read_text()
    assert _without_times(after) == _without_times(before)
    (out / "compare.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "compare.md").read_text() == after

    # A pair beside the E design's, asked for after the runs: in the report, kept for later rebuilds.
    assert main(["report", str(out), "--pair", "lstm,e-c4"]) == 0
    record = json.loads((out / "results.json").read_text())
    by = {(p["a"], p["b"], p["samples"]): p["difference"] for p in record["paired"]}
    assert record["pairs"] == [["lstm", "e-c4"]] and len(by) == 8
    for n in (3, 6):  # same seeds and conversations: (e - c4) - (e - lstm) = lstm - c4 in nats per token
        assert math.log1p(by["lstm", "e-c4", n]) == pytest.approx(
            math.log1p(by["e", "e-c4", n]) - math.log1p(by["e", "lstm", n])
        )
    paired = (out / "compare.md").read_text()
    assert [line for line in paired.splitlines() if "| lstm | e-c4 |" not in line] == after.splitlines()
    assert main(["report", str(out)]) == 0 and (out / "compare.md").read_text() == paired
    assert main(["report", str(out), "--pair", "e,gru"]) == 2 and (out / "compare.md").read_text() == paired
    assert main(["report", str(out / "lstm" / "tuned"), "--pair", "e,lstm"]) == 2
    trained.clear()  # a rerun of the comparison trains nothing and keeps the pair
    assert main(argv) == 0 and not trained and (out / "compare.md").read_text().count("| lstm | e-c4 |") == 2


def _without_times(text: str) -> list[str]:
    """compare.md's lines less the wall times (a rerun trains again)."""
    return [line for line in text.splitlines() if " min |" not in line]


def test_tune_flags_are_checked(tiny_corpus, tmp_path, cache_dir, caplog):
    common = [*tiny_cli_args(tiny_corpus, cache_dir), "--out", str(tmp_path / "c")]
    assert main(["compare", "--tune-seeds", "5", *common]) == 2 and "need --tune" in caplog.text
    assert main(["compare", "--tune", "--search", "phase2.learning_rate=0.001,0.01", *common]) == 2
    assert "use one of them" in caplog.text
    assert main(["compare", "--tune", "--seeds", "0,1000", *common]) == 2
    assert "--tune-seeds [1000] are also reported seeds" in caplog.text
    assert main(["compare", "--archs", "e", "--variant", "lstm:model.context_dim=4", *common]) == 2
    assert "--variant lstm: an architecture's name" in caplog.text
    assert main(["compare", "--tune", "--variant", "fast:phase2.learning_rate=0.01", *common]) == 2
    assert "--variant fast sets ['phase2.learning_rate'], which --tune varies" in caplog.text
    assert main(["compare", "--archs", "e,lstm", "--pair", "lstm,gru", *common]) == 2
    assert "--pair lstm,gru: gru not in this comparison (e, lstm)" in caplog.text
    assert main(["compare", "--archs", "e,lstm", "--pair", "lstm,lstm", *common]) == 2
    assert "a model against itself" in caplog.text
    with pytest.raises(SystemExit):  # argparse's refusal
        main(["compare", "--pair", "lstm", *common])
    assert not (tmp_path / "c").exists()  # refused before anything was written

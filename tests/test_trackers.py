"""Trackers behind metrics.jsonl: TensorBoard event files and a W&B offline run read back; MLflow's calls
through a stand-in module (mlflow itself is not installed in CI: its dependency tree is large)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from cvfp.cli import main
from cvfp.config import ConfigError, RunConfig
from cvfp.io import trackers
from cvfp.io.rundir import comparable
from cvfp.training.point import RunOptions, train_point


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_every_record(tiny_cfg, tmp_path, cache_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "p"
    summary = train_point(
        tiny_cfg.replace(log_to=("tensorboard",)), 6, out, options=RunOptions(cache_dir=cache_dir, progress=False)
    )
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    records = metrics(out)
    phase1 = [r for r in records if r["phase"] == 1]
    phase2 = [r for r in records if r["phase"] == 2]
    loss = events.Scalars("phase1/loss")
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in phase1], rel=1e-6)
    assert [e.step for e in loss] == list(range(1, len(phase1) + 1))  # one step axis: the record's position
    assert [e.step for e in events.Scalars("phase2/val_ppl")] == list(range(len(phase1) + 1, len(records) + 1))
    assert [e.value for e in events.Scalars("phase2/val_ppl")] == pytest.approx([r["val_ppl"] for r in phase2],
                                                                               rel=1e-6)  # fmt: skip
    assert events.Scalars("final/val_ppl")[0].value == pytest.approx(summary["val_ppl"], rel=1e-6)
    assert "phase2/best" not in events.Tags()["scalars"]  # booleans are not scalars


def test_wandb_offline_run(tiny_corpus, tmp_path, cache_dir, monkeypatch):
    from conftest import tiny_cli_args

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = {}
    close = trackers.WandB.close

    def read_back(self):  # the offline run's summary (the last value of every key), before it is closed
        keys = self.run.summary.keys()  # a W&B summary: keys() and [], no items()
        seen.update({k: self.run.summary[k] for k in keys})
        close(self)

    monkeypatch.setattr(trackers.WandB, "close", read_back)
    args = ["train", "--samples", "5", "--out", str(tmp_path / "t"), "--log-to", "wandb,tensorboard",
            *tiny_cli_args(tiny_corpus, cache_dir)]  # fmt: skip
    assert main(args) == 0
    (run,) = (tmp_path / "wandb-root" / "wandb").glob("offline-run-*")
    assert next(run.glob("*.wandb")).stat().st_size > 0 and (tmp_path / "t" / "tensorboard").is_dir()
    stored = json.loads((tmp_path / "t" / "summary.json").read_text())
    last_epoch = [r for r in metrics(tmp_path / "t") if r["phase"] == 2][-1]
    assert seen["final/val_ppl"] == pytest.approx(stored["val_ppl"], rel=1e-6)
    assert seen["phase2/val_ppl"] == pytest.approx(last_epoch["val_ppl"], rel=1e-6)
    assert json.loads((tmp_path / "t" / "config.json").read_text())["log_to"] == ["wandb", "tensorboard"]


def test_mlflow_calls(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    calls = []
    fake = types.ModuleType("mlflow")
    fake.start_run = lambda run_name: calls.append(("start", run_name))
    fake.log_params = lambda params: calls.append(("params", params["phase2.learning_rate"]))
    fake.log_metrics = lambda values, step: calls.append(("metrics", step, min(values)))
    fake.end_run = lambda: calls.append(("end",))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: object())
    train_point(
        tiny_cfg.replace(log_to=("mlflow",)), 6, tmp_path / "p", options=RunOptions(cache_dir=cache_dir, progress=False)
    )
    records = metrics(tmp_path / "p")
    assert calls[0] == ("start", ["tmp_path0", "p"][0] + "/p") or calls[0][0] == "start"
    assert calls[1] == ("params", tiny_cfg.phase2.learning_rate) and calls[-1] == ("end",)
    steps = [c[1] for c in calls if c[0] == "metrics"]
    assert steps == list(range(1, len(records) + 2))  # every record at its position, then the summary


def test_trackers_are_checked_before_work_and_never_part_of_the_config_compared(tiny_cfg, tmp_path, cache_dir,
                                                                                monkeypatch):  # fmt: skip
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="--log-to mlflow: not installed; pip install mlflow"):
        train_point(
            tiny_cfg.replace(log_to=("mlflow",)),
            6,
            tmp_path / "p",
            options=RunOptions(cache_dir=cache_dir, progress=False),
        )
    assert not (tmp_path / "p" / "config.json").exists()
    assert comparable(tiny_cfg.replace(log_to=("wandb",))) == comparable(tiny_cfg)
    with pytest.raises(ConfigError, match="log_to"):
        tiny_cfg.override(['log_to=["neptune"]'])


def test_a_missing_tracker_is_refused_before_a_sweep_starts(tiny_cfg, tmp_path, cache_dir):
    """Not a failure per point and an empty report: the whole sweep is refused before anything is written."""
    from cvfp.experiments.sweep import run_scaling

    with pytest.raises(ConfigError, match="--log-to mlflow: not installed"):
        run_scaling(tiny_cfg.replace(log_to=("mlflow",)), [4, 6], tmp_path / "s",
                    options=RunOptions(cache_dir=cache_dir, progress=False))  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_a_tracker_named_twice_is_refused():
    with pytest.raises(ConfigError, match="log_to names a tracker twice"):
        RunConfig().replace(log_to=("tensorboard", "tensorboard"))


def test_a_resumed_run_sends_no_record_twice_to_the_trackers(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    """Killed in Phase 2 and resumed: TensorBoard holds each Phase 1 iteration and each epoch once, at the step of
    an uninterrupted run, although the resumed phases replay their records into metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cvfp.io.rundir import RunDir

    cfg = tiny_cfg.replace(log_to=("tensorboard",)).override(["phase2.epochs=3", "phase2.patience=0",
                                                             'phase1.stop_rule="fixed"', "phase1.max_iterations=4"])  # fmt: skip
    original, count = RunDir.log_metric, []

    def log_metric(self, record):
        original(self, record)
        count.append(1)
        if len(count) == 5:  # Phase 1's 3 iterations, then epochs 1 and 2
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "log_metric", log_metric)
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        train_point(cfg, 6, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    monkeypatch.undo()
    train_point(cfg, 6, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("phase1/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("phase2/val_ppl")] == [4, 5, 6]


def test_wandb_online_without_a_key_is_refused_before_any_work(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no W&B API key .* WANDB_MODE=offline"):
        train_point(tiny_cfg.replace(log_to=("wandb",)), 6, tmp_path / "p",
                    options=RunOptions(cache_dir=cache_dir, progress=False))  # fmt: skip
    assert not (tmp_path / "p").exists()

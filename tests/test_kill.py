"""kill -9 and Ctrl-C of a real child process running a sweep: the rerun resumes, finished points are
identical to an uninterrupted sweep's, and no partial file is ever taken for a finished one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_cli_args as common

from cvfp.cli import main
from cvfp.errors import KILL_AT

SAMPLES = "3,5,8"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def sweep_args(corpus, cache_dir, out) -> list[str]:
    return ["scaling", "--samples", SAMPLES, "--out", str(out), *common(corpus, cache_dir),
            "--set", "phase1.save_every=1"]  # fmt: skip


def child(args: list[str], **env: str) -> subprocess.Popen:
    """The CLI in a child process with the SIGINT a terminal gives. A runner without job control (CI in the
    background) starts the tests with SIGINT ignored, which a child would inherit and Python then leaves ignored;
    a handled signal is reset to its default at exec."""
    environment = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "cvfp.cli", *args], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)


def point_numbers(out: Path) -> dict:
    """Every finished point's results, timings dropped."""
    found = {}
    for summary in sorted(out.glob("points/*/summary.json")):
        data = json.loads(summary.read_text())  # a finished point's summary always parses
        assert (summary.parent / "checkpoint" / "model.safetensors").exists()
        found[summary.parent.name] = {k: data[k] for k in ("val_loss", "val_acc", "test", "phase1_iterations",
                                                           "train_er", "best_epoch")}  # fmt: skip
        found[summary.parent.name]["epochs"] = [e["val_loss"] for e in data["epochs"]]
    return found


def assert_no_partial_files(out: Path) -> None:
    for path in out.rglob("*.json"):
        json.loads(path.read_text())  # only complete JSON under a final name


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    out = root / "sweep"
    assert main(sweep_args(tiny_corpus, root / "cache", out)) == 0
    return point_numbers(out)


STAGES = ["tokenisation and split", "Phase 1", "building the context caches", "Phase 2",
          "saving the checkpoint and summary", "writing the results and report"]  # fmt: skip


def test_kill_9_at_each_stage_then_rerun(tiny_corpus, tmp_path, reference):
    """One sweep killed at every stage in turn, each rerun resuming what the last kill left."""
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = sweep_args(tiny_corpus, cache, out)
    for where in STAGES:
        proc = child(args, **{KILL_AT: where})
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, where
        assert_no_partial_files(out)
        assert all(v == reference[k] for k, v in point_numbers(out).items())  # what is finished is already right
    done = child(args)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert point_numbers(out) == reference
    assert not list(out.rglob("resume")) and not list(out.rglob(".*.tmp"))


def test_kill_9_at_random_moments(tiny_corpus, tmp_path, reference):
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = sweep_args(tiny_corpus, cache, out)
    rng = random.Random(13)
    for _ in range(2):
        proc = child(args)
        time.sleep(rng.uniform(2.0, 8.0))  # imports take about 2 s; the sweep about 10 s more
        proc.kill()
        proc.communicate(timeout=60)
        assert_no_partial_files(out)
        assert all(v == reference[k] for k, v in point_numbers(out).items())
    done = child(args)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert point_numbers(out) == reference


def test_ctrl_c_prints_where_it_stopped_and_how_to_resume(tiny_corpus, tmp_path, reference):
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = sweep_args(tiny_corpus, cache, out)
    proc = child(args)
    deadline = time.monotonic() + 120
    while not list(out.glob("points/*/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until a point is training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "interrupted during the run in" in last and "rerun the same command to resume" in last
    assert "Traceback" not in err
    done = child(args)
    assert done.communicate(timeout=300) and done.returncode == 0
    assert point_numbers(out) == reference

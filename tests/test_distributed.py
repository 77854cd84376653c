"""Sweeps spread over torchrun's processes: the same points as one process, written once; a dying rank
ends the job with its rank named and the finished points kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_args

from cvfp.cli import main
from cvfp.distributed import assign
from cvfp.errors import KILL_AT

SRC = str(Path(__file__).resolve().parents[1] / "src")


def torchrun(args: list[str], processes: int = 2, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "cvfp.cli", *args]  # fmt: skip
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)


def points(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {(p["samples"], p["seed"]): p for p in results["points"]}


def test_assign_hands_the_costliest_runs_out_first_and_balances():
    assert assign([3, 5, 8], 2) == [1, 1, 0]
    assert assign([8, 8, 8, 8], 4) == [0, 1, 2, 3]
    owners = assign([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 3)
    loads = [sum(c for c, o in zip(range(1, 11), owners) if o == r) for r in range(3)]
    assert max(loads) - min(loads) <= 1 and assign([5.0], 1) == [0]


def test_a_spread_sweep_equals_a_serial_one(tiny_corpus, tmp_path):
    cache = tmp_path / "cache"
    args = ["scaling", "--samples", "3,5,8", "--seeds", "1,2", *tiny_cli_args(tiny_corpus, cache)]
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    spread = torchrun([*args, "--out", str(tmp_path / "spread")])
    assert spread.returncode == 0, spread.stderr[-3000:]
    assert "[rank 0]" in spread.stderr and "[rank 1]" in spread.stderr
    assert "rank 1 of 2: 3 of the 6 unfinished runs" in spread.stderr
    serial, parallel = points(tmp_path / "serial"), points(tmp_path / "spread")
    assert serial.keys() == parallel.keys()
    for key, p in serial.items():  # the same runs: one thread per rank vs two in one process
        q = parallel[key]
        assert q["val_loss"] == pytest.approx(p["val_loss"], rel=1e-6) and q["best_epoch"] == p["best_epoch"]
        assert q["phase1_iterations"] == p["phase1_iterations"] and q["train_tokens"] == p["train_tokens"]
    assert (tmp_path / "spread" / "report.md").exists() and spread.stdout.count("report:") == 1  # printed once


def test_a_spread_grid_writes_every_cell_once(tiny_corpus, tmp_path):
    args = ["scaling", "--samples", "3,5", "--variant", "base:", "--variant", "wide:model.context_dim=12",
            "--out", str(tmp_path / "grid"), *tiny_cli_args(tiny_corpus, tmp_path / "cache")]  # fmt: skip
    done = torchrun(args)
    assert done.returncode == 0, done.stderr[-3000:]
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [c["cell"] for c in grid["cells"]] == ["base", "wide"] and all(c["runs"] == 2 for c in grid["cells"])
    assert "rank 1 of 2: 2 of the 4 unfinished runs" in done.stderr


def test_a_dying_rank_ends_the_job_naming_it_and_finished_points_stay(tiny_corpus, tmp_path):
    out = tmp_path / "sweep"
    args = ["scaling", "--samples", "3,5,8", "--out", str(out), *tiny_cli_args(tiny_corpus, tmp_path / "cache")]
    # Rank 1 owns N=3 and N=5 (assign above) and trains N=3 first: it dies when it starts N=5.
    died = torchrun(args, **{KILL_AT: f"the run in {out / 'points' / 'n5-seed42'}"})
    assert died.returncode != 0
    assert "rank      : 1" in died.stderr or "rank: 1" in died.stderr, died.stderr[-3000:]
    assert (out / "points" / "n3-seed42" / "summary.json").exists()  # finished before the death: kept
    assert not (out / "points" / "n5-seed42" / "summary.json").exists()
    assert main(args) == 0  # a rerun (here in one process) trains what is missing
    assert sorted(points(out)) == [(3, 42), (5, 42), (8, 42)]


def test_one_process_commands_refuse_torchrun(tiny_corpus, tmp_path):
    done = torchrun(["train", "--samples", "3", "--out", str(tmp_path / "t"),
                     *tiny_cli_args(tiny_corpus, tmp_path / "cache")])  # fmt: skip
    assert done.returncode != 0 and "runs as one process; torchrun spreads only scaling and compare" in done.stderr

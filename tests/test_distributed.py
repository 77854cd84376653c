"""Sweeps spread over torchrun's processes: the same points as one process, written once; a dying rank
ends the job with its rank named and the finished points kept."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_args

from cvfp.cli import main
from cvfp.distributed import BatchShare, Shard, assign, shard_rows
from cvfp.errors import KILL_AT
from cvfp.models import build_model

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
    done = torchrun(["describe"])
    assert done.returncode != 0 and "runs as one process; torchrun spreads only scaling and compare" in done.stderr
    done = torchrun(["train", "--samples", "3", "--out", str(tmp_path / "t"),
                     *tiny_cli_args(tiny_corpus, tmp_path / "cache")])  # fmt: skip
    assert done.returncode != 0 and "cvfp train trains its point over all the ranks: add --shard-point" in done.stderr
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------- one point's Phase 1 sharded over ranks
def test_shard_rows_are_whole_batches_covering_the_stream_once():
    for total, batch, world in ((230, 32, 2), (230, 32, 3), (64, 32, 2), (1000, 7, 5), (5, 8, 1)):
        shards = [shard_rows(total, batch, r, world) for r in range(world)]
        assert shards[0].start == 0 and shards[-1].end == total
        assert all(a.end == b.start for a, b in itertools.pairwise(shards))
        assert all(s.start % batch == 0 for s in shards)
        sizes = [-(-(s.end - s.start) // batch) for s in shards]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="too few"):
        shard_rows(40, 32, 0, 3)


def test_counter_noise_repeats_and_is_another_draw_than_the_stream(tiny_cfg):
    import torch

    from cvfp.training.phase1 import run_phase1

    def contexts(noise):
        table = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
        model = build_model(tiny_cfg.model.replace(vocab_size=30, embed_dim=6), table, seed=1)
        ids = torch.randint(0, 30, (100,), generator=torch.Generator().manual_seed(2))
        cfg = tiny_cfg.phase1.replace(noise=noise, batch_tokens=16, max_iterations=3, save_every=0)
        return run_phase1(model, ids, cfg, torch.Generator().manual_seed(7), progress=False).contexts

    assert torch.equal(contexts("counter"), contexts("counter"))
    assert not torch.allclose(contexts("counter"), contexts("stream"))
    with pytest.raises(ValueError, match='noise = "counter"'):
        model = build_model(tiny_cfg.model.replace(vocab_size=30, embed_dim=6), torch.randn(30, 6), seed=1)
        run_phase1(model, torch.zeros(100, dtype=torch.long), tiny_cfg.phase1.replace(batch_tokens=16),
                   torch.Generator(), progress=False, shard=shard_rows(100, 16, 0, 2))  # fmt: skip


@pytest.mark.parametrize("processes", [2, 3])
def test_a_sharded_phase1_equals_one_process(tmp_path, processes):
    environment = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    worker = str(Path(__file__).with_name("shard_phase1_worker.py"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               worker, str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(processes)]
    assert ranks[0]["shard"][0] == 0 and ranks[-1]["shard"][1] == 230
    assert all(a["shard"][1] == b["shard"][0] for a, b in itertools.pairwise(ranks))
    for rank in ranks:
        assert rank["rows"] == rank["shard"][1] - rank["shard"][0]
        # Float summation order only: the gradient is summed over ranks instead of batch by batch.
        assert rank["context_diff"] <= 1e-5 * rank["context_scale"] and rank["weight_diff"] < 1e-5
        assert len(rank["sharded"]) == len(rank["whole"]) == 5
        for whole, sharded in zip(rank["whole"], rank["sharded"]):
            assert sharded["converged_rate"] == whole["converged_rate"]
            for key in ("loss", "fixed_point_loss", "diversity_loss", "grad_norm"):
                assert sharded[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
        assert rank["sharded"] == ranks[0]["sharded"]  # every rank took the same steps


# ----------------------------------------------------------------- one whole point sharded over ranks
def test_batch_shares_split_every_batch_once_and_evenly():
    for start, end, world in ((0, 50, 2), (50, 53, 2), (100, 101, 3), (7, 7, 2), (0, 1000, 7)):
        parts = [BatchShare(r, world).rows(start, end) for r in range(world)]
        assert parts[0][0] == start and parts[-1][1] == end
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        sizes = [e - s for s, e in parts]
        assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def test_a_share_cache_serves_its_rows_as_the_whole_cache_does(tiny_cfg):
    import torch

    from cvfp.training.caches import ContextCache, share_cache

    table = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    model = build_model(tiny_cfg.model.replace(vocab_size=30, embed_dim=6), table, seed=1)
    ids = torch.randint(0, 30, (103,), generator=torch.Generator().manual_seed(2))
    previous = torch.randn(103, model.cfg.context_dim, generator=torch.Generator().manual_seed(3))
    whole = ContextCache(model, ids, previous)
    for rank in range(3):  # one process: each rank's share built from the whole stream (no exchange needed)
        share = BatchShare(rank, 3)
        cache = share_cache(model, ids, previous, Shard(0, 103, 103), 103, share, 20)
        assert len(cache) == len(whole) == 102
        for s in range(0, 102, 20):
            a, b = share.rows(s, min(102, s + 20))
            for got, expected in zip(cache.layers(a, b), whole.layers(a, b)):
                torch.testing.assert_close(got, expected)
            torch.testing.assert_close(cache.inputs(a, b), whole.inputs(a, b))
        with pytest.raises(ValueError, match="not inside one range"):
            cache.layers(0, 20)


@pytest.mark.parametrize(("change", "message"), [
    (["--arch", "lstm"], "is a baseline"),
    (["--set", "phase1.noise=stream"], "phase1.noise=counter"),
    (["--set", "phase2.recompute_contexts=false"], "recompute_contexts must be true"),
])  # fmt: skip
def test_a_sharded_point_refuses_what_it_cannot_shard(tiny_corpus, tmp_path, monkeypatch, change, message):
    from cvfp.cli import build_config, build_parser
    from cvfp.config import ConfigError
    from cvfp.training.sharding import point_ranks

    args = build_parser().parse_args(["train", "--shard-point", "--set", "phase1.noise=counter", *change,
                                      *tiny_cli_args(tiny_corpus, tmp_path / "cache")])  # fmt: skip
    cfg, _ = build_config(args)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=message):
        point_ranks(cfg)


def test_a_sharded_point_equals_one_process(tiny_corpus, tmp_path):
    """Phase 1 on shards, the train cache exchanged into per-batch parts, Phase 2 under DDP, validation and
    test scoring split and summed: the same run as one process, to float summation order."""
    args = ["train", "--samples", "8", "--set", "phase1.noise=counter", "--set", "phase1.batch_tokens=64",
            "--set", "phase2.batch_size=50", "--set", "phase2.epochs=3", "--set", "phase1.max_iterations=4",
            *tiny_cli_args(tiny_corpus, tmp_path / "cache")]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    done = torchrun([*args, "--shard-point", "--out", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("N=8 seed 42") == 1  # printed by rank 0 only
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 1 wrote nothing
    assert json.loads((two / "config.json").read_text())["shard_point"] is True and "[rank 1]" in done.stderr
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert b["train_tokens"] == a["train_tokens"] and b["best_epoch"] == a["best_epoch"]
    assert b["phase1_iterations"] == a["phase1_iterations"] and b["phase1_final_rate"] == a["phase1_final_rate"]
    for key in ("val_loss", "val_acc", "train_er", "train_er_centered", "val_er", "val_er_centered"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert b["test"]["loss"] == pytest.approx(a["test"]["loss"], rel=1e-5)
    assert b["context_gap"]["mse"] == pytest.approx(a["context_gap"]["mse"], rel=1e-3, abs=1e-9)
    ra, rb = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert len(ra) == len(rb) and [r["phase"] for r in ra] == [r["phase"] for r in rb]
    for x, y in zip(ra, rb):
        keys = ("loss", "converged_rate") if x["phase"] == 1 else ("train_ppl", "val_loss", "val_acc")
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x, key)


def test_a_sweep_of_sharded_points_equals_a_serial_one(tiny_corpus, tmp_path):
    """`scaling --shard-point`: every point in turn over both ranks, the results written once by rank 0."""
    args = ["scaling", "--samples", "5,8", "--set", "phase1.noise=counter", "--set", "phase1.batch_tokens=64",
            *tiny_cli_args(tiny_corpus, tmp_path / "cache")]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    sharded = torchrun([*args, "--shard-point", "--out", str(tmp_path / "sharded")])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("report:") == 1  # printed once
    assert "rank 1 of 2: 2 of the 2 unfinished runs" in sharded.stderr  # every rank trains every point
    stored = json.loads((tmp_path / "sharded" / "points" / "n8-seed42" / "config.json").read_text())
    assert stored["shard_point"] is True
    serial, parallel = points(tmp_path / "serial"), points(tmp_path / "sharded")
    assert serial.keys() == parallel.keys() == {(5, 42), (8, 42)}
    for key, p in serial.items():
        q = parallel[key]
        assert q["val_loss"] == pytest.approx(p["val_loss"], rel=1e-5) and q["best_epoch"] == p["best_epoch"]
        assert q["phase1_iterations"] == p["phase1_iterations"] and q["train_tokens"] == p["train_tokens"]

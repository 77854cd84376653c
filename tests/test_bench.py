"""The bench scripts in CI-sized form: they run, agree with their references, and print their tables."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args, env=None, timeout=300):
    cmd = [sys.executable, *args] if args[0].endswith(".py") else list(args)
    done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def markdown_rows(out: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table in ``out`` whose header begins with ``first_header``, keyed by header."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_step_rate_prints_both_phases_against_plain_gemms():
    out = bench(
        "bench/step_rate.py", "--vocab", "300", "--phase1-batch", "64", "--phase2-batch", "32", "--repeats", "1"
    )
    lines = [line for line in out.splitlines() if line.startswith("phase ")]
    assert len(lines) == 2 and all(line.rstrip().endswith("%") for line in lines)


def test_recurrence_bench_loops_agree():
    out = bench("bench/recurrence.py", "--tokens", "40", "--layers", "2", "--context-dim", "16", "--embed-dim", "8",
                "--streams", "3", "--repeats", "1")  # fmt: skip
    fast = next(line for line in out.splitlines() if line.startswith("fast loop"))
    assert float(fast.split("largest difference")[1].strip(" )")) < 1e-4
    assert "3 streams side by side" in out


@pytest.fixture
def tiny_config_file(tiny_corpus, tmp_path):
    from conftest import tiny_config

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config(tiny_corpus).to_dict()))
    return path


def test_memory_bench_measures_two_sizes(tiny_config_file):
    out = bench("bench/memory.py", "--samples", "6,12", "--probe", f"--config {tiny_config_file}")
    assert "slope:" in out and "bytes of the point's peak RSS per train token" in out
    rows = markdown_rows(out, "samples")
    assert [r["samples"] for r in rows] == ["6", "12"] and all(float(r["point peak GB"]) > 0 for r in rows)


def test_gpu_script_cpu_twin(tiny_config_file, tmp_path):
    """bench/gpu.sh end to end on the CPU with a tiny corpus: recurrence, steps, sweep, the points table."""
    out = bench("bash", "bench/gpu.sh", env={
        "DEVICE": "cpu", "OUT": str(tmp_path / "sweep"), "SAMPLES": "6,12", "PYTHON": sys.executable,
        "SWEEP_ARGS": f"--config {tiny_config_file}",
        "RECURRENCE_ARGS": "--tokens 20 --layers 2 --context-dim 16 --embed-dim 8 --streams 2 --repeats 1",
        "STEP_ARGS": "--vocab 300 --phase1-batch 64 --phase2-batch 32 --repeats 1",
        "RESUME_ARGS": f"--config {tiny_config_file} --samples 6 --interrupt-at 4",
        "HEADS_ARGS": "--configs quick --vocab 3000 --width 32 --rows 64 --repeats 1 --text zipf --cutoffs 256,1024",
        "MEDIUM_ARGS": f"--config {tiny_config_file} --samples 6,12 --set model.head=\"adaptive\"",
        "E2E_ARGS": "--vocab 300 --batch 16 --repeats 1",
    })  # fmt: skip
    assert "sweep wall time" in out and "medium sweep wall time" in out
    assert "| RNN-trained cell (TBPTT) |" in out.split("== end-to-end training steps")[1]
    speedup = re.search(r"\| quick \| full / adaptive \| \| \| \*\*([0-9.]+)x\*\*", out)
    assert speedup and float(speedup.group(1)) > 0
    assert "interrupted at metric record 4; resuming" in out and "bitwise equal: True" in out
    table = markdown_rows(out.split("== resume")[0], "N")
    medium = markdown_rows(out.split("medium sweep wall time")[1], "N")
    assert [row["N"] for row in medium] == ["6", "12"]
    assert [row["N"] for row in table] == ["6", "12"]
    assert all(row["peak RSS GB"] != "-" for row in table)  # peak RSS recorded for every point


def test_shard_point_script_cpu_twin(tiny_config_file, tmp_path):
    """bench/shard_point.sh on the CPU with a tiny corpus: one process, then the point sharded over 2."""
    out = bench("bash", "bench/shard_point.sh", env={
        "OUT": str(tmp_path / "shard"), "PYTHON": sys.executable, "P": "2",
        "POINT_ARGS": f"--config {tiny_config_file} --samples 8 --set phase1.batch_tokens=64",
    })  # fmt: skip
    assert "sharded over 2 processes" in out
    drift = float(out.split("val loss: ")[1].split()[0])
    epochs = re.search(r"epochs (\d+) vs (\d+)", out)
    assert drift < 1e-5 and epochs and epochs.group(1) == epochs.group(2)


def test_compare_time_split_recovers_a_known_cost_per_row(tmp_path):
    """bench/compare_time_split.py on a compare folder whose epochs cost exactly 2 ms per train row + 5 s."""

    def point(samples, tokens, epochs, outside):
        seconds = [0.002 * tokens + 5.0] * epochs
        return {"samples": samples, "seed": 42, "train_tokens": tokens, "val_tokens": 1000, "test_tokens": 300,
                "seconds": sum(seconds) + outside, "epochs": [{"seconds": s} for s in seconds]}  # fmt: skip

    for arch, points in {"e": [point(8, 1000, 3, 6.0), point(16, 4000, 2, 6.0)],
                         "ngram": [point(8, 1000, 0, 3.0), point(16, 4000, 0, 3.0)]}.items():  # fmt: skip
        (tmp_path / arch).mkdir()
        (tmp_path / arch / "results.json").write_text(json.dumps({"points": points}))
    out = bench("bench/compare_time_split.py", str(tmp_path), "--train-floor-ms", "1.5", "--score-floor-ms", "0.5")
    (e_row,) = [row for row in markdown_rows(out, "Sweep") if row["Sweep"] == "e"]
    columns = ("Epochs", "Train rows", "Scored rows", "ms per train row", "Fixed s per epoch",
               "= ms per validation row", "Minutes outside epochs")  # fmt: skip
    assert [e_row[c] for c in columns] == ["5", "11,000", "5,600", "2.000", "5.0", "5.000", "0.2"]
    # 11,000 rows x 2 ms = 0.37 min; 5 epochs x 5 s = 0.42 min; outside: 12 s (e) + 6 s (n-gram) = 0.3 min
    assert "training rows 0.4 + per-epoch fixed work 0.4 + outside the epochs 0.3" in out
    assert "at 1.5 / 0.5 ms: 0.3 min" in out  # (11,000 x 1.5 + 5,600 x 0.5) ms = 19.3 s


def test_head_throughput_prints_every_path_against_its_floor():
    out = bench("bench/head_throughput.py", "--rows", "16", "--repeats", "1")
    rows = markdown_rows(out, "part")
    assert len(rows) == 6 and all(float(r["x its GEMM floor"]) > 0 for r in rows)
    assert [r["x its GEMM floor"] for r in rows[:2]] == ["1.00", "1.00"]  # the floors against themselves
    assert re.search(r"GFLOP/s: the scoring floor \d+, the training floor \d+, a square 2048 x 2048 torch.mm \d+", out)


def test_end_to_end_bench_times_every_training_step_against_phase2():
    out = bench("bench/end_to_end.py", "--vocab", "300", "--batch", "32", "--repeats", "1")
    rows = {row["Step"]: row for row in markdown_rows(out, "Step")}
    assert set(rows) == {"Phase 2 (cached contexts)", "end-to-end, K = 1, K' = 1", "end-to-end, K = 2, K' = 1",
                         "end-to-end, K = 4, K' = 1", "end-to-end, K = 2, K' = 2", "end-to-end, K = 4, K' = 4",
                         "RNN-trained cell (TBPTT)"}  # fmt: skip
    assert rows["Phase 2 (cached contexts)"]["x Phase 2"] == "1.00"
    for row in rows.values():
        # both printed rounded: the step to 0.1 ms (0.05 / 32 per token at most), the token to 0.001 ms
        assert float(row["ms / token"]) == pytest.approx(float(row["ms / step"]) / 32, abs=0.05 / 32 + 5e-4 + 1e-9)

"""One writer per output folder (cvfp.io.lock): a second process on the same --out is refused in one line and
the folder holds exactly what the first wrote; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import tiny_cli_args

from cvfp.cli import main
from cvfp.io.lock import LOCK_NAME, OutputLocked, folder_lock


def cvfp(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvfp.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def wait_for_lock(folder, timeout: float = 60.0) -> None:
    """Until a process holds ``folder``'s lock (its holder line is written once the lock is taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = folder / LOCK_NAME
        if lock.exists() and lock.read_text().startswith("pid "):
            return
        time.sleep(0.05)
    pytest.fail(f"no process took {folder}'s lock")


@pytest.mark.parametrize("second_context_dim", ["8", "16"], ids=["same-config", "other-config"])
def test_a_second_writer_is_refused_and_the_folder_is_the_first_ones(tiny_corpus, tmp_path, second_context_dim):
    out = tmp_path / "twin"
    cache = tmp_path / "cache"
    flags = [*tiny_cli_args(tiny_corpus, cache), "--samples", "4", "--out", str(out)]
    slow = ["--set", "phase2.epochs=40", "--set", "phase2.patience=0"]  # long enough for a second process to start
    first = cvfp("train", *flags, *slow)
    try:
        wait_for_lock(out)
        second = subprocess.run([sys.executable, "-m", "cvfp.cli", "train", *flags, *slow,
                                 "--context-dim", second_context_dim], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"{out} is in use by pid {first.pid}" in errors[0], second.stderr
        assert first.wait(timeout=300) == 0, first.stdout.read()
    finally:
        first.kill()
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["model"]["context_dim"] == 8 and summary["epochs"] and summary["samples"] == 4
    assert (out / LOCK_NAME).read_text() == ""  # released: nobody holds it


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, 'src'); from cvfp.io.lock import folder_lock\n"
        f"with folder_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLocked, match="in use by pid"), folder_lock(folder):
        pass
    holder.kill()
    holder.wait()
    assert (folder / LOCK_NAME).read_text().startswith(f"pid {holder.pid}")  # killed: never released
    with folder_lock(folder):
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}")
    assert "taking over the lock of a process that ended" in caplog.text


def test_export_refuses_an_out_inside_a_run_folder(tiny_corpus, tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["train", *tiny_cli_args(tiny_corpus, tmp_path / "cache"), "--samples", "4", "--out", str(out)]) == 0
    before = (out / "config.json").read_bytes()
    caplog.clear()
    for target in (out, out / "hf"):
        assert main(["export", "--checkpoint", str(out / "checkpoint"), "--out", str(target)]) == 2
        assert f"lies inside the cvfp run folder {out}" in caplog.text
    assert (out / "config.json").read_bytes() == before and not (out / "hf").exists()

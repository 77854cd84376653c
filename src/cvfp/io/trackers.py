"""Experiment trackers: TensorBoard, Weights & Biases, MLflow (``RunConfig.log_to``, ``--log-to``).

They sit behind the one place a run's metrics are written (``RunDir.log_metric``): every record of
``metrics.jsonl`` (a Phase 1 iteration, a Phase 2 epoch, an n-gram order) is also sent to each tracker as
scalars named ``<phase>/<field>``, and the finished run's summary as ``final/<field>``. ``metrics.jsonl``
stays the record; a tracker is a view of it. Each tracker's package is an optional extra
(``pip install cvfp[trackers]``); asking for one that is not installed is a one-line error before the run.
W&B honours its own environment (``WANDB_MODE=offline``, ``WANDB_PROJECT``, ``WANDB_DIR``), MLflow its
tracking URI (``MLFLOW_TRACKING_URI``, default ``./mlruns``).
"""

from __future__ import annotations

import importlib.util
import math
import netrc
import os
import urllib.parse
from pathlib import Path
from typing import Protocol

from cvfp.config import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
SUMMARY_FIELDS = (
    "val_loss",
    "val_ppl",
    "val_acc",
    "val_bpb",
    "val_er",
    "train_er",
    "phase1_iterations",
    "best_epoch",
    "train_tokens",
    "trainable_parameters",
    "train_flops",
    "seconds",
)


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_available(names: tuple[str, ...]) -> None:
    """Refuse, before any work, a tracker that is not installed or cannot start (W&B online with no API key)."""
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]
    if missing:
        raise ConfigError(
            f"--log-to {','.join(missing)}: not installed; pip install {' '.join(PACKAGES[n] for n in missing)} "
            "(or cvfp[trackers])"
        )
    if "wandb" in names and not _wandb_can_start():
        raise ConfigError(
            "--log-to wandb: no W&B API key (WANDB_API_KEY or `wandb login`); set WANDB_MODE=offline to log locally"
        )


def _wandb_can_start() -> bool:
    """W&B logs offline (or not at all) without a key; online it needs WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_MODE", "online") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def scalars(record: dict, prefix: str) -> dict[str, float]:
    """The finite numbers of a record (booleans and text left out), named ``prefix/field``."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{config}\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, config: dict, name: str) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cvfp"),
            name=name,
            config=config,
            dir=os.environ.get("WANDB_DIR", str(run_dir)),
            reinit="create_new",
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step, commit=True)  # committed now: the summary holds it at once

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run_dir: Path, config: dict, name: str) -> None:
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params(_flatten(config))

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def tracker_key(record: dict) -> tuple:
    """What identifies a metric record within its run: its phase and its Phase 1 iteration, Phase 2 epoch or
    n-gram order."""
    step = next((record[k] for k in ("iteration", "epoch", "order") if k in record), None)
    return record.get("phase"), step


class Trackers:
    """The trackers of one run; a record's step is its position in metrics.jsonl (one increasing axis for all
    phases, as W&B requires), the same in a resumed run (``RunDir.log_metric``)."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, config: dict) -> None:
        check_available(names)
        name = f"{Path(run_dir).parent.name}/{Path(run_dir).name}"
        self.open = [TRACKERS[n](Path(run_dir), config, name) for n in names]
        self.step = 0  # the last step logged: the final summary goes one beyond

    def log(self, record: dict, step: int) -> None:
        self.step = step
        values = scalars(
            record,
            f"phase{record['phase']}" if isinstance(record.get("phase"), int) else str(record.get("phase", "run")),
        )
        for tracker in self.open:
            tracker.log(values, step)

    def finish(self, summary: dict) -> None:
        values = scalars({k: summary.get(k) for k in SUMMARY_FIELDS}, "final")
        for tracker in self.open:
            tracker.log(values, self.step + 1)
        self.close()

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []

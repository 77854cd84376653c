"""Resume inside a point: the state of a phase, saved atomically, restored exactly.

A run folder's ``resume/`` holds at most one state file per phase
(``phase1.safetensors``, ``phase2.safetensors``): the tensors (weights, Adam's
moments, Phase 1's contexts, the noise generator's state) plus a JSON record
(iteration or epoch, history, best so far) in the same file's metadata, so a
state is one atomic write and can never be half new. Phase 1 saves every
``phase1.save_every`` iterations and when it ends; Phase 2 after every epoch
(``phase2.save_state``). Rerunning the command continues from the last state and
reaches, on CPU, bitwise the numbers of an uninterrupted run (tests/test_resume.py);
the folder is removed when the run finishes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from cvfp.files import loads_json
from cvfp.io.tensors import DamagedTensors, load_tensors, save_tensors

INFO_KEY = "cvfp_state"

log = logging.getLogger(__name__)


class StateStore:
    """The ``resume/`` folder of one run."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.safetensors"

    def save(self, name: str, tensors: dict[str, torch.Tensor], info: dict) -> None:
        save_tensors(self._path(name), tensors, {INFO_KEY: json.dumps(info)})

    def load(self, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The saved state, or None when there is none; a damaged one (unreadable, or its tensors no longer
        matching their digest) is discarded with a warning, never used: the phase then restarts."""
        path = self._path(name)
        try:
            tensors, metadata = load_tensors(path)
            return tensors, loads_json(metadata[INFO_KEY])
        except FileNotFoundError:
            return None
        except (DamagedTensors, KeyError, json.JSONDecodeError) as err:
            log.warning("resume state %s is damaged (%s): discarded, the phase restarts", path, err)
            path.unlink(missing_ok=True)
            return None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def take_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as flat tensors ("index.name") and its parameter groups (JSON)."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value for index, entry in state["state"].items() for key, value in entry.items()}
    return tensors, state["param_groups"]


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]
) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})

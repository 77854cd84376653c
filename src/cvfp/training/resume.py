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
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cvfp.files import atomic_write, loads_json

INFO_KEY = "cvfp_state"


class StateStore:
    """The ``resume/`` folder of one run."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.safetensors"

    def save(self, name: str, tensors: dict[str, torch.Tensor], info: dict) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {INFO_KEY: json.dumps(info)}
        atomic_write(self._path(name), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def load(self, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The saved state, or None when there is none (or it cannot be read: the phase then restarts)."""
        path = self._path(name)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                info = loads_json((f.metadata() or {})[INFO_KEY])
                names = f.keys()  # a safetensors file handle, not a dict: it has no iterator
                tensors = {k: f.get_tensor(k) for k in names}
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError):
            return None
        return tensors, info

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

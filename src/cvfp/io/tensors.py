"""Safetensors files that know when they are damaged: every file cvfp writes carries a digest of its tensors.

``save_tensors`` writes the tensors (atomically) with ``cvfp_sha256`` in the file's metadata: the SHA-256 of
every tensor's name, dtype, shape and bytes, in name order. ``load_tensors`` reads them back and recomputes
it: a flipped byte anywhere in the data, or a header that no longer parses, is a ``DamagedTensors`` error
naming the file. Files written before digests existed carry none and are read unchecked.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cvfp.errors import CvfpError
from cvfp.files import atomic_write

DIGEST_KEY = "cvfp_sha256"


class DamagedTensors(CvfpError, ValueError):
    """A safetensors file that cannot be read, or whose tensors no longer match their digest."""


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to the CPU, contiguous) and ``metadata`` plus their digest, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), DIGEST_KEY: digest(tensors)}
    atomic_write(Path(path), lambda tmp: _save_file(tensors, tmp, meta))


def _save_file(tensors: dict[str, torch.Tensor], tmp: Path, metadata: dict[str, str]) -> None:
    """safetensors' writer, its I/O errors (a full disk) raised as the OSError they are: one line, not a
    traceback, and the target keeps its previous content (``atomic_write``)."""
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        number = int(code.group(1)) if code else errno.EIO
        raise OSError(number, f"{os.strerror(number)} (writing {tmp.name}: {err})") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of ``path``, checked against their digest (FileNotFoundError when absent)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            names = f.keys()  # a safetensors file handle, not a dict: it has no iterator
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError) as err:
        raise DamagedTensors(f"{path} is damaged: {err}") from None
    expected = metadata.get(DIGEST_KEY)
    if expected is not None and digest(tensors) != expected:
        raise DamagedTensors(f"{path} is damaged: its tensors no longer match the digest written with them")
    return tensors, metadata

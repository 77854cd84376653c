"""Atomic, shareable file writes (every file cvfp writes goes through here), and JSON reads that fail cleanly.

A file is written to a hidden temporary beside its target and renamed over it
only when complete, so a kill or a full disk never leaves a partial file under
the final name (the target keeps its previous content). Temporaries left by a
killed earlier write of the same target are removed first; each temporary names
its writer (host and process), so that another process writing the same target
at the same moment (two ranks filling one cache) keeps its own. The result gets
the permissions of an ordinary file under the process's umask (``mkstemp`` alone
would make it private to its owner).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_files(path: Path) -> list[Path]:
    """Temporaries of ``path`` left behind by interrupted writes."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _abandoned(temp: Path, target: Path) -> bool:
    """Whether a temporary of ``target`` was left by a writer that is gone: one on this host whose process has
    ended, or one whose name names no writer (a kill during an older cvfp's write)."""
    host, _, pid = temp.name[len(f".{target.name}.") : -len(".tmp")].rpartition(".")[0].rpartition("-")
    if not pid.isdigit():
        return True
    if host != socket.gethostname():
        return False  # another machine's writer, perhaps still writing: not ours to judge
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, another user's
        pass
    return False


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temp_files(path):
        if _abandoned(stale, path):
            stale.unlink(missing_ok=True)
    owner = f"{socket.gethostname()}-{os.getpid()}"
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def loads_json(text: str):
    """``json.loads``, with text nested too deeply for Python's parser (a RecursionError) reported as the
    JSONDecodeError every reader already turns into its own one-line error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply (arrays or objects inside each other)", text[:80], 0) from None

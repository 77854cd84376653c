"""One writer per output folder: an exclusive lock held by every command that writes there.

``folder_lock(folder)`` takes an exclusive ``flock`` on ``folder/.cvfp-lock`` and writes the holder's pid,
host, command and start time into it. A second process that asks for the same folder is refused at once with
one line naming the holder. The operating system drops the lock when its process ends, however it ends, so a
lock left by a killed process is taken over by the next command (which says so); a process that finishes
normally empties the file. Under torchrun the rank that writes a folder holds its lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from cvfp import distributed
from cvfp.errors import CvfpError
from cvfp.io.rundir import writable_ancestor

log = logging.getLogger(__name__)

LOCK_NAME = ".cvfp-lock"


class OutputLocked(CvfpError):
    """Another process is writing to the same output folder."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (creating the folder) for the duration of the block, or raise OutputLocked. A
    folder this call created and that holds nothing but its lock at the end (the command failed before writing
    anything: a missing package, a refused config) is removed again."""
    folder = Path(folder)
    created = writable_ancestor(folder) != folder
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            raise OutputLocked(
                f"{folder} is in use by {holder}: wait for it to finish, stop it, or write to another --out"
            ) from None
        stale = _holder(fd)
        if stale:
            log.warning("%s: taking over the lock of a process that ended without releasing it (%s)", folder, stale)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                (folder / LOCK_NAME).unlink()
                folder.rmdir()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def writer_lock(folder: Path) -> contextlib.AbstractContextManager:
    """``folder_lock`` on the rank that writes (rank 0 under torchrun; the one process otherwise), nothing on
    the others."""
    return folder_lock(folder) if distributed.ranks().main else contextlib.nullcontext()


def inside_run_folder(path: Path) -> Path | None:
    """The cvfp run, sweep or grid folder that ``path`` is or lies inside, if any."""
    for folder in [Path(path).resolve(), *Path(path).resolve().parents]:
        if any((folder / name).exists() for name in (LOCK_NAME, "metrics.jsonl", "results.json", "grid.json")):
            return folder
    return None

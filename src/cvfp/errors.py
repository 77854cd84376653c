"""The one base class of the problems a user can fix, and where a run is.

Every error that a mistake in the input, a file or the machine can cause
(a bad config, corpus, checkpoint or results file, a folder that holds other
runs, too little memory, a diverging loss) subclasses ``CvfpError``; the CLI
prints it as one line. ``stage`` records what a command is doing, so that an
interruption can say where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class CvfpError(Exception):
    """A problem reported to the user as one line, never as a traceback."""


_STAGES: list[str] = []
_FAILED: list[str] = []  # the stages that were running when an exception left them


# Fault injection for the fault suite (tests/test_kill.py): a process whose environment names a
# stage, as "CVFP_KILL_AT=<start of a stage's description>", kills itself with SIGKILL on entering it.
KILL_AT = "CVFP_KILL_AT"


@contextlib.contextmanager
def stage(description: str) -> Iterator[None]:
    """Mark what is running (nested stages read outermost first)."""
    _STAGES.append(description)
    if (target := os.environ.get(KILL_AT)) and description.startswith(target):
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        yield
    except BaseException:
        if not _FAILED:  # the innermost stage sees the exception first, with the whole stack in place
            _FAILED.append(current_stage())
        raise
    finally:
        _STAGES.pop()


def current_stage() -> str:
    """The running stages, e.g. "sweep runs/x: N=8 seed 42: Phase 1"; "" outside any."""
    return ": ".join(_STAGES)


def failed_stage() -> str:
    """Where the last exception to leave a stage was raised ("" if none did); forgets it."""
    return _FAILED.pop() if _FAILED else ""


class InputError(CvfpError, ValueError):
    """An input (a file, a stream, an argument) cannot be used as it is."""

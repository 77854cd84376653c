"""``python -m cvfp``, the ``cvfp`` script and ``torchrun ... -m cvfp``: the command line, ending with its status."""

import logging
import os
import signal
import sys

from cvfp.cli import INTERRUPTED, main


def entry() -> None:
    """Run the command line and exit with its status.

    An interrupted command (Ctrl-C, status 130) ends here without the interpreter's shutdown: when the
    interrupt lands inside a module being imported (torch imports some of its modules lazily, mid-run), the
    shutdown can end the process by SIGINT after the interruption was handled and reported. Everything a
    command writes is already on disk by then (atomic writes); the streams are flushed first.
    """
    code = main()
    if code == INTERRUPTED:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut the report short
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

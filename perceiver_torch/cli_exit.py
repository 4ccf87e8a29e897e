"""How the command-line tools end when the reader of their output goes away (``... | head -1``)."""

from __future__ import annotations

import os
import sys

# What a process killed by SIGPIPE exits with (128 + 13), as Unix tools writing to a closed pipe do.
SIGPIPE_STATUS = 141


def stdout_gone() -> int:
    """Call on a BrokenPipeError from writing stdout: point stdout at /dev/null, so that the interpreter's last
    flush at exit has nothing to complain about, and return SIGPIPE_STATUS for the tool to exit with quietly."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_STATUS


def print_out(text: str) -> int | None:
    """Print `text` to stdout and flush it there: None once written, SIGPIPE_STATUS (stdout_gone) when the reader
    has gone. Another OSError (a full disk, /dev/full) propagates, stdout pointed at /dev/null first so that what
    stays buffered does not fail again at the interpreter's exit."""
    try:
        print(text)
        sys.stdout.flush()  # a reader that has gone (| head) is found here, not at the interpreter's exit
    except BrokenPipeError:
        return stdout_gone()
    except OSError:
        stdout_gone()
        raise
    return None

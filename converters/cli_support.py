"""What perceiver-convert and perceiver-to-transformers share: how a run and its expected failures are reported."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_report(prog: str, write: Callable[[], object], errors: tuple[type[BaseException], ...]) -> int:
    """Run `write` and print `wrote <what it returned>`: exit status 0.

    One of `errors` (bad input, not a bug) becomes the one line `PROG: error: ...` on stderr and
    exit status 1, never a traceback; anything else propagates.
    """
    try:
        out = write()
    except errors as exc:
        print(f"{prog}: error: {str(exc) or type(exc).__name__}", file=sys.stderr)  # MemoryError() has no message
        return 1
    print(f"wrote {out}")
    return 0


def unwritable_output(path: Path) -> str | None:
    """Why a report could not be written at `path` (checked before a long run), or None."""
    if path.is_dir():
        return f"{path} is a directory; expected a file path"
    ancestor = next(p for p in path.absolute().parents if p.exists())  # atomic_write creates the rest
    if not ancestor.is_dir():
        return f"{path}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{path}: {ancestor} is not writable"
    return None

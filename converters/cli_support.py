"""What perceiver-convert and perceiver-to-transformers share: how a run and its expected failures are reported."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from perceiver_torch.serialization import check_output_path


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
    try:
        check_output_path(path)
    except OSError as exc:
        return str(exc)
    return None

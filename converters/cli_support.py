"""What perceiver-convert and perceiver-to-transformers share: how a run and its expected failures are reported."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from perceiver_torch.serialization import check_output_path

# HTTP clients whose INFO lines are per-request noise to a CLI's reader: httpx (and its fork httpx2, which
# huggingface_hub may use) logs every request, and a 404 that huggingface_hub expects reads like an error.
QUIET_PACKAGES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2"})


def _not_http_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.partition(".")[0] not in QUIET_PACKAGES


def show_logs(format: str, stream=sys.stderr) -> None:
    """Show the library's INFO logs (what it changes, e.g. float16 arrays converted to float32) plainly on `stream`,
    without the HTTP clients' per-request lines (filtered at the handler: their loggers may not exist yet)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(format))
    handler.addFilter(_not_http_chatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler])


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

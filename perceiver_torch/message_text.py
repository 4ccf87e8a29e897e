"""Text from a file (tensor names, module paths) made safe to put in an error message.

A hostile file's names can hold terminal escapes and newlines (which would clear the screen, fake output or
break a CLI's one-line error) or be megabytes long; and a file can hold thousands of them.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_TEXT = 300  # characters of one problem line, past which it is cut
MAX_LINES = 50  # problem lines listed, past which the rest are counted


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """`text` with control characters escaped as Python would write them (\\x1b, \\n), cut past `limit`."""
    cut = text if len(text) <= limit else text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut if len(text) <= limit else f"{cut}...({len(text)} characters)"


def problem_lines(problems: Sequence[str], limit: int = MAX_LINES) -> str:
    """The problems as indented lines of one message, each `printable`, the first `limit` of them."""
    lines = [printable(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n  " + "\n  ".join(lines)

"""Reading a small input file (a config.json) without letting the file decide how much is read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_CONFIG_BYTES = 1 << 20  # a Perceiver config.json is ~2 KB


class NotASmallFile(ValueError):
    """The path is not a regular file, or is larger than allowed; the message says which."""


def read_small_file(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (a FIFO, device or larger file is refused)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused as not a regular file.
    fd = os.open(Path(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotASmallFile("not a regular file")
        if info.st_size > limit:
            raise NotASmallFile(f"{info.st_size:,} bytes; at most {limit:,}")
        chunks, total = [], 0
        while chunk := os.read(fd, limit + 1 - total):  # it may have grown since the fstat: read one byte past
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise NotASmallFile(f"more than {limit:,} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)

"""sha256 of files, streamed: the zoo pins artifacts by it and the converter records its source's."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f) -> str:
    """sha256 of an open binary file from its current position to the end."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()

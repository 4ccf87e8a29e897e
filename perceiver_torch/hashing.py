"""Hashes of files, streamed: the zoo pins artifacts by sha256 and the converter records its source's; git's blob
id is what the Hub names a regular (non-LFS) file of a repo by."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f) -> str:
    """sha256 of an open binary file from its current position to the end."""
    return _digest(hashlib.sha256(), f)


def git_blob_sha1_stream(f, size: int) -> str:
    """The id git gives a blob of `size` bytes (the Hub's ETag of a regular file), of an open binary file from its
    current position to the end; a file of another length than `size` gets another id."""
    digest = hashlib.sha1(b"blob %d\0" % size)  # noqa: S324 - git's id, as the Hub reports it
    return _digest(digest, f)


def _digest(digest, f) -> str:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()

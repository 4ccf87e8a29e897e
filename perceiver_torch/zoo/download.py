"""Download one pinned artifact into the Hub cache, under names built from the manifest alone.

`hf_hub_download` names the blob after the server's ETag header, unchecked, so a hostile
endpoint could make it write outside the cache. Here the server's answer is only compared
with the manifest: one HEAD request (huggingface_hub's `get_hf_file_metadata`) must give the
pinned commit, the manifest's size and its sha256 as ETag (what the Hub sends for an LFS file)
before anything is written; the body is then streamed into a temp file of ours beside
``blobs/<manifest sha256>``, cut off at the pinned size, checked, and renamed into place. The
layout is the Hub cache's own (``snapshots/<revision>/<filename>`` links to the blob), so
huggingface_hub and other tools find the file.

What no manifest pins (a user's repo, `user_hub`; a transformers repo, `converters.transformers.source`) is pinned
by a first HEAD answer, accepted by `artifact_from_answer` only when every name it would put in the cache is
well-formed (a 40-hex commit, a sha256 or git blob id as ETag) and its size bounded; then downloaded as above.
"""

from __future__ import annotations

import logging
import os
import re
import reprlib
import secrets
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlsplit

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from ..serialization import make_folders, remove_empty_folders

log = logging.getLogger(__name__)
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 80  # a header value from the server is shown cut short
_TEMP_SUFFIX = re.compile(r"\.[0-9a-f]{16}\.incomplete")  # what _stream_blob adds to the blob's name
COMMIT = re.compile(r"^[0-9a-f]{40}\Z")  # a git commit id; also a git blob id
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


class RefusedAnswer(ValueError):
    """The endpoint's answer (headers or body) disagrees with the manifest; nothing was kept."""


class _Capped:
    """A writable file that refuses to grow past `limit` bytes (a server may send more than it announced).

    Everything but `write` is the wrapped file's (a stand-in for the binary file http_get takes).
    """

    def __init__(self, f, limit: int, pinned_by: str):
        self._f, self._limit, self._pinned_by = f, limit, pinned_by

    def write(self, data) -> int:
        if self._f.tell() + len(data) > self._limit:
            raise RefusedAnswer(f"the server sent more than the {self._limit} bytes {self._pinned_by} pins; "
                                "the download was stopped")
        return self._f.write(data)

    def __getattr__(self, name):  # seek, tell, truncate: http_get rewinds when a resumed request restarts
        return getattr(self._f, name)


def repo_cache_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def snapshot_path(cache: Path, artifact: dict) -> Path:
    return repo_cache_dir(cache, artifact["repo_id"]) / "snapshots" / artifact["revision"] / artifact["filename"]


def pinned_by(artifact: dict) -> str:
    """Who fixed `artifact`'s size and sha256, for messages: the manifest, or (a user's repo, `user_hub`) the
    server's first answer."""
    return artifact.get("pinned_by", "the manifest")


def pinned_hash(artifact: dict) -> tuple[str, str]:
    """What pins `artifact`'s bytes, as (what it is, its hex value), also the name of its blob in the cache: its
    sha256 (the Hub's ETag of an LFS file), or for a regular file of a repo (a `git_sha1` key: not stored with LFS,
    as a config.json is) its git blob id, the Hub's ETag of such a file."""
    if "git_sha1" in artifact:
        return "git blob id", artifact["git_sha1"]
    return "sha256", artifact["sha256"]


def artifact_from_answer(meta, repo_id: str, filename: str, revision: str, *, limit: int, limit_is: str,
                         regular_files: bool = False) -> dict:
    """The artifact (commit, size, sha256 or git blob id) a server's first HEAD answer `meta` for `filename` at
    `revision` pins, for a file no manifest pins; refused (`RefusedAnswer`, saying what is wrong) unless it names a
    40-hex commit (`revision` itself, where that is a commit id), a size of at most `limit` bytes (`limit_is` says
    whose) and as ETag a sha256 (an LFS file) or, with `regular_files`, a git blob id: the names the cache gets."""
    size, commit, etag = meta.size, meta.commit_hash, meta.etag
    if size is None or size < 0:
        given = "" if size is None else f" (it announces {size})"
        raise RefusedAnswer(f"the server announces no size for {filename}{given}; the download is refused, as it "
                            "could not be bounded")
    if size > limit:
        raise RefusedAnswer(f"the server announces {size} bytes for {filename}, more than the {limit} bytes "
                            f"{limit_is}; the download is refused")
    if not isinstance(commit, str) or not COMMIT.match(commit):
        raise RefusedAnswer(f"the server announces no commit id (X-Repo-Commit: {_SHOWN.repr(commit)}) for {filename}; "
                            "the download is refused, as it could not be pinned")
    if COMMIT.match(revision) and commit != revision:
        raise RefusedAnswer(f"the server answered for commit {commit} when asked for {filename} at commit "
                            f"{revision}; the download is refused")
    kinds = "a sha256 (what the Hub sends for an LFS file)"
    if regular_files:
        kinds += " or a git blob id (what it sends for a regular file)"
    is_sha256 = isinstance(etag, str) and bool(SHA256.match(etag))
    if not is_sha256 and not (regular_files and isinstance(etag, str) and COMMIT.match(etag)):
        raise RefusedAnswer(f"the server's ETag for {filename} is {_SHOWN.repr(etag)}, not {kinds}; the download is "
                            "refused, as its bytes could not be checked")
    return {"repo_id": repo_id, "filename": filename, "revision": commit, "size": size,
            "sha256" if is_sha256 else "git_sha1": etag, "pinned_by": f"the server's answer for revision {revision!r}"}


def check_answer(meta, artifact: dict) -> None:
    """Refuse a HEAD answer that is not the manifest's file at the pinned revision."""
    kind, expected = pinned_hash(artifact)
    if meta.commit_hash != artifact["revision"]:
        raise RefusedAnswer(f"the server answered for commit {_SHOWN.repr(meta.commit_hash)}, not the pinned "
                            f"revision {artifact['revision']}")
    if meta.size != artifact["size"]:
        raise RefusedAnswer(f"the server announces {meta.size} bytes, but {pinned_by(artifact)} pins size "
                            f"{artifact['size']}")
    if meta.etag != expected:
        what = "an LFS file is its sha256" if kind == "sha256" else "a regular file is its git blob id"
        raise RefusedAnswer(f"the server's ETag {_SHOWN.repr(meta.etag)} is not the {kind} {pinned_by(artifact)} "
                            f"pins: {expected} (the Hub's ETag of {what})")


def download_location(url: str, meta, headers: dict) -> str:
    """Where to GET: the HEAD's final location; a token is never sent to another origin (a CDN's signed URL)."""
    location = meta.location or url
    if urlsplit(location)[:2] != urlsplit(url)[:2]:
        headers.pop("authorization", None)
    return location


def _stream_blob(url: str, headers: dict, blob: Path, artifact: dict, verify) -> os.stat_result:
    """GET into a temp file of ours beside `blob`; `verify(open_file)` decides before it is renamed."""
    tmp = blob.with_name(f"{blob.name}.{secrets.token_hex(8)}.incomplete")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, as a plain open()
    try:
        with os.fdopen(fd, "w+b") as f:
            capped = cast(BinaryIO, _Capped(f, artifact["size"], pinned_by(artifact)))
            # No expected_size: with it, a body shorter than pinned (announced so) is huggingface_hub's two-line
            # OSError advising force_download=True; `verify` names the sizes instead.
            http_get(url, capped, headers=headers, displayed_filename=artifact["filename"])
            f.flush()
            f.seek(0)
            verify(f)
            stat = os.fstat(f.fileno())
        os.replace(tmp, blob)  # same inode: `stat` stays the identity of the bytes verified
        return stat
    finally:
        tmp.unlink(missing_ok=True)  # a no-op once renamed


def _remove_leftovers(blob: Path) -> None:
    """Remove the temp files of earlier pulls of `blob` that were killed mid-download (SIGTERM or SIGKILL skip
    _stream_blob's cleanup), which no later pull would ever reuse or remove. Called holding the blob's lock,
    which a pull holds for as long as its temp file exists: none of them is in progress."""
    for stale in blob.parent.glob(f"{blob.name}.*.incomplete"):
        if _TEMP_SUFFIX.fullmatch(stale.name, len(blob.name)):
            try:
                stale.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted download", stale)
            except OSError as exc:
                log.warning("cannot remove %s, left by an interrupted download: %s", stale, exc.strerror or exc)


def _link(pointer: Path, blob: Path) -> None:
    """snapshots/<rev>/<filename> -> the blob, relative as huggingface_hub makes it, replaced atomically."""
    tmp = pointer.with_name(f".{pointer.name}.{secrets.token_hex(8)}.link")
    os.symlink(os.path.relpath(blob, pointer.parent), tmp)
    try:
        os.replace(tmp, pointer)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download(artifact: dict, endpoint: str, cache: Path, verify, token: str | bool | None = None, *,
             force: bool = False) -> tuple[Path, os.stat_result | None]:
    """Download `artifact` into `cache`; returns its snapshot path and the stat of the bytes verified. `force`
    downloads it even if its blob is cached (the new bytes, once verified, replace it: force_download).

    `token` is huggingface_hub's: a str is sent, True the machine's (HF_TOKEN or `hf auth login`'s), required,
    None the machine's if any, False none. The stat is None when the blob was already there (put by another pull):
    the caller verifies it. Raises `RefusedAnswer` (nothing written) or what huggingface_hub raises for HTTP errors.
    """
    url = hf_hub_url(artifact["repo_id"], artifact["filename"], revision=artifact["revision"], endpoint=endpoint)
    headers = build_hf_headers(token=token)
    meta = get_hf_file_metadata(url, token=token, headers=dict(headers), endpoint=endpoint)
    check_answer(meta, artifact)
    repo_dir = repo_cache_dir(cache, artifact["repo_id"])
    blob_name = pinned_hash(artifact)[1]
    blob = repo_dir / "blobs" / blob_name
    pointer = snapshot_path(cache, artifact)
    # The lock huggingface_hub takes for this blob (named after its ETag, as the blob), so the two never race.
    lock = cache / ".locks" / repo_dir.name / f"{blob_name}.lock"
    made_for_lock = make_folders(lock.parent)
    stat = None
    try:
        with WeakFileLock(lock):
            # The repository's folders are made and, after a failure, taken back only while the lock is held: a
            # pull waiting on it that found them made by a pull that then failed makes them again here.
            made = [make_folders(blob.parent)]  # one list per branch of the tree, each deepest first
            try:
                _remove_leftovers(blob)
                if force or not blob.is_file():
                    log.info("downloading %s to %s", url, blob)
                    stat = _stream_blob(download_location(url, meta, headers), headers, blob, artifact, verify)
                made.append(make_folders(pointer.parent))
                _link(pointer, blob)
            except BaseException:
                remove_empty_folders([folder for branch in reversed(made) for folder in branch])  # last made first
                raise
    except BaseException:
        remove_empty_folders(made_for_lock)
        raise
    return pointer, stat

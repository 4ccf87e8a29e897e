"""Checkpoints in Hub repos that users name (``hf-hub:owner/name``, timm's spelling): unverified, bounded, strict.

As in timm, ``hf_hub:`` (its older prefix) is the same as ``hf-hub:``, and ``hf-hub:owner/name@REVISION`` names a
revision (`parse_hub_name`); messages and logs name the repo ``hf-hub:owner/name``, the revision beside it.

Unlike the zoo, no manifest pins these files: what the repo holds at the revision is what is loaded, and
nobody has checked it. Loading one is as safe as loading a local file, and never downloads unbounded data:

1. one HEAD request (huggingface_hub's ``get_hf_file_metadata``) for ``model.safetensors`` at the revision
   (a branch, tag or commit) must announce a commit id, a size of at most ``MAX_CHECKPOINT_BYTES`` (the
   largest file ``load_model`` could ever accept) and a sha256 as ETag (what the Hub sends for an LFS file),
   or nothing is downloaded; the commit is logged, so that users can pin it;
2. a file not yet cached has its header read first with range requests (at most 8 + ``MAX_HEADER_BYTES``
   bytes) and checked as ``load_model`` checks it (perceiver-torch metadata, a valid config; ``check``
   refuses another task's model) before its body is downloaded;
3. the body is downloaded at that commit as the zoo downloads (``download.py``: cut off at the announced
   size, its sha256 checked against the ETag before it enters the Hub cache) and loaded by ``load_model``
   (safetensors only, strict: no code runs).

The CLI takes 1 and 2 before it reads the user's inputs (`hub_metadata`) and hands what it learned to the
load (`hub_checkpoint`'s `header`), which takes neither again. 3 keeps its own HEAD, at the commit: 1's answer,
for a branch, may locate another commit's file by then.

``HF_HUB_OFFLINE=1`` loads what the cache holds for the revision (``refs/<branch>`` as huggingface_hub writes it),
and so does a Hub that cannot be reached (1's request fails to connect or times out: no HTTP answer;
huggingface_hub's ``hf_hub_download`` falls back alike), with a warning naming the cached commit; an HTTP error
answer (401, 404, 5xx) is the server's and is raised. A cached file whose blob is named by a sha256 is checked
against it first, and one that resolves outside the repo's cache folder, or to no regular file, is refused (as the
zoo refuses it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import httpx2
from huggingface_hub import HfFileMetadata, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

from ..foreign_checkpoints import convert_command
from ..safetensors_io import header_length, parse_header, read_header
from ..serialization import MAX_CHECKPOINT_BYTES, atomic_write, checked_metadata
from .download import COMMIT, RefusedAnswer, artifact_from_answer, download_location, repo_cache_dir, snapshot_path
from .hub import (
    HUB_ENDPOINT,
    ZooError,
    cache_dir,
    cached_entry,
    check_client_online,
    from_endpoint,
    is_offline,
    offline_reason,
    one_line,
)
from .schema import is_relative_path, is_repo_id
from .token import HOW_TO_SEND

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
# What a name of a user's Hub repo may start with: timm's prefix and its older spelling, which timm still takes.
HUB_PREFIXES = (HUB_PREFIX, "hf_hub:")
FILENAME = "model.safetensors"

MetadataCheck = Callable[[dict[str, str]], None]


class HubError(ZooError):
    """A checkpoint cannot be pushed to, or pulled from, a Hub repo named by the user (``hf-hub:owner/name``)."""


class HubUnreachable(HubError):
    """The Hub could not be reached: the request failed to connect or timed out, with no HTTP answer. What the
    cache records for the revision then stands in (`hub_checkpoint`, `hub_metadata`)."""


@dataclass(frozen=True)
class HubHeader:
    """What `hub_metadata` learned of a repo's ``model.safetensors`` at a revision: the commit it is, the
    checked metadata of its header and (online) the artifact the server's HEAD answer pinned (commit, size,
    sha256). Given to `hub_checkpoint`, loading that commit asks for neither again."""

    commit: str
    metadata: dict[str, str]
    artifact: dict | None = None  # None offline: the cache's file, checked when it is loaded


def is_hub_name(value) -> TypeGuard[str]:
    """A string naming a user's Hub repo: ``hf-hub:`` (or ``hf_hub:``) and the repo id."""
    return isinstance(value, str) and value.startswith(HUB_PREFIXES)


def parse_hub_name(name: str, revision: str | None = None) -> tuple[str, str]:
    """The repo id and the checked revision (`checked_revision`: 'main' if none is given) of ``hf-hub:owner/name``
    at `revision`, or of timm's ``hf-hub:owner/name@REVISION``; ``hf_hub:`` alike. A revision after '@' and a
    different `revision` are refused, naming both."""
    prefix = next((p for p in HUB_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"{name!r}: expected 'hf-hub:owner/name', a Hub repo id after the prefix.")
    repo_id, at, named = name[len(prefix):].partition("@")
    if not is_repo_id(repo_id):
        raise ValueError(f"{name!r}: expected 'hf-hub:owner/name' (or 'hf-hub:owner/name@REVISION'), a Hub repo id "
                         "after the prefix (owner and name of letters, digits, '.', '_' or '-', each at most 96 "
                         "characters).")
    if not at:
        return repo_id, checked_revision(revision)
    if not is_relative_path(named) or "@" in named:
        raise ValueError(f"{name!r}: expected a branch, tag or commit id after the '@' of 'hf-hub:owner/name@REVISION' "
                         f"(plain names separated by '/', one '@' in all); got {named!r}.")
    if revision is not None and revision != named:
        raise ValueError(f"{name!r} names revision {named!r} after its '@', and revision {revision!r} was given too; "
                         "give the revision once.")
    return repo_id, named


def hub_repo_id(name: str) -> str:
    """The repo id of an ``hf-hub:owner/name`` (or ``@REVISION``) string, checked against the Hub's grammar."""
    return parse_hub_name(name)[0]


def hub_endpoint(endpoint: str | None) -> str:
    """`endpoint`, else $HF_ENDPOINT as it is now, else the Hugging Face Hub."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")


def checked_revision(revision) -> str:
    """`revision` (a branch, tag or commit; None is 'main') as a relative name the cache can store under refs/."""
    if revision is None:
        return "main"
    if not is_relative_path(revision):
        raise ValueError(f"revision must be a branch, tag or commit id (plain names separated by '/'); got "
                         f"{revision!r}.")
    return revision


def hub_checkpoint(repo_id: str, revision: str, *, endpoint: str | None = None, cache: str | os.PathLike | None = None,
                   check: MetadataCheck | None = None, header: HubHeader | None = None,
                   token: str | bool | None = None, local_files_only: bool = False,
                   force_download: bool = False) -> Path:
    """The cached ``model.safetensors`` of `repo_id` at `revision`, downloaded (bounded, header checked by
    `check` first) if the cache lacks that commit's file; only the cache with `local_files_only` or HF_HUB_OFFLINE
    set; downloaded (its header checked first) even if cached with `force_download` (the caller refuses it with
    either). `header`, what `hub_metadata` read at the commit `revision` names, stands for the HEAD answer and the
    header read. `token` (checked by the caller: `token.checked_token`) is sent with every request, as
    huggingface_hub sends it."""
    cache_root = Path(cache) if cache else cache_dir()
    what = f"{HUB_PREFIX}{repo_id}"
    offline = offline_reason(local_files_only)
    if offline is not None or not force_download and _cached_commit(repo_id, revision, cache_root):
        return _offline(repo_id, revision, cache_root, what, offline=offline)
    check_client_online(what, HubError)
    where = hub_endpoint(endpoint)
    if header is not None and header.artifact is not None:  # asked and read at this commit already
        artifact = _read_at(header.artifact, repo_id, revision)
        if check is not None:  # cached or not: the header read is what the caller decides on
            check(header.metadata)
    else:
        try:
            url, meta, artifact = _announced_artifact(repo_id, revision, where, what, token)
        except HubUnreachable as exc:  # as hf_hub_download: the revision's file in the cache, if it holds one
            if force_download:  # asked for a new download: what the cache holds would not be it (hf_hub_download)
                raise HubError(f"{exc}; force_download=True downloads the file again, so the cache's copy was not "
                               "used (leave force_download out to load it)") from exc
            return _offline(repo_id, revision, cache_root, what, unreachable=exc)
        # The header checked before the body, every caller: a file downloaded again is checked as a new one.
        if force_download or not snapshot_path(cache_root, artifact).exists():
            metadata = _remote_metadata(url, meta, artifact, what, where, token)
            if check is not None:
                check(metadata)
    path, _ = from_endpoint(what, artifact, where, cache_root, token, force_download=force_download)
    record_revision(repo_id, revision, artifact["revision"], cache=cache_root)
    return path


def _read_at(artifact: dict, repo_id: str, revision: str) -> dict:
    """A `HubHeader`'s artifact, refused unless it pins `repo_id`'s file at the commit `revision`: what is
    loaded must be what was read."""
    if (artifact["repo_id"], artifact["revision"]) != (repo_id, revision):
        raise ValueError(f"{HUB_PREFIX}{repo_id} at revision {revision!r}: the header given was read for "
                         f"{HUB_PREFIX}{artifact['repo_id']} at commit {artifact['revision']}.")
    return artifact


def record_revision(repo_id: str, revision: str, commit: str, *, cache: str | os.PathLike | None = None) -> None:
    """Record in the Hub cache that `revision` (a branch or tag) is `commit`, as huggingface_hub does, so that an
    offline load finds it; only when it changed, so that a cache this user may only read still serves a load."""
    ref = repo_cache_dir(Path(cache) if cache else cache_dir(), repo_id) / "refs" / revision
    if revision == commit or (ref.is_file() and ref.read_text() == commit):
        return
    try:
        atomic_write(ref, lambda tmp: Path(tmp).write_text(commit))
    except OSError as exc:  # a shared cache that holds the file but that this user may only read
        log.warning("%s%s: cannot record in the Hub cache that revision %r is commit %s (%s: %s); offline, load it "
                    "with revision=%r", HUB_PREFIX, repo_id, revision, commit, exc.filename, exc.strerror or exc,
                    commit)


def hub_metadata(repo_id: str, revision: str, *, endpoint: str | None = None,
                 cache: str | os.PathLike | None = None, token: str | bool | None = None) -> HubHeader:
    """The commit `revision` is and the checked perceiver-torch metadata (task, config) of the repo's
    ``model.safetensors`` there, its body not downloaded: from the cache if it holds that commit's file, else
    from the file's header on the server (two range requests); with HF_HUB_OFFLINE set, the cache's file for
    `revision`. What the CLI needs to know of a model before it reads the user's inputs, and then passes to
    `hub_checkpoint` to load it."""
    cache_root = Path(cache) if cache else cache_dir()
    what = f"{HUB_PREFIX}{repo_id}"
    if is_offline() or _cached_commit(repo_id, revision, cache_root):  # its sha256 is checked when it is loaded
        cached = _offline_file(repo_id, revision, cache_root, what)
        commit, artifact = cached.parent.name, None  # snapshots/<commit>/model.safetensors
    else:
        check_client_online(what, HubError)
        where = hub_endpoint(endpoint)
        try:
            url, meta, artifact = _announced_artifact(repo_id, revision, where, what, token)
        except HubUnreachable as exc:  # as hf_hub_download: the revision's file in the cache, if it holds one
            cached = _offline_file(repo_id, revision, cache_root, what, unreachable=exc)
            commit, artifact = cached.parent.name, None
            _warn_cached_instead(exc, revision, cached)
        else:
            commit, cached = artifact["revision"], snapshot_path(cache_root, artifact)
            if not cached.exists():
                return HubHeader(commit, _remote_metadata(url, meta, artifact, what, where, token), artifact)
    source = f"{what}@{commit}/{FILENAME} (cached as {cached})"
    return HubHeader(commit, checked_metadata(source, read_header(cached),
                                              transformers_source=_convert_from(repo_id, commit)), artifact)


def _convert_from(repo_id: str, revision: str) -> str:
    """The repo at `revision` as `perceiver-convert --from-transformers` takes them, for advice in a refusal."""
    return f"{repo_id} --revision {revision}"


def _announced_artifact(repo_id: str, revision: str, where: str, what: str,
                        token: str | bool | None) -> tuple[str, HfFileMetadata, dict]:
    """The file's URL, the server's HEAD answer for it and the artifact it pins (commit, size, sha256), refused
    unless it is a bounded, pinnable LFS file; the commit is logged."""
    url = hf_hub_url(repo_id, FILENAME, revision=revision, endpoint=where)
    asked = f"{what} (revision {revision!r}, endpoint {where})"
    meta = _announced(url, where, asked, token, convert_from=_convert_from(repo_id, revision))
    try:
        artifact = artifact_from_answer(meta, repo_id, FILENAME, revision, limit=MAX_CHECKPOINT_BYTES,
                                        limit_is="of the largest checkpoint load_model accepts")
    except RefusedAnswer as exc:
        raise HubError(f"{asked}: {exc}.") from None
    commit = artifact["revision"]
    log.info("%s: revision %r is commit %s (pass revision=%r to load exactly these weights again)", what, revision,
             commit, commit)
    return url, meta, artifact


def _announced(url: str, endpoint: str, what: str, token: str | bool | None, convert_from: str) -> HfFileMetadata:
    """The server's HEAD answer for the file; `convert_from`, the repo and revision as --from-transformers takes
    them, for the advice when there is no such file."""
    headers = build_hf_headers(token=token)
    try:
        meta = get_hf_file_metadata(url, token=token, headers=headers, endpoint=endpoint)
    except EntryNotFoundError:
        raise HubError(f"{what}: the repo has no {FILENAME} at this revision. A perceiver-torch checkpoint is "
                       "shared with perceiver_torch.push_to_hub, which writes it; a transformers repo is converted "
                       f"with {convert_command(convert_from, None)}.") from None
    except RevisionNotFoundError:
        raise HubError(f"{what}: the repo has no such revision (expected a branch, tag or commit id).") from None
    except GatedRepoError:
        raise HubError(f"{what}: the repo is gated: accept its conditions on the Hub with the account whose token is "
                       f"sent ({_token_sent(headers)}).") from None
    except RepositoryNotFoundError:
        raise HubError(f"{what}: no such repo, or it is private and {_token_sent(headers)}.") from None
    except (httpx2.ConnectError, httpx2.TimeoutException) as exc:  # no answer: a ProxyError is no ConnectError
        raise HubUnreachable(f"{what}: the Hub could not be reached ({one_line(exc)})") from exc
    except Exception as exc:  # huggingface_hub's other HTTP errors, connection errors
        raise HubError(f"{what}: asking for {FILENAME} failed: {one_line(exc)}") from exc
    return meta


def _token_sent(headers: dict[str, str]) -> str:
    """Whether a token went with a request (its `headers`), and how to send one with access, for a refusal."""
    if "authorization" in headers:
        return f"the token sent has no access to it (the one given: {HOW_TO_SEND}; else HF_TOKEN or `hf auth login`'s)"
    return f"no token was sent: pass one ({HOW_TO_SEND}), set HF_TOKEN or log in with `hf auth login`"


def _remote_metadata(url: str, meta: HfFileMetadata, artifact: dict, what: str, where: str,
                     token: str | bool | None) -> dict[str, str]:
    """The checked perceiver-torch metadata of the remote file `artifact` pins (HEAD answer `meta` for `url`, on
    endpoint `where`), from its first bytes: two range requests, for the header's length and then the header (at
    most MAX_HEADER_BYTES)."""
    headers = build_hf_headers(token=token)
    location = download_location(url, meta, headers)
    if location == url:  # not redirected (a self-hosted endpoint): a branch's URL may serve a newer commit by now
        location = hf_hub_url(artifact["repo_id"], FILENAME, revision=artifact["revision"], endpoint=where)
    size, source = artifact["size"], f"{what}@{artifact['revision']}/{FILENAME}"
    length = header_length(_read_range(location, headers, 0, 8, source), size, source)
    header = parse_header(_read_range(location, headers, 8, 8 + length, source), size, source)
    convert_from = _convert_from(artifact["repo_id"], artifact["revision"])
    return checked_metadata(source, header, transformers_source=convert_from)


def _read_range(location: str, headers: dict, start: int, stop: int, source: str) -> bytes:
    """Bytes [start, stop) of the remote file. From a server that ignores the range (200: the whole file), the
    bytes before `start` are skipped and the stream is closed at `stop`."""
    data = bytearray()
    headers = {**headers, "Range": f"bytes={start}-{stop - 1}"}
    try:
        # No retries: with them, an error raised while the body is read is thrown into huggingface_hub's retry
        # loop, which sleeps and ends in RuntimeError("generator didn't stop after throw()").
        with http_stream_backoff("GET", location, headers=headers, max_retries=0) as response:
            hf_raise_for_status(response)
            skip = start if response.status_code == 200 else 0
            for chunk in response.iter_bytes():
                dropped = min(skip, len(chunk))
                skip -= dropped
                data += chunk[dropped:dropped + stop - start - len(data)]
                if len(data) == stop - start:
                    break
    except Exception as exc:  # huggingface_hub's HTTP errors, connection errors
        raise HubError(f"{source}: reading bytes {start} to {stop} (the header) failed: {one_line(exc)}") from exc
    if len(data) < stop - start:
        raise HubError(f"{source}: the server sent {len(data)} of bytes {start} to {stop} (the header).")
    return bytes(data)


def _cached_commit(repo_id: str, revision: str, cache: Path) -> bool:
    """Whether `revision` is a commit id whose file the cache holds: no answer of the server's could change which
    bytes that is, so it is loaded without a request (as hf_hub_download does), with the Hub down too."""
    return bool(COMMIT.match(revision)) and (repo_cache_dir(cache, repo_id) / "snapshots" / revision
                                              / FILENAME).exists()


def _offline_file(repo_id: str, revision: str, cache: Path, what: str,
                  unreachable: HubUnreachable | None = None, offline: str | None = None) -> Path:
    """The cached file for `revision` (a commit, or a branch or tag whose ref is recorded), not yet checked;
    looked for because of `offline` (`hub.offline_reason`: local_files_only, HF_HUB_OFFLINE), because the Hub
    could not be reached (`unreachable`), or because `revision` is a commit the cache holds."""
    found = try_to_load_from_cache(repo_id, FILENAME, cache_dir=cache, revision=revision)
    if isinstance(found, str):
        return Path(found)
    if unreachable is not None:
        raise HubError(f"{unreachable}, and nothing is cached for revision {revision!r}: the Hub cache {cache} holds "
                       f"no {FILENAME} for it; try again once the Hub can be reached (or pass a commit id that is "
                       "cached).") from unreachable
    raise HubError(f"{what}: {offline or 'HF_HUB_OFFLINE is set'} and the Hub cache {cache} holds no {FILENAME} "
                   f"for revision {revision!r}; load it once online (or pass a commit id that is cached).")


def _offline(repo_id: str, revision: str, cache: Path, what: str, unreachable: HubUnreachable | None = None,
             offline: str | None = None) -> Path:
    path = _offline_file(repo_id, revision, cache, what, unreachable, offline)
    # Refused if it resolves outside the repo's cache folder or is no regular file; checked against its blob's
    # name where that is its sha256 (the name it was stored under, by this loader or huggingface_hub).
    cached_entry(what, path, repo_cache_dir(cache, repo_id))
    if unreachable is not None:
        _warn_cached_instead(unreachable, revision, path)
    else:
        log.info("%s: revision %r is commit %s in the cache", what, revision, path.parent.name)
    return path


def _warn_cached_instead(unreachable: HubUnreachable, revision: str, path: Path) -> None:
    """Say that the cache's file for `revision` (`path`, snapshots/<commit>/...) is loaded because the Hub could not
    be reached: it may be older than what the revision is now."""
    log.warning("%s; using the commit the Hub cache records for revision %r: %s (%s), which may not be the "
                "revision's latest", unreachable, revision, path.parent.name, path)

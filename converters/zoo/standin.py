"""A local stand-in for the Hugging Face Hub, on 127.0.0.1 only, for tests and offline demos.

It keeps repositories as a directory tree ``<root>/<repo_id>/<commit>/<files>`` plus
``<root>/<repo_id>/refs/<branch>`` (a commit id), the same layout a directory mirror uses
(``PERCEIVER_ZOO_MIRROR``), and answers the requests the real ``huggingface_hub`` client
(2.x) sends, so the client's own download and upload code runs against it:

- downloads (``hf_hub_download``): ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}``
  with ``X-Repo-Commit``, ``ETag`` (quoted sha256 of the bytes, as the Hub sends for LFS
  files), ``Content-Length`` and ``Range: bytes=N-[M]`` or ``bytes=-N`` (206: resumption, a header read; 416
  with ``Content-Range: bytes */size`` for a range past the end or a last byte before the first; a header that is
  not one byte range of ASCII digits is ignored, as RFC 9110 allows: 200 and the whole file, which
  huggingface_hub's resumption and the zoo's header read both accept); the Hub's
  ``X-Error-Code`` values ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` on 404;
- repository info: ``GET /api/models/{repo_id}[/revision/{revision}]`` (with ``private``, as the Hub's);
- who a token belongs to (``HfApi.whoami``, which huggingface_hub asks to put a bare repo name in the token owner's
  namespace): ``GET /api/whoami-v2`` answers the write token as the user ``user`` (``USER`` unless the server was
  started with another), any other or none with 401, as the Hub answers a token that is not valid;
- uploads (``HfApi.create_repo`` and ``create_commit``): ``POST /api/repos/create`` (its JSON ``visibility``,
  ``"private"`` or ``"public"`` (default), or an older client's boolean ``private``, is kept in
  ``<root>/<repo_id>/visibility``; a repo that exists answers 409 and keeps its visibility, as on the Hub; a name
  without an ``organization`` or a '/' is created in ``user``'s namespace, as the Hub creates it in the token
  owner's),
  ``/api/validate-yaml``, ``/api/models/{repo_id}/preupload/{revision}`` (every file is
  uploaded "regular", inline) and ``/api/models/{repo_id}/commit/{revision}`` (NDJSON). A
  commit copies its parent's files, applies the additions, and gets a deterministic 40-hex
  id (sha1 of parent, files and message); unchanged files are reported with their git
  hash so the client skips empty commits, as on the Hub; a commit whose ``parentCommit`` is not the
  branch's head is refused (412), as on the Hub;
- branches (``HfApi.create_branch``): ``POST /api/models/{repo_id}/branch/{branch}`` (from the JSON
  ``startingPoint``, else ``main``; 409 if the branch exists). A tag is a file ``refs/<tag>`` put in the
  tree by hand: revisions resolve through ``refs/`` alike.
- private repos: as on the Hub, every read of one without the write token is answered as a repo that does not
  exist (``RepoNotFound``: 401 without a token, 404 with another). A repo put in the tree by hand is public.

Hostile clients are assumed (anything on the machine can reach 127.0.0.1): it binds 127.0.0.1
only; every repo id must follow the Hub's ``namespace/name`` grammar and every file path must be
a relative path of plain names (absolute, ``..``, empty and percent-encoded forms of them are
refused) and is checked to resolve inside the served root; writes need ``Authorization: Bearer
<token>`` with the token the server was started with, and a server started without one is
read-only; request bodies are capped and commits must be NDJSON (``application/x-ndjson``). A malformed request
gets a 4xx with a JSON ``error`` naming the problem and writes nothing; anything unexpected is a 500 and one line on
stderr (where it was raised), never a traceback.

Only the standard library and the zoo's schema predicates are used. Threads are daemons; the server stops after
``idle_timeout`` seconds without a request and when its context exits. ``faults``
injects failures into every GET that reads a file to its end (whole, or resumed with ``bytes=N-``; a header
read names its last byte and is answered honestly), while HEAD answers stay honest:
``{"truncate": True}`` announces the full Content-Length, sends half the body and closes the connection;
``{"short": True}`` announces and sends half the body; ``{"oversize": True}`` announces and sends the body
and 4096 bytes more; ``{"corrupt": True}`` flips the last byte.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import errno
import hashlib
import hmac
import json
import math
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from perceiver_torch.zoo.schema import is_relative_path, is_repo_id

# Bodies bigger than this are refused before they are read (the tiny artifacts are ~2 MB, base64 in NDJSON).
MAX_BODY_BYTES = 256 << 20
_REVISION_CHARS = frozenset("0123456789abcdef")
VISIBILITY_FILE = "visibility"  # in a repo's folder: "private" or "public", as create_repo asked
USER = "stand-in-user"  # whom the write token belongs to (/api/whoami-v2), unless the server is given another
# The longest file or folder name most file systems take (NAME_MAX); a longer part of a path is refused up front
# (400, or 404 on a read) instead of reaching the file system as ENAMETOOLONG. A branch leaves room for the
# temporary '.<branch>.tmp' its ref is written through.
MAX_NAME_BYTES = 255
MAX_BRANCH_BYTES = MAX_NAME_BYTES - len("..tmp")
# Range: bytes=first-[last] or bytes=-suffix, ASCII digits only (str.isdigit() is true for '²' and other digits
# int() refuses). A number longer than this is larger than any file, so it is never converted (int() refuses
# more than 4300 digits).
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)
_MAX_POSITION_DIGITS = 18
# Errors that mean the client went away mid-request: nothing to answer, nothing to report but one line.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class CommitRefused(ValueError):
    """A commit the tree cannot hold (a file where a folder must be, a name too long); nothing was written."""


def _is_commit(value: str) -> bool:
    return len(value) == 40 and set(value) <= _REVISION_CHARS


def _names_fit(relative: str) -> bool:
    """Whether every part of the plain relative path `relative` is a name the file system takes."""
    return all(len(part.encode()) <= MAX_NAME_BYTES for part in relative.split("/"))


def _is_branch_name(value) -> bool:
    """A branch (or tag) name a ref can be written for: one plain part, not 'refs'."""
    return is_relative_path(value) and "/" not in value and value != "refs" and len(value) <= MAX_BRANCH_BYTES


def _position(digits: str) -> int:
    """A byte position or suffix length of a Range header (ASCII digits); any too long to convert is larger than any
    file, and stands as 10**18."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 10 ** _MAX_POSITION_DIGITS


def byte_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """The [start, end) a ``Range`` header asks for of a file of `size` bytes: None where the header is absent or not
    one byte range (another unit, several ranges, non-ASCII digits: ignored, as RFC 9110 allows, and the whole file
    is served), False where it is one byte range that cannot be satisfied (a first byte at or past the end, a last
    byte before the first, a zero suffix: 416)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # bytes=-N: the last N bytes
        suffix = _position(last)
        return (max(size - suffix, 0), size) if suffix > 0 and size > 0 else False
    start = _position(first)
    if start >= size or (last != "" and _position(last) < start):
        return False
    return start, size if last == "" else min(_position(last) + 1, size)


def _where(exc: BaseException) -> str:
    """'file:line in function' of the frame that raised `exc` (so a bug stays findable from one log line)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob (what the Hub reports for a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id, not security


class _Handler(BaseHTTPRequestHandler):
    server_version = "perceiver-zoo-standin/2"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def send_response(self, code, message=None):
        self._responded = True  # a second status line cannot follow: a failure after this only closes the connection
        super().send_response(code, message)

    def _guarded(self, handler) -> None:
        """Run `handler`, turning any exception that escapes it into one log line (never a traceback) and, unless a
        response was already started, a 500; the connection is closed either way."""
        self._responded = False
        try:
            handler()
        except _CLIENT_GONE as exc:  # the client hung up or stalled: nobody to answer
            self.close_connection = True
            if self.server.verbose:
                self.server.report(f"{self.command} {self.path[:200]!r}: the client went away ({_one_line(exc)})")
        except Exception as exc:  # a bug or a file-system failure: one line that says where, and a 500
            self.close_connection = True
            self.server.report(f"{self.command} {self.path[:200]!r} failed: {_one_line(exc)} (at {_where(exc)})")
            if not self._responded:
                try:
                    self._error(500, "InternalError", "the stand-in failed on this request (its log says why)")
                except OSError:
                    pass

    # -- responses -------------------------------------------------------------------------------
    def _json(self, status: int, value, headers=()):
        body = json.dumps(value).encode()
        self.send_response(status)
        for key, val in headers:
            self.send_header(key, val)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:  # said, so that a client never sends its next request on this connection
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, commit: str | None = None, headers=()):
        headers = [("X-Error-Code", code), ("X-Error-Message", message), *headers]
        if commit:
            headers.append(("X-Repo-Commit", commit))
        self._json(status, {"error": message}, headers)

    # -- routing ---------------------------------------------------------------------------------
    def _path(self) -> str | None:
        self.server.touch()
        try:
            raw = urllib.parse.urlsplit(self.path).path
        except ValueError:  # e.g. 'http://[x/': an unclosed IPv6 host
            self._error(400, "BadRequest", f"malformed request target {self.path[:200]!r} refused")
            return None
        path = urllib.parse.unquote(raw)
        # Only a single leading '/' is the URL's own; any empty, '.', '..' or backslashed part (encoded or
        # not) would let a file path escape its repository, so the whole request is refused.
        if not path.startswith("/") or not is_relative_path(path[1:]) and path != "/":
            self._error(400, "BadRequest", f"malformed or traversing path {raw!r} refused")
            return None
        return path[1:]

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413 if length > MAX_BODY_BYTES else 400, "BadRequest",
                        f"Content-Length must be 0..{MAX_BODY_BYTES}")
            return None
        body = self.rfile.read(length)
        if len(body) < length:  # the client stopped sending: the connection is of no further use
            self.close_connection = True
            self._error(400, "BadRequest", f"the body ended after {len(body)} of its {length} bytes")
            return None
        return body

    def _json_body(self, body: bytes):
        try:
            value = json.loads(body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply, such as '[' * 100000
            value = None
        if not isinstance(value, dict):
            self._error(400, "BadRequest", "the request body must be a JSON object")
            return None
        return value

    def do_HEAD(self):  # noqa: N802 - stdlib naming
        self._guarded(self._get)

    def do_GET(self):  # noqa: N802 - stdlib naming
        self._guarded(self._get)

    def do_POST(self):  # noqa: N802 - stdlib naming
        self._guarded(self._post)

    def _get(self):
        path = self._path()
        if path is None:
            return
        if path.startswith("api/models/"):
            repo_id, _, revision = path.removeprefix("api/models/").partition("/revision/")
            return self._model_info(repo_id, revision or "main")
        if path == "api/whoami-v2":
            return self._whoami()
        if "/resolve/" not in path:
            return self._error(404, "RepoNotFound", f"unknown route {path!r}")
        repo_id, rest = path.split("/resolve/", 1)
        revision, _, filename = rest.partition("/")
        found = self._locate(repo_id, revision)
        if found is None:
            return
        repo_dir, commit = found
        file = self.server.inside(repo_dir / commit, filename)
        if file is None or not file.is_file():
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {commit}", commit)
        return self._send_file(file, commit)

    def _post(self):
        path = self._path()
        if path is None:
            return
        if not self.server.token:
            self.close_connection = True
            return self._error(403, "Forbidden", "this stand-in is read-only (it was started without a write token)")
        if not self._authorized():
            self.close_connection = True
            return self._error(401, "Unauthorized", "a write token is required (Authorization: Bearer ...)")
        body = self._body()
        if body is None:
            return
        if path == "api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if path == "api/repos/create":
            payload = self._json_body(body)
            return None if payload is None else self._create_repo(payload)
        if path.startswith("api/models/"):
            rest = path.removeprefix("api/models/")
            if "/branch/" in rest:
                repo_id, branch = rest.split("/branch/", 1)
                payload = self._json_body(body)
                return None if payload is None else self._create_branch(repo_id, branch, payload)
            for action in ("preupload", "commit"):
                if f"/{action}/" in rest:
                    repo_id, revision = rest.split(f"/{action}/", 1)
                    found = self._locate(repo_id, revision)
                    if found is None:
                        return
                    commit = found[1]
                    if action == "preupload":
                        payload = self._json_body(body)
                        return None if payload is None else self._preupload(repo_id, commit, payload)
                    if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-ndjson":
                        return self._error(415, "BadRequest", "a commit must be sent as application/x-ndjson")
                    return self._commit(repo_id, commit, revision, body)
        return self._error(404, "RepoNotFound", f"unknown route {path!r}")

    def _authorized(self) -> bool:
        return bool(self.server.token) and hmac.compare_digest(self.headers.get("Authorization") or "",
                                                               f"Bearer {self.server.token}")

    # -- handlers --------------------------------------------------------------------------------
    def _whoami(self):
        """The Hub's answer for the write token (its user's name, no organisations); 401 for any other, as the
        Hub answers a token that is not valid (and a read-only stand-in has no user to name)."""
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return self._json(200, {"type": "user", "name": self.server.user, "orgs": [], "auth": {"type": "access_token"}})

    def _locate(self, repo_id: str, revision: str):
        """(repo_dir, commit) of a repo at a revision, or None after answering the Hub's 404 (401 for a private
        repo asked for without a token)."""
        repo_dir = self.server.repo_dir(repo_id)
        private = repo_dir is not None and self.server.is_private(repo_id) and not self._authorized()
        if repo_dir is None or private:
            status = 401 if private and not self.headers.get("Authorization") else 404
            self._error(status, "RepoNotFound", f"Repository {repo_id!r} not found")
            return None
        commit = self.server.resolve(repo_id, revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo_dir, commit

    def _model_info(self, repo_id: str, revision: str):
        found = self._locate(repo_id, revision)
        if found is None:
            return
        repo_dir, commit = found
        files = sorted(p.relative_to(repo_dir / commit).as_posix() for p in (repo_dir / commit).rglob("*")
                       if p.is_file())
        self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": self.server.is_private(repo_id),
                         "siblings": [{"rfilename": f} for f in files]})

    def _send_file(self, file: Path, commit: str):
        data = file.read_bytes()
        start, end = 0, len(data)
        asked = byte_range(self.headers.get("Range", ""), len(data)) if self.command == "GET" else None
        if asked is False:
            return self._error(416, "RangeNotSatisfiable", f"Range {self.headers['Range'].strip()[:100]!r} cannot be "
                               f"satisfied: the file has {len(data)} bytes", commit,
                               [("Content-Range", f"bytes */{len(data)}")])
        if asked:
            start, end = asked
        to_end = asked is None or self.headers["Range"].strip().endswith("-")  # faults spare a read naming its end
        body = data[start:end]
        partial = (start, end) != (0, len(data))
        faults = self.server.faults if self.command == "GET" and to_end else {}
        if faults.get("short"):
            body = body[: len(body) // 2]
        if faults.get("oversize"):
            body += b"\0" * 4096
        if faults.get("corrupt") and body:
            body = body[:-1] + bytes([body[-1] ^ 1])
        self.send_response(206 if partial else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        if faults.get("truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _create_repo(self, payload: dict):
        name, org = payload.get("name"), payload.get("organization")
        if not isinstance(name, str) or (payload.get("type") or "model") != "model":
            return self._error(400, "BadRequest", "only model repos with a name can be created here")
        # A name alone is in the token owner's namespace, as on the Hub (huggingface_hub sends 'owner/name' as
        # organisation and name; a whole repo id as the name, which older callers of this stand-in sent, stays one).
        repo_id = f"{org}/{name}" if org else name if "/" in name else f"{self.server.user}/{name}"
        if not is_repo_id(repo_id):
            return self._error(400, "BadRequest", f"invalid repo id {repo_id!r}: expected 'namespace/name'")
        # huggingface_hub 2.x sends "visibility"; older clients send a boolean "private".
        legacy = payload.get("private")
        visibility = payload.get("visibility") or ("private" if legacy is True else "public")
        if visibility not in ("public", "private") or not isinstance(legacy, bool | None):
            return self._error(400, "BadRequest", f"visibility must be 'public' or 'private' (or private a "
                                                  f"boolean); got {visibility!r:.40}, private {legacy!r:.40}")
        url = f"{self.server.endpoint}/{repo_id}"
        if self.server.repo_dir(repo_id) is not None:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        self.server.create_repo(repo_id, visibility)
        self._json(200, {"url": url, "name": repo_id})

    def _create_branch(self, repo_id: str, branch: str, payload: dict):
        start = payload.get("startingPoint") or "main"
        if not isinstance(start, str) or not _is_branch_name(branch) or _is_commit(branch):
            return self._error(400, "BadRequest", f"invalid branch {branch[:300]!r} or starting point {start!r:.300} "
                                                  f"(a branch is one plain name of at most {MAX_BRANCH_BYTES} bytes)")
        found = self._locate(repo_id, start)
        if found is None:
            return None
        if self.server.resolve(repo_id, branch) is not None:
            return self._json(409, {"error": f"Branch {branch!r} already exists"})
        self.server.set_ref(repo_id, branch, found[1])
        return self._json(200, {"success": True})

    def _preupload(self, repo_id: str, commit: str, payload: dict):
        base = self.server.root / repo_id / commit
        items = payload.get("files")
        if not isinstance(items, list) or not all(isinstance(i, dict) and is_relative_path(i.get("path"))
                                                  for i in items):
            return self._error(400, "BadRequest", "files must be a list of {path: a relative path of plain names}")
        files = []
        for item in items:
            existing = self.server.inside(base, item["path"])
            oid = git_blob_sha1(existing.read_bytes()) if existing is not None and existing.is_file() else None
            files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit})

    def _commit(self, repo_id: str, parent: str, branch: str, body: bytes):
        header, additions = {}, {}
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = dict(value)
                elif key == "file" and value.get("encoding") == "base64":
                    if not is_relative_path(value["path"]) or not _names_fit(value["path"]):
                        return self._error(400, "BadRequest", f"file path {value['path']!r:.300} must be a relative "
                                                              f"path of plain names of at most {MAX_NAME_BYTES} bytes")
                    additions[value["path"]] = base64.b64decode(value["content"], validate=True)
                else:
                    return self._error(400, "BadRequest", f"operation {key!r:.100} is not supported by the stand-in")
            except (ValueError, RecursionError, KeyError, TypeError, AttributeError, binascii.Error):
                return self._error(400, "BadRequest", "malformed NDJSON commit line")
        expected = header.get("parentCommit")
        if expected is not None and expected != parent:  # the branch moved since the client looked: as the Hub
            return self._error(412, "PreconditionFailed", f"the commit's parent {expected!r:.60} is not the head of "
                                                          f"{branch!r:.100} ({parent}); refresh and try again")
        summary = header.get("summary", "")
        try:
            summary.encode()
        except (AttributeError, UnicodeEncodeError):  # not text, or a lone surrogate ('\ud800' in the JSON)
            return self._error(400, "BadRequest", "the commit header's summary must be text (UTF-8)")
        try:
            oid = self.server.write_commit(repo_id, parent, additions, summary, branch)
        except CommitRefused as exc:
            return self._error(400, "BadRequest", str(exc))
        url = f"{self.server.endpoint}/{repo_id}/commit/{oid}"
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None})


class StandInHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root, port=0, idle_timeout=120.0, faults=None, token=None, verbose=False, user=USER):
        """`token`: the write token clients must send; None serves the tree read-only. `user`: whom the token
        belongs to (/api/whoami-v2), the namespace of a repo created without one."""
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)  # before binding: a root that cannot be made leaves no socket
        super().__init__(("127.0.0.1", port), _Handler)
        self.idle_timeout = idle_timeout
        self.faults = dict(faults or {})
        self.token = token
        self.user = user
        self.verbose = verbose
        self.requests = 0
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def report(self, line: str) -> None:
        """One line on stderr, whether or not the server is verbose (a failure must stay visible)."""
        sys.stderr.write(f"perceiver-zoo-standin: {line}\n")
        sys.stderr.flush()

    def handle_error(self, request, client_address):
        """What escapes a handler (reading a request line from a client that hangs up, say): one line, never the
        default traceback."""
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, _CLIENT_GONE) and not self.verbose:
            return
        self.report(f"request from {client_address[0]}:{client_address[1]} failed: {_one_line(exc)} "
                    f"(at {_where(exc)})")

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def touch(self):
        with self._lock:
            self.requests += 1
            self._last = time.monotonic()

    def service_actions(self):
        if time.monotonic() - self._last > self.idle_timeout:
            threading.Thread(target=self.shutdown, daemon=True).start()
            self._last = float("inf")  # shut down once

    # -- the repository tree ---------------------------------------------------------------------
    def inside(self, base: Path, relative: str) -> Path | None:
        """`base / relative` if `relative` is a plain relative path (of names the file system takes) resolving inside
        the served root."""
        if not is_relative_path(relative) or not _names_fit(relative):
            return None
        path = (base / relative).resolve()
        return path if path.is_relative_to(self.root) else None

    def repo_dir(self, repo_id: str) -> Path | None:
        if not is_repo_id(repo_id):
            return None
        path = self.inside(self.root, repo_id)
        return path if path is not None and (path / "refs").is_dir() else None

    def create_repo(self, repo_id: str, visibility: str) -> None:
        """A new repo (checked by the caller): its visibility, then an empty first commit (the Hub's holds a
        .gitattributes; one here would steer this git repo's own attributes when the tree is bundled in it)."""
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        (self.root / repo_id / VISIBILITY_FILE).write_text(visibility + "\n")  # before refs/: not yet a repo
        self.write_commit(repo_id, None, {}, "initial commit")

    def is_private(self, repo_id: str) -> bool:
        repo_dir = self.repo_dir(repo_id)
        marker = None if repo_dir is None else repo_dir / VISIBILITY_FILE
        return marker is not None and marker.is_file() and marker.read_text().strip() == "private"

    def resolve(self, repo_id: str, revision: str) -> str | None:
        repo_dir = self.repo_dir(repo_id)
        if repo_dir is None or not is_relative_path(revision) or "/" in revision or revision == "refs" \
                or not _names_fit(revision):
            return None
        if _is_commit(revision) and (repo_dir / revision).is_dir():
            return revision
        ref = repo_dir / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else ""
        return commit if _is_commit(commit) and (repo_dir / commit).is_dir() else None

    def write_commit(self, repo_id: str, parent: str | None, additions: dict[str, bytes], message: str,
                     branch: str = "main") -> str:
        """Create a commit = parent's files + additions; move `branch` to it; returns its id. A commit the tree cannot
        hold raises CommitRefused (a ValueError) before anything is written."""
        if not is_repo_id(repo_id) or not all(is_relative_path(p) and _names_fit(p) for p in additions) \
                or not _is_branch_name(branch):
            raise CommitRefused(f"refused commit to {repo_id!r:.300}/{branch!r:.300}: ids and paths must be plain and "
                                f"relative, of names of at most {MAX_NAME_BYTES} bytes")
        repo_dir = self.root / repo_id
        with self._lock:
            files = {}
            if parent:
                base = repo_dir / parent
                files = {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}
            files.update(additions)
            for path in files:  # a file where another needs a folder ('a' and 'a/b'): refused by name, as by git
                for cut in range(len(path)):
                    if path[cut] == "/" and path[:cut] in files:
                        raise CommitRefused(f"refused commit: {path[:cut]!r} cannot be both a file and the folder of "
                                            f"{path!r}")
            digest = hashlib.sha1(f"parent {parent}\nmessage {message}\n".encode())  # noqa: S324 - an id
            for path in sorted(files):
                digest.update(f"{path} {hashlib.sha256(files[path]).hexdigest()}\n".encode())
            oid = digest.hexdigest()
            if not (repo_dir / oid).is_dir():
                (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=".commit-", dir=repo_dir))
                try:
                    for path, data in files.items():
                        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
                        (tmp / path).write_bytes(data)
                    tmp.rename(repo_dir / oid)
                except BaseException as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a deep root: the full path
                        raise CommitRefused(f"refused commit: a path is too long for the served root's file system "
                                            f"({exc.strerror})") from None
                    raise
            self._write_ref(repo_dir, branch, oid)
        return oid

    def set_ref(self, repo_id: str, branch: str, commit: str) -> None:
        """Point `branch` of an existing repo at `commit` (both checked by the caller)."""
        with self._lock:
            self._write_ref(self.root / repo_id, branch, commit)

    @staticmethod
    def _write_ref(repo_dir: Path, branch: str, commit: str) -> None:
        ref_tmp = repo_dir / "refs" / f".{branch}.tmp"
        ref_tmp.write_text(commit + "\n")
        ref_tmp.replace(repo_dir / "refs" / branch)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> StandInHub:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


@contextmanager
def serve(root, **kwargs):
    """``with serve(root) as hub: ...`` -- a started stand-in (``hub.endpoint``), stopped on exit."""
    hub = StandInHub(root, **kwargs).start()
    try:
        yield hub
    finally:
        hub.stop()


def tree_problem(root: Path) -> str | None:
    """Why `root` is not a stand-in tree (an existing directory, empty or holding ``<namespace>/<name>/refs/``),
    or None."""
    try:
        if not root.is_dir():
            return f"{root} does not exist" if not root.exists() else f"{root} is not a directory"
        if any(root.iterdir()) and not any(p.is_dir() for p in root.glob("*/*/refs")):
            return f"{root} is not a stand-in tree: it holds no repository <namespace>/<name>/refs/"
    except OSError as exc:
        return f"{root} cannot be read: {exc.strerror or exc}"
    return None


def _port(text: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"the port must be 0-65535 (0: any free one); got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0; got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stand-in's options, on its own parser or on `perceiver-zoo-admin serve-standin`'s."""
    parser.add_argument("--root", required=True,
                        help="the stand-in tree to serve: <namespace>/<name>/refs/<branch> and "
                             "<namespace>/<name>/<commit>/<file> (empty, or missing with --writable, which starts one)")
    parser.add_argument("--port", type=_port, default=0, help="0-65535 (default 0: any free port)")
    parser.add_argument("--idle-timeout", type=_seconds, default=600.0,
                        help="stop after this many seconds without a request (default 600); Ctrl-C stops it too")
    parser.add_argument("--writable", action="store_true",
                        help="accept uploads, with a random write token printed at start (default: read-only)")


def serve_from_args(args: argparse.Namespace, prog: str = "perceiver-zoo-admin") -> int:
    """Serve until idle or Ctrl-C (both exit 0); a root or port it cannot use is one error line and exit 1."""
    root = Path(args.root)
    problem = tree_problem(root)
    try:
        if problem and args.writable and not root.exists() and not root.is_symlink():
            root.mkdir(parents=True)  # --writable starts a new, empty tree
            problem = None
    except OSError as exc:
        problem = f"cannot make {root}: {exc.strerror or exc}"
    if problem:
        hint = "; a read-only stand-in would serve an empty tree (--writable starts a new one)" \
            if not root.exists() and not args.writable else ""
        print(f"{prog}: error: --root {problem}{hint}", file=sys.stderr)
        return 1
    token = secrets.token_hex(16) if args.writable else None
    try:
        hub = StandInHub(root, port=args.port, idle_timeout=args.idle_timeout, token=token, verbose=True)
    except OSError as exc:
        print(f"{prog}: error: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:  # the announcement inside: a Ctrl-C the moment it is read (while its flush returns) is a stop too
        print(f"serving {hub.root} at {hub.endpoint} (stops after {args.idle_timeout:g}s idle or Ctrl-C); "
              f"export HF_ENDPOINT={hub.endpoint}" + (f" HF_TOKEN={token}" if token else " (read-only)"), flush=True)
        hub.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:  # the usual way to stop it: not an error
        print("stopped (Ctrl-C)", flush=True)
    finally:
        hub.server_close()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve a zoo repository tree as a Hub stand-in on 127.0.0.1.")
    add_arguments(parser)
    return serve_from_args(parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    raise SystemExit(main())

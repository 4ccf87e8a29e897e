"""A local stand-in that speaks the Hugging Face Hub's download protocol, on 127.0.0.1 only.

It serves a directory tree ``<root>/<repo_id>/<revision>/<filename>`` the way the
Hub answers ``huggingface_hub.hf_hub_download`` (huggingface_hub 2.x,
``file_download.get_hf_file_metadata`` and ``http_get``):

- ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}`` -> 200 with ``X-Repo-Commit``
  (the revision folder's name), ``ETag`` (quoted sha256 of the bytes served, as the Hub
  does for LFS files), ``Content-Length``, and ``Accept-Ranges``; ``Range: bytes=N-`` is
  honoured (206) so interrupted downloads can resume.
- A revision that is not a folder may be a ref: ``<root>/<repo_id>/refs/<name>`` holding
  a commit folder name.
- Missing repo / revision / file -> 404 with ``X-Error-Code`` ``RepoNotFound`` /
  ``RevisionNotFound`` / ``EntryNotFound``, as the Hub sends them.
- ``GET /api/models/{repo_id}/revision/{revision}`` -> a minimal model-info JSON.

Only the standard library is used. The server binds 127.0.0.1, serves threads as
daemons, stops itself after ``idle_timeout`` seconds without a request or after
``max_requests`` requests, and stops when its context exits. ``faults`` injects
failures for tests: ``{"truncate": True}`` sends the full Content-Length but only half
the body, then closes the connection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_version = "perceiver-zoo-standin/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def _error(self, status: int, code: str, message: str, commit: str | None = None):
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _resolve_revision(self, repo_dir: Path, revision: str) -> str | None:
        if ".." in revision or "/" in revision:
            return None
        if (repo_dir / revision).is_dir() and revision != "refs":
            return revision
        ref = repo_dir / "refs" / revision
        if ref.is_file():
            commit = ref.read_text().strip()
            if (repo_dir / commit).is_dir():
                return commit
        return None

    def _route(self):
        self.server.touch()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        if ".." in path.split("/"):
            return self._error(400, "BadRequest", "path traversal refused")
        root: Path = self.server.root
        if path.startswith("api/models/"):
            return self._model_info(root, path.removeprefix("api/models/"))
        if "/resolve/" not in path:
            return self._error(404, "RepoNotFound", f"unknown route {path!r}")
        repo_id, rest = path.split("/resolve/", 1)
        revision, _, filename = rest.partition("/")
        repo_dir = root / repo_id
        if not repo_id or not repo_dir.is_dir():
            return self._error(404, "RepoNotFound", f"Repository {repo_id!r} not found")
        commit = self._resolve_revision(repo_dir, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = repo_dir / commit / filename
        if not filename or not file.is_file():
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {commit}", commit)
        return self._send_file(file, commit)

    def _model_info(self, root: Path, rest: str):
        repo_id, _, revision = rest.partition("/revision/")
        repo_dir = root / repo_id
        if not repo_dir.is_dir():
            return self._error(404, "RepoNotFound", f"Repository {repo_id!r} not found")
        commit = self._resolve_revision(repo_dir, revision or "main")
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = sorted(str(p.relative_to(repo_dir / commit)) for p in (repo_dir / commit).rglob("*") if p.is_file())
        body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": commit,
                           "siblings": [{"rfilename": f} for f in files]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, file: Path, commit: str):
        data = file.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        start = 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes=") and self.command == "GET":
            first = range_header[len("bytes="):].split("-", 1)[0]
            start = int(first) if first.isdigit() else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        if self.server.faults.get("truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802 - stdlib naming
        self._route()

    def do_GET(self):  # noqa: N802 - stdlib naming
        self._route()


class StandInHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root, port=0, idle_timeout=120.0, max_requests=10_000, faults=None, verbose=False):
        super().__init__(("127.0.0.1", port), _Handler)
        self.root = Path(root).resolve()
        self.idle_timeout, self.max_requests = idle_timeout, max_requests
        self.faults = dict(faults or {})
        self.verbose = verbose
        self.requests = 0
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def touch(self):
        with self._lock:
            self.requests += 1
            self._last = time.monotonic()
            if self.requests >= self.max_requests:
                threading.Thread(target=self.shutdown, daemon=True).start()

    def service_actions(self):
        if time.monotonic() - self._last > self.idle_timeout:
            threading.Thread(target=self.shutdown, daemon=True).start()
            self._last = float("inf")  # shut down once

    def start(self) -> StandInHub:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


@contextmanager
def serve(root, **kwargs):
    """``with serve(root) as hub: os.environ["HF_ENDPOINT"] = hub.endpoint``; stops on exit."""
    hub = StandInHub(root, **kwargs).start()
    try:
        yield hub
    finally:
        hub.stop()


def main(argv=None) -> int:
    from .manifest import BUNDLED_STANDIN

    parser = argparse.ArgumentParser(description="Serve a zoo mirror tree as a Hub stand-in on 127.0.0.1.")
    parser.add_argument("--root", default=str(BUNDLED_STANDIN))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--idle-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    hub = StandInHub(args.root, port=args.port, idle_timeout=args.idle_timeout, verbose=True)
    print(f"serving {hub.root} at {hub.endpoint} (stops after {args.idle_timeout:.0f}s idle); "
          f"export HF_ENDPOINT={hub.endpoint}", flush=True)
    try:
        hub.serve_forever(poll_interval=0.2)
    finally:
        hub.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

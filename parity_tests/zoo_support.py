"""Helpers for the zoo tests: the test manifest, a scratch manifest with a golden-sourced entry, a served stand-in."""

from __future__ import annotations

import builtins
import copy
import errno
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from converters import load_config
from converters.zoo.manifest_edit import save_manifest
from converters.zoo.publish import publish
from converters.zoo.regenerate import regenerate
from converters.zoo.standin import serve
from perceiver_torch.hashing import sha256_file
from perceiver_torch.zoo import IntegrityError, ZooError
from perceiver_torch.zoo import manifest as zoo_manifest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
# The small models the product's manifest never lists: their entries, and the Hub tree they are published in.
TEST_MANIFEST = FIXTURES / "zoo_test_manifest.yaml"
TEST_HUB = FIXTURES / "zoo_hub"
GOLDEN_ENTRY = "golden-language"
GOLDEN_FILES = ("checkpoint.pickle", "io.npz")


def golden_language_entry() -> dict:
    """A test entry whose source is the golden language checkpoint (upstream Haiku code, small config).

    Its files are named relative to the manifest, under `golden-language/` (see `scratch_manifest`).
    """
    family = GOLDEN / "language"
    entry = copy.deepcopy(zoo_manifest.entries()["language-perceiver"])
    entry.update(kind="test", preset=None, config=load_config(family / "config.json"),
                 regenerate=f"perceiver-zoo-admin regenerate {GOLDEN_ENTRY}", publish_repo="tests/golden-language",
                 notes="test entry")
    entry["source"].update(url=None, path=f"{GOLDEN_ENTRY}/checkpoint.pickle",
                           size=(family / "checkpoint.pickle").stat().st_size,
                           sha256=sha256_file(family / "checkpoint.pickle"), reference_io=f"{GOLDEN_ENTRY}/io.npz",
                           licence="test fixture")
    return entry


def copy_golden_files(directory: Path) -> Path:
    """The golden entry's files where a manifest in `directory` finds them (`golden-language/...`)."""
    (directory / GOLDEN_ENTRY).mkdir(parents=True, exist_ok=True)
    for name in GOLDEN_FILES:
        shutil.copy(GOLDEN / "language" / name, directory / GOLDEN_ENTRY / name)
    return directory / GOLDEN_ENTRY


def scratch_manifest(path: Path, extra: dict[str, dict] | None = None) -> Path:
    """The product manifest plus `extra` entries (default: the golden entry), with the golden files beside it."""
    data = zoo_manifest.load_manifest()
    data["models"].update(extra if extra is not None else {GOLDEN_ENTRY: golden_language_entry()})
    copy_golden_files(path.parent)
    save_manifest(data, path)
    return path


@contextmanager
def hub_env(monkeypatch, root, cache: Path, **kwargs):
    """A stand-in serving `root`; HF_ENDPOINT points at it and HF_HUB_CACHE at `cache` (undone by monkeypatch)."""
    with serve(root, **kwargs) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        for key in ("HF_HUB_OFFLINE", "PERCEIVER_ZOO_MIRROR", "PERCEIVER_ZOO_ENDPOINT"):
            monkeypatch.delenv(key, raising=False)
        yield hub


def cached_files(cache: Path) -> list[str]:
    """Every file or link in a Hub cache except its lock files and CACHEDIR.TAG."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts and p.name != "CACHEDIR.TAG")


# The stand-in's body faults (HEAD and header reads honest) and the end of the error each gives, after
# "<what>: download of <repo>@<commit>/<file> from <endpoint> "; {size}, {half}, {sha256} and {pinned} (who pinned
# them, escaped) to be filled in.
BODY_FAULTS = {
    # huggingface_hub's http_get resumes a cut-off download (5 tries without progress), then raises the client's error.
    "truncate": (ZooError, r"failed: RemoteProtocolError: peer closed connection without sending complete message "
                           r"body \(received \d+ bytes, expected {size}\)"),
    "short": (IntegrityError, r"refused: the body the server sent has size {half}, but {pinned} pins size {size} "
                              r"\(sha256 {sha256}\); nothing was kept in the cache"),
    "oversize": (IntegrityError, r"refused: the server sent more than the {size} bytes {pinned} pins; the download was "
                                 r"stopped; nothing was kept in the cache"),
    "corrupt": (IntegrityError, r"refused: the body the server sent has sha256 [0-9a-f]{{64}}, but {pinned} pins "
                                r"sha256 {sha256} \(size {size}\); nothing was kept in the cache"),
}


# os functions that write a directory entry, with the positions of the paths they write.
_ENTRY_WRITES = {"mkdir": (0,), "rmdir": (0,), "unlink": (0,), "remove": (0,), "rename": (0, 1), "replace": (0, 1),
                 "symlink": (1,), "link": (1,), "chmod": (0,), "utime": (0,), "truncate": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextmanager
def read_only(directory: Path):
    """`directory`'s tree made one this process cannot write, as a shared cache of another user's is.

    chmod a-w first; where that does not stop writes (root, which these tests may run as), every write under
    `directory` is refused as the kernel would refuse it (PermissionError, EACCES) at the os level: opening a
    file to write, and creating, removing, renaming or changing an entry. Reads are untouched. Yields how:
    "chmod" or "refused by the os functions".
    """
    root = os.path.realpath(directory)
    modes = {p: p.lstat().st_mode for p in [directory, *directory.rglob("*")] if not p.is_symlink()}
    for path, mode in modes.items():
        path.chmod(stat.S_IMODE(mode) & ~0o222)
    try:
        probe = directory / ".write-probe"
        try:
            probe.touch(exist_ok=False)
        except PermissionError:
            yield "chmod"
            return
        probe.unlink()

        def inside(path) -> bool:
            parent = os.path.realpath(os.path.dirname(os.path.abspath(os.fsdecode(path))))
            return os.path.commonpath([parent, root]) == root

        def refused(path):
            return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        def guarded(function, positions):
            def call(*args, **kwargs):
                for i in positions:
                    if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and inside(args[i]):
                        raise refused(args[i])
                return function(*args, **kwargs)
            return call

        def os_open(path, flags, *args, **kwargs):
            if flags & _WRITE_FLAGS and inside(path):
                raise refused(path)
            return real_os_open(path, flags, *args, **kwargs)

        def file_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and inside(file):
                raise refused(file)
            return real_open(file, mode, *args, **kwargs)

        real_os_open, real_open = os.open, io.open
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "open", os_open)
            for name, positions in _ENTRY_WRITES.items():
                patch.setattr(os, name, guarded(getattr(os, name), positions))
            patch.setattr(io, "open", file_open)
            patch.setattr(builtins, "open", file_open)
            yield "refused by the os functions"
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under `root` with what a write would change: type, size, mtime, link target."""
    return {str(p.relative_to(root)): (p.is_symlink(), p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns,
                                       os.readlink(p) if p.is_symlink() else None) for p in root.rglob("*")}


def produce_and_publish(root: Path, token: str = "test-write-token") -> tuple[Path, Path, str]:
    """Regenerate the golden entry under `root` and publish it into a stand-in tree there.

    Returns (scratch manifest, stand-in tree, pinned revision).
    """
    manifest = scratch_manifest(root / "zoo_manifest.yaml")
    regenerate(GOLDEN_ENTRY, work_dir=root / "work", manifest=manifest)
    with serve(root / "hub", token=token) as hub:
        revision = publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token=token, work_dir=root / "work",
                           manifest=manifest)["revision"]
    return manifest, root / "hub", revision


class _Answering(BaseHTTPRequestHandler):
    def _answer(self):
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        status, headers, body = self.server.answer(self.command, self.path, len(self.server.requests))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what a refusal does
                pass

    do_HEAD = do_GET = _answer

    def log_message(self, *args):  # quiet
        pass


@contextmanager
def answering_server(answer):
    """An HTTP server on 127.0.0.1 whose every reply is `answer(method, path, request_number)`.

    `answer` returns (status, headers, body); the server's `requests` lists (method, path, headers).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    server.answer, server.requests, server.daemon_threads = answer, [], True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        server.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)



# Run by `returns_within` in a process of its own: a call blocked opening a FIFO may hold the GIL (safetensors'
# Rust code does), and no thread of the test's process would run then.
_FIFO_WATCHDOG = """
import os, stat, sys, time
fifo, seconds = sys.argv[1], float(sys.argv[2])
time.sleep(seconds)
try:
    if stat.S_ISFIFO(os.stat(fifo).st_mode):
        print("fired", flush=True)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader's open returns; it reads EOF
except OSError:
    pass
"""


def returns_within(call, fifo: Path, seconds: float = 30.0):
    """What `call()` returns (what it raises, raised here). Should it still be running after `seconds`, blocked
    opening the FIFO `fifo` (which waits for a writer), a watchdog process opens a writer to release it and the
    test fails: a hang fails its own test instead of stalling the suite."""
    watchdog = subprocess.Popen([sys.executable, "-c", _FIFO_WATCHDOG, os.fsdecode(fifo), str(seconds)],
                                stdout=subprocess.PIPE, text=True)
    try:
        value, error = call(), None
    except BaseException as exc:  # noqa: BLE001 - raised again below, unless the call had to be released
        value, error = None, exc
    finally:
        watchdog.kill()
        fired = "fired" in watchdog.communicate()[0]
    if fired:
        pytest.fail(f"still waiting after {seconds} s: blocked opening the FIFO {fifo}")
    if error is not None:
        raise error
    return value

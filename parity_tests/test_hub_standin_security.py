"""The Hub stand-in refuses hostile requests: traversal in any encoding, unauthenticated or malformed writes.

Every case is sent as raw HTTP (http.client) so that no client-side normalisation hides what the server does.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket

import pytest

from converters.zoo.standin import MAX_BODY_BYTES, serve
from parity_tests.zoo_support import TEST_HUB

REPO = "perceiver-torch/tiny-language-perceiver"
TOKEN = "write-token-for-tests"


def _request(hub, method, path, body=None, headers=None):
    host, port = hub.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("X-Error-Code"), response.read()
    finally:
        conn.close()


@pytest.fixture
def outside(tmp_path):
    """A secret file beside (not inside) the served tree."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    return secret


@pytest.fixture
def writable(tmp_path):
    root = tmp_path / "hub"
    with serve(root, token=TOKEN) as hub:
        hub.write_commit(REPO, None, {"README.md": b"hello"}, "initial")
        yield hub


def _auth(**extra):
    return {"Authorization": f"Bearer {TOKEN}", **extra}


def test_binds_loopback_only():
    with serve(TEST_HUB) as hub:
        assert hub.server_address[0] == "127.0.0.1" and hub.endpoint.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("path", [
    "/{repo}/resolve/main//{secret}",  # an absolute filename
    "/{repo}/resolve/main/%2F{secret_enc}",  # the same, percent-encoded
    "/{repo}/resolve/main/..%2F..%2F..%2F..%2F{rel}",  # '..' encoded
    "/{repo}/resolve/main/../../../../{rel}",
    "/{repo}/resolve/main/.%2E/.%2E/{rel}",
    "/{repo}/resolve/main/a%5C..%5C..%5Csecret.txt",  # backslashes
])
def test_reads_outside_the_root_are_refused(outside, path):
    with serve(outside.parent / "hub-root") as hub:
        secret = str(outside).lstrip("/")
        url = path.format(repo=REPO, secret=secret, secret_enc=secret.replace("/", "%2F"), rel="secret.txt")
        status, code, body = _request(hub, "GET", url)
    assert status in (400, 404), (url, status)
    assert b"TOP-SECRET" not in body


def test_a_link_inside_the_tree_that_points_out_is_not_followed(tmp_path, outside):
    root = tmp_path / "hub"
    with serve(root, token=TOKEN) as hub:
        commit = hub.write_commit(REPO, None, {"README.md": b"x"}, "initial")
        (root / REPO / commit / "leak.txt").symlink_to(outside)
        status, code, body = _request(hub, "GET", f"/{REPO}/resolve/{commit}/leak.txt")
    assert status == 404 and code == "EntryNotFound" and b"TOP-SECRET" not in body


def test_a_server_without_a_token_is_read_only(tmp_path):
    with serve(tmp_path / "hub") as hub:
        status, _, _ = _request(hub, "POST", "/api/repos/create", json.dumps({"name": "a/b"}),
                                {"Content-Type": "application/json"})
    assert status == 403 and not (tmp_path / "hub" / "a").exists()


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Bearer {TOKEN}x", TOKEN])
def test_writes_need_the_servers_token(writable, authorization):
    headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
    status, code, _ = _request(writable, "POST", "/api/repos/create", json.dumps({"name": "ns/new"}), headers)
    assert status == 401 and code == "Unauthorized"
    assert not (writable.root / "ns").exists()


@pytest.mark.parametrize("payload", [{"visibility": "secret"}, {"visibility": 1}, {"private": "yes"}])
def test_create_refuses_a_visibility_other_than_public_or_private(writable, payload):
    status, _, _ = _request(writable, "POST", "/api/repos/create", json.dumps({"name": "ns/new", **payload}), _auth())
    assert status == 400 and not (writable.root / "ns").exists()


@pytest.mark.parametrize("payload", [{"visibility": "private"}, {"private": True}])
def test_a_private_repo_is_not_found_without_the_token(writable, payload):
    assert _request(writable, "POST", "/api/repos/create", json.dumps({"name": "ns/new", **payload}), _auth())[0] == 200
    writable.write_commit("ns/new", writable.resolve("ns/new", "main"), {"README.md": b"private"}, "add")
    path = "/ns/new/resolve/main/README.md"
    assert _request(writable, "GET", path)[:2] == (401, "RepoNotFound")
    assert _request(writable, "GET", path, headers={"Authorization": "Bearer wrong"})[:2] == (404, "RepoNotFound")
    assert _request(writable, "GET", path, headers=_auth()) == (200, None, b"private")
    assert _request(writable, "GET", f"/{REPO}/resolve/main/README.md") == (200, None, b"hello")  # public


@pytest.mark.parametrize("payload", [
    {"name": "../../evil_repo"}, {"name": "evil", "organization": ".."}, {"name": "/tmp/evil"},
    {"name": ".."}, {"name": "a/b/c"}, {"name": 5},  # a name alone is the user's (test_push_namespace): '..' is not
])
def test_create_refuses_repo_ids_outside_the_grammar(writable, payload, tmp_path):
    status, _, _ = _request(writable, "POST", "/api/repos/create", json.dumps(payload), _auth())
    assert status == 400
    assert not (tmp_path / "evil_repo").exists() and not (tmp_path / "evil").exists()


def _commit_body(path: str, content: bytes = b"pwned") -> bytes:
    lines = [{"key": "header", "value": {"summary": "x"}},
             {"key": "file", "value": {"path": path, "encoding": "base64",
                                       "content": base64.b64encode(content).decode()}}]
    return "\n".join(json.dumps(line) for line in lines).encode()


@pytest.mark.parametrize("path", ["../../../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "a//b", ".", ""])
def test_commits_cannot_write_outside_their_repository(writable, tmp_path, path):
    before = sorted(p for p in tmp_path.rglob("*"))
    status, _, _ = _request(writable, "POST", f"/api/models/{REPO}/commit/main", _commit_body(path),
                            _auth(**{"Content-Type": "application/x-ndjson"}))
    assert status == 400
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_commit_must_be_ndjson(writable):
    status, _, _ = _request(writable, "POST", f"/api/models/{REPO}/commit/main", _commit_body("ok.txt"),
                            _auth(**{"Content-Type": "text/plain"}))
    assert status == 415


def test_a_well_formed_commit_still_lands(writable):
    status, _, body = _request(writable, "POST", f"/api/models/{REPO}/commit/main", _commit_body("ok.txt", b"fine"),
                               _auth(**{"Content-Type": "application/x-ndjson"}))
    assert status == 200
    oid = json.loads(body)["commitOid"]
    assert (writable.root / REPO / oid / "ok.txt").read_bytes() == b"fine"


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"files": "x"}', b'{"files": [{"path": "../../etc/hostname"}]}',
                                  b'{"files": [{"path": "/etc/hostname"}]}'])
def test_preupload_refuses_bad_bodies_and_paths(writable, body):
    status, _, answer = _request(writable, "POST", f"/api/models/{REPO}/preupload/main", body, _auth())
    assert status == 400 and b"oid" not in answer


@pytest.mark.parametrize("length", [str(MAX_BODY_BYTES + 1), "-5", "lots"])
def test_oversized_or_malformed_bodies_are_refused_unread(writable, length):
    status, _, _ = _request(writable, "POST", "/api/validate-yaml", b"", _auth(**{"Content-Length": length}))
    assert status in (400, 413)


# -- malformed requests: a 4xx (or a 500 and one log line), never a traceback, nothing written ------------------------
def _tree(root):
    """Every path under `root` with its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")}


def _no_traceback(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


TEN = b"0123456789"


@pytest.fixture
def ten(writable):
    """`writable`, whose main branch also holds ten.bin (10 bytes)."""
    writable.write_commit(REPO, writable.resolve(REPO, "main"), {"ten.bin": TEN}, "add ten.bin")
    return writable


def _range(hub, value):
    host, port = hub.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:  # http.client sends a header value as latin-1: '²' goes out as the raw byte 0xb2
        conn.request("GET", f"/{REPO}/resolve/main/ten.bin", headers={"Range": value})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Range"), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("value, expected", [
    ("bytes=2-4", (206, "bytes 2-4/10", b"234")),
    ("bytes=8-", (206, "bytes 8-9/10", b"89")),
    ("bytes=8-100", (206, "bytes 8-9/10", b"89")),
    ("bytes=-3", (206, "bytes 7-9/10", b"789")),  # a suffix: the last 3 bytes (was bytes 0-3)
    ("bytes=-99", (200, None, TEN)),
    ("bytes=1-" + "9" * 5000, (206, "bytes 1-9/10", TEN[1:])),  # more digits than int() converts
    ("bytes=-" + "9" * 5000, (200, None, TEN)),
    ("bytes=0000000000000000000000000000000000002-4", (206, "bytes 2-4/10", b"234")),
])
def test_satisfiable_ranges_get_their_bytes(ten, capsys, value, expected):
    assert _range(ten, value) == expected
    _no_traceback(capsys)


@pytest.mark.parametrize("value", ["bytes=" + "9" * 5000 + "-", "bytes=100-5", "bytes=5-2", "bytes=10-", "bytes=-0",
                                   "bytes=10-20"])
def test_unsatisfiable_ranges_get_416(ten, capsys, value):
    status, content_range, body = _range(ten, value)
    assert (status, content_range) == (416, "bytes */10")
    assert "cannot be satisfied" in json.loads(body)["error"]
    _no_traceback(capsys)


@pytest.mark.parametrize("value", ["bytes=\u00b2-", "bytes=\u0661-".encode(), "bytes=1-\u00b2", "bytes=-",
                                   "bytes=0-1,4-5", "items=0-1", "bytes=a-b", "bytes= 1 - 2", "bytes=1"])
def test_a_range_that_is_not_one_byte_range_is_ignored(ten, capsys, value):
    assert _range(ten, value) == (200, None, TEN)  # RFC 9110 lets a server ignore it; huggingface_hub copes
    _no_traceback(capsys)


@pytest.mark.parametrize("route", ["/api/repos/create", f"/api/models/{REPO}/branch/b",
                                   f"/api/models/{REPO}/preupload/main", f"/api/models/{REPO}/commit/main"])
def test_deeply_nested_json_is_a_400(writable, capsys, route):
    before = _tree(writable.root)
    status, _, body = _request(writable, "POST", route, b"[" * 100000,
                               _auth(**{"Content-Type": "application/x-ndjson"}))
    error = json.loads(body)["error"]
    assert status == 400 and ("malformed NDJSON" in error or "must be a JSON object" in error)
    assert _tree(writable.root) == before
    _no_traceback(capsys)


def _commit_files(*paths: str) -> bytes:
    lines = [{"key": "header", "value": {"summary": "x"}}]
    lines += [{"key": "file", "value": {"path": p, "encoding": "base64", "content": base64.b64encode(b"x").decode()}}
              for p in paths]
    return "\n".join(json.dumps(line) for line in lines).encode()


@pytest.mark.parametrize("paths, named", [
    (("a", "a/b"), "'a' cannot be both a file and the folder of 'a/b'"),
    (("a/b/c", "a/b"), "'a/b' cannot be both a file and the folder of 'a/b/c'"),
    (("README.md/x",), "'README.md' cannot be both a file and the folder of 'README.md/x'"),  # the parent's file
    (("b" * 300,), "at most 255 bytes"),
    (("ok/" + "b" * 256 + "/c",), "at most 255 bytes"),
])
def test_a_commit_the_tree_cannot_hold_is_a_400(writable, capsys, paths, named):
    before = _tree(writable.root)
    status, code, body = _request(writable, "POST", f"/api/models/{REPO}/commit/main", _commit_files(*paths),
                                  _auth(**{"Content-Type": "application/x-ndjson"}))
    assert (status, code) == (400, "BadRequest") and named in json.loads(body)["error"]
    assert _tree(writable.root) == before  # no commit folder, no temporary one, the ref unmoved
    _no_traceback(capsys)


def test_a_commit_summary_that_is_not_text_is_a_400(writable, capsys):
    before = _tree(writable.root)
    for summary in (b'"\\ud800"', b"5"):
        status, _, body = _request(writable, "POST", f"/api/models/{REPO}/commit/main",
                                   b'{"key": "header", "value": {"summary": ' + summary + b"}}",
                                   _auth(**{"Content-Type": "application/x-ndjson"}))
        assert status == 400 and "summary" in json.loads(body)["error"]
    assert _tree(writable.root) == before
    _no_traceback(capsys)


def test_names_longer_than_the_file_system_takes_are_refused(writable, capsys):
    long = "a" * 300
    before = _tree(writable.root)
    assert _request(writable, "GET", f"/{REPO}/resolve/main/{long}")[:2] == (404, "EntryNotFound")
    assert _request(writable, "HEAD", f"/{REPO}/resolve/main/x/{long}")[:2] == (404, "EntryNotFound")
    assert _request(writable, "GET", f"/{REPO}/resolve/{long}/README.md")[:2] == (404, "RevisionNotFound")
    assert _request(writable, "GET", f"/api/models/{REPO}/revision/{long}")[:2] == (404, "RevisionNotFound")
    assert _request(writable, "POST", f"/api/models/{REPO}/branch/{long}", b"{}", _auth())[0] == 400
    assert _request(writable, "POST", f"/api/models/{REPO}/commit/{long}", _commit_files("ok.txt"),
                    _auth(**{"Content-Type": "application/x-ndjson"}))[:2] == (404, "RevisionNotFound")
    status, _, body = _request(writable, "POST", f"/api/models/{REPO}/preupload/main",
                               json.dumps({"files": [{"path": long}]}), _auth())
    assert status == 200 and json.loads(body)["files"][0]["oid"] is None
    assert _tree(writable.root) == before
    _no_traceback(capsys)


def _raw(hub, request: bytes) -> bytes:
    """The whole answer to `request`, sent as is on a socket that is then half-closed."""
    with socket.create_connection(hub.server_address[:2], timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return sock.makefile("rb").read()


def test_a_malformed_request_target_is_a_400(writable, capsys):
    # absolute-form with an unclosed IPv6 host: urlsplit raises 'Invalid IPv6 URL' (http.client would refuse to send it)
    assert _raw(writable, b"GET http://[x/y HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    _no_traceback(capsys)


def test_a_body_cut_short_is_a_400(writable, capsys):
    before = _tree(writable.root)
    answer = _raw(writable, f"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                            'Content-Length: 100\r\n\r\n{"name": "ns/cut"}'.encode())
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ended after 18 of its 100 bytes" in answer
    assert _tree(writable.root) == before
    _no_traceback(capsys)


def test_an_unexpected_failure_is_a_500_and_one_log_line(writable, capsys, monkeypatch):
    def broken(*args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(writable, "resolve", broken)
    status, code, body = _request(writable, "GET", f"/{REPO}/resolve/main/README.md")
    assert (status, code) == (500, "InternalError") and b"a bug" not in body  # the details go to the log only
    err = _no_traceback(capsys)
    [line] = err.splitlines()
    assert f"GET '/{REPO}/resolve/main/README.md' failed: RuntimeError: a bug over two lines" in line
    assert "test_hub_standin_security.py" in line and "in broken" in line  # where it was raised
    assert _request(writable, "GET", f"/api/models/{REPO}")[0] == 500  # the server still answers
    monkeypatch.undo()
    assert _request(writable, "GET", f"/{REPO}/resolve/main/README.md") == (200, None, b"hello")


def test_what_escapes_a_handler_is_one_log_line(writable, capsys):
    try:
        raise OSError("the socket broke")
    except OSError:
        writable.handle_error(None, ("127.0.0.1", 5))
    [line] = _no_traceback(capsys).splitlines()
    assert "request from 127.0.0.1:5 failed: OSError: the socket broke" in line

"""A hostile Hub-compatible endpoint: whatever its headers and bodies say, nothing is written outside the
cache, nothing the manifest does not pin enters it, and a refusal leaves nothing behind."""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import pytest
from huggingface_hub import try_to_load_from_cache

from parity_tests.zoo_support import BODY_FAULTS, TEST_HUB, TEST_MANIFEST, answering_server, cached_files, hub_env
from perceiver_torch.zoo import IntegrityError, ZooError, fetch, get_entry
from perceiver_torch.zoo.download import download_location

NAME = "tiny-language-perceiver"
ARTIFACT = get_entry(NAME, TEST_MANIFEST)["artifact"]
BODY = (TEST_HUB / ARTIFACT["repo_id"] / ARTIFACT["revision"] / ARTIFACT["filename"]).read_bytes()
SIZE = len(BODY)


@pytest.fixture(autouse=True)
def _no_zoo_settings(monkeypatch):
    for key in ("HF_HUB_OFFLINE", "PERCEIVER_ZOO_MIRROR", "PERCEIVER_ZOO_ENDPOINT", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("time.sleep", lambda s: None)  # huggingface_hub backs off between resume attempts


def honest(etag=ARTIFACT["sha256"], commit=ARTIFACT["revision"], size=SIZE, body=BODY):
    """Replies as the Hub does for an LFS file, with the given header values and body."""
    return lambda method, path, n: (200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Content-Length": str(size)},
                                    body)


def everything_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def pull(endpoint, cache):
    return fetch(NAME, endpoint=endpoint, cache=cache, manifest=TEST_MANIFEST)


@pytest.mark.parametrize("etag", ["../../../outside/evil", "ABSOLUTE", "x/../../../../y", "evil.pth"])
def test_an_etag_that_is_not_the_pinned_sha256_is_refused_before_anything_is_written(tmp_path, etag):
    etag = str(tmp_path / "outside" / "evil") if etag == "ABSOLUTE" else etag
    cache = tmp_path / "home" / "hub"
    with answering_server(honest(etag=etag)) as server:
        with pytest.raises(IntegrityError, match="ETag .* is not the sha256 the manifest pins"):
            pull(server.endpoint, cache)
    assert everything_under(tmp_path) == []  # not even the cache folder
    assert [method for method, _, _ in server.requests] == ["HEAD"]


@pytest.mark.parametrize("answer, refusal", [
    (honest(commit="f" * 40), "answered for commit 'ffff"),
    (honest(size=len(BODY) + (512 << 20)), rf"announces {len(BODY) + (512 << 20)} bytes, but the manifest pins"),
    (honest(size=len(BODY) - 1), "announces"),
])
def test_a_wrong_commit_or_size_is_refused_before_the_download(tmp_path, answer, refusal):
    with answering_server(answer) as server:
        with pytest.raises(IntegrityError, match=refusal):
            pull(server.endpoint, tmp_path / "cache")
    assert everything_under(tmp_path) == []
    assert [method for method, _, _ in server.requests] == ["HEAD"]  # 512 MiB are never asked for


def _head_honest_get(body, size):
    """An honest HEAD, then a GET that sends `body` (announcing `size` bytes)."""
    head = honest()

    def answer(method, path, n):
        status, headers, _ = head(method, path, n)
        return (status, headers, body) if method == "HEAD" else (status, {**headers, "Content-Length": str(size)},
                                                                  body)
    return answer


@pytest.mark.parametrize("body, size, refusal", [
    (BODY + b"\0" * (4 << 20), len(BODY) + (4 << 20), f"sent more than the {len(BODY)} bytes"),
    (BODY[:-1] + bytes([BODY[-1] ^ 1]), len(BODY), "has sha256"),
])
def test_a_body_other_than_announced_is_refused_and_not_kept(tmp_path, body, size, refusal):
    cache = tmp_path / "cache"
    with answering_server(_head_honest_get(body, size)) as server:
        with pytest.raises(IntegrityError, match=refusal):
            pull(server.endpoint, cache)
    assert cached_files(cache) == []  # no blob, no link, no temp file
    assert not (cache / f"models--{ARTIFACT['repo_id'].replace('/', '--')}" / "snapshots").exists()


@pytest.mark.parametrize("fault", BODY_FAULTS)
def test_a_body_from_the_stand_in_that_goes_wrong_is_named_and_leaves_nothing(tmp_path, monkeypatch, fault):
    """As test_user_hub's, for a zoo name: our one-line error naming the file, what was wrong and what the
    manifest pins; not huggingface_hub's RuntimeError from its retrying stream, nor its two-line OSError."""
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, TEST_HUB, cache, faults={fault: True}) as hub:
        with pytest.raises(ZooError) as err:
            pull(hub.endpoint, cache)
    error, problem = BODY_FAULTS[fault]
    problem = problem.format(size=SIZE, half=SIZE // 2, sha256=ARTIFACT["sha256"], pinned="the manifest")
    source = re.escape(f"{ARTIFACT['repo_id']}@{ARTIFACT['revision']}/{ARTIFACT['filename']} from {hub.endpoint}")
    assert type(err.value) is error
    assert re.fullmatch(rf"zoo model '{NAME}': download of {source} {problem}", str(err.value)), str(err.value)
    assert cached_files(cache) == []


def test_the_blob_is_named_by_the_manifest_so_a_second_answer_cannot_matter(tmp_path):
    # The first HEAD is honest; any later one would name a file outside the cache.
    first, hostile = honest(), honest(etag="../../../outside/evil")
    cache = tmp_path / "cache"
    with answering_server(lambda m, p, n: (first if n <= 2 else hostile)(m, p, n)) as server:
        path = pull(server.endpoint, cache)
        assert [method for method, _, _ in server.requests] == ["HEAD", "GET"]
        assert pull(server.endpoint, cache) == path and len(server.requests) == 2  # cached: not one request
    repo = f"models--{ARTIFACT['repo_id'].replace('/', '--')}"
    assert path.read_bytes() == BODY and path.resolve() == (cache / repo / "blobs" / ARTIFACT["sha256"]).resolve()
    assert os.readlink(path) == f"../../blobs/{ARTIFACT['sha256']}"  # relative, as huggingface_hub links it
    assert {p.split("/")[0] for p in everything_under(tmp_path)} == {"cache"}
    # The Hub cache's own layout: huggingface_hub finds the file.
    found = try_to_load_from_cache(ARTIFACT["repo_id"], ARTIFACT["filename"], cache_dir=cache,
                                   revision=ARTIFACT["revision"])
    assert found == str(path)


def test_a_redirect_to_a_cdn_downloads_from_it_without_the_token(tmp_path, monkeypatch):
    # The Hub answers an LFS file's HEAD with a redirect to a signed CDN URL and X-Linked-* headers.
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with answering_server(honest()) as cdn:
        def hub(method, path, n):
            return (302, {"Location": f"{cdn.endpoint}/signed/blob", "X-Repo-Commit": ARTIFACT["revision"],
                          "X-Linked-Etag": f'"{ARTIFACT["sha256"]}"', "X-Linked-Size": str(len(BODY)),
                          "ETag": '"git-sha1-of-the-pointer"', "Content-Length": "0"}, b"")

        with answering_server(hub) as endpoint:
            path = pull(endpoint.endpoint, tmp_path / "cache")
    assert path.read_bytes() == BODY
    assert [(m, p) for m, p, _ in endpoint.requests] == [("HEAD", f"/{ARTIFACT['repo_id']}/resolve/"
                                                                   f"{ARTIFACT['revision']}/{ARTIFACT['filename']}")]
    assert endpoint.requests[0][2].get("authorization") == "Bearer hf_secret"
    assert [(m, p) for m, p, _ in cdn.requests] == [("GET", "/signed/blob")]
    assert "authorization" not in {k.lower() for k in cdn.requests[0][2]}


@pytest.mark.parametrize("location, keeps_token", [
    ("https://hub.example/u/r/resolve/x/m.safetensors", True),
    ("https://hub.example/other/path", True),  # the same origin
    ("http://hub.example/blob", False),  # the same host, but in clear text: the token would be readable
    ("https://cdn.example/signed/blob", False),
    ("https://hub.example:8443/blob", False),  # another port is another origin
    (None, True),  # no redirect: the URL asked for
], ids=["same-url", "same-origin", "https-to-http", "other-host", "other-port", "no-location"])
def test_the_token_goes_only_to_the_origin_it_was_given_for(location, keeps_token):
    url = "https://hub.example/u/r/resolve/x/m.safetensors"
    headers = {"authorization": "Bearer hf_secret", "user-agent": "test"}
    assert download_location(url, SimpleNamespace(location=location), headers) == (location or url)
    assert ("authorization" in headers) is keeps_token
    assert headers["user-agent"] == "test"  # only the token is dropped


@pytest.mark.parametrize("failure", ["offline", "refused", "http-error"])
def test_a_failed_pull_leaves_other_downloads_in_progress_alone(tmp_path, monkeypatch, failure):
    cache = tmp_path / "cache"
    blobs = cache / f"models--{ARTIFACT['repo_id'].replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    theirs = blobs / f"{'a' * 64}.0123abcd.incomplete"  # another process's download, half written
    theirs.write_bytes(b"partial")
    if failure == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answer = honest(etag="0" * 64) if failure == "refused" else lambda m, p, n: (500, {}, b"")
    with answering_server(answer) as server, pytest.raises(ZooError) as err:
        pull(server.endpoint, cache)
    assert "\n" not in str(err.value)  # one line, though huggingface_hub's HTTP error message has several
    assert theirs.read_bytes() == b"partial"
    assert sorted(p.name for p in blobs.iterdir()) == [theirs.name]


def test_a_pull_removes_what_a_killed_pull_of_the_same_blob_left(tmp_path):
    # SIGTERM or SIGKILL mid-download skips the temp file's cleanup; its name is random, so no later pull
    # would reuse it: without this, each interrupted pull would leave up to a whole model's bytes behind.
    cache = tmp_path / "cache"
    blobs = cache / f"models--{ARTIFACT['repo_id'].replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    left = [blobs / f"{ARTIFACT['sha256']}.{suffix}.incomplete" for suffix in ("0123456789abcdef", "fedcba9876543210")]
    others = [blobs / f"{'a' * 64}.0123456789abcdef.incomplete",  # another blob's: its pull may be running
              blobs / f"{ARTIFACT['sha256']}.incomplete",  # huggingface_hub's own name: its to resume
              blobs / f"{ARTIFACT['sha256']}.not-ours.incomplete"]  # matches the glob, but not our temp names
    for path in left + others:
        path.write_bytes(BODY[:1000])
    with answering_server(honest()) as server:
        path = pull(server.endpoint, cache)
    assert path.read_bytes() == BODY
    assert sorted(p.name for p in blobs.iterdir()) == sorted([ARTIFACT["sha256"], *(p.name for p in others)])


def test_a_snapshot_link_whose_blob_is_gone_is_downloaded_again(tmp_path):
    cache = tmp_path / "cache"
    with answering_server(honest()) as server:
        path = pull(server.endpoint, cache)
        path.resolve().unlink()  # e.g. a cache cleaner removed blobs only
        assert path.is_symlink() and not path.exists()
        assert pull(server.endpoint, cache) == path and path.read_bytes() == BODY
    assert [method for method, _, _ in server.requests] == ["HEAD", "GET", "HEAD", "GET"]

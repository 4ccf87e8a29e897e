"""A hostile Hub endpoint behind `perceiver-convert TASK --from-transformers OWNER/NAME`: every name written in the
cache comes from the request (repo id, a checked 40-hex commit, the file name, a checked sha256 or git blob id),
never from the server; an answer that is not acceptable is refused with one line naming what was wrong, before
anything is written; a body other than announced never enters the cache.

huggingface_hub's hf_hub_download, which this route used, named the blob after the server's ETag unchecked: an ETag
of "../../../../outside/evil-model.safetensors" wrote that file (and a .lock file) outside the cache.
"""

from __future__ import annotations

import hashlib
import os
import reprlib
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file

from converters import from_transformers
from converters.cli import main as convert_main
from converters.small_files import MAX_CONFIG_BYTES
from converters.transformers.source import TransformersSourceError
from parity_tests.transformers_support import save_small, standin_repo
from parity_tests.zoo_support import answering_server, cached_files, hub_env, returns_within
from perceiver_torch.serialization import MAX_CHECKPOINT_BYTES, read_metadata

REPO = "deepmind-test/language-perceiver"
CACHE_REPO = "models--deepmind-test--language-perceiver"
COMMIT = "c" * 40
ESCAPE = "../../../../outside/evil-model.safetensors"  # from <tmp>/home/hub/<repo>/blobs/: <tmp>/outside/...
REFUSED_ETAG = ("the server's ETag for {name} is {etag}, not a sha256 (what the Hub sends for an LFS file) or a git "
                "blob id (what it sends for a regular file); the download is refused, as its bytes could not be "
                "checked")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small transformers Perceiver's files: config.json and model.safetensors."""
    return save_small("PerceiverForMaskedLM", tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(autouse=True)
def _hub_settings(tmp_path, monkeypatch):
    for key in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", "PERCEIVER_ZOO_MIRROR", "PERCEIVER_ZOO_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    monkeypatch.setattr("time.sleep", lambda s: None)  # huggingface_hub backs off between resume attempts


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id


def hub_answers(model: Path, changes: dict[str, dict] | None = None, commit: str = COMMIT):
    """Answers as the Hub does for `model`'s files at `commit` (config.json a regular file: its git blob id as
    ETag; the weights an LFS file: their sha256), with `changes[filename]` applied: "headers" (a header's value,
    None to leave it out; HEAD and GET alike), "head" (HEAD only) and "body" (what a GET sends)."""
    files = {p.name: p.read_bytes() for p in model.iterdir()}
    changes = changes or {}

    def answer(method, path, n):
        name = path.rsplit("/", 1)[-1]
        if name not in files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit, "Content-Length": "0"}, b""
        data = files[name]
        etag = git_blob_id(data) if name == "config.json" else hashlib.sha256(data).hexdigest()
        change = changes.get(name, {})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                   **change.get("headers", {}), **(change.get("head", {}) if method == "HEAD" else {})}
        body = change.get("body", data)
        if method == "GET" and "body" in change:
            headers["Content-Length"] = str(len(body))
        return 200, {k: v for k, v in headers.items() if v is not None}, body

    return answer


def convert(monkeypatch, endpoint: str, out: Path, *args: str) -> int:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return convert_main(["language", "--from-transformers", REPO, *args, "-o", str(out)])


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused_alone(capsys, message: str) -> None:
    """The CLI's output: exactly `perceiver-convert: error: <message>`, one line, no traceback."""
    captured = capsys.readouterr()
    assert captured.err == f"perceiver-convert: error: {message}\n", captured.err
    assert captured.out == ""


@pytest.mark.parametrize("etag", [ESCAPE, "ABSOLUTE", "x/../../../../../y", "evil-model.safetensors", "a" * 63],
                         ids=["traversal", "absolute", "nested", "plain-name", "short-hex"])
@pytest.mark.parametrize("lying_about", ["config.json", "model.safetensors"])
def test_an_etag_that_is_no_hash_is_refused_before_anything_is_written(model, tmp_path, monkeypatch, capsys, etag,
                                                                       lying_about):
    etag = str(tmp_path / "outside" / "evil-model.safetensors") if etag == "ABSOLUTE" else etag
    out = tmp_path / "o.safetensors"
    answer = hub_answers(model, {lying_about: {"headers": {"ETag": f'"{etag}"'}}})
    with answering_server(answer) as server:
        assert convert(monkeypatch, server.endpoint, out) == 1
    shown = reprlib.Repr()
    shown.maxstring = 80  # a header value is shown cut short
    refused_alone(capsys, f"{REPO}@main: " + REFUSED_ETAG.format(name=lying_about, etag=shown.repr(etag)))
    assert not (tmp_path / "outside").exists() and not out.exists()
    assert {p.split("/")[0] for p in everything_under(tmp_path)} <= {"home"}  # nothing outside the cache
    requests = [(method, path.rsplit("/", 1)[-1]) for method, path, _ in server.requests]
    if lying_about == "config.json":
        assert everything_under(tmp_path) == []  # not even the cache's folder
        assert requests == [("HEAD", "config.json")]
    else:  # config.json was fine, and is kept, verified, under the names the request gave
        cache = tmp_path / "home" / "hub"
        blob = git_blob_id((model / "config.json").read_bytes())
        assert cached_files(cache) == [f"{CACHE_REPO}/blobs/{blob}", f"{CACHE_REPO}/refs/main",
                                       f"{CACHE_REPO}/snapshots/{COMMIT}/config.json"]
        assert [p.name for p in (cache / ".locks" / CACHE_REPO).iterdir()] == [f"{blob}.lock"]
        assert requests[-1] == ("HEAD", "model.safetensors") and ("GET", "model.safetensors") not in requests


@pytest.mark.parametrize("name, headers, problem", [
    ("config.json", {"X-Repo-Commit": None},
     "the server announces no commit id (X-Repo-Commit: None) for config.json; the download is refused, as it could "
     "not be pinned"),
    ("config.json", {"X-Repo-Commit": "../../../outside"},
     "the server announces no commit id (X-Repo-Commit: '../../../outside') for config.json; the download is "
     "refused, as it could not be pinned"),
    ("config.json", {"X-Repo-Commit": "C" * 40},
     f"the server announces no commit id (X-Repo-Commit: '{'C' * 40}') for config.json; the download is refused, as "
     "it could not be pinned"),
    ("config.json", {"ETag": None},
     "the server's ETag for config.json is None, not a sha256 (what the Hub sends for an LFS file) or a git blob id "
     "(what it sends for a regular file); the download is refused, as its bytes could not be checked"),
    ("config.json", {"Content-Length": str(MAX_CONFIG_BYTES + 1)},
     f"the server announces {MAX_CONFIG_BYTES + 1} bytes for config.json, more than the {MAX_CONFIG_BYTES} bytes a "
     "config.json may have (a Perceiver's is a few KB); the download is refused"),
    ("config.json", {"Content-Length": None},
     "the server announces no size for config.json; the download is refused, as it could not be bounded"),
    ("model.safetensors", {"Content-Length": str(MAX_CHECKPOINT_BYTES + 1)},
     f"the server announces {MAX_CHECKPOINT_BYTES + 1} bytes for model.safetensors, more than the "
     f"{MAX_CHECKPOINT_BYTES} bytes of the largest checkpoint perceiver-torch reads; the download is refused"),
], ids=["no-commit", "traversing-commit", "uppercase-commit", "no-etag", "oversized-config", "no-size",
        "oversized-weights"])
def test_an_answer_that_cannot_name_or_bound_the_file_is_refused_before_its_body(model, tmp_path, monkeypatch, capsys,
                                                                                 name, headers, problem):
    answer = hub_answers(model, {name: {"head": headers}})
    with answering_server(answer) as server:
        assert convert(monkeypatch, server.endpoint, tmp_path / "o.safetensors") == 1
    refused_alone(capsys, f"{REPO}@main: {problem}")
    assert ("GET", name) not in [(m, p.rsplit("/", 1)[-1]) for m, p, _ in server.requests]  # never asked for
    assert {p.split("/")[0] for p in everything_under(tmp_path)} <= {"home"}
    assert [f for f in cached_files(tmp_path / "home" / "hub") if f.endswith(name)] == []


def test_an_answer_for_another_commit_than_asked_is_refused(model, tmp_path, monkeypatch, capsys):
    answer = hub_answers(model, commit="d" * 40)
    with answering_server(answer) as server:
        assert convert(monkeypatch, server.endpoint, tmp_path / "o.safetensors", "--revision", COMMIT) == 1
    refused_alone(capsys, f"{REPO}@{COMMIT}: the server answered for commit {'d' * 40} when asked for config.json at "
                          f"commit {COMMIT}; the download is refused")
    assert everything_under(tmp_path) == []


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("fault", ["longer", "other-bytes"])
def test_a_body_other_than_announced_never_enters_the_cache(model, tmp_path, monkeypatch, capsys, name, fault):
    data = (model / name).read_bytes()
    body = data + b" " * 4096 if fault == "longer" else data[:-1] + bytes([data[-1] ^ 1])
    answer = hub_answers(model, {name: {"body": body}})
    with answering_server(answer) as server:
        assert convert(monkeypatch, server.endpoint, tmp_path / "o.safetensors") == 1
    digest = git_blob_id if name == "config.json" else (lambda b: hashlib.sha256(b).hexdigest())
    kind, pinned = ("git blob id" if name == "config.json" else "sha256"), digest(data)
    source = f"{REPO}@{COMMIT}/{name} from {server.endpoint}"
    # config.json was asked for at the branch; the weights at the commit its answer named.
    pinned_by = f"the server's answer for revision {'main' if name == 'config.json' else COMMIT!r}"
    problem = (f"the server sent more than the {len(data)} bytes {pinned_by} pins; the download was stopped"
               if fault == "longer" else
               f"the body the server sent has {kind} {digest(body)}, but {pinned_by} pins {kind} {pinned} "
               f"(size {len(data)})")
    refused_alone(capsys, f"{REPO}@main: download of {source} refused: {problem}; nothing was kept in the cache")
    cached = cached_files(tmp_path / "home" / "hub")
    assert [f for f in cached if name in f or pinned in f or "incomplete" in f] == []
    assert {p.split("/")[0] for p in everything_under(tmp_path)} <= {"home"}


def test_the_hubs_own_answers_convert_and_name_every_cached_file_from_the_request(model, tmp_path, monkeypatch):
    """config.json as a regular file (its git blob id as ETag), the weights as an LFS file behind a redirect to a
    CDN (X-Linked-Etag, X-Linked-Size), as huggingface.co answers."""
    weights = (model / "model.safetensors").read_bytes()
    sha256 = hashlib.sha256(weights).hexdigest()
    with answering_server(hub_answers(model)) as cdn:
        def hub(method, path, n):
            if path.endswith("/model.safetensors"):
                return 302, {"Location": f"{cdn.endpoint}/signed/{REPO}/resolve/{COMMIT}/model.safetensors",
                             "X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha256}"',
                             "X-Linked-Size": str(len(weights)), "ETag": '"git-sha1-of-the-pointer"',
                             "Content-Length": "0"}, b""
            return hub_answers(model)(method, path, n)

        with answering_server(hub) as endpoint:
            monkeypatch.setenv("HF_ENDPOINT", endpoint.endpoint)
            path = from_transformers("language", REPO, tmp_path / "o.safetensors")
    meta = read_metadata(path)
    assert (meta["source_repo"], meta["source_revision"], meta["source_sha256"]) == (REPO, COMMIT, sha256)
    config_blob = git_blob_id((model / "config.json").read_bytes())
    assert cached_files(tmp_path / "home" / "hub") == [
        f"{CACHE_REPO}/blobs/{config_blob}", f"{CACHE_REPO}/blobs/{sha256}", f"{CACHE_REPO}/refs/main",
        f"{CACHE_REPO}/snapshots/{COMMIT}/config.json", f"{CACHE_REPO}/snapshots/{COMMIT}/model.safetensors"]
    assert [(m, p) for m, p, _ in cdn.requests] == [("GET", f"/signed/{REPO}/resolve/{COMMIT}/model.safetensors")]
    # huggingface_hub finds both files where it would have put them.
    for name in ("config.json", "model.safetensors"):
        found = huggingface_hub.try_to_load_from_cache(REPO, name, cache_dir=tmp_path / "home" / "hub")
        assert found == str(tmp_path / "home" / "hub" / CACHE_REPO / "snapshots" / COMMIT / name)


def test_a_repo_with_only_a_bin_converts_from_it(model, tmp_path, monkeypatch):
    only_bin = tmp_path / "only-bin"
    only_bin.mkdir()
    shutil.copy(model / "config.json", only_bin / "config.json")
    torch.save(load_file(str(model / "model.safetensors")), only_bin / "pytorch_model.bin")
    with answering_server(hub_answers(only_bin)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        path = from_transformers("language", REPO, tmp_path / "o.safetensors")
    assert read_metadata(path)["source_name"] == "pytorch_model.bin"
    assert [(m, p.rsplit("/", 1)[-1]) for m, p, _ in server.requests] == [
        ("HEAD", "config.json"), ("HEAD", "config.json"), ("GET", "config.json"), ("HEAD", "model.safetensors"),
        ("HEAD", "pytorch_model.bin"), ("HEAD", "pytorch_model.bin"), ("GET", "pytorch_model.bin")]


@pytest.fixture
def standin(model, tmp_path, monkeypatch):
    """The stand-in serving `model` as REPO; yields (hub, commit)."""
    commit = standin_repo(tmp_path / "tree", REPO, model)
    with hub_env(monkeypatch, tmp_path / "tree", tmp_path / "home" / "hub") as hub:
        yield hub, commit


def test_a_cached_commit_is_read_without_a_request_and_offline_by_branch(standin, model, tmp_path, monkeypatch):
    hub, commit = standin
    first = load_file(str(from_transformers("language", REPO, tmp_path / "a.safetensors")))
    asked = hub.requests
    again = from_transformers("language", REPO, tmp_path / "b.safetensors", revision=commit)
    assert hub.requests == asked  # every file of that commit is cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision in (None, commit):  # main, through refs/main as the first import recorded it
        path = from_transformers("language", REPO, tmp_path / f"{revision}.safetensors", revision=revision)
        assert read_metadata(path)["source_revision"] == commit
    assert hub.requests == asked
    assert load_file(str(again)).keys() == first.keys()
    with pytest.raises(TransformersSourceError, match=r"could not be reached .* and config.json is not in the cache"):
        from_transformers("language", REPO, tmp_path / "dev.safetensors", revision="dev")


def test_a_cache_filled_by_hf_hub_download_is_reused_offline(standin, tmp_path, monkeypatch):
    hub, commit = standin
    for name in ("config.json", "model.safetensors"):
        huggingface_hub.hf_hub_download(REPO, name, endpoint=hub.endpoint, cache_dir=tmp_path / "home" / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = from_transformers("language", REPO, tmp_path / "o.safetensors")
    assert read_metadata(path)["source_revision"] == commit


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_cached_file_that_resolves_outside_the_cache_is_refused(standin, model, tmp_path, monkeypatch, offline):
    _, commit = standin
    from_transformers("language", REPO, tmp_path / "a.safetensors")
    pointer = tmp_path / "home" / "hub" / CACHE_REPO / "snapshots" / commit / "model.safetensors"
    theirs = tmp_path / "theirs.safetensors"  # someone's file, named by no hash
    shutil.copy(model / "model.safetensors", theirs)
    pointer.unlink()
    pointer.symlink_to(theirs)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TransformersSourceError, match=f"the cached file {pointer} resolves outside the cache folder"):
        from_transformers("language", REPO, tmp_path / "b.safetensors", revision=commit)
    assert theirs.read_bytes() == (model / "model.safetensors").read_bytes() and pointer.is_symlink()


def test_a_fifo_in_place_of_a_cached_file_is_refused_and_removed(standin, model, tmp_path):
    _, commit = standin
    from_transformers("language", REPO, tmp_path / "a.safetensors")
    pointer = tmp_path / "home" / "hub" / CACHE_REPO / "snapshots" / commit / "model.safetensors"
    blob = pointer.resolve()
    blob.unlink()
    os.mkfifo(blob)
    with pytest.raises(TransformersSourceError, match=f"{pointer} is not a regular file .* removed from the cache"):
        returns_within(lambda: from_transformers("language", REPO, tmp_path / "b.safetensors", revision=commit), blob)
    assert not blob.exists() and not pointer.is_symlink()
    # The next import downloads it afresh.
    from_transformers("language", REPO, tmp_path / "c.safetensors", revision=commit)
    assert blob.read_bytes() == (model / "model.safetensors").read_bytes()

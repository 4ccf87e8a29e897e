"""Pulling by name through the real huggingface_hub client against a stand-in on 127.0.0.1.

Covers what a user meets: hash verification before loading, a corrupted or truncated download
refused and not left in the cache, offline mode, a directory mirror, unpublished entries, the CLI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch

from parity_tests.conftest import assert_close, golden_io
from parity_tests.zoo_support import GOLDEN_ENTRY, TEST_MANIFEST, cached_files, hub_env, produce_and_publish
from perceiver_torch.zoo import (
    IntegrityError,
    NotProducedError,
    UnknownModelError,
    ZooError,
    create_model,
    download,
    entries,
    fetch,
    get_entry,
)
from perceiver_torch.zoo.cli import main as zoo_cli
from perceiver_torch.zoo.hub import cache_dir, is_offline, location

REPO = "tests/golden-language"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return produce_and_publish(tmp_path_factory.mktemp("zoo"))


def _tampered_tree(tree, tmp_path, revision, change):
    copy = tmp_path / "hub"
    shutil.copytree(tree, copy)
    path = copy / REPO / revision / "model.safetensors"
    path.write_bytes(change(path.read_bytes()))
    return copy


def _check_logits(model):
    io = golden_io("language")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"]))
    assert_close(logits.numpy(), io["output/logits"], what="pulled logits")


def test_corrupted_file_on_server_is_refused_and_never_cached(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    flipped = _tampered_tree(tree, tmp_path, revision, lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:])
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, flipped, cache):
        with pytest.raises(IntegrityError, match="ETag .* is not the sha256 the manifest pins.*nothing was kept") \
                as err:
            create_model(GOLDEN_ENTRY, manifest=manifest)
    assert get_entry(GOLDEN_ENTRY, manifest)["artifact"]["sha256"] in str(err.value)
    assert cached_files(cache) == []


def test_truncated_file_on_server_is_refused_and_removed(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    short = _tampered_tree(tree, tmp_path, revision, lambda b: b[: len(b) // 2])
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, short, cache):
        with pytest.raises(IntegrityError, match="the server announces .* bytes, but the manifest pins size"):
            fetch(GOLDEN_ENTRY, manifest=manifest)
    assert cached_files(cache) == []


def test_dropped_connection_leaves_nothing_in_cache(published, tmp_path, monkeypatch):
    manifest, tree, _ = published
    cache = tmp_path / "cache"
    monkeypatch.setattr("time.sleep", lambda s: None)  # huggingface_hub backs off between resume attempts
    with hub_env(monkeypatch, tree, cache, faults={"truncate": True}):
        with pytest.raises(ZooError, match="download of tests/golden-language"):
            fetch(GOLDEN_ENTRY, manifest=manifest)
    assert cached_files(cache) == []
    assert not (cache / "models--tests--golden-language").exists()  # nor the folders the failed pull made


def test_cached_file_corrupted_later_is_refused(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, tree, cache):
        path = fetch(GOLDEN_ENTRY, manifest=manifest)
        path.resolve().write_bytes(b"\0" * 64)
        with pytest.raises(IntegrityError, match="already in the cache, not just downloaded") as err:
            fetch(GOLDEN_ENTRY, manifest=manifest)
        assert "server" not in str(err.value)  # the server sent the right file; the cache changed it
        assert cached_files(cache) == []
        _check_logits(create_model(GOLDEN_ENTRY, manifest=manifest))  # downloads afresh


def test_offline_mode_uses_the_cache_only(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, tree, cache) as hub:
        fetch(GOLDEN_ENTRY, manifest=manifest)
        requests = hub.requests
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = create_model(GOLDEN_ENTRY, manifest=manifest)
        assert hub.requests == requests  # not one request in offline mode
    _check_logits(model)
    with hub_env(monkeypatch, tree, tmp_path / "empty-cache"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ZooError, match=rf"HF_HUB_OFFLINE is set and the file is not in the cache "
                                           rf"{re.escape(str(tmp_path / 'empty-cache'))}; pull it there online"):
            fetch(GOLDEN_ENTRY, manifest=manifest)


def test_a_cached_zoo_model_loads_with_the_hub_down(published, tmp_path, monkeypatch, capsys):
    """A zoo name is pinned to a commit by the manifest: once cached it is loaded (verified) without a request, so
    an unreachable Hub changes nothing; uncached, the download's connection error is named."""
    manifest, tree, revision = published
    with hub_env(monkeypatch, tree, tmp_path / "cache"):
        fetch(GOLDEN_ENTRY, manifest=manifest)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens there: any request fails to connect
    _check_logits(create_model(GOLDEN_ENTRY, manifest=manifest))
    assert zoo_cli(["--manifest", str(manifest), "pull", GOLDEN_ENTRY]) == 0
    assert capsys.readouterr().out.startswith(f"{GOLDEN_ENTRY}: verified sha256 ")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ZooError, match=rf"download of {REPO}@{revision}/model.safetensors from http://127.0.0.1:1 "
                                       r"failed: ConnectError"):
        create_model(GOLDEN_ENTRY, manifest=manifest)


def test_an_offline_client_with_the_variable_unset_since_says_so(published, tmp_path, monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at its import: a script that unset it since was told, by the
    HTTP client, to unset it. The refusal says what happened, before any request."""
    manifest, tree, _ = published
    with hub_env(monkeypatch, tree, tmp_path / "cache") as hub:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ZooError, match="HF_HUB_OFFLINE was set when huggingface_hub was imported, and "
                                           "huggingface_hub reads it only then: this process cannot reach the Hub"):
            create_model(GOLDEN_ENTRY, manifest=manifest)
        assert hub.requests == 0
    assert cached_files(tmp_path / "cache") == []


@pytest.mark.parametrize("how", ["context", "default device"])
def test_pretrained_false_under_a_meta_device_context_gives_the_device_asked_for(published, how):
    """create_model built the model under the caller's torch.device("meta") and then failed to move it ("Cannot
    copy out of meta tensor"); pretrained=True already gave a CPU model there."""
    manifest, _, _ = published
    before = torch.get_default_device()
    try:
        with torch.device("meta") if how == "context" else contextlib.nullcontext():
            if how != "context":
                torch.set_default_device("meta")
            model = create_model(GOLDEN_ENTRY, pretrained=False, manifest=manifest)
    finally:
        torch.set_default_device(before)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(torch.isfinite(p).all() for p in model.parameters())  # initialised, not empty memory


def test_directory_mirror(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    monkeypatch.setenv("PERCEIVER_ZOO_MIRROR", str(tree))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never used: the mirror wins
    assert fetch(GOLDEN_ENTRY, manifest=manifest) == tree / REPO / revision / "model.safetensors"
    _check_logits(create_model(GOLDEN_ENTRY, manifest=manifest))
    bad = _tampered_tree(tree, tmp_path, revision, lambda b: b[:-1] + b"\x01")
    with pytest.raises(IntegrityError, match="refused"):
        fetch(GOLDEN_ENTRY, mirror=bad, manifest=manifest)


def test_pretrained_false_builds_the_architecture(published):
    manifest, _, _ = published
    model = create_model(GOLDEN_ENTRY, pretrained=False, manifest=manifest)
    assert not model.training and model.config["max_seq_len"] == 64


def test_an_unknown_name_is_a_key_error_and_a_value_error_naming_the_manifest(published):
    """timm users catch KeyError from a registry lookup, transformers users ValueError from from_pretrained:
    create_model's refusal is both, its message itself (not KeyError's quoted repr of it)."""
    manifest, _, _ = published
    for call in (lambda: create_model("no-such-model", manifest=manifest), lambda: get_entry("no-such-model", manifest),
                 lambda: create_model("no-such-model", pretrained=False, manifest=manifest)):
        with pytest.raises(UnknownModelError) as err:
            call()
        assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
        assert str(err.value) == f"no zoo model 'no-such-model' in {manifest}; available: {sorted(entries(manifest))}"


@pytest.mark.parametrize("name", ["language-perceiver", "vision-perceiver-learned", "vision-perceiver-fourier",
                                  "vision-perceiver-conv", "optical-flow-perceiver", "multimodal-perceiver"])
def test_unproduced_released_entry_says_how_to_get_it(name):
    entry = get_entry(name)
    with pytest.raises(NotProducedError) as err:
        create_model(name)
    message = str(err.value)
    # The user's route that works today (the release file, perceiver-convert with the preset, load_model) ...
    assert entry["source"]["url"] in message and entry["source"]["sha256"] in message
    assert f"perceiver-convert {entry['task']} " in message and f"--preset {entry['preset']}" in message
    assert f'load_model("{name}.safetensors")' in message
    # ... and the maintainer's, with commands an install has.
    assert f"perceiver-zoo-admin regenerate {name}" in message and f"perceiver-zoo-admin publish {name}" in message


def test_cli_list_info_pull(published, tmp_path, monkeypatch, capsys):
    manifest, tree, revision = published
    monkeypatch.setenv("PERCEIVER_ZOO_MANIFEST", str(manifest))
    assert zoo_cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert GOLDEN_ENTRY in listing and "language-perceiver" in listing and "not-produced" in listing
    assert zoo_cli(["info", GOLDEN_ENTRY]) == 0
    assert revision in capsys.readouterr().out
    with hub_env(monkeypatch, tree, tmp_path / "cache"):
        assert zoo_cli(["pull", GOLDEN_ENTRY]) == 0
        assert "verified sha256" in capsys.readouterr().out
    assert zoo_cli(["pull", "language-perceiver"]) == 1
    assert "perceiver-zoo-admin regenerate language-perceiver" in capsys.readouterr().err
    assert zoo_cli(["info", "language-perceiver"]) == 0
    info = capsys.readouterr().out
    assert "not published yet" in info and "would be pulled from" not in info and "huggingface.co" not in info
    assert zoo_cli(["info", "no-such-model"]) == 1
    err = capsys.readouterr().err  # info reads files too: the hint from_pretrained, predict and export give
    assert "available:" in err and err.strip().endswith(
        "(a local file or save_pretrained directory is named by its path, e.g. './no-such-model' or "
        "'./no-such-model.safetensors')")


def test_where_files_come_from(monkeypatch, tmp_path):
    for key in ("HF_ENDPOINT", "PERCEIVER_ZOO_ENDPOINT", "PERCEIVER_ZOO_MIRROR"):
        monkeypatch.delenv(key, raising=False)
    released, test_entry = get_entry("language-perceiver"), get_entry("tiny-language-perceiver", TEST_MANIFEST)
    # Without an endpoint or mirror, every entry (a test one too) comes from the Hub: nothing is read in place.
    assert location(released) == location(test_entry) == ("endpoint", "https://huggingface.co")
    monkeypatch.setenv("HF_ENDPOINT", "http://hf.example/")
    assert location(test_entry) == ("endpoint", "http://hf.example")
    monkeypatch.setenv("PERCEIVER_ZOO_ENDPOINT", "http://models.example.org")
    assert location(released) == ("endpoint", "http://models.example.org")
    monkeypatch.setenv("PERCEIVER_ZOO_MIRROR", str(tmp_path))
    assert location(released) == ("mirror", str(tmp_path))
    assert location(released, endpoint="http://x.example") == ("endpoint", "http://x.example")


_HUB_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE")


@pytest.mark.parametrize("settings", [
    {"HF_HOME": "~/hf-home"},  # as a Dockerfile's ENV or an env file leaves it: the shell never expanded it
    {"HF_HUB_CACHE": "$ZOO_TEST_ROOT/hub-cache"},
    {"HF_HOME": "/tmp/zoo-home", "HUGGINGFACE_HUB_CACHE": "/tmp/zoo-legacy"},  # the legacy name comes first
    {"HF_HOME": "/tmp/zoo-home", "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "1"},
    {"HF_HUB_CACHE": "/tmp/zoo-cache", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"},
])  # each names a cache: the default is read at import, from the environment the test run started with
def test_the_cache_and_offline_mode_are_huggingface_hubs_own(monkeypatch, settings):
    # The zoo reads the environment at call time; huggingface_hub reads it at import. For the same
    # environment both must name the same cache (so huggingface_hub finds the pulled file) and mode.
    env = {k: v for k, v in os.environ.items() if k not in _HUB_ENV}
    env.update(settings, ZOO_TEST_ROOT="/tmp/zoo-root")
    theirs = subprocess.run(
        [sys.executable, "-c", "from huggingface_hub import constants as c; print(c.HF_HUB_CACHE); "
                               "print(c.HF_HUB_OFFLINE)"],
        env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    for key in _HUB_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in {**settings, "ZOO_TEST_ROOT": "/tmp/zoo-root"}.items():
        monkeypatch.setenv(key, value)
    assert [str(cache_dir()), str(is_offline())] == theirs


@pytest.mark.parametrize("missing", ["repo", "revision"])
def test_missing_repo_or_revision_on_the_endpoint_is_a_clear_error(published, tmp_path, monkeypatch, missing):
    manifest, tree, revision = published
    hub = tmp_path / "hub"
    shutil.copytree(tree, hub)
    if missing == "repo":
        shutil.rmtree(hub / REPO)
    else:
        shutil.rmtree(hub / REPO / revision)
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, hub, cache):
        with pytest.raises(ZooError, match=f"download of {REPO}"):
            fetch(GOLDEN_ENTRY, manifest=manifest)
    assert cached_files(cache) == []


def test_a_pull_waiting_on_the_lock_survives_the_cleanup_of_a_pull_that_failed(published, tmp_path, monkeypatch):
    """Two processes pull one file into a fresh cache: the first makes the repository's folders and fails (Ctrl-C,
    a refused body), taking back its empty folders as it goes. The second, which found them made and waited on the
    lock, failed with FileNotFoundError opening its temp file in blobs/ (an audit's repro with two processes).
    Here the first pull's cleanup runs just as the second acquires the lock; the second downloads all the same."""
    manifest, tree, _ = published
    cache = tmp_path / "cache"
    locking = download.WeakFileLock

    @contextlib.contextmanager
    def lock_after_the_other_pull_cleaned_up(path):
        repo = Path(path).parent.parent.parent / Path(path).parent.name
        with locking(path) as held:
            for folder in (repo / "blobs", repo / "snapshots", repo):  # the failed pull's empty folders
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            yield held

    with hub_env(monkeypatch, tree, cache):
        (cache / "models--tests--golden-language" / "blobs").mkdir(parents=True)  # made by the pull that fails
        monkeypatch.setattr(download, "WeakFileLock", lock_after_the_other_pull_cleaned_up)
        _check_logits(create_model(GOLDEN_ENTRY, manifest=manifest))
    assert len([p for p in cached_files(cache) if "/blobs/" in p]) == 1

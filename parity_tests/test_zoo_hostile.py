"""The zoo client keeps every read and delete inside its cache or mirror, and loads only what it hashed."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from converters.zoo.manifest_edit import save_manifest
from parity_tests.conftest import assert_same_weights
from parity_tests.zoo_support import (
    GOLDEN_ENTRY,
    TEST_HUB,
    TEST_MANIFEST,
    hub_env,
    produce_and_publish,
    read_only,
    returns_within,
    tree_state,
)
from perceiver_torch import CheckpointConfigError, CheckpointFormatError, load_model, serialization
from perceiver_torch.hashing import sha256_file
from perceiver_torch.safetensors_io import read_header, write_safetensors
from perceiver_torch.zoo import IntegrityError, ManifestError, ZooError, create_model, fetch, get_entry, load_manifest
from perceiver_torch.zoo import hub as zoo_hub
from perceiver_torch.zoo.cli import main as zoo_cli

REPO = "tests/golden-language"
TINY = "tiny-language-perceiver"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return produce_and_publish(tmp_path_factory.mktemp("zoo"))


@pytest.mark.parametrize("field, value", [
    ("filename", "../../../../etc/hostname"), ("filename", "/etc/hostname"), ("repo_id", "../evil"),
    ("repo_id", "tests/../../evil"), ("filename", "a/../b"),
])
def test_manifest_paths_that_could_escape_are_refused(published, tmp_path, field, value):
    manifest, _, _ = published
    data = load_manifest(manifest)
    data["models"][GOLDEN_ENTRY]["artifact"][field] = value
    with pytest.raises(ManifestError, match=f"field 'artifact.{field}'"):
        save_manifest(data, tmp_path / "m.yaml")
    assert not (tmp_path / "m.yaml").exists()
    # A manifest edited by hand is refused on load just the same, naming the file.
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match=rf"{edited}: .*field 'artifact.{field}'"):
        fetch(GOLDEN_ENTRY, manifest=edited)


def test_a_mirror_link_that_points_out_is_refused(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    mirror = tmp_path / "mirror"
    shutil.copytree(tree, mirror)
    target = mirror / REPO / revision / "model.safetensors"
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(target, elsewhere)
    target.symlink_to(elsewhere)
    with pytest.raises(ZooError, match="resolves outside the mirror"):
        fetch(GOLDEN_ENTRY, mirror=mirror, manifest=manifest)


def test_eviction_never_follows_a_link_out_of_the_cache(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, tree, cache):
        path = fetch(GOLDEN_ENTRY, manifest=manifest)
    # Someone points the cached snapshot at a file of theirs outside the cache.
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    path.unlink()
    path.symlink_to(victim)
    with hub_env(monkeypatch, tree, cache), pytest.raises(ZooError, match="outside the cache"):
        fetch(GOLDEN_ENTRY, manifest=manifest)
    assert victim.read_bytes() == b"precious"


def test_eviction_of_a_corrupt_file_removes_only_the_caches_own_entry(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, tree, cache):
        path = fetch(GOLDEN_ENTRY, manifest=manifest)
        blob = path.resolve()
        blob.write_bytes(b"\0" * 64)
        with pytest.raises(IntegrityError, match="removed from the cache"):
            fetch(GOLDEN_ENTRY, manifest=manifest)
    assert not path.exists() and not path.is_symlink() and not blob.exists()
    assert (cache / f"models--{REPO.replace('/', '--')}").is_dir()  # the repo folder itself stays


def test_a_corrupt_file_in_a_cache_this_user_cannot_write_is_still_an_integrity_error(tmp_path, monkeypatch):
    # A shared, read-only Hub cache (HF_HUB_CACHE on a read-only mount): the corrupt file cannot be removed,
    # which must not turn the refusal into a bare PermissionError that never says the file is corrupt.
    cache = tmp_path / "cache"
    with hub_env(monkeypatch, TEST_HUB, cache):
        path = fetch(TINY, manifest=TEST_MANIFEST)
    blob = path.resolve()
    blob.write_bytes(b"\0" * blob.stat().st_size)
    unlink = Path.unlink

    def read_only(self, missing_ok=False):  # what unlink does there (root would get past a chmod)
        if str(self).startswith(str(cache)):
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IntegrityError, match=r"has sha256 .* could not be removed from the cache \(.*"
                                             r"model.safetensors: Permission denied; .*: Permission denied\)"):
        fetch(TINY, cache=cache, manifest=TEST_MANIFEST)
    assert path.is_symlink() and blob.read_bytes() == b"\0" * blob.stat().st_size  # left, and named


def _fifo_for_blob(cache: Path, monkeypatch) -> tuple[Path, Path]:
    """TINY pulled into `cache`, its blob then replaced by a FIFO (which an open() for reading waits on forever);
    returns (snapshot entry, blob)."""
    with hub_env(monkeypatch, TEST_HUB, cache):
        path = fetch(TINY, manifest=TEST_MANIFEST)
    blob = path.resolve()
    blob.unlink()
    os.mkfifo(blob)
    return path, blob


def _fifo_refused(path: Path, blob: Path) -> str:
    return (f"zoo model '{TINY}': {path} is not a regular file (a FIFO, socket or device); the file was refused and "
            f"removed from the cache ({path}, {blob}). It was already in the cache, not just downloaded: it was "
            "changed or corrupted there; pulling again downloads it afresh.")


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_fifo_in_place_of_a_cached_blob_is_refused_by_pull_never_waited_on(tmp_path, monkeypatch, capsys, offline):
    cache = tmp_path / "cache"
    path, blob = _fifo_for_blob(cache, monkeypatch)
    with hub_env(monkeypatch, TEST_HUB, cache) as hub:
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        status = returns_within(lambda: zoo_cli(["--manifest", str(TEST_MANIFEST), "pull", TINY]), blob)
        assert (status, capsys.readouterr().err) == (1, f"perceiver-zoo: error: {_fifo_refused(path, blob)}\n")
        assert hub.requests == 0  # refused from the cache, before anything is asked
        assert not path.is_symlink() and not blob.exists()
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        assert zoo_cli(["--manifest", str(TEST_MANIFEST), "pull", TINY]) == 0  # downloaded afresh
    assert sha256_file(path) == get_entry(TINY, TEST_MANIFEST)["artifact"]["sha256"]


def test_a_fifo_in_place_of_a_cached_blob_is_refused_by_create_model_offline(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path, blob = _fifo_for_blob(cache, monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IntegrityError) as err:
        returns_within(lambda: create_model(TINY, manifest=TEST_MANIFEST), blob)
    assert str(err.value) == _fifo_refused(path, blob)
    assert not path.is_symlink() and not blob.exists()


def test_a_fifo_in_a_mirror_is_refused_never_waited_on(tmp_path):
    artifact = get_entry(TINY, TEST_MANIFEST)["artifact"]
    mirror = tmp_path / "mirror"
    shutil.copytree(TEST_HUB, mirror)
    target = mirror / artifact["repo_id"] / artifact["revision"] / artifact["filename"]
    target.unlink()
    os.mkfifo(target)
    verify = zoo_hub.verify_file  # past the mirror's own is_file check: replaced in between, say
    with pytest.raises(IntegrityError, match=f"{target} is not a regular file"):
        returns_within(lambda: verify(target, artifact, f"zoo model {TINY!r} (mirror)"), target)
    assert target.exists()  # a mirror is never written to


@pytest.mark.parametrize("named_by", ["HF_HUB_CACHE", "cache_dir"])
@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_read_only_cache_that_holds_the_file_serves_it_without_a_write(tmp_path, monkeypatch, named_by, offline):
    """A shared cache (a CI image's, another user's) that this user may only read, already holding the file."""
    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with hub_env(monkeypatch, TEST_HUB, cache if named_by == "HF_HUB_CACHE" else tmp_path / "unused") as hub:
        expected = create_model(TINY, manifest=TEST_MANIFEST, cache_dir=cache)
        before, requests = tree_state(cache), hub.requests
        with read_only(cache):
            if offline:
                monkeypatch.setenv("HF_HUB_OFFLINE", "1")
            model = create_model(TINY, manifest=TEST_MANIFEST, cache_dir=cache if named_by == "cache_dir" else None)
        assert hub.requests == requests  # the pinned file is in the cache: nothing is asked of the server
    assert_same_weights(model, expected)
    assert tree_state(cache) == before and list(temp.iterdir()) == []
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("holds", ["nothing", "the repo's folders"])
def test_a_read_only_cache_without_the_file_is_named_as_not_writable(tmp_path, monkeypatch, holds):
    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    repo = "models--perceiver-torch--tiny-language-perceiver"
    for folder in ([cache] if holds == "nothing" else [cache / repo / "blobs", cache / ".locks" / repo]):
        folder.mkdir(parents=True)
    before = tree_state(cache)
    where = re.escape(str(cache))
    with hub_env(monkeypatch, TEST_HUB, cache), read_only(cache):
        with pytest.raises(ZooError) as err:
            create_model(TINY, manifest=TEST_MANIFEST)
    assert re.fullmatch(rf"zoo model '{TINY}': cannot download perceiver-torch/{TINY}@[0-9a-f]{{40}}/model.safetensors "
                        rf"from http://127.0.0.1:\d+: the Hub cache {where} lacks the file and is not writable by this "
                        rf"user \({where}/\S+: Permission denied\); set HF_HUB_CACHE \(cache_dir= in Python\) to a "
                        r"directory you can write, or have the file pulled into this one", str(err.value))
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no PermissionError traceback below it
    assert tree_state(cache) == before and list(temp.iterdir()) == []


def test_concurrent_pulls_of_a_corrupt_file_all_end_in_a_zoo_error(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    bad = tmp_path / "hub"
    shutil.copytree(tree, bad)
    artifact = bad / REPO / revision / "model.safetensors"
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x01")
    errors: list[BaseException | None] = [None] * 6
    with hub_env(monkeypatch, bad, tmp_path / "cache"):
        def pull(i):
            try:
                fetch(GOLDEN_ENTRY, manifest=manifest)
            except BaseException as exc:  # noqa: BLE001 - recorded and asserted on below
                errors[i] = exc

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(errors))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert all(isinstance(e, ZooError) for e in errors), [type(e).__name__ for e in errors]


def test_a_file_changed_between_hash_and_load_is_refused(published, tmp_path, monkeypatch):
    manifest, tree, revision = published
    real_load = zoo_hub.load_model

    def load_then_tamper(path, **kwargs):
        model = real_load(path, **kwargs)
        resolved = os.path.realpath(path)
        os.utime(resolved, ns=(0, os.stat(resolved).st_mtime_ns + 10**9))  # rewritten in place, say
        return model

    monkeypatch.setattr(zoo_hub, "load_model", load_then_tamper)
    with hub_env(monkeypatch, tree, tmp_path / "cache"):
        with pytest.raises(IntegrityError, match="changed between its sha256 check and its load"):
            create_model(GOLDEN_ENTRY, manifest=manifest)
    assert get_entry(GOLDEN_ENTRY, manifest)["status"] == "published"


def test_create_model_parses_the_header_once(published, monkeypatch):
    manifest, tree, _ = published
    calls = []
    real_read_header = serialization.read_header

    def counting_read_header(path):
        calls.append(path)
        return real_read_header(path)

    monkeypatch.setattr(serialization, "read_header", counting_read_header)
    create_model(GOLDEN_ENTRY, mirror=tree, manifest=manifest)
    assert len(calls) == 1, calls


def test_an_artifact_converted_with_another_config_is_refused(published, tmp_path):
    manifest, tree, _ = published
    data = load_manifest(manifest)
    # Same artifact (its hash still matches), but the entry now describes a deeper encoder.
    data["models"][GOLDEN_ENTRY]["config"]["encoder"]["num_self_attends_per_block"] += 1
    edited = tmp_path / "zoo_manifest.yaml"
    save_manifest(data, edited)
    with pytest.raises(ZooError, match="with a different config than the manifest entry"):
        create_model(GOLDEN_ENTRY, mirror=tree, manifest=edited)


def _mirror_with_metadata_config(tmp_path, config_text):
    """A mirror holding the tiny language artifact rewritten with `config_text` as its metadata config,
    and a manifest pinning exactly that file."""
    data = load_manifest(TEST_MANIFEST)
    artifact = data["models"][TINY]["artifact"]
    source = TEST_HUB / artifact["repo_id"] / artifact["revision"] / artifact["filename"]
    path = tmp_path / "mirror" / artifact["repo_id"] / artifact["revision"] / artifact["filename"]
    path.parent.mkdir(parents=True)
    write_safetensors(path, load_file(source), {**read_header(source).metadata, "config": config_text})
    artifact.update(sha256=sha256_file(path), size=path.stat().st_size)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path / "mirror", manifest, path


@pytest.mark.parametrize("config_text", ["{not json", "[" * 200_000 + "]" * 200_000])
def test_a_metadata_config_that_is_not_json_is_refused_by_the_checked_parser(tmp_path, config_text):
    mirror, manifest, path = _mirror_with_metadata_config(tmp_path, config_text)
    with pytest.raises(CheckpointConfigError) as err:
        create_model(TINY, mirror=mirror, manifest=manifest)
    assert str(err.value).startswith(f"{path} (metadata config) is not a valid config")
    assert err.value.problems[0].startswith("(file): not valid JSON")


@pytest.mark.parametrize("device", ["cuda:99", "tpu0"])  # no machine has a 100th GPU
def test_an_unusable_device_is_named_as_such_not_blamed_on_the_file(tmp_path, device):
    artifact = get_entry(TINY, TEST_MANIFEST)["artifact"]
    path = TEST_HUB / artifact["repo_id"] / artifact["revision"] / artifact["filename"]
    for load in (lambda: load_model(path, device=device),
                 lambda: create_model(TINY, mirror=TEST_HUB, manifest=TEST_MANIFEST, device=device),
                 lambda: create_model(TINY, pretrained=False, manifest=TEST_MANIFEST, device=device)):
        with pytest.raises(ValueError, match=rf"device {device!r} cannot be used here") as err:
            load()
        assert not isinstance(err.value, CheckpointFormatError) and str(path) not in str(err.value)


def test_create_model_checks_the_device_before_downloading(tmp_path, monkeypatch):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache") as hub:
        with pytest.raises(ValueError, match="device 'cuda:99' cannot be used here"):
            create_model(TINY, manifest=TEST_MANIFEST, device="cuda:99")
        assert hub.requests == 0

"""Importing a transformers Perceiver from a Hub repository, through the local Hub stand-in."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from converters import from_transformers
from converters.cli import main as convert_main
from converters.transformers.source import TransformersSourceError
from parity_tests.transformers_support import save_small, standin_repo
from parity_tests.zoo_support import hub_env
from perceiver_torch.class_names import METADATA_KEY
from perceiver_torch.hashing import sha256_file
from perceiver_torch.imagenet_preprocessing import imagenet_labels
from perceiver_torch.serialization import load_model, read_metadata

REPO = "deepmind-test/language-perceiver"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    model = save_small("PerceiverForMaskedLM", tmp_path / "model")
    commit = standin_repo(tmp_path / "hub", REPO, model)
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache"):
        yield model, commit


def test_hub_repo_at_a_revision_imports_like_the_local_directory(hub, tmp_path):
    model, commit = hub
    local = load_file(str(from_transformers("language", model, tmp_path / "local.safetensors")))
    path = from_transformers("language", REPO, tmp_path / "hub.safetensors", revision=commit)
    remote = load_file(str(path))
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)
    meta = read_metadata(path)
    assert (meta["source_repo"], meta["source_revision"]) == (REPO, commit)
    assert meta["source_sha256"] == sha256_file(model / "model.safetensors")


def test_branch_name_resolves_to_the_commit(hub, tmp_path):
    _, commit = hub
    assert convert_main(["language", "--from-transformers", REPO, "--revision", "main",
                         "-o", str(tmp_path / "o.safetensors")]) == 0
    assert read_metadata(tmp_path / "o.safetensors")["source_revision"] == commit


@pytest.mark.parametrize(("repo", "revision", "needle"), [
    (REPO, "b" * 40, "RevisionNotFoundError"),
    ("deepmind-test/absent", None, "RepositoryNotFoundError"),
])
def test_missing_repo_or_revision_is_a_clear_error(hub, tmp_path, repo, revision, needle):
    with pytest.raises(TransformersSourceError, match=needle):
        from_transformers("language", repo, tmp_path / "o.safetensors", revision=revision)
    assert not (tmp_path / "o.safetensors").exists()


def test_an_unreachable_hub_is_not_reported_as_a_missing_file(tmp_path, monkeypatch):
    # LocalEntryNotFoundError (offline, unreachable) subclasses EntryNotFoundError: it read "has no config.json".
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(TransformersSourceError) as info:
        from_transformers("language", "models/lm", tmp_path / "o.safetensors")
    message = str(info.value)
    assert "the Hub could not be reached" in message and "config.json is not in the cache" in message, message
    assert "there is no local directory models/lm" in message and "has no config.json" not in message
    assert not (tmp_path / "o.safetensors").exists()


def test_the_cli_shows_no_http_request_lines(hub, tmp_path):
    """perceiver-convert showed INFO logs of every logger: httpx's line per HTTP request reached the user, among
    them a 404 that huggingface_hub expects, which reads like an error. What it logs itself still shows."""
    out = subprocess.run([sys.executable, "-m", "converters", "language", "--from-transformers", REPO,
                          "-o", str(tmp_path / "o.safetensors")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "HTTP Request" not in out.stderr
    assert "perceiver-convert: " in out.stderr  # its own INFO lines (what it reads) are still shown


@pytest.mark.parametrize("owner", ["deepmind", "someone"])
def test_a_deepmind_repos_own_spelling_of_the_imagenet_names_is_not_kept(tmp_path, monkeypatch, owner):
    """DeepMind's repos hold the release: the released names apply, so the transformers route writes what the
    Haiku route writes; another owner's 1000 names are that owner's fine-tune's, kept."""
    names = [f"synset {i}" for i in range(1000)]
    model = save_small("PerceiverForImageClassificationFourier", tmp_path / "model", num_labels=1000,
                       id2label=dict(enumerate(names)))
    repo = f"{owner}/vision-perceiver-fourier"
    commit = standin_repo(tmp_path / "hub", repo, model)
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache"):
        path = from_transformers("imagenet", repo, tmp_path / "ours.safetensors", revision=commit)
    kept = METADATA_KEY in read_metadata(path)
    assert kept == (owner != "deepmind")
    assert load_model(path).labels == (tuple(names) if kept else imagenet_labels())

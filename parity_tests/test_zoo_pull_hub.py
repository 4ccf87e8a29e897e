"""`perceiver-zoo pull hf-hub:owner/name`: a user's Hub repo downloaded into the Hub cache as `create_model` downloads
it (bounded, its header checked before its body, the body against its sha256), not loaded; and
what pull refuses, as one line or a usage error. Against the Hub stand-in."""

from __future__ import annotations

import os
import re

import huggingface_hub
import pytest
import safetensors.torch
import torch

import perceiver_torch as pt
from perceiver_torch.hashing import sha256_file
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import assert_same_weights, seeded_model
from .zoo_support import TEST_MANIFEST, cached_files, hub_env

TOKEN = "test-write-token"
REPO = "someone/fine-tuned-lm"


def test_pull_puts_a_hub_repos_checkpoint_in_the_cache_for_offline_loads(tmp_path, monkeypatch, capsys):
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        commit = pt.push_to_hub(model, REPO, token=TOKEN)
        pt.push_to_hub(seeded_model("language", seed=1).eval(), REPO, token=TOKEN, revision="dev")
        assert zoo_cli(["pull", f"hf-hub:{REPO}"]) == 0
        out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    found = re.fullmatch(rf"hf-hub:{REPO}: commit {commit}, sha256 ([0-9a-f]{{64}}) \(its bytes checked against it; "
                         r"not verified by the zoo\)", out[0])
    assert found, out[0]
    assert sha256_file(out[1]) == found.group(1)
    assert out[1].startswith(str(tmp_path / "cache")) and out[1].endswith(f"{commit}/model.safetensors")
    assert_same_weights(pt.load_model(out[1]), model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what pull is for: a later load needs no network
    assert_same_weights(pt.create_model(f"hf-hub:{REPO}"), model)


def test_pull_takes_a_revision_and_the_endpoint_option(tmp_path, monkeypatch, capsys):
    first, second = seeded_model("language", seed=0).eval(), seeded_model("language", seed=1).eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        one = pt.push_to_hub(first, REPO, token=TOKEN)
        pt.push_to_hub(second, REPO, token=TOKEN)
        monkeypatch.delenv("HF_ENDPOINT")
        assert zoo_cli(["pull", f"hf-hub:{REPO}", "--revision", one, "--endpoint", hub.endpoint]) == 0
    path = capsys.readouterr().out.splitlines()[1]
    assert_same_weights(pt.load_model(path), first)


def test_a_file_that_is_no_checkpoint_of_ours_is_refused_before_its_body(tmp_path, monkeypatch, capsys):
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN)  # the repo, then a bare state dict in it
        bare = safetensors.torch.save({"w": torch.zeros(4)})
        hub.write_commit(REPO, hub.resolve(REPO, "main"), {"model.safetensors": bare}, "replace")
        assert zoo_cli(["pull", f"hf-hub:{REPO}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"perceiver-zoo: error: hf-hub:{REPO}@") and "bare state dict" in err
    assert [p for p in cached_files(tmp_path / "cache") if "blobs" in p] == []


def test_a_cached_file_that_is_no_checkpoint_of_ours_is_refused_too(tmp_path, monkeypatch, capsys):
    """pull checked the header only before a download: a file huggingface_hub had cached (here a bare state dict)
    was reported pulled, exit 0, by commit or by branch; the same file uncached was refused."""
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN) as hub:
        pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN)
        bare = safetensors.torch.save({"w": torch.zeros(4)})
        commit = hub.write_commit(REPO, hub.resolve(REPO, "main"), {"model.safetensors": bare}, "replace")
        huggingface_hub.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "cache", endpoint=hub.endpoint)
        for revision in (commit, "main"):
            capsys.readouterr()
            assert zoo_cli(["pull", f"hf-hub:{REPO}", "--revision", revision]) == 1, revision
            err = capsys.readouterr().err
            assert "has no perceiver-torch metadata" in err and err.count("\n") == 1, err


def test_a_private_repo_without_a_token_is_one_line(tmp_path, monkeypatch, capsys):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN, private=True)
        assert zoo_cli(["pull", f"hf-hub:{REPO}"]) == 1
        assert capsys.readouterr().err.count("no such repo, or it is private and no token was sent") == 1
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert zoo_cli(["pull", f"hf-hub:{REPO}"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["pull", "hf-hub:a/b", "--mirror", "m"], "--mirror applies to zoo models; 'hf-hub:a/b' is a Hub repo"),
    (["pull", "tiny-language-perceiver", "--revision", "main"], "--revision applies to hf-hub: repos"),
    (["pull", "someone/lm"], "MODEL must be a zoo name (perceiver-zoo list) or hf-hub:owner/name; got 'someone/lm'; "
                             "a Hub repo is named hf-hub:someone/lm"),
    (["pull", "./lm.safetensors"], "MODEL must be a zoo name (perceiver-zoo list) or hf-hub:owner/name; got "
                                   "'./lm.safetensors'"),
    (["pull", "\x1b[2J.safetensors"], "got '\\x1b[2J.safetensors'"),
    (["pull", "hf-hub:a/b", "--endpoint", ""], "--endpoint must not be empty"),
])
def test_pull_refuses_options_and_names_that_do_not_apply_as_usage_errors(argv, message, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing is asked of any server
    with pytest.raises(SystemExit) as stopped:
        zoo_cli(["--manifest", str(TEST_MANIFEST), *argv])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and "\x1b" not in err


@pytest.mark.parametrize("argv, message", [
    (["pull", "hf-hub:a/../b"], "'hf-hub:a/../b': expected 'hf-hub:owner/name'"),
    (["pull", "hf-hub:a/b", "--revision", "../main"], "revision must be a branch, tag or commit id"),
])
def test_pull_refuses_a_malformed_repo_or_revision_in_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert zoo_cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("perceiver-zoo: error: ") and err.count("\n") == 1 and message in err


def test_pull_from_a_cache_without_links_says_there_is_no_sha256_to_check_by(tmp_path, monkeypatch, capsys):
    """Where the cache holds files, not links to hash-named blobs (huggingface_hub on a file system without
    symlinks), pull printed the file's own name as its sha256."""
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        commit = pt.push_to_hub(seeded_model("language").eval(), REPO, token=TOKEN)
        assert zoo_cli(["pull", f"hf-hub:{REPO}"]) == 0
        path = capsys.readouterr().out.splitlines()[1]
        data = open(path, "rb").read()
        os.remove(path)  # the link; a copy of its blob in its place
        with open(path, "wb") as f:
            f.write(data)
        assert zoo_cli(["pull", f"hf-hub:{REPO}", "--revision", commit]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"hf-hub:{REPO}: commit {commit}, no sha256 to check it by (a cache without links names no blob "
                     "by it; not verified by the zoo)")

"""A safetensors file without perceiver-torch metadata: load_model's refusal says what reads it, and the advice
works when followed. A transformers Perceiver (directory, its model.safetensors or config.json, a Hub repo) is
converted with `perceiver-convert TASK --from-transformers`; a bare state dict is loaded into a built model."""

from __future__ import annotations

import os
import re
import shlex

import pytest
import safetensors.torch
import torch

import perceiver_torch as pt
from converters.cli import main as convert_main
from parity_tests.transformers_support import save_small, standin_repo
from perceiver_torch.foreign_checkpoints import MAX_CONFIG_BYTES
from perceiver_torch.registry import build_model
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import assert_same_weights, golden_config
from .zoo_support import hub_env, returns_within

CONVERT = re.compile(r"`(perceiver-convert [^`]+)`")


def _advised(message: str) -> list[str]:
    """The perceiver-convert arguments the refusal gives (its OUT replaced by a name of the test's)."""
    found = CONVERT.search(message)
    assert found, message
    return shlex.split(found.group(1))[1:]


def _follow(message: str, out) -> torch.nn.Module:
    args = [str(out) if a == "OUT.safetensors" else a for a in _advised(message)]
    assert convert_main(args) == 0
    return pt.load_model(out)


@pytest.fixture
def hf_dir(tmp_path):
    return save_small("PerceiverForMaskedLM", tmp_path / "my transformers model")  # a space: the advice quotes it


@pytest.mark.parametrize("load", [
    lambda d: pt.load_model(d),
    lambda d: pt.load_model(d / "model.safetensors"),
    lambda d: pt.load_model(d / "config.json"),
    lambda d: pt.PerceiverForMaskedLM.from_pretrained(d),
    lambda d: pt.PerceiverForMaskedLM.from_pretrained(d / "model.safetensors"),
], ids=["directory", "its-model-safetensors", "its-config-json", "from_pretrained-directory", "from_pretrained-file"])
def test_a_transformers_directory_is_advised_perceiver_convert_from_transformers(hf_dir, tmp_path, load):
    with pytest.raises(pt.CheckpointFormatError) as refused:
        load(hf_dir)
    message = str(refused.value)
    assert "transformers Perceiver" in message and "\n" not in message
    assert _advised(message) == ["language", "--from-transformers", str(hf_dir), "-o", "OUT.safetensors"]
    model = _follow(message, tmp_path / "converted.safetensors")
    assert isinstance(model, pt.PerceiverForMaskedLM)


def test_the_cli_gives_the_same_advice_in_one_line(hf_dir, capsys):
    assert zoo_cli(["info", str(hf_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"perceiver-convert language --from-transformers {shlex.quote(str(hf_dir))} -o OUT.safetensors" in err


def test_a_transformers_hub_repo_is_advised_its_repo_and_commit(tmp_path, monkeypatch):
    repo = "deepmind-test/language-perceiver"
    commit = standin_repo(tmp_path / "hub", repo, save_small("PerceiverForMaskedLM", tmp_path / "model"))
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache"):
        with pytest.raises(pt.CheckpointFormatError) as refused:
            pt.create_model(f"hf-hub:{repo}")
        message = str(refused.value)
        assert _advised(message) == ["TASK", "--from-transformers", repo, "--revision", commit, "-o",
                                     "OUT.safetensors"]
        assert "TASK: one of language, imagenet, optical_flow, video_autoencoding" in message
        args = ["language" if a == "TASK" else a for a in _advised(message)]
        assert convert_main([str(tmp_path / "c.safetensors") if a == "OUT.safetensors" else a for a in args]) == 0
    assert isinstance(pt.load_model(tmp_path / "c.safetensors"), pt.PerceiverForMaskedLM)


def test_a_bare_state_dict_is_advised_build_load_state_dict_save_model(tmp_path):
    model = build_model("language", golden_config("language")).eval()
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    with pytest.raises(pt.CheckpointFormatError) as refused:
        pt.load_model(path)
    message = str(refused.value)
    assert "found [])" in message and "bare state dict" in message and "perceiver-convert" not in message
    for step in ("build_model(task, config)", "load_state_dict(safetensors.torch.load_file(path))",
                 "save_model(model, path)"):
        assert step in message
    rebuilt = build_model("language", golden_config("language"))  # the advice, followed
    rebuilt.load_state_dict(safetensors.torch.load_file(path))
    pt.save_model(rebuilt, path)
    assert_same_weights(pt.load_model(path), model)


def test_a_state_dict_of_transformers_names_without_its_config_is_advised_to_convert_its_directory(hf_dir, tmp_path):
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(pt.CheckpointFormatError, match=r"tensor names are a transformers Perceiver's: convert its "
                                                       r"save_pretrained directory .*`perceiver-convert TASK "
                                                       "--from-transformers DIR_OR_REPO -o OUT.safetensors`"):
        pt.load_model(lone)


@pytest.mark.parametrize("config_json", [
    b"{not json", b"[1, 2]", b'{"model_type": "bert"}', b'{"model_type": "perceiver", "x": "' + b"a" * MAX_CONFIG_BYTES
    + b'"}',
], ids=["not-json", "not-an-object", "another-model", "too-big"])
def test_a_config_json_that_is_no_transformers_perceivers_is_not_taken_for_one(tmp_path, config_json):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, path, metadata={"format": "pt"})
    (tmp_path / "config.json").write_bytes(config_json)
    with pytest.raises(pt.CheckpointFormatError, match="bare state dict") as refused:
        pt.load_model(path)
    assert "--from-transformers" not in str(refused.value)
    with pytest.raises(pt.CheckpointFormatError, match="is a directory, not a safetensors file") as refused:
        pt.load_model(tmp_path)
    assert "--from-transformers" not in str(refused.value)


def test_hostile_metadata_keys_are_shown_bounded_and_escaped(tmp_path):
    path = tmp_path / "keys.safetensors"
    keys = {f"k{i:03}\x1b[2J" + "x" * 100: "v" for i in range(50)}
    safetensors.torch.save_file({"x": torch.zeros(2)}, path, metadata=keys)
    with pytest.raises(pt.CheckpointFormatError) as refused:
        pt.load_model(path)
    message = str(refused.value)
    assert "\x1b" not in message and "\\x1b" in message and "... (50 keys)" in message and len(message) < 1500


def test_incomplete_perceiver_torch_metadata_is_named_as_damaged(tmp_path):
    path = tmp_path / "damaged.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, path, metadata={"format": "perceiver-torch", "task": "language"})
    with pytest.raises(pt.CheckpointFormatError, match=r"found \['format', 'task'\]\); its perceiver-torch metadata "
                                                       "is incomplete"):
        pt.load_model(path)


def test_a_config_json_that_is_a_fifo_is_not_waited_on(tmp_path):
    """The advice read config.json with a blocking open: a FIFO of that name hung load_model and
    `perceiver-zoo info` forever. It is not a transformers config; the refusal comes at once."""
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, path, metadata={"format": "pt"})
    os.mkfifo(tmp_path / "config.json")

    def refusal(target) -> str:
        with pytest.raises(pt.CheckpointFormatError) as refused:
            pt.load_model(target)
        return str(refused.value)

    assert "bare state dict" in returns_within(lambda: refusal(path), tmp_path / "config.json", 10)
    assert "not a safetensors file" in returns_within(lambda: refusal(tmp_path), tmp_path / "config.json", 10)


def test_a_config_json_naming_only_the_model_type_is_a_transformers_perceivers(tmp_path):
    """model_type 'perceiver' without architectures (as a hand-written or older config): still transformers'."""
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"perceiver.embeddings.latents": torch.zeros(2, 2)}, path, metadata={"format": "pt"})
    (tmp_path / "config.json").write_text('{"model_type": "perceiver"}')
    with pytest.raises(pt.CheckpointFormatError, match=r"--from-transformers .*\(TASK: one of"):
        pt.load_model(tmp_path)

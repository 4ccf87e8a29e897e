"""`perceiver-zoo info MODEL` for a Hub repo or a file: what its header says (task, class, parameter count,
provenance metadata, config), as YAML, with nothing of its body downloaded or read."""

from __future__ import annotations

import pytest
import yaml

import perceiver_torch as pt
from perceiver_torch.serialization import read_metadata
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import convert_golden, seeded_model
from .zoo_support import cached_files, hub_env

TOKEN = "test-write-token"


def _shown(capsys) -> tuple[str, dict]:
    out = capsys.readouterr().out
    (name, found), = yaml.safe_load(out).items()
    return name, found


def test_a_converted_file_shows_its_header_with_its_provenance(tmp_path, capsys):
    path = convert_golden("imagenet", "imagenet_conv", tmp_path)
    model = pt.load_model(path)
    assert zoo_cli(["info", str(path)]) == 0
    name, found = _shown(capsys)
    meta = read_metadata(path)
    assert name == str(path) and found["task"] == "imagenet" and found["class"] == "PerceiverForImageClassification"
    assert found["parameters"] == sum(p.numel() for p in model.parameters())
    assert found["config"] == model.config
    assert found["metadata"] == {k: v for k, v in meta.items() if k not in ("format", "task", "config")}
    assert found["metadata"], "a converted file records its provenance"


def test_an_hf_hub_repo_shows_its_header_without_downloading_the_body(tmp_path, monkeypatch, capsys):
    model = seeded_model("language").eval()
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token=TOKEN):
        first = pt.push_to_hub(model, "someone/lm", token=TOKEN)
        pt.push_to_hub(seeded_model("language", seed=1), "someone/lm", token=TOKEN)
        assert zoo_cli(["info", "hf-hub:someone/lm", "--revision", first]) == 0
        out = capsys.readouterr().out
    (name, found), = yaml.safe_load(out).items()
    assert name == "hf-hub:someone/lm" and found["revision"] == found["commit"] == first
    assert found["class"] == "PerceiverForMaskedLM" and found["config"] == model.config
    assert found["parameters"] == sum(p.numel() for p in model.parameters())
    assert out.splitlines()[-1] == f"# not verified by the zoo; load it with perceiver_torch.create_model(" \
                                   f"'hf-hub:someone/lm', revision='{first}')"
    assert cached_files(tmp_path / "cache") == []  # the header came from two range requests


@pytest.mark.parametrize("argv, message", [
    (["info", "tiny-language-perceiver", "--revision", "main"], "--revision applies to hf-hub: repos; "
                                                                "'tiny-language-perceiver' is a zoo name"),
    (["info", "tiny-language-perceiver", "--endpoint", "http://127.0.0.1:9"], "--endpoint applies to hf-hub: repos"),
    (["info", "./x.safetensors", "--endpoint", "http://127.0.0.1:9"], "--endpoint applies to hf-hub: repos; "
                                                                      "'./x.safetensors' is a file"),
])
def test_options_that_do_not_apply_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        zoo_cli(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_file_it_cannot_read_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    for given, message in ((tmp_path / "missing.safetensors", "no such file (MODEL is a zoo name"),
                           (tmp_path / "notes.safetensors", "notes.safetensors"), (tmp_path, "is a directory without a "
                                                                                     "model.safetensors")):
        assert zoo_cli(["info", str(given)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("perceiver-zoo: error: ") and message in err and err.count("\n") == 1, err

"""Hostile transformers checkpoints are refused with the offending paths named, and nothing is written."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from converters import from_transformers, to_transformers
from converters.cli import main as convert_main
from converters.rules import ConversionError
from converters.transformers.config_map import ConfigMismatchError
from converters.transformers.export_cli import main as export_main
from converters.transformers.exporter import ExportError
from converters.transformers.source import TransformersSourceError
from parity_tests.sandbox import run_isolated
from parity_tests.transformers_support import save_small
from parity_tests.zoo_support import hub_env
from perceiver_torch import CheckpointFormatError, load_model, push_to_hub
from perceiver_torch.config_schema import ConfigError
from perceiver_torch.serialization import read_metadata

LEARNED = "PerceiverForImageClassificationLearned"


@pytest.fixture
def learned(tmp_path):
    return save_small(LEARNED, tmp_path / "hf")


def _edit_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_config(directory, edit):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _refused(tmp_path, directory, error, *needles, task="imagenet"):
    out = tmp_path / "out.safetensors"
    with pytest.raises(error) as info:
        from_transformers(task, directory, out)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return str(info.value)


def test_unknown_tensor_is_named(tmp_path, learned):
    _edit_weights(learned, lambda t: t.update({"perceiver.extra.weight": torch.zeros(3)}))
    _refused(tmp_path, learned, ConversionError, "unused in checkpoint: perceiver.extra.weight (3,)")


def test_missing_tensor_is_named_with_its_target(tmp_path, learned):
    _edit_weights(learned, lambda t: t.pop("perceiver.decoder.decoder.final_layer.bias"))
    _refused(tmp_path, learned, ConversionError,
             "missing in checkpoint: perceiver.decoder.decoder.final_layer.bias (needed for decoder.output.bias)")


def test_wrong_shape_names_both_sides(tmp_path, learned):
    key = "perceiver.encoder.cross_attention.mlp.dense1.weight"
    _edit_weights(learned, lambda t: t.update({key: torch.zeros(32, 31)}))
    _refused(tmp_path, learned, ConversionError, f"shape mismatch: checkpoint {key}", "(32, 31)",
             "encoder.cross_attend.mlp.dense1.weight", "model expects (32, 32)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_import_widened_exactly(tmp_path, learned, caplog, dtype):
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_bytes((learned / "config.json").read_bytes())
    original = load_file(str(learned / "model.safetensors"))
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in original.items()}
    save_file(tensors, str(half / "model.safetensors"), metadata={"format": "pt"})
    # The same values in float32 (every float16 and bfloat16 value is a float32 value).
    _edit_weights(learned, lambda t: t.update({k: v.float() for k, v in tensors.items() if v.is_floating_point()}))
    with caplog.at_level("INFO", logger="converters.transformers.source"):
        got = load_file(str(from_transformers("imagenet", half, tmp_path / "half.safetensors")))
    assert f"widening {str(dtype).removeprefix('torch.')} weights to float32, exactly" in caplog.text
    want = load_file(str(from_transformers("imagenet", learned, tmp_path / "float32.safetensors")))
    assert got.keys() == want.keys()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, learned, dtype):
    key = "perceiver.embeddings.latents"
    _edit_weights(learned, lambda t: t.update({key: t[key].to(dtype)}))
    message = _refused(tmp_path, learned, TransformersSourceError, "expected floating-point weights (float32, "
                       f"float16, bfloat16 or float64); found {key} ({str(dtype).removeprefix('torch.')})")
    assert "\n" not in message


def test_float64_weights_are_rounded_to_float32_with_a_warning_as_a_haiku_checkpoints(tmp_path, learned, caplog):
    """The transformers route refused float64 outright, where the Haiku route rounds it with a warning."""
    key = "perceiver.embeddings.latents"
    want = load_file(str(from_transformers("imagenet", learned, tmp_path / "float32.safetensors")))
    _edit_weights(learned, lambda t: t.update({key: t[key].double() + 1e-12}))  # rounds back to the float32 values
    with caplog.at_level("WARNING", logger="converters.rules"):
        got = load_file(str(from_transformers("imagenet", learned, tmp_path / "float64.safetensors")))
    assert "converting float64 values to float32" in caplog.text
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)
    _edit_weights(learned, lambda t: t.update({key: torch.full_like(t[key], 1e300)}))  # overflows float32
    with pytest.raises(ConversionError, match="NaN|Inf|finite"):
        from_transformers("imagenet", learned, tmp_path / "overflow.safetensors")


@pytest.mark.parametrize(("edit", "error", "needle"), [
    (lambda c: c.update(hidden_act="relu"), ConfigMismatchError, "hidden_act is 'relu'"),
    (lambda c: c.update(architectures=["PerceiverForOpticalFlow"]), ConfigMismatchError,
     "names PerceiverForOpticalFlow, a optical_flow model, not imagenet"),
    (lambda c: c.update(model_type="bert"), ConfigMismatchError, "model_type is 'bert'"),
    (lambda c: c.pop("num_latents"), ConfigMismatchError, "num_latents"),
    # fields that contradict the weights: the perceiver_torch key (which agrees with the weights) does not rescue them
    (lambda c: c.update(num_latents=99), ConversionError, "perceiver.embeddings.latents"),
])
def test_config_that_does_not_match_is_refused(tmp_path, learned, edit, error, needle):
    converted = from_transformers("imagenet", learned, tmp_path / "first.safetensors")
    exported = to_transformers(converted, tmp_path / "exported")
    _edit_config(exported, edit)
    _refused(tmp_path, exported, error, needle)


def test_own_config_that_the_fields_contradict_is_not_used(tmp_path, learned, caplog):
    """transformers' fields win over a stale perceiver_torch key (a model changed in transformers after export)."""
    exported = to_transformers(from_transformers("imagenet", learned, tmp_path / "first.safetensors"),
                               tmp_path / "exported")
    _edit_config(exported, lambda c: c["perceiver_torch"]["config"]["encoder"].update(z_index_dim=99))
    with caplog.at_level("WARNING", logger="converters.transformers.config_map"):
        back = from_transformers("imagenet", exported, tmp_path / "back.safetensors")
    assert json.loads(read_metadata(back)["config"])["encoder"]["z_index_dim"] == 8
    assert "config.json num_latents is 8; PerceiverForImageClassificationLearned with this config has 99" in caplog.text


def test_task_that_the_checkpoint_is_not(tmp_path, learned):
    _refused(tmp_path, learned, ConfigMismatchError, "a imagenet model, not language", task="language")


def test_missing_files_are_named(tmp_path, learned):
    (learned / "model.safetensors").unlink()
    _refused(tmp_path, learned, TransformersSourceError, "none of ['model.safetensors', 'pytorch_model.bin']")
    _refused(tmp_path, tmp_path / "nowhere", TransformersSourceError, "neither a directory nor a Hub repo id")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_that_tries_to_run_code_is_refused_in_a_sandbox(tmp_path, learned):
    """A pytorch_model.bin (torch zip) whose pickle REDUCEs os.system: torch.load(weights_only=True) refuses it."""
    marker = tmp_path / "pwned"
    (learned / "model.safetensors").unlink()
    torch.save({"perceiver.embeddings.latents": _RunsCode(marker)}, learned / "pytorch_model.bin")
    out = tmp_path / "out.safetensors"
    result = run_isolated(f"""
        from converters import from_transformers
        from_transformers("imagenet", {str(learned)!r}, {str(out)!r})
    """, timeout_s=120)
    assert result.error_type == "converters.transformers.source.TransformersSourceError", result.describe()
    assert "weights_only" in result.error_message and "pytorch_model.bin" in result.error_message
    # torch's reason is kept (the global it refused), its advice to load with weights_only=False dropped
    assert re.search(r"GLOBAL (posix|nt|os)\.system", result.error_message), result.error_message
    assert "set to `False`" not in result.error_message and "add_safe_globals" not in result.error_message
    assert not marker.exists() and not out.exists()


def test_plain_bin_checkpoint_imports_like_safetensors(tmp_path, learned):
    reference = load_file(str(from_transformers("imagenet", learned, tmp_path / "a.safetensors")))
    torch.save(load_file(str(learned / "model.safetensors")), learned / "pytorch_model.bin")
    (learned / "model.safetensors").unlink()
    again = load_file(str(from_transformers("imagenet", learned, tmp_path / "b.safetensors")))
    assert reference.keys() == again.keys() and all(torch.equal(reference[k], again[k]) for k in reference)


def test_export_refuses_a_non_empty_directory(tmp_path, learned):
    converted = from_transformers("imagenet", learned, tmp_path / "ours.safetensors")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty directory"):
        to_transformers(converted, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(ExportError, match="a-file is a file; the output is a directory"):
        to_transformers(converted, tmp_path / "a-file")
    with pytest.raises(ExportError, match="the output directory path is empty"):  # not the working directory
        to_transformers(converted, "")
    assert (tmp_path / "a-file").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_clis_report_errors_without_traceback(tmp_path, learned, capsys):
    _edit_weights(learned, lambda t: t.pop("perceiver.embeddings.latents"))
    assert convert_main(["imagenet", "--from-transformers", str(learned), "-o", str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("perceiver-convert: error:") and "perceiver.embeddings.latents" in err
    assert "Traceback" not in err and not (tmp_path / "o.safetensors").exists()
    assert export_main([str(learned / "config.json"), "-o", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("perceiver-to-transformers: error:")
    for argv in (["imagenet", "ckpt.pickle", "--from-transformers", str(learned), "-o", "o"],
                 ["imagenet", "ckpt.pickle", "--preset", "imagenet_conv_preprocessing", "--revision", "r", "-o", "o"]):
        with pytest.raises(SystemExit) as info:
            convert_main(argv)
        assert info.value.code == 2


def test_export_takes_a_save_pretrained_directory_and_an_hf_hub_repo(tmp_path, learned, monkeypatch, capsys):
    """perceiver-to-transformers read a file only: a save_pretrained directory was refused with advice for Python,
    and an hf-hub: repo as 'No such file'; every other CLI takes both."""
    model = load_model(from_transformers("imagenet", learned, tmp_path / "o.safetensors"))
    model.save_pretrained(tmp_path / "saved")
    assert export_main([str(tmp_path / "saved"), "-o", str(tmp_path / "from-dir")]) == 0
    with hub_env(monkeypatch, tmp_path / "hub", tmp_path / "cache", token="test-write-token"):
        commit = push_to_hub(model, "someone/learned", token="test-write-token")
        assert export_main(["hf-hub:someone/learned", "--revision", commit, "-o", str(tmp_path / "from-hub")]) == 0
        push_to_hub(load_model(from_transformers("imagenet", save_small(LEARNED, tmp_path / "other", seed=1),
                                                 tmp_path / "other.safetensors")), "someone/learned",
                    token="test-write-token")  # main moves on: @COMMIT must still give the first
        assert export_main([f"hf_hub:someone/learned@{commit}", "-o", str(tmp_path / "from-at")]) == 0
        at = load_file(str(tmp_path / "from-at" / "model.safetensors"))
        hub_export = load_file(str(tmp_path / "from-hub" / "model.safetensors"))
        assert at.keys() == hub_export.keys() and all(torch.equal(at[k], hub_export[k]) for k in at)
    want = load_file(str(tmp_path / "from-dir" / "model.safetensors"))
    got = load_file(str(tmp_path / "from-hub" / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(SystemExit) as usage:
        export_main([str(tmp_path / "o.safetensors"), "--revision", "main", "-o", str(tmp_path / "x")])
    assert usage.value.code == 2 and "--revision applies to hf-hub:owner/name repos only" in capsys.readouterr().err


def test_clis_convert_and_export(tmp_path, learned, capsys):
    assert convert_main(["imagenet", "--from-transformers", str(learned), "-o", str(tmp_path / "o.safetensors")]) == 0
    assert export_main([str(tmp_path / "o.safetensors"), "-o", str(tmp_path / "exported")]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [f"wrote {tmp_path / 'o.safetensors'}",
                                                          f"wrote {tmp_path / 'exported'}"]
    assert load_file(str(tmp_path / "exported" / "model.safetensors")).keys() == \
        load_file(str(learned / "model.safetensors")).keys()


def test_export_checks_the_converted_file_like_load_model(tmp_path, learned):
    # A converted file whose weights were tampered with (NaN) is refused before anything is written.
    converted = tmp_path / "ours.safetensors"
    from_transformers("imagenet", learned, converted)
    with safe_open(str(converted), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(converted)
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(converted), metadata=metadata)
    with pytest.raises(CheckpointFormatError, match=name):
        to_transformers(converted, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["model.safetensors", "config.json", "link"])
def test_output_that_is_the_source_is_refused(tmp_path, learned, capsys, target):
    # `-o DIR/model.safetensors` used to replace the very weights it was converting (config.json likewise).
    before = {p.name: p.read_bytes() for p in learned.iterdir()}
    out = learned / target
    if target == "link":
        out = tmp_path / "link.safetensors"
        out.symlink_to(learned / "model.safetensors")
    assert convert_main(["imagenet", "--from-transformers", str(learned), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    what = "config" if target == "config.json" else "weights"
    assert "Traceback" not in err and f"output {out} is the source's {what} " in err, err
    assert {p.name: p.read_bytes() for p in learned.iterdir()} == before


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("d_model", "32", "d_model: found '32' (str); expected a positive integer"),
    ("num_labels", [3], "num_labels: found [3] (list); expected a positive integer"),
    ("num_labels", "abc", "num_labels: found 'abc' (str); expected a positive integer"),
    ("num_latents", 8.0, "num_latents: found 8.0 (float); expected a positive integer"),
    ("image_size", None, "image_size: found None (NoneType); expected a positive integer"),
    ("train_size", 5, "train_size: found 5 (int); expected a list of 2 positive integers"),
    ("output_shape", 7, "output_shape: found 7 (int); expected a list of 4 positive integers"),
    ("use_query_residual", 1, "use_query_residual: found 1 (int); expected true or false"),
])
def test_config_fields_of_the_wrong_type_are_named_with_the_file(tmp_path, learned, capsys, field, value, expected):
    # Each used to be a traceback (TypeError, AttributeError) or a path-less "invalid literal for int()".
    _edit_config(learned, lambda c: c.update({field: value}))
    message = _refused(tmp_path, learned, ConfigError, expected)
    assert message.startswith(f"{learned / 'config.json'} is not a valid config"), message
    assert convert_main(["imagenet", "--from-transformers", str(learned), "-o", str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err


def test_own_config_in_an_export_is_checked_against_the_schema(tmp_path, learned):
    converted = from_transformers("imagenet", learned, tmp_path / "first.safetensors")
    exported = to_transformers(converted, tmp_path / "exported")
    _edit_config(exported, lambda c: c["perceiver_torch"]["config"].pop("encoder"))  # was KeyError 'encoder'
    message = _refused(tmp_path, exported, ConfigError, "encoder: missing")
    assert message.startswith(f"{exported / 'config.json'} perceiver_torch.config is not a valid config"), message


def test_mismatches_name_the_config_file(tmp_path, learned):
    _edit_config(learned, lambda c: c.update(model_type="bert"))
    message = _refused(tmp_path, learned, ConfigMismatchError, "model_type is 'bert'")
    assert message.startswith(f"{learned / 'config.json'}: cannot import"), message


def test_config_nested_too_deep_to_parse_is_refused(tmp_path, learned):
    (learned / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError traceback before
    _refused(tmp_path, learned, TransformersSourceError, "config.json is not valid JSON")


def test_config_with_a_duplicate_key_is_refused(tmp_path, learned):
    # json.loads alone kept the last of the two values: transformers and we could read different models.
    text = (learned / "config.json").read_text().rstrip()
    (learned / "config.json").write_text(text[:-1].rstrip() + ', "d_model": 8}')
    _refused(tmp_path, learned, TransformersSourceError, "config.json is not valid JSON: duplicate key 'd_model'")


@pytest.mark.parametrize("case", ["under_a_file", "symlink_to_empty_dir"])
def test_export_to_an_unusable_path_is_reported_without_traceback(tmp_path, learned, capsys, case):
    # FileExistsError / NotADirectoryError tracebacks before.
    converted = from_transformers("imagenet", learned, tmp_path / "ours.safetensors")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    out, expected = {"under_a_file": (tmp_path / "a_file" / "sub" / "dir", f"{tmp_path / 'a_file'} is not a directory"),
                     "symlink_to_empty_dir": (tmp_path / "link", "is a symbolic link")}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert export_main([str(converted), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("perceiver-to-transformers: error:") and expected in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not any((tmp_path / "empty").iterdir())


def test_failed_export_removes_the_parent_directories_it_created(tmp_path, learned, monkeypatch):
    import converters.transformers.exporter as exporter

    converted = from_transformers("imagenet", learned, tmp_path / "ours.safetensors")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(exporter, "save_file", full_disk)
    with pytest.raises(ExportError, match="No space left on device"):
        to_transformers(converted, tmp_path / "new" / "a" / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours.safetensors"]

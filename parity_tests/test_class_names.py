"""A classifier's own class names: set in code, written by save_model, read back by load_model (checked as the
hostile input a file is), used by labels/classify/top_labels; a file without them reads as before."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import perceiver_torch as pt
from perceiver_torch.class_names import MAX_FIELD_BYTES, MAX_NAME_CHARS, METADATA_KEY
from perceiver_torch.safetensors_io import read_header, write_safetensors
from perceiver_torch.serialization import read_metadata, save_checkpoint
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import seeded_model

NAMES = ("cat", "dog", "bird")


def _classifier(num_classes: int = 3) -> pt.PerceiverForImageClassification:
    model = seeded_model("imagenet_conv").eval()
    model.reset_classifier(num_classes)
    return model


def _named(num_classes: int = 3, names=NAMES) -> pt.PerceiverForImageClassification:
    model = _classifier(num_classes)
    model.class_names = names
    return model


def _with_field(tmp_path, value: str, model: torch.nn.Module | None = None):
    """A file of `model` (a 3-class classifier) whose metadata holds `value` as its class names, written past
    save_model's checks (as a hostile file would be)."""
    saved = pt.save_model(model if model is not None else _classifier(), tmp_path / "plain.safetensors")
    meta = {**read_metadata(saved), METADATA_KEY: value}
    path = tmp_path / "hostile.safetensors"
    write_safetensors(path, load_file(str(saved)), meta)
    return path


def test_names_set_in_code_are_the_labels_classify_gives():
    model = _named()
    assert model.class_names == NAMES and model.labels == NAMES
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    assert {label for label, _ in model.classify(image, k=3)} == set(NAMES)


@pytest.mark.parametrize("family", ["imagenet_conv", "video_autoencoding"])
def test_names_survive_save_model_and_load_model(tmp_path, family):
    model = seeded_model(family)
    names = tuple(f"class {i}" for i in range(model.num_classes))
    model.class_names = list(names)  # any list or tuple; kept as a tuple
    path = pt.save_model(model, tmp_path / "named.safetensors")
    assert json.loads(read_metadata(path)[METADATA_KEY]) == list(names)
    loaded = pt.load_model(path)
    assert loaded.class_names == names and loaded.labels == names
    again = pt.save_model(loaded, tmp_path / "again.safetensors")  # a loaded model keeps them when saved again
    assert again.read_bytes() == path.read_bytes()


def test_video_top_labels_use_the_names():
    model = seeded_model("video_autoencoding")
    model.class_names = [f"action {i}" for i in range(model.num_classes)]
    logits = torch.zeros(1, model.num_classes)
    logits[0, 2] = 5.0
    assert model.top_labels(logits, k=1)[0][0][0] == "action 2"


def test_a_file_without_names_reads_as_before(tmp_path):
    """No field is written for a model without names, and such a file gives indices (or the released names)."""
    path = pt.save_model(_classifier(), tmp_path / "plain.safetensors")
    assert METADATA_KEY not in read_metadata(path)
    loaded = pt.load_model(path)
    assert loaded.class_names is None and loaded.labels == ("0", "1", "2")
    released = _classifier(1000)
    assert pt.load_model(pt.save_model(released, tmp_path / "k.safetensors")).labels == pt.imagenet_labels()


def test_names_in_unicode_are_kept_exactly(tmp_path):
    names = ("chat \N{CAT FACE}", "\u72ac", "caf\u00e9 crane, grue")
    loaded = pt.load_model(pt.save_model(_named(names=names), tmp_path / "u.safetensors"))
    assert loaded.class_names == names


@pytest.mark.parametrize("names, problem", [
    ("cat", r"found 'cat' \(str\); expected a list of strings"),
    (["cat", "dog"], r"found 2 names; the model has 3 classes"),
    (["cat", "dog", 3], r"name 2: found 3 \(int\); expected a string"),
    (["cat", "", "bird"], r"name 1: empty"),
    (["cat", "dog\x1b[2J", "bird"], r"name 1 \(dog\\x1b\[2J\): holds U\+001B, a control character"),
    (["cat", "dog\nbird", "bird"], r"holds U\+000A, a control character"),
    (["cat", "dog\u202egod", "bird"], r"holds U\+202E, a bidirectional-text control"),  # right-to-left override
    (["cat", "d" * (MAX_NAME_CHARS + 1), "bird"], rf"{MAX_NAME_CHARS + 1} characters; expected at most "
                                                   rf"{MAX_NAME_CHARS}"),
], ids=["str", "too-few", "not-a-string", "empty", "escape", "newline", "bidi", "too-long"])
def test_names_that_a_file_could_not_keep_are_refused_when_set(names, problem):
    model = _classifier()
    with pytest.raises(ValueError, match=r"PerceiverForImageClassification.class_names: not usable as the model's "
                                         r"class names \(1 problem\(s\)\)[\s\S]*" + problem):
        model.class_names = names
    assert model.class_names is None


def test_too_many_bytes_in_all_are_refused_when_set():
    count = MAX_FIELD_BYTES // MAX_NAME_CHARS + 1
    model = seeded_model("imagenet_conv", {**seeded_model("imagenet_conv").config, "num_classes": count})
    with pytest.raises(ValueError, match=r"bytes as JSON; expected at most 2,097,152"):
        model.class_names = ["n" * MAX_NAME_CHARS] * count


def test_a_headless_model_has_no_classes_to_name():
    model = _classifier(0)
    with pytest.raises(ValueError, match=r"no classifier \(num_classes 0\), so no classes to name"):
        model.class_names = []


def test_save_model_refuses_names_in_its_metadata_argument(tmp_path):
    with pytest.raises(ValueError, match=r"metadata keys \['class_names'\] are written by save_model itself"):
        pt.save_model(_classifier(), tmp_path / "m.safetensors", metadata={METADATA_KEY: json.dumps(NAMES)})
    assert not (tmp_path / "m.safetensors").exists()


def test_save_checkpoint_refuses_names_a_load_would_refuse(tmp_path):
    model = _classifier()
    with pytest.raises(pt.CheckpointFormatError, match=r"found 2 names; the model has 3 classes"):
        save_checkpoint(model.state_dict(), tmp_path / "c.safetensors", "imagenet", model.config,
                        {METADATA_KEY: '["cat","dog"]'})
    assert not (tmp_path / "c.safetensors").exists()


HOSTILE = {
    "object": ('{"0":"cat","1":"dog","2":"bird"}', r"found \{'0': 'cat', '1': 'dog', '2': 'bird'\} \(dict\); "
                                                    r"expected a list of strings"),
    "string": ('"cat,dog,bird"', r"found 'cat,dog,bird' \(str\); expected a list of strings"),
    "numbers": ("[1,2,3]", r"name 0: found 1 \(int\); expected a string"),
    "not-json": ("cat,dog,bird", r"not valid JSON"),
    "duplicate-key": ('{"a":1,"a":2}', r"not valid JSON \(duplicate key 'a'\)"),
    "nested": ("[" * 100_000 + "]" * 100_000, r"not valid JSON"),
    "too-few": ('["cat","dog"]', r"found 2 names; the model has 3 classes"),
    "too-many": ('["cat","dog","bird","fish"]', r"found 4 names; the model has 3 classes"),
    "escape": ('["cat","\\u001b]0;owned\\u0007","bird"]', r"name 1 \(\\x1b\]0;owned\\x07\): holds U\+001B, a "
                                                          r"control character"),
    "c1-control": ('["cat","dog\\u009b","bird"]', r"holds U\+009B, a control character"),
    "surrogate": ('["cat","\\ud800","bird"]', r"holds U\+D800, a lone surrogate"),
    "bidi": ('["cat","\\u2066dog","bird"]', r"holds U\+2066, a bidirectional-text control"),
    "long-name": (json.dumps(["cat", "d" * 10_000, "bird"]), r"name 1 \(d+\.\.\.\(10000 characters\)\): 10000 "
                                                              r"characters; expected at most 256"),
    "huge": (json.dumps(["cat", "dog", "b" * MAX_FIELD_BYTES]), r": 2,097,\d+ bytes; expected a list of strings"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_names_in_a_file_are_refused_naming_the_file_and_field(tmp_path, case):
    value, problem = HOSTILE[case]
    path = _with_field(tmp_path, value)
    with pytest.raises(pt.CheckpointFormatError) as refused:
        pt.load_model(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: metadata field 'class_names'")
    assert re.search(problem, message), message
    assert "expected a list of strings, one per class in logit order" in message
    assert len(message) < 2000  # a hostile value is shown cut short


def test_names_in_a_file_of_a_task_without_classes_are_refused(tmp_path):
    path = _with_field(tmp_path, '["a"]', seeded_model("language"))
    with pytest.raises(pt.CheckpointFormatError, match=r"metadata field 'class_names': a language model has no "
                                                       r"classes to name"):
        pt.load_model(path)


def test_names_in_a_headless_file_are_refused(tmp_path):
    path = _with_field(tmp_path, "[]", _classifier(0))
    with pytest.raises(pt.CheckpointFormatError, match=r"no classifier \(num_classes 0\)"):
        pt.load_model(path)


def test_zoo_info_refuses_what_a_load_refuses(tmp_path, capsys):
    """Every reader of a header (info, pull, push, create_model's download) checks the names as a load does."""
    path = _with_field(tmp_path, '["cat","dog"]')
    assert zoo_cli(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert "metadata field 'class_names' does not name the model's classes" in err and "Traceback" not in err
    assert read_header(path).metadata[METADATA_KEY] == '["cat","dog"]'  # the file itself is left as it was


def test_an_attribute_of_that_name_on_a_model_without_classes_is_not_written(tmp_path):
    """Only the classifiers' class_names are ours: a user's attribute on a language model is left alone."""
    model = seeded_model("language").eval()
    model.class_names = ["not", "ours"]
    path = pt.save_model(model, tmp_path / "lm.safetensors")
    assert METADATA_KEY not in read_metadata(path) and pt.load_model(path) is not None


@pytest.mark.parametrize("count", [3, 1000])
def test_zoo_info_shows_the_names_as_a_list_the_first_twenty_of_a_long_one(tmp_path, capsys, count):
    names = ["caf\u00e9 \"au lait\""] + [f"class {i}" for i in range(1, count)]
    path = pt.save_model(_named(count, names), tmp_path / "named.safetensors")
    assert zoo_cli(["info", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)[str(path)]["metadata"][METADATA_KEY]
    more = f"... and {count - 20} more (load_model(...).class_names)"
    assert shown == (names if count <= 20 else [*names[:20], more])

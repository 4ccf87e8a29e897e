"""Class names between transformers and our checkpoints: a released label set's names are exported in id2label and
label2id; a head fine-tuned in transformers keeps its id2label names through import, our helpers and export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import transformers

from converters import from_transformers, to_transformers
from converters.cli import main as convert_cli
from parity_tests.transformers_support import save_small
from perceiver_torch import imagenet_labels, load_model
from perceiver_torch.class_names import METADATA_KEY
from perceiver_torch.models.video_autoencoding import kinetics700_labels
from perceiver_torch.serialization import read_metadata

CASES = [("PerceiverForImageClassificationLearned", "imagenet", 1000, imagenet_labels),
         ("PerceiverForMultimodalAutoencoding", "video_autoencoding", 700, kinetics700_labels)]


def _export(architecture: str, task: str, num_labels: int, tmp_path):
    src = save_small(architecture, tmp_path / "hf", num_labels=num_labels)
    converted = from_transformers(task, src, tmp_path / "ours.safetensors")
    return converted, to_transformers(converted, tmp_path / "exported")


@pytest.mark.parametrize(("architecture", "task", "count", "names"), CASES)
def test_released_label_set_is_exported_by_name(tmp_path, architecture, task, count, names):
    converted, exported = _export(architecture, task, count, tmp_path)
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(names())}
    assert load_model(converted).labels == names()  # what our helpers name the logits
    assert all(config["label2id"][name] == names().index(name) for name in names())  # the first, for a name used twice
    model = getattr(transformers, architecture).from_pretrained(str(exported))
    assert model.config.num_labels == count and model.config.id2label[count - 1] == names()[-1]
    back = from_transformers(task, exported, tmp_path / "back.safetensors")
    assert load_model(back).num_classes == count


def test_imagenet_name_used_twice_maps_back_to_its_first_class(tmp_path):
    _, exported = _export(*CASES[0][:3], tmp_path)
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"]["134"] == config["id2label"]["517"] == "crane" and config["label2id"]["crane"] == 134


@pytest.mark.parametrize(("architecture", "task"), [(a, t) for a, t, _, _ in CASES])
def test_other_class_counts_keep_transformers_default_names(tmp_path, architecture, task):
    _, exported = _export(architecture, task, 5, tmp_path)
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(5)}


FINE_TUNED = [("PerceiverForImageClassificationFourier", "imagenet", ("cat", "dog", "bird")),
              ("PerceiverForMultimodalAutoencoding", "video_autoencoding", ("run", "jump", "swim", "sing", "cook",
                                                                            "read", "\u8df3\u821e"))]


@pytest.mark.parametrize(("architecture", "task", "names"), FINE_TUNED)
def test_names_of_a_head_fine_tuned_in_transformers_survive_import_and_export(tmp_path, caplog, architecture, task,
                                                                              names):
    """transformers fine-tune (num_labels, id2label) -> import -> our labels -> export -> transformers' id2label."""
    src = save_small(architecture, tmp_path / "hf", num_labels=len(names), id2label=dict(enumerate(names)))
    with caplog.at_level("WARNING"):
        converted = from_transformers(task, src, tmp_path / "ours.safetensors")
    assert "id2label" not in caplog.text  # nothing is dropped any more
    assert json.loads(read_metadata(converted)[METADATA_KEY]) == list(names)
    model = load_model(converted)
    assert model.class_names == model.labels == names
    exported = to_transformers(converted, tmp_path / "exported")
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(names)}
    assert config["label2id"] == {name: i for i, name in enumerate(names)}
    hf = getattr(transformers, architecture).from_pretrained(str(exported))
    assert [hf.config.id2label[i] for i in range(len(names))] == list(names)
    back = from_transformers(task, exported, tmp_path / "back.safetensors")
    assert load_model(back).class_names == names


def test_an_imported_classifier_classifies_by_name(tmp_path):
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf", num_labels=3,
                     id2label={0: "cat", 1: "dog", 2: "bird"})
    model = load_model(from_transformers("imagenet", src, tmp_path / "ours.safetensors"))
    image = np.random.default_rng(0).integers(0, 256, (240, 260, 3)).astype(np.uint8)
    assert sorted(label for label, _ in model.classify(image, k=3)) == ["bird", "cat", "dog"]


@pytest.mark.parametrize("id2label", [None, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}])
def test_transformers_default_names_are_not_kept(tmp_path, id2label):
    extra = {} if id2label is None else {"id2label": id2label}
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf", num_labels=3, **extra)
    converted = from_transformers("imagenet", src, tmp_path / "ours.safetensors")
    assert METADATA_KEY not in read_metadata(converted)
    assert load_model(converted).labels == ("0", "1", "2")


def test_the_released_names_need_no_field(tmp_path):
    _, exported = _export("PerceiverForImageClassificationFourier", "imagenet", 1000, tmp_path)
    again = from_transformers("imagenet", exported, tmp_path / "again.safetensors")
    assert METADATA_KEY not in read_metadata(again)
    assert load_model(again).labels == imagenet_labels()


def test_other_names_for_the_released_class_count_are_kept(tmp_path):
    names = [f"synset {i}" for i in range(1000)]
    src = save_small("PerceiverForImageClassificationLearned", tmp_path / "hf", num_labels=1000,
                     id2label=dict(enumerate(names)))
    assert load_model(from_transformers("imagenet", src, tmp_path / "ours.safetensors")).labels == tuple(names)


def test_a_name_used_twice_is_kept_and_label2id_maps_it_to_its_first_class(tmp_path, caplog):
    names = ("cat", "dog", "cat")
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf", num_labels=3,
                     id2label=dict(enumerate(names)))
    converted = from_transformers("imagenet", src, tmp_path / "ours.safetensors")
    with caplog.at_level("WARNING", logger="converters.transformers.exporter"):
        exported = to_transformers(converted, tmp_path / "exported")
    assert "1 class name(s) given to more than one class (cat); label2id maps each to its first class" in caplog.text
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "cat"} and config["label2id"] == {"cat": 0, "dog": 1}
    assert load_model(from_transformers("imagenet", exported, tmp_path / "back.safetensors")).class_names == names


def _edited(tmp_path, id2label: dict):
    """A fine-tuned 3-class model whose config.json's id2label is then edited by hand."""
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf", num_labels=3)
    config = json.loads((src / "config.json").read_text())
    config["id2label"] = id2label
    (src / "config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize("id2label, problem", [
    ({"0": "cat", "1": "dog", "5": "bird"}, r"found 3 keys \(0, 1, 5\); expected one for each of the 3 classes, "
                                            r"0 to 2"),
    ({"1": "cat", "2": "dog", "3": "bird"}, r"found 3 keys \(1, 2, 3\); expected one for each of"),
    ({"0": "cat", "1": "dog", "02": "bird"}, r"found 3 keys \(0, 1, 02\); expected one for each of"),
    ({"0": "cat", "1": "dog", "2": 7}, r"name 2: found 7 \(int\); expected a string"),
    ({"0": "cat", "1": "dog\u001b[31m", "2": "bird"}, r"name 1 \(dog\\x1b\[31m\): holds U\+001B"),
    ({"0": "cat", "1": "\u200fdog", "2": "bird"}, r"name 1 .*: holds U\+200F, a bidirectional-text control"),
    ({"0": "cat", "1": "d" * 300, "2": "bird"}, r"name 1 .*: 300 characters; expected at most 256"),
], ids=["gap", "off-by-one", "leading-zero", "not-a-string", "escape", "bidi", "too-long"])
def test_names_a_checkpoint_cannot_keep_are_dropped_with_a_warning_naming_config_json(tmp_path, caplog, id2label,
                                                                                        problem):
    """The weights are what the import is for: names it cannot keep are dropped, each problem named."""
    src = _edited(tmp_path, id2label)
    with caplog.at_level("WARNING", logger="converters.transformers.label_names"):
        path = from_transformers("imagenet", src, tmp_path / "ours.safetensors")
    assert re.search(re.escape(str(src / "config.json")) + r": id2label names the classes in a form a checkpoint "
                     r"cannot keep \(.*" + problem + r".*\); imported without class names", caplog.text), caplog.text
    assert METADATA_KEY not in read_metadata(path) and load_model(path).labels == ("0", "1", "2")


def test_the_cli_imports_such_names_with_a_warning(tmp_path, capsys, caplog):
    src = _edited(tmp_path, {"0": "cat", "1": "", "2": "bird"})
    capsys.readouterr()  # save_pretrained's progress bar
    with caplog.at_level("WARNING", logger="converters.transformers.label_names"):  # the CLI prints the library's logs
        assert convert_cli(["imagenet", "--from-transformers", str(src), "-o", str(tmp_path / "o.safetensors")]) == 0
    assert "id2label names the classes in a form a checkpoint cannot keep (name 1: empty)" in caplog.text
    assert "Traceback" not in capsys.readouterr().err and load_model(tmp_path / "o.safetensors").class_names is None

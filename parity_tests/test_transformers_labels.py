"""Exports of models with a released label set carry its class names in id2label and label2id."""

from __future__ import annotations

import json

import pytest
import transformers

from converters import from_transformers, to_transformers
from parity_tests.transformers_support import save_small
from perceiver_torch import imagenet_labels, load_model
from perceiver_torch.models.video_autoencoding import kinetics700_labels

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


@pytest.mark.parametrize("id2label, warned", [
    ({0: "cat", 1: "dog", 2: "bird"}, True),
    ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, False),
])
def test_class_names_a_checkpoint_cannot_keep_are_warned_of(tmp_path, caplog, id2label, warned):
    """A head fine-tuned in transformers with its own class names (id2label) imported silently as indices."""
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf", num_labels=3, id2label=id2label)
    with caplog.at_level("WARNING", logger="converters.transformers.label_names"):
        from_transformers("imagenet", src, tmp_path / "ours.safetensors")
    assert ("its id2label names its 3 classes (0: cat, 1: dog, 2: bird); a perceiver-torch checkpoint keeps no "
            "class names" in caplog.text) == warned


def test_the_released_names_are_not_warned_of(tmp_path, caplog):
    _, exported = _export("PerceiverForImageClassificationFourier", "imagenet", 1000, tmp_path)
    with caplog.at_level("WARNING", logger="converters.transformers.label_names"):
        from_transformers("imagenet", exported, tmp_path / "again.safetensors")
    assert "id2label" not in caplog.text

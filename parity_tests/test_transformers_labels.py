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

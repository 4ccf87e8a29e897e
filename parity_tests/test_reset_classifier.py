"""New classes for a pretrained classifier: reset_classifier, create_model(num_classes=), then save_model/load_model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml

import perceiver_torch as pt
from converters import to_transformers
from converters.transformers.config_map import ConfigMismatchError
from perceiver_torch.export import export_program, max_errors
from perceiver_torch.serialization import build_on_meta, read_metadata

from .conftest import golden_config, seeded_model
from .training import train_classifier
from .zoo_support import TEST_HUB, TEST_MANIFEST, hub_env

TINY = "tiny-vision-perceiver-conv"


def _classifier() -> pt.PerceiverForImageClassification:
    return seeded_model("imagenet_conv").eval()


def _images(model) -> torch.Tensor:
    return torch.rand(2, 3, *model.image_size) * 2 - 1


def test_reset_classifier_replaces_only_the_classifier(tmp_path):
    model = _classifier()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    in_features = model.get_classifier().in_features
    model.reset_classifier(3)
    head = model.get_classifier()
    assert (head.in_features, head.out_features) == (in_features, 3)
    assert model.num_classes == model.decoder.num_classes == model.config["num_classes"] == 3
    assert model.labels == ("0", "1", "2")
    after = model.state_dict()
    changed = sorted(name for name in after if name not in before or not torch.equal(after[name], before[name]))
    assert changed == ["decoder.output.bias", "decoder.output.weight"]
    logits = model(_images(model))
    assert logits.shape == (2, 3)
    assert len(model.classify(np.zeros((40, 40, 3), np.uint8), k=3)) == 3
    # The config follows the new head, so the model saves and loads back as it is.
    loaded = pt.load_model(pt.save_model(model, tmp_path / "three.safetensors"))
    images = _images(model)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_reset_classifier_keeps_the_device_and_dtype():
    model = _classifier().to(torch.bfloat16)
    model.reset_classifier(np.int64(7))  # NumPy integers are integers
    head = model.get_classifier()
    assert head.weight.dtype == torch.bfloat16 and head.out_features == 7 and model.config["num_classes"] == 7
    assert type(model.config["num_classes"]) is int
    assert model(_images(model)).dtype == torch.float32  # the final projection island still holds


@pytest.mark.parametrize("num_classes, found", [(-1, "-1 (int)"), (True, "True (bool)"), (2.0, "2.0 (float)"),
                                                (10**9, "1000000000 (int)"), ("10", "'10' (str)")])
def test_reset_classifier_refuses_what_the_config_schema_refuses(num_classes, found):
    model = _classifier()
    head = model.get_classifier()
    with pytest.raises(pt.ConfigError, match=rf"num_classes: found {re.escape(found)}; expected an integer >= 0"):
        model.reset_classifier(num_classes)
    assert model.get_classifier() is head and model.config["num_classes"] == 10  # nothing changed


@pytest.mark.parametrize("pretrained", [True, False])
def test_create_model_with_num_classes_is_the_zoo_model_reset(tmp_path, monkeypatch, pretrained):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        torch.manual_seed(0)
        plain = pt.create_model(TINY, pretrained, manifest=TEST_MANIFEST)
        torch.manual_seed(0)
        same = pt.create_model(TINY, pretrained, num_classes=plain.num_classes, manifest=TEST_MANIFEST)
        torch.manual_seed(0)
        reset = pt.create_model(TINY, pretrained, num_classes=plain.num_classes + 2, manifest=TEST_MANIFEST)
    for name, tensor in plain.state_dict().items():  # the same count keeps the classifier it has
        assert torch.equal(same.state_dict()[name], tensor), name
    assert reset.get_classifier().out_features == reset.config["num_classes"] == plain.num_classes + 2
    assert not reset.training
    kept = [name for name in plain.state_dict() if not name.startswith("decoder.output.")]
    assert len(kept) == len(plain.state_dict()) - 2
    for name in kept:  # everything but the classifier is the zoo model's
        assert torch.equal(reset.state_dict()[name], plain.state_dict()[name]), name


def test_create_model_refuses_num_classes_before_fetching_anything(tmp_path, monkeypatch):
    with hub_env(monkeypatch, tmp_path / "no-hub", tmp_path / "cache"):
        with pytest.raises(ValueError, match=r"'tiny-language-perceiver' is a language model; num_classes applies "
                                             r"to the ImageNet classifiers"):
            pt.create_model("tiny-language-perceiver", num_classes=5, manifest=TEST_MANIFEST)
        with pytest.raises(pt.ConfigError, match=r"(?s)zoo model 'tiny-vision-perceiver-conv' with num_classes is not "
                                                 r"a valid config.*num_classes: found -3 \(int\)"):
            pt.create_model(TINY, num_classes=-3, manifest=TEST_MANIFEST)
    assert not (tmp_path / "cache").exists()  # refused before the cache was made


def test_a_classifier_without_a_final_projection_is_refused():
    config = golden_config("imagenet_conv")
    config["decoder"]["final_project"] = False  # the schema refuses it: the class itself, build_model and loading
    with pytest.raises(pt.ConfigError, match=r"(?s)^PerceiverForImageClassification\(config\) is not a valid config"
                                             r".*decoder.final_project: found false; expected true"):
        pt.PerceiverForImageClassification(config)
    model = pt.PerceiverForImageClassification(golden_config("imagenet_conv"))
    model.config["decoder"]["final_project"] = False  # edited after the build
    with pytest.raises(pt.ConfigError, match=r"decoder.final_project: found false; expected true"):
        model.reset_classifier(3)
    assert model.config["num_classes"] == 10


def test_reset_classifier_keeps_the_train_or_eval_mode():
    model = _classifier()  # eval
    model.reset_classifier(3)
    assert not any(module.training for module in model.modules())
    model.train()
    model.reset_classifier(4)
    assert all(module.training for module in model.modules())


def _wide_query_config() -> dict:
    config = golden_config("imagenet_fourier")
    config["decoder"]["trainable_position_encoding_kwargs"]["num_channels"] = 8192  # a 8192-wide classifier input
    return config


def test_reset_classifier_checks_the_parameter_bound_before_allocating():
    model = build_on_meta("imagenet", _wide_query_config())  # 135M parameters, allowed; on meta, no memory
    with pytest.raises(pt.ConfigError, match=r"\(whole model\): found 1,2\d\d,\d{3},\d{3} parameters; expected at "
                                             r"most 1,000,000,000"):
        model.reset_classifier(1 << 17)  # the schema allows 131072 classes, but 8193 x 131072 more parameters
    assert model.num_classes == 10


def test_create_model_checks_the_parameter_bound_before_fetching(tmp_path, monkeypatch):
    manifest = yaml.safe_load(TEST_MANIFEST.read_text())
    manifest["models"][TINY]["config"]["decoder"]["trainable_position_encoding_kwargs"]["num_channels"] = 8192
    edited = tmp_path / "manifest.yaml"
    edited.write_text(yaml.safe_dump(manifest))
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        with pytest.raises(pt.ConfigError, match=r"\(whole model\): found 1,2\d\d,\d{3},\d{3} parameters"):
            pt.create_model(TINY, num_classes=1 << 17, manifest=edited)
    assert not (tmp_path / "cache").exists()


def test_a_reset_classifier_fine_tunes_and_saves(tmp_path):
    """The fine-tuning story end to end: every parameter gets a gradient, the loss falls, the result saves."""
    model = _classifier()
    model.reset_classifier(4)
    model.train()
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, *model.image_size) * 2 - 1, torch.arange(8) % 4
    losses = train_classifier(model, images, labels, steps=15, lr=1e-3)
    assert losses[-1] < 0.5 * losses[0], losses  # measured 1.40 -> 0.05 on 8 random images
    loaded = pt.load_model(pt.save_model(model.eval(), tmp_path / "tuned.safetensors"))
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


@pytest.mark.parametrize("num_classes", [4, 3, 0])
def test_reset_classifier_drops_the_names_of_the_old_classes(tmp_path, num_classes):
    """The names belonged to the replaced head (even one of the same count): the new head's classes are indices."""
    model = _classifier()
    model.reset_classifier(3)
    model.class_names = ("cat", "dog", "bird")
    loaded = pt.load_model(pt.save_model(model, tmp_path / "named.safetensors"))
    loaded.reset_classifier(num_classes)
    assert loaded.class_names is None and loaded.labels == tuple(str(i) for i in range(num_classes))
    again = pt.load_model(pt.save_model(loaded, tmp_path / "reset.safetensors"))
    assert again.class_names is None and "class_names" not in read_metadata(tmp_path / "reset.safetensors")


def test_reset_classifier_to_zero_leaves_the_embedding(tmp_path):
    """timm's num_classes=0: no classifier, forward gives what forward_head(..., pre_logits=True) does."""
    model = _classifier()
    images = _images(model)
    embedding = model.forward_head(model.forward_features(images), pre_logits=True)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert model.num_classes == model.decoder.num_classes == model.config["num_classes"] == 0
    assert model.labels == () and not any(name.startswith("decoder.output.") for name in model.state_dict())
    torch.testing.assert_close(model(images), embedding, rtol=0, atol=0)
    assert model(images).shape == (2, model.head_hidden_size)
    with pytest.raises(ValueError, match=r"classify: this model has no classifier \(num_classes 0"):
        model.classify(np.zeros((40, 40, 3), np.uint8))
    # The headless config saves and loads back as it is, and a classifier can be put back.
    loaded = pt.load_model(pt.save_model(model, tmp_path / "headless.safetensors"))
    assert isinstance(loaded.get_classifier(), torch.nn.Identity)
    torch.testing.assert_close(loaded(images), embedding, rtol=0, atol=0)
    loaded.to(torch.bfloat16).reset_classifier(4)
    head = loaded.get_classifier()
    assert (head.in_features, head.out_features, head.weight.dtype) == (model.head_hidden_size, 4, torch.bfloat16)
    assert loaded(images.bfloat16()).shape == (2, 4)


def test_a_headless_file_with_a_classifier_is_refused(tmp_path):
    """A file whose config says num_classes 0 but that holds a classifier's weights does not load."""
    model = _classifier()
    path = pt.save_model(model, tmp_path / "ten.safetensors")
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    header = path.read_bytes()[8:8 + header_size].decode()
    edited = header.replace('\\"num_classes\\": 10', '\\"num_classes\\": 0')
    assert edited != header and len(edited) == len(header) - 1
    edited += " "  # the same length: safetensors pads its header with spaces
    (tmp_path / "zero.safetensors").write_bytes(path.read_bytes()[:8] + edited.encode()
                                                + path.read_bytes()[8 + header_size:])
    with pytest.raises(pt.CheckpointFormatError, match=r"decoder\.output\.(bias|weight)"):
        pt.load_model(tmp_path / "zero.safetensors")


def test_create_model_with_no_classes_is_the_zoo_model_headless(tmp_path, monkeypatch):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        plain = pt.create_model(TINY, manifest=TEST_MANIFEST)
        headless = pt.create_model(TINY, num_classes=0, manifest=TEST_MANIFEST)
    images = _images(plain)
    embedding = plain.forward_head(plain.forward_features(images), pre_logits=True)
    assert headless.num_classes == 0 and not headless.training
    torch.testing.assert_close(headless(images), embedding, rtol=0, atol=0)


def test_a_headless_model_exports_and_matches_eager():
    model = _classifier()
    model.reset_classifier(0)
    program = export_program(model)
    errors = max_errors(model, program.module())
    assert errors[1] == errors[3] == 0.0  # the same float32 ops as eager; measured bit for bit


def test_a_headless_model_is_refused_by_the_transformers_export(tmp_path):
    model = _classifier()
    model.reset_classifier(0)
    path = pt.save_model(model, tmp_path / "headless.safetensors")
    with pytest.raises(ConfigMismatchError, match=r"num_classes is 0 \(no classifier\); transformers' image "
                                                  r"classifiers always have one"):
        to_transformers(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headless.safetensors"]

"""An export fine-tuned in transformers (a new head) and saved again imports from its transformers fields.

transformers keeps unknown config.json keys through `from_pretrained` and `save_pretrained`, so such a
directory still holds the `perceiver_torch` config written at export, now stale.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers

from converters import from_transformers, to_transformers
from converters.cli import main as convert_main
from converters.transformers import divergence
from parity_tests.transformers_support import agree_atol, save_small
from perceiver_torch.serialization import load_model, read_metadata, save_checkpoint

CLASSIFIERS = ["PerceiverForImageClassificationLearned", "PerceiverForImageClassificationFourier",
               "PerceiverForImageClassificationConvProcessing"]
# What transformers' classes compute differently, switched to upstream's behaviour in its model (catalog.py);
# the tanh GELU is already in an exported config.
SWITCHED = {"gelu", "conv_padding", "conv_kernel", "query_residual"}


def _export(architecture: str, tmp_path):
    src = save_small(architecture, tmp_path / "hf", hidden_act="gelu_pytorch_tanh")
    return to_transformers(from_transformers("imagenet", src, tmp_path / "first.safetensors"), tmp_path / "exported")


def _fine_tuned(architecture: str, exported, out, num_labels: int = 3):
    """`exported` given a new head of `num_labels` classes in transformers, then saved with save_pretrained."""
    model = getattr(transformers, architecture).from_pretrained(str(exported), num_labels=num_labels,
                                                                ignore_mismatched_sizes=True)
    torch.manual_seed(5)
    with torch.no_grad():  # "fine-tuned": the new head (bias zero-initialised) and a latent changed
        model.perceiver.decoder.decoder.final_layer.bias.normal_()
        model.perceiver.embeddings.latents.add_(0.5)
    model.save_pretrained(str(out))
    return model.eval()


@pytest.mark.parametrize("architecture", CLASSIFIERS)
def test_fine_tuned_export_imports_with_the_new_head_and_computes_as_transformers(architecture, tmp_path, caplog):
    exported = _export(architecture, tmp_path)
    hf = _fine_tuned(architecture, exported, tmp_path / "tuned")
    stale = json.loads((tmp_path / "tuned" / "config.json").read_text())["perceiver_torch"]["config"]
    assert stale["num_classes"] == 5  # the situation: transformers kept the export's key unchanged
    with caplog.at_level(logging.WARNING, logger="converters.transformers.config_map"):
        converted = from_transformers("imagenet", tmp_path / "tuned", tmp_path / "tuned.safetensors")
    assert "perceiver_torch config has 5 classes, its transformers fields 3 (a new head" in caplog.text
    ours = load_model(converted)
    config = json.loads(read_metadata(converted)["config"])
    assert config["num_classes"] == 3 and ours.num_classes == 3
    assert torch.equal(ours.decoder.output.bias, hf.perceiver.decoder.decoder.final_layer.bias)
    inputs = divergence.random_inputs("imagenet", config, batch=2, seed=1)
    divergence.hf_model.switch_off(hf, "imagenet", config, SWITCHED)
    got = divergence.run_hf("imagenet", hf, inputs, on=set())["logits"]
    want = divergence.run_ours("imagenet", ours, inputs)["logits"]
    assert want.shape == (2, 3)
    # float32 rounding of differently ordered sums only (transformers_support.agree_atol says why).
    assert (got - want).abs().max() <= agree_atol(want.abs().max())


def test_fine_tuned_export_imports_through_the_cli(tmp_path, caplog):
    architecture = CLASSIFIERS[0]
    _fine_tuned(architecture, _export(architecture, tmp_path), tmp_path / "tuned", num_labels=7)
    out = tmp_path / "tuned.safetensors"
    with caplog.at_level(logging.WARNING, logger="converters.transformers.config_map"):
        assert convert_main(["imagenet", "--from-transformers", str(tmp_path / "tuned"), "-o", str(out)]) == 0
    assert json.loads(read_metadata(out)["config"])["num_classes"] == 7
    assert "importing with the fields' classes" in caplog.text


def test_a_key_that_agrees_with_the_fields_is_used_whole(tmp_path, caplog):
    """What the fields cannot hold (a Fourier classifier's image size) comes back from the key."""
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf")
    first = from_transformers("imagenet", src, tmp_path / "first.safetensors")
    config = json.loads(read_metadata(first)["config"])
    assert config["image_size"] == [224, 224]  # what the fields give: the size DeepMind evaluated at
    config["image_size"] = [48, 48]
    resized = save_checkpoint(load_model(first).state_dict(), tmp_path / "resized.safetensors", "imagenet", config)
    exported = to_transformers(resized, tmp_path / "exported")
    with caplog.at_level(logging.WARNING):
        back = from_transformers("imagenet", exported, tmp_path / "back.safetensors")
    assert json.loads(read_metadata(back)["config"]) == config
    assert "disagrees" not in caplog.text


def test_a_fine_tuned_export_keeps_what_only_the_key_holds(tmp_path, caplog):
    """A Fourier classifier at 48x48 (a size transformers' fields cannot hold) given a new head in transformers
    comes back at 48x48 with the new head: from the fields alone it came back at 224x224, refusing its own
    images."""
    src = save_small("PerceiverForImageClassificationFourier", tmp_path / "hf", hidden_act="gelu_pytorch_tanh")
    first = from_transformers("imagenet", src, tmp_path / "first.safetensors")
    config = {**json.loads(read_metadata(first)["config"]), "image_size": [48, 48]}
    resized = save_checkpoint(load_model(first).state_dict(), tmp_path / "resized.safetensors", "imagenet", config)
    hf = _fine_tuned("PerceiverForImageClassificationFourier", to_transformers(resized, tmp_path / "exported"),
                     tmp_path / "tuned")
    with caplog.at_level(logging.WARNING, logger="converters.transformers.config_map"):
        back = from_transformers("imagenet", tmp_path / "tuned", tmp_path / "back.safetensors")
    assert json.loads(read_metadata(back)["config"]) == {**config, "num_classes": 3}
    ours = load_model(back)
    assert torch.equal(ours.decoder.output.bias, hf.perceiver.decoder.decoder.final_layer.bias)
    assert ours(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


@pytest.mark.parametrize("architecture", CLASSIFIERS)
def test_importing_the_learned_classifier_warns_of_the_query_residual_it_drops(architecture, tmp_path, caplog):
    """transformers' learned-position classifier has a query residual the colab's has not: its import follows the
    colab, silently changing the logits of a model trained in transformers (0.16 in an audit)."""
    src = save_small(architecture, tmp_path / "hf", hidden_act="gelu_pytorch_tanh")
    with caplog.at_level(logging.WARNING, logger="converters.transformers.config_map"):
        from_transformers("imagenet", src, tmp_path / "ours.safetensors")
    warned = "adds a query residual in its decoder, which DeepMind's colab (and so the imported model) does not"
    assert (warned in caplog.text) == (architecture == "PerceiverForImageClassificationLearned")

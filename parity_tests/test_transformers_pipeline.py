"""An exported image classifier loads in transformers' image-classification pipeline, preprocessing as ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from converters import from_transformers, to_transformers
from parity_tests.transformers_support import small_hf_model
from perceiver_torch import imagenet_transform, load_model

CLASSIFIERS = {"PerceiverForImageClassificationLearned": 6, "PerceiverForImageClassificationFourier": 224,
               "PerceiverForImageClassificationConvProcessing": 224}  # the input size of each exported model
MARGIN = 32  # the colab crops size / (size + 32) of the shorter side


def _smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth colour image (a photograph's low frequencies), uint8 [H, W, 3]."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [128 + 100 * np.sin(6 * x + 2 * y), 128 + 90 * np.cos(5 * y), 128 + 80 * np.sin(4 * (x + y))]
    return np.stack(channels, -1).round().astype(np.uint8)


def _export(architecture: str, tmp_path, num_labels: int = 1000):
    model = small_hf_model(architecture, num_labels=num_labels, hidden_act="gelu_pytorch_tanh")
    with torch.no_grad():  # spread the random logits so that the top classes are far apart
        model.perceiver.decoder.decoder.final_layer.weight.mul_(30)
    model.save_pretrained(str(tmp_path / "hf"))
    converted = from_transformers("imagenet", tmp_path / "hf", tmp_path / "ours.safetensors")
    return converted, to_transformers(converted, tmp_path / "exported")


def _pixels(directory, image: np.ndarray) -> torch.Tensor:
    processor = transformers.AutoImageProcessor.from_pretrained(str(directory))
    return processor(Image.fromarray(image), return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("architecture", sorted(CLASSIFIERS))
def test_export_has_a_preprocessor_with_our_crop_size_and_normalisation(architecture, tmp_path):
    size = CLASSIFIERS[architecture]
    _, exported = _export(architecture, tmp_path, num_labels=5)
    settings = json.loads((exported / "preprocessor_config.json").read_text())
    assert settings["size"] == {"height": size, "width": size}
    assert settings["crop_size"] == {"height": size + MARGIN, "width": size + MARGIN}
    assert settings["resample"] == Image.Resampling.BICUBIC  # the colab's kernel is cubic too (a differs: README)
    # An image whose centred crop is already the input size, with even margins: no resampling on either side,
    # so the pixels agree to float32 rounding of the two normalisations ((x/255 - m) / s against (x - 255m) / 255s).
    image = _smooth_rgb(size + MARGIN, size + MARGIN + 10)
    assert (_pixels(exported, image) - imagenet_transform(image, size)).abs().max() <= 1e-6


def test_pipeline_gives_our_classify_top_classes(tmp_path):
    """The Fourier classifier is the one transformers computes as ours (the others: catalog.py), so the
    pipeline's probabilities are ours up to float32 rounding."""
    converted, exported = _export("PerceiverForImageClassificationFourier", tmp_path)
    path = tmp_path / "test.png"
    Image.fromarray(_smooth_rgb(256, 266)).save(path)
    pipe = transformers.pipeline("image-classification", model=str(exported))
    got = pipe(str(path), top_k=5)
    want = load_model(converted).classify(str(path), k=5)
    assert got[0]["label"] == want[0][0] and want[0][1] - want[1][1] > 1e-3  # the top-1 is not a near-tie
    assert [g["label"] for g in got] == [name for name, _ in want]
    # Probabilities of logits that agree to ~1e-5 (transformers_support.agree_atol) differ by less than 1e-5.
    assert max(abs(g["score"] - p) for g, (_, p) in zip(got, want, strict=True)) <= 1e-5


def test_resampling_difference_stays_within_what_the_card_states(tmp_path):
    """Where both sides resample (PIL's bicubic against the colab's cubic kernel; offsets rounded apart by one
    pixel for an odd margin), smooth images differ by at most 3 grey levels: 3 / (255 * 0.224) = 0.053 after
    normalisation (the largest standard deviation is the smallest divisor: 0.224)."""
    _, exported = _export("PerceiverForImageClassificationFourier", tmp_path, num_labels=5)
    for height, width in [(480, 360), (375, 500), (257, 300)]:
        image = _smooth_rgb(height, width)
        difference = (_pixels(exported, image) - imagenet_transform(image, 224)).abs().max()
        assert 1e-3 < difference <= 3.05 / (255 * 0.224), (height, width, difference)

"""timm's feature API on the ImageNet classifiers: forward_features, forward_head(pre_logits), their widths.

Golden configurations with random weights (seeded). `forward` is `forward_head(forward_features(x))`; the
upstream composition (`Perceiver.forward`: preprocess, encode, decode with the query built from the
preprocessed inputs) is the reference, and the same kernels on the same values give the same logits, so the
comparisons are exact.
"""

from __future__ import annotations

import copy

import pytest
import torch

from perceiver_torch import Perceiver

from .conftest import GOLDEN_TASKS, golden_config, seeded_model

IMAGENET = [family for family, task in GOLDEN_TASKS.items() if task == "imagenet"]


def _model(family: str):
    return seeded_model(family).eval()


def _images(model, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *model.image_size, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)


def _upstream_composition(model, images: torch.Tensor) -> torch.Tensor:
    return Perceiver.forward(model, images.permute(0, 2, 3, 1))


@pytest.mark.parametrize("mode", ["float32", "bf16_autocast", "bfloat16"])
@pytest.mark.parametrize("family", IMAGENET)
def test_features_then_head_is_the_forward(family, mode):
    assert len(IMAGENET) == 3
    model, images = _model(family), _images(_model(family))
    if mode == "bfloat16":
        model, images = copy.deepcopy(model).to(torch.bfloat16), images.to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16_autocast"):
        latents = model.forward_features(images)
        logits = model.forward_head(latents)
        embedding = model.forward_head(latents, pre_logits=True)
        expected = _upstream_composition(model, images)
        assert torch.equal(model(images), expected)
        assert torch.equal(model.get_classifier()(embedding), expected)
    num_latents = golden_config(family)["encoder"]["z_index_dim"]
    assert latents.shape == (2, num_latents, model.num_features)
    assert model.num_features == golden_config(family)["encoder"]["num_z_channels"]
    assert embedding.shape == (2, model.head_hidden_size) == (2, model.get_classifier().in_features)
    assert torch.equal(logits, expected)


def test_forward_head_trains_the_head_on_frozen_features():
    # The linear-probe pattern: features under no_grad, gradients only through the head.
    model = _model("imagenet_conv")
    with torch.no_grad():
        latents = model.forward_features(_images(model))
    model.forward_head(latents).logsumexp(-1).sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(name.startswith("decoder.") for name in with_grad), sorted(with_grad)
    assert "decoder.output.weight" in with_grad


@pytest.mark.parametrize("latents, error, got", [
    (torch.zeros(2, 3, 4), ValueError, "float32 [2, 3, 4]"),
    (torch.zeros(2, 7), ValueError, "float32 [2, 7]"),
    (torch.zeros(2, 3, dtype=torch.int64), TypeError, "int64 [2, 3]"),
    ("latents", TypeError, "str"),
    (None, TypeError, "NoneType"),
])
def test_forward_head_refuses_what_forward_features_does_not_give(latents, error, got):
    model = _model("imagenet_learned")
    n, c = model.encoder.latents.embeddings.shape
    what = "a floating-point tensor " if error is TypeError else ""
    message = f"PerceiverForImageClassification.forward_head: latents must be {what}[B, {n}, {c}] from " \
              f"forward_features; got {got}."
    with pytest.raises(error) as info:
        model.forward_head(latents)
    assert str(info.value) == message
    with pytest.raises(ValueError, match="with B >= 1; got an empty batch"):
        model.forward_head(torch.zeros(0, n, c))
    with pytest.raises(TypeError, match="pre_logits must be a bool; got str 'yes'"):
        model.forward_head(torch.zeros(1, n, c), pre_logits="yes")


def test_forward_features_checks_the_images_as_forward_does():
    model = _model("imagenet_fourier")
    with pytest.raises(ValueError, match=r"expected channels-first images .* \(this looks channels-last"):
        model.forward_features(_images(model).permute(0, 2, 3, 1))

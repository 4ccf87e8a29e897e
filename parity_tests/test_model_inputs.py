"""Each task model refuses inputs that would otherwise give silent garbage or torch internals' messages.

Models are the golden configurations with random weights (construction only, no checkpoint needed).
Value checks run only on CPU in eager mode: the meta-device tests prove that forward never reads
values off the host (reading a meta tensor raises), so it never forces a device sync.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_torch import build_model

from .conftest import golden_config


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    families = {"language": "language", "imagenet": "imagenet_fourier", "optical_flow": "optical_flow",
                "video_autoencoding": "video_autoencoding"}
    return {task: build_model(task, golden_config(family)).eval() for task, family in families.items()}


def _ids(*shape, high=262):
    return torch.randint(0, high, shape)


# ---- language ----

@pytest.mark.parametrize("make, error, message", [
    (lambda: _ids(2, 7).float(), TypeError, r"integer tensor \[B, T\].*0 <= id < 262.*got float32 \[2, 7\]"),
    (lambda: _ids(2, 7).to(torch.int16), TypeError, r"\(int64 or int32\).*got int16 \[2, 7\]"),
    (lambda: [[1, 2, 3]], TypeError, r"integer tensor \[B, T\].*got list"),
    (lambda: _ids(7), ValueError, r"\[B, T\].*got int64 \[7\]"),
    (lambda: _ids(1, 2, 7), ValueError, r"\[B, T\].*got int64 \[1, 2, 7\]"),
    (lambda: _ids(0, 7), ValueError, r"B >= 1.*got int64 \[0, 7\]"),
    (lambda: _ids(2, 0), ValueError, r"1 <= T <= 64.*got int64 \[2, 0\]"),
    (lambda: _ids(1, 65), ValueError, r"T <= 64.*longer than max_seq_len=64"),
    (lambda: torch.tensor([[5, 262]]), ValueError, r"ids in \[0, 262\); got values in \[5, 262\]"),
    (lambda: torch.tensor([[-1, 5]]), ValueError, r"ids in \[0, 262\); got values in \[-1, 5\]"),
])
def test_language_refuses_bad_ids(models, make, error, message):
    with pytest.raises(error, match="PerceiverForMaskedLM.forward: input_ids .*" + message):
        models["language"](make())


@pytest.mark.parametrize("mask, message", [
    (torch.ones(2, 6), r"attention_mask must be a tensor of input_ids' shape \[2, 7\].*got float32 \[2, 6\]"),
    (torch.full((2, 7), 0.5), r"holding 0/1; got other values"),
    (torch.full((2, 7), 2), r"holding 0/1; got other values"),
])
def test_language_refuses_bad_masks(models, mask, message):
    with pytest.raises(ValueError, match=message):
        models["language"](_ids(2, 7), mask)


def test_language_takes_int32_ids_and_bool_or_float_masks_alike(models):
    ids = _ids(2, 7)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        reference = models["language"](ids, mask)
        for other_ids, other_mask in ((ids.int(), mask), (ids, mask.bool()), (ids, mask.float())):
            torch.testing.assert_close(models["language"](other_ids, other_mask), reference, rtol=0, atol=0)


def test_value_checks_never_read_data_off_the_host(models):
    # On the meta device a value read raises ("Cannot copy out of meta tensor"): out-of-range ids
    # pass forward there, as they would on an accelerator, where reading them would sync the device.
    model = build_model("language", golden_config("language")).to("meta").eval()
    ids = torch.full((2, 7), 10**6, device="meta")
    assert model(ids, torch.ones(2, 7, device="meta")).shape == (2, 7, 262)
    with pytest.raises(ValueError, match=r"B >= 1"):  # layout checks still run there
        model(torch.zeros(0, 7, dtype=torch.long, device="meta"))


# ---- image classification ----

def test_imagenet_refuses_unnormalised_integer_and_empty_images(models):
    model = models["imagenet"]
    with pytest.raises(ValueError, match=r"forward: images must be normalised as imagenet_transform does.*"
                                         r"got values in \[0, 255\]"):
        model(torch.linspace(0, 255, 3 * 16 * 16).reshape(1, 3, 16, 16))
    with pytest.raises(TypeError, match=r"floating-point tensor of channels-first images \[B, 3, 16, 16\]; "
                                        r"got uint8 \[1, 3, 16, 16\]"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"B >= 1; got an empty batch float32 \[0, 3, 16, 16\]"):
        model(torch.zeros(0, 3, 16, 16))


def test_classify_refuses_unit_scaled_and_out_of_range_pixels(models):
    model = models["imagenet"]
    unit = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"looks scaled to \[0, 1\].*multiply by 255"):
        model.classify(unit)
    with pytest.raises(ValueError, match=r"RGB values in 0-255; got values in \[-1.99.*already normalised"):
        model.classify(unit * 4 - 2)
    with pytest.raises(ValueError, match=r"RGB values in 0-255; got values in \[300, 300\]"):
        model.classify(np.full((20, 24, 3), 300, np.int32))
    with pytest.raises(TypeError, match="dtype bool"):
        model.classify(np.ones((20, 24, 3), bool))
    # The same picture on the 0-255 scale is accepted, as float or as uint8 (whose resize saturates
    # and rounds, as OpenCV's does: the probabilities differ slightly, so only acceptance is compared).
    pixels = np.round(unit * 255)
    assert len(model.classify(pixels)) == len(model.classify(pixels.astype(np.uint8))) == 5
    assert len(model.classify(np.zeros((20, 24, 3), np.float32))) == 5  # black is black on either scale


def test_nan_inputs_are_named_as_nan_not_as_a_range(models):
    """A NaN anywhere makes torch.aminmax NaN: the refusal says NaN, not 'values in [nan, nan]'."""
    images, audio = _clip(models["video_autoencoding"])
    frame, nan = torch.zeros(1, 3, 12, 16), float("nan")
    holed = frame.index_fill(3, torch.tensor([2]), nan)
    calls = {
        "PerceiverForImageClassification.forward: images": lambda: models["imagenet"](torch.full((1, 3, 16, 16), nan)),
        "PerceiverForOpticalFlow.forward: image2": lambda: models["optical_flow"](frame, holed),
        "PerceiverForMultimodalAutoencoding.forward: audio": lambda: models["video_autoencoding"](
            images, audio.index_fill(1, torch.tensor([0]), nan)),
    }
    for where, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(f"{where} holds NaN (not a number) values; it must "), str(info.value)
        assert "nan]" not in str(info.value)


def test_imagenet_accepts_normalised_values_up_to_5_and_refuses_beyond(models):
    # NORMALISED_LIMIT is 5 (imagenet_transform gives about [-2.1, 2.6]); the bounds themselves are accepted.
    model = models["imagenet"]
    edges = torch.linspace(-5.0, 5.0, 3 * 16 * 16).reshape(1, 3, 16, 16)  # exactly -5.0 and 5.0 at the ends
    assert edges.min().item() == -5.0 and edges.max().item() == 5.0
    with torch.no_grad():
        assert model(edges).shape == (1, model.num_classes)
    for value in (5.01, -5.01):
        beyond = edges.clone()
        beyond[0, 1, 7, 7] = value
        with pytest.raises(ValueError, match=r"forward: images must be normalised as imagenet_transform does"):
            model(beyond)


# ---- optical flow ----

def test_flow_refuses_unscaled_frames_in_forward_and_estimate_flow(models):
    model = models["optical_flow"]
    frames = torch.rand(1, 3, 12, 16) * 255
    scaled = frames / 255 * 2 - 1
    message = r"image1 must hold pixels scaled to \[-1, 1\] as the colab does \(x / 255 \* 2 - 1\); got values in"
    with pytest.raises(ValueError, match="forward: " + message):
        model(frames, scaled)
    with pytest.raises(ValueError, match="estimate_flow: " + message):
        model.estimate_flow(torch.rand(3, 20, 30) * 255, torch.rand(3, 20, 30))
    with pytest.raises(ValueError, match=r"image2 must hold pixels"):
        model(scaled, frames)
    with pytest.raises(ValueError, match=r"B >= 1; got an empty batch"):
        model(torch.zeros(0, 3, 12, 16), torch.zeros(0, 3, 12, 16))
    with torch.no_grad():
        assert model(scaled, scaled).shape == (1, 2, 12, 16)


def test_flow_accepts_frames_up_to_1_5_and_refuses_frames_scaled_to_0_2(models):
    # PIXEL_LIMIT is 1.5: the colab's [-1, 1] plus a resampling overshoot; its ends are accepted.
    model = models["optical_flow"]
    edges = torch.linspace(-1.5, 1.5, 3 * 12 * 16).reshape(1, 3, 12, 16)
    assert edges.min().item() == -1.5 and edges.max().item() == 1.5
    with torch.no_grad():
        assert model(edges, edges.flip(-1)).shape == (1, 2, 12, 16)
    # x / 255 * 2 without the - 1: frames in [0, 2], a mistake the limit exists to catch.
    unshifted = torch.linspace(0, 255, 3 * 12 * 16).reshape(1, 3, 12, 16) / 255 * 2
    with pytest.raises(ValueError, match=r"forward: image1 must hold pixels scaled to .*got values in \[0, 2\]"):
        model(unshifted, edges)
    with pytest.raises(ValueError, match=r"estimate_flow: image2 must hold pixels scaled to \[-1, 1\]"):
        model.estimate_flow(edges[0], unshifted[0])


# ---- video autoencoding ----

def _clip(model, batch=1):
    images = torch.rand(batch, model.num_frames, 3, model.image_size, model.image_size)
    return images, torch.rand(batch, model.num_samples, 1) * 2 - 1


def test_video_refuses_unscaled_integer_and_empty_inputs(models):
    model = models["video_autoencoding"]
    images, audio = _clip(model)
    with pytest.raises(ValueError, match=r"forward: images must hold pixels scaled as the colab does.*not 0-255"):
        model(images * 255, audio)
    with pytest.raises(ValueError, match=r"forward: audio must hold samples in \[-1, 1\] \(int16 audio / 2\*\*15\)"):
        model(images, audio * 2**15)
    with pytest.raises(TypeError, match=r"images must be a floating-point tensor \[B, 2, 3, 16, 16\].*got uint8"):
        model((images * 255).to(torch.uint8), audio)
    with pytest.raises(ValueError, match=r"B >= 1; got an empty batch"):
        model(images[:0], audio[:0])
    with pytest.raises(ValueError, match=r"autoencode: images must hold pixels scaled"):
        model.autoencode(images * 255, audio)


@pytest.mark.parametrize("chunks", [0, -2, True, 2.0, "4"])
def test_autoencode_refuses_a_chunk_count_that_is_not_a_positive_integer(models, chunks):
    model = models["video_autoencoding"]
    with pytest.raises(ValueError, match=r"autoencode: chunks must be a positive integer \(or None for the "
                                         r"config's nchunks=4\)"):
        model.autoencode(*_clip(model), chunks=chunks)


def test_autoencode_default_is_the_config_nchunks(models):
    model = models["video_autoencoding"]
    images, audio = _clip(model)
    with torch.no_grad():
        default, four = model.autoencode(images, audio), model.autoencode(images, audio, chunks=4)
        numpy_four = model.autoencode(images, audio, chunks=np.int64(4))  # any integer type is a count
    for name in ("image", "audio", "label"):
        torch.testing.assert_close(default[name], four[name], rtol=0, atol=0)
        torch.testing.assert_close(numpy_four[name], four[name], rtol=0, atol=0)


@pytest.mark.parametrize("idx, got", [("abc", "str"), ([[1, 2], [3]], "list"), ({"a": 1}, "dict"),
                                      (np.array(["x"]), "ndarray"), ([1.5], r"float32 \[1\]")])
def test_video_subsample_that_is_not_indices_is_named(models, idx, got):
    # torch.as_tensor's own errors ("new(): invalid data type 'str'") named neither the argument nor the layout.
    model = models["video_autoencoding"]
    with pytest.raises(ValueError, match=r"forward: subsample\['image'\] must be a 1-D integer tensor of query "
                                         r"indices; got " + got + r"\."):
        model(*_clip(model), {"image": idx})
    with torch.no_grad():  # a list of indices is still taken
        assert model(*_clip(model), {"image": [0, 5]})["image"].shape == (1, 2, 3)

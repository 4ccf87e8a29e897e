"""The three ImageNet classifiers reproduce the upstream golden logits; inputs, transform and classify."""

import os
import pathlib
import sys

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters import ConversionError, convert_tree, load_haiku_checkpoint
from converters.tasks import run_upstream_layout
from perceiver_torch.imagenet_preprocessing import (
    MEAN_RGB,
    STDDEV_RGB,
    center_crop_size,
    check_pixel_scale,
    imagenet_labels,
    imagenet_transform,
)

from .conftest import assert_close, golden_config, golden_dir, golden_io, seeded_model

FAMILIES = ["imagenet_learned", "imagenet_fourier", "imagenet_conv"]


@pytest.mark.parametrize("pickle_name", ["checkpoint.pickle", "checkpoint_plain.pickle"])
@pytest.mark.parametrize("family", FAMILIES)
def test_imagenet_matches_upstream(converted, family, pickle_name):
    model = pt.load_model(converted("imagenet", family, pickle_name))
    io = golden_io(family)
    images = torch.from_numpy(io["input/images"]).permute(0, 3, 1, 2)  # the public contract is channels-first
    with torch.no_grad():
        logits = model(images)
    assert_close(logits.numpy(), io["output/logits"], what=f"{family} logits")
    # The upstream-layout runner (used by the parity harness and the zoo) gives the same.
    outputs = run_upstream_layout("imagenet", model, {"images": io["input/images"]})
    np.testing.assert_array_equal(outputs["logits"], logits.numpy())


def test_conv_stem_state_becomes_buffers(converted):
    model = pt.load_model(converted("imagenet", "imagenet_conv"))
    bn = model.input_preprocessor.convnet.batchnorms[0]
    state = load_haiku_checkpoint(golden_dir("imagenet_conv") / "checkpoint.pickle").state
    ema = "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/{}"
    np.testing.assert_array_equal(bn.running_mean.numpy(), state[ema.format("mean_ema")]["average"].reshape(-1))
    np.testing.assert_array_equal(bn.running_var.numpy(), state[ema.format("var_ema")]["average"].reshape(-1))
    names = {n for n, _ in model.named_parameters()}
    assert not any("running" in n for n in names)


def test_missing_batch_norm_state_is_reported_by_path():
    checkpoint = load_haiku_checkpoint(golden_dir("imagenet_conv") / "checkpoint.pickle")
    path = "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/var_ema"
    del checkpoint.state[path]["average"]
    checkpoint.state["image_preprocessor/~/unexpected"] = {"average": np.zeros(3, np.float32)}
    with pytest.raises(ConversionError) as info:
        convert_tree("imagenet", checkpoint, golden_config("imagenet_conv"))
    message = str(info.value)
    assert f"missing in checkpoint: state:{path}/average (needed for " \
           "input_preprocessor.convnet.batchnorms.0.running_var)" in message
    assert "unused in checkpoint: state:image_preprocessor/~/unexpected/average" in message
    # The EMA bookkeeping leaves are listed in the table's IGNORED, never silently dropped.
    assert f"state:{path}/hidden" not in message and f"state:{path}/counter" not in message


def _model(family="imagenet_fourier", **overrides):
    return seeded_model(family, {**golden_config(family), **overrides}).eval()


@pytest.mark.parametrize("shape, expected", [
    ((1, 16, 16, 3), "channels-last"),  # upstream's layout given to the channels-first model
    ((1, 4, 16, 16), "got 4 channels"),
    ((1, 3, 32, 32), r"\[B, 3, 16, 16\]"),
    ((3, 16, 16), "3-D"),
])
def test_wrong_input_shapes_say_what_was_expected(shape, expected):
    with pytest.raises(ValueError, match=expected) as info:
        _model()(torch.zeros(shape))
    assert "channels-first images [B, 3, 16, 16]" in str(info.value)


def test_imagenet_labels_are_the_colab_list():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench, Tinca tinca"
    assert labels[207] == "golden retriever"
    assert labels[251] == "dalmatian, coach dog, carriage dog"
    assert labels[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert labels.count("crane") == 2  # the bird (134) and the machine (517), as in ImageNet


def test_transform_crops_centre_and_normalises_like_the_colab():
    assert center_crop_size(375, 500) == 328  # int(224 / 256 * 375)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
    out = imagenet_transform(image)  # the crop is exactly 224x224 here, so the resize is the identity
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    top, left = (256 - 224 + 1) // 2, (320 - 224 + 1) // 2
    expected = (image[top:top + 224, left:left + 224] - np.array(MEAN_RGB)) / np.array(STDDEV_RGB)
    assert_close(out.permute(1, 2, 0).numpy(), expected.astype(np.float32), atol=1e-5, rtol=1e-5)


def test_transform_resizes_bicubically_and_saturates_like_opencv_on_uint8():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :, 0] = 255
    image[:, 30:, 1] = 255  # a sharp edge: bicubic overshoots, uint8 output saturates
    out = imagenet_transform(image, size=16)
    pixels = out.permute(1, 2, 0).numpy() * np.array(STDDEV_RGB) + np.array(MEAN_RGB)
    assert out.shape == (3, 16, 16)
    np.testing.assert_allclose(pixels[..., 0], 255, atol=1e-3)  # a constant channel stays constant
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)  # whole grey levels before normalising


def test_transform_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        imagenet_transform(np.zeros((3, 32, 32), np.uint8))


@pytest.mark.parametrize("size", [(16,), (16, 16, 3), 0, (16, -1), 16.0, True, "16"])
def test_transform_rejects_a_size_that_is_not_one_or_two_positive_ints(size):
    with pytest.raises(ValueError, match=r"size must be a positive int or a \(height, width\) pair of them"):
        imagenet_transform(np.zeros((32, 32, 3), np.uint8), size)
    assert imagenet_transform(np.zeros((32, 32, 3), np.uint8), [np.int64(8), 8]).shape == (3, 8, 8)


@pytest.mark.parametrize("size", [10**12, (2**62, 2)])
def test_transform_refuses_a_size_no_image_can_have_before_reading_the_image(size, monkeypatch):
    # It read and cropped the image, then torch failed resizing it: "Storage size calculation overflowed".
    import perceiver_torch.imagenet_preprocessing as preprocessing

    monkeypatch.setattr(preprocessing, "load_rgb", lambda image: pytest.fail("the image was read first"))
    with pytest.raises(ValueError, match=r"^imagenet_transform: size \(\d+, \d+\) is larger than any image can be"):
        imagenet_transform(np.zeros((32, 32, 3), np.uint8), size)


def test_classify_returns_top_k_of_the_models_probabilities():
    model = _model()
    image = np.random.default_rng(1).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    top = model.classify(image, k=3)
    with torch.no_grad():
        probs = model(imagenet_transform(image, (16, 16))[None])[0].softmax(-1)
    best = probs.topk(3)
    assert [label for label, _ in top] == [str(i) for i in best.indices.tolist()]
    np.testing.assert_allclose([p for _, p in top], best.values.numpy(), rtol=1e-6)


def test_classify_takes_k_as_an_integer_in_range():
    model = _model()
    image = np.full((16, 16, 3), 128, np.uint8)
    for k in (0, model.num_classes + 1, 2.5, True, None, "3"):
        with pytest.raises(ValueError, match=r"PerceiverForImageClassification.classify: k must be an integer in "):
            model.classify(image, k=k)
    assert len(model.classify(image, k=np.int64(2))) == 2


def test_classify_names_imagenet_classes_for_1000_logits():
    model = _model(num_classes=1000)
    top = model.classify(np.full((16, 16, 3), 128, np.uint8))
    assert len(top) == 5 and all(label in imagenet_labels() for label, _ in top)
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:], strict=False))


def test_classify_a_file_with_pillow(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    path = tmp_path / "image.png"
    pixels = np.random.default_rng(2).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    image_module.fromarray(pixels).save(path)
    model = _model()
    assert model.classify(path, k=2) == model.classify(pixels, k=2)


def test_any_path_like_opens_the_file(tmp_path):
    """Before, only str and pathlib.Path were opened: a DirEntry or a PurePath was taken for a pixel array."""
    image_module = pytest.importorskip("PIL.Image")
    path = tmp_path / "image.png"
    image_module.fromarray(np.random.default_rng(4).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    expected = imagenet_transform(str(path), 16)
    entry = next(e for e in os.scandir(tmp_path) if e.name == "image.png")
    for given in (entry, pathlib.PurePosixPath(path), os.fsencode(path)):
        assert torch.equal(imagenet_transform(given, 16), expected), type(given).__name__
    assert _model().classify([entry, path], k=2) == [_model().classify(path, k=2)] * 2


@pytest.mark.parametrize("brightest", [65535, 200])
def test_a_16_bit_greyscale_file_is_rounded_to_8_bits_and_32_bit_or_float_ones_refused(tmp_path, brightest):
    """Pillow's convert("RGB") clips 16-bit values at 255: the image came out white, and was classified. Scaled to
    floats instead, a dark image (brightest 200 of 65535, under one 8-bit level) was refused as [0, 1]-scaled. It
    is the same picture saved in 8 bits (x / 257 rounded), as the colab's images are."""
    image_module = pytest.importorskip("PIL.Image")
    grey = np.linspace(0, brightest, 40 * 50).reshape(40, 50).round().astype(np.uint16)
    image_module.fromarray(grey).save(tmp_path / "g16.png")
    assert image_module.open(tmp_path / "g16.png").mode == "I;16"
    eight = np.repeat((grey / 257).round().astype(np.uint8)[..., None], 3, axis=-1)
    assert eight.max() == round(brightest / 257)
    assert torch.equal(imagenet_transform(tmp_path / "g16.png", 32), imagenet_transform(eight, 32))
    for kind, array in (("32-bit integer", grey.astype(np.int32)), ("floating-point", grey.astype(np.float32))):
        image_module.fromarray(array).save(tmp_path / "other.tif")
        with pytest.raises(ValueError, match=f"other.tif is a {kind} image .*no agreed 0-255 scale"):
            imagenet_transform(tmp_path / "other.tif")
        with pytest.raises(ValueError, match=f"the image is a {kind} image"):
            imagenet_transform(image_module.open(tmp_path / "other.tif"))


def test_opening_a_file_without_pillow_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(ImportError, match=r"perceiver-torch\[image\]"):
        imagenet_transform(tmp_path / "missing.jpg")


def test_classify_takes_a_batch_of_images_and_gives_each_its_result_alone():
    model = _model()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8) for i in range(5)]
    alone = [model.classify(image, k=3) for image in images]
    for batch_size in (1, 2, np.int64(8)):
        batched = model.classify(images, k=3, batch_size=batch_size)
        assert len(batched) == len(images)
        for got, expected in zip(batched, alone, strict=True):
            # Another batch size may take other GEMM blockings: the same labels, probabilities to float rounding.
            assert [label for label, _ in got] == [label for label, _ in expected]
            np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], rtol=1e-5)
    assert model.classify(tuple(images[:2]), k=3) == model.classify(images[:2], k=3)
    assert model.classify([]) == []
    # Nested lists of pixels are still one image, not a batch.
    nested = np.full((16, 16, 3), 128, np.uint8)
    assert model.classify(nested.tolist(), k=2) == model.classify(nested, k=2)


def test_classify_names_the_image_of_a_batch_it_cannot_read_and_checks_batch_size():
    model = _model()
    good = np.full((16, 16, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="expected an RGB image array") as info:
        model.classify([good, good, np.zeros((16, 16), np.uint8)])
    assert info.value.__notes__ == ["PerceiverForImageClassification.classify: the image at index 2 of the batch"]
    for batch_size in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"classify: batch_size must be an integer >= 1; got {batch_size!r}"):
            model.classify([good], batch_size=batch_size)


# The upstream values, typed from the colab and `perceiver/train/dataset.py` (as the module docstring cites them):
# the ImageNet mean (0.485, 0.456, 0.406) and stddev (0.229, 0.224, 0.225) of [0, 1] pixels, times 255.
UPSTREAM_MEAN = np.array([0.485, 0.456, 0.406]) * 255
UPSTREAM_STD = np.array([0.229, 0.224, 0.225]) * 255


def test_normalisation_constants_are_upstreams():
    # Exact: both sides are the same float64 products of the same literals.
    np.testing.assert_array_equal(MEAN_RGB, UPSTREAM_MEAN)
    np.testing.assert_array_equal(STDDEV_RGB, UPSTREAM_STD)
    # and the transform uses them: a flat grey image comes out (v - mean) / std, channel by channel; 1e-6 is
    # float32 rounding of values of order 1 (the transform normalises in float32).
    out = imagenet_transform(np.full((40, 40, 3), 100, np.uint8), 16)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), (100 - UPSTREAM_MEAN) / UPSTREAM_STD, rtol=0, atol=1e-6)


def test_crop_side_is_truncated_not_rounded():
    assert center_crop_size(305, 400) == 266  # 224 / 256 * 305 = 266.875: int() gives 266, round() 267
    assert center_crop_size(400, 305) == 266  # the shorter side, whichever it is


def test_crop_offsets_round_up():
    # 257x321: the crop is int(224 / 256 * 257) = 224 (no resize); the margins 33 and 97 are odd, so the
    # centred crop starts at ceil(33 / 2) = 17 and ceil(97 / 2) = 49 (rounding down would give 16 and 48).
    image = np.random.default_rng(5).integers(0, 256, size=(257, 321, 3), dtype=np.uint8)
    out = imagenet_transform(image).permute(1, 2, 0).numpy()
    expected = ((image[17:241, 49:273] - UPSTREAM_MEAN) / UPSTREAM_STD).astype(np.float32)
    # 1e-5: float32 normalisation of values up to about 2.6 (a few float32 ulps); a one-pixel shift of random
    # pixels moves values by about 1 / 57 per grey level, far beyond it.
    assert_close(out, expected, atol=1e-5, rtol=0, what="crop at (17, 49)")


def _keys(d: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel at distances `d`, with OpenCV's a = -0.75."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _cubic_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] weights of OpenCV's INTER_CUBIC along one axis: half-pixel centres, four taps, border
    replicated (taps outside the image read the edge pixel), no antialiasing (the same four taps downsampling)."""
    weights = np.zeros((dst, src))
    for x in range(dst):
        f = (x + 0.5) * src / dst - 0.5
        i = int(np.floor(f))
        for tap in range(i - 1, i + 3):
            weights[x, min(max(tap, 0), src - 1)] += _keys(np.array(f - tap))
    return weights


def _opencv_cubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC) for uint8 [H, W, 3], written out:
    separable, then rounded and saturated to uint8 as OpenCV returns it. (Checked once against
    opencv-python-headless 4.14, not a dependency: equal, or one grey level off where its fixed point rounds.)"""
    rows, cols = _cubic_matrix(pixels.shape[0], height), _cubic_matrix(pixels.shape[1], width)
    out = np.einsum("yh,hwc,xw->yxc", rows, pixels.astype(np.float64), cols)
    return np.clip(np.round(out), 0, 255)


@pytest.mark.parametrize("shape, size", [((37, 41), (16, 16)), ((37, 41), (60, 52)), ((70, 64), (16, 16))])
def test_resize_is_opencvs_bicubic_within_one_grey_level(shape, size):
    image = np.random.default_rng(6).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    crop = int(size[0] / (size[0] + 32) * min(shape))
    top, left = -(-(shape[0] - crop) // 2), -(-(shape[1] - crop) // 2)  # offsets rounded up
    expected = _opencv_cubic(image[top:top + crop, left:left + crop], *size)
    got = imagenet_transform(image, size).permute(1, 2, 0).numpy().astype(np.float64) * UPSTREAM_STD + UPSTREAM_MEAN
    # The module's stated tolerance: one grey level before normalisation (OpenCV's fixed-point coefficients),
    # plus 1e-3 for undoing the float32 normalisation (float32 ulps of values up to 255).
    worst = np.abs(got - expected).max()
    assert worst <= 1 + 1e-3, f"{worst:.3f} grey levels from OpenCV's INTER_CUBIC"
    # The reference tells kernels apart: a bilinear resize of the same crop misses it by many grey levels.
    crop_t = torch.from_numpy(image[top:top + crop, left:left + crop].astype(np.float32)).permute(2, 0, 1)[None]
    bilinear = torch.nn.functional.interpolate(crop_t, size=size, mode="bilinear", align_corners=False)
    assert np.abs(bilinear[0].permute(1, 2, 0).round().numpy() - expected).max() > 1 + 1e-3, "reference too lax"


def test_pixel_scale_accepts_0_and_255_and_nothing_beyond():
    for dtype in (np.float32, np.float64, np.int32):
        check_pixel_scale(np.array([[[0, 128, 255]]], dtype))  # both ends of 0-255 are pixels
    with pytest.raises(ValueError, match=r"RGB values in 0-255; got values in \[0, 255.5\]"):
        check_pixel_scale(np.array([[[0, 128, 255.5]]], np.float32))
    with pytest.raises(ValueError, match=r"RGB values in 0-255; got values in \[0, 256\]"):
        check_pixel_scale(np.array([[[0, 128, 256]]], np.int32))
    with pytest.raises(ValueError, match=r"RGB values in 0-255; got values in \[-0.5, 255\]"):
        check_pixel_scale(np.array([[[-0.5, 128, 255]]], np.float32))

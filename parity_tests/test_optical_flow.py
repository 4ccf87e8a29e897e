"""Optical flow: the golden upstream fixture through the public contract, tiled estimation, input checks."""

import numpy as np
import pytest
import torch

import converters
import perceiver_torch as pt
from converters.tasks import run_upstream_layout
from perceiver_torch.flow_tiling import default_min_overlap
from perceiver_torch.layers import Perceiver
from perceiver_torch.layers.flow import patches_for_flow

from .conftest import assert_close, golden_config, golden_dir, golden_io

TRAIN_H, TRAIN_W = golden_config("optical_flow")["train_size"]


@pytest.fixture(scope="module")
def flow_model(tmp_path_factory):
    path = converters.convert("optical_flow", golden_dir("optical_flow") / "checkpoint.pickle",
                              golden_dir("optical_flow") / "config.json",
                              tmp_path_factory.mktemp("flow") / "flow.safetensors")
    return pt.load_model(path)


def frames(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, height, width, generator=g) * 2 - 1 for _ in range(2)]


@pytest.mark.parametrize("pickle_name", ["checkpoint.pickle", "checkpoint_plain.pickle"])
def test_optical_flow_matches_upstream(converted, pickle_name):
    model = pt.load_model(converted("optical_flow", "optical_flow", pickle_name))
    io = golden_io("optical_flow")
    outputs = run_upstream_layout("optical_flow", model, {"images": io["input/images"]})
    # The runner moves the model's [B, 2, H, W] flow channels last, as upstream's [B, H, W, 2].
    assert_close(outputs["flow"], io["output/flow"], what="flow")


def test_forward_is_channels_first_and_scaled(flow_model):
    io = golden_io("optical_flow")
    images = torch.from_numpy(io["input/images"]).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        flow = flow_model(images[:, 0], images[:, 1])
    assert flow.shape == (images.shape[0], 2, TRAIN_H, TRAIN_W)
    assert_close(flow.permute(0, 2, 3, 1).numpy(), io["output/flow"], what="flow")
    # flow_scale_factor (20) is applied on top of the Perceiver's [B, H, W, 2] output.
    with torch.no_grad():
        raw = Perceiver.forward(flow_model, patches_for_flow(images))
    torch.testing.assert_close(flow, 20 * raw.permute(0, 3, 1, 2), rtol=0, atol=0)
    assert raw.abs().max() < flow.abs().max() / 10


def test_patches_for_flow_matches_upstream_layout():
    """Zero padding of 1 and channel order (patch row, patch column, channel), checked pixel by pixel."""
    x = torch.randn(2, 2, 3, 5, 7)
    patches = patches_for_flow(x)
    assert patches.shape == (2, 2, 5, 7, 27)
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (0, 0), (1, 1), (1, 1)])
    for i, j in [(0, 0), (2, 3), (4, 6), (0, 6)]:
        expected = np.stack([padded[:, :, c, i + dy, j + dx] for dy in range(3) for dx in range(3) for c in range(3)],
                            axis=-1)
        np.testing.assert_array_equal(patches[:, :, i, j].numpy(), expected)


def test_flow_head_is_zero_initialised_like_upstream():
    model = pt.build_model("optical_flow", golden_config("optical_flow"))
    assert torch.count_nonzero(model.decoder.decoder.output.weight) == 0
    a, b = frames(1, TRAIN_H, TRAIN_W)
    with torch.no_grad():
        assert torch.count_nonzero(model(a, b)) == 0


def test_estimate_flow_at_training_size_equals_forward(flow_model):
    a, b = frames(2, TRAIN_H, TRAIN_W)
    with torch.no_grad():
        direct = flow_model(a, b)
    tiled = flow_model.estimate_flow(a, b, min_overlap=4)
    # One distinct tile (the colab visits it 4 times): (flow * 4w) / 4w, exact up to rounding.
    assert_close(tiled.numpy(), direct.numpy(), atol=1e-6, rtol=1e-6, what="single-tile flow")


def test_estimate_flow_with_default_overlap_works_on_small_models(flow_model):
    # The colab's 20-pixel overlap does not fit 12x16 tiles; the default scales down instead of failing.
    assert default_min_overlap((TRAIN_H, TRAIN_W)) == TRAIN_H // 4 and default_min_overlap((368, 496)) == 20
    a, b = frames(1, TRAIN_H + 5, 2 * TRAIN_W)
    assert torch.equal(flow_model.estimate_flow(a, b), flow_model.estimate_flow(a, b, min_overlap=TRAIN_H // 4))


def test_estimate_flow_on_larger_frames_is_full_size_and_tile_consistent(flow_model):
    height, width = TRAIN_H + 9, 2 * TRAIN_W + 3
    a, b = frames(2, height, width, seed=1)
    flow = flow_model.estimate_flow(a, b, min_overlap=4)
    assert flow.shape == (2, 2, height, width)
    assert torch.isfinite(flow).all()
    # Where only the first tile covers the frame, the blend is that tile's own prediction.
    with torch.no_grad():
        first = flow_model(a[..., :TRAIN_H, :TRAIN_W], b[..., :TRAIN_H, :TRAIN_W])
    assert_close(flow[..., :4, :4].numpy(), first[..., :4, :4].numpy(), atol=1e-6, rtol=1e-6, what="corner")
    unbatched = flow_model.estimate_flow(a[0], b[0], min_overlap=4)
    assert_close(unbatched.numpy(), flow[0].numpy(), atol=1e-5, rtol=1e-5, what="unbatched")


@pytest.mark.parametrize("tile_batch_size", [2, 5, 64])
def test_batched_tiles_equal_one_tile_at_a_time(flow_model, tile_batch_size):
    a, b = frames(2, TRAIN_H + 7, TRAIN_W + 11, seed=2)
    one = flow_model.estimate_flow(a, b, min_overlap=3, tile_batch_size=1)
    many = flow_model.estimate_flow(a, b, min_overlap=3, tile_batch_size=tile_batch_size)
    # Same arithmetic per tile; only the matmul batch size differs (float32 reassociation ~1e-7).
    assert_close(many.numpy(), one.numpy(), atol=1e-5, rtol=1e-5, what="batched tiles")


@pytest.mark.parametrize("bad, match", [
    (lambda a: a.permute(0, 2, 3, 1), "channels-first RGB \\[B, 3, H, W\\].*channels-last"),
    (lambda a: torch.cat([a, a[:, :1]], dim=1), "channels-first RGB \\[B, 3, H, W\\]; got shape \\(1, 4,"),
    (lambda a: a[0], "channels-first RGB \\[B, 3, H, W\\]"),
    (lambda a: (a * 127).to(torch.uint8), "floating-point tensor with pixels in \\[-1, 1\\]"),
])
def test_wrong_frames_are_rejected(flow_model, bad, match):
    a, b = frames(1, TRAIN_H, TRAIN_W)
    error = TypeError if "floating" in match else ValueError
    with pytest.raises(error, match=match):
        flow_model(bad(a), bad(b))
    with pytest.raises(error, match=match):
        flow_model.estimate_flow(bad(a), b)


def test_frames_smaller_than_training_size_are_rejected(flow_model):
    a, b = frames(1, TRAIN_H - 1, TRAIN_W + 5)
    message = f"smaller than the training size {TRAIN_H}x{TRAIN_W}"
    with pytest.raises(ValueError, match=message):
        flow_model.estimate_flow(a, b)
    with pytest.raises(ValueError, match=f"training size {TRAIN_H}x{TRAIN_W}"):
        flow_model(a, b)


def test_forward_needs_exactly_the_training_size(flow_model):
    a, b = frames(1, TRAIN_H + 2, TRAIN_W)
    with pytest.raises(ValueError, match="Use estimate_flow for larger frames"):
        flow_model(a, b)


def test_mismatched_frames_are_rejected(flow_model):
    a, _ = frames(1, TRAIN_H + 2, TRAIN_W + 2)
    _, b = frames(1, TRAIN_H + 2, TRAIN_W + 3)
    with pytest.raises(ValueError, match="image1 and image2 must have the same shape"):
        flow_model.estimate_flow(a, b)
    with pytest.raises(ValueError, match="image1 and image2 must have the same shape"):
        flow_model(a[..., :TRAIN_H, :TRAIN_W], b[:, :, :TRAIN_H, :TRAIN_W].repeat(2, 1, 1, 1))


def test_bad_tiling_arguments_are_rejected(flow_model):
    a, b = frames(1, TRAIN_H + 2, TRAIN_W + 2)
    with pytest.raises(ValueError, match=r"min_overlap \(12\) must be smaller than the tile size \(12, 16\): "
                                         r"pass 0 <= min_overlap < 12 \(the default for these tiles is 3\)"):
        flow_model.estimate_flow(a, b, min_overlap=TRAIN_H)
    with pytest.raises(ValueError, match="tile_batch_size must be >= 1"):
        flow_model.estimate_flow(a, b, tile_batch_size=0)


def test_subsampled_queries_are_refused(flow_model):
    with pytest.raises(ValueError, match="subsampled output points are not supported"):
        flow_model.decoder.decoder_query(torch.zeros(1, 4, 8), subsampled_points=torch.arange(2))


def test_estimate_flow_argument_errors_name_the_layout(flow_model):
    a, b = frames(1, TRAIN_H, TRAIN_W)
    with pytest.raises(ValueError, match=r"must both be channels-first RGB \[B, 3, H, W\] \(or both \[3, H, W\]\)"):
        flow_model.estimate_flow(a[0], b)
    with pytest.raises(TypeError, match=r"image1 must be a floating-point tensor .* got list"):
        flow_model.estimate_flow([1], [2])
    # An unbatched image1 is fine: the error names the pair, not image1's rank.
    with pytest.raises(ValueError, match=r"must both be channels-first RGB \[B, 3, H, W\] \(or both \[3, H, W\]\); "
                                         r"got float32 \[3, 12, 16\] and NoneType"):
        flow_model.estimate_flow(a[0], None)
    with pytest.raises(ValueError, match=r"\(or both \[3, H, W\]\); got float32 \[3, 12, 16\] and float32 \[12, 16\]"):
        flow_model.estimate_flow(a[0], b[0, 0])


def test_frames_of_another_type_are_named_by_type_and_layout(flow_model):
    # A NumPy array was reported as 'got float32', as if it were a float32 tensor.
    a, b = frames(1, TRAIN_H, TRAIN_W)
    with pytest.raises(TypeError, match=r"forward: image1 must be a floating-point tensor with pixels in \[-1, 1\]; "
                                        r"got ndarray\."):
        flow_model(a.numpy(), b)
    with pytest.raises(TypeError, match=r"estimate_flow: image2 must be .* got int64 \[1, 3, 12, 16\]\."):
        flow_model.estimate_flow(a, b.long())


def test_estimate_flow_of_a_float64_model_is_float64(flow_model):
    # The blend is as wide as the model's flow: float32 frames into a float64 model give float64 flow.
    model = flow_model.double()
    try:
        a, b = frames(1, TRAIN_H, TRAIN_W)
        with torch.no_grad():
            flow, direct = model.estimate_flow(a, b), model(a.double(), b.double())
        assert flow.dtype == direct.dtype == torch.float64
        torch.testing.assert_close(flow, direct, rtol=1e-12, atol=1e-12)
    finally:
        flow_model.float()

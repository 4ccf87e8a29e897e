"""Tiling, blending weights and the flow PNG writer (no model needed)."""

import re
import struct
import zlib

import numpy as np
import pytest
import torch

from perceiver_torch.flow_tiling import blend_weights, stitch_tiles, tile_origins, weight_map
from perceiver_torch.flow_visualization import PNG_SIGNATURE, flow_to_rgb, save_flow_png, write_png

from .sandbox import run_isolated


def test_upstream_colab_grid_for_its_sintel_frames():
    # The colab's example frames are 436x1024, TRAIN_SIZE (368, 496), min_overlap 20.
    assert tile_origins((436, 1024), (368, 496), 20) == [(0, 0), (0, 476), (0, 528), (68, 0), (68, 476), (68, 528)]
    # At exactly the training size: range(0, 368, 348) = [0, 348], the last moved flush to 0 -> (0, 0) four times.
    assert tile_origins((368, 496), (368, 496), 20) == [(0, 0)] * 4


def test_colab_grid_keeps_repeated_tiles():
    # Rows: range(0, 8, 4) = [0, 4] -> [0, 0]; columns: range(0, 12, 4) = [0, 4, 8] -> [0, 4, 4].
    assert tile_origins((8, 12), (8, 8), 4) == [(0, 0), (0, 4), (0, 4)] * 2


def test_windows_the_colab_would_run_past_the_edge_are_kept_inside():
    # Columns: range(0, 13, 4) = [0, 4, 8, 12]; the colab moves 12 to 7 but leaves 8, whose window
    # (8..13) overruns the 13-wide frame. Every window here stays inside: 8 is clamped to 7 as well.
    assert tile_origins((4, 13), (4, 6), 2)[:4] == [(0, 0), (0, 4), (0, 7), (0, 7)]
    for frame in [(9, 13), (12, 20), (31, 17)]:
        for y, x in tile_origins(frame, (4, 6), 2):
            assert 0 <= y <= frame[0] - 4 and 0 <= x <= frame[1] - 6


def test_blend_weights_fall_off_towards_every_edge():
    expected = torch.tensor([
        [1, 1, 1, 1, 1],
        [1, 2, 2, 2, 1],
        [1, 2, 2, 2, 1],
        [1, 1, 1, 1, 1],
    ], dtype=torch.float32)
    torch.testing.assert_close(blend_weights((4, 5)), expected, rtol=0, atol=0)


def test_weights_sum_at_the_seam():
    # Frame 4x8, tiles 4x6, overlap 2: tiles at x=0 and x=2 overlap on columns 2..5; the colab's
    # row grid (range(0, 4, 2) = [0, 2], last moved flush to 0) visits each of them twice.
    assert tile_origins((4, 8), (4, 6), 2) == [(0, 0), (0, 2), (0, 0), (0, 2)]
    row = blend_weights((4, 6))[1]
    assert row.tolist() == [1, 2, 2, 2, 2, 1]
    left = [1, 2, 2, 2, 2, 1, 0, 0]
    right = [0, 0, 1, 2, 2, 2, 2, 1]
    expected = [2 * (a + b) for a, b in zip(left, right, strict=True)]  # 2 x [1, 2, 3, 4, 4, 3, 2, 1]
    assert weight_map((4, 8), (4, 6), 2)[1].tolist() == expected
    edge = weight_map((4, 8), (4, 6), 2)[0]  # the top row: every tile's weight is 1 there
    assert edge.tolist() == [2, 2, 4, 4, 4, 4, 2, 2]


@pytest.mark.parametrize("frame, tile, overlap", [((9, 13), (4, 6), 2), ((12, 20), (5, 7), 3), ((6, 6), (6, 6), 1)])
def test_normalised_weights_sum_to_one_everywhere(frame, tile, overlap):
    """A tile-consistent 'model' (flow = a crop of one fixed field) is reproduced exactly by the blend."""
    field = torch.randn(2, 2, *frame, dtype=torch.float64)
    image1 = torch.cat([field, torch.zeros(2, 1, *frame, dtype=torch.float64)], dim=1)
    calls = []

    def crop_model(first, second):
        calls.append(first.shape[0])
        return first[:, :2]

    flow = stitch_tiles(image1, image1, crop_model, tile, overlap, tile_batch_size=2)
    torch.testing.assert_close(flow, field, rtol=1e-12, atol=1e-12)
    assert sum(calls) == 2 * len(set(tile_origins(frame, tile, overlap)))  # each distinct tile of both pairs, once
    assert max(calls) <= 2 * 2


def test_blend_is_a_weighted_mean_of_tile_predictions():
    # Each tile predicts a constant (its index + 1): away from seams the blend is that constant,
    # at a seam the weight-proportional mean.
    image = torch.zeros(1, 3, 4, 8)
    counter = iter(range(1, 100))

    def constant_model(first, second):
        return torch.stack([torch.full((2, 4, 6), float(next(counter))) for _ in range(first.shape[0])])

    flow = stitch_tiles(image, image, constant_model, (4, 6), 2, tile_batch_size=1)
    row = flow[0, 0, 1]
    assert row[:2].tolist() == [1.0, 1.0] and row[-2:].tolist() == [2.0, 2.0]
    # Column 2: weights 2 (left tile) and 1 (right tile) -> (2*1 + 1*2) / 3.
    assert row[2].item() == pytest.approx(4 / 3)


def test_reduced_precision_frames_are_blended_in_float32():
    """bfloat16 frames: the tiles' float32 flow is blended in float32 (not rounded to bfloat16 on the way)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 6, 11, generator=g).to(torch.bfloat16)
    predictions = torch.randn(8, 2, 4, 6, generator=g) * 100  # float32, as a model with its float32 islands gives
    served = iter(predictions)

    def model(first, second):
        assert first.dtype == torch.bfloat16
        return torch.stack([next(served) for _ in range(first.shape[0])])

    flow = stitch_tiles(image, image, model, (4, 6), 2, tile_batch_size=1)
    served = iter(predictions.double())
    want = stitch_tiles(image.double(), image.double(), lambda a, b: torch.stack([next(served) for _ in a]),
                        (4, 6), 2, tile_batch_size=1)
    assert flow.dtype == torch.float32
    # float32 rounding of a weighted mean of values ~100 (a bfloat16 sum would be off by ~0.5)
    torch.testing.assert_close(flow.double(), want, atol=1e-4, rtol=0)


def read_png(data: bytes):
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind}"
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()  # filter type None on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_png_writer_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    path = write_png(tmp_path / "sub" / "x.png", rgb)
    np.testing.assert_array_equal(read_png((tmp_path / "sub" / "x.png").read_bytes()), rgb)
    assert path.endswith("x.png")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temp file left behind


def test_png_writer_rejects_bad_arrays_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="uint8 RGB image \\[H, W, 3\\]"):
        write_png(tmp_path / "bad.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 RGB image \\[H, W, 3\\]"):
        write_png(tmp_path / "bad.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_flow_colours_follow_the_colab_colour_model(tmp_path):
    flow = torch.zeros(2, 2, 3)
    flow[0, 0, 1] = 24.0  # rightwards, full magnitude: hue 0 -> red
    flow[1, 0, 2] = 100.0  # downwards (+v): hue 90 degrees -> yellow-green
    flow[0, 1, 0] = 12.0  # half magnitude: half saturation
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 255, 255]  # no motion: white
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb[0, 2].tolist() == [128, 255, 0]
    assert rgb[1, 0].tolist() == [255, 128, 128]  # saturation 127/255 of red
    save_flow_png(tmp_path / "flow.png", flow)
    np.testing.assert_array_equal(read_png((tmp_path / "flow.png").read_bytes()), rgb)


def test_flow_to_rgb_wants_channels_first_flow():
    with pytest.raises(ValueError, match="flow must be \\[2, H, W\\]"):
        flow_to_rgb(np.zeros((4, 5, 2)))


def test_flow_to_rgb_takes_a_bfloat16_flow_and_refuses_complex_flow_and_bad_max_flow():
    flow = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0)) * 30
    half = flow.bfloat16()  # has no NumPy dtype: failed with "Got unsupported ScalarType BFloat16"
    np.testing.assert_array_equal(flow_to_rgb(half), flow_to_rgb(half.float()))
    for complex_flow in (flow.to(torch.complex64), flow.numpy().astype(np.complex64)):  # imaginary part was dropped
        with pytest.raises(TypeError, match="flow must hold real displacements; got .*complex64"):
            flow_to_rgb(complex_flow)
    # NaN passed `max_flow <= 0` and drew every pixel white; the others failed inside NumPy or torch.
    for max_flow in (float("nan"), float("inf"), 0, -1.0, "24", None, True, torch.tensor(24.0)):
        with pytest.raises(ValueError, match=r"max_flow must be a positive finite number .*; got "):
            flow_to_rgb(flow, max_flow)
    np.testing.assert_array_equal(flow_to_rgb(flow, np.float32(12)), flow_to_rgb(flow, 12))


def _shift_model(a, b):
    return (a[:, :2] - b[:, :2]) * 2


def test_stitch_tiles_records_no_graph():
    # The README drives exported or plain tile models with it directly, where estimate_flow's no_grad is absent.
    weight = torch.ones(1, requires_grad=True)
    image = torch.rand(1, 3, 10, 13)
    flow = stitch_tiles(image, image, lambda a, b: _shift_model(a, b) * weight, (4, 6), 2)
    assert flow.shape == (1, 2, 10, 13) and not flow.requires_grad


@pytest.mark.parametrize("kwargs, error, refusal", [
    ({"tile_batch_size": 2.5}, TypeError, r"tile_batch_size must be an integer >= 1; got 2.5"),
    ({"tile_batch_size": None}, TypeError, r"tile_batch_size must be an integer >= 1; got None"),
    ({"tile_batch_size": 0}, ValueError, r"tile_batch_size must be >= 1; got 0"),
    ({"min_overlap": 2.0}, TypeError, r"min_overlap must be an integer from 0 to 3, or None; got 2.0"),
    ({"tile_size": (-4, 6)}, ValueError, r"tile_size must be two positive integers"),
    ({"tile_size": (4, 6, 1)}, ValueError, r"tile_size must be two positive integers"),
    ({"image1": torch.rand(3, 10, 13)}, ValueError, r"image1 must be a channels-first tensor \[B, 3, H, W\]; got \(3,"),
    ({"image2": torch.rand(1, 10, 13, 3)}, ValueError, r"image2 must be a channels-first tensor"),
    ({"image2": torch.rand(1, 3, 10, 14)}, ValueError, r"image1 and image2 must have the same shape"),
])
def test_stitch_tiles_checks_its_arguments(kwargs, error, refusal):
    image = torch.rand(1, 3, 10, 13)
    args = {"image1": image, "image2": image, "flow_fn": _shift_model, "tile_size": (4, 6), "min_overlap": 2,
            "tile_batch_size": 2, **kwargs}
    with pytest.raises(error, match=refusal):
        stitch_tiles(**args)


def test_stitch_tiles_takes_numpy_integers():
    image = torch.rand(1, 3, 10, 13)
    expected = stitch_tiles(image, image, _shift_model, (4, 6), 2, 2)
    got = stitch_tiles(image, image, _shift_model, (np.int64(4), np.int64(6)), np.int64(2), np.int64(2))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("frame_size", [(10,), (10, 13, 3), (0, 13), (10, 13.0), "ab", (True, 13), 1e12])
def test_grid_helpers_check_the_frame_size(frame_size, monkeypatch):
    """tile_origins and weight_map are public: a bad frame size is named, and weight_map allocates nothing first."""
    def no_allocation(*args, **kwargs):
        raise AssertionError("weight_map allocated before checking the frame size")

    for helper in (tile_origins, weight_map):
        with pytest.raises(ValueError, match=r"frame_size must be two positive integers \(height, width\)"):
            with monkeypatch.context() as patch:
                patch.setattr(torch, "zeros", no_allocation)
                helper(frame_size, (4, 6), 2)


def test_blend_weights_checks_the_tile_size():
    with pytest.raises(ValueError, match=r"tile_size must be two positive integers"):
        blend_weights((4.5, 6))


@pytest.mark.parametrize("call", [
    "tile_origins((10**12, 10**12), (368, 496))",  # listed tiles for 40 s, then MemoryError
    "weight_map((10**12, 10**12), (368, 496))",  # the same, through tile_origins
    "blend_weights((10**12, 10**12))",  # torch's allocator: "you tried to allocate 8000000000000 bytes"
])
def test_sizes_no_frame_can_have_are_refused_at_once(call):
    # In a memory-capped child: were the check to go, the listing would fail there, not take the test machine's memory.
    result = run_isolated(f"""
        from perceiver_torch.flow_tiling import blend_weights, tile_origins, weight_map
        {call}
    """, timeout_s=120)
    assert not result.ok and result.error_type == "builtins.ValueError", (result.error_type, result.stderr[-500:])
    assert re.search(r"_size \(1000000000000, 1000000000000\) is larger than any frame can be",
                     result.error_message), result.error_message


def test_weight_map_allocates_its_map_before_listing_tiles(monkeypatch):
    # A frame no memory holds (10**9 x 10**9) is refused by the allocator at once, not after listing its 6e12 tiles.
    from perceiver_torch import flow_tiling

    class Allocated(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Allocated

    def listed(*args, **kwargs):
        raise AssertionError("weight_map listed the tiles before allocating the map")

    monkeypatch.setattr(torch, "zeros", refuse)
    monkeypatch.setattr(flow_tiling.itertools, "product", listed)
    with pytest.raises(Allocated):
        weight_map((10**9, 10**9), (368, 496))


@pytest.mark.parametrize("dtype, got", [
    ("float32", "'float32'"),  # was taken as a device: "Invalid device string: 'float32'"
    (torch.int8, "torch.int8"),  # weights beyond 127 wrapped around: -128 in a 368x496 tile, silently
    (torch.bool, "torch.bool"),  # every weight True: a meaningless normaliser, silently
])
def test_blend_weights_and_weight_map_take_a_floating_point_dtype(dtype, got):
    for call in (lambda: blend_weights((368, 496), dtype=dtype),
                 lambda: weight_map((400, 520), (368, 496), dtype=dtype)):
        with pytest.raises(TypeError, match=rf"dtype must be a floating-point torch.dtype .*; got {re.escape(got)}\."):
            call()

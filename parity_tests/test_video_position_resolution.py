"""`image_position_resolution` (the video colab's IMG_SZ) reaches the Torch model and the JAX reference alike.

The released colab builds its image Fourier features at (16, 56, 56) for 224 x 224 frames; the golden
fixture was made with the frame size. Rebuilding the golden model with a different resolution must change
its outputs (the key takes effect) and both implementations must still agree (they read it the same way).
"""

import pytest
import torch

pytest.importorskip("jax")
pytest.importorskip("haiku")

import converters  # noqa: E402
from converters import jax_reference  # noqa: E402
from converters.tasks import run_upstream_layout  # noqa: E402
from perceiver_torch.registry import build_model, preset  # noqa: E402

from .conftest import assert_close, golden_config, golden_dir, golden_io  # noqa: E402

OUTPUTS = ("image", "audio", "label")


def test_released_preset_uses_the_colab_img_sz():
    config = preset("video_autoencoding")["config"]
    assert (config["image_size"], config["image_position_resolution"]) == (224, 56)


def test_image_position_resolution_changes_outputs_and_both_implementations_agree():
    config = {**golden_config("video_autoencoding")}
    config["image_position_resolution"] = config["image_size"] // 4
    io = golden_io("video_autoencoding")
    inputs = {k.removeprefix("input/"): v for k, v in io.items() if k.startswith("input/")}
    checkpoint = converters.load_haiku_checkpoint(golden_dir("video_autoencoding") / "checkpoint.pickle")

    expected = jax_reference.apply("video_autoencoding", config, checkpoint.params, checkpoint.state, inputs)
    model = build_model("video_autoencoding", config).eval()
    arrays = converters.convert_tree("video_autoencoding", checkpoint, config)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, strict=True)
    actual = run_upstream_layout("video_autoencoding", model, inputs)

    # The image positions differ from the fixture's, so the image reconstruction must move.
    assert abs(expected["image"] - io["output/image"]).max() > 1e-3
    for name in OUTPUTS:
        assert_close(actual[name], expected[name], what=name)

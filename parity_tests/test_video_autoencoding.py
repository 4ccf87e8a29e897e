"""Video autoencoding reproduces the upstream golden chunk; autoencode equals per-chunk forward calls."""

import copy

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters.tasks import run_upstream_layout
from perceiver_torch import build_model
from perceiver_torch.models.video_autoencoding import kinetics700_labels
from perceiver_torch.registry import preset

from .conftest import assert_close, convert_golden, golden_config, golden_io, seeded_model

OUTPUTS = ("image", "audio", "label")


def _public_inputs(io):
    images = torch.from_numpy(io["input/images"]).permute(0, 1, 4, 2, 3)  # [B, F, 3, S, S], channels-first
    audio = torch.from_numpy(io["input/audio"])
    subsample = {name: torch.from_numpy(io[f"input/subsample_{name}"]).long() for name in ("image", "audio")}
    return images, audio, subsample


@pytest.fixture(scope="module")
def golden_model(tmp_path_factory):
    return pt.load_model(convert_golden("video_autoencoding", "video_autoencoding", tmp_path_factory.mktemp("video")))


def test_fixture_decodes_chunk_one():
    io, config = golden_io("video_autoencoding"), golden_config("video_autoencoding")
    points = config["num_frames"] * config["image_size"] ** 2 // config["nchunks"]
    np.testing.assert_array_equal(io["input/subsample_image"], np.arange(points, 2 * points))


@pytest.mark.parametrize("pickle_name", ["checkpoint.pickle", "checkpoint_plain.pickle"])
def test_video_autoencoding_matches_upstream(converted, pickle_name):
    model = pt.load_model(converted("video_autoencoding", "video_autoencoding", pickle_name))
    io = golden_io("video_autoencoding")
    with torch.no_grad():
        outputs = model(*_public_inputs(io))
    for name in OUTPUTS:
        assert_close(outputs[name].numpy(), io[f"output/{name}"], what=name)
    # The upstream-layout runner (parity harness, zoo) agrees.
    runner = run_upstream_layout("video_autoencoding", model,
                                 {k.removeprefix("input/"): v for k, v in io.items() if k.startswith("input/")})
    for name in OUTPUTS:
        np.testing.assert_array_equal(runner[name], outputs[name].numpy())


def test_autoencode_equals_concatenated_per_chunk_forward(golden_model):
    io = golden_io("video_autoencoding")
    images, audio, _ = _public_inputs(io)
    chunks = golden_model.config["nchunks"]
    image_step = golden_model.num_image_points // chunks
    audio_step = golden_model.num_audio_patches // chunks
    with torch.no_grad():
        whole = golden_model.autoencode(images, audio)
        parts = [golden_model(images, audio, {"image": torch.arange(i * image_step, (i + 1) * image_step),
                                              "audio": torch.arange(i * audio_step, (i + 1) * audio_step)})
                 for i in range(chunks)]
    batch, frames, size = images.shape[0], golden_model.num_frames, golden_model.image_size
    image = torch.cat([p["image"] for p in parts], 1).reshape(batch, frames, size, size, 3).permute(0, 1, 4, 2, 3)
    audio_out = torch.cat([p["audio"] for p in parts], 1).reshape(batch, -1, 1)
    assert whole["image"].shape == images.shape and whole["audio"].shape == audio.shape
    # Same operations on the same values: equal up to float32 rounding of differently batched matmuls.
    torch.testing.assert_close(whole["image"], image, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole["audio"], audio_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole["label"], parts[-1]["label"], rtol=1e-6, atol=1e-6)
    # ... and its chunk 1 is the upstream golden chunk.
    chunk1 = whole["image"].permute(0, 1, 3, 4, 2).reshape(batch, -1, 3)[:, image_step:2 * image_step]
    assert_close(chunk1.numpy(), io["output/image"], what="autoencode chunk 1")


def test_autoencode_builds_no_graph_like_the_other_helpers(golden_model):
    images, audio, _ = _public_inputs(golden_io("video_autoencoding"))
    assert torch.is_grad_enabled()
    out = golden_model.autoencode(images, audio)
    assert all(not t.requires_grad and t.grad_fn is None for t in out.values())


def test_released_configuration_has_the_released_parameter_count():
    with torch.device("meta"):
        model = pt.build_preset("video_autoencoding")
    assert sum(p.numel() for p in model.parameters()) == 19_858_855 == preset("video_autoencoding")["num_params"]


def test_video_image_audio_label_model_trains():
    """The multimodal model (image patches + audio + masked label) runs forward and backward."""
    model = seeded_model("video_autoencoding").train()
    images, audio, subsample = _public_inputs(golden_io("video_autoencoding"))
    out = model(images, audio, subsample)
    loss = (out["image"] - 0.5).square().mean() + out["audio"].square().mean() + out["label"].logsumexp(-1).mean()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    # The image modality's padding reaches the loss through the encoder; the label input is always masked.
    assert grads["input_preprocessor.padding.image.embeddings"].abs().sum() > 0
    assert grads["input_preprocessor.mask_tokens.label.embeddings"].abs().sum() > 0
    assert grads["encoder.cross_attend.attention.query.weight"].abs().sum() > 0
    assert grads["input_preprocessor.padding.label.embeddings"] is None


@pytest.mark.parametrize(("subsample", "message"), [
    ({"image": torch.tensor([-1])}, r"subsample\['image'\] indices must lie in \[0, "),
    ({"audio": torch.tensor([10**6])}, r"subsample\['audio'\] indices must lie in \[0, "),
    ({"image": torch.zeros(2, 2, dtype=torch.long)}, "1-D integer tensor"),
    ({"label": torch.tensor([0])}, "unexpected \\['label'\\]"),
])
def test_bad_subsample_indices_are_refused(golden_model, subsample, message):
    images, audio, _ = _public_inputs(golden_io("video_autoencoding"))
    with pytest.raises(ValueError, match=message):
        golden_model(images, audio, subsample)


def test_an_empty_subsample_decodes_no_points_of_that_modality(golden_model):
    # No indices is a valid request (no points), not a range to check: the range check reads nothing.
    images, audio, subsample = _public_inputs(golden_io("video_autoencoding"))
    with torch.no_grad():
        full = golden_model(images, audio, subsample)
        out = golden_model(images, audio, {"image": torch.tensor([], dtype=torch.long), "audio": subsample["audio"]})
    assert out["image"].shape == (images.shape[0], 0, 3)
    assert {k: v.shape for k, v in out.items() if k != "image"} == {k: full[k].shape for k in ("audio", "label")}


def test_host_or_list_indices_reach_a_model_on_another_device(golden_model):
    # Indices are checked on the host and moved to the model's device (meta stands in for an accelerator).
    images, audio, subsample = _public_inputs(golden_io("video_autoencoding"))
    with torch.no_grad():
        expected = golden_model(images, audio, subsample)
        model = copy.deepcopy(golden_model).to("meta")
        out = model(images.to("meta"), audio.to("meta"),
                    {"image": subsample["image"], "audio": subsample["audio"].tolist()})
    assert {k: v.device.type for k, v in out.items()} == dict.fromkeys(OUTPUTS, "meta")
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in expected.items()}


def test_subsample_that_is_not_a_dict_is_refused_briefly(golden_model):
    images, audio, _ = _public_inputs(golden_io("video_autoencoding"))
    with pytest.raises(TypeError, match=r"subsample must be a dict .* got int64 \[6272\]") as caught:
        golden_model(images, audio, torch.arange(6272))
    assert len(str(caught.value)) < 300


def test_top_labels_names_this_models_classes_and_checks_its_arguments(golden_model):
    # The golden model has 7 classes: Kinetics-700 names would be wrong for it, so its labels are indices.
    assert golden_model.labels == tuple(str(i) for i in range(7))
    logits = torch.tensor([[0.0, 3, 1, 0, 0, 0, 2], [5.0, 4, 0, 0, 0, 0, 3]])
    top = golden_model.top_labels(logits, k=3)
    assert [[name for name, _ in row] for row in top] == [["1", "6", "2"], ["0", "1", "6"]]
    torch.testing.assert_close(torch.tensor([p for _, p in top[0]]), logits[0].softmax(-1)[[1, 6, 2]])
    for bad, message in ((torch.randn(1, 700), r"logits must be a floating-point tensor \[B, 7\]"),
                         (torch.randn(7), r"\[B, 7\]"), ([0.0] * 7, r"got list"), (logits.long(), r"int64")):
        with pytest.raises(ValueError, match=message):
            golden_model.top_labels(bad)
    for k in (0, 8, 2.0, True):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 7\]"):
            golden_model.top_labels(logits, k=k)
    assert golden_model.top_labels(logits, k=np.int64(3)) == top  # NumPy integers are integers
    kinetics = build_model("video_autoencoding", {**golden_config("video_autoencoding"), "num_classes": 700})
    assert kinetics.labels == kinetics700_labels() and len(kinetics.labels) == 700


def test_unsubsampled_forward_is_not_autoencode_but_their_labels_agree(golden_model):
    # Upstream's unsubsampled query grid is linspace(-1, 1, n), its subsampled points -1 + 2i/n (README, video
    # section: 0.25 / 0.34 apart on this clip); the label does not depend on the output queries.
    images, audio, _ = _public_inputs(golden_io("video_autoencoding"))
    with torch.no_grad():
        full, chunked = golden_model(images, audio), golden_model.autoencode(images, audio)
    assert (full["image"] - chunked["image"]).abs().max() > 0.1
    assert (full["audio"] - chunked["audio"]).abs().max() > 0.1
    torch.testing.assert_close(full["label"], chunked["label"], rtol=0, atol=1e-5)

"""Small random transformers Perceiver models of each of the six classes, saved with save_pretrained."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from parity_tests.conftest import golden_dir

# Sizes transformers fixes in code (256 decoder qk channels, 64 Fourier bands, ...) stay; the rest is small.
_ENCODER = dict(num_latents=8, d_latents=32, num_blocks=2, num_self_attends_per_block=2,
                num_self_attention_heads=4, num_cross_attention_heads=1)
SMALL = {
    "PerceiverForMaskedLM": ("language", dict(_ENCODER, d_model=24, qk_channels=16, v_channels=32,
                                              num_cross_attention_heads=2, max_position_embeddings=20)),
    "PerceiverForImageClassificationLearned": ("imagenet", dict(_ENCODER, image_size=6, num_labels=5)),
    "PerceiverForImageClassificationFourier": ("imagenet", dict(_ENCODER, num_labels=5)),
    "PerceiverForImageClassificationConvProcessing": ("imagenet", dict(_ENCODER, num_labels=5)),
    "PerceiverForOpticalFlow": ("optical_flow", dict(_ENCODER, train_size=[6, 8])),
    "PerceiverForMultimodalAutoencoding": ("video_autoencoding", dict(
        _ENCODER, num_frames=2, image_size=8, audio_samples_per_frame=32, samples_per_patch=16,
        output_shape=[1, 2, 8, 8], output_num_channels=8, num_labels=7, _label_trainable_num_channels=12)),
}


def small_hf_model(architecture: str, seed: int = 0, **overrides):
    """A randomly initialised transformers model of `architecture` at a small config, in eval mode."""
    import transformers

    _, fields = SMALL[architecture]
    torch.manual_seed(seed)
    config = transformers.PerceiverConfig(**{**fields, **overrides}, architectures=[architecture])
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():  # transformers zero-initialises biases and norms: make every tensor distinctive
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * (0.1 if "running_var" not in name else 0.01)
                             + (1.0 if "running_var" in name else 0.0))
    return model


def save_small(architecture: str, directory: Path, seed: int = 0, **overrides) -> Path:
    small_hf_model(architecture, seed, **overrides).save_pretrained(str(directory))
    return directory


def standin_repo(root: Path, repo_id: str, model_dir: Path) -> str:
    """Lay `model_dir`'s files out as `repo_id` at a commit (and branch main) in a Hub stand-in tree.

    The commit id is derived from the files, as git's is: other weights never share a commit id.
    """
    digest = hashlib.sha1()  # noqa: S324 - an id, as git's
    for path in sorted(model_dir.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    commit = digest.hexdigest()
    files = root / repo_id / commit
    files.mkdir(parents=True)
    for path in model_dir.iterdir():
        (files / path.name).write_bytes(path.read_bytes())
    (root / repo_id / "refs").mkdir()
    (root / repo_id / "refs" / "main").write_text(commit)
    return commit


# Input sizes these classes do not fix, kept small so the reference initialises in seconds.
IMAGE_SIZES = {"PerceiverForImageClassificationFourier": [16, 16],
               "PerceiverForImageClassificationConvProcessing": [32, 32]}


def haiku_checkpoint(architecture: str, directory: Path, reference_io: bool = False) -> tuple[str, dict]:
    """A Haiku checkpoint.pickle (release layout, from the JAX reference) at a config `architecture` represents.

    With `reference_io`, also the reference's io.npz on example inputs. Returns (task, our config).
    """
    import transformers

    from converters import jax_reference
    from converters.transformers.config_map import from_hf
    from parity_tests.tiny_sources import _plain, canonical_pickle

    task, fields = SMALL[architecture]
    _, config = from_hf(task, transformers.PerceiverConfig(**fields, architectures=[architecture]).to_dict())
    if architecture in IMAGE_SIZES:
        config["image_size"] = IMAGE_SIZES[architecture]
    if task == "video_autoencoding":
        config["nchunks"] = 2  # the release's 128 decoding chunks do not divide this small clip
    inputs = jax_reference.example_inputs(task, config, batch=1, seed=0)
    params, state = jax_reference.init(task, config, inputs, seed=0, perturb=True)
    directory.mkdir(parents=True, exist_ok=True)
    tree = jax_reference.checkpoint_tree(task, params, state)
    (directory / "checkpoint.pickle").write_bytes(canonical_pickle(_plain(tree)))
    if reference_io:
        outputs = jax_reference.apply(task, config, params, state, inputs)
        arrays = {f"input/{k}": np.asarray(v) for k, v in inputs.items()}
        arrays.update({f"output/{k}": np.asarray(v) for k, v in outputs.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (directory / "io.npz").write_bytes(buffer.getvalue())
    return task, config


# Where transformers computes what upstream does (tanh GELU, no padding, flow x20, ...), its
# outputs and ours differ only by float32 rounding of differently ordered sums, which grows with
# the outputs' magnitude: 1e-6 of it, at least 1e-5 (outputs of magnitude ~1-10; the golden parity
# tests see ~1e-6 there). The golden language logits reach 22 (a float32 ulp there is 1.9e-6), where
# two float32 implementations were seen 1.05e-5 apart; the smallest real divergence is ~3e-4.
def agree_atol(magnitude: float) -> float:
    return 1e-6 * max(10.0, float(magnitude))


def golden_magnitude(family: str) -> float:
    """The largest |output| stored in a golden fixture."""
    with np.load(golden_dir(family) / "io.npz") as data:
        return max(float(np.abs(data[k]).max()) for k in data.files if k.startswith("output/"))

"""Both zoo routes give the same tensors: DeepMind's Haiku file -> convert, or its transformers export -> import.

Haiku checkpoints come from the JAX reference (upstream's initialisers, perturbed) at small configs that
transformers' classes can represent (the golden fixtures' configs change sizes transformers fixes; see
test_transformers_roundtrip's golden tests for those).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_sources import _plain, canonical_pickle
from transformers_support import SMALL

from converters import convert, from_transformers, jax_reference, to_transformers
from converters.transformers.config_map import from_hf

# Input sizes these classes do not fix, kept small so the reference initialises in seconds.
IMAGE_SIZES = {"PerceiverForImageClassificationFourier": [16, 16],
               "PerceiverForImageClassificationConvProcessing": [32, 32]}


def haiku_checkpoint(architecture: str, path: Path) -> tuple[str, dict]:
    task, fields = SMALL[architecture]
    _, config = from_hf(task, transformers.PerceiverConfig(**fields, architectures=[architecture]).to_dict())
    if architecture in IMAGE_SIZES:
        config["image_size"] = IMAGE_SIZES[architecture]
    if task == "video_autoencoding":
        config["nchunks"] = 2  # the release's 128 decoding chunks do not divide this small clip
    inputs = jax_reference.example_inputs(task, config, batch=1, seed=0)
    params, state = jax_reference.init(task, config, inputs, seed=0, perturb=True)
    path.write_bytes(canonical_pickle(_plain(jax_reference.checkpoint_tree(task, params, state))))
    return task, config


@pytest.mark.parametrize("architecture", sorted(SMALL))
def test_haiku_route_and_transformers_route_give_identical_tensors(architecture, tmp_path):
    task, config = haiku_checkpoint(architecture, tmp_path / "checkpoint.pickle")
    converted = convert(task, tmp_path / "checkpoint.pickle", config, tmp_path / "haiku_route.safetensors")
    exported = to_transformers(converted, tmp_path / "hf")
    _, info = getattr(transformers, architecture).from_pretrained(str(exported), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    back = load_file(str(from_transformers(task, exported, tmp_path / "transformers_route.safetensors")))
    want = load_file(str(converted))
    assert want.keys() == back.keys()
    assert [k for k in want if not torch.equal(want[k], back[k])] == []

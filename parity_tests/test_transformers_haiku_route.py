"""Both zoo routes give the same tensors: DeepMind's Haiku file -> convert, or its transformers export -> import.

Haiku checkpoints come from the JAX reference (upstream's initialisers, perturbed) at small configs that
transformers' classes can represent (the golden fixtures' configs change sizes transformers fixes; see
test_transformers_roundtrip's golden tests for those).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file

from converters import convert, from_transformers, to_transformers
from parity_tests.transformers_support import SMALL, haiku_checkpoint


@pytest.mark.parametrize("architecture", sorted(SMALL))
def test_haiku_route_and_transformers_route_give_identical_tensors(architecture, tmp_path):
    task, config = haiku_checkpoint(architecture, tmp_path)
    converted = convert(task, tmp_path / "checkpoint.pickle", config, tmp_path / "haiku_route.safetensors")
    exported = to_transformers(converted, tmp_path / "hf")
    _, info = getattr(transformers, architecture).from_pretrained(str(exported), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    back = load_file(str(from_transformers(task, exported, tmp_path / "transformers_route.safetensors")))
    want = load_file(str(converted))
    assert want.keys() == back.keys()
    assert [k for k in want if not torch.equal(want[k], back[k])] == []

"""Every released configuration: the Torch model's size and the converter's coverage are exact.

Weights are broadcast zero views of the released shapes, so no real-size
arrays are allocated; models are built on the meta device.
"""

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters import HaikuCheckpoint, convert_tree
from perceiver_torch.registry import COLAB_CONSTANTS, TASKS, preset

from .conftest import released_shapes

RELEASED = released_shapes()


def _zeros_tree(tree: dict) -> dict:
    return {m: {n: np.broadcast_to(np.float32(0), s) for n, s in leaves.items()} for m, leaves in tree.items()}


def test_packaged_presets_are_the_released_configs():
    assert pt.preset_names() == sorted(RELEASED)
    for name, entry in RELEASED.items():
        # A preset is the released config plus the colab constants no parameter shape depends on.
        assert preset(name)["config"] == {**entry["config"], **COLAB_CONSTANTS.get(name, {})}
        assert preset(name)["num_params"] == entry["num_params"]


def test_every_task_has_a_released_preset():
    assert sorted({preset(name)["task"] for name in RELEASED}) == sorted(TASKS)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_preset_has_exact_parameter_count(name):
    with torch.device("meta"):
        model = pt.build_preset(name)
    assert sum(p.numel() for p in model.parameters()) == RELEASED[name]["num_params"]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_converter_accounts_for_every_released_path(name):
    entry = RELEASED[name]
    checkpoint = HaikuCheckpoint(_zeros_tree(entry["params"]), _zeros_tree(entry.get("state", {})))
    converted = convert_tree(preset(name)["task"], checkpoint, entry["config"])
    with torch.device("meta"):
        model = pt.build_preset(name)
    state = model.state_dict()
    assert set(converted) == set(state)
    for key, value in converted.items():
        assert tuple(value.shape) == tuple(state[key].shape), key
    # Every parameter leaf becomes one tensor; the state's moving averages become the batch-norm buffers.
    leaves = sum(len(v) for v in entry["params"].values())
    buffers = [k for k in converted if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert leaves == len(converted) - len(buffers)
    averages = [m for m, v in entry.get("state", {}).items() if "average" in v]
    assert len([k for k in buffers if not k.endswith("num_batches_tracked")]) == len(averages)
    assert bool(averages) == (name == "imagenet_conv_preprocessing")  # only the conv stem has batch norm

"""Which model class serves which task, and the released presets.

Tasks map to import paths so that importing the package stays cheap and a
task lands by adding one line here.
"""

from __future__ import annotations

import copy
import importlib
import json
from functools import cache
from importlib import resources

from torch import nn

TASK_MODELS: dict[str, str] = {
    "language": "perceiver_torch.models.language:PerceiverForMaskedLM",
    "imagenet": "perceiver_torch.models.image_classification:PerceiverForImageClassification",
    "video_autoencoding": "perceiver_torch.models.video_autoencoding:PerceiverForMultimodalAutoencoding",
    "optical_flow": "perceiver_torch.models.optical_flow:PerceiverForOpticalFlow",
}

ALL_TASKS = ("language", "imagenet", "optical_flow", "video_autoencoding")


class UnsupportedTaskError(ValueError):
    """The task is unknown, or known but not implemented yet."""


def model_class(task: str) -> type[nn.Module]:
    if task not in TASK_MODELS:
        if task in ALL_TASKS:
            raise UnsupportedTaskError(f"task {task!r} is not supported yet; supported: {sorted(TASK_MODELS)}.")
        raise UnsupportedTaskError(f"unknown task {task!r}; expected one of {list(ALL_TASKS)}.")
    module_name, class_name = TASK_MODELS[task].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(task: str, config: dict) -> nn.Module:
    """An untrained model of `task` with `config` (the golden config.json layout)."""
    return model_class(task)(copy.deepcopy(config))


@cache
def _presets() -> dict:
    text = resources.files("perceiver_torch").joinpath("data/presets.json").read_text()
    return json.loads(text)


def preset_names() -> list[str]:
    return sorted(_presets())


# Constants an upstream colab hard-codes that released_shapes.json's configs leave out, because no
# parameter shape depends on them. A preset adds them so that it rebuilds the colab's model exactly.
COLAB_CONSTANTS: dict[str, dict] = {
    # The video colab gives the image Fourier features max_resolution (16, IMG_SZ, IMG_SZ) with
    # IMG_SZ = 56 (the 224 / 4 patch grid) while its frames are 224 x 224; configs that omit the
    # key (the golden fixture's) use image_size, as that fixture was made.
    "video_autoencoding": {"image_position_resolution": 56},
}


def preset(name: str) -> dict:
    """{'task', 'config', 'num_params'} of a released configuration, by its release name."""
    presets = _presets()
    if name not in presets:
        raise KeyError(f"unknown preset {name!r}; expected one of {sorted(presets)}.")
    entry = copy.deepcopy(presets[name])
    entry["config"].update(copy.deepcopy(COLAB_CONSTANTS.get(name, {})))
    return entry


def build_preset(name: str) -> nn.Module:
    """The untrained architecture of a released checkpoint, e.g. 'language_perceiver_io_bytes'."""
    entry = preset(name)
    return build_model(entry["task"], entry["config"])

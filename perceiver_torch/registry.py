"""The runtime's one registration point: which model class serves which task, and the released presets.

A task is a model class registered here under its name; the producer side
(`converters.tasks`) registers the same names with their conversion tables,
JAX builders and upstream-layout runners, and a test holds the two sets equal.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources

from torch import nn

from .config_schema import SCHEMAS, validate_config
from .models import (
    PerceiverForImageClassification,
    PerceiverForMaskedLM,
    PerceiverForMultimodalAutoencoding,
    PerceiverForOpticalFlow,
)

TASK_MODELS: dict[str, type[nn.Module]] = {
    "language": PerceiverForMaskedLM,
    "imagenet": PerceiverForImageClassification,
    "optical_flow": PerceiverForOpticalFlow,
    "video_autoencoding": PerceiverForMultimodalAutoencoding,
}

TASKS: tuple[str, ...] = tuple(TASK_MODELS)
if set(SCHEMAS) != set(TASKS):  # pragma: no cover - a task registered without its config schema
    raise ImportError(f"config schemas for {sorted(SCHEMAS)} but the registry has {sorted(TASKS)}")


class UnsupportedTaskError(ValueError):
    """The task is not one of `TASKS`."""


def model_class(task: str) -> type[nn.Module]:
    if not isinstance(task, str):  # a list is unhashable: the lookup's own TypeError would not name the argument
        raise TypeError(f"task must be a str, one of {list(TASKS)}; got {type(task).__name__} {task!r:.80}.")
    if task not in TASK_MODELS:
        raise UnsupportedTaskError(f"unknown task {task!r}; expected one of {list(TASKS)}.")
    return TASK_MODELS[task]


def build_model(task: str, config: dict) -> nn.Module:
    """An untrained model of `task` with `config` (the golden config.json layout), checked against its schema.

    A config the schema refuses (a float or bool size, a missing or unknown key) is a `ConfigError` listing each
    problem, as `load_model` and `save_model` raise it; the size caps for untrusted files do not apply here.
    """
    cls = model_class(task)
    validate_config(task, config, source=f"build_model({task!r}) config", bounded=False)
    return cls(copy.deepcopy(config))


@cache
def _presets() -> dict:
    text = resources.files("perceiver_torch").joinpath("data/presets.json").read_text()
    return json.loads(text)


def preset_names() -> list[str]:
    """The released checkpoints' names that `build_preset` takes, sorted (e.g. 'language_perceiver_io_bytes')."""
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
    if not isinstance(name, str):  # as model_class: name the argument, not "unhashable type"
        raise TypeError(f"preset name must be a str, one of {sorted(presets)}; got {type(name).__name__} {name!r:.80}.")
    if name not in presets:
        raise KeyError(f"unknown preset {name!r}; expected one of {sorted(presets)}.")
    entry = copy.deepcopy(presets[name])
    entry["config"].update(copy.deepcopy(COLAB_CONSTANTS.get(name, {})))
    return entry


def build_preset(name: str) -> nn.Module:
    """The untrained architecture of a released checkpoint, e.g. 'language_perceiver_io_bytes'."""
    entry = preset(name)
    return build_model(entry["task"], entry["config"])

"""Convert an upstream Haiku checkpoint of a task into a perceiver-torch safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from perceiver_torch.hashing import sha256_file
from perceiver_torch.registry import build_model, preset
from perceiver_torch.serialization import save_checkpoint

from .checkpoint_reader import HaikuCheckpoint, load_haiku_checkpoint
from .rules import strict_merge
from .tasks import task_spec

CONVERTER_VERSION = "1"


def load_config(config: dict | str | Path) -> dict:
    """A config dict, or a path to a golden-layout config.json."""
    if isinstance(config, dict):
        return config
    path = Path(config)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"config {path} must hold a JSON object, found {type(value).__name__}.")
    return value


def target_shapes(task: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the model's state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build_model(task, config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_tree(task: str, checkpoint: HaikuCheckpoint, config: dict) -> dict[str, np.ndarray]:
    """Strictly map a Haiku params/state tree onto the task model's state-dict keys."""
    table = task_spec(task).table
    return strict_merge(
        checkpoint.flat(), target_shapes(task, config), table.rules(config), table.IGNORED, context=task
    )


def convert(task: str, checkpoint_path: str | Path, config: dict | str | Path, output_path: str | Path) -> Path:
    """Convert `checkpoint_path` (upstream pickle) to `output_path` (.safetensors); returns the path.

    Nothing is written unless every parameter converts; the file is written
    atomically, with the task, full config, source sha256 and converter
    version in its metadata.
    """
    config = load_config(config)
    checkpoint = load_haiku_checkpoint(checkpoint_path)
    arrays = convert_tree(task, checkpoint, config)
    state_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    metadata = {
        "source_sha256": sha256_file(checkpoint_path),
        "source_name": Path(checkpoint_path).name,
        "converter_version": CONVERTER_VERSION,
    }
    return save_checkpoint(state_dict, output_path, task, config, metadata)


def preset_config(name: str) -> tuple[str, dict]:
    entry = preset(name)
    return entry["task"], entry["config"]

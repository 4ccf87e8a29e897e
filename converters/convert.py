"""Convert an upstream Haiku checkpoint of a task into a perceiver-torch safetensors file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from perceiver_torch.config_schema import ConfigError, parse_config_json, validate_config
from perceiver_torch.hashing import sha256_file
from perceiver_torch.registry import preset
from perceiver_torch.serialization import build_on_meta, save_checkpoint

from .checkpoint_reader import HaikuCheckpoint, load_haiku_checkpoint
from .rules import ConversionError, strict_merge
from .tasks import task_spec

CONVERTER_VERSION = "1"


def load_config(config: Mapping | str | Path) -> dict:
    """A config dict, or a path to a golden-layout config.json (read, not yet validated)."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"(file): cannot read: {exc.strerror or exc}"], str(path)) from None
    return parse_config_json(text, str(path))


def target_shapes(task: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the model's state dict: the config validated, the model built on the meta device (no memory)."""
    validate_config(task, config)
    return {k: tuple(v.shape) for k, v in build_on_meta(task, config).state_dict().items()}


def _merge(task: str, source: dict[str, np.ndarray], config: dict,
           shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    table = task_spec(task).table
    shapes = target_shapes(task, config) if shapes is None else shapes
    return strict_merge(source, shapes, table.rules(config), table.IGNORED, context=task)


def convert_tree(task: str, checkpoint: HaikuCheckpoint, config: dict) -> dict[str, np.ndarray]:
    """Strictly map a Haiku params/state tree onto the task model's state-dict keys."""
    return _merge(task, checkpoint.flat(), config)


def check_output(checkpoint_path: str | Path, output_path: str | Path) -> Path:
    """The output path, unless it is a directory or the input checkpoint itself (same path or a link to it)."""
    out, src = Path(output_path), Path(checkpoint_path)
    if out.is_dir():
        raise ConversionError([f"output {out} is a directory; expected a file path such as "
                               f"{out / (src.stem + '.safetensors')}"], "output")
    same = out.resolve() == src.resolve()
    try:
        same = same or (out.exists() and src.exists() and os.path.samefile(out, src))
    except OSError:
        pass  # unreadable: not provably the same file; writing will report the problem
    if same:
        raise ConversionError([f"output {out} is the input checkpoint {src} (or a link to it); writing it would "
                               "destroy the source: choose another output path"], "output")
    return out


def convert(task: str, checkpoint_path: str | Path, config: Mapping | str | Path, output_path: str | Path) -> Path:
    """Convert `checkpoint_path` (upstream pickle) to `output_path` (.safetensors); returns the path.

    The config is validated and the output path checked before anything is read. Nothing is
    written unless every parameter converts; the file is written atomically (a temp file of
    ours beside it, removed on any failure), with the task, full config, source sha256 and
    converter version in its metadata.

    Memory: the model exists only on the meta device; the checkpoint's arrays are the only full
    copy of the weights. They are mapped to state-dict names as views, and each is laid out,
    written and released in turn. The source's sha256 is computed on a second thread while the
    pickle is read.
    """
    task_spec(task)  # an unknown task is named as such, before its config is judged
    source = f"{task} config" if isinstance(config, Mapping) else str(config)
    config = validate_config(task, load_config(config), source=source)
    out = check_output(checkpoint_path, output_path)
    shapes = target_shapes(task, config)  # a config the constructors refuse fails before the checkpoint is read
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(sha256_file, checkpoint_path)
        source = load_haiku_checkpoint(checkpoint_path).flat()
        arrays = _merge(task, source, config, shapes)
        source.clear()  # the state dict's views now hold the only references
        source_sha256 = digest.result()
    metadata = {
        "source_sha256": source_sha256,
        "source_name": Path(checkpoint_path).name,
        "converter_version": CONVERTER_VERSION,
    }
    try:
        return save_checkpoint(arrays, out, task, config, metadata, consume=True)
    except OSError as exc:
        raise ConversionError([f"cannot write {out}: {exc.strerror or exc}"], "output") from None


def preset_config(name: str) -> tuple[str, dict]:
    entry = preset(name)
    return entry["task"], entry["config"]

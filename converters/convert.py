"""Convert an upstream Haiku checkpoint of a task into a perceiver-torch safetensors file."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from perceiver_torch.config_schema import ConfigError, parse_config_json, validate_config
from perceiver_torch.hashing import sha256_file
from perceiver_torch.registry import preset
from perceiver_torch.serialization import build_on_meta, check_output_path, same_file, save_checkpoint

from .checkpoint_reader import HaikuCheckpoint, open_haiku_checkpoint
from .rules import ConversionError, strict_merge
from .small_files import MAX_CONFIG_BYTES, NotASmallFile, read_small_file
from .tasks import task_spec

CONVERTER_VERSION = "1"
# The header (first in the file) names the source's sha256, which is computed while the data is
# written: it is written with this placeholder, of the same length, and filled in at the end.
PENDING_SHA256 = "0" * 64


def load_config(config: Mapping | str | Path) -> dict:
    """A config dict, or a path to a golden-layout config.json (read, not yet validated)."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    try:
        text = read_small_file(path, MAX_CONFIG_BYTES)
    except NotASmallFile as exc:
        raise ConfigError([f"(file): {exc}; expected a config.json of a few KB"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"(file): cannot read: {exc.strerror or exc}"], str(path)) from None
    return parse_config_json(text, str(path))


def target_shapes(task: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of the model's state dict: the config validated, the model built on the meta device (no memory)."""
    validate_config(task, config)
    return {k: tuple(v.shape) for k, v in build_on_meta(task, config).state_dict().items()}


def _merge(task: str, source: dict[str, np.ndarray], config: dict,
           shapes: dict[str, tuple[int, ...]] | None = None, origin: str = "") -> dict[str, np.ndarray]:
    table = task_spec(task).table
    shapes = target_shapes(task, config) if shapes is None else shapes
    return strict_merge(source, shapes, table.rules(config), table.IGNORED,
                        context=f"{task}, {origin}" if origin else task)


def convert_tree(task: str, checkpoint: HaikuCheckpoint, config: dict) -> dict[str, np.ndarray]:
    """Strictly map a Haiku params/state tree onto the task model's state-dict keys."""
    return _merge(task, checkpoint.flat(), config)


def check_output(checkpoint_path: str | Path, output_path: str | Path, what: str = "the input checkpoint") -> Path:
    """The output path, unless it is a directory or `what` `checkpoint_path` is, an input of the conversion (same
    path or a link to it)."""
    if not os.fspath(output_path):  # Path("") is ".", which would be reported as a directory
        raise ConversionError(["the output path is empty; expected a file path such as "
                               f"{Path(checkpoint_path).stem}.safetensors"], "output")
    out, src = Path(output_path), Path(checkpoint_path)
    if out.is_dir():
        raise ConversionError([f"output {out} is a directory; expected a file path such as "
                               f"{out / (src.stem + '.safetensors')}"], "output")
    try:  # the checks every writer of ours shares: '-', a device or FIFO, a folder that cannot be written
        check_output_path(output_path)
    except OSError as error:
        raise ConversionError([str(error)], "output") from None
    if same_file(out, src):
        raise ConversionError([f"output {out} is {what} {src} (or a link to it); writing it would "
                               "destroy the source: choose another output path"], "output")
    return out


def check_replaceable(output: Path, overwrite: bool) -> None:
    """Refuse an existing `output` unless `overwrite` (the CLI's --force): checked after the inputs, so that an
    output that is one of them is named as such rather than as merely existing."""
    if not overwrite and os.path.lexists(output):
        raise ConversionError([f"output {output} exists; pass --force (overwrite=True) to replace it"], "output")


def convert(task: str, checkpoint_path: str | Path, config: Mapping | str | Path, output_path: str | Path, *,
            overwrite: bool = True) -> Path:
    """Convert `checkpoint_path` (upstream pickle) to `output_path` (.safetensors); returns the path.

    The config is validated and the output path checked before anything is read. Nothing is
    written unless every parameter converts; the file is written atomically (a temp file of
    ours beside it, removed on any failure), with the task, full config, source sha256 and
    converter version in its metadata. An existing `output_path` is replaced unless `overwrite` is
    False (the CLI's default, without --force); never the checkpoint or the config file.

    Memory and time: the model exists only on the meta device, and the checkpoint's arrays stay
    in the file (`open_haiku_checkpoint`) until the writer asks for each in turn: it is read,
    laid out, checked finite and written, and only then is the next one read. The whole
    pickle is parsed and every name and shape matched before the output is created. The
    source's sha256 is computed on a second thread meanwhile.
    """
    task_spec(task)  # an unknown task is named as such, before its config is judged
    config_path = None if isinstance(config, Mapping) else config
    source = f"{task} config" if config_path is None else str(config_path)
    config = validate_config(task, load_config(config), source=source)
    out = check_output(checkpoint_path, output_path)
    if config_path is not None:  # the config is read already, but it is the user's file all the same
        check_output(config_path, out, "the config")
    check_replaceable(out, overwrite)
    shapes = target_shapes(task, config)  # a config the constructors refuse fails before the checkpoint is read
    with ThreadPoolExecutor(max_workers=1) as pool, open_haiku_checkpoint(checkpoint_path) as checkpoint:
        digest = pool.submit(sha256_file, checkpoint_path)
        arrays = _merge(task, checkpoint.flat(), config, shapes, origin=str(checkpoint_path))
        metadata = {
            "source_sha256": PENDING_SHA256,
            # The file's name as UTF-8 (metadata is JSON): bytes that are not UTF-8 are written as \xNN escapes.
            "source_name": os.fsencode(Path(checkpoint_path).name).decode("utf-8", "backslashreplace"),
            "converter_version": CONVERTER_VERSION,
        }

        def finish(tmp: str) -> None:
            if checkpoint.stored.problems:  # found while writing (non-finite values): the file is not committed
                raise ConversionError(checkpoint.stored.problems, task)
            _fill_header(tmp, "source_sha256", PENDING_SHA256, digest.result())

        try:
            return save_checkpoint(arrays, out, task, config, metadata, consume=True, finish=finish)
        except OSError as exc:
            raise ConversionError([f"cannot write {out}: {exc.strerror or exc}"], "output") from None


def _fill_header(path: str, key: str, pending: str, value: str) -> None:
    """Replace metadata `key`'s `pending` value in the safetensors header at `path` with `value`, of equal length.

    The file's bytes end as if `value` had been written in the first place: header and data stay put.
    """
    old, new = (json.dumps({key: v}, separators=(",", ":"))[1:-1].encode() for v in (pending, value))
    if len(old) != len(new):
        raise ValueError(f"{key}: {value!r} is not as long as its placeholder")
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = f.read(length)
        if header.count(old) != 1:
            raise ValueError(f"{path}: the header holds {header.count(old)} placeholders for {key}, not one")
        f.seek(8 + header.index(old))
        f.write(new)


def preset_config(name: str) -> tuple[str, dict]:
    entry = preset(name)
    return entry["task"], entry["config"]

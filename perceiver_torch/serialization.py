"""Converted checkpoints: safetensors files whose metadata rebuilds the model."""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import torch
from safetensors import safe_open

from .registry import build_model
from .safetensors_io import write_safetensors

FORMAT = "perceiver-torch"


class CheckpointFormatError(ValueError):
    """A file is not a perceiver-torch checkpoint, or its metadata is incomplete."""


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, then rename it into place.

    A failure leaves nothing at `path` (and no temp file behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    # Created with 0666 less the umask, the mode a plain open() gives (mkstemp's is owner-only 0600).
    # The kernel applies the umask, so the process-wide umask is never toggled to read it (other
    # threads may be creating files meanwhile).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # a writer may recreate the file (e.g. safetensors' save_file, owner-only)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state_dict: dict[str, torch.Tensor], path, task: str, config: dict,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write `state_dict` atomically with the task and full config in the metadata; same input, same bytes."""
    meta = {"format": FORMAT, "task": task, "config": json.dumps(config, sort_keys=True)}
    meta.update(metadata or {})
    return atomic_write(path, lambda tmp: write_safetensors(tmp, state_dict, meta))


def read_metadata(path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT or "task" not in meta or "config" not in meta:
        raise CheckpointFormatError(
            f"{path} has no perceiver-torch metadata (expected keys format={FORMAT!r}, task, config; "
            f"found {sorted(meta)}). Convert upstream checkpoints with `perceiver-convert`."
        )
    return meta


def load_model(path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from a converted file's metadata, load weights strictly, eval mode."""
    meta = read_metadata(path)
    model = build_model(meta["task"], json.loads(meta["config"]))
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return model.to(device).eval()

"""`from_pretrained`: Hugging Face's spelling of `create_model` (a zoo name) and `load_model` (a file), one task."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..registry import TASK_MODELS
from ..serialization import CheckpointFormatError, load_model
from .hub import create_model
from .manifest import entries
from .schema import is_model_name


def from_pretrained(task: str, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype | None = None, **zoo_kwargs) -> torch.nn.Module:
    """The `task` model that `name_or_path` names: a zoo model's name, else a converted `.safetensors` file.

    A string shaped like a zoo name (lowercase letters, digits, hyphens) is one, so that a name never
    loads an unverified local file that happens to share it; anything else (a `Path`, a string with a
    separator or a suffix) is a file. The task is checked before anything is fetched or built.
    `zoo_kwargs` are `create_model`'s (`num_classes`, `endpoint`, `mirror`, `cache_dir`, `manifest`).
    """
    wanted = TASK_MODELS[task].__name__
    where = f"{wanted}.from_pretrained"
    if is_model_name(name_or_path):
        known = entries(zoo_kwargs.get("manifest"))
        if name_or_path not in known:
            raise ValueError(f"{where}: no zoo model {name_or_path!r}; available: {sorted(known)} (a file "
                             f"needs its suffix or a directory, e.g. './{name_or_path}.safetensors').")
        found = known[name_or_path]["task"]
        if found != task:
            raise ValueError(f"{where}: zoo model {name_or_path!r} is a {TASK_MODELS[found].__name__} "
                             f"(task {found!r}), not a {wanted}.")
        return create_model(name_or_path, device=device, dtype=dtype, **zoo_kwargs)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{where}: expected a zoo model's name or a file path; got {type(name_or_path).__name__}.")
    path = Path(name_or_path)
    if zoo_kwargs:
        raise TypeError(f"{where}: {', '.join(sorted(zoo_kwargs))} apply to zoo models; {str(path)!r} is a file.")

    def of_this_task(meta: dict[str, str]) -> None:
        if meta["task"] != task:
            raise CheckpointFormatError(f"{path}: holds a {TASK_MODELS[meta['task']].__name__} (task "
                                        f"{meta['task']!r}), not a {wanted}.")

    return load_model(path, device=device, dtype=dtype, check_metadata=of_this_task)

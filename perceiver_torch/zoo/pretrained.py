"""`from_pretrained`: Hugging Face's spelling of `create_model` (a zoo name or an ``hf-hub:`` repo) and
`load_model` (a file), one task."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..registry import TASK_MODELS
from ..serialization import CheckpointFormatError, load_model
from .create import HUB_KEYWORDS, create_hub_model, create_model
from .manifest import entries
from .schema import is_model_name, is_repo_id
from .user_hub import HUB_PREFIX, MetadataCheck, is_hub_name


def from_pretrained(task: str, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype | None = None, **zoo_kwargs) -> torch.nn.Module:
    """The `task` model that `name_or_path` names: a zoo model's name, a user's Hub repo (``"hf-hub:owner/name"``),
    else a converted `.safetensors` file.

    A string shaped like a zoo name (lowercase letters, digits, hyphens) is one, so that a name never
    loads an unverified local file that happens to share it; anything else (a `Path`, a string with a
    separator or a suffix) is a file. The task is checked before anything is fetched or built (for a Hub
    repo, on the file's header before its body is downloaded). `zoo_kwargs` are `create_model`'s
    (`num_classes`, `endpoint`, `mirror`, `cache_dir`, `manifest`; `revision` for a Hub repo).
    """
    wanted = TASK_MODELS[task].__name__
    where = f"{wanted}.from_pretrained"
    if is_hub_name(name_or_path):
        zoo_only = sorted(set(zoo_kwargs) - set(HUB_KEYWORDS))
        if zoo_only:
            raise TypeError(f"{where}: {', '.join(zoo_only)} apply to zoo models; {name_or_path!r} is a Hub repo.")
        return create_hub_model(name_or_path, device=device, dtype=dtype,
                                check=_of_task(task, where, name_or_path), **zoo_kwargs)
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
    if isinstance(name_or_path, str) and is_repo_id(name_or_path) and not path.exists() \
            and not name_or_path.endswith(".safetensors"):
        raise ValueError(f"{where}: {name_or_path!r} is not a file here; {_repo_hint(name_or_path, zoo_kwargs)}")
    return load_model(path, device=device, dtype=dtype, check_metadata=_of_task(task, where, str(path)))


def _of_task(task: str, where: str, source: str) -> MetadataCheck:
    """A check_metadata refusing a checkpoint of another task than `task` (`source`: the file or repo)."""

    def of_this_task(meta: dict[str, str]) -> None:
        if meta["task"] != task:
            raise CheckpointFormatError(f"{where}: {source} holds a {TASK_MODELS[meta['task']].__name__} (task "
                                        f"{meta['task']!r}), not a {TASK_MODELS[task].__name__}.")

    return of_this_task


def _repo_hint(repo_id: str, zoo_kwargs: dict) -> str:
    """What an 'owner/name' string given for a file probably meant: a zoo model, else a Hub repo."""
    owner, name = repo_id.split("/")
    known = entries(zoo_kwargs.get("manifest"))
    for zoo_name, entry in sorted(known.items()):
        if zoo_name == name.lower() or (entry["source"].get("transformers") or {}).get("repo_id") == repo_id:
            return (f"the zoo's entry for these weights is {zoo_name!r} (verified once published, status "
                    f"{entry['status']}): from_pretrained({zoo_name!r}).")
    return (f"for the Hub repo {repo_id!r}, write from_pretrained('{HUB_PREFIX}{repo_id}'); a local file needs its "
            f"suffix, e.g. './{repo_id}.safetensors'.")

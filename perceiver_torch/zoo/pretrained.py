"""`from_pretrained`: Hugging Face's spelling of `create_model` (a zoo name or an ``hf-hub:`` repo) and
`load_model` (a file), one task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeGuard

import torch

from ..registry import TASK_MODELS
from ..serialization import CheckpointFormatError, load_model
from .create import HUB_KEYWORDS, ZOO_KEYWORDS, create_hub_model, create_model
from .hf_keywords import checked_fetch, placement
from .manifest import UnknownModelError, entries, get_entry
from .schema import ManifestError, is_model_name, is_repo_id
from .token import checked_token
from .user_hub import FILENAME, HUB_PREFIX, HubHeader, MetadataCheck, is_hub_name


def from_pretrained(task: str, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None, torch_dtype: str | torch.dtype | None = None,
                    device_map=None, **zoo_kwargs) -> torch.nn.Module:
    """The `task` model that `name_or_path` names: a zoo model's name, a user's Hub repo (``"hf-hub:owner/name"``),
    else a converted `.safetensors` file.

    A string shaped like a zoo name (lowercase letters, digits, hyphens) is one, so that a name never
    loads an unverified local file that happens to share it; anything else (a `Path`, a string with a
    separator or a suffix) is a file. The task is checked before anything is fetched or built (for a Hub
    repo, on the file's header before its body is downloaded). `zoo_kwargs` are `create_model`'s
    (`num_classes`, `endpoint`, `cache_dir`, `token`, `local_files_only`, `force_download`; `mirror`, `manifest`
    for a zoo name; `revision` for a Hub repo; a file takes `local_files_only` only, which it satisfies).
    transformers' spellings are taken too: `torch_dtype` for `dtype` ("auto", for either, is the checkpoint's
    dtype), `device_map` for `device` where it names one device (`device` None is the CPU).
    """
    wanted = TASK_MODELS[task].__name__
    where = f"{wanted}.from_pretrained"
    unknown = sorted(set(zoo_kwargs) - set(HUB_KEYWORDS) - set(ZOO_KEYWORDS))
    if unknown:
        takes = sorted({"device", "dtype", "torch_dtype", "device_map", *HUB_KEYWORDS, *ZOO_KEYWORDS})
        raise TypeError(f"{where}: unexpected keyword argument(s) {', '.join(map(repr, unknown))} (it takes "
                        f"{', '.join(takes)}).")
    device, dtype = placement(where, device, dtype, torch_dtype, device_map)
    if "token" in zoo_kwargs:
        zoo_kwargs["token"] = checked_token(zoo_kwargs["token"], where)
    checked_fetch(where, zoo_kwargs.get("local_files_only", False), zoo_kwargs.get("force_download", False))
    if is_hub_name(name_or_path):
        zoo_only = sorted(set(zoo_kwargs) - set(HUB_KEYWORDS))
        if zoo_only:
            raise TypeError(f"{where}: {name_or_path!r} is a Hub repo, which takes no {' or '.join(zoo_only)} (those "
                            "select a zoo model's source: zoo names only).")
        return create_hub_model(name_or_path, device=device, dtype=dtype,
                                check=_of_task(task, where, name_or_path), **zoo_kwargs)
    if is_model_name(name_or_path):
        try:
            found = zoo_entry(name_or_path, zoo_kwargs.get("manifest"))["task"]
        except (UnknownModelError, ManifestError) as exc:
            raise type(exc)(f"{where}: {exc}.") from None
        if found != task:
            raise ValueError(f"{where}: zoo model {name_or_path!r} is a {TASK_MODELS[found].__name__} "
                             f"(task {found!r}), not a {wanted}.")
        if "revision" in zoo_kwargs:  # named here: create_model's own refusal would name create_model
            raise TypeError(f"{where}: zoo model {name_or_path!r} is pinned by the manifest, which takes no revision "
                            "('hf-hub:' repos only).")
        return create_model(name_or_path, device=device, dtype=dtype, **zoo_kwargs)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{where}: expected a zoo model's name or a file path; got {type(name_or_path).__name__}.")
    path = Path(name_or_path)
    if looks_like_repo_id(name_or_path):  # before the keywords: 'owner/name', num_classes=0 meant a model, not a file
        found_in_zoo = zoo_entry_of_repo(name_or_path.partition("@")[0], zoo_kwargs.get("manifest"))
        if found_in_zoo is not None:
            zoo_name, entry = found_in_zoo
            hint = (f"the zoo's entry for these weights is {zoo_name!r} (verified once published, status "
                    f"{entry['status']}): from_pretrained({zoo_name!r}).")
        else:
            hint = (f"for the Hub repo {name_or_path!r}, write from_pretrained('{HUB_PREFIX}{name_or_path}'); a local "
                    f"file needs its suffix, e.g. './{name_or_path}.safetensors'.")
        raise ValueError(f"{where}: {name_or_path!r} is not a file here; {hint}")
    zoo_kwargs.pop("local_files_only", None)  # a file here is a local file: nothing to fetch
    return load_file(where, path, device=device, dtype=dtype, task=task, **zoo_kwargs)


def from_hub_header(task: str, name: str, header: HubHeader, *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype | None = None, endpoint: str | None = None,
                    token: str | bool | None = None) -> torch.nn.Module:
    """`from_pretrained(task, name, revision=header.commit, endpoint=endpoint, token=token)` for a Hub repo whose
    header was read at that commit (`user_hub.hub_metadata`): checked as from_pretrained checks it, on `header`
    before the body is downloaded, and neither the server's HEAD answer nor the header is asked for again."""
    where = f"{TASK_MODELS[task].__name__}.from_pretrained"  # what from_pretrained's refusal would say
    return create_hub_model(name, revision=header.commit, device=device, dtype=dtype, endpoint=endpoint,
                            check=_of_task(task, where, name), header=header, token=token)


def load_file(where: str, path: str | os.PathLike, *, device: str | torch.device = "cpu",
              dtype: str | torch.dtype | None = None, task: str | None = None, **zoo_kwargs) -> torch.nn.Module:
    """`load_model` of a converted file or of a save_pretrained directory's ``model.safetensors``, refusing
    `create_model`'s keywords by name (`where`: who was called) and, given `task`, another task's model."""
    if zoo_kwargs.get("force_download") is False:  # the default, spelt out: nothing to fetch either way
        del zoo_kwargs["force_download"]
    if zoo_kwargs:
        raise TypeError(f"{where}: {str(path)!r} is a file, which takes no {' or '.join(sorted(zoo_kwargs))} (only "
                        "device, dtype, their transformers spellings, and local_files_only).")
    path = checkpoint_path(Path(path))
    check = None if task is None else _of_task(task, where, str(path))
    return load_model(path, device=device, dtype=dtype, check_metadata=check)


def not_a_file(path: Path) -> str:
    """Why `path` is not a regular file, for an error after its name."""
    return "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "no such file"


def checkpoint_path(path: Path) -> Path:
    """`path`, or for a directory (what `save_pretrained` writes) the ``model.safetensors`` in it; a directory
    without one is a FileNotFoundError naming it."""
    if not path.is_dir():
        return path
    if not (path / FILENAME).is_file():
        raise FileNotFoundError(f"{path} is a directory without a {FILENAME} (what save_pretrained writes into one)")
    return path / FILENAME


def _of_task(task: str, where: str, source: str) -> MetadataCheck:
    """A check_metadata refusing a checkpoint of another task than `task` (`source`: the file or repo)."""

    def of_this_task(meta: dict[str, str]) -> None:
        if meta["task"] != task:
            raise CheckpointFormatError(f"{where}: {source} holds a {TASK_MODELS[meta['task']].__name__} (task "
                                        f"{meta['task']!r}), not a {TASK_MODELS[task].__name__}.")

    return of_this_task


def zoo_entry(name: str, manifest=None) -> dict:
    """The manifest entry of the zoo model `name`; else an `UnknownModelError` listing the zoo's models and saying
    how a file of that name is written (what `from_pretrained` and `perceiver-zoo predict` say alike)."""
    try:
        return get_entry(name, manifest)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{exc} (a local file or save_pretrained directory is named by its path, e.g. "
                                f"'./{name}' or './{name}.safetensors')") from None


def looks_like_repo_id(value) -> TypeGuard[str]:
    """An 'owner/name' (or timm's 'owner/name@REVISION') string that names no file here (nor has the checkpoint
    suffix): a Hub repo id without the ``hf-hub:`` prefix, or a zoo entry's transformers repo, rather than a path."""
    repo, at, revision = value.partition("@") if isinstance(value, str) else ("", "", "")
    return is_repo_id(repo) and (revision != "" or not at) and not value.endswith(".safetensors") \
        and not Path(value).exists()


def zoo_entry_of_repo(repo_id: str, manifest=None) -> tuple[str, dict] | None:
    """(name, entry) of the zoo model holding the weights an 'owner/name' string probably meant (the
    transformers repo it is converted from, or an entry of the same name), else None."""
    name = repo_id.split("/")[1].lower()
    for zoo_name, entry in sorted(entries(manifest).items()):
        if zoo_name == name or (entry["source"].get("transformers") or {}).get("repo_id") == repo_id:
            return zoo_name, entry
    return None

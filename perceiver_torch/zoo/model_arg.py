"""What a `perceiver-zoo` MODEL argument names, known before anything is pulled or loaded: a zoo name (its
manifest entry) or a converted file (its header), as `from_pretrained` reads them; ``hf-hub:`` repos are left
to each command (their task is known only from the server's header)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..serialization import checked_config, read_metadata
from .hub import entry_config
from .pretrained import checkpoint_path, from_pretrained, looks_like_repo_id, zoo_entry, zoo_entry_of_repo
from .schema import is_model_name


class ModelArgumentError(ValueError):
    """A MODEL argument that names neither a zoo model nor a converted file; the message says what to write."""


@dataclass
class Target:
    """What MODEL names: its task and config, known before anything is pulled or loaded."""

    model: str
    task: str
    config: dict
    zoo: bool


def resolve_model(model: str, manifest=None, *, command: str, hub_hint: str) -> Target:
    """A zoo name (looked up in the manifest), else a converted file (its header's metadata only, checked as
    `load_model` checks it). For an 'owner/name' that is no file, the error names the zoo entry holding those
    weights (as `perceiver-zoo <command> NAME`), else gives `hub_hint`: how that command takes a Hub repo."""
    if is_model_name(model):
        entry = zoo_entry(model, manifest)  # an UnknownModelError naming the manifest and its models
        return Target(model, entry["task"], entry_config(entry), zoo=True)
    path = Path(model)
    if looks_like_repo_id(model):  # 'owner/name', as from_pretrained refuses it: what to write instead
        found = zoo_entry_of_repo(model, manifest)
        hint = (f"the zoo's entry for these weights is {found[0]!r} (status {found[1]['status']}): "
                f"perceiver-zoo {command} {found[0]} ..." if found is not None else
                hub_hint)
        raise ModelArgumentError(f"{model}: no such file; {hint}")
    path = checkpoint_path(path)  # a save_pretrained directory: its model.safetensors
    if not path.is_file():
        problem = "not a regular file" if path.exists() else "no such file"
        raise ModelArgumentError(f"{path}: {problem} (MODEL is a zoo name, a converted .safetensors file or a "
                                 "save_pretrained directory)")
    task, config = checked_config(path, read_metadata(path))  # load_model's own check
    return Target(model, task, config, zoo=False)


def load_target(target: Target, *, device: str | torch.device = "cpu", dtype: str | None, endpoint: str | None,
                mirror: str | None, manifest) -> torch.nn.Module:
    """The model, as `from_pretrained` gives it: a zoo name pulled and verified, a file loaded and checked."""
    zoo_kwargs = {"endpoint": endpoint, "mirror": mirror, "manifest": manifest} if target.zoo else {}
    return from_pretrained(target.task, target.model, device=device, dtype=dtype, **zoo_kwargs)

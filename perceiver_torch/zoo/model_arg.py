"""What a `perceiver-zoo` MODEL argument names, known before anything is pulled or loaded, as `from_pretrained`
reads it: a zoo name (its manifest entry), a user's ``hf-hub:`` repo (its file's header, read from the server
or the cache, its body not downloaded) or a converted file or `save_pretrained` directory (its header)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from ..config_schema import parse_config_json
from ..serialization import checked_config, read_metadata
from .hub import entry_config
from .pretrained import (
    checkpoint_path,
    from_hub_header,
    from_pretrained,
    looks_like_repo_id,
    not_a_file,
    zoo_entry,
    zoo_entry_of_repo,
)
from .schema import is_model_name
from .user_hub import (
    HUB_PREFIX,
    HubHeader,
    hub_metadata,
    hub_repo_id,
    is_hub_name,
    parse_hub_name,
    record_revision,
)


class ModelArgumentError(ValueError):
    """A MODEL argument that names neither a zoo model nor a converted file; the message says what to write."""


@dataclass
class Target:
    """What MODEL names: its task and config, known before anything is pulled or loaded; `kind` is 'zoo', 'hub'
    or 'file'. For an ``hf-hub:`` name, `revision` is what the user asked for and `header` what was read of
    its file: the commit `revision` resolved to, loaded at it (so that what was checked is what runs) without
    asking the server for that header again."""

    model: str
    task: str
    config: dict
    kind: str
    revision: str | None = None
    header: HubHeader | None = None
    metadata: dict[str, str] | None = None  # a file's or Hub repo's header metadata (provenance among it)

    @property
    def commit(self) -> str | None:
        return None if self.header is None else self.header.commit


def source_kind(model: str) -> str:
    """'hub' for ``hf-hub:owner/name`` (``hf_hub:``, ``@REVISION`` too), 'zoo' for a zoo-shaped name, else 'file'."""
    return "hub" if is_hub_name(model) else "zoo" if is_model_name(model) else "file"


def resolve_model(model: str, manifest=None, *, command: str, revision: str | None = None,
                  endpoint: str | None = None, token: str | None = None) -> Target:
    """A zoo name (looked up in the manifest), a Hub repo at `revision` (its header), else a converted file or
    save_pretrained directory (its header's metadata), each checked as `load_model` checks it (`token`, sent for
    a Hub repo as huggingface_hub sends it: None is this machine's, if any). For an
    'owner/name' that is no file, the error names the zoo entry holding those weights (as
    `perceiver-zoo <command> NAME`), else its ``hf-hub:`` spelling."""
    if not model:  # Path("") is ".", which would be reported as a directory without a model.safetensors
        raise ModelArgumentError("MODEL is empty: give a zoo name (perceiver-zoo list), hf-hub:owner/name, a "
                                 "converted .safetensors file or a save_pretrained directory")
    kind = source_kind(model)
    if kind == "zoo":
        entry = zoo_entry(model, manifest)  # an UnknownModelError naming the manifest and its models
        return Target(model, entry["task"], entry_config(entry), "zoo")
    if kind == "hub":
        repo_id, revision = parse_hub_name(model, revision)
        header = hub_metadata(repo_id, revision, endpoint=endpoint, token=token)
        meta = header.metadata
        # Named as messages name it (hf-hub:owner/name), the revision beside it: loaded at the header's commit.
        return Target(f"{HUB_PREFIX}{repo_id}", meta["task"], parse_config_json(meta["config"]), "hub", revision,
                      header, meta)
    if looks_like_repo_id(model):  # 'owner/name', as from_pretrained refuses it: what to write instead
        found = zoo_entry_of_repo(model.partition("@")[0], manifest)  # 'owner/name@REVISION' as timm writes it
        hint = (f"the zoo's entry for these weights is {found[0]!r} (status {found[1]['status']}): "
                f"perceiver-zoo {command} {found[0]} ..." if found is not None else
                f"a Hub repo is named with its prefix: perceiver-zoo {command} {HUB_PREFIX}{model} ...")
        raise ModelArgumentError(f"{model}: no such file; {hint}")
    path = checkpoint_path(Path(model))  # a save_pretrained directory: its model.safetensors
    if not path.is_file():
        raise ModelArgumentError(f"{path}: {not_a_file(path)} (MODEL is a zoo name, hf-hub:owner/name, a converted "
                                 ".safetensors file or a save_pretrained directory)")
    meta = read_metadata(path)
    task, config = checked_config(path, meta)  # load_model's own check
    return Target(model, task, config, "file", metadata=meta)


def load_target(target: Target, *, device: str | torch.device = "cpu", dtype: str | None, endpoint: str | None,
                mirror: str | None, manifest, token: str | None = None) -> torch.nn.Module:
    """The model, as `from_pretrained` gives it: a zoo name pulled and verified, a Hub repo at the commit its
    header was read at (that header not asked for again), a file loaded and checked; `token` is sent for a zoo
    name's or a Hub repo's download (a file takes none)."""
    if target.kind == "hub":
        header = cast(HubHeader, target.header)
        model = from_hub_header(target.task, target.model, header, device=device, dtype=dtype, endpoint=endpoint,
                                token=token)
        # Loaded by commit: the branch or tag asked for is recorded, for offline loads.
        record_revision(hub_repo_id(target.model), cast(str, target.revision), header.commit)
        return model
    zoo_kwargs = {"zoo": {"endpoint": endpoint, "mirror": mirror, "manifest": manifest, "token": token},
                  "file": {}}[target.kind]
    return from_pretrained(target.task, target.model, device=device, dtype=dtype, **zoo_kwargs)

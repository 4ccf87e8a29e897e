"""`create_model`: a zoo model by name (verified) or a user's Hub repo by ``hf-hub:owner/name`` (not verified)."""

from __future__ import annotations

import torch

from ..config_schema import parse_config_json
from ..serialization import load_model, loading_device, model_dtype
from . import hub
from .hf_keywords import checked_fetch
from .token import checked_token
from .user_hub import HUB_PREFIX, HubHeader, MetadataCheck, hub_checkpoint, is_hub_name, parse_hub_name

# What create_model takes beyond device and dtype: for an ``hf-hub:`` name, and for a zoo name only.
HUB_KEYWORDS = ("revision", "num_classes", "endpoint", "cache_dir", "token", "local_files_only", "force_download")
ZOO_KEYWORDS = ("num_classes", "endpoint", "cache_dir", "token", "local_files_only", "force_download", "mirror",
                "manifest")


def create_model(name: str, pretrained: bool = True, *, num_classes: int | None = None,
                 device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = None,
                 endpoint: str | None = None, mirror=None, cache_dir=None, manifest=None,
                 revision: str | None = None, token: str | bool | None = None, local_files_only: bool = False,
                 force_download: bool = False) -> torch.nn.Module:
    """A zoo model by name, or the checkpoint of a user's Hub repo by ``"hf-hub:owner/name"``, in eval mode.

    As in timm, ``"hf_hub:owner/name"`` is the same, and ``"hf-hub:owner/name@REVISION"`` is `revision` REVISION.

    A zoo name is `perceiver_torch.zoo.hub.create_model`: the manifest-pinned artifact, its sha256 verified
    (``pretrained=False``: the untrained architecture). An ``hf-hub:`` name loads that repo's
    ``model.safetensors`` at `revision` (a branch, tag or commit; default ``main``) with `load_model`'s strict
    checks, its size bounded and its header checked before the body is downloaded (see `user_hub`); nobody
    has verified what it holds. `num_classes`, `device` (None: the CPU), `dtype`, `endpoint`, `cache_dir` and
    `token` apply to both; `mirror` and `manifest` to zoo names, `revision` to ``hf-hub:`` names. `token` is what
    huggingface_hub takes (a private or gated repo needs one with access): a str is sent; True sends this
    machine's (``HF_TOKEN``, else ``hf auth login``'s) and requires it; None (the default) sends it if there is
    one; False sends none.
    As huggingface_hub's, `local_files_only` loads from the Hub cache only (no request; what is missing is
    named), and `force_download` downloads the file again even if it is cached (verified as a first download).
    """
    token = checked_token(token, "create_model")
    checked_fetch("create_model", local_files_only, force_download)
    device = "cpu" if device is None else device  # as from_pretrained takes it (transformers' default placement)
    if is_hub_name(name):
        zoo_only = [key for key, value in (("mirror", mirror), ("manifest", manifest)) if value is not None]
        if zoo_only:
            raise TypeError(f"create_model: {name!r} is a Hub repo, which takes no {' or '.join(zoo_only)} (those "
                            "select a zoo model's source: zoo names only).")
        if pretrained is not True:
            raise ValueError(f"create_model: {name!r} is a Hub repo, whose architecture is its checkpoint's: "
                             "pretrained=False is for zoo names (load it, then re-initialise what you want).")
        return create_hub_model(name, revision=revision, num_classes=num_classes, device=device, dtype=dtype,
                                endpoint=endpoint, cache_dir=cache_dir, token=token,
                                local_files_only=local_files_only, force_download=force_download)
    if revision is not None:
        raise TypeError(f"create_model: revision applies to 'hf-hub:owner/name' repos; zoo model {name!r} is pinned "
                        "by the manifest.")
    return hub.create_model(name, pretrained, num_classes=num_classes, device=device, dtype=dtype, endpoint=endpoint,
                            mirror=mirror, cache_dir=cache_dir, manifest=manifest, token=token,
                            local_files_only=local_files_only, force_download=force_download)


def create_hub_model(name: str, *, revision: str | None = None, num_classes: int | None = None,
                     device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                     endpoint: str | None = None, cache_dir=None, check: MetadataCheck | None = None,
                     header: HubHeader | None = None, token: str | bool | None = None,
                     local_files_only: bool = False, force_download: bool = False) -> torch.nn.Module:
    """The model in ``model.safetensors`` of the Hub repo `name` (``hf-hub:owner/name``) at `revision`.

    `check(metadata)` (and the `num_classes` check) runs on the file's header before its body is downloaded,
    and again by `load_model` before anything is built. `header`, what `user_hub.hub_metadata` read at the
    commit `revision` names, is that header: the server is not asked for it again.
    """
    device, dtype = loading_device(device), model_dtype(dtype)  # before anything is downloaded or built
    token = checked_token(token, "create_model")
    checked_fetch("create_model", local_files_only, force_download)
    repo_id, revision = parse_hub_name(name, revision)
    what = f"{HUB_PREFIX}{repo_id} (revision {revision!r})"

    def checked(meta: dict[str, str]) -> None:
        if check is not None:
            check(meta)
        # load_model and the header check have already refused a config that is not valid, bounded JSON.
        config = parse_config_json(meta["config"], f"{what} (metadata config)")
        hub.checked_num_classes(what, meta["task"], config, num_classes)

    path = hub_checkpoint(repo_id, revision, endpoint=endpoint, cache=cache_dir, check=checked, header=header,
                          token=token, local_files_only=local_files_only, force_download=force_download)
    model = load_model(path, device=device, dtype=dtype, check_metadata=checked)
    return hub.with_classes(model, num_classes)  # checked on the header: reset_classifier takes it

"""Pull verified checkpoints by name: huggingface_hub download, sha256 check, then load.

Where files come from, first match wins:

1. ``mirror=`` / ``endpoint=`` arguments;
2. ``PERCEIVER_ZOO_MIRROR=/path``: a plain directory laid out ``<repo_id>/<revision>/<filename>``
   (no HTTP, files are verified and loaded in place);
3. ``PERCEIVER_ZOO_ENDPOINT`` or ``HF_ENDPOINT``: a Hub-compatible endpoint, used through
   ``huggingface_hub.hf_hub_download`` (pinned revision, the Hub cache, resumable download);
4. entries published to the bundled stand-in (the tiny ones) read its tree as a mirror;
5. the Hugging Face Hub.

The environment is read at call time (``huggingface_hub`` reads ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_HOME`` once at import), and passed to it explicitly:
``HF_HUB_OFFLINE=1`` means cached files only. A downloaded file whose size or sha256
differs from the manifest is removed from the cache (snapshot link and blob) before
the error is raised, so it can never be loaded later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..registry import build_model, preset
from ..serialization import load_model, read_metadata
from .manifest import BUNDLED_STANDIN, get_entry, resolve_repo_path

_TRUE = {"1", "on", "yes", "true"}
HUB_ENDPOINT = "https://huggingface.co"


class ZooError(RuntimeError):
    """A zoo model cannot be pulled."""


class NotProducedError(ZooError):
    """The entry has no converted artifact yet (or it is not published)."""


class IntegrityError(ZooError):
    """A file's size or sha256 differs from the manifest; it was refused and removed."""


def entry_config(entry: dict) -> dict:
    if entry.get("preset"):
        return preset(entry["preset"])["config"]
    from converters import load_config

    return load_config(resolve_repo_path(entry["config_file"]))


def sha256_file(path) -> str:
    from converters.convert import sha256_file as _sha

    return _sha(path)


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().lower() in _TRUE


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def location(entry: dict, endpoint: str | None = None, mirror=None) -> tuple[str, str]:
    """("mirror", directory) or ("endpoint", url) that serves `entry`'s artifact."""
    if mirror:
        return "mirror", str(mirror)
    if endpoint:
        return "endpoint", endpoint.rstrip("/")
    if os.environ.get("PERCEIVER_ZOO_MIRROR"):
        return "mirror", os.environ["PERCEIVER_ZOO_MIRROR"]
    for var in ("PERCEIVER_ZOO_ENDPOINT", "HF_ENDPOINT"):
        if os.environ.get(var):
            return "endpoint", os.environ[var].rstrip("/")
    if (entry.get("artifact") or {}).get("published_to") == "stand-in":
        return "mirror", str(BUNDLED_STANDIN)
    return "endpoint", HUB_ENDPOINT


def how_to_regenerate(name: str, entry: dict) -> str:
    return (f"regenerate it from DeepMind's release file with `{entry['regenerate']}` (add `--source PATH` "
            f"for a local copy), then publish it with `HF_TOKEN=... python scripts/publish.py {name}`, which pins "
            "its revision and sha256 in zoo_manifest.yaml")


def _published(name: str, entry: dict) -> dict:
    artifact = entry.get("artifact")
    if entry["status"] == "not-produced" or artifact is None:
        raise NotProducedError(
            f"zoo model {name!r}: the converted artifact has not been produced yet (status: not-produced), "
            f"so there is nothing to download; {how_to_regenerate(name, entry)}."
        )
    if entry["status"] != "published":
        raise NotProducedError(
            f"zoo model {name!r} is produced locally but not published (no pinned revision); "
            f"publish it with `python scripts/publish.py {name}`."
        )
    return artifact


def _remove_from_cache(path: Path) -> list[str]:
    """Remove a cached snapshot file and the blob it points to; returns what was removed."""
    removed = []
    blob = Path(os.path.realpath(path))
    for p in (path, blob):
        if p.is_symlink() or p.exists():
            p.unlink()
            removed.append(str(p))
    return removed


def _remove_incomplete(cache: Path, repo_id: str) -> None:
    blobs = cache / ("models--" + repo_id.replace("/", "--")) / "blobs"
    for p in blobs.glob("*.incomplete") if blobs.is_dir() else ():
        p.unlink(missing_ok=True)


def verify_file(path: Path, artifact: dict, what: str) -> None:
    size = path.stat().st_size
    digest = sha256_file(path)
    if size != artifact["size"] or digest != artifact["sha256"]:
        raise IntegrityError(
            f"{what}: {path} has size {size} and sha256 {digest}, but the manifest pins size "
            f"{artifact['size']} and sha256 {artifact['sha256']}; the file was refused"
        )


def fetch(name: str, *, endpoint: str | None = None, mirror=None, cache: str | os.PathLike | None = None,
          manifest=None) -> Path:
    """Local path of `name`'s verified artifact, downloading it (pinned revision) if needed."""
    entry = get_entry(name, manifest)
    artifact = _published(name, entry)
    kind, where = location(entry, endpoint, mirror)
    repo_id, revision, filename = artifact["repo_id"], artifact["revision"], artifact["filename"]
    if kind == "mirror":
        path = Path(where) / repo_id / revision / filename
        if not path.is_file():
            raise ZooError(f"zoo model {name!r}: mirror {where} has no {repo_id}/{revision}/{filename}")
        verify_file(path, artifact, f"zoo model {name!r} (mirror)")
        return path

    from huggingface_hub import hf_hub_download

    cache = Path(cache) if cache else cache_dir()
    offline = is_offline()
    try:
        local = Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=where, cache_dir=str(cache),
                                     local_files_only=offline))
    except Exception as exc:
        _remove_incomplete(cache, repo_id)
        hint = " (HF_HUB_OFFLINE is set and the file is not in the cache)" if offline else ""
        raise ZooError(f"zoo model {name!r}: download of {repo_id}@{revision}/{filename} from {where} "
                       f"failed{hint}: {type(exc).__name__}: {exc}") from exc
    try:
        verify_file(local, artifact, f"zoo model {name!r}")
    except IntegrityError as exc:
        removed = _remove_from_cache(local)
        raise IntegrityError(f"{exc} and removed from the cache ({', '.join(removed)}). "
                             "The server or mirror holds a corrupt or different file.") from None
    return local


def create_model(name: str, pretrained: bool = True, *, device: str | torch.device = "cpu",
                 endpoint: str | None = None, mirror=None, cache_dir=None, manifest=None) -> torch.nn.Module:
    """A zoo model by name, in eval mode.

    ``pretrained=True`` downloads the manifest-pinned artifact, verifies its sha256
    before loading, and loads it strictly; ``pretrained=False`` builds the untrained
    architecture (its configuration from the manifest entry).
    """
    entry = get_entry(name, manifest)
    config = entry_config(entry)
    if not pretrained:
        return build_model(entry["task"], config).to(device).eval()
    path = fetch(name, endpoint=endpoint, mirror=mirror, cache=cache_dir, manifest=manifest)
    meta = read_metadata(path)
    if meta["task"] != entry["task"] or json.loads(meta["config"]) != config:
        raise ZooError(f"zoo model {name!r}: {path} was converted for task {meta['task']!r} with a different "
                       "config than the manifest entry")
    return load_model(path, device=device)

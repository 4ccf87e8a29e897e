"""Read a transformers Perceiver checkpoint: config.json plus model.safetensors (or pytorch_model.bin).

From a local directory, or from a Hub repository at a revision through huggingface_hub (the
endpoint is read from HF_ENDPOINT at call time, as the zoo client does). A .bin is only ever
opened with torch.load(weights_only=True), which refuses pickles that would run code.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file

from perceiver_torch.hashing import sha256_file
from perceiver_torch.strict_json import loads_strict
from perceiver_torch.zoo.hub import cache_dir
from perceiver_torch.zoo.schema import TRANSFORMERS_FILES

from ..small_files import MAX_CONFIG_BYTES, NotASmallFile, read_small_file

log = logging.getLogger(__name__)

WEIGHT_FILES = TRANSFORMERS_FILES  # preferred first
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TransformersSourceError(ValueError):
    """A transformers checkpoint that cannot be read safely, or is not there."""


@dataclass
class Source:
    config: dict
    tensors: dict[str, np.ndarray]
    weights_path: Path
    sha256: str
    repo_id: str | None = None
    revision: str | None = None
    extra: dict = field(default_factory=dict)
    config_path: Path | None = None


def _read_config(path: Path) -> dict:
    try:
        text = read_small_file(path, MAX_CONFIG_BYTES)
    except NotASmallFile as exc:
        raise TransformersSourceError(f"{path}: {exc}; a Perceiver config.json is a few KB.") from None
    except OSError as exc:
        raise TransformersSourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        value = loads_strict(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting too deep to parse
        raise TransformersSourceError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TransformersSourceError(f"{path} must hold a JSON object, found {type(value).__name__}.")
    return value


def _to_numpy(state: object, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise TransformersSourceError(f"{path} holds a {type(state).__name__}, not a state dict.")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TransformersSourceError(f"{path}: entries that are not named tensors: {', '.join(bad[:10])}")
    wrong = [f"{k} ({v.dtype})" for k, v in state.items()
             if v.dtype != torch.float32 and not k.endswith("num_batches_tracked")]
    if wrong:
        raise TransformersSourceError(f"{path}: expected float32 weights (as DeepMind's and transformers' Perceiver "
                                      f"checkpoints are); found {', '.join(wrong[:10])}")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def read_weights(path: Path) -> dict[str, np.ndarray]:
    if path.name.endswith(".safetensors"):
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise TransformersSourceError(f"{path} is not a readable safetensors file: {exc}") from None
    else:
        try:
            # weights_only: tensors and plain containers only; a pickle that names any other
            # callable (os.system, eval, ...) is refused before anything runs.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, zip errors, ...
            raise TransformersSourceError(f"{path} was refused by torch.load(weights_only=True): "
                                          f"{type(exc).__name__}: {_torch_reason(str(exc))}") from None
    return _to_numpy(state, path)


# What torch wraps around the reason for a weights_only refusal: its advice (load with weights_only=False,
# allow-list the global) is the wrong advice for a file from anywhere, and its preamble says nothing.
_TORCH_PREAMBLE = ("Weights only load failed", "Check the documentation of torch.load")
_TORCH_ADVICE = (" Please use `torch.serialization.add_safe_globals", " Re-running `torch.load`")


def _torch_reason(message: str) -> str:
    """The lines of torch's message that say what was refused (e.g. 'unsupported GLOBAL posix.system')."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = [line for line in lines if not line.startswith(_TORCH_PREAMBLE)] or lines[:1]
    text = " ".join(reason)
    for advice in _TORCH_ADVICE:
        text = text.split(advice)[0]
    return text[:300]


def _local(directory: Path) -> tuple[Path, Path]:
    config = directory / "config.json"
    if not config.is_file():
        raise TransformersSourceError(f"{directory} has no config.json (is it a transformers model directory?)")
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return config, directory / name
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    hint = f" (sharded checkpoints, {sharded}, are not supported)" if sharded else ""
    raise TransformersSourceError(f"{directory} has none of {list(WEIGHT_FILES)}{hint}.")


def _hub(repo_id: str, revision: str | None) -> tuple[Path, Path]:
    # Read at call time (huggingface_hub reads its environment once, at import), as the zoo client does.
    endpoint, cache = os.environ.get("HF_ENDPOINT") or None, cache_dir()
    where = f"{repo_id}@{revision or 'main'}"
    # Every Hub repo id also reads as a relative path: a mistyped local directory lands here.
    hint = f" (and there is no local directory {repo_id})"
    wanted = "config.json"

    def get(filename: str) -> Path:
        nonlocal wanted
        wanted = filename
        return Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint, cache_dir=str(cache)))

    try:
        config = get("config.json")
        for name in WEIGHT_FILES:
            try:
                return config, get(name)
            except LocalEntryNotFoundError:
                raise  # offline or unreachable: not a missing file (it subclasses EntryNotFoundError)
            except EntryNotFoundError:
                continue
    except LocalEntryNotFoundError:
        raise TransformersSourceError(f"{where}: the Hub could not be reached (offline, HF_HUB_OFFLINE, or "
                                      f"{endpoint or 'huggingface.co'} unreachable) and {wanted} is not in the "
                                      f"cache {cache}{hint}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise TransformersSourceError(f"{where}: {type(exc).__name__}{hint}") from None
    except EntryNotFoundError:
        raise TransformersSourceError(f"{where} has no config.json{hint}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise TransformersSourceError(f"could not download {where}: {exc}") from None
    raise TransformersSourceError(f"{where} has none of {list(WEIGHT_FILES)}")


def read_source(source: str | os.PathLike, revision: str | None = None) -> Source:
    """A local transformers model directory, or a Hub repo id (at `revision`)."""
    path = Path(source)
    repo_id = None
    if path.is_dir():
        if revision is not None:
            raise TransformersSourceError(f"--revision applies to Hub repos; {path} is a local directory.")
        config_path, weights_path = _local(path)
    elif _REPO_ID.match(str(source)) and not path.exists():
        repo_id = str(source)
        config_path, weights_path = _hub(repo_id, revision)
        # hf_hub_download returns <cache>/snapshots/<commit>/<file>: the commit it resolved to.
        revision = weights_path.parent.name
    else:
        raise TransformersSourceError(f"{source} is neither a directory nor a Hub repo id (owner/name).")
    config = _read_config(config_path)
    log.info("reading %s", weights_path)
    return Source(config=config, tensors=read_weights(weights_path), weights_path=weights_path,
                  sha256=sha256_file(weights_path), repo_id=repo_id, revision=revision, config_path=config_path)

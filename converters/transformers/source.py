"""Read a transformers Perceiver checkpoint: config.json plus model.safetensors (or pytorch_model.bin).

From a local directory, or from a Hub repository at a revision, downloaded into the Hub cache by the zoo
client's code (`perceiver_torch.zoo.download`; the endpoint, cache and HF_HUB_OFFLINE are read at call time,
as the zoo client reads them). Not `hf_hub_download`, which names the blob after the server's ETag unchecked:
here one HEAD answer per file must announce a 40-hex commit, a bounded size and as ETag a sha256 (an LFS file)
or a git blob id (a regular file), which name everything written in the cache, or nothing is written; the
body is cut off at that size and checked against that hash before it enters the cache. A file already cached
(a commit's, offline, or the Hub unreachable) must resolve inside the cache and is checked against its blob's
name. A .bin is only ever opened with torch.load(weights_only=True), which refuses pickles that would run code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file

from perceiver_torch.hashing import sha256_file
from perceiver_torch.saving import EXACT_IN_FLOAT32
from perceiver_torch.serialization import MAX_CHECKPOINT_BYTES
from perceiver_torch.strict_json import loads_strict
from perceiver_torch.zoo.download import COMMIT, RefusedAnswer, artifact_from_answer, repo_cache_dir
from perceiver_torch.zoo.hub import ZooError, cache_dir, cached_entry, from_endpoint, is_offline, one_line
from perceiver_torch.zoo.schema import TRANSFORMERS_FILES, is_repo_id
from perceiver_torch.zoo.token import checked_token
from perceiver_torch.zoo.user_hub import checked_revision, hub_endpoint, record_revision

from ..small_files import MAX_CONFIG_BYTES, NotASmallFile, read_small_file

log = logging.getLogger(__name__)

WEIGHT_FILES = TRANSFORMERS_FILES  # preferred first
# What a server may announce for each file before anything is downloaded.
_LIMITS = {"config.json": (MAX_CONFIG_BYTES, "a config.json may have (a Perceiver's is a few KB)")}
_WEIGHTS_LIMIT = (MAX_CHECKPOINT_BYTES, "of the largest checkpoint perceiver-torch reads")


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
    # float64 goes on to the conversion rules, which round it to float32 with a warning (refusing a value that
    # overflows), as they do for a Haiku checkpoint's; integers and anything else cannot be a parameter.
    wrong = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items()
             if v.dtype not in (*EXACT_IN_FLOAT32, torch.float64) and not k.endswith("num_batches_tracked")]
    if wrong:
        raise TransformersSourceError(f"{path}: expected floating-point weights (float32, float16, bfloat16 or "
                                      f"float64); found {', '.join(wrong[:10])}{' ...' if len(wrong) > 10 else ''}")
    half = sorted({str(v.dtype).removeprefix("torch.") for k, v in state.items()
                   if v.dtype in (torch.float16, torch.bfloat16)})
    if half:  # as save_model: every float16 and bfloat16 value is a float32 value, so nothing is rounded
        log.info("%s: widening %s weights to float32, exactly", path, " and ".join(half))
    return {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v).detach().cpu().numpy()
            for k, v in state.items()}


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


class _NotCached(Exception):
    """A file the server could not be asked for (offline, unreachable, refused) that the cache does not hold."""

    def __init__(self, name: str, cause: BaseException | None):
        super().__init__(name)
        self.name, self.cause = name, cause


class _HubRepo:
    """The files of `repo_id` at `revision`, each found in the Hub cache or downloaded into it by the zoo's code."""

    def __init__(self, repo_id: str, revision: str | None, token: str | bool | None = None):
        # Read at call time (huggingface_hub reads its environment once, at import), as the zoo client does.
        self.repo_id, self.endpoint, self.cache = repo_id, hub_endpoint(None), cache_dir()
        self.token = token  # as huggingface_hub takes it (checked by the caller); sent with each request
        self.where = f"{repo_id}@{revision or 'main'}"
        # Every Hub repo id also reads as a relative path: a mistyped local directory lands here.
        self.hint = f" (and there is no local directory {repo_id})"
        try:
            self.revision = checked_revision(revision)
        except ValueError as exc:
            raise TransformersSourceError(f"{self.where}: {exc}") from None
        self.repo_dir = repo_cache_dir(self.cache, repo_id)
        # The commit every file is read at: the revision's, once the first answer (or the cache) names it.
        self.commit = self.revision if COMMIT.match(self.revision) else None

    def file(self, name: str) -> Path | None:
        """The cached path of `name` (a snapshot entry), or None if the repo has no such file at the revision."""
        if self.commit is not None:
            pointer = self.repo_dir / "snapshots" / self.commit / name
            if pointer.exists():  # a commit's file, cached: no request (as hf_hub_download)
                return self._cached(pointer)
        if is_offline():
            return self._from_cache(name, None)
        asked = self.commit or self.revision
        url = hf_hub_url(self.repo_id, name, revision=asked, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        except EntryNotFoundError:
            return None
        except RevisionNotFoundError as exc:
            raise TransformersSourceError(f"{self.where}: {type(exc).__name__}{self.hint}") from None
        except Exception as exc:  # the network or the Hub down, a private repo without a token: as hf_hub_download,
            return self._from_cache(name, exc)  # fall back to what the cache holds for the revision
        limit, limit_is = _LIMITS.get(name, _WEIGHTS_LIMIT)
        try:
            artifact = artifact_from_answer(meta, self.repo_id, name, asked, limit=limit, limit_is=limit_is,
                                            regular_files=True)
        except RefusedAnswer as exc:
            raise TransformersSourceError(f"{self.where}: {exc}") from None
        try:
            path, _ = from_endpoint(self.where, artifact, self.endpoint, self.cache, self.token)
        except ZooError as exc:  # refused (nothing kept in the cache), a failed download, an unwritable cache
            raise TransformersSourceError(str(exc)) from None
        self.commit = artifact["revision"]
        record_revision(self.repo_id, self.revision, self.commit, cache=self.cache)
        return path

    def _from_cache(self, name: str, cause: BaseException | None) -> Path | None:
        found = try_to_load_from_cache(self.repo_id, name, cache_dir=self.cache, revision=self.commit or self.revision)
        if not isinstance(found, str):
            if found is not None:  # huggingface_hub's record that the repo has no such file at that commit
                return None
            raise _NotCached(name, cause)
        path = self._cached(Path(found))
        if COMMIT.match(path.parent.name):  # snapshots/<commit>/<name>
            self.commit = path.parent.name
        return path

    def _cached(self, pointer: Path) -> Path:
        try:
            return cached_entry(self.where, pointer, self.repo_dir)
        except ZooError as exc:
            raise TransformersSourceError(str(exc)) from None

    def not_cached(self, missing: list[_NotCached]) -> TransformersSourceError:
        """The error for files the server could not be asked for and the cache lacks."""
        cause = missing[0].cause
        if isinstance(cause, RepositoryNotFoundError):
            return TransformersSourceError(f"{self.where}: {type(cause).__name__}{self.hint}")
        if isinstance(cause, HfHubHTTPError):
            return TransformersSourceError(f"could not download {self.where}: {one_line(cause)}")
        names = [m.name for m in missing]
        wanted = f"{names[0]} is not" if len(names) == 1 else f"none of {names} is"
        why = f"; {one_line(cause)}" if cause is not None else ""
        return TransformersSourceError(f"{self.where}: the Hub could not be reached (offline, HF_HUB_OFFLINE, or "
                                       f"{self.endpoint} unreachable) and {wanted} in the cache {self.cache}{self.hint}"
                                       f"{why}")


def _hub(repo_id: str, revision: str | None, token: str | bool | None) -> tuple[Path, Path]:
    """config.json and the first of WEIGHT_FILES that `repo_id` has at `revision`, in the Hub cache."""
    repo = _HubRepo(repo_id, revision, token)
    try:
        config = repo.file("config.json")
    except _NotCached as exc:
        raise repo.not_cached([exc]) from None
    if config is None:
        raise TransformersSourceError(f"{repo.where} has no config.json{repo.hint}")
    missing = []
    for name in WEIGHT_FILES:
        try:
            weights = repo.file(name)
        except _NotCached as exc:
            missing.append(exc)
            continue
        if weights is not None:
            return config, weights
    if missing:
        raise repo.not_cached(missing)
    raise TransformersSourceError(f"{repo.where} has none of {list(WEIGHT_FILES)}")


def read_source(source: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> Source:
    """A local transformers model directory, or a Hub repo id (at `revision`; `token` sent as huggingface_hub
    sends it, for a private or gated repo)."""
    path = Path(source)
    repo_id = None
    if path.is_dir():
        if revision is not None:
            raise TransformersSourceError(f"--revision applies to Hub repos; {path} is a local directory.")
        if token is not None:
            raise TransformersSourceError(f"--token applies to Hub repos; {path} is a local directory.")
        config_path, weights_path = _local(path)
    elif is_repo_id(str(source)) and not path.exists():
        repo_id = str(source)
        config_path, weights_path = _hub(repo_id, revision, checked_token(token, "from_transformers"))
        # <cache>/snapshots/<commit>/<file>: the commit the revision resolved to.
        revision = weights_path.parent.name
    else:
        raise TransformersSourceError(f"{source} is neither a directory nor a Hub repo id (owner/name).")
    config = _read_config(config_path)
    log.info("reading %s", weights_path)
    return Source(config=config, tensors=read_weights(weights_path), weights_path=weights_path,
                  sha256=sha256_file(weights_path), repo_id=repo_id, revision=revision, config_path=config_path)

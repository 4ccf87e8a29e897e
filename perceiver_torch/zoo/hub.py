"""Pull verified checkpoints by name: huggingface_hub download, sha256 check, then load.

Where files come from, first match wins:

1. ``mirror=`` / ``endpoint=`` arguments;
2. ``PERCEIVER_ZOO_MIRROR=/path``: a plain directory laid out ``<repo_id>/<revision>/<filename>``
   (no HTTP, files are verified and loaded in place);
3. ``PERCEIVER_ZOO_ENDPOINT`` or ``HF_ENDPOINT``: a Hub-compatible endpoint, downloaded from
   with huggingface_hub's HTTP client into the Hub cache (pinned revision, resumable; see
   `download`: names in the cache come from the manifest, never from the server);
4. the Hugging Face Hub.

The environment is read at call time (``huggingface_hub`` reads ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_HOME`` once at import): ``HF_HUB_OFFLINE=1`` means cached files
only. A download is checked before it enters the cache (the server's commit, size and ETag,
then the bytes' size and sha256); a cached file whose size or sha256 differs from the manifest
is removed from the cache (snapshot link and blob, never anything outside the cache) before
the error is raised, so it can never be loaded later.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from huggingface_hub import constants

from ..config_schema import ConfigError, parse_config_json, validate_config
from ..hashing import git_blob_sha1_stream, sha256_stream
from ..integers import is_int
from ..registry import build_model, preset
from ..serialization import build_on_meta, load_model, loading_device, model_dtype, usable_device
from .download import COMMIT, SHA256, RefusedAnswer, download, pinned_by, pinned_hash, repo_cache_dir, snapshot_path
from .manifest import get_entry, manifest_path
from .schema import ManifestError
from .token import checked_token

if TYPE_CHECKING:
    from ..models import PerceiverForImageClassification

_TRUE = {"1", "on", "yes", "true"}
# What writing into a cache this user may only read gives: permissions, ACLs, a read-only mount.
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
HUB_ENDPOINT = "https://huggingface.co"


class ZooError(RuntimeError):
    """A zoo model cannot be pulled."""


class NotProducedError(ZooError):
    """The entry has no converted artifact yet (or it is not published)."""


class IntegrityError(ZooError):
    """A file's size or sha256 differs from the manifest (or, for a user's repo, from what the server announced);
    it was refused and removed."""


def entry_config(entry: dict) -> dict:
    """The model config an entry names: its released preset's, or the one it holds."""
    if entry.get("preset"):
        return preset(entry["preset"])["config"]
    return entry["config"]


def is_offline() -> bool:
    # As huggingface_hub reads it: an empty HF_HUB_OFFLINE leaves TRANSFORMERS_OFFLINE in charge.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def offline_reason(local_files_only: bool = False) -> str | None:
    """Why nothing may be downloaded now, for a refusal: the caller's ``local_files_only=True`` (transformers' and
    huggingface_hub's keyword), or HF_HUB_OFFLINE; None if downloads may go."""
    if local_files_only:
        return "local_files_only=True"
    return "HF_HUB_OFFLINE is set" if is_offline() else None


def check_client_online(what: str, error: type[ZooError] = ZooError) -> None:
    """Refuse to go online, saying why, when huggingface_hub's HTTP client is offline while the environment now says
    otherwise (call it once `is_offline()` is False): it reads HF_HUB_OFFLINE once, at its import, so a process that
    unset the variable since would get its advice to unset it."""
    if constants.HF_HUB_OFFLINE:
        raise error(f"{what}: HF_HUB_OFFLINE was set when huggingface_hub was imported, and huggingface_hub reads it "
                    "only then: this process cannot reach the Hub although the variable is unset now; run it again "
                    "without HF_HUB_OFFLINE")


def _expanded(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))  # '~' and $VARS, as huggingface_hub expands them


def cache_dir() -> Path:
    """The Hub cache huggingface_hub would use, from the environment as it is now: HF_HUB_CACHE, else the
    legacy HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return _expanded(os.environ[var])
    if os.environ.get("HF_HOME"):
        return _expanded(os.environ["HF_HOME"]) / "hub"
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
    return "endpoint", HUB_ENDPOINT


def how_to_get(name: str, entry: dict) -> str:
    """The routes that work today for an entry with no published artifact: a user's, then a maintainer's."""
    src = entry["source"]
    where = src.get("url") or src.get("path")
    if entry.get("preset"):
        convert = (f"perceiver-convert {entry['task']} {where.rsplit('/', 1)[-1]} --preset {entry['preset']} "
                   f"-o {name}.safetensors")
    else:
        convert = f"perceiver-convert {entry['task']} CHECKPOINT --config CONFIG.json -o {name}.safetensors"
    return (f"to use it now, download {where} ({src['size']} bytes, sha256 {src['sha256']}), convert it with "
            f"`{convert}` and load it with `perceiver_torch.load_model(\"{name}.safetensors\")`; a maintainer "
            f"produces the zoo artifact with `{entry['regenerate']}` and publishes it with "
            f"`HF_TOKEN=... perceiver-zoo-admin publish {name}`, which pins its revision and sha256 in the manifest")


def _published(name: str, entry: dict) -> dict:
    artifact = entry.get("artifact")
    if entry["status"] == "not-produced" or artifact is None:
        raise NotProducedError(
            f"zoo model {name!r}: the converted artifact has not been produced yet (status: not-produced), "
            f"so there is nothing to download; {how_to_get(name, entry)}."
        )
    if entry["status"] != "published":
        raise NotProducedError(
            f"zoo model {name!r} is produced locally but not published (no pinned revision); "
            f"{how_to_get(name, entry)}."
        )
    return artifact


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)


def _remove_from_cache(path: Path, repo_dir: Path) -> tuple[list[str], list[str]]:
    """Remove a cached snapshot file and the blob it points to, both only inside `repo_dir`.

    Returns (removed, kept): what could not be removed (a shared cache this user cannot write to) is
    named in `kept` with the reason, for the caller's refusal to say.
    """
    removed, kept = [], []
    blob = Path(os.path.realpath(path))
    # The snapshot entry itself is a link (or a file) under the repo's cache folder; the blob it
    # points to is removed only when it, too, lies there: a link out of the cache is never followed.
    for p, allowed in ((path, _inside(path.parent, repo_dir)), (blob, _inside(blob, repo_dir))):
        if allowed and (p.is_symlink() or p.exists()):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                kept.append(f"{p}: {exc.strerror or exc}")
                continue
            removed.append(str(p))
    return removed, kept


def _mismatch(f, subject: str, artifact: dict) -> str | None:
    """How the open file `f` (`subject` in the message) differs from `artifact`'s size and sha256 (or git blob id),
    or None."""
    size = os.fstat(f.fileno()).st_size
    kind, expected = pinned_hash(artifact)
    if size != artifact["size"]:
        return (f"{subject} has size {size}, but {pinned_by(artifact)} pins size {artifact['size']} "
                f"({kind} {expected})")
    digest = sha256_stream(f) if kind == "sha256" else git_blob_sha1_stream(f, size)
    if digest != expected:
        return (f"{subject} has {kind} {digest}, but {pinned_by(artifact)} pins {kind} {expected} "
                f"(size {artifact['size']})")
    return None


def _check_open_file(f, path: str | Path, artifact: dict, what: str) -> None:
    problem = _mismatch(f, str(path), artifact)
    if problem:
        raise IntegrityError(f"{what}: {problem}; the file was refused")


def _check_download(f, artifact: dict) -> None:
    problem = _mismatch(f, "the body the server sent", artifact)
    if problem:  # said once, by _download, with the file and the server it came from
        raise RefusedAnswer(problem)


def one_line(exc: BaseException) -> str:
    """An exception as one line, its type first: huggingface_hub's HTTP errors span several lines."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def verify_file(path: Path, artifact: dict, what: str) -> os.stat_result:
    """Check size and sha256 against the manifest; returns the stat of exactly the bytes hashed. A FIFO, socket,
    device or directory where a file should be is refused (`IntegrityError`), never waited on."""
    try:
        # Non-blocking: opening a FIFO with no writer would otherwise wait forever (no effect on a regular file).
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)), "rb") as f:
            _check_regular(os.fstat(f.fileno()), path, what)
            _check_open_file(f, path, artifact, what)
            return os.fstat(f.fileno())
    except OSError as exc:  # e.g. removed by a concurrent pull that found it corrupt
        raise ZooError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def _check_regular(info: os.stat_result, path: str | Path, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
        raise IntegrityError(f"{what}: {path} is not a regular file ({kind}); the file was refused")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def fetch(name: str, *, endpoint: str | None = None, mirror=None, cache: str | os.PathLike | None = None,
          manifest=None, token: str | bool | None = None) -> Path:
    """Local path of `name`'s verified artifact, downloading it (pinned revision) if needed; `token`, as
    huggingface_hub takes it, for the endpoint (`checked_token`)."""
    token = checked_token(token, "fetch")
    entry = get_entry(name, manifest)
    artifact = _published(name, entry)
    path, _ = _fetch_verified(name, artifact, *location(entry, endpoint, mirror), cache, token)
    return path


def _fetch_verified(name: str, artifact: dict, kind: str, where: str, cache, token: str | bool | None = None, *,
                    local_files_only: bool = False, force_download: bool = False) -> tuple[Path, os.stat_result]:
    if kind == "mirror":  # a local directory, verified where it lies each time: nothing to download or re-fetch
        return _from_mirror(name, artifact, Path(where))
    return from_endpoint(f"zoo model {name!r}", artifact, where, Path(cache) if cache else cache_dir(), token,
                         local_files_only=local_files_only, force_download=force_download)


def _from_mirror(name: str, artifact: dict, root: Path) -> tuple[Path, os.stat_result]:
    repo_id, revision, filename = artifact["repo_id"], artifact["revision"], artifact["filename"]
    path = root / repo_id / revision / filename
    # The schema already refuses '..' and absolute names; a link inside the mirror may still point out.
    if not _inside(path, root):
        raise ZooError(f"zoo model {name!r}: {path} resolves outside the mirror {root}; refused")
    if not path.is_file():
        raise ZooError(f"zoo model {name!r}: mirror {root} has no {repo_id}/{revision}/{filename}")
    return path, verify_file(path, artifact, f"zoo model {name!r} (mirror)")


def from_endpoint(what: str, artifact: dict, where: str, cache: Path, token: str | bool | None = None, *,
                  local_files_only: bool = False, force_download: bool = False) -> tuple[Path, os.stat_result]:
    """The cached snapshot file of `artifact` (what `what` names in errors), verified; downloaded from the endpoint
    `where` first (verified before it enters the cache, `token` sent as huggingface_hub sends it) if absent, or
    whatever the cache holds with `force_download`; never with `local_files_only` (nor HF_HUB_OFFLINE)."""
    pointer = snapshot_path(cache, artifact)
    if force_download or not pointer.exists():  # also a link whose blob is gone: the download replaces the link
        pointer, hashed = _download(what, artifact, where, cache, token, local_files_only, force_download)
        if hashed is not None:
            return pointer, hashed
    return verified_cached(what, pointer, artifact, repo_cache_dir(cache, artifact["repo_id"]))


def _download(what: str, artifact: dict, where: str, cache: Path, token: str | bool | None, local_files_only: bool,
              force: bool) -> tuple[Path, os.stat_result | None]:
    source = f"{artifact['repo_id']}@{artifact['revision']}/{artifact['filename']} from {where}"
    offline = offline_reason(local_files_only)
    if offline is not None:  # force_download with it is refused earlier, by the caller's keywords
        raise ZooError(f"{what}: download of {source} failed ({offline} and the file is not in the cache {cache}; "
                       "pull it there online, or point HF_HUB_CACHE at a cache that holds it)")
    check_client_online(what)
    try:
        return download(artifact, where, cache, lambda f: _check_download(f, artifact), token, force=force)
    except (IntegrityError, RefusedAnswer) as exc:  # `download` removed its own temp file; no other is touched
        raise IntegrityError(f"{what}: download of {source} refused: {exc}; nothing was kept in the cache") from None
    except Exception as exc:
        # Only the cache is written here (the network's errors are not OSErrors): a shared, read-only cache
        # that lacks the file is named as such, not as a PermissionError from somewhere inside it.
        if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE:
            raise ZooError(f"{what}: cannot download {source}: the Hub cache {cache} lacks the file and is not "
                           f"writable by this user ({exc.filename}: {exc.strerror}); set HF_HUB_CACHE (cache_dir= in "
                           "Python) to a directory you can write, or have the file pulled into this one") from None
        raise ZooError(f"{what}: download of {source} failed: {one_line(exc)}") from exc


def cached_entry(what: str, local: Path, repo_dir: Path) -> Path:
    """`local`, a snapshot entry of the cache folder `repo_dir` that no manifest or server answer pins (offline, or
    a commit cached already), refused unless it resolves inside `repo_dir` to a regular file; checked against its
    blob's name where that is a sha256 or git blob id (what huggingface_hub and `download` name blobs by: the Hub's
    ETag), as `verified_cached` checks (one that differs is removed from the cache). Any other name is a cache
    without links, where huggingface_hub copies each file into snapshots/: there is nothing to check it against."""
    _check_inside(what, local, repo_dir)
    blob = os.path.basename(os.path.realpath(local))
    kind = "sha256" if SHA256.match(blob) else "git_sha1" if COMMIT.match(blob) else None
    try:
        info = os.stat(local)
    except OSError as exc:
        raise ZooError(f"{what}: cannot read {local}: {exc.strerror or exc}") from None
    if kind is None:
        try:
            _check_regular(info, local, what)
        except IntegrityError as exc:  # not a name to check it by, so not a blob of ours to remove
            raise ZooError(str(exc)) from None
        return local
    artifact = {"size": info.st_size, kind: blob, "pinned_by": "the name of its cached blob"}
    return verified_cached(what, local, artifact, repo_dir)[0]


def _check_inside(what: str, local: Path, repo_dir: Path) -> None:
    if not _inside(local, repo_dir):
        raise ZooError(f"{what}: the cached file {local} resolves outside the cache folder {repo_dir}; "
                       "refused (remove it and pull again)")


def verified_cached(what: str, local: Path, artifact: dict, repo_dir: Path) -> tuple[Path, os.stat_result]:
    """`local`, a file in the cache folder `repo_dir`, checked against `artifact`'s size and sha256; one that
    differs (or is no regular file) is removed from the cache (its own entry only) and refused."""
    _check_inside(what, local, repo_dir)
    try:
        return local, verify_file(local, artifact, what)
    except IntegrityError as exc:
        removed, kept = _remove_from_cache(local, repo_dir)
        # Downloads are verified before they enter the cache, so this file changed there afterwards.
        cause = "It was already in the cache, not just downloaded: it was changed or corrupted there"
        if kept:  # e.g. a shared cache this user may only read: the refusal stands, naming what is left
            raise IntegrityError(f"{exc}, but could not be removed from the cache ({'; '.join(kept)}). {cause}; "
                                 "once someone who may write to the cache removes it, pulling again downloads "
                                 "it afresh.") from None
        raise IntegrityError(f"{exc} and removed from the cache ({', '.join(removed) or 'already gone'}). "
                             f"{cause}; pulling again downloads it afresh.") from None


def _untrained(name: str, task: str, config: dict, manifest, device: torch.device) -> torch.nn.Module:
    """The architecture, built for real on `device` only once its meta-device twin shows the constructors accept
    it and the parameter count is bounded (the schema checked each field at load). Built under `device` rather
    than moved there: a caller's `with torch.device("meta")` would otherwise give tensors with no data to move."""
    try:
        build_on_meta(task, config, source="config")
    except ConfigError as exc:
        raise ManifestError(f"{manifest_path(manifest)}: zoo manifest: entry {name!r}, field 'config': "
                            f"{'; '.join(exc.problems)}") from None
    with torch.device(device):
        return build_model(task, config)


def create_model(name: str, pretrained: bool = True, *, num_classes: int | None = None,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                 endpoint: str | None = None, mirror=None, cache_dir=None, manifest=None,
                 token: str | bool | None = None, local_files_only: bool = False,
                 force_download: bool = False) -> torch.nn.Module:
    """A zoo model by name, in eval mode (`token`: what is sent to the endpoint, as huggingface_hub sends it;
    `local_files_only`: from the cache only, `force_download`: downloaded again even if cached, verified alike).

    ``pretrained=True`` downloads the manifest-pinned artifact, verifies its sha256
    before loading, and loads it strictly; ``pretrained=False`` builds the untrained
    architecture (its configuration from the manifest entry). ``dtype`` ('bfloat16',
    ``torch.float16``, ...) gives the model ``.to(dtype)`` would, cast as the weights are read.
    ``num_classes`` (ImageNet classifiers) replaces the classifier by a fresh one with that many
    outputs unless it already has them (``reset_classifier``): the start of a fine-tune; 0 removes it, and
    the model gives image embeddings (timm's ``num_classes=0``).
    """
    if not isinstance(pretrained, bool):  # "False" is truthy: it would download
        raise TypeError(f"pretrained must be True or False; got {pretrained!r}.")
    # Checked before anything is downloaded or built; the meta device only for the untrained architecture.
    device, dtype = (loading_device if pretrained else usable_device)(device), model_dtype(dtype)
    entry = get_entry(name, manifest)
    config = entry_config(entry)
    num_classes = checked_num_classes(f"zoo model {name!r}", entry["task"], config, num_classes)
    if not pretrained:
        model = _untrained(name, entry["task"], config, manifest, device).to(dtype=dtype).eval()
        return with_classes(model, num_classes)
    artifact = _published(name, entry)
    path, hashed = _fetch_verified(name, artifact, *location(entry, endpoint, mirror), cache_dir,
                                   checked_token(token, "create_model"), local_files_only=local_files_only,
                                   force_download=force_download)

    def converted_for_this_entry(meta: dict[str, str]) -> None:
        # load_model has already refused a config that is not valid, bounded JSON; this parse cannot fail.
        if meta["task"] != entry["task"] or parse_config_json(meta["config"], f"{path} (metadata config)") != config:
            raise ZooError(f"zoo model {name!r}: {path} was converted for task {meta['task']!r} with a different "
                           "config than the manifest entry")

    model = load_model(path, device=device, dtype=dtype, check_metadata=converted_for_this_entry)
    # What was loaded must be the very bytes that were hashed: same inode, size and mtime after the load.
    try:
        unchanged = _same_file(hashed, os.stat(path))
    except OSError:
        unchanged = False
    if not unchanged:
        raise IntegrityError(f"zoo model {name!r}: {path} changed between its sha256 check and its load; refused")
    return with_classes(model, num_classes)


def checked_num_classes(what: str, task: str, config: dict, num_classes) -> int | None:
    """`num_classes` as an int the model `what` names (of `task` and `config`) can take, or None; checked before
    anything is fetched."""
    if num_classes is None:
        return None
    if task != "imagenet":
        raise ValueError(f"{what} is a {task} model; num_classes applies to the ImageNet classifiers.")
    if is_int(num_classes):
        num_classes = int(num_classes)
    validate_config(task, {**config, "num_classes": num_classes}, source=f"{what} with num_classes")
    # Every check reset_classifier makes (the parameter bound too), on the meta device.
    classifier = cast("PerceiverForImageClassification", build_on_meta(task, config, source=what))
    classifier.reset_classifier(num_classes)
    return num_classes


def with_classes(model: torch.nn.Module, num_classes: int | None) -> torch.nn.Module:
    if num_classes is not None and num_classes != model.num_classes:
        cast("PerceiverForImageClassification", model).reset_classifier(num_classes)  # an ImageNet model there
    return model

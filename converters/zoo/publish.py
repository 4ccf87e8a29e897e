"""Publish a produced zoo artifact and its model card to a Hub repo, and pin the revision.

The upload goes through ``huggingface_hub.HfApi`` (``create_repo`` then one ``create_commit`` of the artifact and
``README.md``) with the write token given, else huggingface_hub's (``HF_TOKEN``, else ``hf auth login``'s), to
the Hugging Face Hub or to any Hub-compatible endpoint (the tests' local stand-in). The commit id the server
returns becomes ``artifact.revision`` in the manifest, so pulls are pinned to exactly these bytes. Publishing
unchanged files again makes no commit (the client skips them) and records the same revision.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token

from perceiver_torch.hashing import sha256_file
from perceiver_torch.zoo import ZooError, get_entry
from perceiver_torch.zoo.hub import HUB_ENDPOINT, verify_file
from perceiver_torch.zoo.token import checked_token

from .manifest_edit import update_entry
from .regenerate import WORK_DIR

log = logging.getLogger(__name__)


def produced_files(name: str, entry: dict, work_dir: Path) -> tuple[Path, Path]:
    """The artifact and model card regenerate wrote, the artifact checked against the manifest."""
    artifact = entry.get("artifact")
    if entry["status"] == "not-produced" or not artifact:
        raise ZooError(f"{name}: nothing to publish (status: not-produced); run `{entry['regenerate']}` first")
    path, card = work_dir / name / artifact["filename"], work_dir / name / "README.md"
    if not path.is_file() or not card.is_file():
        raise ZooError(f"{name}: {path} or {card} is missing; run `{entry['regenerate']} --force` to rebuild them")
    verify_file(path, artifact, f"{name} artifact")
    if artifact.get("card_sha256") and sha256_file(card) != artifact["card_sha256"]:
        raise ZooError(f"{name}: {card} differs from the card regenerate recorded; run `{entry['regenerate']} --force`")
    return path, card


def publish(name: str, *, endpoint: str | None = None, published_to: str = "hub", token: str | None = None,
            work_dir: Path = WORK_DIR, manifest=None) -> dict:
    """Upload `name`'s artifact + card to its ``publish_repo``; record and return the revision."""
    entry = get_entry(name, manifest)
    path, card = produced_files(name, entry, Path(work_dir))
    # As huggingface_hub: HF_TOKEN, else `hf auth login`'s; an empty or unsendable one given is refused, not replaced.
    token = get_token() if token is None else checked_token(token, "publish")
    if not token:
        raise ZooError("publishing needs a write token: --token (token= in Python), the HF_TOKEN environment "
                       "variable or `hf auth login`")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = entry["publish_repo"]
    try:
        if not api.repo_exists(repo_id):
            api.create_repo(repo_id, repo_type="model")
        info = api.create_commit(
            repo_id, repo_type="model", commit_message=f"{name}: artifact sha256 {entry['artifact']['sha256']}",
            operations=[CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in (path, card)],
        )
    except Exception as exc:  # huggingface_hub's HTTP errors, connection errors
        raise ZooError(f"{name}: upload to {endpoint}/{repo_id} failed, manifest unchanged: "
                       f"{type(exc).__name__}: {exc}") from exc
    artifact = entry["artifact"]
    artifact.update(repo_id=repo_id, revision=info.oid, published_to=published_to)
    entry.update(status="published", artifact=artifact)
    update_entry(name, entry, manifest)
    log.info("[%s] published to %s/%s at revision %s", name, endpoint, repo_id, info.oid)
    return {"name": name, "repo_id": repo_id, "revision": info.oid}

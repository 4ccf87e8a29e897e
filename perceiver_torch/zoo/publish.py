"""Publish a produced zoo artifact and its model card, and record the pinned revision.

- To a local mirror directory (the bundled stand-in, or an organisation's mirror): the files
  are copied to ``<mirror>/<repo_id>/<revision>/`` where ``revision`` is the first 40 hex
  digits of sha256(artifact sha256 + card sha256), a content hash that pins exactly these
  bytes; a ``refs/main`` file points at it.
- To the Hugging Face Hub: ``HfApi(token=$HF_TOKEN).create_commit`` uploads both files to
  ``publish_repo`` and the returned commit oid is the revision.

The artifact's sha256 is checked against the manifest before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ..serialization import atomic_write
from .hub import ZooError, sha256_file, verify_file
from .manifest import BUNDLED_STANDIN, get_entry, update_entry
from .regenerate import WORK_DIR


def _produced_files(name: str, entry: dict, work_dir: Path) -> tuple[Path, Path]:
    artifact = entry.get("artifact")
    if entry["status"] == "not-produced" or not artifact:
        raise ZooError(f"{name}: nothing to publish (status: not-produced); run `{entry['regenerate']}` first")
    path, card = work_dir / name / artifact["filename"], work_dir / name / "README.md"
    if not path.is_file() or not card.is_file():
        raise ZooError(f"{name}: {path} or {card} missing; run `{entry['regenerate']} --force` to rebuild them")
    verify_file(path, artifact, f"{name} artifact")
    return path, card


def content_revision(artifact_sha: str, card_sha: str) -> str:
    return hashlib.sha256(f"{artifact_sha}\n{card_sha}\n".encode()).hexdigest()[:40]


def publish_to_mirror(name: str, mirror, work_dir: Path = WORK_DIR, manifest=None) -> dict:
    entry = get_entry(name, manifest)
    path, card = _produced_files(name, entry, Path(work_dir))
    artifact = entry["artifact"]
    card_sha = sha256_file(card)
    revision = content_revision(artifact["sha256"], card_sha)
    repo_dir = Path(mirror) / entry["publish_repo"]
    dest = repo_dir / revision
    for src in (path, card):
        target = dest / src.name
        if not (target.is_file() and sha256_file(target) == sha256_file(src)):
            atomic_write(target, lambda tmp, src=src: shutil.copyfile(src, tmp))
    atomic_write(repo_dir / "refs" / "main", lambda tmp: Path(tmp).write_text(revision))
    bundled = Path(mirror).resolve() == BUNDLED_STANDIN.resolve()
    artifact.update(repo_id=entry["publish_repo"], revision=revision, card_sha256=card_sha,
                    published_to="bundled-stand-in" if bundled else "mirror")
    entry.update(status="published", artifact=artifact)
    update_entry(name, entry, manifest)
    print(f"[{name}] published to {dest} (revision {revision})")
    return {"name": name, "revision": revision, "path": str(dest / path.name)}


def publish_to_hub(name: str, work_dir: Path = WORK_DIR, manifest=None, api=None) -> dict:
    entry = get_entry(name, manifest)
    path, card = _produced_files(name, entry, Path(work_dir))
    token = os.environ.get("HF_TOKEN")
    if api is None:
        if not token:
            raise ZooError("publishing to the Hub needs a write token in HF_TOKEN")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    from huggingface_hub import CommitOperationAdd

    repo_id = entry["publish_repo"]
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.create_commit(
        repo_id=repo_id, repo_type="model",
        operations=[CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)),
                    CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card))],
        commit_message=f"perceiver-torch: {name} (artifact sha256 {entry['artifact']['sha256']})",
    )
    revision = info.oid
    artifact = entry["artifact"]
    artifact.update(repo_id=repo_id, revision=revision, card_sha256=sha256_file(card), published_to="hub")
    entry.update(status="published", artifact=artifact)
    update_entry(name, entry, manifest)
    print(f"[{name}] published to https://huggingface.co/{repo_id} at revision {revision}")
    return {"name": name, "revision": revision}

"""Helpers for the zoo tests: a scratch manifest with a golden-sourced entry, a served stand-in."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

from converters.convert import sha256_file
from perceiver_torch.zoo import manifest as zoo_manifest
from perceiver_torch.zoo.standin import serve

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GOLDEN_ENTRY = "golden-language"


def golden_language_entry() -> dict:
    """A tiny entry whose source is the golden language checkpoint (upstream Haiku code, small config)."""
    family = GOLDEN / "language"
    entry = copy.deepcopy(zoo_manifest.entries()["language-perceiver"])
    entry.update(kind="tiny", preset=None, config_file=str(family / "config.json"),
                 regenerate=f"python scripts/regenerate.py {GOLDEN_ENTRY}", publish_repo="tests/golden-language",
                 notes="test entry")
    entry["source"].update(url=None, path=str(family / "checkpoint.pickle"),
                           size=(family / "checkpoint.pickle").stat().st_size,
                           sha256=sha256_file(family / "checkpoint.pickle"), reference_io=str(family / "io.npz"),
                           licence="test fixture")
    return entry


def scratch_manifest(path: Path, extra: dict[str, dict] | None = None) -> Path:
    """The repo manifest plus `extra` entries, written to `path`."""
    data = zoo_manifest.load_manifest()
    data["models"].update(extra if extra is not None else {GOLDEN_ENTRY: golden_language_entry()})
    zoo_manifest.save_manifest(data, path)
    return path


@contextmanager
def hub_env(monkeypatch, root, cache: Path, **kwargs):
    """A stand-in serving `root`; HF_ENDPOINT points at it and HF_HUB_CACHE at `cache` (undone by monkeypatch)."""
    with serve(root, **kwargs) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        for key in ("HF_HUB_OFFLINE", "PERCEIVER_ZOO_MIRROR", "PERCEIVER_ZOO_ENDPOINT"):
            monkeypatch.delenv(key, raising=False)
        yield hub


def cached_files(cache: Path) -> list[str]:
    """Every file or link in a Hub cache except its lock files and CACHEDIR.TAG."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts and p.name != "CACHEDIR.TAG")


def produce_and_publish(root: Path, token: str = "test-write-token") -> tuple[Path, Path, str]:
    """Regenerate the golden entry under `root` and publish it into a stand-in tree there.

    Returns (scratch manifest, stand-in tree, pinned revision).
    """
    from perceiver_torch.zoo.publish import publish
    from perceiver_torch.zoo.regenerate import regenerate

    manifest = scratch_manifest(root / "zoo_manifest.yaml")
    regenerate(GOLDEN_ENTRY, work_dir=root / "work", manifest=manifest)
    with serve(root / "hub", token=token) as hub:
        revision = publish(GOLDEN_ENTRY, endpoint=hub.endpoint, token=token, work_dir=root / "work",
                           manifest=manifest)["revision"]
    return manifest, root / "hub", revision

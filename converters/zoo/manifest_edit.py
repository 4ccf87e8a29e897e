"""Rewrite a zoo manifest atomically, and resolve the files its entries name (the producer's side of it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from perceiver_torch.serialization import atomic_write
from perceiver_torch.zoo.manifest import load_manifest, manifest_path
from perceiver_torch.zoo.schema import ManifestError, validate_entry, validate_manifest

HEADER = """\
# perceiver-torch model zoo manifest. Schema: perceiver_torch/zoo/schema.py (validated on every load).
# Figures under `parity` and `artifact` are written by `perceiver-zoo-admin regenerate` and `publish`,
# never by hand. Release facts: perceiver_torch/data/upstream_release.md (shipped with the package).
"""


def writable_path(path=None) -> Path:
    """The manifest file to rewrite: the real file, even when the package reaches it through a link."""
    return manifest_path(path).resolve()


def save_manifest(data: dict, path=None) -> Path:
    """Validate then atomically replace the manifest (a failure leaves the old file intact)."""
    validate_manifest(data)
    text = HEADER + yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True)
    return atomic_write(writable_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def update_entry(name: str, entry: dict, path=None) -> Path:
    validate_entry(name, entry)
    data = load_manifest(path)
    data["models"][name] = entry
    return save_manifest(data, path)


def entry_file(relative: str, manifest=None) -> Path:
    """A file an entry names (source.path, reference_io), relative to the manifest's directory.

    The schema already refuses absolute paths and '..'; a link that leads out is refused here.
    """
    root = writable_path(manifest).parent
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ManifestError(f"zoo manifest {manifest_path(manifest)}: {relative!r} resolves to {path}, outside "
                            f"the manifest's directory {root}")
    return path

"""Load, validate and atomically rewrite `zoo_manifest.yaml`."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from ..serialization import atomic_write
from .schema import ManifestError, validate_entry, validate_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT / "zoo_manifest.yaml"
# The bundled stand-in Hub tree: <root>/<repo_id>/<revision>/<filename>.
BUNDLED_STANDIN = REPO_ROOT / "parity_tests" / "fixtures" / "zoo_hub"

HEADER = """\
# perceiver-torch model zoo manifest. Schema: perceiver_torch/zoo/schema.py (validated on every load).
# Figures under `parity` and `artifact` are written by scripts/regenerate.py and scripts/publish.py,
# never by hand. Release facts come from DeepMind's release (see each entry's `source`).
"""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ManifestError(f"zoo manifest: duplicate key {key!r} (line {key_node.start_mark.line + 1}); "
                                "entry names must be unique")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def manifest_path(path=None) -> Path:
    return Path(path or os.environ.get("PERCEIVER_ZOO_MANIFEST") or DEFAULT_MANIFEST)


def load_manifest(path=None) -> dict:
    """The validated manifest ``{"schema_version", "models"}``."""
    path = manifest_path(path)
    if not path.is_file():
        raise ManifestError(f"zoo manifest {path} not found (set PERCEIVER_ZOO_MANIFEST to its location)")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ManifestError(f"zoo manifest {path} is not valid YAML: {exc}") from None
    validate_manifest(data)
    return data


def entries(path=None) -> dict[str, dict]:
    return load_manifest(path)["models"]


def get_entry(name: str, path=None) -> dict:
    models = entries(path)
    if name not in models:
        raise KeyError(f"no model {name!r} in the zoo; available: {sorted(models)}")
    return copy.deepcopy(models[name])


def save_manifest(data: dict, path=None) -> Path:
    """Validate then atomically replace the manifest (a failure leaves the old file intact)."""
    validate_manifest(data)
    text = HEADER + yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True)
    path = manifest_path(path)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def update_entry(name: str, entry: dict, path=None) -> Path:
    validate_entry(name, entry)
    data = load_manifest(path)
    data["models"][name] = entry
    return save_manifest(data, path)


def resolve_repo_path(relative: str) -> Path:
    """A repo-relative path named in the manifest (source.path, config_file)."""
    p = Path(relative)
    return p if p.is_absolute() else REPO_ROOT / p

"""Read and validate the zoo manifest: the packaged `zoo_manifest.yaml`, or another one by path.

The package ships the repository's `zoo_manifest.yaml` byte for byte (the released entries);
`PERCEIVER_ZOO_MANIFEST` or a `manifest=` argument selects another file, e.g. the test
manifest of small models under parity_tests/. Paths inside a manifest (a source's `path`,
`reference_io`) are relative to the manifest's own directory and are only read by the
producer side (`converters.zoo`); the runtime needs nothing but the manifest itself.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path

import yaml

from .schema import ManifestError, validate_manifest

PACKAGED_MANIFEST = "zoo_manifest.yaml"
# Bigger than any sane manifest (the released one is ~10 KB); refused before it is parsed.
MAX_MANIFEST_BYTES = 8 << 20


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
    """The manifest in use: `path`, else $PERCEIVER_ZOO_MANIFEST, else the packaged one."""
    if path or os.environ.get("PERCEIVER_ZOO_MANIFEST"):
        return Path(path or os.environ["PERCEIVER_ZOO_MANIFEST"])
    return Path(str(resources.files("perceiver_torch").joinpath(PACKAGED_MANIFEST)))


def load_manifest(path=None) -> dict:
    """The validated manifest ``{"schema_version", "models"}``."""
    path = manifest_path(path)
    if not path.is_file():
        raise ManifestError(f"zoo manifest {path} not found (PERCEIVER_ZOO_MANIFEST or manifest= names another)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"zoo manifest {path} is {path.stat().st_size} bytes, more than the "
                            f"{MAX_MANIFEST_BYTES} a manifest may have")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"zoo manifest {path} is not valid YAML: {exc}") from None
    try:
        validate_manifest(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return data


def entries(path=None) -> dict[str, dict]:
    return load_manifest(path)["models"]


def get_entry(name: str, path=None) -> dict:
    models = entries(path)
    if name not in models:
        raise KeyError(f"no model {name!r} in the zoo; available: {sorted(models)}")
    return copy.deepcopy(models[name])

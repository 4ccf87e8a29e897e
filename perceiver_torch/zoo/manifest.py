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

from ..config_schema import short_repr
from .schema import ManifestError, validate_manifest

PACKAGED_MANIFEST = "zoo_manifest.yaml"
# Bigger than any sane manifest (the released one is ~10 KB); refused before it is parsed.
MAX_MANIFEST_BYTES = 8 << 20


# Far deeper than the manifest's own nesting (about 8); PyYAML composes nodes recursively, so an
# unbounded depth would end in a RecursionError rather than an error naming the file.
MAX_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(node) -> int:
    return node.start_mark.line + 1


class _ManifestLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate or unhashable keys, merge keys and nesting deeper than MAX_DEPTH."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ManifestError(f"zoo manifest: nests deeper than {MAX_DEPTH} levels "
                                    f"(line {self.peek_event().start_mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _checked_key(loader, key_node, deep):
    if key_node.tag == _MERGE_TAG:  # refused rather than half-supported: override order is easy to misread
        raise ManifestError(f"zoo manifest: merge keys ('<<') are not supported (line {_line(key_node)}); "
                            "write the fields out in full")
    key = loader.construct_object(key_node, deep=deep)
    try:
        hash(key)
    except TypeError:
        raise ManifestError(f"zoo manifest: a mapping key must be a plain value (a name), found a "
                            f"{type(key).__name__} (line {_line(key_node)})") from None
    return key


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = _checked_key(loader, key_node, deep)
        if key in seen:
            raise ManifestError(f"zoo manifest: duplicate key {short_repr(key)} (line {_line(key_node)}); "
                                "entry names must be unique")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _construct_int(loader, node):
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:  # past Python's int-from-string limit (4300 digits): far past any size or count
        raise ManifestError(f"zoo manifest: an integer of {len(node.value)} characters (line {_line(node)}) is "
                            "too long to read: far longer than any size or count the manifest holds") from None


_ManifestLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def manifest_path(path=None) -> Path:
    """The manifest in use: `path`, else $PERCEIVER_ZOO_MANIFEST, else the packaged one."""
    if path is not None:  # "" is a path (the current folder, refused as one), not a request for the default
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"manifest must be a path (str or os.PathLike); got {type(path).__name__}.")
        return Path(path)
    if os.environ.get("PERCEIVER_ZOO_MANIFEST"):
        return Path(os.environ["PERCEIVER_ZOO_MANIFEST"])
    return packaged_manifest_path()


def packaged_manifest_path() -> Path:
    """The manifest shipped with the package (the released entries), whatever $PERCEIVER_ZOO_MANIFEST says."""
    return Path(str(resources.files("perceiver_torch").joinpath(PACKAGED_MANIFEST)))


def _not_a_file(path: Path) -> str:
    if path.is_dir():
        return "is a directory, not a manifest file"
    return "is not a regular file" if path.exists() else "not found"


def load_manifest(path=None) -> dict:
    """The validated manifest ``{"schema_version", "models"}``."""
    path = manifest_path(path)
    if not path.is_file():
        raise ManifestError(f"zoo manifest {path} {_not_a_file(path)} (PERCEIVER_ZOO_MANIFEST or manifest= names "
                            "another)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"zoo manifest {path} is {path.stat().st_size} bytes, more than the "
                            f"{MAX_MANIFEST_BYTES} a manifest may have")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ManifestLoader)  # noqa: S506 - SafeLoader
        validate_manifest(data)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"zoo manifest {path} is not valid YAML: {exc}") from None
    except ManifestError as exc:  # the loader's refusals and the schema's
        raise ManifestError(f"{path}: {exc}") from None
    return data


def entries(path=None) -> dict[str, dict]:
    return load_manifest(path)["models"]


class UnknownModelError(KeyError, ValueError):
    """A name the zoo's manifest does not hold. A KeyError (a lookup that missed) and a ValueError (what
    `from_pretrained` raises for a bad name), so either `except` catches it."""

    def __str__(self) -> str:  # the message itself, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


def get_entry(name: str, path=None) -> dict:
    """A copy of the manifest entry of the zoo model `name`; else an `UnknownModelError` naming the manifest
    and the models it holds."""
    models = entries(path)
    if name not in models:
        raise UnknownModelError(f"no zoo model {short_repr(name)} in {manifest_path(path)}; "
                                f"available: {sorted(models)}")
    return copy.deepcopy(models[name])

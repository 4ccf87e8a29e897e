"""The model zoo: verified checkpoints pulled by name (see zoo_manifest.yaml and zoo/schema.py)."""

from .hub import IntegrityError, NotProducedError, ZooError, create_model, fetch
from .manifest import entries, get_entry, load_manifest
from .schema import ManifestError


def list_models(manifest=None) -> list[str]:
    """The zoo's model names, sorted: what `create_model` takes from the same manifest (`manifest`, else
    $PERCEIVER_ZOO_MANIFEST, else the packaged one)."""
    return sorted(entries(manifest))


__all__ = [
    "IntegrityError", "ManifestError", "NotProducedError", "ZooError", "create_model", "entries", "fetch",
    "get_entry", "list_models", "load_manifest",
]

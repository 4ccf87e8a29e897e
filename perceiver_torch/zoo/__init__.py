"""The model zoo: verified checkpoints pulled by name (see zoo_manifest.yaml and zoo/schema.py); and users'
own checkpoints shared on the Hub (`push_to_hub`, ``hf-hub:owner/name``: see user_hub.py), not verified."""

from .create import create_model
from .hub import IntegrityError, NotProducedError, ZooError, fetch
from .manifest import UnknownModelError, entries, get_entry, load_manifest
from .push import push_to_hub
from .schema import ManifestError
from .user_hub import HubError


def list_models(manifest=None) -> list[str]:
    """The zoo's model names, sorted: what `create_model` takes from the same manifest (`manifest`, else
    $PERCEIVER_ZOO_MANIFEST, else the packaged one)."""
    return sorted(entries(manifest))


__all__ = [
    "HubError", "IntegrityError", "ManifestError", "NotProducedError", "ZooError", "create_model", "entries", "fetch",
    "UnknownModelError", "get_entry", "list_models", "load_manifest", "push_to_hub",
]

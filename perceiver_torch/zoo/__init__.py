"""The model zoo: verified checkpoints pulled by name (see zoo_manifest.yaml and zoo/schema.py); and users'
own checkpoints shared on the Hub (`push_to_hub`, ``hf-hub:owner/name``: see user_hub.py), not verified."""

from .create import create_model
from .hub import IntegrityError, NotProducedError, ZooError, fetch
from .listing import list_models
from .manifest import UnknownModelError, entries, get_entry, load_manifest
from .push import push_to_hub
from .schema import ManifestError
from .user_hub import HubError

__all__ = [
    "HubError", "IntegrityError", "ManifestError", "NotProducedError", "ZooError", "create_model", "entries", "fetch",
    "UnknownModelError", "get_entry", "list_models", "load_manifest", "push_to_hub",
]

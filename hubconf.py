"""torch.hub entry points: every zoo model by name, so that

    torch.hub.load("OWNER/perceiver-torch", "language_perceiver")

downloads the repository, then the verified checkpoint (sha256 pinned by the manifest), as `create_model` does.

One entry per model of the manifest `create_model` reads ($PERCEIVER_ZOO_MANIFEST, else the packaged one), its
name with `-` as `_` (names hold lower-case letters, digits and hyphens, so no two can collide); `create_model`
itself is an entry too, for a name that is not a Python identifier or would shadow `create_model` or
`dependencies`. A manifest that cannot be read gives no named entries, with a warning, and `create_model` stays
(an hf-hub: repo needs no manifest). Keyword arguments are `create_model`'s (`pretrained=False` for the
untrained architecture, `num_classes`, `device`, `dtype`, `token`, ...).
"""

from __future__ import annotations

import warnings

# Private names for all but create_model: torch.hub.list offers every public callable of this module.
from perceiver_torch.zoo import ManifestError as _ManifestError
from perceiver_torch.zoo import create_model
from perceiver_torch.zoo import get_entry as _get_entry
from perceiver_torch.zoo import list_models as _list_models

# torch.hub checks that these import before it loads this file (the runtime's dependencies; `yaml` is pyyaml).
dependencies = ["torch", "numpy", "safetensors", "huggingface_hub", "httpx2", "yaml"]

__all__ = ["create_model"]


def _entry_point(name: str):
    def load(pretrained: bool = True, **kwargs):
        return create_model(name, pretrained, **kwargs)

    entry = _get_entry(name)
    source = entry.get("source") or {}
    weights, licence = source.get("url") or "a test fixture", source.get("licence", "not recorded")
    load.__name__ = load.__qualname__ = name.replace("-", "_")
    load.__doc__ = (f"Zoo model {name!r}, task {entry['task']} ({entry['kind']}, {entry['status']}): "
                    f"create_model({name!r}, pretrained, **kwargs).\n\nWeights: {weights}, licence {licence}; "
                    f"`perceiver-zoo info {name}` gives the whole entry.")
    return load


try:
    _names = _list_models()
except _ManifestError as _error:  # $PERCEIVER_ZOO_MANIFEST unreadable: create_model("hf-hub:...") still works
    _names = []
    warnings.warn(f"hubconf: no zoo entry points: {_error}", stacklevel=1)
for _name in _names:
    _identifier = _name.replace("-", "_")
    # Not '7b-model' (create_model("7b-model") then), nor a name that would replace this module's own.
    if _identifier.isidentifier() and _identifier not in ("create_model", "dependencies"):
        globals()[_identifier] = _entry_point(_name)
        __all__.append(_identifier)

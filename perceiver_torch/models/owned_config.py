"""A task model's config: its own copy, and a snapshot of what it was built from, for save_model to compare."""

from __future__ import annotations

import copy

from torch import nn

from ..config_schema import short_repr, validate_config


def check_own_config(task: str, config, owner: str) -> None:
    """Refuse a config the task's schema refuses before the class `owner` builds anything: one built directly (not
    through `build_model`) would otherwise fail deep inside torch on a float or negative size. The caps for
    untrusted files do not apply (as in `build_model`)."""
    validate_config(task, config, source=f"{owner}(config)", bounded=False)


def own_config(model: nn.Module, config: dict) -> None:
    """Give `model` its own copy of `config` (the caller's dict may be reused) and the snapshot it was built from."""
    # Plain dict attributes of any module (nn.Module's __setattr__ is typed for tensors and modules only).
    model.config = copy.deepcopy(config)  # type: ignore[assignment]
    model._built_config = copy.deepcopy(config)  # type: ignore[assignment]  # what the modules and weights follow


def config_changes(model: nn.Module) -> list[str]:
    """Each dotted key where `model.config` differs from what the model was built from, as "key: old -> new"."""
    built = getattr(model, "_built_config", None)
    return [] if built is None else _differences(built, model.config, "")


def _differences(old, new, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.append(f"{where}: removed (was {short_repr(old[key])})")
            elif key not in old:
                found.append(f"{where}: added ({short_repr(new[key])})")
            else:
                found += _differences(old[key], new[key], where)
        return found
    same = type(old) is type(new) and old == new  # True and 1 are different settings in a config
    return [] if same else [f"{path or '(config)'}: {short_repr(old)} -> {short_repr(new)}"]

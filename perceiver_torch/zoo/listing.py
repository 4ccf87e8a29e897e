"""`list_models`: the zoo's model names, filtered by wildcard patterns as timm's ``list_models("vision*")``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fnmatch import fnmatchcase

from .manifest import entries

MANIFEST_SUFFIXES = (".yaml", ".yml")


def _patterns(value, what: str) -> list[str]:
    """`value` (one pattern or a list of them; '' none) as a list, each a str that could match a model name."""
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"list_models: {what} must be a wildcard pattern (str, e.g. 'vision*') or a list of them; got "
                        f"{type(value).__name__} (a manifest is passed as manifest=...).")
    for pattern in patterns:
        # A plain name that is a file here is a manifest given where list_models once took it (it matched nothing).
        plain_file = not any(c in pattern for c in "*?[") and os.path.isfile(pattern)
        if "/" in pattern or os.sep in pattern or pattern.lower().endswith(MANIFEST_SUFFIXES) or plain_file:
            raise ValueError(f"list_models: {what} {pattern!r:.200} looks like a manifest path, which no model name "
                             "matches; pass a manifest as manifest=... (perceiver-zoo --manifest FILE list), and a "
                             "pattern such as 'vision*'.")
    return [p for p in patterns if p]


def list_models(filter: str | Sequence[str] | os.PathLike = "", *, exclude_filters: str | Sequence[str] = "",
                manifest=None) -> list[str]:
    """The zoo's model names, sorted: what `create_model` takes from the same manifest (`manifest`, else
    $PERCEIVER_ZOO_MANIFEST, else the packaged one).

    As timm's: `filter` keeps the names matching a shell-style wildcard pattern (``"vision*"``; a list keeps those
    matching any; ``""`` all of them), `exclude_filters` then drops those matching any of its patterns; case
    matters, as in timm on Linux, and a pattern that matches nothing gives ``[]``. A manifest path given as the
    first argument (a `pathlib.Path` or other os.PathLike, never a str) is still the manifest, as before.
    """
    if isinstance(filter, os.PathLike):  # list_models(Path(...)): the manifest, its earlier positional place
        if manifest is not None:
            raise TypeError("list_models: a manifest path was given both as the first argument and as manifest=.")
        filter, manifest = "", filter
    keep, drop = _patterns(filter, "filter"), _patterns(exclude_filters, "exclude_filters")
    names = sorted(entries(manifest))
    if keep:
        names = [n for n in names if any(fnmatchcase(n, p) for p in keep)]
    return [n for n in names if not any(fnmatchcase(n, p) for p in drop)]

"""JSON as the files this package reads must hold it: no duplicate keys, no NaN/Infinity literals.

Python's `json` keeps the last of two equal keys, so a header or config could say one thing to a reader
that takes the first and another to us; and NaN/Infinity are not JSON at all.
"""

from __future__ import annotations

import json


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def loads_strict(text: str | bytes):
    """`json.loads(text)`, raising ValueError on a duplicate key or a NaN/Infinity literal (and as it does on
    anything else it cannot parse: JSONDecodeError and UnicodeDecodeError are ValueErrors)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)

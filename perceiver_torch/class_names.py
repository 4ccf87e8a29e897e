"""A classifier's own class names, kept in a checkpoint's metadata under `class_names`.

The field is a JSON list of strings, one per class in logit order. A file without it names its classes as
before (the released names for the released class count, else the indices). The file is input: the field is
checked before the model is built, and everything a load refuses is refused before a save too, so no file is
written that cannot be read back.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from .config_schema import short_repr
from .message_text import printable, problem_lines
from .safetensors_io import CheckpointFormatError
from .strict_json import loads_strict

METADATA_KEY = "class_names"
# The tasks whose models have `num_classes` logits to name (their configs' key of that name).
TASKS_WITH_CLASSES = ("imagenet", "video_autoencoding")
MAX_NAME_CHARS = 256  # ImageNet's longest name has 121
# The field's UTF-8 bytes in all: room for ImageNet-21k's 21,843 WordNet names (about 35 bytes each, and
# JSON's quotes and commas), far below the header's 16 MiB.
MAX_FIELD_BYTES = 2 << 20
# Characters that reorder how a terminal or editor shows the text around them ("Trojan Source",
# CVE-2021-42574): a name holding one could make printed results read as other classes.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters (C0, DEL, C1: escapes, newlines), lone surrogates (not UTF-8), line and paragraph separators.
REFUSED_CATEGORIES = {"Cc": "a control character", "Cs": "a lone surrogate", "Zl": "a line separator",
                      "Zp": "a paragraph separator"}
EXPECTED = (f"a list of strings, one per class in logit order, each of 1 to {MAX_NAME_CHARS} characters without "
            f"control characters, at most {MAX_FIELD_BYTES:,} bytes as JSON")


def encode(names: tuple[str, ...]) -> str:
    """The field's text for `names` (compact, non-ASCII kept as UTF-8: one text for the same names)."""
    return json.dumps(list(names), ensure_ascii=False, separators=(",", ":"))


def _name_problem(index: int, name) -> str | None:
    if not isinstance(name, str):
        return f"name {index}: found {short_repr(name)} ({type(name).__name__}); expected a string"
    if not name:
        return f"name {index}: empty"
    if len(name) > MAX_NAME_CHARS:
        return f"name {index} ({printable(name, 40)}): {len(name)} characters; expected at most {MAX_NAME_CHARS}"
    for char in name:
        what = "a bidirectional-text control" if char in BIDI_CONTROLS else \
            REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            return f"name {index} ({printable(name, 40)}): holds U+{ord(char):04X}, {what}"
    return None


def problems(names, num_classes: int) -> list[str]:
    """What is wrong with `names` as the class names of a model with `num_classes` logits ([] if nothing)."""
    if not isinstance(names, (list, tuple)):  # a str is a sequence too: of its characters
        return [f"found {short_repr(names)} ({type(names).__name__}); expected a list of strings"]
    if num_classes == 0:
        return ["the model has no classifier (num_classes 0), so no classes to name"]
    if len(names) != num_classes:
        return [f"found {len(names)} names; the model has {num_classes} classes"]
    found = [p for p in (_name_problem(i, name) for i, name in enumerate(names)) if p is not None]
    size = 0 if found else len(encode(tuple(names)).encode("utf-8"))  # encodable once every name is a str
    if size > MAX_FIELD_BYTES:
        found.append(f"{size:,} bytes as JSON; expected at most {MAX_FIELD_BYTES:,}")
    return found


def checked(names, num_classes: int, where: str) -> tuple[str, ...]:
    """`names` as a tuple, if a checkpoint can keep them as the names of `num_classes` classes; else a ValueError
    starting with `where` and listing each problem."""
    found = problems(names, num_classes)
    if found:
        raise ValueError(f"{where}: not usable as the model's class names ({len(found)} problem(s)); expected "
                         f"{EXPECTED}:" + problem_lines(found))
    return tuple(names)


def stored(path: str | Path, meta: Mapping[str, str], task: str, config: dict) -> tuple[str, ...] | None:
    """The class names a checkpoint's metadata `meta` (its `task` and `config` already checked) holds, or None
    without the field; a `CheckpointFormatError` naming `path`, the field and what was expected otherwise."""
    text = meta.get(METADATA_KEY)
    if text is None:
        return None
    where = f"{path}: metadata field {METADATA_KEY!r}"
    if task not in TASKS_WITH_CLASSES:
        raise CheckpointFormatError(f"{where}: a {task} model has no classes to name; only "
                                    f"{' and '.join(TASKS_WITH_CLASSES)} checkpoints hold class names.")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FIELD_BYTES:  # refused before it is parsed
        raise CheckpointFormatError(f"{where}: {size:,} bytes; expected {EXPECTED}.")
    try:
        names = loads_strict(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: a deeply nested list
        raise CheckpointFormatError(f"{where}: not valid JSON ({printable(str(exc), 100)}); expected "
                                    f"{EXPECTED}.") from None
    found = problems(names, config["num_classes"])
    if found:
        raise CheckpointFormatError(f"{where} does not name the model's classes ({len(found)} problem(s)); "
                                    f"expected {EXPECTED}:" + problem_lines(found))
    return tuple(names)

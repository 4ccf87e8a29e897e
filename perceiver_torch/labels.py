"""Class names shipped as package data (one name per line, in the order of a model's logits)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources


def packaged_labels(filename: str, expected: int) -> tuple[str, ...]:
    """The names in perceiver_torch/data/<filename>; fails loudly if the file does not hold `expected` names."""
    text = resources.files("perceiver_torch").joinpath(f"data/{filename}").read_text()
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != expected:
        raise RuntimeError(f"{filename} holds {len(labels)} names; expected {expected}.")
    return labels


def names_or_indices(names: Callable[[], tuple[str, ...]], released: int, num_classes: int,
                     own: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A model's class names in logit order: its `own` (`class_names`) if it has them, else the released dataset's
    `names()` when it has their `released` count, else the class indices as strings (a model trained on other
    classes)."""
    if own is not None:
        return own
    return names() if num_classes == released else tuple(str(i) for i in range(num_classes))

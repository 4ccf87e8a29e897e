"""Class names shipped as package data (one name per line, in the order of a model's logits)."""

from __future__ import annotations

from importlib import resources


def packaged_labels(filename: str, expected: int) -> tuple[str, ...]:
    """The names in perceiver_torch/data/<filename>; fails loudly if the file does not hold `expected` names."""
    text = resources.files("perceiver_torch").joinpath(f"data/{filename}").read_text()
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != expected:
        raise RuntimeError(f"{filename} holds {len(labels)} names; expected {expected}.")
    return labels

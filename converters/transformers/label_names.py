"""The class names an exported config.json's id2label/label2id carry, where the model has a released label set."""

from __future__ import annotations

import logging

from perceiver_torch.imagenet_preprocessing import imagenet_labels
from perceiver_torch.message_text import printable
from perceiver_torch.models.video_autoencoding import kinetics700_labels

log = logging.getLogger(__name__)

# task -> (the class count of the released label set, its names in logit order)
RELEASED = {"imagenet": (1000, imagenet_labels), "video_autoencoding": (700, kinetics700_labels)}


def released_labels(task: str, config: dict) -> tuple[str, ...] | None:
    """The released names (ImageNet's 1000, Kinetics-700's) when `config` has that many classes, else None."""
    if task not in RELEASED:
        return None
    count, names = RELEASED[task]
    return names() if config.get("num_classes") == count else None


def label_fields(task: str, config: dict) -> dict:
    """PerceiverConfig's id2label and label2id for the released names; {} (transformers' LABEL_i) otherwise.

    A name used twice (ImageNet's two "crane" classes, the bird and the machine) maps back to its first index.
    """
    names = released_labels(task, config)
    if names is None:
        return {}
    label2id: dict[str, int] = {}
    for index, name in enumerate(names):
        label2id.setdefault(name, index)
    return {"id2label": dict(enumerate(names)), "label2id": label2id}


def warn_if_names_dropped(task: str, config: dict, hf: dict, source: str) -> None:
    """Log a warning when a transformers config.json names its classes (id2label other than transformers' LABEL_i
    and the released names): our checkpoints keep no class names, so the imported model gives indices instead."""
    id2label = hf.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return
    named = {str(k): str(v) for k, v in id2label.items()}
    if all(v == f"LABEL_{k}" for k, v in named.items()):
        return
    released = released_labels(task, config)
    if released is not None and all(k.isdigit() and int(k) < len(released) and released[int(k)] == v
                                    for k, v in named.items()):
        return
    shown = ", ".join(printable(f"{k}: {v}", 60) for k, v in list(named.items())[:3])
    log.warning("%s: its id2label names its %d classes (%s%s); a perceiver-torch checkpoint keeps no class names "
                "but the released ones, so the imported model gives class indices (keep the names beside it)", source,
                len(named), shown, ", ..." if len(named) > 3 else "")

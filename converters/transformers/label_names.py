"""The class names an exported config.json's id2label/label2id carry, where the model has a released label set."""

from __future__ import annotations

from perceiver_torch.imagenet_preprocessing import imagenet_labels
from perceiver_torch.models.video_autoencoding import kinetics700_labels

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

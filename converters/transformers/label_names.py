"""Class names between transformers' id2label/label2id and our checkpoints: kept on import, written on export."""

from __future__ import annotations

import logging
from collections import Counter

from perceiver_torch import class_names as names_field
from perceiver_torch.class_names import TASKS_WITH_CLASSES
from perceiver_torch.imagenet_preprocessing import imagenet_labels
from perceiver_torch.message_text import MAX_LINES, printable
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


def label_fields(task: str, config: dict, class_names: tuple[str, ...] | None = None) -> dict:
    """PerceiverConfig's id2label and label2id for the model's own `class_names`, else for the released names;
    {} (transformers' LABEL_i) otherwise.

    A name used twice (ImageNet's two "crane" classes, the bird and the machine) maps back to its first index:
    label2id has one entry a name.
    """
    names = class_names if class_names is not None else released_labels(task, config)
    if names is None:
        return {}
    label2id: dict[str, int] = {}
    for index, name in enumerate(names):
        label2id.setdefault(name, index)
    return {"id2label": dict(enumerate(names)), "label2id": label2id}


def repeated_names(names: tuple[str, ...]) -> list[str]:
    """The names in `names` given to more than one class, in order of first use."""
    counts = Counter(names)
    return [name for name in counts if counts[name] > 1]


def imported_class_names(task: str, config: dict, hf: dict, source: str) -> tuple[str, ...] | None:
    """The class names a transformers config.json's id2label gives the classes of our `config` (task `task`), to
    keep in the imported checkpoint; None where there are none to keep: no id2label, transformers' default
    LABEL_i, or the released names, which the model gives without them. An id2label that names the classes but
    not as a checkpoint can keep them (not one string for each class 0 to n-1, or a name a load would refuse) is
    dropped with a warning naming `source` and each problem: the names are the head's labels, the weights are
    what the import is for."""
    id2label = hf.get("id2label")
    if task not in TASKS_WITH_CLASSES or not isinstance(id2label, dict) or not id2label:
        return None
    if all(value == f"LABEL_{key}" for key, value in id2label.items()):
        return None
    count = config["num_classes"]
    keys = [str(index) for index in range(count)]
    if sorted(id2label) != sorted(keys):  # JSON object keys: the class indices as text
        shown = ", ".join(printable(str(key), 20) for key in list(id2label)[:5])
        problems = [f"found {len(id2label)} keys ({shown}{', ...' if len(id2label) > 5 else ''}); expected one for "
                    f"each of the {count} classes, 0 to {count - 1}"]
    else:
        names = [id2label[key] for key in keys]
        if names == list(released_labels(task, config) or ()):
            return None
        problems = names_field.problems(names, count)
        if not problems:
            return tuple(names)
    shown = problems[:MAX_LINES] + ([f"... and {len(problems) - MAX_LINES} more"] if len(problems) > MAX_LINES else [])
    log.warning("%s: id2label names the classes in a form a checkpoint cannot keep (%s); imported without class "
                "names (labels give the class indices; set model.class_names and save_model to name them)",
                source, "; ".join(shown))
    return None

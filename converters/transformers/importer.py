"""transformers Perceiver checkpoint -> our converted .safetensors (same format as `converters.convert`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from perceiver_torch import class_names as names_field
from perceiver_torch.serialization import save_checkpoint
from perceiver_torch.zoo.release_provenance import DEEPMIND_ORG

from ..convert import CONVERTER_VERSION, check_output, check_replaceable, target_shapes
from ..rules import strict_merge
from ..tasks import task_spec
from .config_map import from_hf
from .label_names import imported_class_names, released_labels
from .source import Source, read_source
from .tables import hf_only, import_rules, torch_key

log = logging.getLogger(__name__)


def import_state(task: str, config: dict, hf_state: dict, context: str = "") -> dict[str, np.ndarray]:
    """transformers' state dict (arrays or tensors) -> ours, strictly, for our `config`."""
    arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in hf_state.items()}
    return strict_merge(arrays, target_shapes(task, config), import_rules(task, config), hf_only(task, config),
                        context=context or f"{task} from transformers", key=torch_key)


def convert_source(task: str, source: Source) -> tuple[str, dict, dict[str, np.ndarray], tuple[str, ...] | None]:
    """(architecture, our config, our state dict as arrays, the class names id2label gives, if any to keep),
    strictly, from a read checkpoint."""
    task_spec(task)  # an unknown task fails here with the same message as `convert`
    config_name = str(source.config_path or "config.json")
    architecture, config = from_hf(task, source.config, config_name)
    names = imported_class_names(task, config, source.config, config_name)
    arrays = import_state(task, config, source.tensors, f"{task} from transformers {architecture}")
    return architecture, config, arrays, names


def from_transformers(task: str, source: str | os.PathLike, output_path: str | os.PathLike,
                      revision: str | None = None, *, overwrite: bool = True, token: str | bool | None = None) -> Path:
    """Convert a transformers Perceiver checkpoint (directory or Hub repo id) into `output_path`.

    Nothing is written unless the config and every tensor convert; the file carries the task,
    our full config, the source's sha256, (for a Hub repo) its repo id and commit, and the class
    names of id2label where they are neither transformers' LABEL_i nor the released names. An
    existing `output_path` is replaced unless `overwrite` is False (never one of the source's files).
    """
    read = read_source(source, revision, token)
    for path, what in ((read.weights_path, "the source's weights"), (read.config_path, "the source's config")):
        if path is not None:  # writing over either would destroy the source
            check_output(path, output_path, what)
    check_replaceable(Path(output_path), overwrite)
    architecture, config, arrays, names = convert_source(task, read)
    if names is not None and str(read.repo_id or "").lower().startswith(DEEPMIND_ORG) and released_labels(task, config):
        # DeepMind's repos hold the release, whose classes are the released ones (the colab's names) however their
        # id2label spells them: kept, they would make this route's file differ from the Haiku route's.
        log.info("%s: %s holds DeepMind's release; its id2label is not kept (the released names apply)",
                 output_path, read.repo_id)
        names = None
    state_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    metadata = {
        "source_sha256": read.sha256,
        "source_name": read.weights_path.name,
        "source_format": f"transformers:{architecture}",
        "converter_version": CONVERTER_VERSION,
    }
    if read.repo_id:
        metadata.update(source_repo=read.repo_id, source_revision=read.revision)
    if names is not None:  # a head fine-tuned in transformers with its own id2label
        metadata[names_field.METADATA_KEY] = names_field.encode(names)
    return save_checkpoint(state_dict, output_path, task, config, metadata)

"""What a file without perceiver-torch metadata is, so that `load_model`'s refusal says what reads it instead.

Two kinds reach `load_model` by mistake: a transformers Perceiver (``save_pretrained``'s directory: ``config.json``
beside ``model.safetensors``, tensor names under ``perceiver.``), which ``perceiver-convert TASK --from-transformers
DIR_OR_REPO`` converts; and a bare state dict (``safetensors.torch.save_file(model.state_dict(), ...)``), which holds
no task or config to rebuild the model from: the model is built first and takes the weights with
``load_state_dict``, and ``save_model`` writes the file ``load_model`` reads.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

from .message_text import printable
from .registry import TASKS

# transformers' PerceiverFor* classes (config.json's "architectures") and the task perceiver-convert converts
# each to; all of them keep the Perceiver under the base-model prefix "perceiver.".
TRANSFORMERS_TASKS = {
    "PerceiverForMaskedLM": "language",
    "PerceiverForImageClassificationLearned": "imagenet",
    "PerceiverForImageClassificationFourier": "imagenet",
    "PerceiverForImageClassificationConvProcessing": "imagenet",
    "PerceiverForOpticalFlow": "optical_flow",
    "PerceiverForMultimodalAutoencoding": "video_autoencoding",
}
TRANSFORMERS_PREFIX = "perceiver."
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1 << 20  # a transformers Perceiver config.json is a few KB; a bigger one is not read
SHOWN_KEYS = 8  # metadata keys named in a refusal


def transformers_config(folder: Path) -> dict | None:
    """`folder`'s config.json when it is a transformers Perceiver's (model_type 'perceiver' or a PerceiverFor*
    architecture), else None; never more than MAX_CONFIG_BYTES read, and a file that cannot be read is None."""
    try:
        # Non-blocking: a FIFO named config.json with no writer would otherwise hang the refusal forever.
        with open(os.open(folder / CONFIG_FILE, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            raw = f.read(MAX_CONFIG_BYTES + 1)
        config = json.loads(raw) if len(raw) <= MAX_CONFIG_BYTES else None
    except (OSError, ValueError, RecursionError):  # absent, a directory, unreadable, not JSON
        return None
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures")
    named = isinstance(architectures, list) and any(a in TRANSFORMERS_TASKS for a in architectures if
                                                    isinstance(a, str))
    return config if named or config.get("model_type") == "perceiver" else None


def convert_command(source: str, config: dict | None) -> str:
    """The perceiver-convert command line converting the transformers model `source` (a directory, or a repo id
    with its --revision), its task taken from `config`'s architectures where it names one."""
    architectures = (config or {}).get("architectures")
    tasks = {TRANSFORMERS_TASKS[a] for a in architectures if isinstance(a, str) and a in TRANSFORMERS_TASKS} \
        if isinstance(architectures, list) else set()
    task = tasks.pop() if len(tasks) == 1 else "TASK"
    command = f"`perceiver-convert {task} --from-transformers {source} -o OUT.safetensors`"
    return command if task != "TASK" else f"{command} (TASK: one of {', '.join(TASKS)})"


def transformers_advice(source: str, config: dict | None) -> str:
    return (f"it is a transformers Perceiver (save_pretrained's files), which load_model does not read: convert it "
            f"with {convert_command(source, config)}, then load OUT.safetensors")


def missing_metadata(where: str | Path, metadata: dict[str, str], tensor_names, *,
                     transformers_source: str | None = None) -> str:
    """Why the checkpoint `where` (header metadata `metadata`, tensors `tensor_names`) has no usable perceiver-torch
    metadata, and what reads it instead. `transformers_source` is what ``--from-transformers`` would take for it
    (a Hub repo and its revision); for a local file it is the file's directory where that holds a transformers
    config.json."""
    keys = sorted(metadata)
    found = ", ".join(repr(printable(k, 40)) for k in keys[:SHOWN_KEYS]) + (f", ... ({len(keys)} keys)"
                                                                       if len(keys) > SHOWN_KEYS else "")
    problem = (f"{where} has no perceiver-torch metadata (expected keys format='perceiver-torch', task, config; "
               f"found [{found}])")
    folder = where.parent if isinstance(where, Path) else None
    config = None if folder is None else transformers_config(folder)
    if config is not None:
        transformers_source = shlex.quote(str(folder))
    if transformers_source is not None and (config is not None or any(
            name.startswith(TRANSFORMERS_PREFIX) for name in tensor_names)):
        return f"{problem}; {transformers_advice(transformers_source, config)}."
    if any(name.startswith(TRANSFORMERS_PREFIX) for name in tensor_names):
        return (f"{problem}; its tensor names are a transformers Perceiver's: convert its save_pretrained directory "
                f"(config.json beside it) or Hub repo with {convert_command('DIR_OR_REPO', None)}.")
    if metadata.get("format") == "perceiver-torch":
        return (f"{problem}; its perceiver-torch metadata is incomplete (a damaged or hand-edited file): write it "
                "again with perceiver_torch.save_model or perceiver-convert.")
    return (f"{problem}; it looks like a bare state dict (e.g. safetensors.torch.save_file's), which holds no task "
            "or config to rebuild the model from: build the model (perceiver_torch.build_model(task, config), or "
            "create_model(name, pretrained=False)), give it the weights with "
            "model.load_state_dict(safetensors.torch.load_file(path)), and perceiver_torch.save_model(model, path) "
            "writes a file load_model reads.")


def transformers_path(path: Path) -> str | None:
    """For a path given where a checkpoint file is expected: the refusal to raise when it is a transformers
    Perceiver's save_pretrained directory or its config.json, else None."""
    if path.is_dir():
        folder, what = path, "a directory"
    elif path.name == CONFIG_FILE and path.is_file():
        folder, what = path.parent, "a config.json"
    else:
        return None
    config = transformers_config(folder)
    if config is None:
        return None
    return f"{path} is {what}, not a safetensors file; {transformers_advice(shlex.quote(str(folder)), config)}."

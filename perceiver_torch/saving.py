"""save_model: a task model's weights and config, written to the file `load_model` rebuilds it from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import class_names
from .config_schema import short_repr, validate_config
from .models.named_classes import NamedClasses
from .models.owned_config import config_changes
from .registry import TASK_MODELS
from .safetensors_io import CODES
from .serialization import (
    all_finite,
    build_on_meta,
    check_output_path,
    save_checkpoint,
    tensor_problems,
)

# Floating weights are written as float32, the dtype load_model builds in: exact from these three (every
# bfloat16 and float16 value is a float32 value); float64 would be rounded, so it is refused instead.
EXACT_IN_FLOAT32 = (torch.float32, torch.bfloat16, torch.float16)
# What load_model rebuilds the model from, and the class names it gives the model (written from `class_names`).
RESERVED_METADATA = ("format", "task", "config", class_names.METADATA_KEY)


def task_of(model: nn.Module) -> str:
    """The registered task whose model class `model` is (or derives from), else a TypeError."""
    for task, cls in TASK_MODELS.items():
        if isinstance(model, cls):
            return task
    classes = ", ".join(cls.__name__ for cls in TASK_MODELS.values())
    raise TypeError(f"save_model writes the task models ({classes}); got {type(model).__name__}. For a PerceiverIO "
                    "or any other module, save its state_dict (e.g. safetensors.torch.save_file(model.state_dict(), "
                    "path)) and rebuild it in code.")


def _checked_metadata(metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str; got {type(metadata).__name__}.")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str; key {short_repr(key)} holds a {type(value).__name__}"
                            f"{'' if isinstance(key, str) else f' (the key is a {type(key).__name__})'}.")
        try:
            key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from os.fsdecode of a non-UTF-8 name
            raise ValueError(f"metadata key {short_repr(key)}: not encodable as UTF-8 ({exc.reason}).") from None
    reserved = sorted(set(metadata) & set(RESERVED_METADATA))
    if reserved:
        raise ValueError(f"metadata keys {reserved} are written by save_model itself (from the model; class names "
                         f"from model.class_names); choose other names.")
    return dict(metadata)


class _Float32Later:
    """A bfloat16 or float16 tensor that the writer widens to float32 only when its turn comes.

    write_safetensors takes array-likes with `dtype` and `shape` and makes the array as it writes
    each one, so a reduced-precision model never holds a float32 copy of all its weights (+752 MiB
    for the released language model in bfloat16, measured).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.shape = tensor, tuple(tensor.shape)

    def __array__(self, dtype=None, copy=None):
        return self.tensor.to(device="cpu", dtype=torch.float32).numpy()


def _float32_state(model: nn.Module) -> dict:
    """The state dict with floating tensors as float32; float64 and non-finite tensors refused, all named."""
    tensors = model.state_dict()
    on_meta = [name for name, tensor in tensors.items() if tensor.is_meta]
    if on_meta:
        names = ", ".join(on_meta[:3]) + (" ..." if len(on_meta) > 3 else "")
        raise ValueError(f"{len(on_meta)} tensor(s) are on the meta device, with no values to write ({names}); "
                         "load or initialise them first.")
    state, wide, bad = {}, [], []
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        if tensor.is_floating_point():
            if tensor.dtype not in EXACT_IN_FLOAT32:
                wide.append(f"{name} ({str(tensor.dtype).removeprefix('torch.')})")
                continue
            if not all_finite(tensor):
                bad.append(name)
            if tensor.dtype != torch.float32:
                tensor = _Float32Later(tensor)
        state[name] = tensor
    if wide:
        more = f" and {len(wide) - 3} more" if len(wide) > 3 else ""
        raise ValueError(f"save_model writes float32, which would round {len(wide)} tensor(s) ({', '.join(wide[:3])}"
                         f"{more}). Cast the model first (model.float()) if that is meant.")
    if bad:
        raise ValueError(f"non-finite values (NaN or Inf) in {len(bad)} tensor(s): {', '.join(bad)}; load_model "
                         "would refuse the file.")
    return state


def save_model(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a task model to `path` (safetensors), so that `load_model(path)` gives it back; returns the path.

    The file is what `perceiver-convert` writes: the weights, and the task and config in the
    metadata (plus `metadata`, str to str, and the model's `class_names` where it has them).
    Everything `load_model` would refuse, or would rebuild as another model, is refused here
    first, naming what is wrong, and nothing is written: a model that its own config no longer
    describes (a replaced head: both sides of each mismatch are listed), a `model.config` edited
    after the build (each changed key), float64, non-finite or meta-device weights, metadata a
    reader would refuse, an unusable path. Weights held in bfloat16 or float16 are written as float32 (exactly), so
    `load_model(path, dtype=...)` gives the same tensors back, bit for bit. A subclass of a task
    model is saved as, and loads back as, its task's model; a `torch.compile` wrapper as the
    model it wraps. The write is atomic: a failure leaves nothing at `path`.
    """
    inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper holds the model it compiled there
    if isinstance(inner, nn.Module) and not isinstance(model, tuple(TASK_MODELS.values())):
        model = inner
    task = task_of(model)
    extra = _checked_metadata(metadata)
    path = check_output_path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__}.config must be the dict the model was built from; got "
                        f"{type(config).__name__}.")
    source = f"{type(model).__name__}.config"
    changed = config_changes(model)
    if changed:  # settings that change no shape (blocks, heads, residuals) would rebuild another model
        raise ValueError(f"{source} was changed after the model was built ({len(changed)} change(s)); its modules "
                         "and weights follow the config it was built with, and load_model would rebuild a "
                         "different model:\n  " + "\n  ".join(changed))
    validate_config(task, config, source=source)  # a ConfigError listing each problem
    rebuilt = build_on_meta(task, config, source=source)
    state = _float32_state(model)
    written = {name: (tuple(t.shape), "F32" if isinstance(t, _Float32Later) else CODES.get(t.dtype, str(t.dtype)))
               for name, t in state.items()}
    problems = tensor_problems(rebuilt, written)
    if problems:
        raise ValueError(f"the model's weights do not match the {task} model its config builds "
                         f"({len(problems)} problem(s)); load_model could not rebuild it:\n  "
                         + "\n  ".join(problems))
    # Only the models with classes to name: an attribute of that name on another model is not ours to write.
    names = model.class_names if isinstance(model, NamedClasses) else None
    if names is not None:  # checked against the config when set; save_checkpoint checks them again as a load would
        extra[class_names.METADATA_KEY] = class_names.encode(names)
    return save_checkpoint(state, path, task, config, extra, consume=True)

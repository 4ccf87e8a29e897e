"""The producer side's one registration point: every task's pieces, found from one place.

A task is the runtime's model class (`perceiver_torch.registry.TASK_MODELS`) plus, here, its
conversion table (`converters/tables/<task>.py`), the runner that feeds it upstream-layout
inputs (`converters/upstream_io.py`) and the JAX reference builder that mirrors the upstream
colab (`converters/jax_reference/tasks.py`, resolved on use: JAX is an optional extra).
Adding a task is one model file, one table and one test configuration, each registered once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from torch import nn

from perceiver_torch.registry import TASKS as RUNTIME_TASKS
from perceiver_torch.registry import UnsupportedTaskError, model_class

from . import upstream_io
from .tables import imagenet, language, optical_flow, video_autoencoding

JAX_BUILDERS_MODULE = "converters.jax_reference.tasks"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    table: ModuleType  # rules(config) -> [ModuleRule], IGNORED
    run_upstream_layout: Callable  # (model, inputs, device, dtype) -> outputs, upstream layout
    jax_builder: str  # function name in converters.jax_reference.tasks
    stateful_release: bool  # the release pickle is {"params", "state"} (batch-norm statistics)

    @property
    def model_class(self) -> type[nn.Module]:
        return model_class(self.name)

    def jax_build_fn(self) -> Callable:
        """The Haiku builder (imports JAX and Haiku)."""
        return getattr(importlib.import_module(JAX_BUILDERS_MODULE), self.jax_builder)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec for spec in (
        TaskSpec("language", language, upstream_io.language, "language", stateful_release=False),
        TaskSpec("imagenet", imagenet, upstream_io.imagenet, "imagenet", stateful_release=True),
        TaskSpec("optical_flow", optical_flow, upstream_io.optical_flow, "optical_flow", stateful_release=False),
        TaskSpec("video_autoencoding", video_autoencoding, upstream_io.video_autoencoding, "video_autoencoding",
                 stateful_release=False),
    )
}

if tuple(TASKS) != RUNTIME_TASKS:  # pragma: no cover - a registration was missed on one side
    raise ImportError(f"converters.tasks registers {tuple(TASKS)} but the runtime registers {RUNTIME_TASKS}")


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise UnsupportedTaskError(f"unknown task {task!r}; expected one of {list(TASKS)}.")
    return TASKS[task]


@torch.no_grad()
def run_upstream_layout(task: str, model: nn.Module, inputs: dict[str, np.ndarray],
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Outputs of `model` (already on `device` in `dtype`) for upstream-layout `inputs`, upstream-layout."""
    return task_spec(task).run_upstream_layout(model, inputs, torch.device(device), dtype)

"""torch.compile with Inductor's weight freezing, set up so that it stays frozen: the CPU inference path."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def compile_frozen(model: nn.Module, *, dynamic: bool | None = False, fullgraph: bool = False,
                   options: Mapping[str, object] | None = None) -> Callable:
    """`model` (put in eval mode) compiled for inference with weight freezing: call it as the model.

    The weights are folded into the compiled graph as constants, prepacked for oneDNN's matmuls with biases
    and pointwise work fused into them. Do not change the model's weights afterwards: some are folded copies
    and some are read live, so the compiled model would compute with a mix of old and new weights; compile
    it again instead. Every call runs under `torch.no_grad` with Inductor's `freezing` set, so a
    recompilation (a new input shape) is frozen too; the `freezing` option also makes the backend distinct
    from a plain `torch.compile` of the same model, whose unfrozen graph Dynamo would otherwise hand back.
    Both were needed (measured, torch 2.13; README, "torch.compile and export"). The first call compiles
    (17-45 s at released size on 2 CPU cores: README, "Speed"). `dynamic` and `fullgraph` are torch.compile's.
    Freezing pays in bf16 everywhere measured, and in fp32 on CPUs with AMX; on an AMD EPYC without it plain
    `torch.compile` was the faster fp32 path (README, "Speed"). `options`: further Inductor options
    (torch.compile's), e.g. `{"max_autotune": True}`; `freezing` is this function's own and cannot be among them.
    """
    where = "compile_frozen"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module (its weights are what freezing folds in); got "
                        f"{type(model).__name__}.")
    if (dynamic is not None and not isinstance(dynamic, bool)) or not isinstance(fullgraph, bool):
        raise TypeError(f"{where}: dynamic must be True, False or None and fullgraph True or False; got "
                        f"dynamic={dynamic!r}, fullgraph={fullgraph!r}.")
    if options is not None and (not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options)):
        raise TypeError(f"{where}: options must be a mapping of Inductor option names to values; got {options!r}.")
    options = dict(options or {})
    if "freezing" in options:
        raise ValueError("compile_frozen: options must not set 'freezing' (compile_frozen always freezes; use "
                         "torch.compile for an unfrozen model).")
    # Imported here, not at the top: Inductor takes ~1.2 s to import, which `import perceiver_torch` need not pay
    # (torch.compile imports it anyway once called).
    import torch._inductor.config as inductor_config

    # Any option value Inductor's config takes (torch.compile's annotation lists str, int, bool and callables).
    inductor_options: dict[str, Any] = {**options, "freezing": True}
    compiled = torch.compile(model.eval(), dynamic=dynamic, fullgraph=fullgraph, options=inductor_options)

    @functools.wraps(model.forward)
    def frozen(*args, **kwargs):
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return frozen

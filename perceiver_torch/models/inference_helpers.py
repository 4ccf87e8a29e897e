"""The task models' inference helpers (`classify`, `fill_masked`, `estimate_flow`, `autoencode`) run as inference.

A helper called on a model in train mode (a check in the middle of training, or a model straight from
`build_model`) would otherwise apply dropout and update the batch norms' running statistics with its inputs:
each call would change the model, and an image's result would depend on the batch it came in.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar, cast

import torch
from torch import nn

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode inside the block; every submodule's own train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def inference_helper(method: Callable[P, R]) -> Callable[P, R]:
    """Run a model method without autograd and with the model (its first argument) in eval mode."""
    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.no_grad(), evaluating(cast(nn.Module, args[0])):
            return method(*args, **kwargs)
    return run

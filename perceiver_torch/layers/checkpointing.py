"""Activation checkpointing of the attention blocks: activations recomputed in backward instead of kept."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointableBlock(nn.Module):
    """A block whose `block_forward` runs under `torch.utils.checkpoint` while `grad_checkpointing` is set.

    Set through `Perceiver.set_grad_checkpointing`. Only while autograd records (training, or gradients of
    the inputs): under `torch.no_grad`, in export and in compiled inference the block runs as it is.
    """

    grad_checkpointing = False

    def block_forward(self, *args, **kwargs):
        raise NotImplementedError

    def forward(self, *args, **kwargs):
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant: inputs need not require grad, parameters are seen where they are used, dropout's
            # random state is replayed (the same masks), and torch.compile traces it.
            return checkpoint(self.block_forward, *args, use_reentrant=False, **kwargs)
        return self.block_forward(*args, **kwargs)


def set_grad_checkpointing(module: nn.Module, enable: bool) -> int:
    """Set `grad_checkpointing` on every checkpointable block in `module`: how many there are."""
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be a bool; got {type(enable).__name__} {enable!r}.")
    blocks = [block for block in module.modules() if isinstance(block, CheckpointableBlock)]
    for block in blocks:
        block.grad_checkpointing = enable
    return len(blocks)

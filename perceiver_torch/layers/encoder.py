"""The Perceiver encoder: latents cross-attend to the inputs, then self-attend."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CrossAttention, SelfAttention
from .position_encoding import TrainablePositionEncoding
from .precision import autocast_weights, residual_stream, sub_weights


class SelfAttentionStack(nn.ModuleList):
    """The latent self-attention layers (an `nn.ModuleList`: state-dict names `N.`), applied `repeats` times."""

    def forward(self, z: torch.Tensor, repeats: int, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """`weights`: cast weights of the layers by state-dict name (`autocast_weights`), used instead of theirs."""
        # Given to this package's layers only (one a user swapped in may not take them).
        per_layer = [sub_weights(weights, str(i)) if isinstance(layer, SelfAttention) else None
                     for i, layer in enumerate(self)]
        for _ in range(repeats):
            for layer, layer_weights in zip(self, per_layer, strict=True):
                z = layer(z) if layer_weights is None else layer(z, weights=layer_weights)
        return z


class PerceiverEncoder(nn.Module):
    """Upstream `PerceiverEncoder`, with the input width given explicitly.

    The `num_self_attends_per_block` self-attention layers form one block that
    is applied `num_blocks` times with shared weights.
    """

    def __init__(
        self,
        input_channels: int,
        num_self_attends_per_block: int = 6,
        num_blocks: int = 8,
        z_index_dim: int = 512,
        num_z_channels: int = 1024,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        num_cross_attend_heads: int = 1,
        num_self_attend_heads: int = 8,
        cross_attend_widening_factor: int = 1,
        self_attend_widening_factor: int = 1,
        dropout_prob: float = 0.0,
        z_pos_enc_init_scale: float = 0.02,
        cross_attention_shape_for_attn: str = "kv",
        use_query_residual: bool = True,
    ):
        super().__init__()
        for heads, what in ((num_self_attend_heads, "num_self_attend_heads"),
                            (num_cross_attend_heads, "num_cross_attend_heads")):
            if num_z_channels % heads:
                raise ValueError(f"num_z_channels ({num_z_channels}) must be divisible by {what} ({heads}).")
        self.num_blocks = num_blocks
        self.latents = TrainablePositionEncoding(z_index_dim, num_z_channels, init_scale=z_pos_enc_init_scale)
        self.cross_attend = CrossAttention(
            num_z_channels, input_channels, num_heads=num_cross_attend_heads,
            widening_factor=cross_attend_widening_factor, shape_for_attn=cross_attention_shape_for_attn,
            use_query_residual=use_query_residual, qk_channels=qk_channels, v_channels=v_channels,
            dropout_prob=dropout_prob,
        )
        self.self_attends = SelfAttentionStack(
            SelfAttention(
                num_z_channels, num_heads=num_self_attend_heads, widening_factor=self_attend_widening_factor,
                qk_channels=qk_channels, v_channels=v_channels, dropout_prob=dropout_prob,
            )
            for _ in range(num_self_attends_per_block)
        )

    def forward(self, inputs: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
        """inputs [B, N, C_in], input_mask [B, N] (true/1 = valid) -> latents [B, Z, C_z]."""
        # The latents start the residual stream (float32 in a reduced-precision model, see precision.py).
        if input_mask is not None and tuple(input_mask.shape) != tuple(inputs.shape[:2]):
            raise ValueError(f"input_mask must be [B, N] = {list(inputs.shape[:2])}, one flag per input position "
                             f"(after preprocessing); got {list(input_mask.shape)}.")
        z = residual_stream(self.latents(inputs.shape[0]))
        # A key mask [B, 1, N]: every latent sees the same inputs (upstream's all-ones query mask).
        attention_mask = None if input_mask is None else input_mask.bool()[:, None, :]
        z = self.cross_attend(z, inputs, attention_mask)
        # Under autocast, weights shared by the repeated blocks are cast once per forward, not at each use
        # (ImageNet: 8 uses; the same casts, so the same outputs), and passed down as arguments: the module
        # is never modified, so threads can share it. Not for checkpointed layers, which recompute in
        # backward: they keep autocast's own casts.
        checkpointed = any(layer.grad_checkpointing for layer in self.self_attends)
        cast = autocast_weights(self.self_attends) if self.num_blocks > 1 and not checkpointed else None
        return self.self_attends(z, self.num_blocks, cast or None)

"""Transformer blocks: MLP, self-attention and cross-attention, pre-norm as upstream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .checkpointing import CheckpointableBlock
from .precision import LayerNorm, linear_with, residual_stream, sub_weights

# Haiku's hk.LayerNorm default.
LAYER_NORM_EPS = 1e-5


class MLP(nn.Module):
    """Dense -> tanh-approximate GELU (jax.nn.gelu's default) -> dense."""

    def __init__(self, dim: int, widening_factor: int = 4, dropout_prob: float = 0.0):
        super().__init__()
        self.dense1 = nn.Linear(dim, widening_factor * dim)
        self.dense2 = nn.Linear(widening_factor * dim, dim)
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """`weights`: cast weights by state-dict name, used instead of the layers' own (`autocast_weights`)."""
        hidden = F.gelu(linear_with(self.dense1, x, weights, "dense1"), approximate="tanh")
        return self.dropout(linear_with(self.dense2, hidden, weights, "dense2"))


class SelfAttention(CheckpointableBlock):
    """x + attn(LN(x)); then x + MLP(LN(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        widening_factor: int = 4,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        dropout_prob: float = 0.0,
        dropout_attn_prob: float = 0.0,
    ):
        super().__init__()
        self.norm = LayerNorm(dim, eps=LAYER_NORM_EPS)
        # Upstream leaves output_channels to default to v_channels; the
        # residual then requires it to equal the latent width.
        self.attention = MultiHeadAttention(
            dim, dim, num_heads=num_heads, qk_channels=qk_channels,
            v_channels=v_channels, dropout_prob=dropout_attn_prob,
        )
        if self.attention.output.out_features != dim:
            raise ValueError(
                f"self-attention v_channels ({v_channels}) must equal the latent width ({dim}) "
                "for the residual connection, as upstream."
            )
        self.dropout = nn.Dropout(dropout_prob)
        self.mlp_norm = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(dim, widening_factor, dropout_prob)

    def block_forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """`weights`: cast weights by state-dict name, used instead of the layers' own (`autocast_weights`)."""
        # Given to this package's layers only (one a user swapped in may not take them).
        attention_weights = sub_weights(weights, "attention") if isinstance(self.attention, MultiHeadAttention) \
            else None
        mlp_weights = sub_weights(weights, "mlp") if isinstance(self.mlp, MLP) else None
        x = residual_stream(x)
        normed = self.norm(x)
        attended = self.attention(normed, normed, attention_mask) if attention_weights is None \
            else self.attention(normed, normed, attention_mask, weights=attention_weights)
        x = x + self.dropout(attended)
        normed = self.mlp_norm(x)
        return x + (self.mlp(normed) if mlp_weights is None else self.mlp(normed, weights=mlp_weights))


class CrossAttention(CheckpointableBlock):
    """Queries attend to key/values; optional query residual; then MLP.

    `shape_for_attn` picks the default qk width: the key/value input's ('kv')
    or the query's ('q'). The output always has the query's width.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 8,
        widening_factor: int = 1,
        shape_for_attn: str = "kv",
        use_query_residual: bool = True,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        dropout_prob: float = 0.0,
        dropout_attn_prob: float = 0.0,
    ):
        super().__init__()
        if shape_for_attn not in ("q", "kv"):
            raise ValueError(f"Unknown value {shape_for_attn!r} for shape_for_attn; expected 'q' or 'kv'.")
        if qk_channels is None:
            qk_channels = kv_dim if shape_for_attn == "kv" else q_dim
        self.use_query_residual = use_query_residual
        self.query_norm = LayerNorm(q_dim, eps=LAYER_NORM_EPS)
        self.kv_norm = LayerNorm(kv_dim, eps=LAYER_NORM_EPS)
        self.attention = MultiHeadAttention(
            q_dim, kv_dim, num_heads=num_heads, qk_channels=qk_channels,
            v_channels=v_channels, output_channels=q_dim, dropout_prob=dropout_attn_prob,
        )
        self.dropout = nn.Dropout(dropout_prob)
        self.mlp_norm = LayerNorm(q_dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(q_dim, widening_factor, dropout_prob)

    def block_forward(
        self,
        inputs_q: torch.Tensor,
        inputs_kv: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.dropout(
            self.attention(self.query_norm(inputs_q), self.kv_norm(inputs_kv), attention_mask)
        )
        # Widen the query before the sum: after a cast, query + attended in bfloat16 loses the query's digits.
        x = residual_stream(inputs_q) + attended if self.use_query_residual else residual_stream(attended)
        return x + self.mlp(self.mlp_norm(x))

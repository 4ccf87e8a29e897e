"""Multi-head attention with upstream Perceiver IO semantics.

Upstream (`perceiver.attend`) *replaces* masked logits with -1e30 and then
zeroes every output row whose mask is entirely false (a fully masked softmax is
uniform, which would leak values). Adding -1e30 is the same operation in
float32 and float64 (the logits vanish in the rounding), so the masked path
runs through `F.scaled_dot_product_attention` with an additive mask and the
zeroing is done afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Upstream's "large_k": 1e4 in float16, 1e30 otherwise.
_MASKED_LOGIT = {torch.float16: -1e4}


def make_cross_attention_mask(query_mask: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask [B, Tq, Tkv], true where query i may attend to key j."""
    return query_mask.bool()[:, :, None] & kv_mask.bool()[:, None, :]


class MultiHeadAttention(nn.Module):
    """Separate query/key/value/output projections around SDPA.

    Channel defaults follow upstream: qk_channels defaults to the query input
    width, v_channels to qk_channels, output_channels to v_channels.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        output_channels: int | None = None,
        dropout_prob: float = 0.0,
        with_final_bias: bool = True,
    ):
        super().__init__()
        qk_channels = q_dim if qk_channels is None else qk_channels
        v_channels = qk_channels if v_channels is None else v_channels
        output_channels = v_channels if output_channels is None else output_channels
        if qk_channels % num_heads:
            raise ValueError(f"qk_channels ({qk_channels}) must be divisible by num_heads ({num_heads}).")
        if v_channels % num_heads:
            raise ValueError(f"v_channels ({v_channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.dropout_prob = dropout_prob
        self.query = nn.Linear(q_dim, qk_channels)
        self.key = nn.Linear(kv_dim, qk_channels)
        self.value = nn.Linear(kv_dim, v_channels)
        self.output = nn.Linear(v_channels, output_channels, bias=with_final_bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        inputs_q: torch.Tensor,
        inputs_kv: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self._split_heads(self.query(inputs_q))
        k = self._split_heads(self.key(inputs_kv))
        v = self._split_heads(self.value(inputs_kv))
        additive_mask = None
        if attention_mask is not None:
            fill = _MASKED_LOGIT.get(q.dtype, -1e30)
            additive_mask = torch.zeros(attention_mask.shape, dtype=q.dtype, device=q.device)
            additive_mask = additive_mask.masked_fill(~attention_mask, fill)[:, None]
        dropout = self.dropout_prob if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask, dropout_p=dropout)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, -1)
        if attention_mask is not None:
            fully_masked = ~attention_mask.any(dim=-1, keepdim=True)
            out = out.masked_fill(fully_masked, 0.0)
        return self.output(out)

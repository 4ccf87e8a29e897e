"""Multi-head attention with upstream Perceiver IO semantics.

Upstream (`perceiver.attend`) *replaces* masked logits with -1e30 (1e4 in
float16) and then zeroes every output row whose mask is entirely false (a fully
masked softmax is uniform, which would leak values). A boolean SDPA mask gives
masked keys exactly zero weight, as the -1e30 replacement does in every dtype,
without a fill constant that would overflow float16; the zeroing is done
afterwards.

Masks are passed in the smallest broadcastable shape, never materialised at
[B, Tq, Tkv]: the encoder's input mask is a key mask [B, 1, Tkv], the
decoder's query mask [B, Tq, 1]. A query-only mask needs no SDPA mask at all
(each row is either fully valid or fully masked, and masked rows are zeroed),
so the decoder runs unmasked SDPA, which CUDA's flash kernel can take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import ISLANDS, REDUCED, autocast_available, autocast_off, linear_with


def make_cross_attention_mask(query_mask: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask [B, Tq, Tkv], true where query i may attend to key j.

    For custom masks; the encoder and decoder pass the broadcastable key-only
    ([B, 1, Tkv]) or query-only ([B, Tq, 1]) masks instead.
    """
    return query_mask.bool()[:, :, None] & kv_mask.bool()[:, None, :]


# In bfloat16 / float16, zero-pad the narrower of the query/key and value head widths to the wider one,
# so that SDPA can take its fused kernels (CPU flash, CUDA flash need equal widths; otherwise it falls back
# to the unfused math path: the [B, H, Tq, Tkv] logits materialised, several passes over them, a copy of
# the output). Zeros add nothing to q.k and the padded value columns are sliced off: the same attention.
# Measured on the released language model's attentions (q/k heads 32 wide, v heads 160 and 96; README,
# "Attention speed"): bfloat16 CPU time x0.64 to x1.01, float32 x0.93 to x1.08, so float32 and float64
# are not padded (on the CPU they take `_explicit_attention` below; CUDA's memory-efficient kernel takes
# unequal widths in float32).
PAD_HEAD_DIMS = True

# On the CPU, float32/float64 heads of unequal widths leave SDPA its unfused math path, which also scans
# the logits for fully masked rows (isneginf, all, where: 7% of the released language model's float32
# forward, measured). Masked rows are zeroed by MultiHeadAttention anyway, so `attend` computes such heads
# itself as upstream does: logits, times the scale, -1e30 where masked, softmax, times v (README,
# "Attention speed"). CUDA's memory-efficient kernel takes unequal widths, so CUDA keeps SDPA.
EXPLICIT_UNEQUAL_HEADS = True
MASKED_LOGIT = -1e30  # upstream's fill for masked logits in float32 and wider

# bfloat16 / float16 on the CPU with q/k heads narrower than the v heads and a small [H, Tq, Tkv] per sequence
# (the language model's 26 latent self-attentions: 8 x 256 x 256): the logits from q and k widened to float32
# (the padded flash kernel computes them in float32 too), a float32 softmax, then the probabilities in the
# model's dtype times v. The padded flash kernel multiplies the q/k padding zeros and runs its small blocks at a
# third of the bf16 GEMM rate; this path took 1.41 against 2.78 ms per latent layer at batch 1 and 10.1 against
# 18.6 ms at batch 8 (AMD EPYC, 2 cores; README, "Attention speed"). Where the per-sequence logits are larger
# (the cross-attentions, 8 x 256 x 2048) they leave the cache at batch 8 and the flash kernel wins (154 against
# 182 ms), so they stay with it. A per-sequence size keeps the choice independent of the (dynamic) batch size,
# and sizes known only at run time (a dynamic sequence length in export) keep the kernel: comparing them
# with the limit would make export guard on them and refuse the dynamic range.
NARROW_KEY_LOGITS_MAX = 1 << 20

# The two paths above materialise the [B, H, Tq, Tkv] logits. At large batches these leave the cache and the
# scale, mask and softmax passes over them run at memory speed, so eager calls take a few sequences at a time,
# keeping each group's logits within this many bytes: the same values (every sequence's matmuls and softmax are
# computed independently either way). Released language model, float32, batch 32: 0.89x the forward's time,
# batch 8 unchanged (AMD EPYC, 2 cores; benchmarks/README.md, "Attention speed"). Traced calls (compile,
# export, whose batch may be dynamic) and calls autograd records keep the single batched call.
LOGITS_GROUP_BYTES = 8 << 20


def _probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    logits = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    if mask is not None:
        logits.masked_fill_(~mask, MASKED_LOGIT)
    return torch.softmax(logits, dim=-1)


def _sequence_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     logit_bytes: int) -> int:
    """How many sequences one group takes so that its logits fit LOGITS_GROUP_BYTES; 0: all in one call."""
    batch = q.shape[0]
    if (q.dim() != 4 or not isinstance(batch, int) or batch < 2 or k.shape[0] != batch or v.shape[0] != batch
            or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return 0
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return 0  # training: matmul's out= has no backward, and the probabilities are kept for backward anyway
    if mask is not None and (mask.dim() != 4 or mask.shape[0] not in (1, batch)):
        return 0
    per_sequence = q.shape[1] * q.shape[2] * k.shape[2] * logit_bytes
    group = max(1, LOGITS_GROUP_BYTES // per_sequence)
    return group if group < batch else 0


def _in_groups(attention_fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               scale: float, group: int) -> torch.Tensor:
    """`attention_fn` on `group` sequences at a time, written into one output (no concatenation copy)."""
    out = v.new_empty(q.shape[:-1] + v.shape[-1:])
    for start in range(0, q.shape[0], group):
        rows = slice(start, start + group)
        part_mask = mask if mask is None or mask.shape[0] == 1 else mask[rows]
        attention_fn(q[rows], k[rows], v[rows], part_mask, scale, out=out[rows])
    return out


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    # Not under autocast: given out=, matmul skips autocast's cast, which would change the values.
    device = q.device.type
    autocast_on = autocast_available(device) and torch.is_autocast_enabled(device)
    group = 0 if out is not None or autocast_on else _sequence_groups(q, k, v, mask, q.element_size())
    if group:
        return _in_groups(_explicit_attention, q, k, v, mask, scale, group)
    return torch.matmul(_probabilities(q, k, mask, scale), v, out=out)


def _narrow_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                          scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Reduced-precision heads: float32 logits and softmax (autocast off: it would cast them back down), then
    the probabilities in v's dtype times v, as the fused kernels do."""
    group = 0 if out is not None else _sequence_groups(q, k, v, mask, 4)
    if group:
        return _in_groups(_narrow_key_attention, q, k, v, mask, scale, group)
    with autocast_off(q.device.type):
        probs = _probabilities(q.float(), k.float(), mask, scale)
        return torch.matmul(probs.to(v.dtype), v, out=out)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_qk)) v for [B, H, T, D] heads: [B, H, Tq, D_v].

    Through SDPA, except on the CPU: float32/float64 heads of unequal widths (`_explicit_attention`) and
    bfloat16/float16 ones with narrower q/k heads and small logits (`_narrow_key_attention`).
    """
    d_qk, d_v = q.shape[-1], v.shape[-1]
    scale = d_qk ** -0.5
    own_path = EXPLICIT_UNEQUAL_HEADS and not dropout and q.device.type == "cpu"
    if own_path and d_qk != d_v and q.dtype not in REDUCED:
        return _explicit_attention(q, k, v, mask, scale)
    n_logits = q.shape[-3] * q.shape[-2] * k.shape[-2]  # per sequence; symbolic where a dimension is dynamic
    if (own_path and d_qk < d_v and q.dtype in REDUCED and not ISLANDS.attention
            and isinstance(n_logits, int) and n_logits <= NARROW_KEY_LOGITS_MAX):
        return _narrow_key_attention(q, k, v, mask, scale)
    pad = PAD_HEAD_DIMS and q.dtype in REDUCED
    if pad and d_qk < d_v:
        q, k = F.pad(q, (0, d_v - d_qk)), F.pad(k, (0, d_v - d_qk))
    elif pad and d_v < d_qk:
        v = F.pad(v, (0, d_qk - d_v))
    if ISLANDS.attention and q.dtype in REDUCED:
        with autocast_off(q.device.type):  # autocast would cast SDPA back down
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                 dropout_p=dropout, scale=scale).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
    return out[..., :d_v] if out.shape[-1] != d_v else out


def _autocast_once(inputs_q: torch.Tensor, inputs_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The projections' inputs cast once to autocast's dtype, where autocast would cast them for each projection.

    The layer norms before attention return float32 under autocast; key and value (and in self-attention the
    query too) read the same tensor, and autocast casts it afresh for each of them. The cast is the one autocast
    makes (float32 only, to its dtype), done once: the same values, one or two fewer passes.
    """
    device = inputs_kv.device.type
    if not (autocast_available(device) and torch.is_autocast_enabled(device)):
        return inputs_q, inputs_kv
    dtype = torch.get_autocast_dtype(device)

    def cast(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype) if x.dtype == torch.float32 else x

    kv = cast(inputs_kv)
    return (kv if inputs_q is inputs_kv else cast(inputs_q)), kv


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
        weights: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """attention_mask: true/1 where query i may attend to key j, broadcastable to [B, Tq, Tkv].

        None means no mask (nothing is materialised for it). `weights`: cast weights of the projections by
        state-dict name, used instead of their own (`autocast_weights`).
        """
        inputs_q, inputs_kv = _autocast_once(inputs_q, inputs_kv)
        q = self._split_heads(linear_with(self.query, inputs_q, weights, "query"))
        k = self._split_heads(linear_with(self.key, inputs_kv, weights, "key"))
        v = self._split_heads(linear_with(self.value, inputs_kv, weights, "value"))
        sdpa_mask = None
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
            if attention_mask.shape[-1] != 1:
                sdpa_mask = attention_mask.unsqueeze(-3)  # a heads axis: [B, 1, Tq or 1, Tkv]
        out = attend(q, k, v, sdpa_mask, self.dropout_prob if self.training else 0.0)
        b, _, t, _ = out.shape
        # The fused kernels lay their output out as [B, T, H, D]: this transpose and reshape are views.
        out = out.transpose(1, 2).reshape(b, t, -1)
        if attention_mask is not None:
            fully_masked = ~attention_mask.any(dim=-1, keepdim=True)
            out = out.masked_fill(fully_masked, 0.0)
        return linear_with(self.output, out, weights, "output")

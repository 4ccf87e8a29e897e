"""Which kernel `attend` takes, and that its own path for unequal head widths computes what SDPA does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceiver_torch.layers import CrossAttention, MultiHeadAttention, SelfAttention, attention
from perceiver_torch.layers.precision import fp32_islands


def _heads(d_qk: int, d_v: int, dtype=torch.float64, tq: int = 5, tkv: int = 7):
    g = torch.Generator().manual_seed(0)
    shapes = ((2, 3, tq, d_qk), (2, 3, tkv, d_qk), (2, 3, tkv, d_v))
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) for shape in shapes)


MASKS = {
    "none": None,
    "keys": torch.tensor([[1, 1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)[:, None, None, :],
    "full": torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.3,
}


@pytest.mark.parametrize("mask", sorted(MASKS))
def test_explicit_path_equals_sdpa_for_unequal_head_widths(mask):
    """float64: the explicit path (q/k heads 4 wide, v heads 6) and SDPA's math kernel agree to rounding
    (1e-12: a few float64 ulps of outputs of order 1) wherever a query has a valid key."""
    q, k, v = _heads(4, 6)
    m = MASKS[mask]
    if m is not None:
        m = m.clone()
        m[..., 0] = True  # every query keeps one valid key: the fully masked case is zeroed by the caller
    got = attention.attend(q, k, v, m)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def _sdpa_calls(monkeypatch, q, k, v, mask=None, dropout=0.0) -> int:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    attention.attend(q, k, v, mask, dropout)
    return len(calls)


def test_kernel_choice(monkeypatch):
    """Own paths only on the CPU without dropout: float32/float64 heads of unequal widths, and reduced-precision
    heads with narrower q/k and at most NARROW_KEY_LOGITS_MAX logits a sequence; SDPA otherwise."""
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float32)) == 0
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float64), mask=MASKS["keys"]) == 0
    assert _sdpa_calls(monkeypatch, *_heads(6, 6, torch.float32)) == 1  # equal widths: SDPA's fused kernel
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16)) == 0  # reduced, narrow q/k, small logits
    assert _sdpa_calls(monkeypatch, *_heads(6, 4, torch.bfloat16)) == 1  # reduced, narrow v: padded for SDPA
    big = attention.NARROW_KEY_LOGITS_MAX // (3 * 5) + 1  # 3 heads x 5 queries x `big` keys: one over the limit
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16, tkv=big)) == 1
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16, tkv=big - 1)) == 0
    with fp32_islands(attention=True):  # the widened-SDPA diagnostic keeps SDPA
        assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16)) == 1
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float32), dropout=0.1) == 1
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16), dropout=0.1) == 1
    monkeypatch.setattr(attention, "EXPLICIT_UNEQUAL_HEADS", False)
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float32)) == 1
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16)) == 1


@pytest.mark.parametrize("mask", ["none", "keys", "full"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_narrow_key_path_errs_below_one_ulp_like_the_padded_kernel(dtype, mask, monkeypatch):
    """Reduced heads with q/k 32 wide and v 160 (the language model's): against float64 on the same rounded
    inputs, the own path and the padded SDPA kernel both err by less than one unit in the last place of the
    largest output (both round the probabilities and the output to `dtype`; measured 0.33-0.65 of it for the own
    path, 0.26-0.41 for the kernel; the model-level budgets, test_precision_budgets, check the rest), and
    autocast, which must not cast its float32 logits back down, changes nothing."""
    q, k, v = (t.to(dtype) for t in _heads(32, 160, torch.float64, tq=64, tkv=96))
    g = torch.Generator().manual_seed(2)
    m = {"none": None, "keys": torch.rand(2, 1, 1, 96, generator=g) > 0.3,
         "full": torch.rand(2, 1, 64, 96, generator=g) > 0.3}[mask]
    if m is not None:
        m[..., 0] = True  # every query keeps a valid key: the fully masked case is zeroed by the caller
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=m)
    own = attention.attend(q, k, v, m)
    with torch.autocast("cpu", dtype=dtype):
        assert torch.equal(attention.attend(q, k, v, m), own)
    monkeypatch.setattr(attention, "NARROW_KEY_LOGITS_MAX", 0)  # the padded flash kernel instead
    padded = attention.attend(q, k, v, m)
    assert own.dtype == padded.dtype == dtype
    ulp = torch.finfo(dtype).eps * want.abs().max().item()
    own_err, padded_err = ((x.double() - want).abs().max().item() for x in (own, padded))
    assert own_err < ulp and padded_err < ulp, (own_err / ulp, padded_err / ulp)


def test_upstream_fill_for_masked_logits():
    """Masked logits become upstream's -1e30 (not -inf): a row with no valid key is uniform, not NaN."""
    q, k, v = _heads(4, 6)
    none_valid = torch.zeros(2, 1, 1, 7, dtype=torch.bool)
    out = attention.attend(q, k, v, none_valid)
    torch.testing.assert_close(out, v.mean(dim=-2, keepdim=True).expand_as(out), atol=1e-12, rtol=1e-12)


def _counting_casts(monkeypatch) -> list:
    """Calls of Tensor.to made inside `_autocast_once` (the casts it does itself)."""
    casts = []
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        casts.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return casts


@pytest.mark.parametrize("shared", [True, False], ids=["self_attention", "cross_attention"])
def test_autocast_inputs_are_cast_once_and_give_the_same_output(shared, monkeypatch):
    # Under autocast the layer norms hand float32 to the projections; casting it once for key and value
    # (and the query, in self-attention) is the cast autocast makes for each: bit-identical outputs.
    torch.manual_seed(0)
    mha = attention.MultiHeadAttention(16, 16, num_heads=2).eval()
    q_in = torch.randn(2, 5, 16)
    kv_in = q_in if shared else torch.randn(2, 7, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = mha(q_in, kv_in)
        monkeypatch.setattr(attention, "_autocast_once", lambda q, kv: (q, kv))
        want = mha(q_in, kv_in)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)


def test_autocast_once_casts_each_distinct_float32_input_once_and_nothing_outside_autocast(monkeypatch):
    x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    assert attention._autocast_once(x, y) == (x, y)  # no autocast: the very same tensors
    casts = _counting_casts(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, kv = attention._autocast_once(x, x)
        assert q is kv and q.dtype == torch.bfloat16 and casts == [(2, 3, 4)]
        q, kv = attention._autocast_once(x, y)
        assert (q.dtype, kv.dtype) == (torch.bfloat16, torch.bfloat16) and len(casts) == 3
        wide = torch.randn(2, 3, 4, dtype=torch.float64)  # autocast leaves float64 alone: so do we
        assert attention._autocast_once(wide, wide)[0] is wide and len(casts) == 3


def _dropout_runs(make, *inputs):
    """Outputs of `make(0.5)` in training under seeds 1, 2 and 1 again, in evaluation under seeds 1 and 2, and of
    the same weights with dropout 0 in evaluation."""
    layer = make(0.5)
    plain = make(0.0)
    plain.load_state_dict(layer.state_dict())
    runs = {}
    with torch.no_grad():
        for mode, seed in (("train", 1), ("train", 2), ("train again", 1), ("eval", 1), ("eval", 2)):
            layer.train(mode != "eval")
            torch.manual_seed(seed)
            runs[mode, seed] = layer(*inputs)
        runs["no dropout"] = plain.eval()(*inputs)
    return runs


def _check_dropout(runs):
    train, other_seed, again = runs["train", 1], runs["train", 2], runs["train again", 1]
    evaluated = runs["eval", 1]
    # Dropping half of 7 keys' probabilities (and doubling the rest) moves outputs of order 1 by order 1:
    # 1e-2 leaves two orders of magnitude to rounding and to an unlucky draw.
    assert (train - other_seed).abs().max().item() > 1e-2, "training: two seeds gave the same output"
    assert (train - evaluated).abs().max().item() > 1e-2, "training gave the evaluation output: no dropout applied"
    assert torch.equal(train, again), "the same seed must draw the same dropout"
    # Evaluation: no dropout, so deterministic and the very computation of the same weights with dropout 0.
    assert torch.equal(evaluated, runs["eval", 2])
    assert torch.equal(evaluated, runs["no dropout"])


@pytest.mark.parametrize("qk_channels", [8, 4], ids=["equal heads", "narrower q/k heads"])  # SDPA / own CPU path
def test_attention_dropout_applies_in_training_only(qk_channels):
    torch.manual_seed(0)
    q, kv = torch.randn(2, 5, 8), torch.randn(2, 7, 6)

    def make(p):
        return MultiHeadAttention(8, 6, num_heads=2, qk_channels=qk_channels, v_channels=8, dropout_prob=p)

    _check_dropout(_dropout_runs(make, q, kv))


def test_blocks_pass_dropout_attn_prob_to_their_attention():
    torch.manual_seed(0)
    latents, inputs = torch.randn(2, 5, 8), torch.randn(2, 7, 6)
    _check_dropout(_dropout_runs(lambda p: SelfAttention(8, num_heads=2, dropout_attn_prob=p), latents))
    _check_dropout(_dropout_runs(lambda p: CrossAttention(8, 6, num_heads=2, dropout_attn_prob=p), latents, inputs))

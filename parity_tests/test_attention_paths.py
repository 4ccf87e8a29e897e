"""Which kernel `attend` takes, and that its own path for unequal head widths computes what SDPA does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceiver_torch.layers import attention


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
    """Own path only for float32/float64 heads of unequal widths on the CPU without dropout; SDPA otherwise."""
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float32)) == 0
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float64), mask=MASKS["keys"]) == 0
    assert _sdpa_calls(monkeypatch, *_heads(6, 6, torch.float32)) == 1  # equal widths: SDPA's fused kernel
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.bfloat16)) == 1  # reduced: padded for SDPA
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float32), dropout=0.1) == 1
    monkeypatch.setattr(attention, "EXPLICIT_UNEQUAL_HEADS", False)
    assert _sdpa_calls(monkeypatch, *_heads(4, 6, torch.float32)) == 1


def test_upstream_fill_for_masked_logits():
    """Masked logits become upstream's -1e30 (not -inf): a row with no valid key is uniform, not NaN."""
    q, k, v = _heads(4, 6)
    none_valid = torch.zeros(2, 1, 1, 7, dtype=torch.bool)
    out = attention.attend(q, k, v, none_valid)
    torch.testing.assert_close(out, v.mean(dim=-2, keepdim=True).expand_as(out), atol=1e-12, rtol=1e-12)

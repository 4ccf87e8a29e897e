"""Reduced precision in the layers: every task model in bfloat16 (cast and autocast), float32 islands, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import convert_tree, load_haiku_checkpoint
from converters.tasks import run_upstream_layout
from perceiver_torch.layers import FourierPositionEncoding, MultiHeadAttention
from perceiver_torch.layers.blocks import CrossAttention
from perceiver_torch.layers.precision import ISLANDS, fp32_islands
from perceiver_torch.registry import build_model

from .conftest import GOLDEN_TASKS, golden_config, golden_dir, golden_io

FAMILIES = {family: GOLDEN_TASKS[family] for family in
            ("language", "imagenet_fourier", "imagenet_conv", "optical_flow", "video_autoencoding")}


def _golden_model(family: str) -> torch.nn.Module:
    task, config = FAMILIES[family], golden_config(family)
    model = build_model(task, config)
    arrays = convert_tree(task, load_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle"), config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return model.eval()


def _inputs(family: str) -> dict:
    return {k.removeprefix("input/"): v for k, v in golden_io(family).items() if k.startswith("input/")}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_model_takes_float32_and_bfloat16_inputs(family):
    """model.to(bfloat16) runs on float32 inputs as on bfloat16 ones; outputs are float32 (final projection)."""
    task, model = FAMILIES[family], _golden_model(family).to(torch.bfloat16)
    outputs = {}
    for input_dtype in (torch.float32, torch.bfloat16):
        outputs[input_dtype] = run_upstream_layout(task, model, _inputs(family), "cpu", input_dtype)
    for name, value in outputs[torch.float32].items():
        assert value.dtype == np.float32 and np.isfinite(value).all(), name
        # The same model on the same inputs rounded to bfloat16 first: close, not necessarily equal
        # (float32 inputs keep their digits until the first layer). 5% of the output's peak is ~3x the
        # measured bfloat16 budget for these fixtures.
        peak = np.abs(value).max()
        assert np.abs(value - outputs[torch.bfloat16][name]).max() <= 0.05 * peak, name


def test_outputs_under_autocast_are_float32():
    model = _golden_model("imagenet_conv")
    images = torch.from_numpy(_inputs("imagenet_conv")["images"]).permute(0, 3, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.dtype == torch.float32
    with fp32_islands(final_projection=False), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16  # the island is what keeps the logits in float32


def test_fourier_features_are_computed_in_float32_then_cast():
    encoding = FourierPositionEncoding((7, 224), num_bands=64)
    wide = encoding(1, dtype=torch.float32)
    low = encoding(1, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, wide.to(torch.bfloat16))
    with fp32_islands(position_features=False):
        rounded = encoding(1, dtype=torch.bfloat16)
    # sin(pi * x * f) with f up to 112 from bfloat16 positions is off by O(1): what the island prevents.
    assert (rounded.float() - wide).abs().max() > 0.5


class _Constant(torch.nn.Module):
    """Stands in for a branch: returns `value` in the model's dtype, whatever it is given."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, *args):
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("use_query_residual", [True, False])
def test_cross_attention_sums_its_query_residual_in_float32(use_query_residual):
    """After a cast, the query (an encoder's latents, a decoder's query) is widened before the residual sum.

    256 + 0.5 needs 9 significant bits; bfloat16 has 8, so a sum in bfloat16 gives 256.
    """
    block = CrossAttention(4, 4, num_heads=1, use_query_residual=use_query_residual).to(torch.bfloat16)
    block.attention, block.mlp = _Constant(0.5), _Constant(0.0)
    query, kv = torch.full((1, 2, 4), 256.0, dtype=torch.bfloat16), torch.zeros(1, 3, 4, dtype=torch.bfloat16)
    out = block(query, kv)
    assert out.dtype == torch.float32  # the residual stream from here on
    expected = 256.5 if use_query_residual else 0.5
    assert torch.equal(out, torch.full((1, 2, 4), expected))
    if use_query_residual:
        with fp32_islands(residual=False):  # the ablation: the sum stays in bfloat16
            assert torch.equal(block(query, kv), torch.full((1, 2, 4), 256.0, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_fully_masked_rows_are_zero_in_every_dtype(dtype):
    """No -1e30-like fill value: a batch element with no valid key gives a zero attention output, no NaN."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 6, num_heads=2).to(dtype)
    q, kv = torch.randn(2, 3, 8, dtype=dtype), torch.randn(2, 5, 6, dtype=dtype)
    key_mask = torch.tensor([[True, True, False, True, False], [False] * 5])[:, None, :]
    out = attention(q, kv, key_mask)
    assert torch.isfinite(out).all()
    # Zeroed before the output projection, so only its bias is left.
    assert torch.equal(out[1], attention.output.bias.expand(3, -1))
    # Example 0 is the attention over its valid keys only.
    valid = attention(q[:1], kv[:1, [0, 1, 3]])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2)  # a few ulps of each dtype
    torch.testing.assert_close(out[:1], valid, atol=tol, rtol=tol)


def test_masks_reach_attention_unmaterialised(monkeypatch):
    """The encoder's input mask is a [B, 1, 1, N] key mask, the decoder and self-attention get no mask."""
    from perceiver_torch.layers import attention as attention_module

    seen = []
    attend = attention_module.attend

    def recording(q, k, v, mask, dropout=0.0):
        seen.append(None if mask is None else (tuple(mask.shape), mask.dtype))
        return attend(q, k, v, mask, dropout)

    monkeypatch.setattr(attention_module, "attend", recording)
    model = _golden_model("language")
    inputs = _inputs("language")
    ids, mask = torch.from_numpy(inputs["inputs"]).long(), torch.from_numpy(inputs["input_mask"])
    model(ids, mask)
    batch, length = ids.shape
    assert seen[0] == ((batch, 1, 1, length), torch.bool)  # encoder cross-attention
    assert len(seen) > 2 and all(m is None for m in seen[1:]), seen  # self-attentions and the decoder
    seen.clear()
    model(ids)
    assert seen and all(m is None for m in seen)


def test_fp32_islands_takes_only_booleans():
    with pytest.raises(ValueError, match=r"take True or False; got final_projection='off', residual='false'"):
        with fp32_islands(residual="false", final_projection="off", layer_norm=False):
            pass
    assert ISLANDS.residual and ISLANDS.final_projection and ISLANDS.layer_norm  # nothing was set


def test_fp32_islands_restores_and_rejects_unknown_names():
    with fp32_islands(residual=False, attention=True):
        assert not ISLANDS.residual and ISLANDS.attention
    assert ISLANDS.residual and not ISLANDS.attention
    with pytest.raises(ValueError, match="unknown fp32 islands \\['softmax'\\]"):
        with fp32_islands(softmax=False):
            pass

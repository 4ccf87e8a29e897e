"""timm's feature API on the language model: forward_features, forward_head(mask, length, pre_logits), widths.

`forward` is `forward_head(forward_features(ids, mask), mask)`. The reference is the composition `forward` had
before the split (upstream's: encode, then the decoder's queries built from the embedded inputs, the first T
of them, masked by the attention mask): the same kernels on the same values give the same logits, so every
comparison is exact (torch.equal), in float32, float64, a bfloat16 model and under bfloat16 autocast.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import perceiver_torch as pt

from .conftest import convert_golden, golden_config, golden_io, seeded_model

MODES = ["float32", "float64", "bfloat16", "bf16_autocast"]
WHERE = "PerceiverForMaskedLM.forward_head"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The golden checkpoint, converted and loaded (eval mode), with the fixture's ids and padding mask."""
    model = pt.load_model(convert_golden("language", "language", tmp_path_factory.mktemp("language")))
    io = golden_io("language")
    ids, mask = torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"])
    assert ids.shape[1] == model.config["max_seq_len"]
    assert 0 < int(mask[0].sum()) < ids.shape[1], "fixture must exercise padding"
    return model, ids, mask


def _in_mode(model, mode: str):
    dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}.get(mode)
    return model if dtype is None else copy.deepcopy(model).to(dtype)


def _reference(model, ids, mask):
    """forward as it was written before forward_head: the query from the embedded inputs (their dtype)."""
    latents, _, inputs, _ = model.encode(ids, mask)
    query = model.decoder.decoder_query(inputs)[:, :ids.shape[1]]
    return model.embedding_decoder(model.decoder(query, latents, mask), model.input_preprocessor.embed.weight)


def _check_split(model, ids, mask, mode: str) -> None:
    """forward, forward_head(forward_features) and the embedding decoder on pre_logits all give the reference."""
    model = _in_mode(model, mode)
    head = {"length": ids.shape[1]} if mask is None else {}
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16_autocast"):
        expected = _reference(model, ids, mask)
        latents = model.forward_features(ids, mask)
        logits = model.forward_head(latents, mask, **head)
        embeddings = model.forward_head(latents, mask, **head, pre_logits=True)
        from_embeddings = model.embedding_decoder(embeddings, model.input_preprocessor.embed.weight)
        assert torch.equal(model(ids, mask), expected)
    assert torch.equal(logits, expected)
    assert torch.equal(from_embeddings, expected)
    assert logits.shape == (*ids.shape, model.config["vocab_size"])
    assert embeddings.shape == (*ids.shape, model.head_hidden_size)


@pytest.mark.parametrize("mode", MODES)
def test_features_then_head_is_the_forward_on_the_golden_model(golden, mode):
    model, ids, mask = golden
    _check_split(model, ids, mask, mode)  # padded rows: the mask gives T and masks the queries
    _check_split(model, ids[:, :23], None, mode)  # shorter than max_seq_len, no mask: length gives T


@pytest.mark.parametrize("mode", MODES)
def test_head_builds_fourier_queries_in_the_inputs_dtype(mode):
    # A Fourier decoder query is computed in the dtype it is built for. Upstream builds it for the embedded
    # inputs, the model's dtype; a bfloat16 model's latents are float32 (the residual stream), so a query built
    # for the latents would round differently (measured: logits 2e-2 apart). forward_head builds it as forward.
    config = copy.deepcopy(golden_config("language"))
    decoder = config["decoder"]
    del decoder["trainable_position_encoding_kwargs"]
    decoder.update(position_encoding_type="fourier", final_project=True, output_num_channels=config["d_model"],
                   fourier_position_encoding_kwargs={"num_bands": 8, "max_resolution": [config["max_seq_len"]]})
    model = seeded_model("language", config).eval()
    io = golden_io("language")
    ids, mask = torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"])
    if mode == "bfloat16":  # the case the stand-in exists for: the latents' dtype is not the inputs'
        with torch.no_grad():
            latents, _, inputs, _ = _in_mode(model, mode).encode(ids, mask)
        assert (latents.dtype, inputs.dtype) == (torch.float32, torch.bfloat16)
    _check_split(model, ids, mask, mode)
    _check_split(model, ids[:, :40], None, mode)


def test_head_without_mask_or_length_decodes_every_position(golden):
    # Upstream's decoder queries all max_seq_len positions; the golden fixture's ids are that long.
    model, ids, _ = golden
    with torch.no_grad():
        latents = model.forward_features(ids)
        logits = model.forward_head(latents)
        assert torch.equal(logits, model(ids))
        assert torch.equal(logits, model.forward_head(latents, length=model.config["max_seq_len"]))
        short = model.forward_features(ids[:, :5])
        assert model.forward_head(short).shape == (2, model.config["max_seq_len"], model.config["vocab_size"])
        # A length given alongside the mask that gives it is accepted.
        mask = torch.ones(2, 5)
        assert torch.equal(model.forward_head(short, mask, length=5), model(ids[:, :5], mask))


def test_widths_are_the_configs(golden):
    model, _, _ = golden
    config = golden_config("language")
    assert model.num_features == config["encoder"]["num_z_channels"]
    assert model.head_hidden_size == config["d_model"] == model.input_preprocessor.embed.embedding_dim


def test_forward_head_trains_the_head_on_frozen_features(golden):
    # The linear-probe pattern: features under no_grad, gradients only through the head (the decoder, the
    # output bias and, tied to the output, the input embedding).
    model = copy.deepcopy(golden[0])
    _, ids, mask = golden
    with torch.no_grad():
        latents = model.forward_features(ids, mask)
    model.forward_head(latents, mask).logsumexp(-1).sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert "embedding_decoder.bias" in with_grad and "input_preprocessor.embed.weight" in with_grad
    assert any(name.startswith("decoder.") for name in with_grad)
    assert not any(name.startswith("encoder.") or "positions" in name for name in with_grad), sorted(with_grad)


def test_forward_head_traces_without_graph_breaks(golden):
    model, ids, mask = golden
    with torch.no_grad():
        latents = model.forward_features(ids, mask)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model.forward_head)(latents, mask)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.parametrize("latents, error, got", [
    (torch.zeros(2, 3, 4), ValueError, "float32 [2, 3, 4]"),
    (torch.zeros(2, 16), ValueError, "float32 [2, 16]"),
    (torch.zeros(2, 16, 48, dtype=torch.int64), TypeError, "int64 [2, 16, 48]"),
    ("latents", TypeError, "str"),
    (None, TypeError, "NoneType"),
])
def test_forward_head_refuses_what_forward_features_does_not_give(golden, latents, error, got):
    model = golden[0]
    n, c = model.encoder.latents.embeddings.shape
    assert (n, c) == (16, 48)  # the parameters above are written for the golden config
    what = "a floating-point tensor " if error is TypeError else ""
    with pytest.raises(error) as info:
        model.forward_head(latents)
    assert str(info.value) == f"{WHERE}: latents must be {what}[B, {n}, {c}] from forward_features; got {got}."
    with pytest.raises(ValueError, match=re.escape(f"{WHERE}: latents must be [B, {n}, {c}] from forward_features "
                                                   "with B >= 1; got an empty batch float32 [0, 16, 48].")):
        model.forward_head(torch.zeros(0, n, c))


@pytest.mark.parametrize("pre_logits", ["yes", 1, None, torch.tensor(True)])
def test_forward_head_refuses_a_pre_logits_that_is_not_a_bool(golden, pre_logits):
    with pytest.raises(TypeError, match=f"^{WHERE}: pre_logits must be a bool; got {type(pre_logits).__name__} "):
        golden[0].forward_head(torch.zeros(1, 16, 48), pre_logits=pre_logits)


@pytest.mark.parametrize("length", [0, 65, -1, 5.0, True, "5", torch.tensor(5)])
def test_forward_head_refuses_a_length_out_of_range_or_not_an_integer(golden, length):
    message = f"{WHERE}: length must be an integer in [1, 64] (max_seq_len), the number of output positions T; " \
              f"got {length!r}."
    with pytest.raises(ValueError) as info:
        golden[0].forward_head(torch.zeros(2, 16, 48), length=length)
    assert str(info.value) == message


MASK_EXPECTED = "attention_mask must be a tensor [B, T] with B = 2 (latents' batch) and 1 <= T <= 64, holding 0/1"


@pytest.mark.parametrize("mask, error, got", [
    (torch.ones(3, 7), ValueError, "float32 [3, 7]"),  # another batch than the latents'
    (torch.ones(2, 65), ValueError, "float32 [2, 65]"),  # longer than max_seq_len
    (torch.ones(2, 0), ValueError, "float32 [2, 0]"),
    (torch.ones(7), ValueError, "float32 [7]"),
    (torch.ones(2, 7, 1), ValueError, "float32 [2, 7, 1]"),
    (torch.ones(2, 7, dtype=torch.complex64), TypeError, "complex64 [2, 7]"),
    ([[1] * 7] * 2, TypeError, "list"),
    (torch.full((2, 7), 0.5), ValueError, "other values (the mask is binary: 1 = real token, 0 = padding)"),
])
def test_forward_head_refuses_bad_masks(golden, mask, error, got):
    with pytest.raises(error) as info:
        golden[0].forward_head(torch.zeros(2, 16, 48), mask)
    assert str(info.value) == f"{WHERE}: {MASK_EXPECTED}; got {got}."


def test_forward_head_refuses_a_length_that_contradicts_the_mask(golden):
    mask = torch.ones(2, 7)
    with pytest.raises(ValueError) as info:
        golden[0].forward_head(torch.zeros(2, 16, 48), mask, length=5)
    assert str(info.value) == f"{WHERE}: length=5 contradicts attention_mask float32 [2, 7], whose T is 7; pass " \
                              "one of them, or both alike."


def test_forward_keeps_its_own_checks_and_messages(golden):
    model, ids, mask = golden
    with pytest.raises(ValueError, match=re.escape("PerceiverForMaskedLM.forward: attention_mask must be a tensor of "
                                                   "input_ids' shape [2, 64] holding 0/1; got int32 [2, 63].")):
        model(ids, mask[:, 1:])
    with pytest.raises(ValueError, match=re.escape("PerceiverForMaskedLM.forward: attention_mask must be a tensor of "
                                                   "input_ids' shape [2, 64] holding 0/1; got int32 [3, 64].")):
        model(ids, torch.cat([mask, mask[:1]]))
    with pytest.raises(TypeError, match="PerceiverForMaskedLM.forward: input_ids must be an integer tensor"):
        model.forward_features(ids.float())

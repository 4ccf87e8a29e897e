"""An exported language model in transformers' fill-mask pipeline: its tokenizer (tokenizer_config.json, written
by the export) is the release's bytes with the model's length, and the pipeline predicts as our model."""

from __future__ import annotations

import pytest
import torch
import transformers

from converters import from_transformers, to_transformers
from parity_tests.transformers_support import small_hf_model
from perceiver_torch import load_model
from perceiver_torch.tokenizer import BytesTokenizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fill_mask")
    small_hf_model("PerceiverForMaskedLM", hidden_act="gelu_pytorch_tanh").save_pretrained(str(tmp / "hf"))
    converted = from_transformers("language", tmp / "hf", tmp / "ours.safetensors")
    return converted, to_transformers(converted, tmp / "exported")


def test_the_exported_tokenizer_encodes_as_ours(exported):
    _, directory = exported
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    text = "Perceiver IO, caf\u00e9 \u2713"
    ids = theirs(text, add_special_tokens=False)["input_ids"]
    assert ids == BytesTokenizer().encode(text)
    assert (theirs.pad_token_id, theirs.mask_token_id) == (BytesTokenizer.pad_token, BytesTokenizer.mask_token)
    assert theirs.model_max_length == load_model(exported[0]).config["max_seq_len"]


def test_the_fill_mask_pipeline_loads_the_export_and_predicts_as_our_model(exported):
    """Its top prediction at the mask is our model's argmax on the same ids (the pipeline adds [CLS] and [SEP])."""
    converted, directory = exported
    fill = transformers.pipeline("fill-mask", model=str(directory))
    text = "quick [MASK]ox"  # within the small model's 20 positions, [CLS] and [SEP] included
    [top, *_] = fill(text, top_k=3)
    ids = fill.tokenizer(text, return_tensors="pt")["input_ids"]
    position = int((ids[0] == fill.tokenizer.mask_token_id).nonzero()[0, 0])
    with torch.no_grad():
        logits = load_model(converted)(ids, torch.ones_like(ids))
    ranked = logits[0, position].sort(descending=True).values
    assert ranked[0] - ranked[1] > 1e-3  # a clear top byte: the comparison below cannot hinge on rounding
    assert top["token"] == int(logits[0, position].argmax())
    assert abs(top["score"] - float(logits[0, position].softmax(-1).max())) <= 1e-5  # float32 softmax rounding

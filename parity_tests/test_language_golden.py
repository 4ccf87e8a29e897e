"""The byte-level masked LM reproduces the upstream golden logits through the public contract."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters.tasks import run_upstream_layout

from .conftest import assert_close, golden_config, golden_dir, golden_io, seeded_model


@pytest.mark.parametrize("pickle_name", ["checkpoint.pickle", "checkpoint_plain.pickle"])
def test_language_matches_upstream(converted, pickle_name):
    model = pt.load_model(converted("language", "language", pickle_name))
    io = golden_io("language")
    assert (io["input/input_mask"] == 0).any(), "fixture must exercise padding"
    inputs = {k.removeprefix("input/"): v for k, v in io.items() if k.startswith("input/")}
    outputs = run_upstream_layout("language", model, inputs)
    assert_close(outputs["logits"], io["output/logits"], what="logits")


def test_shorter_sequence_equals_prefix_of_full_length(converted):
    """Running T < max_seq_len tokens gives upstream's values at those positions."""
    model = pt.load_model(converted("language", "language"))
    io = golden_io("language")
    ids, mask = torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"])
    row, valid = 0, int(mask[0].sum())
    with torch.no_grad():
        short = model(ids[row:row + 1, :valid], mask[row:row + 1, :valid])
    assert_close(short[0].numpy(), io["output/logits"][row, :valid], what="prefix logits")


def test_too_long_sequence_is_rejected(converted):
    model = pt.load_model(converted("language", "language"))
    with pytest.raises(ValueError, match="longer than max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_fill_masked_keeps_unmasked_bytes_and_fills_masks(converted):
    model = pt.load_model(converted("language", "language"))
    text = "Perceiver" + "[MASK]" * 3 + " IO"
    filled = model.fill_masked(text)
    ids = model.tokenizer.encode_with_masks(text)
    with torch.no_grad():
        predicted = model(torch.tensor([ids]), torch.ones(1, len(ids))).argmax(-1)[0]
    expected = [int(p) if i == model.tokenizer.mask_token else i for i, p in zip(ids, predicted, strict=True)]
    assert filled == model.tokenizer.decode(expected)
    assert filled.startswith("Perceiver") and filled.endswith(" IO")


def test_fill_masked_refuses_what_is_not_text_or_too_long(converted):
    model = pt.load_model(converted("language", "language"))
    where = "PerceiverForMaskedLM.fill_masked"
    for text in (b"ab[MASK]", None, {"ab[MASK]"}):
        with pytest.raises(TypeError, match=f"{where}: text must be a str or a list or tuple of str; got "
                                            f"{type(text).__name__}"):
            model.fill_masked(text)
    with pytest.raises(TypeError, match=f"{where}: mask must be a str; got bytes"):
        model.fill_masked("ab[MASK]", b"[MASK]")
    with pytest.raises(TypeError, match=rf"{where}: text\[1\] must be a str; got bytes"):
        model.fill_masked(["ab[MASK]", b"c"])
    with pytest.raises(ValueError, match=f"{where}: text is 65 bytes with each mask counted as one; the model "
                                         "takes at most 64"):
        model.fill_masked("x" * 59 + "[MASK]" * 6)
    with pytest.raises(ValueError, match=rf"{where}: text\[0\] is 65 bytes"):
        model.fill_masked(["x" * 59 + "[MASK]" * 6])
    for batch_size in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match=f"{where}: batch_size must be an integer >= 1; got {batch_size!r}"):
            model.fill_masked(["a[MASK]"], batch_size=batch_size)
    assert len(model.fill_masked("x" * 58 + "[MASK]" * 6)) == 64  # exactly max_seq_len: runs


def test_fill_masked_batches_padded_texts_as_it_fills_each_alone(converted):
    model = pt.load_model(converted("language", "language"))
    texts = ["Perceiver[MASK][MASK] IO", "a[MASK]", "", "no mask at all", "x" * 40 + "[MASK]" * 3, "[MASK]"]
    alone = [model.fill_masked(text) for text in texts]
    assert alone[2] == "" and alone[3] == "no mask at all"
    for batch_size in (1, 2, 4, np.int64(8)):  # batches mixing lengths (padded), and one of all six
        assert model.fill_masked(texts, batch_size=batch_size) == alone
    assert model.fill_masked(tuple(texts)) == alone and model.fill_masked([]) == []
    # Under the strings: a padded row's logits are the unpadded ones (summation order aside: 1e-5 of 1).
    ids = [model.tokenizer.encode_with_masks(text) for text in texts[:2]]
    padded, masks = zip(*(model.tokenizer.pad(row, 26) for row in ids), strict=True)
    with torch.no_grad():
        batch = model(torch.tensor(padded), torch.tensor(masks))
        for row, sequence in enumerate(ids):
            torch.testing.assert_close(batch[row, :len(sequence)], model(torch.tensor([sequence]))[0],
                                       rtol=0, atol=1e-5)


def test_golden_language_converts_and_runs_without_jax_or_haiku(tmp_path):
    """Conversion and inference must not need JAX or Haiku: block their import entirely."""
    repo = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import sys
        for name in ("jax", "jaxlib", "haiku"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np, torch, converters, perceiver_torch as pt
        g = {str(golden_dir("language"))!r}
        out = converters.convert("language", g + "/checkpoint.pickle", g + "/config.json", {str(tmp_path)!r} + "/m.st")
        io = np.load(g + "/io.npz")
        with torch.no_grad():
            ids, mask = torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"])
            y = pt.load_model(out)(ids, mask)
        assert np.allclose(y.numpy(), io["output/logits"], atol=1e-4, rtol=1e-4)
        assert not any(m.split(".")[0] in ("jax", "haiku") for m in sys.modules if sys.modules[m] is not None)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_converted_file_metadata_rebuilds_model(converted):
    from perceiver_torch.serialization import read_metadata

    path = converted("language", "language")
    meta = read_metadata(path)
    assert meta["task"] == "language"
    assert meta["converter_version"]
    source = (golden_dir("language") / "checkpoint.pickle").read_bytes()
    assert meta["source_sha256"] == hashlib.sha256(source).hexdigest()
    model = pt.load_model(path)
    assert not model.training
    assert model.config == json.loads(meta["config"])


def test_upstream_logits_have_expected_layout():
    io = golden_io("language")
    assert io["output/logits"].shape[-1] == 262
    assert np.isfinite(io["output/logits"]).all()


def test_forward_features_are_the_latents_forward_decodes_and_ignore_padding(converted):
    model = pt.load_model(converted("language", "language"))
    io = golden_io("language")
    ids, mask = torch.from_numpy(io["input/inputs"]).long(), torch.from_numpy(io["input/input_mask"])
    config = model.config["encoder"]
    with torch.no_grad():
        latents = model.forward_features(ids, mask)
        assert latents.shape == (ids.shape[0], config["z_index_dim"], config["num_z_channels"])
        assert model.num_features == config["num_z_channels"]
        # Decoding these latents as forward does gives forward's logits, bit for bit.
        embedded, _, _ = model.input_preprocessor(ids)
        query = model.decoder.decoder_query(embedded)[:, :ids.shape[1]]
        logits = model.embedding_decoder(model.decoder(query, latents, mask), model.input_preprocessor.embed.weight)
        assert torch.equal(logits, model(ids, mask))
        # A padded row's latents are its unpadded text's (measured equal; 1e-5 of values up to ~6 would allow
        # another summation order over the masked keys).
        row, valid = 0, int(mask[0].sum())
        assert valid < ids.shape[1], "fixture must exercise padding"
        torch.testing.assert_close(model.forward_features(ids[row:row + 1, :valid]), latents[row:row + 1],
                                   rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="PerceiverForMaskedLM.forward: input_ids must be an integer tensor"):
        model.forward_features(ids.float())


def test_fill_masked_refuses_a_vocabulary_the_byte_tokenizer_does_not_have():
    """Before, a model with vocab_size 300 predicted id 299 and failed in BytesTokenizer.decode; with 100 the
    text's bytes were refused as out-of-range ids. Now both name the mismatch; forward itself still works."""
    for vocab in (100, 300):
        model = seeded_model("language", {**golden_config("language"), "vocab_size": vocab}).eval()
        with pytest.raises(ValueError, match=f"vocab_size {vocab}, but fill_masked .* byte tokenizer's 262 ids"):
            model.fill_masked("ab[MASK]")
        assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, vocab)

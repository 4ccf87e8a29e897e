import pytest

from perceiver_torch import BytesTokenizer

tok = BytesTokenizer()


def test_round_trip_utf8():
    text = "Perceiver IO — ünïcödé ✓"
    assert tok.decode(tok.encode(text)) == text
    assert all(6 <= i < 262 for i in tok.encode(text))


def test_specials_are_dropped_on_decode():
    assert tok.decode([tok.bos_token, *tok.encode("hi"), tok.eos_token, tok.pad_token]) == "hi"


def test_pad_and_mask():
    ids, mask = tok.pad(tok.encode("ab"), 5)
    assert ids == [103, 104, 0, 0, 0] and mask == [1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="do not fit"):
        tok.pad([7] * 6, 5)


def test_encode_with_masks_matches_colab_masking():
    text = "This is an incomplete sentence where some words are missing."
    ids = tok.encode(text)
    ids[51:60] = [tok.mask_token] * 9
    assert tok.encode_with_masks(text[:51] + "[MASK]" * 9) == ids
    assert tok.vocab_size == 262

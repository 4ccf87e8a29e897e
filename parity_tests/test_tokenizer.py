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


def test_decode_and_pad_take_tensors_and_arrays_and_refuse_batches_and_bad_ids():
    import numpy as np
    import torch

    ids = tok.encode("no")
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == tok.decode(list(np.array(ids))) == "no"
    assert tok.pad(torch.tensor(ids), 4) == (ids + [0, 0], [1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"expected one sequence of ids \(1-D\); got shape \[1, 2\].*row by row"):
        tok.decode(torch.tensor([ids]))  # e.g. logits.argmax(-1) of one example
    with pytest.raises(ValueError, match=r"got shape \[\]"):
        tok.decode(torch.tensor(110))
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 262\); got \[262, -1\]"):
        tok.decode([110, 262, -1])
    with pytest.raises(ValueError, match=r"got \[1.5, True\]"):
        tok.pad([1.5, True], 4)
    with pytest.raises(TypeError, match="use encode for text"):
        tok.decode("hi")


@pytest.mark.parametrize("value", [5, [104, 105], None, 2.0])
def test_encode_refuses_what_is_not_text_or_bytes(value):
    # bytes(5) is five zero bytes and bytes([104, 105]) the ids' values as bytes: encode must not take them as text.
    with pytest.raises(TypeError, match=r"BytesTokenizer.encode: expected text \(str\) or bytes; got "):
        tok.encode(value)
    assert tok.encode(bytearray(b"hi")) == tok.encode(memoryview(b"hi")) == tok.encode(b"hi") == tok.encode("hi")


def test_decode_and_pad_take_an_iterator_of_ids():
    ids = tok.encode("hi")
    assert tok.decode(i for i in ids) == "hi"
    assert tok.pad(iter(ids), 3) == (ids + [0], [1, 1, 0])


def test_pad_refuses_a_length_that_is_not_a_non_negative_integer():
    import numpy as np
    import torch

    for length in (True, 3.0, "3", None):
        with pytest.raises(TypeError, match=r"BytesTokenizer.pad: length must be an integer; got "):
            tok.pad([7], length)
    with pytest.raises(ValueError, match=r"BytesTokenizer.pad: length must be >= 0; got -1"):
        tok.pad([], -1)
    assert tok.pad([7], np.int64(2)) == tok.pad([7], torch.tensor(2)) == ([7, 0], [1, 0])

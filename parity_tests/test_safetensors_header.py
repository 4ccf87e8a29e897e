"""The safetensors header checks at their exact edges: each entry one step past what is allowed is refused by
read_header with the entry and the rule it breaks named, before any tensor is read."""

from __future__ import annotations

import json
import re
import struct

import pytest

from perceiver_torch.safetensors_io import MAX_HEADER_BYTES, MAX_RANK, CheckpointFormatError, read_header


def _file(tmp_path, header: dict, data_bytes: int):
    """A file holding `header` and `data_bytes` zero bytes of data."""
    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)
    return path


def _f32(shape, offsets):
    return {"t": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}


@pytest.mark.parametrize("shape, offsets, data_bytes, problem", [
    ([1] * (MAX_RANK + 1), [0, 4], 4, rf"shape \[1(, 1){{{MAX_RANK}}}\] is not a list of at most {MAX_RANK} "
                                      "non-negative integers"),
    # JSON true is Python's True, equal to 1: it must not pass as a dimension.
    ([True], [0, 4], 4, rf"shape \[True\] is not a list of at most {MAX_RANK} non-negative integers"),
    ([1], [-4, 0], 0, r"data_offsets \[-4, 0\] are not \[begin, end\] with 0 <= begin <= end"),
    ([1], [4, 0], 4, r"data_offsets \[4, 0\] are not \[begin, end\] with 0 <= begin <= end"),
    ([1], [0, 4, 99], 4, r"data_offsets \[0, 4, 99\] are not \[begin, end\] with 0 <= begin <= end"),
    # Bytes beyond what dtype x shape needs would belong to no tensor.
    ([1], [0, 8], 8, r"F32 \[1\] needs 4 bytes; data_offsets \[0, 8\] span 8"),
], ids=["rank-past-max", "bool-dim", "negative-begin", "reversed", "three-offsets", "span-too-long"])
def test_an_entry_one_step_past_the_rules_is_refused_naming_it(tmp_path, shape, offsets, data_bytes, problem):
    path = _file(tmp_path, _f32(shape, offsets), data_bytes)
    with pytest.raises(CheckpointFormatError) as err:
        read_header(path)
    assert re.fullmatch(rf"{re.escape(str(path))} is not a valid safetensors file: 1 problem\(s\)\W+"
                        rf"tensor 't': {problem}\s*", str(err.value)), str(err.value)


def test_the_largest_rank_allowed_is_read(tmp_path):
    # The other side of rank-past-max: MAX_RANK itself is a valid shape.
    header = read_header(_file(tmp_path, _f32([1] * MAX_RANK, [0, 4]), 4))
    assert header.tensors["t"].shape == (1,) * MAX_RANK


def test_a_real_header_just_past_the_cap_is_refused_before_it_is_read(tmp_path):
    # The file does hold all of its header: the cap, not the file's end, is what refuses it.
    body = json.dumps({"__metadata__": {"pad": "x"}}).encode()
    body += b" " * (MAX_HEADER_BYTES + 1 - len(body))
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(CheckpointFormatError, match=rf"^{re.escape(str(path))}: header length {MAX_HEADER_BYTES + 1} "
                                                    rf"is impossible \(file of {MAX_HEADER_BYTES + 9} bytes; at most "
                                                    rf"{MAX_HEADER_BYTES} allowed\)"):
        read_header(path)


def test_a_tensor_inside_another_is_one_overlap_and_the_next_tensor_follows_the_outer_one(tmp_path):
    # 'b' lies inside 'a'; 'c' starts where 'a' ends: only 'b' is wrong (not also a gap before 'c').
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [], "data_offsets": [2, 6]},
              "c": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    path = _file(tmp_path, header, 12)
    with pytest.raises(CheckpointFormatError) as err:
        read_header(path)
    assert str(err.value) == (f"{path} is not a valid safetensors file: 1 problem(s)\n"
                              "  tensor 'b': data_offsets [2, 6] overlaps the previous tensor")

"""Conversion with the checkpoint's arrays left in the file (`open_haiku_checkpoint`, `StoredArray`).

Golden payloads are small, below `DEFER_BYTES`; the `left_in_the_file` fixture lowers the threshold
to 2 bytes so that every array but the reader's 1-byte type codes takes the stored path.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

import converters
from converters import CheckpointReadError, ConversionError, load_haiku_checkpoint, restricted_unpickler
from converters.checkpoint_reader import StoredArray, open_haiku_checkpoint
from converters.convert import PENDING_SHA256
from converters.rules import finite_float32
from converters.stored_arrays import StoredFile
from perceiver_torch.hashing import sha256_file
from perceiver_torch.serialization import read_metadata, save_checkpoint

from .conftest import GOLDEN_TASKS as FAMILIES
from .conftest import golden_config, golden_dir
from .test_strict_conversion import _convert_expecting_failure


@pytest.fixture
def left_in_the_file(monkeypatch):
    monkeypatch.setattr(restricted_unpickler, "DEFER_BYTES", 2)


def _convert(family: str, out):
    return converters.convert(FAMILIES[family], golden_dir(family) / "checkpoint.pickle",
                              golden_dir(family) / "config.json", out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_golden_task_converts_to_the_same_bytes_with_its_arrays_left_in_the_file(family, tmp_path,
                                                                                     monkeypatch):
    read_first = _convert(family, tmp_path / "read_first.safetensors")
    monkeypatch.setattr(restricted_unpickler, "DEFER_BYTES", 2)
    with open_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle") as checkpoint:
        leaves = checkpoint.flat()
        stored = sum(isinstance(v, StoredArray) for v in leaves.values())
    assert stored == sum(v.nbytes >= 2 for v in load_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle")
                         .flat().values()) > 0  # the stored path was taken for every array it could be
    left = _convert(family, tmp_path / "left.safetensors")
    assert left.read_bytes() == read_first.read_bytes()
    # The header was written before the source's hash was known, and filled in afterwards.
    assert read_metadata(left)["source_sha256"] == sha256_file(golden_dir(family) / "checkpoint.pickle")
    assert PENDING_SHA256.encode() not in left.read_bytes()[:4096]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_stored_arrays_read_as_the_reader_reads_them(protocol, tmp_path, left_in_the_file):
    values = {
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3), "big_endian_f8": np.arange(4, dtype=">f8"),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "float16": np.linspace(-1, 1, 5, dtype="f2"),
        "int32": np.arange(5, dtype="<i4"), "bool": np.array([True, False, True]), "empty": np.zeros((0, 3), "f4"),
    }
    path = tmp_path / "arrays.pickle"
    path.write_bytes(pickle.dumps(OrderedDict(m=values), protocol=protocol))
    expected = load_haiku_checkpoint(path).params["m"]
    with open_haiku_checkpoint(path) as checkpoint:
        leaves = checkpoint.params["m"]
        # Protocol 2 has no bytes opcodes: it writes data as latin-1 text, which is read while parsing.
        assert {name for name, v in leaves.items() if isinstance(v, StoredArray)} == \
            (set() if protocol == 2 else set(values) - {"empty"})
        for name, value in leaves.items():
            assert value.dtype == expected[name].dtype and value.shape == expected[name].shape, name
            read = np.asarray(value)
            assert read.dtype.isnative and read.dtype == expected[name].dtype, name
            np.testing.assert_array_equal(read, expected[name], err_msg=name)


def test_a_planned_transpose_and_float32_check_apply_when_read(tmp_path, left_in_the_file):
    w = np.arange(6, dtype=">f8").reshape(2, 3)
    path = tmp_path / "w.pickle"
    path.write_bytes(pickle.dumps({"m": {"w": w}}))
    with open_haiku_checkpoint(path) as checkpoint:
        planned = checkpoint.params["m"]["w"].then(lambda x: x.T).checked(functools.partial(finite_float32,
                                                                                             "params:m/w"))
        assert planned.shape == (3, 2) and planned.dtype == np.float32  # known before any byte is read
        read = np.asarray(planned)
        assert checkpoint.stored.problems == []
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, w.T.astype(np.float32))


def test_every_non_finite_array_is_listed_and_nothing_is_written(tmp_path, left_in_the_file):
    # Found while writing, after earlier arrays were written: the temp file is removed, every one named.
    def poison(params):
        for module in ("perceiver_encoder/~/cross_attention/attention/linear",
                       "perceiver_encoder/~/self_attention_1/mlp/linear"):
            w = params[module]["w"].copy()
            w[0, 0] = np.nan
            params[module]["w"] = w
    error = _convert_expecting_failure(tmp_path, poison, "non-finite values (NaN or Inf)")
    assert sorted(p.split(":")[1] for p in error.problems) == [
        "perceiver_encoder/~/cross_attention/attention/linear/w", "perceiver_encoder/~/self_attention_1/mlp/linear/w"]


def test_a_checkpoint_that_shrinks_after_parsing_is_refused_and_nothing_is_left(tmp_path, monkeypatch,
                                                                              left_in_the_file):
    src = tmp_path / "source.pickle"
    src.write_bytes((golden_dir("language") / "checkpoint.pickle").read_bytes())
    module = importlib.import_module("converters.convert")  # `converters.convert` is the function
    merge = module._merge

    def merge_then_truncate(*args, **kwargs):
        arrays = merge(*args, **kwargs)
        os.truncate(src, src.stat().st_size // 2)  # changed by someone else while being converted
        return arrays

    monkeypatch.setattr(module, "_merge", merge_then_truncate)
    out = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointReadError, match="it changed during the conversion"):
        converters.convert("language", src, golden_dir("language") / "config.json", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.pickle"]


def test_a_stored_array_read_after_its_file_is_closed_is_refused(tmp_path, left_in_the_file):
    with open_haiku_checkpoint(golden_dir("language") / "checkpoint.pickle") as checkpoint:
        leaf = next(v for v in checkpoint.flat().values() if isinstance(v, StoredArray))
    with pytest.raises(CheckpointReadError, match="closed before its arrays were read"):
        np.asarray(leaf)


@pytest.mark.parametrize("nbytes", [4, 12], ids=["fewer", "more"])
def test_a_stored_array_whose_bytes_do_not_fill_its_shape_cannot_be_planned(nbytes):
    # The reader checks sizes first; the plan refuses on its own too, so that it can never read a wrong count.
    with pytest.raises(ValueError, match=rf"^\(2,\) float32 does not fill {nbytes} bytes$"):
        StoredArray(StoredFile(-1, "x.pickle"), 0, nbytes, np.dtype(np.float32), (2,), False)
    assert StoredArray(StoredFile(-1, "x.pickle"), 0, 8, np.dtype(np.float32), (2,), False).shape == (2,)


def test_a_refused_checkpoint_closes_its_file(tmp_path, left_in_the_file):
    path = tmp_path / "bad.pickle"
    path.write_bytes((golden_dir("language") / "checkpoint.pickle").read_bytes()[:-1])  # no STOP
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(CheckpointReadError, match="truncated"), open_haiku_checkpoint(path):
        pass
    assert len(os.listdir("/proc/self/fd")) == before


class _Liar:
    """An array-like whose array is not what its dtype and shape promised."""

    dtype, shape = np.dtype(np.float32), (2, 2)

    def __array__(self, dtype=None, copy=None):
        return np.zeros((2, 3), np.float32)


def test_the_writer_refuses_an_array_like_that_is_not_what_it_promised(tmp_path):
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="'x' became"):
        save_checkpoint({"x": _Liar()}, out, "language", golden_config("language"))
    assert list(tmp_path.iterdir()) == []


def test_conversion_fails_cleanly_on_a_refused_stored_array(tmp_path, left_in_the_file):
    # The int32 refusal is known from the dtype alone: before anything is written.
    def int_weights(params):
        module = "perceiver_encoder/~/cross_attention/attention/linear"
        params[module]["w"] = (params[module]["w"] * 100).astype(np.int32)
    error = _convert_expecting_failure(tmp_path, int_weights, "int32 values where the model holds float32")
    assert isinstance(error, ConversionError)


def test_only_payloads_of_defer_bytes_or_more_stay_in_the_file(tmp_path):
    # The real threshold (no fixture): weight matrices stay in the file, biases are read while parsing.
    from converters.stored_arrays import DEFER_BYTES
    values = {"big": np.ones(DEFER_BYTES // 4, "<f4"), "small": np.ones(DEFER_BYTES // 4 - 1, "<f4")}
    path = tmp_path / "sizes.pickle"
    path.write_bytes(pickle.dumps({"m": values}, protocol=4))
    with open_haiku_checkpoint(path) as checkpoint:
        leaves = checkpoint.params["m"]
        assert isinstance(leaves["big"], StoredArray) and isinstance(leaves["small"], np.ndarray)
        np.testing.assert_array_equal(np.asarray(leaves["big"]), values["big"])

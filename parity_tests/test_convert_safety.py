"""The converter's guards: finite float parameters only, its output never its input, nothing stray on failure."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import converters
import perceiver_torch as pt
from converters import ConfigError, ConversionError, load_haiku_checkpoint, restricted_unpickler
from converters.rules import as_parameter
from perceiver_torch import serialization

from .conftest import golden_config, golden_dir
from .sandbox import REPO
from .test_strict_conversion import _convert_expecting_failure, _write_variant

SOURCE = golden_dir("language") / "checkpoint.pickle"
LEAF = ("perceiver_encoder/~/cross_attention/attention/linear", "w")
SRC_NAME = "params:perceiver_encoder/~/cross_attention/attention/linear/w"
TARGET = "encoder.cross_attend.attention.query.weight"


def _replacing(value_of):
    """A mutation of the checkpoint's params replacing the one leaf LEAF by value_of(original)."""
    def mutate(params):
        module, name = LEAF
        params[module][name] = value_of(params[module][name])
    return mutate


def _variant(tmp_path, value_of):
    return _write_variant(tmp_path, _replacing(value_of))


def _refused(tmp_path, value_of, *parts):
    _convert_expecting_failure(tmp_path, _replacing(value_of), *parts)


@pytest.fixture(params=["read_while_parsing", "left_in_the_file"])
def reader_mode(request, monkeypatch):
    """Both ways the converter meets an array: read with the pickle, or read from the file when written."""
    if request.param == "left_in_the_file":
        monkeypatch.setattr(restricted_unpickler, "DEFER_BYTES", 2)  # golden arrays are below the real threshold


def _with_nan(w):
    w = w.copy()
    w[3, 1] = np.nan
    return w


def _with_inf(w):
    w = w.copy()
    w[0, 0] = np.inf
    return w


@pytest.mark.parametrize("value_of, parts", [
    (_with_nan, [SRC_NAME, "non-finite"]),
    (_with_inf, [SRC_NAME, "non-finite"]),
    (lambda w: (w * 100).astype(np.int32), [SRC_NAME, "int32 values where the model holds float32"]),
    (lambda w: w > 0, [SRC_NAME, "bool values where the model holds float32"]),
    (lambda w: np.full(w.shape, 1e300), [SRC_NAME, "non-finite values (NaN or Inf) after conversion to float32"]),
], ids=["nan", "inf", "int32", "bool", "float64_overflowing_float32"])
def test_unusable_parameter_values_are_refused_naming_the_leaf(tmp_path, value_of, parts, reader_mode):
    _refused(tmp_path, value_of, *parts)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float16_and_float64_are_converted_to_float32_and_logged(tmp_path, caplog, dtype, reader_mode):
    src = _variant(tmp_path, lambda w: w.astype(dtype))
    out = tmp_path / "out.safetensors"
    with caplog.at_level(logging.WARNING, logger="converters.rules"):
        converters.convert("language", src, golden_dir("language") / "config.json", out)
    assert any(SRC_NAME in r.getMessage() and np.dtype(dtype).name in r.getMessage() for r in caplog.records), \
        caplog.text
    model = pt.load_model(out)
    weight = model.state_dict()[TARGET]
    assert weight.dtype == torch.float32
    original = load_haiku_checkpoint(SOURCE).params[LEAF[0]][LEAF[1]]
    # The round trip through `dtype` is the only change: float64 is exact, float16 is its rounding.
    expected = torch.from_numpy(original.astype(dtype).astype(np.float32).T.copy())
    assert torch.equal(weight, expected)


def test_complex_and_other_dtypes_are_refused():
    problems: list[str] = []
    assert as_parameter("params:x/w", np.ones((2, 2), np.complex64), problems) is None
    assert problems == ["params:x/w: unsupported dtype complex64; expected float32 (float16 and float64 are "
                        "converted)"]


def test_output_may_not_be_the_input(tmp_path):
    src = tmp_path / "ckpt.pickle"
    src.write_bytes(SOURCE.read_bytes())
    config = golden_dir("language") / "config.json"
    (tmp_path / "hard").hardlink_to(src)
    (tmp_path / "soft").symlink_to(src)
    for out in (src, tmp_path / "." / "ckpt.pickle", tmp_path / "hard", tmp_path / "soft"):
        with pytest.raises(ConversionError, match="is the input checkpoint"):
            converters.convert("language", src, config, out)
    assert src.read_bytes() == SOURCE.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pickle", "hard", "soft"]


def test_output_may_not_be_the_config_file_and_replaces_a_file_only_when_asked(tmp_path):
    """The config is an input too (it used to be replaced by the converted weights); an existing output is replaced
    with overwrite=True (the Python default) and refused with overwrite=False (the CLI without --force)."""
    src = tmp_path / "ckpt.pickle"
    src.write_bytes(SOURCE.read_bytes())
    config = tmp_path / "config.json"
    config.write_bytes((golden_dir("language") / "config.json").read_bytes())
    link = tmp_path / "config-link.json"
    link.symlink_to(config)
    for given, out in ((config, config), (link, config), (config, link)):
        with pytest.raises(ConversionError, match=r"output .* is the config .*config(-link)?\.json \(or a link to "
                                                  r"it\); writing it would destroy the source"):
            converters.convert("language", src, given, out)
    assert config.read_bytes() == (golden_dir("language") / "config.json").read_bytes()
    out = tmp_path / "lm.safetensors"
    out.write_bytes(b"an earlier conversion")
    with pytest.raises(ConversionError, match=r"output .*lm.safetensors exists; pass --force \(overwrite=True\)"):
        converters.convert("language", src, config, out, overwrite=False)
    assert out.read_bytes() == b"an earlier conversion"
    assert converters.convert("language", src, config, out) == out and out.read_bytes()[:8] != b"an earli"
    with pytest.raises(ConversionError, match="the output path is empty"):  # not "output . is a directory"
        converters.convert("language", src, config, "")


def test_a_directory_as_output_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="is a directory"):
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_fifo_or_device_is_refused_even_with_overwrite(tmp_path):
    """`perceiver-convert ... -o /dev/full --force` run as root replaced the device node with the converted file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConversionError, match="exists and is not a regular file"):
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", fifo, overwrite=True)
    assert os.listdir(tmp_path) == ["fifo"] and not fifo.is_file()


def test_a_dash_as_output_is_refused_not_written_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConversionError, match=r"'-' \(standard output\) is not supported"):
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", "-")
    assert os.listdir(tmp_path) == []


def test_an_output_ending_in_a_separator_names_a_folder_and_is_refused(tmp_path, monkeypatch):
    """Path() drops a trailing separator: 'out/' was written as a file named 'out' (check_output_path's rule,
    which the converter now shares)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConversionError, match="out/ ends in a path separator, naming a directory"):
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", "out/")
    assert os.listdir(tmp_path) == []


def test_an_output_under_a_file_is_refused_before_the_checkpoint_is_read(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(ConversionError, match=f"cannot write .*: {blocker} is not a directory"):
        converters.convert("language", tmp_path / "not-read.pickle", golden_dir("language") / "config.json",
                           blocker / "out.safetensors")
    assert os.listdir(tmp_path) == ["a-file"]


def test_the_config_is_validated_before_the_checkpoint_is_read(tmp_path):
    config = golden_config("language")
    del config["decoder"]["num_heads"]
    with pytest.raises(ConfigError, match="decoder.num_heads: missing"):
        converters.convert("language", tmp_path / "does-not-exist.pickle", config, tmp_path / "out.safetensors")


def _failing_write(error: OSError, after_bytes: int = 4096):
    """A stand-in for the streaming writer: writes part of the file, then fails like the disk would."""
    def write(path, tensors, metadata=None, *, consume=False):
        with open(path, "wb") as file:
            file.write(b"\0" * after_bytes)
            raise error
    return write


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "Read-only file system"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "quota"),
], ids=["disk_full", "read_only", "quota"])
def test_write_failures_give_one_clean_error_and_leave_nothing(tmp_path, monkeypatch, error, reason):
    monkeypatch.setattr(serialization, "write_safetensors", _failing_write(error))
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError) as info:
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", out)
    assert reason in str(info.value) and str(out) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_found_before_any_data_is_written(tmp_path, monkeypatch):
    """The output's blocks are reserved first: ENOSPC comes from there, cleanly, never as a SIGBUS later."""
    from perceiver_torch import safetensors_io

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors_io.os, "posix_fallocate", full)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError, match="No space left on device"):
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", out)
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_directory_gives_one_clean_error(tmp_path, monkeypatch):
    """The temp file cannot be created (as a read-only mount refuses it even to root, who ignores modes)."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(serialization.os, "open", refusing_open)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError, match="Read-only file system"):
        converters.convert("language", SOURCE, golden_dir("language") / "config.json", out)
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
import converters
from perceiver_torch import serialization
def slow(path, tensors, metadata=None, *, consume=False):
    with open(path, "wb") as file:
        file.write(b"\\0" * 65536)
        file.flush()
        print("writing", flush=True)
        time.sleep(600)
serialization.write_safetensors = slow
converters.convert("language", sys.argv[1], sys.argv[2], sys.argv[3])
"""


def test_a_kill_mid_write_leaves_at_most_one_named_temp_file(tmp_path):
    out = tmp_path / "out.safetensors"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(SOURCE),
                              str(golden_dir("language") / "config.json"), str(out)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # blocks until the writer is mid-file
        assert line.strip() == "writing", child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith(".out.safetensors.") and left[0].endswith(".tmp"), left
    assert not out.exists()
    # The next successful conversion is unaffected by the stray temp file.
    converters.convert("language", SOURCE, golden_dir("language") / "config.json", out)
    assert pt.load_model(out) is not None

"""Names and values that come from a file or an argument reach messages escaped, cut short and counted.

Found by an audit: a tensor named with terminal escapes cleared the screen and printed fake output through
`perceiver-zoo predict`; a 4 MiB module name made a 4 MiB error; a YAML alias bomb repr'd to gigabytes; an
output name of 240 bytes was refused because the temp file beside it was 22 bytes longer; a checkpoint whose
file name is not UTF-8 failed on writing its metadata; device 'cpu:0' was blamed on the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open

import perceiver_torch as pt
from converters import ConversionError, convert
from perceiver_torch.message_text import printable, problem_lines
from perceiver_torch.safetensors_io import read_header, write_safetensors
from perceiver_torch.serialization import atomic_write, usable_device

from .conftest import golden_dir

ESCAPE = "\x1b[2J\x1b[31mperceiver-zoo: loaded OK\x1b[0m\n"


def test_printable_escapes_controls_and_cuts_long_text():
    assert printable("blocks.0.attention.weight") == "blocks.0.attention.weight"  # ordinary names unchanged
    assert printable("naïve/ünïcode") == "naïve/ünïcode"
    shown = printable(ESCAPE)
    assert shown.isprintable() and "\\x1b[2J" in shown and shown.endswith("\\x1b[0m\\n")
    long = printable("m" * 4_000_000)
    assert long == "m" * 300 + "...(4000000 characters)"
    text = problem_lines([f"problem {i}" for i in range(60)])
    assert text.count("\n") == 51 and text.endswith("problem 49\n  ... and 10 more")


def test_a_checkpoint_tensor_named_with_escapes_is_reported_escaped(converted, tmp_path):
    path = converted("language", "language")
    header = read_header(path)
    with safe_open(path, "pt") as f:
        tensors = {name: f.get_tensor(name) for name in header.tensors}
    tensors[ESCAPE] = torch.zeros(0)
    bad = tmp_path / "escape.safetensors"
    write_safetensors(bad, tensors, header.metadata)
    with pytest.raises(pt.CheckpointFormatError) as info:
        pt.load_model(bad)
    message = str(info.value)
    assert "\x1b" not in message and message.count("\n") == 1
    assert "unexpected tensor \\x1b[2J\\x1b[31mperceiver-zoo: loaded OK\\x1b[0m\\n [0] F32" in message


def test_conversion_problems_are_escaped_clipped_and_counted():
    error = ConversionError([f"unused in checkpoint: {ESCAPE}{i} (3,)" for i in range(70)] + ["x" * 10_000])
    message = str(error)
    assert "\x1b" not in message and message.count("\n") == 51 and message.endswith("... and 21 more")
    assert error.problems[0].startswith("unused in checkpoint: \x1b")  # the list itself is kept as it was


def test_cpu_with_an_index_is_the_cpu_and_a_missing_backend_is_one_line(converted):
    path = converted("language", "language")
    assert usable_device("cpu:0") == torch.device("cpu")
    assert pt.load_model(path, device="cpu:0").device == torch.device("cpu")
    for device in ("mps", "xla"):
        if device == "mps" and torch.backends.mps.is_available():
            continue  # a Mac: mps is usable there
        with pytest.raises(ValueError) as info:
            usable_device(device)
        assert str(info.value).startswith(f"device '{device}' cannot be used here: ") and "\n" not in str(info.value)


def test_an_output_name_of_up_to_255_bytes_is_written(tmp_path):
    for name in ("a" * 240 + ".safetensors", "é" * 121 + ".bin"):  # 252 and 246 bytes
        assert len(os.fsencode(name)) <= 255
        path = atomic_write(tmp_path / name, lambda tmp: open(tmp, "wb").write(b"x"))
        assert path.read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == sorted(["a" * 240 + ".safetensors", "é" * 121 + ".bin"])


def test_a_checkpoint_whose_file_name_is_not_utf8_converts(tmp_path):
    family = golden_dir("language")
    source = os.path.join(os.fsencode(tmp_path), b"ck\xff.pickle")
    shutil.copyfile(family / "checkpoint.pickle", source)
    out = convert("language", os.fsdecode(source), family / "config.json", tmp_path / "out.safetensors")
    assert read_header(out).metadata["source_name"] == "ck\\xff.pickle"
    assert json.loads(read_header(out).metadata["config"]) == json.loads((family / "config.json").read_text())
    with torch.no_grad():
        assert torch.isfinite(pt.load_model(out)(torch.zeros(1, 4, dtype=torch.long))).all()

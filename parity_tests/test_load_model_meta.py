"""load_model builds on the meta device and assigns the file's tensors: the same model as building and copying.

Before, load_model built a randomly initialised model and copied the weights into it. Now
nothing is initialised: the model is built on the meta device and the memory-mapped tensors
are assigned. Every task's outputs on its golden inputs must be bit-identical to the old way
(a buffer the state dict does not hold would be left on meta, or recomputed differently).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import perceiver_torch as pt
from converters.tasks import run_upstream_layout
from perceiver_torch.registry import build_model
from perceiver_torch.safetensors_io import read_header, write_safetensors
from perceiver_torch.serialization import save_checkpoint

from .conftest import GOLDEN_TASKS as FAMILIES
from .conftest import convert_golden, golden_config, golden_io


def _outputs(task: str, model, family: str) -> dict[str, np.ndarray]:
    inputs = {k.removeprefix("input/"): v for k, v in golden_io(family).items() if k.startswith("input/")}
    with torch.no_grad():
        return {k: np.asarray(v) for k, v in run_upstream_layout(task, model, inputs).items()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_meta_built_model_is_bit_identical_to_an_initialised_one_loaded(tmp_path, family):
    task = FAMILIES[family]
    path = convert_golden(task, family, tmp_path)
    loaded = pt.load_model(path)
    reference = build_model(task, golden_config(family))
    reference.load_state_dict(load_file(str(path)), strict=True)
    reference.eval()
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert not [name for name, t in tensors.items() if t.is_meta]
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    new, old = _outputs(task, loaded, family), _outputs(task, reference, family)
    assert sorted(new) == sorted(old)
    for key in new:
        assert np.array_equal(new[key], old[key]), f"{family} {key}: max difference {np.abs(new[key] - old[key]).max()}"


def test_loaded_weights_can_be_trained_without_touching_the_file(tmp_path):
    """The tensors are memory-mapped copy-on-write: updating them in place never writes to the file."""
    path = convert_golden("language", "language", tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = pt.load_model(path).train()
    ids = torch.randint(0, 262, (2, 16))
    loss = model(ids, torch.ones_like(ids)).logsumexp(-1).mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.state_dict()["encoder.latents.embeddings"],
                           load_file(str(path))["encoder.latents.embeddings"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_streamed_files_are_standard_safetensors(tmp_path):
    """What the project writes itself, safetensors reads back exactly (dtypes, shapes, values, metadata)."""
    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3).T,  # not contiguous: laid out on write
               "a": torch.tensor([True, False]), "c": torch.zeros(0, 4, dtype=torch.bfloat16),
               "d": np.arange(5, dtype=">f4")}  # big-endian numpy: written little-endian
    buffer = io.BytesIO()
    write_safetensors(buffer, tensors, {"k": "v"})
    path = tmp_path / "x.safetensors"
    path.write_bytes(buffer.getvalue())
    back = load_file(str(path))
    assert torch.equal(back["b"], tensors["b"]) and torch.equal(back["a"], tensors["a"])
    assert back["c"].dtype == torch.bfloat16 and back["c"].shape == (0, 4)
    assert torch.equal(back["d"], torch.arange(5, dtype=torch.float32))
    header = read_header(path)
    assert header.metadata == {"k": "v"} and header.data_start % 8 == 0


@pytest.mark.parametrize("reserve", ["fallocate", "unsupported"])
def test_file_and_stream_writes_give_the_same_bytes(tmp_path, monkeypatch, reserve):
    """To a path the file's blocks are reserved first (skipped where the file system cannot); to an open
    file the tensors are only written. Same bytes either way."""
    import errno

    from perceiver_torch import safetensors_io

    if reserve == "unsupported":
        def unsupported(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, "not supported")
        monkeypatch.setattr(safetensors_io.os, "posix_fallocate", unsupported)
    rng = np.random.default_rng(0)
    tensors = {"t": rng.standard_normal((70, 3000)).astype(np.float32).T,  # laid out on write
               "big_endian": rng.standard_normal(5).astype(">f4"), "half": torch.ones(3, dtype=torch.float16),
               "bf16": torch.ones(2, 2, dtype=torch.bfloat16).T, "flags": np.array([True, False, True]),
               "empty": np.zeros((0, 3), np.float32), "i64": torch.arange(7)}
    stream = io.BytesIO()
    write_safetensors(stream, tensors, {"k": "v"})
    write_safetensors(tmp_path / "f.safetensors", tensors, {"k": "v"})
    assert (tmp_path / "f.safetensors").read_bytes() == stream.getvalue()


@pytest.mark.parametrize("dtype", [[], {}], ids=["list", "object"])
def test_an_unhashable_dtype_is_refused_naming_the_file_and_tensor(tmp_path, dtype):
    """The dtype was looked up in a dict as given: a list or an object raised a bare TypeError (unhashable)."""
    header = json.dumps({"__metadata__": {"format": "perceiver-torch"},
                         "t": {"dtype": dtype, "shape": [], "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(pt.CheckpointFormatError, match=rf"{re.escape(str(path))}[\s\S]*tensor 't': unknown dtype"):
        pt.load_model(path)


@pytest.mark.parametrize("metadata", [{"k": "x" * (16 << 20)}, {"k": 1}])
def test_a_refused_header_leaves_the_path_untouched(tmp_path, metadata):
    """A header a reader would refuse (too large), or metadata that is not str to str, is refused before the
    path is opened: an existing file keeps its bytes, and no new file is made."""
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    write_safetensors(old, {"a": torch.ones(3)}, {"k": "v"})
    before = old.read_bytes()
    for path in (old, new):
        with pytest.raises((ValueError, TypeError), match=r"header would be \d+ bytes|must map str to str"):
            write_safetensors(path, {"a": torch.zeros(1 << 20)}, metadata)
    assert old.read_bytes() == before and not new.exists()


def test_path_writes_replace_a_longer_file_exactly_without_truncating_it_to_zero(tmp_path, monkeypatch):
    """An existing, longer file at the path ends up holding exactly the new bytes (its tail cut at the end),
    and it is never opened with O_TRUNC: on ext4 a truncation to zero makes close() write the file back
    (measured 0.23 s of a released-size conversion)."""
    from perceiver_torch import safetensors_io

    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4).T}
    stream = io.BytesIO()
    write_safetensors(stream, tensors, {"k": "v"})
    path = tmp_path / "f.safetensors"
    path.write_bytes(b"x" * (3 * len(stream.getvalue())))
    flags = []
    original = safetensors_io.os.open

    def recording(file, flag, *args, **kwargs):
        flags.append(flag)
        return original(file, flag, *args, **kwargs)

    monkeypatch.setattr(safetensors_io.os, "open", recording)
    write_safetensors(path, tensors, {"k": "v"})
    assert path.read_bytes() == stream.getvalue()
    assert flags and not any(flag & os.O_TRUNC for flag in flags)


@pytest.mark.parametrize("staging_bytes", [64, 1000, 32 << 20])
def test_strided_arrays_are_laid_out_in_slices_through_the_staging_buffer(monkeypatch, staging_bytes):
    """Transposed and strided numpy views go through the reused staging buffer in slices of their first
    axis (64 bytes: rows wider than the buffer are laid out whole; 1000: many slices); same bytes as
    laying each array out in full."""
    from perceiver_torch import safetensors_io

    rng = np.random.default_rng(1)
    tensors = {"t": rng.standard_normal((13, 37)).astype(np.float32).T, "conv": rng.standard_normal(
        (3, 3, 4, 5)).astype(np.float32).transpose(3, 2, 0, 1), "every_other": np.arange(40, dtype=np.int64)[::2],
        "flags": np.array([[True, False], [False, False]]).T, "half": np.ones((6, 3), np.float16).T,
        "flipped": np.arange(12, dtype=np.float32).reshape(3, 4)[::-1, ::2]}  # negative strides: laid out whole
    assert not any(v.flags.c_contiguous for v in tensors.values())
    expected = io.BytesIO()
    expected.write(safetensors_io.canonical_header(tensors, None))
    for name in sorted(tensors):
        expected.write(np.ascontiguousarray(tensors[name]).tobytes())
    monkeypatch.setattr(safetensors_io, "STAGING_BYTES", staging_bytes)
    written = io.BytesIO()
    write_safetensors(written, tensors)
    assert written.getvalue() == expected.getvalue()


def test_save_checkpoint_consumes_what_it_writes(tmp_path):
    config = golden_config("language")
    state = {k: v.clone() for k, v in build_model("language", config).state_dict().items()}
    names = sorted(state)
    expected = {k: v.clone() for k, v in state.items()}
    path = save_checkpoint(state, tmp_path / "m.safetensors", "language", config, consume=True)
    assert state == {}, "each tensor is released once written"
    back = load_file(str(path))
    assert sorted(back) == names and all(torch.equal(back[k], expected[k]) for k in names)


def test_save_checkpoint_refuses_an_invalid_config(tmp_path):
    config = golden_config("language")
    config["encoder"]["num_blocks"] = 0
    with pytest.raises(pt.ConfigError, match="encoder.num_blocks"):
        save_checkpoint({}, tmp_path / "m.safetensors", "language", config)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        pt.load_model(tmp_path / "nope.safetensors")
    with pytest.raises(pt.CheckpointFormatError, match="is a directory"):
        pt.load_model(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a pipe that no process writes to blocks forever; it is refused as not a regular file. In a
    child process with a time limit, so that a regression fails instead of hanging the suite."""
    import subprocess
    import sys

    pipe = tmp_path / "model.safetensors"
    os.mkfifo(pipe)
    code = ("import sys, perceiver_torch as pt\n"
            "from perceiver_torch.serialization import read_metadata\n"
            "for read in (pt.load_model, read_metadata):\n"
            "    try:\n        read(sys.argv[1])\n    except pt.CheckpointFormatError as e:\n        print(e)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's package in the child
    out = subprocess.run([sys.executable, "-c", code, str(pipe)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": repo})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{pipe} is not a regular file (a pipe, socket or device); a safetensors "
                                       "file is expected."] * 2


@pytest.mark.parametrize("metadata, found", [
    ({"format": "perceiver-torch", "config": "{}"}, "'config', 'format'"),
    ({"format": "perceiver-torch", "task": "language"}, "'format', 'task'"),
], ids=["no-task", "no-config"])
def test_perceiver_metadata_without_task_or_config_is_refused_naming_the_file(tmp_path, metadata, found):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"x": np.zeros(1, np.float32)}, metadata)
    with pytest.raises(pt.CheckpointFormatError) as err:
        pt.load_model(path)
    assert str(err.value) == (f"{path} has no perceiver-torch metadata (expected keys format='perceiver-torch', task, "
                              f"config; found [{found}]); its perceiver-torch metadata is incomplete (a damaged or "
                              "hand-edited file): write it again with perceiver_torch.save_model or perceiver-convert.")


def test_large_finite_weights_whose_sum_overflows_are_loaded(tmp_path):
    # The fast finiteness check sums each tensor; a sum of large finite values overflows to inf and must not be
    # taken for a NaN or Inf in the file.
    config = golden_config("language")
    state = build_model("language", config).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() >= 2)
    state[name] = torch.full_like(state[name], 3e38)
    assert not torch.isfinite(state[name].sum())
    path = save_checkpoint(state, tmp_path / "m.safetensors", "language", config)
    model = pt.load_model(path)
    assert torch.equal(model.state_dict()[name], state[name])

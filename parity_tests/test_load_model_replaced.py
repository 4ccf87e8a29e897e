"""load_model reads a file's header, then opens it again for the tensors: a file replaced in between (save_model or
perceiver-convert --force running meanwhile) must not give a model built from one file's config and filled with
the other's weights. With equal shapes (here: other head counts), nothing else would notice."""

from __future__ import annotations

import os

import pytest

import perceiver_torch as pt
import perceiver_torch.serialization as serialization
from perceiver_torch.safetensors_io import CheckpointFormatError

from .conftest import golden_config


def _heads(model) -> int:
    return model.config["encoder"]["num_self_attend_heads"]


def test_a_file_replaced_between_header_and_tensors_is_refused(tmp_path, monkeypatch):
    config = golden_config("language")
    other = golden_config("language")
    other["encoder"]["num_self_attend_heads"] = 2  # the same tensor shapes, another model
    path = tmp_path / "model.safetensors"
    pt.save_model(pt.build_model("language", config), path)
    replacement = pt.build_model("language", other)
    opened = serialization.safe_open

    def replace_then_open(*args, **kwargs):
        pt.save_model(replacement, path)  # atomic: a new file renamed over the one whose header was read
        return opened(*args, **kwargs)

    monkeypatch.setattr(serialization, "safe_open", replace_then_open)
    with pytest.raises(CheckpointFormatError, match=f"{path} was replaced while it was being read; load it again"):
        pt.load_model(path)
    monkeypatch.setattr(serialization, "safe_open", opened)
    assert _heads(pt.load_model(path)) == 2  # the new file, whole


def test_a_file_left_alone_loads(tmp_path):
    path = tmp_path / "model.safetensors"
    pt.save_model(pt.build_model("language", golden_config("language")), path)
    assert _heads(pt.load_model(path)) == 4


def _other_file_bytes(tmp_path) -> bytes:
    other = golden_config("language")
    other["encoder"]["num_self_attend_heads"] = 2
    return pt.save_model(pt.build_model("language", other), tmp_path / "other.safetensors").read_bytes()


def test_a_file_rewritten_in_place_between_header_and_tensors_is_refused(tmp_path, monkeypatch):
    """Not every writer renames (safetensors' own save_file rewrites the file): the same inode and size with other
    bytes is told apart by its modification time."""
    path = tmp_path / "model.safetensors"
    pt.save_model(pt.build_model("language", golden_config("language")), path)
    replacement = _other_file_bytes(tmp_path)
    assert len(replacement) == path.stat().st_size
    opened = serialization.safe_open

    def rewrite_then_open(*args, **kwargs):
        with open(path, "r+b") as f:
            f.write(replacement)
        return opened(*args, **kwargs)

    monkeypatch.setattr(serialization, "safe_open", rewrite_then_open)
    with pytest.raises(CheckpointFormatError, match="was replaced while it was being read"):
        pt.load_model(path)


def test_a_replacement_given_the_old_times_is_refused(tmp_path, monkeypatch):
    """A copy that keeps times (cp -p, rsync -t) renamed over the file: a new inode all the same."""
    path = tmp_path / "model.safetensors"
    pt.save_model(pt.build_model("language", golden_config("language")), path)
    (tmp_path / "copy").write_bytes(_other_file_bytes(tmp_path))
    before = path.stat()
    opened = serialization.safe_open

    def replace_keeping_times(*args, **kwargs):
        os.utime(tmp_path / "copy", ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(tmp_path / "copy", path)
        return opened(*args, **kwargs)

    monkeypatch.setattr(serialization, "safe_open", replace_keeping_times)
    with pytest.raises(CheckpointFormatError, match="was replaced while it was being read"):
        pt.load_model(path)

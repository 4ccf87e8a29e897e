"""The allow-list unpickler reads the release layout and refuses anything else."""

import os
import pickle

import numpy as np
import pytest

from converters import CheckpointReadError, UnsafePickleError, load_haiku_checkpoint

from .conftest import GOLDEN

FAMILIES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


@pytest.mark.parametrize("family", FAMILIES)
def test_release_layout_and_plain_layout_hold_the_same_arrays(family):
    release = load_haiku_checkpoint(GOLDEN / family / "checkpoint.pickle").flat()
    plain = load_haiku_checkpoint(GOLDEN / family / "checkpoint_plain.pickle").flat()
    assert release.keys() == plain.keys() and release
    for key in release:
        assert release[key].dtype == plain[key].dtype
        np.testing.assert_array_equal(release[key], plain[key], err_msg=key)


def test_imagenet_conv_state_is_read():
    ckpt = load_haiku_checkpoint(GOLDEN / "imagenet_conv" / "checkpoint.pickle")
    assert any(k.endswith("mean_ema") for k in ckpt.state)
    assert ckpt.params


def test_language_has_no_state():
    assert load_haiku_checkpoint(GOLDEN / "language" / "checkpoint.pickle").state == {}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_code_execution_and_names_the_global(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"params": {"m": {"w": _Evil()}}}))
    with pytest.raises(UnsafePickleError, match=r"'(posix|os|nt)\.system'"):
        load_haiku_checkpoint(path)


def test_refuses_builtins_eval(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_haiku_checkpoint(path)


def test_truncated_file_gives_clear_error(tmp_path):
    data = (GOLDEN / "language" / "checkpoint.pickle").read_bytes()
    path = tmp_path / "truncated.pickle"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="truncated.pickle is not a readable checkpoint pickle"):
        load_haiku_checkpoint(path)


def test_non_pickle_file_gives_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("definitely not a pickle\n")
    with pytest.raises(CheckpointReadError, match="not a readable checkpoint pickle"):
        load_haiku_checkpoint(path)


def test_non_mapping_pickle_is_rejected(tmp_path):
    path = tmp_path / "list.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointReadError, match="expected a mapping"):
        load_haiku_checkpoint(path)

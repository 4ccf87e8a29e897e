"""serialization.atomic_write: all or nothing, with the permissions a plain open() would give."""

import os
import stat

import pytest

from perceiver_torch.serialization import atomic_write, check_output_path, same_file


def _write_bytes(data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write


def test_written_file_has_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "out.bin", _write_bytes(b"abc"))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_leaves_nothing_behind(tmp_path):
    def failing(tmp):
        _write_bytes(b"partial")(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "out.bin", failing)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert target.read_bytes() == b"old"
    atomic_write(target, _write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def test_failed_write_removes_the_parent_directories_it_created(tmp_path):
    # -o new/a/b/x.safetensors with a NaN found mid-write used to leave new/a/b/ behind.
    (tmp_path / "kept").mkdir()

    def failing(tmp):
        _write_bytes(b"partial")(tmp)
        raise RuntimeError("non-finite values")

    for target in (tmp_path / "new" / "a" / "b" / "x.bin", tmp_path / "kept" / "c" / "x.bin"):
        with pytest.raises(RuntimeError, match="non-finite"):
            atomic_write(target, failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_a_created_directory_that_another_writer_used_meanwhile_is_kept(tmp_path):
    def failing(tmp):
        (tmp_path / "new" / "other.bin").write_bytes(b"not ours")
        raise RuntimeError("failed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new" / "a" / "x.bin", failing)
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["other.bin"]


def test_same_file_sees_through_spellings_and_links_but_not_lookalikes(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.bin").symlink_to(a)
    os.link(a, tmp_path / "hard.bin")
    (tmp_path / "copy.bin").write_bytes(b"x")
    assert same_file(a, tmp_path / "sub" / ".." / "a.bin")
    assert same_file(tmp_path / "link.bin", a)
    assert same_file(a, tmp_path / "hard.bin")
    assert same_file(tmp_path / "new.bin", tmp_path / "sub" / ".." / "new.bin")  # one path, not yet written
    assert not same_file(a, tmp_path / "copy.bin")
    assert not same_file(a, tmp_path / "missing.bin")


def test_an_existing_fifo_or_device_is_never_written_over(tmp_path):
    """As root, a write renamed over /dev/full and left a plain file in its place. An existing output that is not a
    regular file (a FIFO here, a device there, or a link to one) is refused, and left as it was."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    for path in (fifo, tmp_path / "link"):
        with pytest.raises(FileExistsError, match="exists and is not a regular file"):
            check_output_path(path)
        with pytest.raises(FileExistsError, match="exists and is not a regular file"):
            atomic_write(path, _write_bytes(b"abc"))
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(os.listdir(tmp_path)) == ["fifo", "link"]


def test_a_dash_is_not_taken_for_a_file_named_dash(tmp_path, monkeypatch):
    """'-' reads as standard output elsewhere; a binary file is not written there, and a file named '-' is './-'."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"'-' \(standard output\) is not supported.*'\./-'"):
        check_output_path("-")
    assert check_output_path("./-").name == "-" and os.listdir(tmp_path) == []

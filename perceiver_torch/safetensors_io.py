"""The safetensors container, read and written by the project itself: canonical, streamed and checked.

Writing: `write_safetensors` lays tensors out in name order under a canonical header (JSON with
sorted keys and no spaces, padded with spaces to a multiple of 8 bytes), so the same tensors and
metadata always give the same bytes (the zoo pins artifacts by sha256; safetensors' own writer
emits its metadata in hash order). Tensors are written one at a time from their own storage: a
conversion never holds a second full copy of the weights, and with `consume=True` each is
released once written.

Reading: `read_header` parses and checks a file's header (length, JSON, dtypes, shapes and byte
ranges, which must tile the data section exactly) before anything sized by the file is
allocated; tensors are then taken from the file by `safetensors.safe_open` (memory-mapped).

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
N bytes of JSON ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}),
then the data; offsets are relative to the data's start.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat
import struct
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from .message_text import problem_lines
from .strict_json import loads_strict

# Ours hold a few hundred entries (tens of KB); safetensors itself stops at 100 MB. 16 MB keeps
# the parsed JSON small even when every byte is a distinct number.
MAX_HEADER_BYTES = 16 << 20
MAX_RANK = 8

# The format's dtype name -> (torch dtype, item size in bytes)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
CODES = {dtype: code for code, (dtype, _) in DTYPES.items()}
_NUMPY_CODES: dict[np.dtype, str] = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


class CheckpointFormatError(ValueError):
    """A file is not a valid perceiver-torch checkpoint: its container, metadata, config or tensors."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data section
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int  # absolute offset of the data section
    # The file read (read_header): device, inode, size and times, to tell whether a later open is that file.
    identity: tuple[int, ...] | None = None


def file_identity(info: os.stat_result) -> tuple[int, ...]:
    """Which file, and which version of it, `info` describes. A replaced file (a new inode, or a reused inode
    number with new times) or one rewritten in place (new size or modification time) differs."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _entry(name: str, raw, problems: list[str]) -> TensorEntry | None:
    where = f"tensor {name!r}"
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        problems.append(f"{where}: expected an object with exactly dtype, shape, data_offsets; found {raw!r:.120}")
        return None
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if type(dtype) is not str or dtype not in DTYPES:  # a list or object is unhashable: no dict lookup
        problems.append(f"{where}: unknown dtype {dtype!r:.40}; expected one of {list(DTYPES)}")
        return None
    if not isinstance(shape, list) or len(shape) > MAX_RANK or any(type(d) is not int or d < 0 for d in shape):
        problems.append(f"{where}: shape {shape!r:.120} is not a list of at most {MAX_RANK} non-negative integers")
        return None
    if not isinstance(offsets, list) or len(offsets) != 2 or any(type(o) is not int or o < 0 for o in offsets) \
            or offsets[0] > offsets[1]:
        problems.append(f"{where}: data_offsets {offsets!r:.120} are not [begin, end] with 0 <= begin <= end")
        return None
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != nbytes:
        problems.append(f"{where}: {dtype} {shape} needs {nbytes} bytes; data_offsets {offsets} span "
                        f"{offsets[1] - offsets[0]}")
        return None
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def header_length(prefix: bytes, size: int, where: str | os.PathLike) -> int:
    """The header length N a file of `size` bytes starting with `prefix` (its first 8 bytes) announces,
    checked to fit the file and MAX_HEADER_BYTES, else a `CheckpointFormatError` naming `where`."""
    if len(prefix) < 8:
        raise CheckpointFormatError(f"{where}: {size} bytes is too short for a safetensors file "
                                    "(no 8-byte header length).")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES or length > size - 8:
        raise CheckpointFormatError(
            f"{where}: header length {length} is impossible (file of {size} bytes; at most "
            f"{MAX_HEADER_BYTES} allowed): not a safetensors file, or truncated.")
    return length


def read_header(path: str | os.PathLike) -> Header:
    """Parse and check the header of the safetensors file at `path` (reads the header bytes only).

    Raises `CheckpointFormatError` naming the file and every problem; `FileNotFoundError` when
    there is no file.
    """
    path = Path(path)
    try:
        # Non-blocking: opening a named pipe with no writer would otherwise wait forever (no effect on files).
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)), "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointFormatError(f"{path} is not a regular file (a pipe, socket or device); a "
                                            "safetensors file is expected.")
            size = info.st_size
            length = header_length(f.read(8), size, path)
            raw = f.read(length)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        hint = (f" (a save_pretrained directory: load it with from_pretrained, or name {path / 'model.safetensors'})"
                if (path / "model.safetensors").is_file() else "")
        raise CheckpointFormatError(f"{path} is a directory, not a safetensors file{hint}.") from None
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return dataclasses.replace(parse_header(raw, size, path), identity=file_identity(info))


def parse_header(raw: bytes, size: int, where: str | os.PathLike) -> Header:
    """Parse and check the header bytes `raw` (after the 8-byte length) of a safetensors file of `size` bytes:
    JSON, metadata, dtypes, shapes and byte ranges tiling the data section exactly. Raises
    `CheckpointFormatError` naming `where` and every problem."""
    length = len(raw)
    try:
        parsed = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointFormatError(f"{where}: the safetensors header is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise CheckpointFormatError(f"{where}: the safetensors header must be a JSON object; found "
                                    f"{type(parsed).__name__}.")
    problems: list[str] = []
    metadata = parsed.pop("__metadata__", {})
    if not isinstance(metadata, dict) or any(type(v) is not str for v in metadata.values()):
        problems.append("__metadata__ must map strings to strings")
        metadata = {}
    tensors = {name: entry for name, raw_entry in parsed.items() if (entry := _entry(name, raw_entry, problems))}
    data_size = size - 8 - length
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            what = "overlaps the previous tensor" if entry.begin < position else f"leaves a gap at byte {position}"
            problems.append(f"tensor {name!r}: data_offsets [{entry.begin}, {entry.end}] {what}")
        position = max(position, entry.end)
    if not problems and position != data_size:
        problems.append(f"the tensors span {position} bytes of data; the file holds {data_size} "
                        f"({'truncated' if position > data_size else 'trailing bytes'})")
    if problems:
        raise CheckpointFormatError(f"{where} is not a valid safetensors file: {len(problems)} problem(s)"
                                    + problem_lines(problems))
    return Header(metadata, tensors, 8 + length)


def _as_bytes(value) -> memoryview:
    """The little-endian C-order bytes of a torch tensor (any device) or numpy array."""
    if isinstance(value, torch.Tensor):
        # Raw bytes in the tensor's own (little-endian) layout, not through numpy (no bfloat16 there).
        value = value.detach().to("cpu").contiguous()
        flat = value.reshape(-1).view(torch.uint8) if value.numel() else torch.empty(0, dtype=torch.uint8)
        # numpy's stubs give ndarray the buffer protocol (__buffer__) only for Python 3.12 and later
        return memoryview(flat.numpy())  # type: ignore[arg-type]
    array = np.asarray(value)
    little = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return memoryview(np.ascontiguousarray(array, dtype=little).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _describe(value) -> tuple[str, tuple[int, ...], int]:
    if isinstance(value, torch.Tensor):
        code = CODES.get(value.dtype)
        shape = tuple(value.shape)
    else:
        dtype = np.dtype(value.dtype)
        code = _NUMPY_CODES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
        shape = tuple(value.shape)
    if code is None:
        raise TypeError(f"dtype {value.dtype} cannot be written to safetensors")
    return code, shape, math.prod(shape) * DTYPES[code][1]


def canonical_header(tensors: Mapping, metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and JSON header for `tensors` (torch tensors or numpy arrays) laid out in name order."""
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in sorted(tensors):
        code, shape, nbytes = _describe(tensors[name])
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    if len(text) > MAX_HEADER_BYTES:  # read_header would refuse the file: never write one
        raise ValueError(f"the safetensors header would be {len(text)} bytes, past the {MAX_HEADER_BYTES} a reader "
                         f"takes; its metadata is {sum(len(k) + len(v) for k, v in (metadata or {}).items())} "
                         "characters.")
    return struct.pack("<Q", len(text)) + text


def write_safetensors(destination, tensors: Mapping, metadata: Mapping[str, str] | None = None, *,
                      consume: bool = False) -> None:
    """Write `tensors` ({name: tensor, array or array-like}, any device) to `destination` (a path or binary file).

    Same input, same bytes. Tensors are laid out (made contiguous, little-endian, host-resident)
    and written one at a time (an array-like with `dtype` and `shape` is turned into an array
    only then); with `consume=True` (a mutable mapping) each entry is removed once
    written, so that its memory can be freed before the next one is laid out. To a path, the
    file's blocks are reserved first, so that a full disk fails at once, before any data is
    written.
    """
    header = canonical_header(tensors, metadata)  # what it refuses, it refuses before a path is touched
    if isinstance(destination, (str, os.PathLike)):
        # Opened without O_TRUNC, an old file's tail cut off at the end instead: on ext4 a truncation to zero
        # makes close() start writing the whole file back (auto_da_alloc: 0.23 s of a 0.9 s conversion of the
        # released language checkpoint, measured), which a fresh file left to the page cache does not need.
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        with open(fd, "wb") as f:
            _reserve(f.fileno(), sum(nbytes for *_, nbytes in map(_describe, tensors.values())))
            _write_tensors(f, header, tensors, consume)
            f.truncate()
        return
    _write_tensors(destination, header, tensors, consume)


def _write_tensors(destination, header: bytes, tensors: Mapping, consume: bool) -> None:
    destination.write(header)
    consume = consume and isinstance(tensors, MutableMapping)
    staging = _Staging()
    for name in sorted(tensors):
        value = cast(MutableMapping, tensors).pop(name) if consume else tensors[name]  # consume: a MutableMapping
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            promised = _describe(value)  # what the header says of it
            value = np.asarray(value)  # an array-like made when its turn comes (a conversion reads it from its source)
            if _describe(value) != promised:
                raise ValueError(f"{name!r} became {_describe(value)[:2]} when read, not the {promised[:2]} written "
                                 "in the header")
        if _stageable(value):
            staging.write(destination, value)
        else:
            destination.write(_as_bytes(value))
        del value


# A conversion's arrays are mostly transposed views of the checkpoint's (Haiku's [in, out] kernels).
# Laying them out through one reused buffer with torch's strided copy (blocked; ~3x numpy's
# ascontiguousarray on 1280x1280 transposes here) costs no fresh allocation per tensor.
STAGING_BYTES = 32 << 20


def _stageable(value) -> bool:
    """A non-contiguous numpy array torch can view as it is (native byte order, no negative strides)."""
    return (isinstance(value, np.ndarray) and not value.flags.c_contiguous and value.dtype.isnative
            and value.size > 0 and min(value.strides) >= 0)


class _Staging:
    """A reused host buffer through which non-contiguous numpy arrays are laid out and written, in slices."""

    def __init__(self):
        self._buffer: torch.Tensor | None = None

    def write(self, destination, array: np.ndarray) -> None:
        row_bytes = array.itemsize * math.prod(array.shape[1:])  # not contiguous: at least one axis
        if row_bytes > STAGING_BYTES:  # one slice would not fit: laid out whole (no transpose in ours does this)
            destination.write(_as_bytes(array))
            return
        if self._buffer is None:
            self._buffer = torch.empty(STAGING_BYTES, dtype=torch.uint8)
        rows = STAGING_BYTES // row_bytes
        source = torch.from_numpy(array)
        for start in range(0, source.shape[0], rows):
            part = source[start:start + rows]
            staged = self._buffer[:part.numel() * array.itemsize]
            staged.view(part.dtype).view(part.shape).copy_(part)
            destination.write(memoryview(staged.numpy()))  # type: ignore[arg-type]  # as in _as_bytes


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks up front where the platform and file system can (ENOSPC raised here)."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC, EDQUOT, EFBIG: the disk cannot hold the file

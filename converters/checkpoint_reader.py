"""Read DeepMind's Haiku checkpoint pickles without Haiku, JAX, or arbitrary code.

The release files pickle Haiku `FlatMapping`s of numpy arrays (under numpy 1's `numpy.core`
module names). `restricted_unpickler` runs the pickle's data opcodes itself, resolving only the
globals those files need (`checkpoint_globals`), within a memory budget and a nesting limit;
this module opens the file, checks the resulting tree's layout ({module: {name: array}}, string
names, floating/integer/bool arrays) and names the file, and the parameter's path where there is
one, in every refusal. What is accepted and refused is documented in SECURITY.md.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint_globals import ArrayStub, clip, type_name
from .reader_errors import CheckpointLimitError, CheckpointReadError, UnsafePickleError
from .restricted_unpickler import RestrictedUnpickler
from .stored_arrays import StoredArray, StoredFile

__all__ = [
    "CheckpointLimitError", "CheckpointReadError", "HaikuCheckpoint", "StoredArray", "UnsafePickleError",
    "checkpoint_from_tree", "load_haiku_checkpoint", "loads_haiku_checkpoint", "open_haiku_checkpoint",
]

_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floating point


@dataclass
class HaikuCheckpoint:
    """`params` and `state` as {module_path: {param_name: np.ndarray}}."""

    params: dict[str, dict[str, np.ndarray]]
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # From `open_haiku_checkpoint`: the file its `StoredArray` leaves read from, and what was found in them.
    stored: StoredFile | None = field(default=None, repr=False, compare=False)

    def flat(self) -> dict[str, np.ndarray]:
        """{'params:module/path/name': array, 'state:module/path/name': array}."""
        return _flatten(self.params, self.state, self.stored.source if self.stored is not None else "<checkpoint>")


def _flatten(params: dict, state: dict, source: str) -> dict[str, np.ndarray]:
    """The flat view; two leaves that flatten to one key (module 'a' holding 'b/c', module 'a/b' holding 'c')
    are refused: one would silently replace the other."""
    out, origin = {}, {}
    for kind, tree in (("params", params), ("state", state)):
        for module, leaves in tree.items():
            for name, array in leaves.items():
                key = f"{kind}:{module}/{name}"
                if key in out:
                    first = origin[key]
                    raise CheckpointReadError(
                        f"{source}: {kind} module {clip(first[0])!r} parameter {clip(first[1])!r} and module "
                        f"{clip(module)!r} parameter {clip(name)!r} both flatten to {clip(key)}; each parameter "
                        "path must be unique.")
                out[key], origin[key] = array, (module, name)
    return out


def loads_haiku_checkpoint(data: bytes, source: str = "<bytes>") -> HaikuCheckpoint:
    """A checkpoint from pickle bytes; `source` names them in errors."""
    return _read(io.BytesIO(data), len(data), source)


def load_haiku_checkpoint(path: str | Path) -> HaikuCheckpoint:
    """Read an upstream `.pickle` / `.pystate` file; returns params and state (possibly empty)."""
    path = Path(path)
    fd, size = _open(path)
    with open(fd, "rb") as stream:
        return _read_file(stream, size, path)


@contextmanager
def open_haiku_checkpoint(path: str | Path) -> Iterator[HaikuCheckpoint]:
    """Like `load_haiku_checkpoint`, but arrays of `stored_arrays.DEFER_BYTES` or more stay in the file.

    Those leaves are `StoredArray`s, read one at a time when used (`np.asarray`), while the
    block lasts; the whole file is parsed and checked before the block starts. What reading
    their data finds wrong (non-finite values) is listed in the checkpoint's `stored.problems`.
    """
    path = Path(path)
    fd, size = _open(path)
    stored = StoredFile(fd, str(path))  # owns the descriptor: the arrays read from it after parsing
    try:
        with open(fd, "rb", closefd=False) as stream:
            checkpoint = _read_file(stream, size, path, stored)
        checkpoint.stored = stored
        yield checkpoint
    finally:
        stored.close()


def _open(path: Path) -> tuple[int, int]:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a regular file).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CheckpointReadError(f"{path}: cannot open the checkpoint: {exc.strerror}.") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointReadError(f"{path}: not a regular file; a checkpoint is a .pickle / .pystate file.")
    return fd, info.st_size


def _read_file(stream, size: int, path: Path, stored: StoredFile | None = None) -> HaikuCheckpoint:
    try:
        return _read(stream, size, str(path), stored)
    except OSError as exc:
        raise CheckpointReadError(f"{path}: reading the checkpoint failed: {exc.strerror or exc}.") from None


def checkpoint_from_tree(tree, source: str = "<tree>") -> HaikuCheckpoint:
    """A checkpoint from an in-memory tree in a release pickle's layout (validated like a file)."""
    return _split_tree(tree, source)


def _read(stream, size: int, source: str, stored: StoredFile | None = None) -> HaikuCheckpoint:
    try:
        tree = RestrictedUnpickler(stream, size, source, stored=stored).load()
        return _split_tree(tree, source)
    except (CheckpointReadError, OSError):
        raise
    except MemoryError:
        raise CheckpointLimitError(f"{source}: ran out of memory while reading, within the reader's budget; "
                                   "this machine cannot hold the checkpoint.") from None
    except Exception as exc:
        # A gap in the checks above would land here: still a refusal naming the file, never a stray
        # exception (the fuzz tests have found none).
        raise CheckpointReadError(f"{source} is not a readable checkpoint pickle: "
                                  f"{type(exc).__name__}: {clip(str(exc), 200)}.") from None


def _split_tree(tree, source: str) -> HaikuCheckpoint:
    if not isinstance(tree, dict):
        raise CheckpointReadError(f"{source}: expected a mapping at the top level, found {type_name(tree)}.")
    if "params" in tree and set(tree) <= {"params", "state"}:
        params, state = tree["params"], tree.get("state") or {}
    else:
        params, state = tree, {}
    params, state = _check_tree(params, source, "params"), _check_tree(state, source, "state")
    _flatten(params, state, source)  # refuses two paths that flatten to one key, naming the file
    return HaikuCheckpoint(params, state)


def _check_tree(tree, source: str, kind: str) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(tree, dict):
        raise CheckpointReadError(f"{source}: {kind} must be a mapping, found {type_name(tree)}.")
    out = {}
    for module, leaves in tree.items():
        if not isinstance(module, str):
            raise CheckpointReadError(f"{source}: {kind} has a module key of type {type(module).__name__}; "
                                      "module and parameter names must be strings.")
        if not isinstance(leaves, dict):
            raise CheckpointReadError(f"{source}: {kind} entry {clip(module)!r} is {type_name(leaves)}, not a "
                                      "mapping of arrays.")
        out[module] = {}
        for name, value in leaves.items():
            if not isinstance(name, str):
                raise CheckpointReadError(f"{source}: {kind}:{clip(module)} has a parameter key of type "
                                          f"{type(name).__name__}; module and parameter names must be strings.")
            out[module][name] = _leaf(value, source, f"{kind}:{clip(module)}/{clip(name)}")
    return out


def _leaf(value, source: str, path: str) -> np.ndarray | StoredArray:
    if isinstance(value, ArrayStub):
        if value.refusal is not None:
            raise CheckpointReadError(f"{source}: {path} holds {value.refusal}; parameters must be floating, "
                                      "integer or bool arrays.")
        if value.array is None:
            raise CheckpointReadError(f"{source}: {path} is an array whose data never follows (corrupt).")
        return value.array
    if not isinstance(value, np.ndarray) and not hasattr(value, "__array__"):
        # From a file, anything else is a container, a string, bytes or a number: not a parameter.
        raise CheckpointReadError(f"{source}: {path} is {type_name(value)}, not an array.")
    array = np.asarray(value)  # an in-memory tree's numpy or jax arrays
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise CheckpointReadError(f"{source}: {path} holds {array.dtype} data; parameters must be floating, "
                                  "integer or bool arrays.")
    return array

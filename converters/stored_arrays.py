"""Arrays left in the checkpoint file until they are written: conversion without holding the weights.

`open_haiku_checkpoint` parses a release pickle without reading its large payloads: each becomes
a `StoredArray` (dtype, shape and the payload's byte range, checked against the file while
parsing). The strict merge plans each parameter's layout on it (`then`: shapes are worked out
on a zero-stride stand-in, so no data is touched) and its float32 check (`checked`); the
safetensors writer then asks for one array at a time (`__array__`), which reads its bytes with
one `pread`, applies the plan and hands back a view for the writer to lay out.

A non-finite parameter found while writing is recorded on the `StoredFile` (every one, not only
the first) and the writer carries on; the converter refuses to commit the file if any was. A
file that changed since it was parsed (shorter now) is refused at once.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable

import numpy as np

from .reader_errors import CheckpointReadError

logger = logging.getLogger(__name__)

# Payloads this size or larger stay in the file; smaller ones (biases, layer norms, the reader's own
# b'b' type codes) are read while parsing, as load_haiku_checkpoint reads everything.
DEFER_BYTES = 1 << 16

# check(array, problems): the parameter `array` becomes, or None with the reason added to `problems`.
Check = Callable[[np.ndarray, list[str]], np.ndarray | None]


class StoredFile:
    """The open checkpoint that `StoredArray`s read from, and the problems found in their data."""

    def __init__(self, fd: int, source: str):
        self.fd, self.source = fd, source
        self.problems: list[str] = []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """`nbytes` bytes at `offset`, into a fresh buffer (a bytearray: see the reader's _payload)."""
        if self.fd < 0:
            raise CheckpointReadError(f"{self.source}: the checkpoint was closed before its arrays were read.")
        storage = bytearray(nbytes)
        view, got = memoryview(storage), 0
        while got < nbytes:
            try:
                k = os.preadv(self.fd, [view[got:]], offset + got)
            except OSError as exc:
                raise CheckpointReadError(f"{self.source}: reading {nbytes:,} bytes at byte {offset:,} failed: "
                                          f"{exc.strerror or exc}.") from None
            if not k:
                raise CheckpointReadError(f"{self.source}: the file ends before byte {offset + nbytes:,}, where "
                                          "it held an array when it was parsed: it changed during the conversion.")
            got += k
        return np.frombuffer(storage, np.uint8)


class StoredArray:
    """An array whose bytes are still in the file; `np.asarray` reads them and applies the planned layout."""

    __slots__ = ("file", "offset", "nbytes", "stored_dtype", "stored_shape", "fortran", "transforms", "shape",
                 "check")

    def __init__(self, file: StoredFile, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...],
                 fortran: bool):
        if math.prod(shape) * dtype.itemsize != nbytes:  # the reader checks this; a plan must never read wrong
            raise ValueError(f"{shape} {dtype} does not fill {nbytes} bytes")
        self.file, self.offset, self.nbytes = file, offset, nbytes
        self.stored_dtype, self.stored_shape, self.fortran = dtype, shape, fortran
        self.transforms: tuple[Callable[[np.ndarray], np.ndarray], ...] = ()
        self.shape = shape
        self.check: Check | None = None  # once planned as a float32 parameter (`checked`)

    @property
    def dtype(self) -> np.dtype:
        """What the array will be: float32 once `checked`, else the stored type in native byte order."""
        return np.dtype(np.float32) if self.check is not None else self.stored_dtype.newbyteorder("=")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def then(self, transform: Callable[[np.ndarray], np.ndarray]) -> StoredArray:
        """This array with `transform` (a view such as a transpose) applied when it is read."""
        template = np.broadcast_to(np.zeros((), self.stored_dtype), self.shape)  # zero strides: no data
        other = copy.copy(self)
        other.transforms = (*self.transforms, transform)
        other.shape = tuple(transform(template).shape)
        return other

    def checked(self, check: Check) -> StoredArray:
        """This array, passed through `check(array, problems)` when read: the float32 parameter it becomes, or
        None with the reason added to `problems` (`rules.finite_float32`). A refused array is still handed to
        the writer, as float32, and its reason kept in the file's `problems`: the converter commits nothing then."""
        if self.stored_dtype.kind != "f":
            raise ValueError(f"{self.stored_dtype} is not floating point")
        other = copy.copy(self)
        other.check = check
        return other

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        flat = self.file.read(self.offset, self.nbytes)
        dtype_ = self.stored_dtype
        if not dtype_.isnative:  # swapped in place in our own buffer, as the reader does
            flat.view(dtype_).byteswap(inplace=True)
            dtype_ = dtype_.newbyteorder("=")
        array = flat.view(dtype_).reshape(self.stored_shape, order="F" if self.fortran else "C")
        for transform in self.transforms:
            array = transform(array)
        if self.check is not None:
            checked = self.check(array, self.file.problems)
            if checked is None:
                with np.errstate(over="ignore"):
                    checked = array.astype(np.float32, copy=False)
            array = checked
        return array if dtype is None else array.astype(dtype, copy=False)

"""The globals a checkpoint pickle may name, as stand-ins that build only what the file's bytes hold.

Release files (and numpy / jax / Haiku re-exports of them) name a handful of globals: numpy's
array and scalar reconstructors and its dtype, Haiku's mapping types, jax's array wrapper. None
of the real objects is ever called. Each name resolves to a `StandIn` whose `call` checks its
arguments and builds a numpy *view* of bytes already read from the file (or, for payloads that
`open_haiku_checkpoint` leaves in the file, a `StoredArray` naming their checked byte range):
nothing is allocated because the file claims a size, no array is left uninitialised, no strides
are taken from the file, and no code of the pickle's choosing runs. Non-numeric data (complex, strings, bytes,
void, structured, object) is never built; it becomes a refusal that the tree check reports with
the parameter's path.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from .reader_errors import CheckpointReadError, UnsafePickleError
from .stored_arrays import StoredArray, StoredFile

MAX_NDIM = 32  # numpy's own limit is 64; no parameter has more than a handful of axes

_DESCR = re.compile(r"([biufcSUVOMm])(\d{1,12})\Z")
_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8)}
_KIND_NAMES = {"c": "complex", "S": "bytes", "U": "string", "V": "void", "O": "object",
               "M": "datetime", "m": "timedelta"}


def clip(text: str, limit: int = 120) -> str:
    """`text` shortened for an error message (names in a hostile file can be megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def type_name(obj) -> str:
    """What `obj` is, for a message; never its repr (a hostile object's repr can recurse or be huge)."""
    if isinstance(obj, StandIn):
        return f"the global '{obj.name}'"
    return {Payload: "bytes", FilePayload: "bytes", ArrayStub: "numpy array",
            DtypeStub: "numpy dtype"}.get(type(obj), type(obj).__name__)


class Payload:
    """The bytes of one BINBYTES-family opcode, read into a fresh buffer, as a uint8 array.

    The first array built from it adopts the buffer as its own memory (no copy); a second one
    (the pickle's memo can hand the same bytes out twice) gets a copy, charged to the budget.
    """

    __slots__ = ("data", "adopted")

    def __init__(self, data: np.ndarray):
        self.data = data
        self.adopted = False

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def adopt(self, vm) -> np.ndarray:
        if not self.adopted:
            self.adopted = True
            return self.data
        vm.charge(self.data.nbytes, "a second array from the same bytes")
        return self.data.copy()


class FilePayload:
    """The bytes of one BINBYTES-family opcode left in the file (`open_haiku_checkpoint`): where they are."""

    __slots__ = ("file", "offset", "nbytes")

    def __init__(self, file: StoredFile, offset: int, nbytes: int):
        self.file, self.offset, self.nbytes = file, offset, nbytes


class DtypeStub:
    """A numpy dtype named by the file; only numeric ones ever become a real `np.dtype`."""

    __slots__ = ("descr", "byteorder", "refusal", "built")

    def __init__(self, descr: str):
        self.descr, self.byteorder, self.built = descr, "=", False
        match = _DESCR.match(descr)
        if match is None:
            self.refusal = f"data of the unknown dtype {clip(descr, 40)!r}"
            return
        kind, size = match.group(1), int(match.group(2))
        if size in _NUMERIC_SIZES.get(kind, ()):
            self.refusal = None
        elif kind in "iub":
            self.refusal = f"data of the unknown dtype {descr!r}"
        elif kind == "f":
            self.refusal = f"float{8 * size} data (dtype {descr!r}), which torch cannot hold"
        else:
            self.refusal = f"{_KIND_NAMES[kind]} data (dtype {descr!r})"

    def build(self, vm, state) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
        if self.built:
            vm.fail(UnsafePickleError, "BUILD applied twice to one numpy dtype")
        self.built = True
        if type(state) is not tuple or len(state) not in (8, 9):
            vm.fail(CheckpointReadError, f"a numpy dtype's state is a {type_name(state)}, not the 8- or 9-tuple "
                                         "numpy writes")
        # numpy writes version 3 (8 fields) or, with metadata, 4 (9 fields), and refuses other versions.
        if type(state[0]) is not int or state[0] != len(state) - 5:
            vm.fail(CheckpointReadError, f"a numpy dtype's state has version {clip(repr(state[0]), 40)} with "
                                         f"{len(state)} fields; numpy writes version 3 (8 fields) or 4 (9 fields)")
        byteorder, subarray, names, fields = state[1:5]
        if type(byteorder) is not str or byteorder not in ("<", ">", "|", "="):
            vm.fail(CheckpointReadError, "a numpy dtype's byte order is not one of '<', '>', '|', '='")
        layout = state[5:8]  # elsize, alignment, flags: integers for numpy, (-1, -1, 0) for every numeric type
        if any(type(value) is not int for value in layout) or (len(state) == 9 and state[8] is not None
                                                                and type(state[8]) is not dict):
            vm.fail(CheckpointReadError, f"a numpy dtype's state has elsize, alignment, flags {clip(repr(layout), 60)} "
                                         "and metadata that are not the integers and dict numpy writes")
        if names is not None or fields is not None:
            self.refusal = f"structured data (dtype {self.descr!r} with named fields)"
        elif subarray is not None and self.refusal is None:
            self.refusal = f"subarray data (dtype {self.descr!r})"
        elif self.refusal is None and layout != (-1, -1, 0):
            vm.fail(CheckpointReadError, f"a numpy {self.descr!r} dtype's elsize, alignment, flags are {layout}, not "
                                         "the (-1, -1, 0) numpy writes for numeric types")
        self.byteorder = byteorder

    def numpy(self) -> np.dtype:
        return _numeric_dtype(self.descr, self.byteorder)  # numeric: matched _DESCR and _NUMERIC_SIZES


@functools.cache
def _numeric_dtype(descr: str, byteorder: str) -> np.dtype:
    # At most 11 numeric descriptors x 4 byte orders: cached, as building a dtype costs ~10 us a parameter.
    dtype = np.dtype(descr)
    return dtype.newbyteorder(byteorder) if byteorder in "<>" else dtype


class ArrayStub:
    """An array the pickle is reconstructing: empty until its data arrives, then a numpy view of it."""

    __slots__ = ("array", "refusal", "built")

    def __init__(self):
        self.array, self.refusal, self.built = None, None, False

    def build(self, vm, state) -> None:
        # ndarray.__setstate__'s state: (version, shape, dtype, is_fortran, rawdata), or without version.
        if self.built:
            vm.fail(UnsafePickleError, "BUILD applied twice to one numpy array")
        if type(state) is not tuple or len(state) not in (4, 5):
            vm.fail(CheckpointReadError, f"a numpy array's state is a {type_name(state)}, not the "
                                         "(version, shape, dtype, is_fortran, data) tuple numpy writes")
        if len(state) == 5 and state[0] != 1:
            vm.fail(CheckpointReadError, "a numpy array's state has a version other than 1")
        shape, dtype, fortran, raw = state[-4:]
        if type(fortran) is not bool:
            vm.fail(CheckpointReadError, "a numpy array's is_fortran flag is not a bool")
        self.fill(vm, shape, dtype, fortran, raw)

    def fill(self, vm, shape, dtype, fortran: bool, raw) -> None:
        self.built = True
        if not isinstance(dtype, DtypeStub):
            vm.fail(CheckpointReadError, f"an array's dtype is {type_name(dtype)}, not a numpy dtype")
        if dtype.refusal is not None:
            self.refusal = dtype.refusal  # reported by the tree check, with the parameter's path
            return
        shape = _shape(vm, shape)
        if not isinstance(raw, (Payload, FilePayload)):
            vm.fail(CheckpointReadError, f"an array's data is {type_name(raw)}, not bytes stored in the file")
        np_dtype = dtype.numpy()
        need = math.prod(shape) * np_dtype.itemsize
        if raw.nbytes != need:
            vm.fail(CheckpointReadError, f"an array of shape {shape} and dtype {np_dtype} needs {need:,} bytes, "
                                         f"but its data holds {raw.nbytes:,}")
        if isinstance(raw, FilePayload):  # read when it is written (stored_arrays)
            self.array = StoredArray(raw.file, raw.offset, raw.nbytes, np_dtype, shape, fortran)
            return
        flat = raw.adopt(vm)
        if not np_dtype.isnative:  # swap in place, so callers always get native byte order
            flat.view(np_dtype).byteswap(inplace=True)
            np_dtype = np_dtype.newbyteorder("=")
        self.array = flat.view(np_dtype).reshape(shape, order="F" if fortran else "C")


def _shape(vm, shape) -> tuple[int, ...]:
    if (type(shape) is not tuple or len(shape) > MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)):
        vm.fail(CheckpointReadError, f"an array's shape is not a tuple of at most {MAX_NDIM} non-negative ints")
    return shape


class StandIn:
    """An allow-listed global. Immutable: it has no `__dict__`, and BUILD is never applied to it."""

    __slots__ = ("name", "_call")

    def __init__(self, name: str, call):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_call", call)

    def __setattr__(self, key, value):
        raise AttributeError(f"the stand-in for {self.name} is read-only")

    def call(self, vm, args: tuple):
        if self._call is None:
            vm.fail(UnsafePickleError, f"calling '{self.name}' is refused: it would allocate an array that the "
                                       "file does not fill (uninitialised memory, sizes or strides of the "
                                       "file's choosing); arrays must be rebuilt from bytes stored in the file")
        return self._call(vm, args)


def _arity(vm, name: str, args: tuple, counts: tuple[int, ...]) -> None:
    if len(args) not in counts:
        vm.fail(CheckpointReadError, f"'{name}' called with {len(args)} arguments; numpy / Haiku write "
                                     f"{' or '.join(map(str, counts))}")


def _reconstruct(vm, args: tuple) -> ArrayStub:
    # numpy writes _reconstruct(ndarray, (0,), b'b') and sends shape, dtype and data through BUILD.
    _arity(vm, "numpy.core.multiarray._reconstruct", args, (3,))
    subtype, shape, typecode = args
    if subtype is not NDARRAY:
        vm.fail(UnsafePickleError, f"_reconstruct of {type_name(subtype)} is refused: only numpy.ndarray")
    # numpy would allocate an array of this placeholder shape (and refuses one that is not integers).
    if type(shape) is not tuple or len(shape) != 1 or type(shape[0]) is not int or shape[0] != 0:
        vm.fail(CheckpointReadError, f"_reconstruct's placeholder shape is {clip(repr(shape), 40)}, not the (0,) "
                                     "numpy writes")
    if not isinstance(typecode, Payload) or typecode.data.tobytes() != b"b":
        vm.fail(CheckpointReadError, "_reconstruct's type code is not the b'b' numpy writes")
    return ArrayStub()


def _scalar(vm, args: tuple) -> ArrayStub:
    if len(args) == 1:
        vm.fail(UnsafePickleError, "numpy.core.multiarray.scalar without its bytes is refused: it would allocate "
                                   "a zero-filled value of the file's chosen size")
    _arity(vm, "numpy.core.multiarray.scalar", args, (2,))
    stub = ArrayStub()
    stub.fill(vm, (), args[0], False, args[1])
    return stub


def _frombuffer(vm, args: tuple) -> ArrayStub:
    # numpy >= 1.16 with pickle protocol 5: _frombuffer(buffer, dtype, shape, order).
    _arity(vm, "numpy.core.numeric._frombuffer", args, (4,))
    raw, dtype, shape, order = args
    if type(order) is not str or order not in ("C", "F"):
        vm.fail(CheckpointReadError, "_frombuffer's order is not 'C' or 'F'")
    stub = ArrayStub()
    stub.fill(vm, shape, dtype, order == "F", raw)
    return stub


def _dtype(vm, args: tuple) -> DtypeStub:
    # numpy writes dtype(descr, False, True); the byte order follows by BUILD.
    _arity(vm, "numpy.dtype", args, (1, 3))
    if type(args[0]) is not str:
        vm.fail(CheckpointReadError, f"numpy.dtype called with {type_name(args[0])}, not a type string")
    return DtypeStub(args[0])


def _codecs_encode(vm, args: tuple) -> Payload:
    # Pickle protocol 2 stores bytes as _codecs.encode(text, 'latin1').
    _arity(vm, "_codecs.encode", args, (2,))
    text, encoding = args
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        vm.fail(UnsafePickleError, "_codecs.encode is only allowed as protocol 2 writes bytes: (str, 'latin1')")
    vm.charge(len(text), "bytes")
    try:
        data = text.encode("latin1")
    except UnicodeEncodeError:
        vm.fail(CheckpointReadError, "_codecs.encode given characters outside latin-1")
    return Payload(np.frombuffer(data, np.uint8).copy())


def _empty_bytes(vm, args: tuple) -> Payload:
    # Pickle protocol 2 stores b"" (a zero-size array's data) as bytes().
    if args:
        vm.fail(UnsafePickleError, "bytes() is only allowed without arguments, as protocol 2 writes b''")
    return Payload(np.empty(0, np.uint8))


def _mapping(vm, args: tuple) -> dict:
    # FlatMapping / FlatMap / frozendict / OrderedDict: rebuilt as a plain dict, from a dict or (key, value) pairs.
    _arity(vm, "a Haiku mapping", args, (0, 1))
    if not args:
        return vm.new_dict([])
    (content,) = args
    if type(content) is dict:
        return content
    if type(content) in (list, tuple) and all(type(p) in (list, tuple) and len(p) == 2 for p in content):
        return vm.new_dict(content)
    vm.fail(CheckpointReadError, f"a Haiku mapping built from {type_name(content)}, not a dict or (key, value) pairs")


def _jax_array(vm, args: tuple) -> ArrayStub:
    # jax.Array pickles as _reconstruct_array(numpy's reconstructor, its args, the array's state[, aval state]).
    _arity(vm, "jax._src.array._reconstruct_array", args, (3, 4))
    if args[0] is not RECONSTRUCT or type(args[1]) is not tuple:
        vm.fail(UnsafePickleError, "a jax array must be rebuilt by numpy's _reconstruct")
    stub = _reconstruct(vm, args[1])
    stub.build(vm, args[2])
    return stub


NDARRAY = StandIn("numpy.ndarray", None)
RECONSTRUCT = StandIn("numpy.core.multiarray._reconstruct", _reconstruct)
_SCALAR = StandIn("numpy.core.multiarray.scalar", _scalar)
_FROMBUFFER = StandIn("numpy.core.numeric._frombuffer", _frombuffer)


def _globals() -> dict[tuple[str, str], StandIn]:
    allowed = {("numpy", "ndarray"): NDARRAY, ("numpy", "dtype"): StandIn("numpy.dtype", _dtype),
               ("_codecs", "encode"): StandIn("_codecs.encode", _codecs_encode)}
    for module in ("builtins", "__builtin__"):  # protocol 2 writes Python 2's module names
        allowed[(module, "bytes")] = StandIn(f"{module}.bytes", _empty_bytes)
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 module names
        allowed[(f"{core}.multiarray", "_reconstruct")] = RECONSTRUCT
        allowed[(f"{core}.multiarray", "scalar")] = _SCALAR
        allowed[(f"{core}.numeric", "_frombuffer")] = _FROMBUFFER
    for module, name in (("haiku._src.data_structures", "FlatMapping"), ("haiku._src.data_structures", "FlatMap"),
                         ("haiku.data_structures", "FlatMapping"), ("haiku._src.data_structures", "frozendict"),
                         ("collections", "OrderedDict")):
        allowed[(module, name)] = StandIn(f"{module}.{name}", _mapping)
    for module, name in (("jax._src.array", "_reconstruct_array"),
                         ("jax._src.device_array", "reconstruct_device_array")):
        allowed[(module, name)] = StandIn(f"{module}.{name}", _jax_array)
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], StandIn] = _globals()


def resolve_global(vm, module, name) -> StandIn:
    if type(module) is str and type(name) is str and (module, name) in ALLOWED_GLOBALS:
        return ALLOWED_GLOBALS[(module, name)]
    shown = f"{clip(module, 80)}.{clip(name, 80)}" if type(module) is str and type(name) is str else \
        f"<{type_name(module)}>.<{type_name(name)}>"
    vm.fail(UnsafePickleError, f"refusing to unpickle global '{shown}': checkpoints may only contain Haiku "
                               "mappings and numpy arrays")

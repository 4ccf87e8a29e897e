"""Property-based fuzzing of the checkpoint reader (run inside a sandbox child by test_reader_fuzz).

The property, for every input: the reader returns a checkpoint that a trusted unpickler reads
identically (same names, shapes and bytes; numeric, native-order arrays no larger in total than the
file), or it raises a `CheckpointReadError` naming the input; nothing else, and never a crash
(the child is capped, and the parent names the example it was reading when it died). And the
same file through `open_haiku_checkpoint`, with every payload of 2 bytes or more left in the
file, gives the same arrays when read, and refuses what the reader refuses (except a refusal for
the memory budget: payloads left in the file are not held).

Three sources of inputs: golden pickles with bytes flipped, cut, inserted or deleted (often at
opcode boundaries, where a change alters structure rather than values); random opcode streams mixing
every opcode with argument bytes and meaningful fragments (allowed globals, arrays, dtypes); random
trees of numeric and non-numeric arrays pickled by the real pickle with protocols 2-5.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import re
import struct
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from converters import restricted_unpickler
from converters.checkpoint_reader import checkpoint_from_tree, loads_haiku_checkpoint, open_haiku_checkpoint
from converters.reader_errors import CheckpointLimitError, CheckpointReadError

from . import hostile_pickles as hp

SOURCE = "<fuzzed input>"
GOLDEN_FILES = [hp.GOLDEN / family / name for family in ("language", "imagenet_conv")
                for name in ("checkpoint.pickle", "checkpoint_plain.pickle")]


# ---- the property ---------------------------------------------------------------------------------
class _Trusted(pickle.Unpickler):
    """The reference: plain pickle with the real numpy functions, for inputs our reader accepted."""

    def find_class(self, module, name):
        if name in ("FlatMapping", "FlatMap", "frozendict", "OrderedDict"):
            return lambda *args: dict(*args)
        if (module, name) in {("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("builtins", "bytes"),
                              ("__builtin__", "bytes")} or module.startswith(("numpy.core", "numpy._core")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check(data: bytes, example_path: str) -> tuple[str, str | None]:
    """Read `data` and assert the property; returns 'accepted' or 'refused', and the refusal's gist."""
    Path(example_path).write_bytes(data)  # if the child dies, the parent reports this input
    try:
        ours = loads_haiku_checkpoint(data, SOURCE).flat()
    except CheckpointReadError as exc:
        assert str(exc).startswith(SOURCE), f"the refusal does not name the input: {exc}"
        stored = _read_stored(example_path)
        assert isinstance(stored, CheckpointReadError) or isinstance(exc, CheckpointLimitError), \
            f"refused ({exc}) but read with its arrays left in the file"
        return "refused", type(exc).__name__ + re.sub(r"\d[\d,]*|'[^']*'", "_", str(exc))
    stored = _read_stored(example_path)
    assert not isinstance(stored, Exception), f"read, but refused with its arrays left in the file: {stored}"
    assert stored.keys() == ours.keys()
    for key, array in ours.items():
        assert stored[key].dtype == array.dtype and stored[key].tobytes() == array.tobytes(), key
    total = 0
    for key, array in ours.items():
        assert type(array) is np.ndarray and array.dtype.kind in "biuf" and array.dtype.isnative, key
        total += array.nbytes
    assert total <= len(data), f"{total} bytes of arrays from a {len(data)}-byte file"
    theirs = checkpoint_from_tree(_Trusted(io.BytesIO(data)).load(), "<trusted>").flat()
    assert ours.keys() == theirs.keys()
    for key, array in ours.items():
        other = theirs[key]
        assert array.shape == other.shape and array.dtype == other.dtype.newbyteorder("="), key
        assert array.tobytes() == other.astype(array.dtype).tobytes(), key
    return "accepted", None


def _read_stored(path: str) -> dict[str, np.ndarray] | CheckpointReadError:
    restricted_unpickler.DEFER_BYTES = 2  # every payload but the 1-byte type codes stays in the file (this child only)
    try:
        with open_haiku_checkpoint(path) as checkpoint:
            return {key: np.asarray(value) for key, value in checkpoint.flat().items()}
    except CheckpointReadError as exc:
        return exc


# ---- mutated golden pickles -----------------------------------------------------------------------
_GOLDEN = [(path.read_bytes(), [pos for _, _, pos in pickletools.genops(path.read_bytes())])
           for path in GOLDEN_FILES]


@st.composite
def mutated_golden(draw) -> bytes:
    data, boundaries = draw(st.sampled_from(_GOLDEN))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        if draw(st.booleans()):
            pos = min(draw(st.sampled_from(boundaries)) + draw(st.integers(0, 9)), len(data) - 1)
        else:
            pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if action == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[pos] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        else:
            del data[pos:pos + draw(st.integers(1, 9))]
    return bytes(data)


# ---- random opcode streams ------------------------------------------------------------------------
_PAIRS = ["numpy\ndtype", "numpy\nndarray", "numpy.core.multiarray\n_reconstruct", "numpy.core.multiarray\nscalar",
          "numpy._core.numeric\n_frombuffer", "haiku._src.data_structures\nFlatMapping", "collections\nOrderedDict",
          "_codecs\nencode", "builtins\nbytes", "jax._src.array\n_reconstruct_array", "os\nsystem", "builtins\neval"]
_FRAGMENTS = [
    *(hp.stack_global(*pair.split("\n")) for pair in _PAIRS),
    hp.dtype("f4"), hp.dtype("V1000000000", "|"), hp.dtype("c8"), hp.dtype("f4", ">"),
    hp.f4([1.0, 2.0]), hp.f4([]), hp.text("m"), hp.text("w"), hp.raw(b"b"), hp.raw(b"\0" * 8),
    hp.tup(hp.integer(0)), hp.tup(hp.integer(2), hp.integer(1)), hp.integer(10**12), pickle.MARK,
    pickle.EMPTY_DICT, pickle.EMPTY_LIST, pickle.EMPTY_TUPLE, pickle.SETITEM, pickle.SETITEMS, pickle.APPENDS,
    pickle.REDUCE, pickle.BUILD, pickle.TUPLE, pickle.MEMOIZE, pickle.BINGET + b"\0",
]


def _argument(kind):
    """Argument bytes for a pickletools argument descriptor, sometimes with a lying length prefix."""
    name = kind.name if kind is not None else None
    blob = st.binary(max_size=12)
    fixed = {"uint1": 1, "uint2": 2, "int4": 4, "uint4": 4, "uint8": 8, "float8": 8}
    if name is None:
        return st.just(b"")
    if name in fixed:
        return st.one_of(st.binary(min_size=fixed[name], max_size=fixed[name]),
                         st.just(b"\xff" * fixed[name]), st.just(b"\0" * fixed[name]))
    prefixed = {"long1": "<B", "string1": "<B", "bytes1": "<B", "unicodestring1": "<B", "long4": "<i",
                "string4": "<i", "bytes4": "<I", "unicodestring4": "<I", "bytes8": "<Q", "bytearray8": "<Q",
                "unicodestring8": "<Q"}
    if name in prefixed:
        fmt = prefixed[name]
        honest = blob.map(lambda b: struct.pack(fmt, len(b)) + b)
        lying = st.tuples(st.integers(0, 2 ** (8 * struct.calcsize(fmt) - 1) - 1), blob).map(
            lambda p: struct.pack(fmt, p[0]) + p[1])
        return st.one_of(honest, lying)
    if name == "stringnl_noescape_pair":
        return st.sampled_from(_PAIRS).map(lambda p: p.encode() + b"\n")
    return st.one_of(blob.map(lambda b: b + b"\n"), st.sampled_from([b"1\n", b"'a'\n", b"00\n", b"x\n"]))


_OPCODES = st.sampled_from(pickletools.opcodes).flatmap(
    lambda op: _argument(op.arg).map(lambda arg: op.code.encode("latin1") + arg))


@st.composite
def opcode_stream(draw) -> bytes:
    parts = [hp.proto(draw(st.integers(2, 5)))]
    parts += draw(st.lists(st.one_of(_OPCODES, st.sampled_from(_FRAGMENTS)), max_size=40))
    if draw(st.booleans()):
        parts.append(pickle.STOP)
    return b"".join(parts)


# ---- random trees, pickled by pickle itself -------------------------------------------------------
_DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "|b1", "|i1", "<i4", ">i8", "|u1", "<u2", "<c8", "<U3",
                           "|S2", "|V4", "O"])


@st.composite
def pickled_tree(draw) -> tuple[bytes, str]:
    """The pickle of a random tree, and 'accepted' or 'refused': what the reader must do with it."""
    names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
    arrays = _DTYPES.flatmap(lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements={"O": st.just(None), "|V4": st.just(b"abcd")}.get(dt)))
    leaf = st.one_of(arrays, arrays.map(np.asfortranarray), arrays.map(lambda a: a[()] if a.ndim == 0 else a))
    tree = draw(st.dictionaries(names, st.dictionaries(names, leaf, min_size=1, max_size=3), min_size=1, max_size=3))
    numeric = all(np.asarray(x).dtype.kind in "biuf" for leaves in tree.values() for x in leaves.values())
    if draw(st.booleans()):
        tree = {"params": tree, "state": {}}
    if draw(st.booleans()):
        tree = collections.OrderedDict(tree)
    return pickle.dumps(tree, protocol=draw(st.integers(2, 5))), "accepted" if numeric else "refused"


KINDS = {"mutated_golden": mutated_golden(), "opcode_stream": opcode_stream(), "pickled_tree": pickled_tree()}


def run(kind: str, examples: int, derandomize: bool, example_path: str) -> dict[str, int]:
    """Fuzz with `examples` inputs of `kind`; returns how many were accepted and refused, and the
    number of distinct refusals (class and message with numbers and names blanked)."""
    outcomes: collections.Counter = collections.Counter()
    reasons: set[str] = set()

    @settings(max_examples=examples, derandomize=derandomize, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(KINDS[kind])
    def fuzz(example):
        data, expected = example if isinstance(example, tuple) else (example, None)
        outcome, reason = check(data, example_path)
        assert expected in (None, outcome), f"a tree that should be {expected} was {outcome}: {reason}"
        outcomes[outcome] += 1
        reasons.add(reason)

    fuzz()
    return {**outcomes, "distinct_refusals": len(reasons - {None})}

"""The hostile checkpoint corpus: each case's bytes written opcode by opcode, with the refusal it must get.

`python -m parity_tests.hostile_pickles` rewrites parity_tests/fixtures/hostile/pickles/ (the files
and manifest.json); test_hostile_pickles checks that this module reproduces them byte for byte
and that the reader refuses each one as the manifest says, in a capped child process.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HOSTILE = Path(__file__).parent / "fixtures" / "hostile" / "pickles"
GOLDEN = Path(__file__).parent / "fixtures" / "golden"

# Child-process prologue: import the reader without the converters package's __init__ (which imports
# torch), so a child needs only numpy and the memory cap measures the reader, not torch's address space.
READER_ONLY = """
import sys, types
from pathlib import Path
_package = types.ModuleType("converters")
_package.__path__ = [str(Path.cwd() / "converters")]
sys.modules["converters"] = _package
"""

# Code the sandbox runs before reading an EXT case: another part of the process has registered copyreg
# extensions for os.system, posix.system and builtins.eval and resolved each once, so copyreg's cache
# holds them (plain pickle's EXT opcodes would then hand them out without asking find_class).
EXTENSION_SETUP = r"""
import copyreg, pickle
copyreg.add_extension("os", "system", 0xF0)
copyreg.add_extension("posix", "system", 0x1234)
copyreg.add_extension("builtins", "eval", 0x12345678)
for resolve in (b"\x82\xf0", b"\x83\x34\x12", b"\x84\x78\x56\x34\x12"):
    pickle.loads(b"\x80\x02" + resolve + b".")
assert len(copyreg._extension_cache) == 3
"""


# ---- opcode writers ---------------------------------------------------------------------------------
def proto(version: int = 4) -> bytes:
    return pickle.PROTO + bytes([version])


def text(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) < 256:
        return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def raw(data: bytes) -> bytes:
    if len(data) < 256:
        return pickle.SHORT_BINBYTES + bytes([len(data)]) + data
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def tup(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def stack_global(module: str, name: str) -> bytes:
    return text(module) + text(name) + pickle.STACK_GLOBAL


def call(function: bytes, *args: bytes) -> bytes:
    return function + tup(*args) + pickle.REDUCE


def dtype(descr: str, byteorder: str = "<", fields: bytes | None = None) -> bytes:
    """numpy's pickle of dtype(descr): dtype(descr, False, True), then BUILD with its state tuple."""
    names = pickle.NONE if fields is None else tup(text("a"))
    state = tup(integer(3), text(byteorder), pickle.NONE, names, fields or pickle.NONE,
                integer(-1), integer(-1), integer(0))
    return call(stack_global("numpy", "dtype"), text(descr), pickle.NEWFALSE, pickle.NEWTRUE) + state + pickle.BUILD


def array(shape: tuple[int, ...], dtype_ops: bytes, data_ops: bytes, core: str = "numpy.core") -> bytes:
    """numpy's pickle of an array: _reconstruct(ndarray, (0,), b'b'), then BUILD with (1, shape, dtype, F, data)."""
    stub = call(stack_global(f"{core}.multiarray", "_reconstruct"), stack_global("numpy", "ndarray"),
                tup(integer(0)), raw(b"b"))
    state = tup(integer(1), tup(*map(integer, shape)), dtype_ops, pickle.NEWFALSE, data_ops)
    return stub + state + pickle.BUILD


def f4(values: list[float]) -> bytes:
    return array((len(values),), dtype("f4"), raw(np.asarray(values, "<f4").tobytes()))


def checkpoint(leaf: bytes, module: bytes = b"", name: bytes = b"", version: int = 4) -> bytes:
    """{module: {name: leaf}} (module 'm' and name 'w' unless given as opcodes), as a whole pickle."""
    return (proto(version) + pickle.EMPTY_DICT + (module or text("m")) + pickle.EMPTY_DICT + (name or text("w"))
            + leaf + pickle.SETITEM + pickle.SETITEM + pickle.STOP)


# ---- the cases --------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    file: str
    error: str  # the converters exception class the reader must raise
    message: str  # a substring its message must contain
    what: str
    setup: str | None = None


def _cases() -> list[tuple[Case, bytes]]:
    out: list[tuple[Case, bytes]] = []

    def case(name, data, error, message, what, setup=None, suffix=".pickle"):
        out.append((Case(name, name + suffix, error, message, what, setup), data))

    unsafe = "UnsafePickleError"
    limit = "CheckpointLimitError"
    bad = "CheckpointReadError"
    shell = tup(text("echo pwned"))

    # Code-running pickles, one per opcode family.
    case("global_os_system", checkpoint(pickle.GLOBAL + b"os\nsystem\n" + shell + pickle.REDUCE, version=2),
         unsafe, "'os.system'", "GLOBAL of os.system called by REDUCE")
    case("stack_global_eval", checkpoint(call(stack_global("builtins", "eval"), text("1+1"))),
         unsafe, "'builtins.eval'", "STACK_GLOBAL of builtins.eval called by REDUCE")
    case("stack_global_nonstring", checkpoint(integer(1) + text("system") + pickle.STACK_GLOBAL),
         unsafe, "refusing to unpickle global '<int>.<str>'", "STACK_GLOBAL with a non-string module")
    case("protocol0_global", b"cbuiltins\neval\n(S'1+1'\ntR.", unsafe, "'builtins.eval'",
         "a protocol 0 (text) pickle calling builtins.eval")
    case("inst", checkpoint(pickle.MARK + text("echo pwned") + pickle.INST + b"os\nsystem\n"),
         unsafe, "refusing opcode INST", "INST instantiating os.system")
    case("obj", checkpoint(pickle.MARK + pickle.NONE + pickle.OBJ), unsafe, "refusing opcode OBJ",
         "OBJ")
    case("newobj", checkpoint(pickle.NONE + pickle.EMPTY_TUPLE + pickle.NEWOBJ), unsafe,
         "refusing opcode NEWOBJ", "NEWOBJ")
    case("newobj_ex", checkpoint(pickle.NONE + pickle.EMPTY_TUPLE + pickle.EMPTY_DICT + pickle.NEWOBJ_EX), unsafe,
         "refusing opcode NEWOBJ_EX", "NEWOBJ_EX")
    case("reduce_on_dict", checkpoint(pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.REDUCE), unsafe,
         "REDUCE applied to dict", "REDUCE on something that is not an allowed callable")
    case("reduce_codecs_rot13", checkpoint(call(stack_global("_codecs", "encode"), text("x"), text("rot13"))),
         unsafe, "_codecs.encode is only allowed", "the allowed _codecs.encode with another codec")
    case("reduce_bytes_with_args", checkpoint(call(stack_global("builtins", "bytes"), integer(10**6))),
         unsafe, "bytes() is only allowed without arguments", "bytes(10**6): a zero-filled allocation")
    case("reconstruct_other_type", checkpoint(call(stack_global("numpy.core.multiarray", "_reconstruct"),
                                                   stack_global("numpy", "dtype"), tup(integer(0)), raw(b"b"))),
         unsafe, "_reconstruct of the global 'numpy.dtype'", "_reconstruct of a class other than ndarray")
    case("jax_array_other_function", checkpoint(call(stack_global("jax._src.array", "_reconstruct_array"),
                                                     stack_global("numpy", "dtype"), tup(), tup())),
         unsafe, "must be rebuilt by numpy's _reconstruct", "jax's _reconstruct_array given another function")
    flatmapping = stack_global("haiku._src.data_structures", "FlatMapping")
    attributes = (pickle.EMPTY_DICT + text("__qualname__") + text("pwned") + pickle.SETITEM)
    case("build_on_flatmapping", checkpoint(flatmapping + attributes + pickle.BUILD), unsafe,
         "BUILD on the global 'haiku._src.data_structures.FlatMapping' is refused",
         "BUILD setting __qualname__ on the allow-listed FlatMapping")
    case("build_on_flatmapping_slots", checkpoint(flatmapping + tup(pickle.NONE, attributes) + pickle.BUILD), unsafe,
         "BUILD on the global", "BUILD with (None, slots) state on FlatMapping (setattr path)")
    case("build_on_dict", checkpoint(pickle.EMPTY_DICT + attributes + pickle.BUILD), unsafe, "BUILD on dict",
         "BUILD on a plain container")
    case("build_twice", checkpoint(f4([1.0]) + tup(integer(1), tup(integer(1)), dtype("f4"), pickle.NEWFALSE,
                                                   raw(b"\0\0\0\0")) + pickle.BUILD),
         unsafe, "BUILD applied twice to one numpy array", "a second BUILD on an array already built")
    for opcode, code in (("EXT1", pickle.EXT1 + b"\xf0"), ("EXT2", pickle.EXT2 + struct.pack("<H", 0x1234)),
                         ("EXT4", pickle.EXT4 + struct.pack("<i", 0x12345678))):
        case(opcode.lower(), checkpoint(code + shell + pickle.REDUCE, version=2), unsafe,
             f"refusing opcode {opcode}", f"{opcode} naming os.system, with the extension registered and cached",
             setup=EXTENSION_SETUP)
    case("persid", checkpoint(pickle.PERSID + b"anything\n"), unsafe, "refusing opcode PERSID", "PERSID")
    case("binpersid", checkpoint(text("anything") + pickle.BINPERSID), unsafe, "refusing opcode BINPERSID",
         "BINPERSID")
    case("out_of_band_buffer", checkpoint(pickle.NEXT_BUFFER, version=5), bad, "out-of-band buffers",
         "protocol 5 NEXT_BUFFER (data outside the file)")

    # Allocations the file asks for without supplying the bytes.
    scalar, void = stack_global("numpy.core.multiarray", "scalar"), dtype("V1000000000", "|")
    bomb = (scalar + pickle.MEMOIZE + void + pickle.TUPLE1 + pickle.MEMOIZE + pickle.REDUCE + pickle.POP
            + (pickle.BINGET + b"\x00" + pickle.BINGET + b"\x01" + pickle.REDUCE + pickle.POP) * 50 + pickle.NONE)
    case("scalar_void_bomb", checkpoint(bomb), unsafe, "scalar without its bytes",
         "scalar(dtype('V1000000000')) 51 times: 1 GB zero-filled per call under plain pickle")
    case("scalar_void_short_data", checkpoint(call(scalar, void, raw(b""))), bad,
         "params:m/w holds void data", "scalar of a 1 GB void dtype given no bytes")
    case("scalar_wrong_size", checkpoint(call(scalar, dtype("f8"), raw(b"\0" * 4))), bad,
         "needs 8 bytes, but its data holds 4", "a float64 scalar with 4 bytes of data")
    ndarray = stack_global("numpy", "ndarray")
    case("ndarray_bufferless", checkpoint(call(ndarray, tup(integer(4)), text("f4"))), unsafe,
         "uninitialised memory", "numpy.ndarray((4,), 'f4'): an array of uninitialised memory")
    case("ndarray_1e12", checkpoint(call(ndarray, tup(integer(10**12)), text("f4"))), unsafe,
         "calling 'numpy.ndarray' is refused", "numpy.ndarray((10**12,), 'f4'): 4 TB")
    case("ndarray_stride0", checkpoint(call(ndarray, tup(integer(10**12)), text("f4"), raw(b"\0" * 4), integer(0),
                                            tup(integer(0)))),
         unsafe, "calling 'numpy.ndarray' is refused", "a stride-0 view claiming 10**12 elements of 4 bytes")
    case("as_strided", checkpoint(call(stack_global("numpy.lib.stride_tricks", "as_strided"), f4([0.0]),
                                       tup(integer(10**12)), tup(integer(0)))),
         unsafe, "'numpy.lib.stride_tricks.as_strided'", "stride tricks by name")
    case("binbytes8_2p60", checkpoint(pickle.BINBYTES8 + struct.pack("<Q", 2**60), version=5), bad,
         "claims 1,152,921,504,606,846,976 bytes", "BINBYTES8 claiming 2**60 bytes")
    case("bytearray8_2p60", checkpoint(pickle.BYTEARRAY8 + struct.pack("<Q", 2**60), version=5), bad,
         "claims 1,152,921,504,606,846,976 bytes", "BYTEARRAY8 claiming 2**60 bytes")
    case("binunicode8_2p60", checkpoint(pickle.BINUNICODE8 + struct.pack("<Q", 2**60)), bad,
         "claims 1,152,921,504,606,846,976 bytes", "BINUNICODE8 claiming 2**60 bytes")
    case("array_shape_1e12", checkpoint(array((10**12,), dtype("f4"), raw(b"\0" * 4))), bad,
         "needs 4,000,000,000,000 bytes, but its data holds 4",
         "an array state claiming 10**12 elements, given 4 bytes")
    case("frombuffer_shape_1e12", checkpoint(call(stack_global("numpy._core.numeric", "_frombuffer"),
                                                  raw(b"\0" * 4), dtype("f4"), tup(integer(10**6), integer(10**6)),
                                                  text("C")), version=5),
         bad, "needs 4,000,000,000,000 bytes", "protocol 5 _frombuffer claiming a 10**6 x 10**6 shape")
    case("budget_empty_dicts", proto(4) + pickle.EMPTY_DICT * 300_000, limit, "memory budget",
         "300,000 empty dicts: 72 bytes built per byte read")

    # Nesting.
    deep_key = pickle.EMPTY_TUPLE + pickle.TUPLE1 * 200_000
    case("tuple_key_200k_deep", proto(4) + pickle.EMPTY_DICT + deep_key + pickle.NONE + pickle.SETITEM + pickle.STOP,
         limit, "nest more than 32 deep", "a dict key: a tuple nested 200,000 deep (segfaults plain pickle)")
    case("tuple_key_shallow", proto(4) + pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.TUPLE1 * 3 + pickle.NONE
         + pickle.SETITEM + pickle.STOP, bad, "a mapping key is tuple", "a dict key that is a (shallow) tuple")
    case("tuple_5000_deep_value", checkpoint(pickle.EMPTY_TUPLE + pickle.TUPLE1 * 5000), limit,
         "nest more than 32 deep", "a parameter that is a tuple nested 5,000 deep")
    case("list_100k_deep", checkpoint(pickle.EMPTY_LIST * 100_000 + pickle.APPEND * 99_999), limit,
         "nest more than 32 deep", "lists nested 100,000 deep")
    case("dict_20k_deep", checkpoint((pickle.EMPTY_DICT + text("a")) * 20_000 + pickle.NONE
                                     + pickle.SETITEM * 20_000), limit,
         "nest more than 32 deep", "mappings nested 20,000 deep")
    case("list_cycle", checkpoint(pickle.EMPTY_LIST + pickle.MEMOIZE + pickle.BINGET + b"\x00" + pickle.APPEND),
         bad, "a list contains itself", "a list that contains itself")

    # Malformed streams.
    case("protocol_6", checkpoint(pickle.NONE, version=6), bad, "pickle protocol 6", "an unknown protocol")
    case("trailing_data", checkpoint(f4([1.0])) + b"PK\x03\x04" + b"\0" * 26, bad, "bytes follow the STOP opcode",
         "a zip appended after a valid checkpoint")
    frame = lambda n: pickle.FRAME + struct.pack("<Q", n)  # noqa: E731
    case("frame_straddle", proto(4) + frame(3) + pickle.EMPTY_DICT + pickle.BININT + b"\0" * 4 + pickle.STOP, bad,
         "read across the end of a FRAME", "a 4-byte argument that starts inside a FRAME and ends after it")
    case("frame_nested", proto(4) + frame(30) + pickle.EMPTY_DICT + frame(1) + pickle.STOP + b"\0" * 20, bad,
         "a FRAME begins inside another one", "a FRAME inside a FRAME")
    case("memo_gap", checkpoint(pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 2**32 - 1)), bad,
         "memo entry 4294967295 is written before entry 0", "a memo index of 2**32-1")
    case("memo_undefined", checkpoint(pickle.BINGET + b"\x07"), bad, "memo entry 7 is read before",
         "BINGET of an entry never written")
    case("stack_underflow", proto(4) + pickle.SETITEM + pickle.STOP, bad, "more items than the stack holds",
         "SETITEM on an empty stack")
    case("not_an_opcode", checkpoint(b"\xff"), bad, "byte 0xff is not a pickle opcode", "an undefined opcode")
    case("text_opcode", checkpoint(pickle.INT + b"1\n"), bad, "protocol 0/1", "a text opcode in a binary pickle")
    case("global_name_unterminated", proto(2) + pickle.GLOBAL + b"x" * 1000, bad, "longer than 255 bytes",
         "a GLOBAL whose name never ends")
    case("bad_utf8", checkpoint(pickle.SHORT_BINUNICODE + b"\x02\xff\xfe"), bad, "not valid UTF-8",
         "a string that is not UTF-8")
    case("never_built_array", checkpoint(call(stack_global("numpy.core.multiarray", "_reconstruct"), ndarray,
                                              tup(integer(0)), raw(b"b"))), bad, "data never follows",
         "an array reconstructed but never given its state")
    case("array_state_list", checkpoint(call(stack_global("numpy.core.multiarray", "_reconstruct"), ndarray,
                                             tup(integer(0)), raw(b"b")) + pickle.EMPTY_LIST + pickle.BUILD),
         bad, "a numpy array's state is a list", "an array BUILD with a list as state")
    case("dtype_bad_byteorder", checkpoint(array((1,), dtype("f4", "!"), raw(b"\0" * 4))), bad,
         "byte order is not one of", "a dtype whose byte order is '!'")
    case("mapping_from_int", checkpoint(call(flatmapping, integer(7))), bad, "a Haiku mapping built from int",
         "FlatMapping(7)")
    case("unknown_dtype", checkpoint(array((1,), dtype("(1000000,)f4"), raw(b"\0" * 4))), bad,
         "unknown dtype '(1000000,)f4'", "a subarray dtype string")

    # Truncations of the golden release pickles.
    release = (GOLDEN / "language" / "checkpoint.pickle").read_bytes()
    plain = (GOLDEN / "language" / "checkpoint_plain.pickle").read_bytes()
    for layout, data, offsets in (("release", release, (1, 2, 11, 4096, len(release) // 2, len(release) - 1)),
                                  ("plain", plain, (len(plain) // 3,))):
        for offset in offsets:
            case(f"truncated_{layout}_{offset}", data[:offset], bad, "truncated",
                 f"golden language checkpoint ({layout} layout) cut at byte {offset}")

    # Files that are not pickles.
    zip_buffer = io.BytesIO()
    with zipfile.ZipFile(zip_buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("archive/data.pkl", (2021, 7, 1, 0, 0, 0)), pickle.dumps({}, protocol=2))
        archive.writestr(zipfile.ZipInfo("archive/version", (2021, 7, 1, 0, 0, 0)), b"3\n")
    case("torch_zip", zip_buffer.getvalue(), bad, "zip archive", "a torch.save-style zip archive", suffix=".pt")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    case("safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 4, bad, "safetensors",
         "a safetensors file", suffix=".safetensors")
    npy = io.BytesIO()
    np.save(npy, np.zeros(3, "f4"))
    case("npy", npy.getvalue(), bad, "numpy .npy file", "a numpy .npy file", suffix=".npy")
    case("random_bytes", random.Random(11).randbytes(4096), bad, "not a readable checkpoint pickle",
         "4 KB of random bytes", suffix=".bin")
    case("empty", b"", bad, "the file is empty", "an empty file")
    case("text_file", b"params:\n  w: [1, 2, 3]\n", bad, "it is text", "a YAML text file", suffix=".yaml")

    # Names that are not strings, leaves that are not numeric arrays.
    case("int_module_key", checkpoint(f4([1.0]), module=integer(1)), bad, "module key of type int",
         "a module path that is an int")
    case("float_param_key", checkpoint(f4([1.0]), name=pickle.BINFLOAT + struct.pack(">d", 2.5)), bad,
         "params:m has a parameter key of type float", "a parameter name that is a float")
    case("bytes_key", checkpoint(f4([1.0]), name=raw(b"w")), bad, "a mapping key is bytes",
         "a parameter name that is bytes")
    for descr, data, message in (("c8", b"\0" * 8, "complex data"), ("U1", b"\0" * 4, "string data"),
                                 ("S4", b"abcd", "bytes data"), ("V8", b"\0" * 8, "void data"),
                                 ("M8", b"\0" * 8, "datetime data"), ("f16", b"\0" * 16, "float128 data")):
        case(f"leaf_{descr.lower()}", checkpoint(array((1,), dtype(descr), raw(data))), bad,
             f"params:m/w holds {message}", f"a {descr} array")
    case("leaf_structured", checkpoint(array((1,), dtype("V4", "|", fields=pickle.EMPTY_DICT), raw(b"\0" * 4))),
         bad, "params:m/w holds structured data", "a structured array")
    case("leaf_object", checkpoint(array((1,), dtype("O8", "|"), pickle.EMPTY_LIST)), bad,
         "params:m/w holds object data", "an object array")
    case("leaf_str", checkpoint(text("weights")), bad, "params:m/w is str, not an array", "a string parameter")
    case("leaf_bytes", checkpoint(raw(b"\0" * 16)), bad, "params:m/w is bytes, not an array", "a bytes parameter")
    case("leaf_int", checkpoint(integer(3)), bad, "params:m/w is int, not an array", "a bare int parameter")
    case("leaf_nested_dict", checkpoint(pickle.EMPTY_DICT), bad, "params:m/w is dict, not an array",
         "a third level of mappings")
    case("top_list", proto(4) + pickle.EMPTY_LIST + pickle.STOP, bad, "expected a mapping at the top level",
         "a list at the top level")
    return out


def build() -> tuple[list[Case], dict[str, bytes]]:
    """The manifest entries and each case's bytes, by file name."""
    pairs = _cases()
    names = [c.name for c, _ in pairs]
    assert len(set(names)) == len(names), "case names must be unique"
    return [c for c, _ in pairs], {c.file: data for c, data in pairs}


def manifest_text(cases: list[Case]) -> str:
    return json.dumps({"cases": [asdict(c) for c in cases]}, indent=1) + "\n"


def write(folder: Path = HOSTILE) -> None:
    cases, files = build()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(manifest_text(cases))


if __name__ == "__main__":
    write()
    print(f"wrote {len(build()[0])} cases to {HOSTILE}")

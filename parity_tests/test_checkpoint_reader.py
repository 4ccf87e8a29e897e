"""The allow-list unpickler reads the release layout and refuses anything else."""

import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from converters import (
    CheckpointLimitError,
    CheckpointReadError,
    HaikuCheckpoint,
    UnsafePickleError,
    load_haiku_checkpoint,
)
from converters.checkpoint_globals import ALLOWED_GLOBALS
from converters.checkpoint_reader import loads_haiku_checkpoint
from converters.restricted_unpickler import RestrictedUnpickler

from . import hostile_pickles as hp
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


# ---- what still reads: every protocol, numpy 1 and 2 names, byte orders, layouts ---------------------
def _plain_tree(family):
    ckpt = load_haiku_checkpoint(GOLDEN / family / "checkpoint_plain.pickle")
    return {"params": ckpt.params, "state": ckpt.state} if ckpt.state else ckpt.params


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_current_numpy_pickles_read_identically_at_every_protocol(protocol):
    # Written by this numpy (2.x: numpy._core names; protocol 5: _frombuffer with in-band buffers).
    expected = load_haiku_checkpoint(GOLDEN / "imagenet_conv" / "checkpoint.pickle").flat()
    read = loads_haiku_checkpoint(pickle.dumps(_plain_tree("imagenet_conv"), protocol=protocol)).flat()
    assert read.keys() == expected.keys()
    for key, array in read.items():
        assert array.dtype == expected[key].dtype and array.flags.writeable and array.flags.aligned, key
        np.testing.assert_array_equal(array, expected[key], err_msg=key)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_byte_orders_layouts_scalars_and_empty_arrays_read_as_native_arrays(protocol):
    values = {
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "bool": np.array([True, False]), "int8_scalar": np.int8(-3), "float32_scalar": np.float32(2.5),
        "empty": np.zeros((0, 3), "f4"), "uint16": np.arange(4, dtype="<u2"), "float16": np.ones(3, "f2"),
    }
    read = loads_haiku_checkpoint(pickle.dumps(OrderedDict(m=values), protocol=protocol)).params["m"]
    for name, value in values.items():
        value = np.asarray(value)
        assert read[name].dtype == value.dtype.newbyteorder("=") and read[name].dtype.isnative, name
        assert read[name].shape == value.shape, name
        np.testing.assert_array_equal(read[name], value, err_msg=name)


def test_jax_array_pickles_read_without_jax():
    # jax.Array pickles as jax._src.array._reconstruct_array(numpy's _reconstruct, its args, the state, aval).
    reconstruct = hp.stack_global("numpy._core.multiarray", "_reconstruct")
    stub_args = hp.tup(hp.stack_global("numpy", "ndarray"), hp.tup(hp.integer(0)), hp.raw(b"b"))
    state = hp.tup(hp.integer(1), hp.tup(hp.integer(2)), hp.dtype("f4"), pickle.NEWFALSE,
                   hp.raw(np.array([1.5, -2.0], "<f4").tobytes()))
    aval = pickle.EMPTY_DICT + hp.text("weak_type") + pickle.NEWFALSE + pickle.SETITEM
    leaf = hp.call(hp.stack_global("jax._src.array", "_reconstruct_array"), reconstruct, stub_args, state, aval)
    np.testing.assert_array_equal(loads_haiku_checkpoint(hp.checkpoint(leaf)).params["m"]["w"], [1.5, -2.0])


def test_bytes_shared_through_the_memo_give_independent_arrays():
    data = hp.raw(np.array([1.0, 2.0], "<f4").tobytes())
    first = hp.array((2,), hp.dtype("f4"), data + pickle.MEMOIZE)
    second = hp.array((2,), hp.dtype("f4"), pickle.BINGET + b"\x00")
    inner = pickle.EMPTY_DICT + hp.text("a") + first + pickle.SETITEM + hp.text("b") + second + pickle.SETITEM
    blob = hp.proto(4) + pickle.EMPTY_DICT + hp.text("m") + inner + pickle.SETITEM + pickle.STOP
    read = loads_haiku_checkpoint(blob).params["m"]
    read["a"][0] = 7.0
    assert read["b"][0] == 1.0 and not np.shares_memory(read["a"], read["b"])


def test_flatmapping_stand_in_cannot_be_altered():
    flat = ALLOWED_GLOBALS[("haiku._src.data_structures", "FlatMapping")]
    assert not hasattr(flat, "__dict__")
    for attribute in ("__qualname__", "__defaults__", "name"):
        with pytest.raises(AttributeError):
            setattr(flat, attribute, "pwned")
    assert flat.name == "haiku._src.data_structures.FlatMapping"


# ---- budget and files --------------------------------------------------------------------------------
def test_budget_is_checked_before_allocating_and_the_golden_files_stay_well_within_it():
    data = (GOLDEN / "language" / "checkpoint.pickle").read_bytes()
    reader = RestrictedUnpickler(io.BytesIO(data), len(data), "golden")
    reader.load()
    # Everything charged (payloads, strings, containers, stack and memo slots) stays under 1.5x the
    # file, far inside the budget of 2x + 16 MiB; a file's claims cannot push past it.
    assert reader.used < 1.5 * len(data) < reader.budget
    tight = RestrictedUnpickler(io.BytesIO(data), len(data), "golden", budget=len(data) // 2)
    with pytest.raises(CheckpointLimitError, match="golden: reading .* past its memory budget of"):
        tight.load()


def test_unreadable_paths_are_refused_naming_them(tmp_path):
    with pytest.raises(CheckpointReadError, match=r"missing\.pickle: cannot open the checkpoint"):
        load_haiku_checkpoint(tmp_path / "missing.pickle")
    with pytest.raises(CheckpointReadError, match=f"{tmp_path}: not a regular file"):
        load_haiku_checkpoint(tmp_path)
    fifo = tmp_path / "fifo.pickle"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointReadError, match=r"fifo\.pickle: not a regular file"):
        load_haiku_checkpoint(fifo)  # without O_NONBLOCK, opening a FIFO would wait for a writer forever


def test_opcode_count_is_bounded():
    data = hp.proto(4) + (pickle.NONE + pickle.POP) * 200 + pickle.EMPTY_DICT + pickle.STOP
    reader = RestrictedUnpickler(io.BytesIO(data), len(data), "many.pickle")
    assert reader.max_opcodes == 1_000_000 + len(data) // 64
    reader.max_opcodes = 100
    with pytest.raises(CheckpointLimitError, match=r"many\.pickle: more than 100 opcodes"):
        reader.load()


@pytest.mark.parametrize("protocol", [4, 5])
def test_payloads_larger_than_a_frame_read_back(protocol):
    # pickle writes payloads of 64 KiB or more outside its frames; the golden arrays all fit inside one.
    tree = {"m": {"w": np.arange(300_000, dtype="<f4").reshape(600, 500), "b": np.ones(3, "<f4")}}
    read = loads_haiku_checkpoint(pickle.dumps(tree, protocol=protocol)).params["m"]
    np.testing.assert_array_equal(read["w"], tree["m"]["w"])
    np.testing.assert_array_equal(read["b"], tree["m"]["b"])


@pytest.mark.parametrize("version", [7, 4, 2])
def test_dtype_state_of_another_version_is_refused(version):
    """numpy writes a dtype's state as version 3 (8 fields) or 4 (9 fields, with metadata); the reader
    accepts only those (`-m slow` fuzzing found version 7 accepted here, which numpy's unpickling refuses)."""
    data = (GOLDEN / "language" / "checkpoint.pickle").read_bytes()
    marker = b"(K\x03\x8c\x01<"  # a dtype state: MARK, version 3, byte order '<'
    assert marker in data
    mutated = data.replace(marker, b"(K" + bytes([version]) + b"\x8c\x01<", 1)
    with pytest.raises(CheckpointReadError, match=f"version {version} with 8 fields"):
        loads_haiku_checkpoint(mutated, "mutated.pickle")
    assert loads_haiku_checkpoint(data, "golden.pickle").flat()  # the unmutated file still reads


@pytest.mark.parametrize("replacement", [b"C\x00", b"K\x05", b"J\x00\xca\x9a\x3b"])
def test_reconstruct_placeholder_shape_other_than_numpys_is_refused(replacement):
    """numpy writes `_reconstruct(ndarray, (0,), b'b')`; another placeholder shape (bytes, which numpy's
    unpickling refuses; or a size numpy would allocate) is refused (found by `-m slow` fuzzing)."""
    data = (GOLDEN / "imagenet_conv" / "checkpoint.pickle").read_bytes()
    marker = b"h\x0eK\x00\x85\x94"  # the memoised ndarray, then the placeholder shape (0,)
    assert marker in data
    mutated = data.replace(marker, b"h\x0e" + replacement + b"\x85\x94", 1)
    with pytest.raises(CheckpointReadError, match="placeholder shape .* not the \\(0,\\) numpy writes"):
        loads_haiku_checkpoint(mutated, "mutated.pickle")
    assert loads_haiku_checkpoint(data, "golden.pickle").flat()


@pytest.mark.parametrize("replacement, message", [
    (b"C\x00", "not the integers and dict numpy writes"),  # bytes for flags: numpy's unpickling refuses it
    (b"K\x07", "not the \\(-1, -1, 0\\) numpy writes"),
])
def test_dtype_layout_fields_other_than_numpys_are_refused(replacement, message):
    """A numeric dtype's elsize, alignment and flags are (-1, -1, 0) as numpy writes them (found by `-m slow`
    fuzzing: bytes in the flags field were accepted here)."""
    data = (GOLDEN / "language" / "checkpoint.pickle").read_bytes()
    marker = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # elsize -1, alignment -1, flags 0, TUPLE
    assert marker in data
    mutated = data.replace(marker, b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + replacement + b"t", 1)
    with pytest.raises(CheckpointReadError, match=message):
        loads_haiku_checkpoint(mutated, "mutated.pickle")


@pytest.mark.parametrize("order", ["nested_first", "nested_last"])
def test_two_paths_flattening_to_one_key_are_refused_naming_both(tmp_path, order):
    # Module 'a' with parameter 'b/c' and module 'a/b' with 'c' are both 'params:a/b/c': the later array
    # used to win silently (a crafted file swapped a weight and converted cleanly).
    modules = [("a", {"b/c": np.zeros(2, np.float32)}), ("a/b", {"c": np.ones(2, np.float32)})]
    if order == "nested_last":
        modules.reverse()
    path = tmp_path / "collide.pickle"
    path.write_bytes(pickle.dumps({"params": dict(modules)}, protocol=4))
    for read in (load_haiku_checkpoint, lambda p: loads_haiku_checkpoint(p.read_bytes(), str(p))):
        with pytest.raises(CheckpointReadError, match=r"collide\.pickle: params module .* both flatten to "
                                                      r"params:a/b/c") as info:
            read(path)
        assert "'a'" in str(info.value) and "'b/c'" in str(info.value) and "'a/b'" in str(info.value)


def test_flat_refuses_a_colliding_tree_built_in_memory():
    checkpoint = HaikuCheckpoint({"a": {"b/c": np.zeros(1)}, "a/b": {"c": np.ones(1)}})
    with pytest.raises(CheckpointReadError, match="both flatten to params:a/b/c"):
        checkpoint.flat()
    # params and state are separate namespaces: the same module path in both is not a collision
    assert len(HaikuCheckpoint({"m": {"w": np.zeros(1)}}, {"m": {"w": np.ones(1)}}).flat()) == 2

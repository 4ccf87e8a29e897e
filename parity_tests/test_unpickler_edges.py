"""The restricted unpickler and the checkpoint tree checks at their exact edges: each pickle or tree one step past
what is allowed is refused with the rule it breaks named (the hostile corpus holds the far-out cases)."""

import pickle
import re
import struct

import numpy as np
import pytest

from converters import CheckpointLimitError, CheckpointReadError
from converters.checkpoint_reader import checkpoint_from_tree, loads_haiku_checkpoint
from converters.restricted_unpickler import MAX_DEPTH, RestrictedUnpickler

UNREADABLE = "x.pickle is not a readable checkpoint pickle: "


def _nested_lists(levels: int) -> bytes:
    """`levels` lists nested inside {'m': {'x': ...}}: levels + 2 containers deep."""
    tree: list = []
    for _ in range(levels - 1):
        tree = [tree]
    return pickle.dumps({"m": {"x": tree}}, protocol=4)


def _indirect_cycle() -> bytes:
    a: list = []
    a.append([a])  # a = [b], b = [a]: pickle writes b into a before a is complete
    return pickle.dumps({"m": {"x": a}}, protocol=4)


@pytest.mark.parametrize("data, error, message", [
    # A negative length would be charged against the budget as a credit and read as "the rest of the file".
    (b"\x80\x04" + pickle.LONG4 + struct.pack("<i", -1) + b"\0" * 64 + pickle.STOP, CheckpointReadError,
     UNREADABLE + "a length field claims -1 bytes, but only 65 are left in the file (truncated or corrupt) "
                  "(opcode LONG4 at byte 2)."),
    (b"\x80\x01}.", CheckpointReadError, UNREADABLE + "pickle protocol 1; checkpoints are written with protocols 2 "
                                                      "to 5 (opcode PROTO at byte 0)."),
    (b"\x80\x00}.", CheckpointReadError, UNREADABLE + "pickle protocol 0; checkpoints are written with protocols 2 "
                                                      "to 5 (opcode PROTO at byte 0)."),
    (b"\x80\x06}.", CheckpointReadError, UNREADABLE + "pickle protocol 6; checkpoints are written with protocols 2 "
                                                      "to 5 (opcode PROTO at byte 0)."),
    (b"\x80\x04\x80\x04}.", CheckpointReadError,
     UNREADABLE + "a PROTO opcode inside the pickle (corrupt) (opcode PROTO at byte 2)."),
    (b"\x80\x04(}.", CheckpointReadError,  # a MARK never closed: the object above it is not the whole pickle
     UNREADABLE + "STOP with other than exactly one object on the stack (corrupt) (opcode STOP at byte 4)."),
    (b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93]R.", CheckpointReadError,
     UNREADABLE + "REDUCE's arguments are list, not a tuple (opcode REDUCE at byte 32)."),
    (_nested_lists(MAX_DEPTH - 1), CheckpointLimitError,
     f"x.pickle: containers nest more than {MAX_DEPTH} deep; a checkpoint's tree nests about 5 deep "
     "(opcode SETITEM at byte 116)."),
    (_indirect_cycle(), CheckpointReadError,
     "x.pickle: a list is changed after it was put into another container (a cycle, or a crafted pickle) "
     "(opcode APPEND at byte 30)."),
    (b"\x80\x04}(\x8c\x01a\x8c\x01b\x8c\x01cu.", CheckpointReadError,  # SETITEMS of three items
     UNREADABLE + "a mapping's items do not come in key, value pairs (corrupt) (opcode SETITEMS at byte 13)."),
    (b"\x80\x04N\x94h\x01.", CheckpointReadError,  # one memo entry (0); entry 1 is one past it
     UNREADABLE + "memo entry 1 is read before it is written (corrupt) (opcode BINGET at byte 4)."),
], ids=["long4-negative-length", "protocol-1", "protocol-0", "protocol-6", "proto-inside", "stop-inside-mark",
        "reduce-list-args", "depth-max-plus-1", "indirect-cycle", "odd-setitems", "memo-one-past"])
def test_a_pickle_one_step_past_the_rules_is_refused_naming_the_rule(data, error, message):
    with pytest.raises(error) as err:
        loads_haiku_checkpoint(data, "x.pickle")
    assert type(err.value) is error and str(err.value) == message


def test_nesting_at_the_depth_limit_passes_the_depth_check():
    # The other side of depth-max-plus-1: MAX_DEPTH containers are read, and refused only as not an array.
    with pytest.raises(CheckpointReadError, match=r"^x\.pickle: params:m/x is list, not an array\.$"):
        loads_haiku_checkpoint(_nested_lists(MAX_DEPTH - 2), "x.pickle")


def test_reduce_with_a_tuple_of_arguments_is_read():
    # The other side of reduce-list-args: OrderedDict() as pickle writes it, an empty checkpoint.
    checkpoint = loads_haiku_checkpoint(b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93)R.", "x.pickle")
    assert checkpoint.params == {} and checkpoint.state == {}


W = np.zeros(2, np.float32)


@pytest.mark.parametrize("tree, message", [
    # 'params' beside another key is not the {params, state} layout: read as modules, nothing silently dropped.
    ({"params": {"m": {"w": W}}, "extra": {"x": W}}, "<tree>: params:params/m is dict, not an array."),
    ({"m": W}, "<tree>: params entry 'm' is ndarray, not a mapping of arrays."),
    ({"m": {"x": np.zeros(2, np.complex64)}},
     "<tree>: params:m/x holds complex64 data; parameters must be floating, integer or bool arrays."),
    ({"m": {"x": np.array(["a"])}}, "<tree>: params:m/x holds <U1 data; parameters must be floating, integer or "
                                    "bool arrays."),
    ({"m": {"x": np.array([None])}}, "<tree>: params:m/x holds object data; parameters must be floating, integer "
                                     "or bool arrays."),
], ids=["params-with-sibling", "module-not-mapping", "complex-leaf", "str-leaf", "object-leaf"])
def test_an_in_memory_tree_outside_the_layout_is_refused_naming_the_entry(tree, message):
    with pytest.raises(CheckpointReadError) as err:
        checkpoint_from_tree(tree)
    assert str(err.value) == message


def test_a_file_whose_module_is_not_a_mapping_is_refused_naming_the_entry():
    data = pickle.dumps({"m": W}, protocol=4)
    with pytest.raises(CheckpointReadError, match=re.escape(
            "x.pickle: params entry 'm' is numpy array, not a mapping of arrays.")):
        loads_haiku_checkpoint(data, "x.pickle")


def test_an_unexpected_exception_while_reading_is_still_a_refusal_naming_the_source(monkeypatch):
    # The safety net for a gap in the checks: no known input reaches it, so a fault is injected.
    def stray(self):
        raise KeyError("stray")

    monkeypatch.setattr(RestrictedUnpickler, "load", stray)
    with pytest.raises(CheckpointReadError) as err:
        loads_haiku_checkpoint(b"\x80\x04N.", "x.pickle")
    assert str(err.value) == UNREADABLE + "KeyError: 'stray'."

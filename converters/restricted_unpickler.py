"""A small pickle interpreter for checkpoint files: the data opcodes of protocols 2-5, nothing that runs code.

`pickle.Unpickler` with a `find_class` allow-list is not enough for untrusted files: EXT1/2/4
resolve through copyreg's extension cache without asking `find_class`; BUILD calls `__setstate__`
or sets attributes on whatever is on the stack, an allow-listed function included; REDUCE calls
an allowed callable with arguments of the file's choosing (`numpy.ndarray(shape)` hands out
uninitialised memory, `scalar(dtype('V1000000000'))` zero-fills a gigabyte); BINBYTES8 allocates
the length it claims before reading; SETITEM hashes a key however deeply it nests (a tuple nested
200,000 deep overflows the C stack). This interpreter reads the file as a stream and checks
before it allocates or hashes:

- the opcodes that run code or look outside the file (INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1/2/4,
  PERSID, BINPERSID, out-of-band buffers) are refused; globals resolve only to the stand-ins in
  `checkpoint_globals`, REDUCE calls only those, BUILD applies only to numpy arrays and dtypes;
- a length is compared with what is left of the file before anything is read or allocated, and
  everything built is charged to a budget of BUDGET_FACTOR x the file's size + BUDGET_CONSTANT;
  the number of opcodes is bounded too (OPCODE_CONSTANT + one per BYTES_PER_OPCODE bytes);
- containers nest at most MAX_DEPTH deep, checked as each one is built; mapping keys must be
  str, int, float, bool or None (hashing those cannot recurse); a container cannot be changed
  after it was put into another one (so no cycles, and recorded depths stay true).

Array payloads are read with one `readinto` each straight into the array's own buffer, so the
per-opcode Python loop never touches the bulk of the file. Given a `StoredFile`, payloads of
`DEFER_BYTES` or more are not read at all: the stream skips them and the array records where
they are (`stored_arrays`), for a conversion to read one at a time.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct

import numpy as np

from .checkpoint_globals import ArrayStub, DtypeStub, FilePayload, Payload, StandIn, resolve_global, type_name
from .reader_errors import CheckpointLimitError, CheckpointReadError, UnsafePickleError
from .stored_arrays import DEFER_BYTES, StoredFile

MAX_DEPTH = 32  # a release tree nests about 5 deep (mapping, mapping, array state, shape)
BUDGET_FACTOR = 2
BUDGET_CONSTANT = 16 * 2**20  # ample for the many small objects of a tiny checkpoint
# The interpreter spends about a microsecond an opcode; a checkpoint has one opcode per ~100 bytes
# (golden files) to one per ~100 KB (release files, all array data), so this bounds the time a file
# of tiny opcodes can take to seconds per hundred megabytes.
OPCODE_CONSTANT, BYTES_PER_OPCODE = 1_000_000, 64

_SLOT = 8  # a reference on the stack, in the memo or in a container
_OBJECT = 64  # a small object's header (an int, a float, an empty container)
_KEY_TYPES = (str, int, float, bool, type(None))  # hashing these cannot recurse
_OP_NAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}

_CODE_RUNNING = {
    pickle.INST: "INST (instantiates a class named in the file)",
    pickle.OBJ: "OBJ (instantiates a class from the stack)",
    pickle.NEWOBJ: "NEWOBJ (calls cls.__new__)",
    pickle.NEWOBJ_EX: "NEWOBJ_EX (calls cls.__new__)",
    pickle.EXT1: "EXT1 (a copyreg extension code: it resolves a global without the allow-list)",
    pickle.EXT2: "EXT2 (a copyreg extension code: it resolves a global without the allow-list)",
    pickle.EXT4: "EXT4 (a copyreg extension code: it resolves a global without the allow-list)",
    pickle.PERSID: "PERSID (a persistent id: loads an object from outside the file)",
    pickle.BINPERSID: "BINPERSID (a persistent id: loads an object from outside the file)",
}
_UNUSED = {
    pickle.NEXT_BUFFER: "out-of-band buffers (NEXT_BUFFER): a checkpoint must hold its data in the file",
    pickle.READONLY_BUFFER: "out-of-band buffers (READONLY_BUFFER): a checkpoint must hold its data in the file",
    **{getattr(pickle, name): f"{name}, which checkpoint pickles do not use"
       for name in ("EMPTY_SET", "ADDITEMS", "FROZENSET")},
    **{getattr(pickle, name): f"{name}, a protocol 0/1 or Python 2 text opcode, which checkpoint pickles "
                              "(Python 3, protocol 2-5) do not use"
       for name in ("INT", "LONG", "FLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "GET", "PUT")},
}


class _Stop(Exception):
    pass


def _foreign(head: bytes) -> str:
    """What a file that does not start with PROTO looks like, for the refusal message."""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive (a torch.save file or a numpy .npz?), not a pickle"
    if head.startswith(b"\x93NUMPY"):
        return "it is a numpy .npy file, not a pickle"
    if len(head) > 8 and head[8:9] == b"{":
        return "it looks like a safetensors file (a header length, then JSON), not a pickle"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is text, not a binary pickle"
    return f"its first byte 0x{head[0]:02x} is not the PROTO opcode (0x80) that pickle protocols 2-5 start with"


class RestrictedUnpickler:
    """Reads one checkpoint pickle from `stream` (`size` bytes); `load()` returns the tree of stand-ins.

    Every refusal raises a `CheckpointReadError` subclass whose message starts with `source` and
    gives the byte offset of the opcode that was refused.
    """

    def __init__(self, stream, size: int, source: str, *, max_depth: int = MAX_DEPTH, budget: int | None = None,
                 stored: StoredFile | None = None):
        self._stream, self._stored = stream, stored
        self._stream_read, self._readinto, self._readline = stream.read, stream.readinto, stream.readline
        self._foreign_head = None  # what the file looks like, when it does not start with PROTO
        self._frame_end: int | None = None  # where the current FRAME ends
        self.size, self.source, self.max_depth = size, source, max_depth
        self.budget = BUDGET_FACTOR * size + BUDGET_CONSTANT if budget is None else budget
        self.max_opcodes = OPCODE_CONSTANT + size // BYTES_PER_OPCODE
        self.used = 0
        self.pos = 0
        self._op_at, self._op_code = 0, 0x80
        self.stack: list = []
        self._metastack: list[list] = []
        self._memo: list = []
        self._depths: dict[int, tuple[int, object]] = {}  # id -> (depth, the container: keeps the id valid)
        self._sealed: set[int] = set()  # containers already put inside another one
        self._dispatch = self._dispatch_table()

    # ---- refusals --------------------------------------------------------------------------------
    def _where(self) -> str:
        code = self._op_code
        if code is None:
            return f"at byte {self._op_at}"
        return f"opcode {_OP_NAMES.get(code, f'0x{code:02x}')} at byte {self._op_at}"

    def fail(self, cls: type[CheckpointReadError], detail: str):
        raise cls(f"{self.source}: {detail} ({self._where()}).")

    def unreadable(self, detail: str):
        if self._foreign_head:
            detail = f"{self._foreign_head}; and interpreted as a pickle, {detail}"
        raise CheckpointReadError(f"{self.source} is not a readable checkpoint pickle: {detail} ({self._where()}).")

    def charge(self, nbytes: int, what: str) -> None:
        """Count `nbytes` against the budget before allocating them."""
        self.used += nbytes
        if self.used > self.budget:
            self.fail(CheckpointLimitError,
                      f"reading {what} would take the reader past its memory budget of {self.budget:,} bytes "
                      f"({BUDGET_FACTOR} x the file's {self.size:,} bytes + {BUDGET_CONSTANT >> 20} MiB)")

    # ---- reading the stream ----------------------------------------------------------------------
    def _framed(self, n: int) -> None:
        """Framing as pickle defines it: an opcode lies wholly inside its FRAME, or wholly after it."""
        end = self._frame_end
        if end is not None:
            if self.pos == end:
                self._frame_end = None
            elif self.pos + n > end:
                self.unreadable(f"{n:,} bytes are read across the end of a FRAME at byte {end} (corrupt)")

    def _read(self, n: int) -> bytes:
        self._framed(n)
        data = self._stream_read(n)
        if len(data) != n:
            self._truncated()
        self.pos += n
        return data

    def _truncated(self):
        self.unreadable(f"the file ends at byte {self.size} in the middle of an opcode (truncated?)")

    def _length(self, fmt: str, width: int) -> int:
        (n,) = struct.unpack(fmt, self._read(width))
        if n < 0 or n > self.size - self.pos:
            self.unreadable(f"a length field claims {n:,} bytes, but only {self.size - self.pos:,} are left in "
                            "the file (truncated or corrupt)")
        return n

    def load(self):
        head = self._stream_read(16)
        self._stream.seek(0)
        if not head.startswith(pickle.PROTO):
            # Protocols 0 and 1 have no PROTO opcode; known foreign formats are named at once, anything
            # else is interpreted (so a protocol 0 GLOBAL is refused by name) and named if it fails.
            description = _foreign(head)
            if not head or not description.startswith(("it is text", "its first byte")):
                raise CheckpointReadError(f"{self.source} is not a readable checkpoint pickle: {description}.")
            self._foreign_head = description
        dispatch, read, opcodes_left = self._dispatch, self._stream_read, self.max_opcodes
        try:
            while True:
                opcodes_left -= 1
                if opcodes_left < 0:
                    self.fail(CheckpointLimitError, f"more than {self.max_opcodes:,} opcodes ({OPCODE_CONSTANT:,} + "
                                                    f"one per {BYTES_PER_OPCODE} bytes of the file)")
                self._op_at = self.pos
                self._framed(1)
                code = read(1)
                if not code:
                    self._op_code = None
                    self.unreadable(f"the file ends at byte {self.size} without the STOP opcode (truncated?)")
                self.pos += 1
                self._op_code = code[0]
                dispatch[code[0]]()
        except _Stop:
            pass
        except IndexError:  # popping an empty stack or mark stack
            self.unreadable("an opcode needs more items than the stack holds (corrupt)")
        if self.pos != self.size:
            self.unreadable(f"{self.size - self.pos:,} bytes follow the STOP opcode; a checkpoint is one pickle")
        return self.stack[0]

    # ---- dispatch ----------------------------------------------------------------------------------
    def _dispatch_table(self) -> list:
        table = [self._not_an_opcode] * 256
        handlers = {
            pickle.PROTO: self._proto, pickle.FRAME: self._frame, pickle.STOP: self._stop,
            pickle.MARK: self._mark, pickle.POP: self._pop, pickle.POP_MARK: self._pop_mark, pickle.DUP: self._dup,
            pickle.NONE: lambda: self._push(None), pickle.NEWTRUE: lambda: self._push(True),
            pickle.NEWFALSE: lambda: self._push(False),
            pickle.BININT: lambda: self._push(struct.unpack("<i", self._read(4))[0]),
            pickle.BININT1: lambda: self._push(self._read(1)[0]),
            pickle.BININT2: lambda: self._push(struct.unpack("<H", self._read(2))[0]),
            pickle.LONG1: lambda: self._long(self._read(1)[0]),
            pickle.LONG4: lambda: self._long(self._length("<i", 4)),
            pickle.BINFLOAT: lambda: self._push(struct.unpack(">d", self._read(8))[0]),
            pickle.SHORT_BINUNICODE: lambda: self._unicode(self._read(1)[0]),
            pickle.BINUNICODE: lambda: self._unicode(self._length("<I", 4)),
            pickle.BINUNICODE8: lambda: self._unicode(self._length("<Q", 8)),
            pickle.SHORT_BINBYTES: lambda: self._payload(self._read(1)[0]),
            pickle.BINBYTES: lambda: self._payload(self._length("<I", 4)),
            pickle.BINBYTES8: lambda: self._payload(self._length("<Q", 8)),
            pickle.BYTEARRAY8: lambda: self._payload(self._length("<Q", 8)),
            pickle.EMPTY_TUPLE: lambda: self._push(()),
            pickle.TUPLE: lambda: self._push(self._tuple(self._pop_mark())),
            pickle.TUPLE1: lambda: self._tuple_top(1), pickle.TUPLE2: lambda: self._tuple_top(2),
            pickle.TUPLE3: lambda: self._tuple_top(3),
            pickle.EMPTY_LIST: lambda: self._push(self._list([])),
            pickle.LIST: lambda: self._push(self._list(self._pop_mark())),
            pickle.APPEND: lambda: self._extend([self.stack.pop()]),
            pickle.APPENDS: lambda: self._extend(self._pop_mark()),
            pickle.EMPTY_DICT: lambda: self._push(self.new_dict([])),
            pickle.DICT: lambda: self._push(self._dict_from_flat(self._pop_mark())),
            pickle.SETITEM: self._setitem, pickle.SETITEMS: lambda: self._setitems(self._pop_mark()),
            pickle.BINGET: lambda: self._get(self._read(1)[0]),
            pickle.LONG_BINGET: lambda: self._get(struct.unpack("<I", self._read(4))[0]),
            pickle.BINPUT: lambda: self._put(self._read(1)[0]),
            pickle.LONG_BINPUT: lambda: self._put(struct.unpack("<I", self._read(4))[0]),
            pickle.MEMOIZE: lambda: self._put(len(self._memo)),
            pickle.GLOBAL: self._global, pickle.STACK_GLOBAL: self._stack_global,
            pickle.REDUCE: self._reduce, pickle.BUILD: self._build,
        }
        for code, handler in handlers.items():
            table[code[0]] = handler
        for code, what in _CODE_RUNNING.items():
            table[code[0]] = lambda what=what: self.fail(UnsafePickleError, f"refusing opcode {what}")
        for code, what in _UNUSED.items():
            table[code[0]] = lambda what=what: self.unreadable(f"it uses {what}")
        return table

    def _not_an_opcode(self):
        self.unreadable(f"byte 0x{self._op_code:02x} is not a pickle opcode (corrupt, or not a pickle)")

    def _push(self, obj) -> None:
        self.used += _SLOT
        if self.used > self.budget:
            self.charge(0, "the stack")
        self.stack.append(obj)

    def _proto(self):
        if self._op_at != 0:
            self.unreadable("a PROTO opcode inside the pickle (corrupt)")
        version = self._read(1)[0]
        if not 2 <= version <= 5:
            self.unreadable(f"pickle protocol {version}; checkpoints are written with protocols 2 to 5")

    def _frame(self):
        if self._frame_end is not None:
            self.unreadable("a FRAME begins inside another one (corrupt)")
        length = self._length("<Q", 8)
        self._frame_end = self.pos + length

    def _stop(self):
        if self._metastack or len(self.stack) != 1:
            self.unreadable("STOP with other than exactly one object on the stack (corrupt)")
        raise _Stop

    def _mark(self):
        self.charge(_OBJECT, "a MARK")
        self._metastack.append(self.stack)
        self.stack = []

    def _pop_mark(self) -> list:
        items = self.stack
        self.stack = self._metastack.pop()
        return items

    def _pop(self):
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def _dup(self):
        self._push(self.stack[-1])

    def _long(self, n: int):
        self.charge(n + _OBJECT, "an integer")
        self._push(int.from_bytes(self._read(n), "little", signed=True))

    def _unicode(self, n: int):
        self.charge(4 * n + _OBJECT, "a string")  # up to 4 bytes a character in memory
        try:
            text = str(self._read(n), "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            self.unreadable("a string is not valid UTF-8 (corrupt)")
        self._push(text)

    def _payload(self, n: int):
        if self._stored is not None and n >= DEFER_BYTES:
            self.charge(_OBJECT, "a stored array")  # its n bytes stay in the file (_length checked they are there)
            self._framed(n)
            self._stream.seek(n, io.SEEK_CUR)
            self._push(FilePayload(self._stored, self.pos, n))
            self.pos += n
            return
        self.charge(n + _OBJECT, f"{n:,} bytes of data")
        self._framed(n)
        # A bytearray (malloc'd, 16-byte aligned), not np.empty: numpy asks for transparent huge pages,
        # which can stall in kernel compaction on a busy machine (0.15-1.0 s per 200 MB measured, where
        # plain pickle's bytes take a steady 0.4 s); an anonymous mmap per payload measured slower still.
        storage = bytearray(n)
        view, got = memoryview(storage), 0
        while got < n:
            k = self._readinto(view[got:])
            if not k:
                self._truncated()
            got += k
        self.pos += n
        self._push(Payload(np.frombuffer(storage, np.uint8)))

    # ---- containers, with depth and sealing ---------------------------------------------------------
    def _register(self, container, children, depth: int = 1):
        depths = self._depths
        for child in children:
            if child is container:
                self.fail(CheckpointReadError, f"a {type(container).__name__} contains itself (a cycle)")
            entry = depths.get(id(child))
            if entry is not None:
                depth = max(depth, entry[0] + 1)
                self._sealed.add(id(child))
        if depth > self.max_depth:
            self.fail(CheckpointLimitError, f"containers nest more than {self.max_depth} deep; a checkpoint's tree "
                                            "nests about 5 deep")
        depths[id(container)] = (depth, container)
        return container

    def _tuple(self, items: list) -> tuple:
        self.charge(_OBJECT + _SLOT * len(items), "a tuple")
        return self._register(tuple(items), items)

    def _tuple_top(self, n: int):
        if len(self.stack) < n:
            raise IndexError
        items = self.stack[-n:]
        del self.stack[-n:]
        self._push(self._tuple(items))

    def _list(self, items: list) -> list:
        self.charge(_OBJECT + _SLOT * len(items), "a list")
        return self._register(items, items)

    def _mutable(self, kind: type):
        target = self.stack[-1]
        if type(target) is not kind:
            self.fail(CheckpointReadError, f"{'APPEND' if kind is list else 'SETITEM'} on {type_name(target)}, "
                                           f"not a {kind.__name__} (corrupt or crafted)")
        if id(target) in self._sealed:
            self.fail(CheckpointReadError, f"a {kind.__name__} is changed after it was put into another container "
                                           "(a cycle, or a crafted pickle)")
        return target

    def _extend(self, items: list):
        target = self._mutable(list)
        self.charge(_SLOT * len(items), "list items")
        self._register(target, items, self._depths[id(target)][0])
        target.extend(items)

    def _check_keys(self, flat: list):
        if len(flat) % 2:
            self.unreadable("a mapping's items do not come in key, value pairs (corrupt)")
        for key in flat[::2]:
            if type(key) not in _KEY_TYPES:
                self.fail(CheckpointReadError, f"a mapping key is {type_name(key)}; module and parameter names "
                                               "must be strings")
        self.charge((3 * _SLOT + _OBJECT) * (len(flat) // 2), "mapping items")

    def _fill(self, target: dict, flat: list):
        self._check_keys(flat)
        self._register(target, flat[1::2], self._depths[id(target)][0])
        for i in range(0, len(flat), 2):
            target[flat[i]] = flat[i + 1]

    def new_dict(self, pairs) -> dict:
        """A fresh dict from (key, value) pairs, keys checked before they are hashed."""
        self.charge(_OBJECT, "a mapping")
        target = self._register({}, ())
        self._fill(target, [x for pair in pairs for x in pair])
        return target

    def _dict_from_flat(self, flat: list) -> dict:
        self.charge(_OBJECT, "a mapping")
        target = self._register({}, ())
        self._fill(target, flat)
        return target

    def _setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._fill(self._mutable(dict), [key, value])

    def _setitems(self, flat: list):
        self._fill(self._mutable(dict), flat)

    # ---- memo ------------------------------------------------------------------------------------
    def _get(self, index: int):
        if index >= len(self._memo):
            self.unreadable(f"memo entry {index} is read before it is written (corrupt)")
        self._push(self._memo[index])

    def _put(self, index: int):
        value = self.stack[-1]
        if index == len(self._memo):
            self.charge(_SLOT, "the memo")
            self._memo.append(value)
        elif index < len(self._memo):
            self._memo[index] = value
        else:  # picklers number memo entries 0, 1, 2, ...; a jump would make the memo a sparse table
            self.unreadable(f"memo entry {index} is written before entry {len(self._memo)} (corrupt)")

    # ---- globals and calls -----------------------------------------------------------------------
    def _global(self):
        module = self._line()
        name = self._line()
        self._push(resolve_global(self, module, name))

    def _line(self) -> str:
        line = self._readline(256)
        self._framed(len(line))
        self.pos += len(line)
        if not line.endswith(b"\n"):
            if len(line) < 256:
                self._truncated()
            self.unreadable("a GLOBAL opcode's name is longer than 255 bytes")
        try:
            return line[:-1].decode("utf-8")
        except UnicodeDecodeError:
            self.unreadable("a GLOBAL opcode's name is not valid UTF-8")

    def _stack_global(self):
        name = self.stack.pop()
        module = self.stack.pop()
        self._push(resolve_global(self, module, name))

    def _reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(func, StandIn):
            self.fail(UnsafePickleError, f"REDUCE applied to {type_name(func)}, which is not an allowed callable")
        if type(args) is not tuple:
            self.unreadable(f"REDUCE's arguments are {type_name(args)}, not a tuple")
        self.charge(_OBJECT, f"a call of {func.name}")
        self.stack[-1] = func.call(self, args)

    def _build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) not in (ArrayStub, DtypeStub):
            self.fail(UnsafePickleError, f"BUILD on {type_name(target)} is refused: BUILD may only give a numpy "
                                         "array or dtype its state (on a function or class it would rewrite its "
                                         "attributes for the whole process)")
        target.build(self, state)



"""Hand-built hostile pickles and codec payloads for ``tests/test_codec_hostile.py``.

Each builder returns the bytes a malicious peer could store. They are assembled from pickle opcodes
(``P``) so they can do what no ``pickle.dumps`` of a real object does: forge a NumPy dtype's state,
call an allowed class with hostile arguments, BUILD on a class instead of an instance, reuse a memoised
buffer thousands of times.
"""

from __future__ import annotations

import pickle
import pickletools
import struct
from collections.abc import Callable

import msgpack

from flame import codec

# --------------------------------------------------------------------------------------------
# a tiny pickle assembler (protocol 4 opcodes)
# --------------------------------------------------------------------------------------------

MARK = b"("
STOP = b"."
REDUCE = b"R"
BUILD = b"b"
NEWOBJ = b"\x81"
TUPLE = b"t"
TUPLE1, TUPLE2, TUPLE3 = b"\x85", b"\x86", b"\x87"
EMPTY_TUPLE = b")"
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
SETITEM = b"s"
APPEND = b"a"
APPENDS = b"e"
MEMOIZE = b"\x94"
NONE = b"N"
TRUE, FALSE = b"\x88", b"\x89"


def const(value: object) -> bytes:
    """The opcodes that push ``value`` (ints, floats, str, bytes, None, tuples of those)."""
    body = pickletools.optimize(pickle.dumps(value, protocol=3))
    return body[2:-1]  # drop PROTO and STOP


def glob(module: str, name: str) -> bytes:
    return const(module) + const(name) + b"\x93"  # STACK_GLOBAL


def get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)  # LONG_BINGET


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def program(body: bytes) -> bytes:
    return b"\x80\x04" + body + STOP


def np_mod(name: str) -> str:
    return {"_reconstruct": "numpy.core.multiarray", "scalar": "numpy.core.multiarray"}.get(
        name, "numpy.core.numeric"
    )


def dtype(descr: str, state: tuple[object, ...]) -> bytes:
    """``numpy.dtype(descr, False, True)`` then BUILD ``state`` (which may be forged)."""
    return call(glob("numpy", "dtype"), const(descr), FALSE, TRUE) + const(state) + BUILD


def object_dtype() -> bytes:
    return dtype("O8", (3, "|", None, None, None, -1, -1, 63))


def forged_dtype() -> bytes:
    """A structured dtype with one object field but flags 0: NumPy then treats raw bytes as pointers."""
    fields = MARK + const("a") + tup(object_dtype(), const(0)) + b"d"  # DICT
    state = tup(const(3), const("|"), NONE, const(("a",)), fields, const(8), const(1), const(0))
    return call(glob("numpy", "dtype"), const("V8"), FALSE, TRUE) + state + BUILD


POINTER = struct.pack("<Q", 0x4141414141414140)


# --------------------------------------------------------------------------------------------
# the corpus: name -> pickle; each must be refused with a PayloadError, nothing else
# --------------------------------------------------------------------------------------------


def forged_frombuffer() -> bytes:
    return program(
        call(
            glob("numpy.core.numeric", "_frombuffer"), const(POINTER), forged_dtype(), const((1,)), const("C")
        )
    )


def forged_scalar() -> bytes:
    return program(call(glob("numpy.core.multiarray", "scalar"), forged_dtype(), const(POINTER)))


def forged_reconstruct() -> bytes:
    arr = call(
        glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), const((0,)), const(b"b")
    )
    state = tup(const(1), const((1,)), forged_dtype(), FALSE, const(POINTER))
    return program(arr + state + BUILD)


def forged_ndarray_call() -> bytes:
    """``numpy.ndarray((1,), forged)``: uninitialised memory read as an object pointer."""
    return program(call(glob("numpy", "ndarray"), const((1,)), forged_dtype()))


def object_frombuffer() -> bytes:
    return program(
        call(
            glob("numpy.core.numeric", "_frombuffer"), const(POINTER), object_dtype(), const((1,)), const("C")
        )
    )


def object_reconstruct_bytes() -> bytes:
    arr = call(
        glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), const((0,)), const(b"b")
    )
    state = tup(const(1), const((1,)), object_dtype(), FALSE, const(POINTER))
    return program(arr + state + BUILD)


def object_scalar() -> bytes:
    return program(call(glob("numpy.core.multiarray", "scalar"), object_dtype(), const(POINTER)))


def dtype_with_object_subarray() -> bytes:
    sub = tup(object_dtype(), const((1,)))
    state = tup(const(3), const("|"), sub, NONE, NONE, const(8), const(1), const(0))
    forged = call(glob("numpy", "dtype"), const("V8"), FALSE, TRUE) + state + BUILD
    return program(
        call(glob("numpy.core.numeric", "_frombuffer"), const(POINTER), forged, const((1,)), const("C"))
    )


def reduce_chain(module: str, name: str, *args: object) -> Callable[[], bytes]:
    return lambda: program(call(glob(module, name), *(const(a) for a in args)))


def getattr_chain(target: tuple[str, str], attr: str, *args: object) -> Callable[[], bytes]:
    def build() -> bytes:
        method = call(glob("builtins", "getattr"), glob(*target), const(attr))
        return program(call(method, *(const(a) for a in args)))

    return build


def timestamp_tz(tz: str) -> Callable[[], bytes]:
    return lambda: program(
        call(
            glob("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
            const(0),
            NONE,
            const(tz),
            const(10),
        )
    )


def tzdtype_state(tz: str) -> Callable[[], bytes]:
    def build() -> bytes:
        obj = glob("pandas", "DatetimeTZDtype") + EMPTY_TUPLE + NEWOBJ
        state = EMPTY_DICT + MARK + const("unit") + const("ns") + const("tz") + const(tz) + b"u"  # SETITEMS
        return program(obj + state + BUILD)

    return build


def tzdtype_call(tz: str) -> Callable[[], bytes]:
    return lambda: program(call(glob("pandas", "DatetimeTZDtype"), const("ns"), const(tz)))


def zoneinfo_key(key: str) -> Callable[[], bytes]:
    return getattr_chain(("zoneinfo", "ZoneInfo"), "_unpickle", key, 1)


def huge_ndarray() -> bytes:
    return program(call(glob("numpy", "ndarray"), const((10**12,)), const("u1")))


def huge_bytes_dtype_array() -> bytes:
    return program(call(glob("numpy", "ndarray"), const((1,)), const("S100000000000")))


def huge_frombuffer_shape() -> bytes:
    return program(
        call(
            glob("numpy.core.numeric", "_frombuffer"),
            const(b"\0" * 8),
            dtype("f8", (3, "<", None, None, None, -1, -1, 0)),
            const((10**12,)),
            const("C"),
        )
    )


def huge_bytearray() -> bytes:
    return program(call(glob("builtins", "bytearray"), const(10**11)))


def huge_range_list() -> bytes:
    return program(call(glob("builtins", "frozenset"), call(glob("builtins", "range"), const(10**10))))


def huge_declared_bytes() -> bytes:
    """A BINBYTES8 opcode that declares 64 GiB but carries 8 bytes."""
    return b"\x80\x04\x8e" + struct.pack("<Q", 2**36) + b"\0" * 8 + STOP


def repeated_string() -> bytes:
    return program(call(glob("operator", "mul"), const("A"), const(10**10)))


def repeated_buffer_arrays(copies: int = 20_000, size: int = 64 * 1024) -> bytes:
    """One memoised 64 KiB buffer turned into ``copies`` arrays: about 1.3 GB from a ~300 KB pickle."""
    f8 = dtype("u1", (3, "|", None, None, None, -1, -1, 0))
    head = const(b"\0" * size) + MEMOIZE + f8 + MEMOIZE + glob("numpy.core.numeric", "_frombuffer") + MEMOIZE
    shape = const((size,)) + MEMOIZE + const("C") + MEMOIZE
    one = get(2) + MARK + get(0) + get(1) + get(3) + get(4) + TUPLE + REDUCE
    return program(head + shape + b"0" * 5 + EMPTY_LIST + MARK + one * copies + APPENDS)  # 0: POP


def memo_list_copies(items: int = 50_000, copies: int = 20_000) -> bytes:
    """A list of ``items`` ints, then ``copies`` calls of frozenset() on it (memo reuse)."""
    base = EMPTY_LIST + MEMOIZE + MARK + const(7) * items + APPENDS
    one = glob("builtins", "frozenset") + get(0) + TUPLE1 + REDUCE
    return program(base + b"0" + EMPTY_LIST + MARK + one * copies + APPENDS)


def deep_nesting(depth: int = 1_000_000) -> bytes:
    return program(const(1) + TUPLE1 * depth)


def inst_opcode() -> bytes:
    """Protocol-0 INST inside a protocol-2 pickle: ``posix.system('true')``."""
    return b"\x80\x02(" + const("true") + b"iposix\nsystem\n."


def newobj_ex_kwargs() -> bytes:
    kwargs = EMPTY_DICT + const("columns") + const(["a"]) + SETITEM
    return program(glob("pandas", "DataFrame") + EMPTY_TUPLE + kwargs + b"\x92")  # NEWOBJ_EX


def setitem_on_record() -> bytes:
    return program(call(glob("pandas", "DataFrame")) + const("__class__") + const(1) + SETITEM)


def appends_on_record() -> bytes:
    return program(call(glob("pandas", "Series")) + MARK + const(1) + APPENDS)


def extension_registry() -> bytes:
    return b"\x80\x02\x82\x01."  # EXT1 1: copyreg's extension registry


def persistent_id() -> bytes:
    return program(const("x") + b"Q")  # BINPERSID


def state_twice() -> bytes:
    state = EMPTY_DICT + const("_typ") + const("dataframe") + SETITEM
    return program(glob("pandas", "DataFrame") + EMPTY_TUPLE + NEWOBJ + state + BUILD + state + BUILD)


def dataframe_state_without_manager() -> bytes:
    state = EMPTY_DICT + const("_mgr") + const([1, 2, 3]) + SETITEM
    return program(glob("pandas", "DataFrame") + EMPTY_TUPLE + NEWOBJ + state + BUILD)


def block_placed_twice() -> bytes:
    """A BlockManager whose two blocks both claim column 0 (pandas would alias them)."""
    f8 = dtype("f8", (3, "<", None, None, None, -1, -1, 0))
    values = call(glob("numpy.core.numeric", "_frombuffer"), const(b"\0" * 8), f8, const((1, 1)), const("C"))
    place = call(glob("builtins", "slice"), const(0), const(1), const(1))
    block = call(glob("pandas._libs.internals", "_unpickle_block"), values, place, const(2))
    d = (
        EMPTY_DICT
        + MARK
        + const("start")
        + const(0)
        + const("stop")
        + const(1)
        + const("step")
        + const(1)
        + b"u"
    )
    rng = call(glob("pandas.core.indexes.base", "_new_Index"), glob("pandas", "RangeIndex"), d)
    axes = EMPTY_LIST + MARK + rng + rng + APPENDS
    mgr = call(glob("pandas.core.internals.managers", "BlockManager"), tup(block, block), axes)
    state = EMPTY_DICT + const("_mgr") + mgr + SETITEM
    return program(glob("pandas", "DataFrame") + EMPTY_TUPLE + NEWOBJ + state + BUILD)


def _range_index(stop: int) -> bytes:
    d = MARK + const("start") + const(0) + const("stop") + const(stop) + const("step") + const(1) + b"d"
    return call(
        glob("pandas.core.indexes.base", "_new_Index"), glob("pandas.core.indexes.range", "RangeIndex"), d
    )


def _empty_f8(shape: tuple[int, int]) -> bytes:
    f8 = dtype("f8", (3, "<", None, None, None, -1, -1, 0))
    return call(glob("numpy.core.numeric", "_frombuffer"), const(b""), f8, const(shape), const("C"))


def _frame_of(blocks: bytes, columns: int) -> bytes:
    mgr = call(
        glob("pandas.core.internals.managers", "BlockManager"),
        blocks,
        MARK + _range_index(columns) + _range_index(0) + b"l",
    )
    state = MARK + const("_mgr") + mgr + b"d"
    return program(glob("pandas", "DataFrame") + EMPTY_TUPLE + NEWOBJ + state + BUILD)


def range_columns_without_blocks(columns: int = 10**8) -> bytes:
    """A RangeIndex of 10^8 columns costs a few bytes; the frame would allocate a slot per column."""
    return _frame_of(EMPTY_TUPLE, columns)


def wide_empty_block(columns: int = 10**7) -> bytes:
    """One (10^7, 0) block: no bytes, but one view per column."""
    place = call(glob("builtins", "slice"), const(0), const(columns))
    block = call(glob("pandas._libs.internals", "_unpickle_block"), _empty_f8((columns, 0)), place, const(2))
    return _frame_of(tup(block), columns)


def memoised_placements(blocks: int = 20, width: int = 1 << 24) -> bytes:
    """One memoised slice(0, 2**24) placement reused by many blocks: a 16.7M-entry list per block."""
    place = call(glob("builtins", "slice"), const(0), const(width))
    first = call(
        glob("pandas._libs.internals", "_unpickle_block"),
        _empty_f8((width, 0)) + MEMOIZE,
        place + MEMOIZE,
        const(2),
    )
    later = call(glob("pandas._libs.internals", "_unpickle_block"), get(0), get(1), const(2))
    return _frame_of(MARK + first + later * (blocks - 1) + TUPLE, width)


HOSTILE_PICKLES: dict[str, Callable[[], bytes]] = {
    "forged_dtype_frombuffer": forged_frombuffer,
    "forged_dtype_scalar": forged_scalar,
    "forged_dtype_reconstruct": forged_reconstruct,
    "forged_dtype_ndarray_call": forged_ndarray_call,
    "object_subarray_dtype": dtype_with_object_subarray,
    "object_dtype_frombuffer": object_frombuffer,
    "object_dtype_reconstruct_bytes": object_reconstruct_bytes,
    "object_dtype_scalar": object_scalar,
    "copyreg_reconstructor": reduce_chain("copyreg", "_reconstructor", None, None, None),
    "functools_partial": reduce_chain("functools", "partial", None),
    "builtins_eval": reduce_chain("builtins", "eval", "1"),
    "builtins_exec": reduce_chain("builtins", "exec", "x = 1"),
    "builtins_open": reduce_chain("builtins", "open", "/etc/hostname"),
    "builtins_import": reduce_chain("builtins", "__import__", "os"),
    "getattr_dataframe_method": getattr_chain(("pandas", "DataFrame"), "to_pickle", "/tmp/x"),
    "getattr_index_dunder": getattr_chain(("pandas", "Index"), "__len__"),
    "getattr_builtins_eval": getattr_chain(("builtins", "dict"), "__class__"),
    "dataframe_hostile_args": reduce_chain("pandas", "DataFrame", None, None, None, "object"),
    "series_hostile_args": reduce_chain("pandas", "Series", list(range(3)), None, "O"),
    "index_hostile_args": reduce_chain("pandas", "Index", "abc"),
    "datetimeindex_hostile_args": reduce_chain(
        "pandas", "DatetimeIndex", ["2000"], None, None, "dateutil//etc/hostname"
    ),
    "timestamp_tz_dateutil_path": timestamp_tz("dateutil//etc/hostname"),
    "timestamp_tz_relative_path": timestamp_tz("../../../../etc/hostname"),
    "tzdtype_state_dateutil_path": tzdtype_state("dateutil//etc/hostname"),
    "tzdtype_call_dateutil_path": tzdtype_call("dateutil//etc/hostname"),
    "zoneinfo_relative_path": zoneinfo_key("../../../../../etc/hostname"),
    "zoneinfo_absolute_path": zoneinfo_key("/etc/hostname"),
    "huge_ndarray": huge_ndarray,
    "huge_bytes_dtype": huge_bytes_dtype_array,
    "huge_frombuffer_shape": huge_frombuffer_shape,
    "huge_bytearray": huge_bytearray,
    "huge_range_frozenset": huge_range_list,
    "huge_declared_bytes": huge_declared_bytes,
    "repeated_string_mul": repeated_string,
    "repeated_buffer_arrays": repeated_buffer_arrays,
    "memo_list_copies": memo_list_copies,
    "inst_opcode": inst_opcode,
    "newobj_ex_kwargs": newobj_ex_kwargs,
    "setitem_on_record": setitem_on_record,
    "appends_on_record": appends_on_record,
    "extension_registry": extension_registry,
    "persistent_id": persistent_id,
    "state_set_twice": state_twice,
    "dataframe_state_without_manager": dataframe_state_without_manager,
    "block_placed_twice": block_placed_twice,
    "range_columns_without_blocks": range_columns_without_blocks,
    "wide_empty_block": wide_empty_block,
    "memoised_placements": memoised_placements,
}
"""Payloads that must be refused (a :class:`~flame.errors.PayloadError`) without harm."""


# BUILD on a class: ``GLOBAL module.name`` then BUILD ``(None, {"flame_pwned": 1})``, which sets the
# attribute on the class itself (slot state goes through setattr).
def build_on_global(module: str, name: str) -> bytes:
    return program(
        glob(module, name) + tup(NONE, EMPTY_DICT + const("flame_pwned") + const(1) + SETITEM) + BUILD
    )


def build_dunder_on_global(module: str, name: str) -> bytes:
    """``pandas.Index.__len__ = int`` and the like: breaks the class for the whole process."""
    slot = EMPTY_DICT + const("__len__") + glob("builtins", "int") + SETITEM
    return program(glob(module, name) + tup(NONE, slot) + BUILD)


# --------------------------------------------------------------------------------------------
# codec payloads (finding 2): small payloads that declare much more than they carry
# --------------------------------------------------------------------------------------------


def frame(body: bytes, area: bytes = b"") -> bytes:
    return codec.MAGIC + bytes([codec.VERSION]) + msgpack.packb(len(body)) + body + area


def array_ext(dtype_str: str, shape: list[int], offset: int, nbytes: int) -> msgpack.ExtType:
    meta = msgpack.packb([dtype_str, shape, False, offset, nbytes])
    return msgpack.ExtType(codec.EXT_CODES["ndarray"], meta)


def codec_shared_buffer(buffer: int = 512 * 1024, refs: int = 6_000) -> bytes:
    """``refs`` arrays that all name the same ``buffer`` bytes of the area (many GB from ~600 KB)."""
    body = msgpack.packb([array_ext("|u1", [buffer], 0, buffer)] * refs)
    return frame(body, b"\0" * buffer)


def codec_small_shared_buffer() -> bytes:
    """The same attack small enough to ride inline in a message (~225 KiB)."""
    return codec_shared_buffer(buffer=128 * 1024, refs=4_000)


def codec_zero_itemsize() -> bytes:
    """``|S0`` with a huge shape: 0 bytes declared and carried, gigabytes allocated by NumPy."""
    return frame(msgpack.packb(array_ext("|S0", [10**10], 0, 0)))


def codec_zero_itemsize_2d() -> bytes:
    return frame(msgpack.packb(array_ext("<U0", [10**5, 10**5], 0, 0)))


def codec_huge_shape_product() -> bytes:
    """Dimensions whose product overflows int64 and wraps to a small number of bytes."""
    return frame(msgpack.packb(array_ext("<f8", [2**62, 2**62, 4], 0, 0)), b"")


def codec_overlapping_arrays() -> bytes:
    """Two arrays reading overlapping halves of one area, then trailing garbage."""
    body = msgpack.packb([array_ext("|u1", [8], 0, 8), array_ext("|u1", [8], 4, 8)])
    return frame(body, b"\0" * 12)


def codec_wide_empty_blocks(columns: int = 10**7) -> bytes:
    """Two numpy2d blocks of shape (0, 10^7) under one column name: 0 bytes, 2 * 10^7 column views."""

    def ext(code: str, meta: object) -> msgpack.ExtType:
        return msgpack.ExtType(codec.EXT_CODES[code], msgpack.packb(meta))

    def index(stop: int) -> msgpack.ExtType:
        return ext("index", {"kind": "range", "range": [0, stop, 1], "name": None})

    block = {"kind": "numpy2d", "values": array_ext("<f8", [0, columns], 0, 0)}
    df = ext("dataframe", {"columns": index(1), "index": index(0), "blocks": [block, block]})
    return frame(msgpack.packb(df))


def codec_wide_empty_blocks_matching(columns: int = 10**7) -> bytes:
    """The same with a RangeIndex naming every column, so the count check alone does not stop it."""

    def ext(code: str, meta: object) -> msgpack.ExtType:
        return msgpack.ExtType(codec.EXT_CODES[code], msgpack.packb(meta))

    def index(stop: int) -> msgpack.ExtType:
        return ext("index", {"kind": "range", "range": [0, stop, 1], "name": None})

    block = {"kind": "numpy2d", "values": array_ext("<f8", [0, columns], 0, 0)}
    df = ext("dataframe", {"columns": index(2 * columns), "index": index(0), "blocks": [block, block]})
    return frame(msgpack.packb(df))


HOSTILE_CODEC: dict[str, Callable[[], bytes]] = {
    "shared_buffer": codec_shared_buffer,
    "small_shared_buffer": codec_small_shared_buffer,
    "zero_itemsize": codec_zero_itemsize,
    "zero_itemsize_2d": codec_zero_itemsize_2d,
    "huge_shape_product": codec_huge_shape_product,
    "overlapping_arrays": codec_overlapping_arrays,
    "wide_empty_blocks": codec_wide_empty_blocks,
    "wide_empty_blocks_matching": codec_wide_empty_blocks_matching,
}

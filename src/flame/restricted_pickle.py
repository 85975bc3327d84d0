"""The restricted unpickler behind ``flame.codec.decode(..., allow_pickle=True)``.

Payloads that start like a pickle (``0x80`` followed by protocol 2..5) are refused with
:class:`~flame.errors.PickleRefusedError` unless ``allow_pickle=True``. Then the pickle is loaded in
two steps, so that no NumPy, pandas or pyarrow code ever runs on what the pickle says:

1. *Load with stand-ins.* ``find_class`` resolves the globals an honest pickle of plain data, NumPy
   arrays/scalars/dtypes and pandas ``DataFrame``/``Series``/``Index`` (pandas 2.x/3.x, NumPy 1.x/2.x,
   protocols 2-5) references, but never to the real object: to a stand-in class of ours. Calling or
   instantiating a stand-in records the call (name, arguments) as an inert record; BUILD on a record
   only stores the state; BUILD or setattr on a stand-in class is refused, so a pickle cannot change
   any class or module. ``getattr`` is allowed only as ``getattr(ZoneInfo, "_unpickle")`` and
   ``_codecs.encode`` only for latin-1 text (what protocol-2 and zoneinfo pickles need). Any other
   global raises ``PickleRefusedError`` naming it.
2. *Rebuild with our own code.* Each record is checked and turned into the real value by a function of
   this module: a dtype is rebuilt from its validated description (plain bool/number/bytes/str/
   datetime kinds; structured, sub-array and void dtypes are refused, and the pickled flags and sizes
   must equal those of the dtype we build, which defeats forged states); an array is
   ``np.frombuffer(bytes, dtype).copy()`` after shape x itemsize is checked against the bytes the
   pickle carries; object arrays only from a list of items that are themselves rebuilt values;
   ``numpy.ndarray(...)`` called directly is refused (uninitialised memory); pandas objects are
   built with public constructors from rebuilt arrays and indexes (lengths checked); pyarrow string
   arrays from byte buffers, validated in full. Time zones are ``datetime.timezone`` or IANA names
   matching a strict pattern (letters, digits, ``_+-``, no dots, no leading slash) loaded through
   ``zoneinfo``: ``dateutil/<path>`` and relative paths are refused, and no file outside the time
   zone database is opened.

Time zones pickled by pytz (pandas 2's default) are rebuilt as the same pytz zone when this node runs
pandas 2.x, so a tz-aware column's dtype equals what ``pickle.loads`` would give; with pandas 3 (whose
default is zoneinfo) they are rebuilt as the same zone from ``zoneinfo`` / ``datetime.timezone``. Either
way the instants are equal. ``dateutil.tz.tzutc`` loads as ``datetime.timezone.utc``.

Budgets stop memo reuse from multiplying memory: all rebuilt array bytes together may not exceed the
pickle's own size (nor ``max_bytes``), and all elements that calls such as ``frozenset(list)`` copy
may not exceed it either; an object referenced twice is rebuilt once. Nesting deeper than 100 levels
is refused. Not rebuilt (refused): other dateutil time zones, Period/Interval/Sparse data and
subclasses; ``attrs`` are not kept. An index frequency is rebuilt for the common pandas offsets
(``Day``, ``Week``, ``MonthEnd``, ...) from small integer arguments, and otherwise dropped (``None``).
"""

from __future__ import annotations

import _compat_pickle
import collections
import datetime as _dt
import importlib
import io
import math
import pickle
import re
import sys
import zoneinfo
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

# what the two sides of decoding share: array bounds, the time zone key pattern, pandas helpers
from flame.codec import (
    _FREE_COLUMN_VIEWS,
    _MAX_NDIM,
    _ZONE_KEY,
    _pandas,
    _string_dtype,
    _type_name,
)
from flame.errors import PayloadError, PickleRefusedError

if TYPE_CHECKING:
    from flame.codec import NDArray

__all__ = ["restricted_loads"]


class _StandInMeta(type):
    """The metaclass of the stand-ins :meth:`_RestrictedUnpickler.find_class` hands out.

    Calling a stand-in (REDUCE, INST, OBJ) or instantiating it (NEWOBJ) records the call as an inert
    :class:`_Record`; BUILD or setattr on the stand-in class itself is refused.
    """

    _kind: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _standin_call(cls._kind, args, kwargs)

    def __setattr__(cls, name: str, value: Any) -> None:
        raise PickleRefusedError(f"refused to set the attribute {name!r} of {cls._kind} in a pickle")

    def __delattr__(cls, name: str) -> None:
        raise PickleRefusedError(f"refused to delete the attribute {name!r} of {cls._kind} in a pickle")

    def __setstate__(cls, state: Any) -> None:  # BUILD on the global itself
        raise PickleRefusedError(
            f"refused a pickle that sets state on the class {cls._kind} itself: only instances are rebuilt"
        )


class _StandIn(metaclass=_StandInMeta):
    _kind = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ / NEWOBJ_EX
        return _Record(cls._kind, args, kwargs)


class _Record:
    """What a pickle asked a stand-in to make: the global's kind, the arguments and the BUILD state.

    Nothing here is a real object yet; :class:`_Rebuilder` validates a finished load and makes the real
    values with its own code.
    """

    __slots__ = ("args", "items", "kind", "kwargs", "state")

    def __init__(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.kind, self.args, self.kwargs = kind, args, kwargs
        self.state: Any = _UNSET
        self.items: list[tuple[Any, Any]] = []

    def __setstate__(self, state: Any) -> None:  # BUILD
        if self.state is not _UNSET:
            raise PickleRefusedError(f"refused a pickle that sets the state of a {self.kind} twice")
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) after an OrderedDict()
        if self.kind != "collections.OrderedDict":
            raise PickleRefusedError(f"refused a pickle that sets items on a {self.kind}")
        self.items.append((key, value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise PickleRefusedError(f"refused a pickle that calls the result of {self.kind}")


_UNSET: Any = object()


def _standin_call(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kind not in _EAGER:
        return _Record(kind, args, kwargs)
    if kind == "builtins.getattr":  # only ZoneInfo._unpickle, which pickled zoneinfo time zones use
        if (
            len(args) == 2
            and isinstance(args[0], _StandInMeta)
            and args[0]._kind == "zoneinfo.ZoneInfo"
            and args[1] == "_unpickle"
        ):
            return _standin("zoneinfo.ZoneInfo._unpickle")
        what = args[0]._kind if args and isinstance(args[0], _StandInMeta) else "an object"
        raise PickleRefusedError(
            f"refused getattr({what}, {args[1] if len(args) > 1 else ''!r}) in a pickle: the restricted "
            "unpickler resolves no attributes but ZoneInfo._unpickle"
        )
    if kind == "_codecs.encode":  # protocol-2 pickles rebuild bytes from latin-1 text
        if (
            len(args) == 2
            and isinstance(args[0], str)
            and isinstance(args[1], str)
            and args[1].replace("_", "-").lower() in ("latin1", "latin-1", "iso-8859-1")
            and not kwargs
        ):
            return args[0].encode("latin-1")
        raise PickleRefusedError("refused _codecs.encode(...) in a pickle: only latin-1 text is allowed")
    return _Record(kind, args, kwargs)


_EAGER = frozenset({"builtins.getattr", "_codecs.encode"})
_STANDINS: dict[str, _StandInMeta] = {}


def _standin(kind: str) -> _StandInMeta:
    cls = _STANDINS.get(kind)
    if cls is None:
        name = kind.rsplit(".", 1)[-1]
        made = _StandInMeta(name, (_StandIn,), {"_kind": kind, "__slots__": ()})
        cls = _STANDINS.setdefault(kind, made)  # atomic: racing threads end up with one class
    return cls


_NUMPY_GLOBALS = {
    ("numpy", "dtype"): "numpy.dtype",
    ("numpy", "ndarray"): "numpy.ndarray",
    **{
        (f"numpy.{core}.{mod}", name): f"numpy.{name}"
        for core in ("core", "_core")
        for mod, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    },
}
_PANDAS_NAMES = frozenset(
    {
        *("DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "CategoricalIndex", "DatetimeIndex"),
        *("TimedeltaIndex", "Categorical", "CategoricalDtype", "DatetimeTZDtype", "StringDtype"),
        *("BooleanDtype", "Float32Dtype", "Float64Dtype", "NA", "NaT", "Timestamp", "Timedelta"),
        *(f"{sign}Int{bits}Dtype" for sign in ("", "U") for bits in (8, 16, 32, 64)),
        *("ArrowStringArray", "ArrowStringArrayNumpySemantics", "StringArray", "DatetimeArray"),
        *("TimedeltaArray", "IntegerArray", "FloatingArray", "BooleanArray"),
        *("BlockManager", "SingleBlockManager", "_unpickle_block", "__pyx_unpickle_NDArrayBacked"),
        *("_new_Index", "_new_DatetimeIndex", "_new_TimedeltaIndex", "_unpickle_timestamp"),
        *("_timedelta_unpickle", "_nat_unpickle", "__nat_unpickle"),
    }
)
_PANDAS_MODULES = frozenset(
    {
        "pandas",
        "pandas.arrays",
        "pandas._libs.arrays",
        "pandas._libs.internals",
        "pandas._libs.missing",
        "pandas._libs.tslibs.nattype",
        "pandas._libs.tslibs.timestamps",
        "pandas._libs.tslibs.timedeltas",
        "pandas.core.frame",
        "pandas.core.series",
        "pandas.core.internals.managers",
        "pandas.core.indexes.base",
        "pandas.core.indexes.range",
        "pandas.core.indexes.multi",
        "pandas.core.indexes.category",
        "pandas.core.indexes.datetimes",
        "pandas.core.indexes.timedeltas",
        "pandas.core.arrays.categorical",
        "pandas.core.arrays.datetimes",
        "pandas.core.arrays.timedeltas",
        "pandas.core.arrays.integer",
        "pandas.core.arrays.floating",
        "pandas.core.arrays.boolean",
        "pandas.core.arrays.string_",
        "pandas.core.arrays.string_arrow",
        "pandas.core.dtypes.dtypes",
    }
)
_OTHER_GLOBALS = frozenset(
    {
        *(f"builtins.{name}" for name in ("set", "frozenset", "bytearray", "bytes", "complex", "slice")),
        *(f"builtins.{name}" for name in ("range", "getattr", "NoneType", "type")),
        *(f"builtins.{name}" for name in ("dict", "list", "tuple", "str", "int", "float", "bool")),
        "_codecs.encode",
        "collections.OrderedDict",
        *(f"datetime.{name}" for name in ("date", "datetime", "time", "timedelta", "timezone")),
        "zoneinfo.ZoneInfo",
        "zoneinfo._zoneinfo.ZoneInfo",
        *("pytz._p", "pytz._UTC", "pytz.FixedOffset", "dateutil.tz.tz.tzutc"),
        *(
            f"pyarrow.lib.{name}"
            for name in ("_restore_array", "py_buffer", "type_for_alias", "chunked_array")
        ),
    }
)
# the frequency of a DatetimeIndex: pandas offsets rebuilt from (n, normalize) only
_OFFSETS = frozenset(
    {
        *("Day", "Hour", "Minute", "Second", "Milli", "Micro", "Nano", "BusinessDay", "Week"),
        *(
            "MonthEnd",
            "MonthBegin",
            "BusinessMonthEnd",
            "BusinessMonthBegin",
            "SemiMonthEnd",
            "SemiMonthBegin",
        ),
        *("QuarterEnd", "QuarterBegin", "BQuarterEnd", "BQuarterBegin"),
        *("YearEnd", "YearBegin", "BYearEnd", "BYearBegin"),
    }
)
_OFFSET_NAME = re.compile(r"[A-Z][A-Za-z]{1,40}")
_PICKLE_MAX_DEPTH = 100
_DATETIME_UNITS = {7: "s", 8: "ms", 9: "us", 10: "ns"}
_TIME_UNITS = frozenset({"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic"})
_SIMPLE_DTYPE = re.compile(r"([biufcMmOSU])(\d{0,9})")
_PLAIN = (type(None), bool, int, float, str, bytes)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are all stand-ins; see :func:`restricted_loads`."""

    def find_class(self, module: str, name: str) -> Any:
        # pickles written by Python 2 (protocol 2) name some builtins differently
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        kind = _NUMPY_GLOBALS.get((module, name))
        if kind is None and module in _PANDAS_MODULES and name in _PANDAS_NAMES:
            kind = f"pandas.{name}"
        if kind is None and f"{module}.{name}" in _OTHER_GLOBALS:
            kind = f"{module}.{name}".replace("zoneinfo._zoneinfo.", "zoneinfo.")
        if kind is None and module == "pandas._libs.tslibs.offsets" and _OFFSET_NAME.fullmatch(name):
            kind = f"offset.{name}"  # rebuilt if in _OFFSETS, else dropped as an index's freq
        scalar_type = vars(np).get(name) if module == "numpy" else None  # no module __getattr__
        if kind is None and isinstance(scalar_type, type) and issubclass(scalar_type, np.generic):
            kind = f"numpy.type.{name}"  # a NumPy scalar type as a value
        if kind is None:
            raise PickleRefusedError(
                f"refused to unpickle the global {module}.{name}: with allow_pickle=True only builtins data "
                "types, datetime, NumPy and pandas data are loaded. Ask the sender to use "
                "flame.codec.encode instead of pickle"
            )
        return _standin(kind)


def restricted_loads(data: bytes, max_bytes: int) -> Any:
    """Load a pickle with stand-ins for every global, then rebuild the real values with our own code.

    The pickle machine itself only makes builtins containers, numbers, strings and bytes, plus
    :class:`_Record` s; no library code runs before :class:`_Rebuilder` has checked the record.
    """
    if len(data) > max_bytes:
        raise PayloadError(
            f"the pickle has {len(data)} bytes, more than max_bytes={max_bytes}; raise max_bytes if it is trusted"
        )
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except PayloadError:
        raise
    except Exception as exc:  # whatever a malformed pickle makes the unpickler raise
        raise PayloadError(f"cannot unpickle the payload ({type(exc).__name__}: {exc})") from exc
    rebuilder = _Rebuilder(len(data), max_bytes)
    try:
        return rebuilder.value(loaded, 0)
    except PayloadError:
        raise
    except RecursionError as exc:
        raise PayloadError(
            f"refused a pickle nested too deeply (more than {_PICKLE_MAX_DEPTH} levels)"
        ) from exc
    except Exception as exc:  # a constructor refusing validated but inconsistent parts
        raise PayloadError(f"cannot unpickle the payload ({type(exc).__name__}: {exc})") from exc


class _Manager:
    """A pandas block manager's parts: axes and (values, column positions) blocks. Never returned."""

    def __init__(self, axes: list[Any], blocks: list[tuple[Any, list[int]]]) -> None:
        self.axes, self.blocks = axes, blocks


class _Backed:
    """An NDArray-backed pandas array's parts (DatetimeArray, Categorical, ...). Never returned."""

    def __init__(self, kind: str, ndarray: NDArray, dtype: Any) -> None:
        self.kind, self.ndarray, self.dtype = kind, ndarray, dtype


def _refuse(what: str) -> PickleRefusedError:
    return PickleRefusedError(
        f"refused a pickle: {what}. With allow_pickle=True only plain data, NumPy arrays of non-object "
        "dtypes and pandas objects are rebuilt; ask the sender to use flame.codec.encode"
    )


class _Rebuilder:
    """Turns what :class:`_RestrictedUnpickler` loaded into real values, checking every part.

    Arrays are made by ``np.frombuffer(...).copy()`` from bytes the pickle carries, after the dtype is
    rebuilt from its validated description and shape x itemsize is checked against those bytes. All
    array bytes together may not exceed the pickle's own size (or ``max_bytes``); all elements that
    calls such as ``frozenset(list)`` copy may not exceed the pickle's size either, so memoised parts
    reused many times cannot multiply memory. Shared parts are rebuilt once (memo by identity).
    """

    def __init__(self, size: int, max_bytes: int) -> None:
        self.byte_budget = min(size, max_bytes)
        self.element_budget = size
        # DataFrame columns (slots, placements, views) cost no bytes when the frame has no rows
        self.column_budget = size + _FREE_COLUMN_VIEWS
        self.memo: dict[int, Any] = {}
        self.busy: set[int] = set()

    # ---- budgets ------------------------------------------------------------------------------

    def charge_bytes(self, n: int) -> None:
        self.byte_budget -= n
        if self.byte_budget < 0:
            raise PayloadError(
                "refused a pickle whose arrays need more bytes than it carries (or than max_bytes): "
                "a buffer is used more than once"
            )

    def charge_elements(self, n: int) -> None:
        self.element_budget -= n
        if self.element_budget < 0:
            raise PayloadError("refused a pickle that copies its containers more often than it carries them")

    def charge_columns(self, n: int) -> None:
        self.column_budget -= n
        if self.column_budget < 0:
            raise PayloadError(
                "refused a pickle whose DataFrames declare more columns than it carries "
                f"(more than its size plus {_FREE_COLUMN_VIEWS})"
            )

    # ---- the walk -----------------------------------------------------------------------------

    def value(self, obj: Any, depth: int) -> Any:
        cls = type(obj)
        if cls in _PLAIN or cls is bytearray:
            return obj
        if depth > _PICKLE_MAX_DEPTH:
            raise PayloadError(f"refused a pickle nested more than {_PICKLE_MAX_DEPTH} levels deep")
        key = id(obj)
        done = self.memo.get(key, _UNSET)
        if done is not _UNSET:
            return done
        if key in self.busy:
            raise _refuse("a structure that contains itself through a tuple or an object")
        if cls is _Record and obj.kind == "numpy.scalar":  # lists of NumPy numbers: the hot path
            self.busy.add(key)
            number = self.scalar(obj, depth + 1)
            self.busy.discard(key)
            self.memo[key] = number
            return number
        if cls is list:
            self.memo[key] = obj  # lists are rebuilt in place, so they may contain themselves
            for i, item in enumerate(obj):
                if type(item) not in _PLAIN:
                    obj[i] = self.value(item, depth + 1)
            return obj
        if cls is dict:
            out: dict[Any, Any] = {}
            self.memo[key] = out
            for k, v in obj.items():
                out[self.value(k, depth + 1)] = self.value(v, depth + 1)
            return out
        self.busy.add(key)
        try:
            if cls is tuple:
                result: Any = tuple([self.value(item, depth + 1) for item in obj])
            elif cls is set or cls is frozenset:
                result = cls(self.value(item, depth + 1) for item in obj)
            elif cls is _Record:
                result = self.record(obj, depth + 1)
                if isinstance(result, (_Manager, _Backed)):
                    result = self.finish(result)
            elif isinstance(obj, _StandInMeta):
                result = self.bare_global(obj._kind)
            else:
                raise _refuse(f"it contains a {_type_name(obj)}")
        finally:
            self.busy.discard(key)
        self.memo[key] = result
        return result

    def finish(self, part: Any) -> Any:
        if isinstance(part, _Backed):
            return self.backed_array(part, part.ndarray)
        raise _refuse("a pandas block manager outside a DataFrame or Series")

    def bare_global(self, kind: str) -> Any:
        """A global used as a value, not called."""
        if kind in ("pandas.NA",):
            return _pandas().NA
        if kind == "pandas.NaT":
            return _pandas().NaT
        if kind == "builtins.NoneType":
            return type(None)
        if kind.startswith("builtins.") and kind[9:] in _BUILTIN_TYPES:
            return _BUILTIN_TYPES[kind[9:]]
        if kind.startswith("numpy.type."):
            return vars(np)[kind[11:]]
        raise _refuse(f"{kind} used as a value")

    def record(self, rec: _Record, depth: int) -> Any:
        builder = _BUILDERS.get(rec.kind)
        if builder is None and rec.kind.startswith("offset."):
            builder = _Rebuilder.offset
        if builder is None:
            raise _refuse(f"a call of {rec.kind}")
        if rec.kwargs:
            raise _refuse(f"keyword arguments to {rec.kind}")
        if rec.items and rec.kind != "collections.OrderedDict":
            raise _refuse(f"items set on {rec.kind}")
        return builder(self, rec, depth)

    def part(self, obj: Any, depth: int) -> Any:
        """Like :meth:`value`, but a manager or NDArray-backed array record stays in parts."""
        if type(obj) is _Record and obj.kind in _PART_KINDS:
            key = id(obj)
            if key in self.busy:
                raise _refuse("a structure that contains itself")
            self.busy.add(key)
            try:
                return self.record(obj, depth + 1)
            finally:
                self.busy.discard(key)
        return self.value(obj, depth)

    def args(self, rec: _Record, depth: int, counts: tuple[int, ...], *, state: bool = False) -> list[Any]:
        if len(rec.args) not in counts:
            raise _refuse(f"{rec.kind} called with {len(rec.args)} arguments")
        if not state and rec.state is not _UNSET:
            raise _refuse(f"state set on {rec.kind}")
        return [self.value(a, depth) for a in rec.args]

    # ---- builtins, datetime, zoneinfo ---------------------------------------------------------

    def container(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (0, 1))
        kind = rec.kind[9:]
        if not args:
            return {"set": set, "frozenset": frozenset}[kind]()
        items = args[0]
        if type(items) not in (list, tuple):
            raise _refuse(f"{kind}() of a {_type_name(items)}")
        self.charge_elements(len(items))
        return {"set": set, "frozenset": frozenset}[kind](items)

    def bytes_like(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (0, 1, 2), state=rec.kind == "builtins.bytearray")
        make = bytearray if rec.kind == "builtins.bytearray" else bytes
        if rec.state not in (_UNSET, None, {}):
            raise _refuse("state set on a bytearray")
        if not args:
            return make()
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
            self.charge_elements(len(args[0]))
            return make(args[0], "latin-1")
        if len(args) == 1 and type(args[0]) in (bytes, bytearray):
            self.charge_elements(len(args[0]))
            return make(args[0])
        raise _refuse(f"{make.__name__}() of {_type_name(args[0])}: only of bytes or latin-1 text")

    def complex_(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2))
        if not all(type(a) in (int, float) for a in args):
            raise _refuse("complex() of anything but numbers")
        return complex(*args)

    def slice_(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2, 3))
        if not all(a is None or type(a) is int for a in args):
            raise _refuse("slice() of anything but integers")
        return slice(*args)

    def range_(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2, 3))
        if not all(type(a) is int for a in args):
            raise _refuse("range() of anything but integers")
        return range(*args)

    def type_(self, rec: _Record, depth: int) -> Any:
        if self.args(rec, depth, (1,)) != [None]:
            raise _refuse("type() of anything but None")
        return type(None)

    def ordered_dict(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (0,))
        del args
        self.charge_elements(len(rec.items))
        return collections.OrderedDict((self.value(k, depth), self.value(v, depth)) for k, v in rec.items)

    def date_time(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2))
        cls = {"datetime.datetime": _dt.datetime, "datetime.date": _dt.date, "datetime.time": _dt.time}[
            rec.kind
        ]
        size = {_dt.datetime: 10, _dt.date: 4, _dt.time: 6}[cls]
        raw = args[0]
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        if type(raw) is not bytes or len(raw) != size or (len(args) == 2 and cls is _dt.date):
            raise _refuse(f"{rec.kind}() of anything but its {size}-byte state")
        tz = self.tzinfo(args[1]) if len(args) == 2 else None
        # the normal constructors check every field's range (datetime(bytes) does not)
        try:
            if cls is _dt.date:
                return _dt.date(raw[0] * 256 + raw[1], raw[2], raw[3])
            if cls is _dt.time:
                hour, fold = raw[0] & 0x7F, raw[0] >> 7
                us = (raw[3] << 16) | (raw[4] << 8) | raw[5]
                return _dt.time(hour, raw[1], raw[2], us, tz, fold=fold)
            month, fold = raw[2] & 0x7F, raw[2] >> 7  # a datetime keeps fold in its month byte
            us = (raw[7] << 16) | (raw[8] << 8) | raw[9]
            return _dt.datetime(
                raw[0] * 256 + raw[1], month, raw[3], raw[4], raw[5], raw[6], us, tz, fold=fold
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise PayloadError(f"refused a pickle with an invalid {rec.kind}: {exc}") from None

    def timedelta(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2, 3))
        if not all(type(a) is int for a in args):
            raise _refuse("timedelta() of anything but integers")
        return _dt.timedelta(*args)

    def timezone(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2))
        if type(args[0]) is not _dt.timedelta or (len(args) == 2 and type(args[1]) is not str):
            raise _refuse("timezone() of anything but a timedelta and a name")
        return _dt.timezone(*args)

    def zone(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2))
        return _safe_zone(args[0])

    def pytz_zone(self, rec: _Record, depth: int) -> Any:
        """A pytz zone ``_p(key[, utcoffset, dst, tzname])``: pytz's own on pandas 2, else zoneinfo.

        The key is checked like every zone key (and must be in the IANA database) before pytz sees
        it. A localized zone (the offset a datetime was made with) is looked up among those pytz
        knows for the key, never created; one this node's pytz does not know loads as zoneinfo.
        """
        args = self.args(rec, depth, (1, 4))
        if len(args) == 4 and not (
            type(args[1]) is int
            and type(args[2]) is int
            and type(args[3]) is str
            and abs(args[1]) < 86400
            and abs(args[2]) < 86400
        ):
            raise _refuse(f"a pytz time zone of unknown layout {tuple(args)!r}")
        pytz = _pytz_for_pandas()
        if args[0] == "UTC":
            return _dt.timezone.utc if pytz is None else pytz.utc
        zone = _safe_zone(args[0])
        if pytz is None:
            return zone
        try:
            base = pytz.timezone(args[0])
        except pytz.UnknownTimeZoneError:
            return zone
        if len(args) == 1:
            return base
        localized = getattr(base, "_tzinfos", {}).get(
            (_dt.timedelta(seconds=args[1]), _dt.timedelta(seconds=args[2]), args[3])
        )
        return zone if localized is None else localized

    def utc(self, rec: _Record, depth: int) -> Any:
        self.args(rec, depth, (0,), state=True)
        return _dt.timezone.utc

    def pytz_utc(self, rec: _Record, depth: int) -> Any:
        self.args(rec, depth, (0,), state=True)
        pytz = _pytz_for_pandas()
        return _dt.timezone.utc if pytz is None else pytz.utc

    def fixed_offset(self, rec: _Record, depth: int) -> Any:
        (minutes,) = self.args(rec, depth, (1,))
        if type(minutes) is not int or not -1440 < minutes < 1440:
            raise _refuse("a fixed time zone offset of more than a day")
        pytz = _pytz_for_pandas()
        if pytz is not None:
            return pytz.FixedOffset(minutes)
        return _dt.timezone(_dt.timedelta(minutes=minutes))

    def tzinfo(self, tz: Any) -> _dt.tzinfo | None:
        """A rebuilt time zone: None, datetime.timezone, ZoneInfo, a pytz zone we rebuilt, or a key."""
        if tz is None or type(tz) in (_dt.timezone, zoneinfo.ZoneInfo):
            return tz  # type: ignore[no-any-return]
        if isinstance(tz, _dt.tzinfo) and type(tz).__module__.partition(".")[0] == "pytz":
            return tz  # only pytz_zone, pytz_utc and fixed_offset make these
        if isinstance(tz, str):
            return _dt.timezone.utc if tz == "UTC" else _safe_zone(tz)
        raise _refuse(f"a time zone of type {_type_name(tz)}")

    # ---- NumPy --------------------------------------------------------------------------------

    def dtype(self, rec: _Record, depth: int) -> np.dtype[Any]:
        args = self.args(rec, depth, (1, 3), state=True)
        state = self.value(rec.state, depth) if rec.state is not _UNSET else None
        descr = args[0]
        match = _SIMPLE_DTYPE.fullmatch(descr) if isinstance(descr, str) else None
        if match is None:
            raise _refuse(
                f"the NumPy dtype {descr!r}: only plain numeric, bool, bytes, str and datetime dtypes"
            )
        kind = match.group(1)
        if state is None:
            state = (3, "|", None, None, None, -1, -1, 0)
        if type(state) is not tuple or len(state) not in (8, 9):
            raise _refuse("a NumPy dtype with an unknown state layout")
        _version, order, subarray, names, fields, elsize, _alignment, flags = state[:8]
        if subarray is not None or names is not None or fields is not None:
            raise _refuse("a structured or sub-array NumPy dtype")
        if order not in ("<", ">", "|", "=") or type(elsize) is not int or type(flags) is not int:
            raise _refuse("a NumPy dtype with an invalid state")
        if kind in "SU":
            width = elsize // 4 if kind == "U" else elsize
            if width < 0 or (kind == "U" and elsize % 4) or elsize > 1 << 24:
                raise _refuse(f"a NumPy {kind} dtype of {elsize} bytes")
            text = f"{kind}{width}"
        elif kind in "Mm":
            meta = state[8] if len(state) == 9 else None
            if type(meta) is not tuple or len(meta) != 2 or type(meta[1]) is not tuple or len(meta[1]) != 4:
                raise _refuse("a NumPy datetime dtype without its unit")
            unit, num = meta[1][0], meta[1][1]
            unit = unit.decode("ascii") if isinstance(unit, bytes) else unit
            if unit not in _TIME_UNITS or type(num) is not int or not 1 <= num <= 1 << 20:
                raise _refuse("a NumPy datetime dtype with an invalid unit")
            text = f"{kind}8" if unit == "generic" else f"{kind}8[{num if num != 1 else ''}{unit}]"
        else:
            text = descr
        dtype = np.dtype(text)
        if order in "<>" and dtype.byteorder != "|":
            dtype = dtype.newbyteorder(order)
        if flags != dtype.flags or (kind not in "OSU" and elsize not in (-1, dtype.itemsize)):
            raise _refuse(f"a NumPy dtype {text} whose state does not match it (forged flags or size)")
        return dtype

    def ndarray_parts(
        self, shape: Any, dtype: Any, fortran: Any, raw: Any, depth: int, *, native_order: bool = False
    ) -> NDArray:
        if type(dtype) is _Record and dtype.kind == "numpy.dtype":
            dtype = self.value(dtype, depth)
        if not isinstance(dtype, np.dtype) or type(fortran) is not bool:
            raise _refuse("an array without a plain dtype")
        if (
            type(shape) is not tuple
            or len(shape) > _MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)
        ):
            raise _refuse("an array with an invalid shape")
        count = math.prod(shape)
        order: Literal["C", "F"] = "F" if fortran else "C"
        if dtype.kind == "O":  # an object array: its items come from the pickle as a list
            items = raw if type(raw) is list else None
            if items is None or len(items) != count:
                raise _refuse("an object array not pickled as a list of its items")
            self.charge_elements(count)
            values = [item if type(item) in _PLAIN else self.value(item, depth) for item in items]
            arr: NDArray = np.fromiter(values, dtype=object, count=count)  # sequences stay items
            # NumPy pickles object items in C order whatever the layout; the flag only asks for Fortran
            arr = arr.reshape(shape)
            return np.asfortranarray(arr) if fortran else arr
        raw = self.value(raw, depth)  # protocol 2 spells empty bytes as bytes()
        if type(raw) not in (bytes, bytearray):
            raise _refuse("an array whose data is not bytes")
        if dtype.itemsize == 0 and count:  # NumPy would allocate a byte per element anyway
            raise _refuse(f"an array of {count} zero-size {dtype} elements")
        nbytes = count * dtype.itemsize
        if nbytes != len(raw):
            raise PayloadError(
                f"refused a pickled array of shape {shape} and dtype {dtype}: it needs {nbytes} bytes "
                f"but carries {len(raw)}"
            )
        self.charge_bytes(nbytes)
        flat: NDArray = np.frombuffer(raw, dtype=dtype, count=count)
        # ndarray.__setstate__ stores non-native byte orders swapped to native; _frombuffer keeps them
        native = dtype.newbyteorder("=") if native_order else dtype
        flat = flat.astype(native) if native != dtype else flat.copy()
        return flat.reshape(shape, order=order)

    def reconstruct(self, rec: _Record, depth: int) -> NDArray:
        cls = rec.args[0] if len(rec.args) == 3 else None
        if not isinstance(cls, _StandInMeta) or cls._kind != "numpy.ndarray":
            raise _refuse("numpy _reconstruct of anything but ndarray")
        state = rec.state
        if type(state) is not tuple or len(state) not in (4, 5):
            raise _refuse("an ndarray with an unknown state layout")
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, raw = (self.value(state[0], depth), state[1], state[2], state[3])
        return self.ndarray_parts(shape, dtype, fortran, raw, depth, native_order=True)

    def frombuffer(self, rec: _Record, depth: int) -> NDArray:
        raw, dtype, shape, order = self.args(rec, depth, (4,))
        if order not in ("C", "F"):
            raise _refuse("an array with an invalid order")
        return self.ndarray_parts(shape, dtype, order == "F", raw, depth)

    def scalar(self, rec: _Record, depth: int) -> Any:
        if len(rec.args) != 2 or rec.kwargs or rec.state is not _UNSET:
            raise _refuse("a NumPy scalar of unknown layout")
        dtype, raw = self.value(rec.args[0], depth), self.value(rec.args[1], depth)
        if not isinstance(dtype, np.dtype) or dtype.kind == "O":
            raise _refuse("a NumPy scalar of object dtype")
        if type(raw) is not bytes or len(raw) != dtype.itemsize:
            raise _refuse("a NumPy scalar whose data does not match its dtype")
        if not raw:  # an empty np.bytes_ / np.str_
            return dtype.type()
        return np.frombuffer(raw, dtype=dtype)[0]

    def ndarray_class(self, rec: _Record, depth: int) -> Any:
        raise _refuse("numpy.ndarray called directly (it allocates uninitialised memory)")

    # ---- pandas -------------------------------------------------------------------------------

    def frame(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        mgr = self.manager_of(rec, depth)
        if len(mgr.axes) != 2:
            raise _refuse("a DataFrame whose manager does not have two axes")
        columns, index = mgr.axes
        nrows, ncols = len(index), len(columns)
        # a RangeIndex of columns costs nothing to declare: charge its slots and the column views
        # made below before allocating them
        self.charge_columns(2 * ncols)
        arrays: list[Any] = [None] * ncols
        for values, locs in mgr.blocks:
            for j, loc in enumerate(locs):
                if not 0 <= loc < ncols or arrays[loc] is not None:
                    raise _refuse("a DataFrame block placed outside its columns or twice")
                arrays[loc] = self.block_column(values, j, len(locs), nrows)
        if any(a is None for a in arrays):
            raise _refuse("a DataFrame with columns no block holds")
        data = {}
        for j, column in enumerate(arrays):
            if isinstance(column, np.ndarray) and column.dtype == object:
                column = pd.Series(column, index=index, dtype=object, copy=False)
            data[j] = column
        df = pd.DataFrame(data, index=index, copy=False)
        df.columns = columns
        return df

    def block_column(self, values: Any, j: int, width: int, nrows: int) -> Any:
        if isinstance(values, _Backed):
            nd = values.ndarray
            if nd.ndim == 2 and nd.shape[0] == width:
                nd = nd[j]
            elif not (nd.ndim == 1 and width == 1):
                raise _refuse("a pandas block whose shape does not fit its columns")
            column = self.backed_array(values, nd)
        elif isinstance(values, np.ndarray):
            if values.ndim == 2 and values.shape[0] == width:
                column = values[j]
            elif values.ndim == 1 and width == 1:
                column = values
            else:
                raise _refuse("a pandas block whose shape does not fit its columns")
        elif width == 1 and _is_extension_array(values):
            column = values
        else:
            raise _refuse(f"a pandas block of {_type_name(values)}")
        if len(column) != nrows:
            raise _refuse("a pandas column whose length differs from its index")
        return column

    def series(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        mgr = self.manager_of(rec, depth)
        state = rec.state if isinstance(rec.state, dict) else {}
        if len(mgr.axes) != 1 or len(mgr.blocks) != 1:
            raise _refuse("a Series whose manager does not have one axis and one block")
        index = mgr.axes[0]
        column = self.block_column(mgr.blocks[0][0], 0, 1, len(index))
        name = self.value(state.get("_name"), depth)
        dtype = object if isinstance(column, np.ndarray) and column.dtype == object else None
        return pd.Series(column, index=index, name=name, dtype=dtype, copy=False)

    def manager_of(self, rec: _Record, depth: int) -> _Manager:
        self.args(rec, depth, (0,), state=True)
        state = rec.state
        if type(state) is not dict:
            raise _refuse(f"a {rec.kind} without its state")
        mgr = self.part(state.get("_mgr", state.get("_data")), depth)
        if not isinstance(mgr, _Manager):
            raise _refuse(f"a {rec.kind} without a block manager")
        return mgr

    def manager(self, rec: _Record, depth: int) -> _Manager:
        single = rec.kind == "pandas.SingleBlockManager"
        if rec.args:  # BlockManager(blocks, axes) / SingleBlockManager(block, axis)
            if len(rec.args) != 2 or rec.state is not _UNSET:
                raise _refuse(f"a {rec.kind} with unknown arguments")
            blocks_in, axes_in = rec.args
            if single:
                blocks_in, axes_in = (blocks_in,), [axes_in]
            if type(blocks_in) not in (tuple, list) or type(axes_in) not in (tuple, list):
                raise _refuse(f"a {rec.kind} with unknown arguments")
            raw_blocks = []
            for block in blocks_in:
                if (
                    type(block) is not _Record
                    or block.kind != "pandas._unpickle_block"
                    or len(block.args) != 3
                ):
                    raise _refuse("a pandas block that is not _unpickle_block(values, placement, ndim)")
                raw_blocks.append((block.args[0], block.args[1]))
        else:  # NEWOBJ, then BUILD with (axes, values, items, {"0.14.1": {"axes": ..., "blocks": ...}})
            state = rec.state
            if type(state) is not tuple or len(state) < 4 or type(state[3]) is not dict:
                raise _refuse(f"a {rec.kind} with an unknown state layout")
            inner = state[3].get("0.14.1")
            if (
                type(inner) is not dict
                or type(inner.get("axes")) is not list
                or type(inner.get("blocks")) is not list
            ):
                raise _refuse(f"a {rec.kind} with an unknown state layout")
            axes_in = inner["axes"]
            raw_blocks = []
            for block in inner["blocks"]:
                if type(block) is not dict:
                    raise _refuse("a pandas block of unknown layout")
                raw_blocks.append((block.get("values"), block.get("mgr_locs")))
        axes = [self.value(axis, depth) for axis in axes_in]
        if not all(isinstance(axis, _pandas().Index) for axis in axes):
            raise _refuse("a pandas block manager whose axes are not indexes")
        blocks = []
        # the blocks of a DataFrame's manager place at most one column each of axes[0] (its columns);
        # a placement is measured and charged before it is expanded into a list, so a memoised
        # slice(0, 2**24) reused by many blocks cannot multiply memory
        remaining = len(axes[0]) if axes else 0
        for values, placement in raw_blocks:
            placement = self.value(placement, depth)
            if single:  # a Series' one block holds its one column, whatever its placement says
                self.placement_length(placement)
                locs = [0]
            else:
                n = self.placement_length(placement)
                remaining -= n
                if remaining < 0:
                    raise _refuse("a pandas block manager whose blocks place more columns than it has")
                self.charge_columns(n)
                locs = self.placement(placement)
            blocks.append((self.part(values, depth), locs))
        return _Manager(axes, blocks)

    def placement_length(self, placement: Any) -> int:
        """How many columns a placement names, without expanding it."""
        if type(placement) is slice:
            if not all(
                v is None or type(v) is int for v in (placement.start, placement.stop, placement.step)
            ):
                raise _refuse("a block placement of non-integers")
            if placement.stop is None or placement.stop > 1 << 24:
                raise _refuse("a block placement without a bound")
            if placement.step == 0:
                raise _refuse("a block placement with step 0")
            return len(range(*placement.indices(placement.stop)))
        if isinstance(placement, np.ndarray) and placement.ndim == 1 and placement.dtype.kind in "iu":
            return len(placement)
        raise _refuse("a block placement that is neither a slice nor an integer array")

    def placement(self, placement: Any) -> list[int]:
        if type(placement) is slice:
            return list(range(*placement.indices(placement.stop)))
        return [int(v) for v in placement.tolist()]

    def ndarray_backed(self, rec: _Record, depth: int) -> _Backed:
        args = rec.args
        if len(args) != 3 or not isinstance(args[0], _StandInMeta):
            raise _refuse("an NDArray-backed pandas array of unknown layout")
        kind = args[0]._kind
        if kind not in (
            "pandas.DatetimeArray",
            "pandas.TimedeltaArray",
            "pandas.StringArray",
            "pandas.Categorical",
        ):
            raise _refuse(f"an NDArray-backed {kind}")
        state = rec.state if rec.state is not _UNSET else args[2]
        if type(state) is dict:
            nd, dtype = state.get("_ndarray", state.get("_data")), state.get("_dtype")
        elif type(state) is tuple and len(state) in (2, 3):
            nd, dtype = state[0], state[1]
        else:
            raise _refuse(f"a {kind} with an unknown state layout")
        nd, dtype = self.value(nd, depth), self.value(dtype, depth)
        if isinstance(dtype, np.ndarray):
            nd, dtype = dtype, nd
        if not isinstance(nd, np.ndarray) or nd.ndim not in (1, 2):
            raise _refuse(f"a {kind} without its values")
        return _Backed(kind, nd, dtype)

    def backed_array(self, part: _Backed, nd: NDArray) -> Any:
        pd = _pandas()
        if nd.ndim != 1:
            raise _refuse(f"a two-dimensional {part.kind}")
        dtype = part.dtype
        if part.kind == "pandas.DatetimeArray":
            if nd.dtype.kind != "M":
                raise _refuse("a DatetimeArray of non-datetime values")
            arr = pd.array(nd, copy=False)
            if isinstance(dtype, pd.DatetimeTZDtype):
                return arr.tz_localize("UTC").tz_convert(dtype.tz)
            if dtype != nd.dtype:
                raise _refuse("a DatetimeArray whose dtype does not match its values")
            return arr
        if part.kind == "pandas.TimedeltaArray":
            if nd.dtype.kind != "m" or dtype != nd.dtype:
                raise _refuse("a TimedeltaArray of non-timedelta values")
            return pd.array(nd, copy=False)
        if part.kind == "pandas.StringArray":
            if nd.dtype != object or not isinstance(dtype, pd.StringDtype) or dtype.storage != "python":
                raise _refuse("a StringArray of unknown layout")
            return pd.array(nd, dtype=dtype)
        if nd.dtype.kind != "i" or not isinstance(dtype, pd.CategoricalDtype):  # Categorical
            raise _refuse("a Categorical of unknown layout")
        return pd.Categorical.from_codes(nd, dtype=dtype)

    def new_index(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        if len(rec.args) != 2 or not isinstance(rec.args[0], _StandInMeta) or type(rec.args[1]) is not dict:
            raise _refuse("an index of unknown layout")
        kind, d = rec.args[0]._kind, rec.args[1]
        name = self.value(d.get("name"), depth)
        if kind == "pandas.RangeIndex":
            start, stop, step = d.get("start", 0), d.get("stop"), d.get("step", 1)
            if not all(type(v) is int for v in (start, stop, step)):
                raise _refuse("a RangeIndex of non-integers")
            return pd.RangeIndex(start, stop, step, name=name)
        if kind == "pandas.MultiIndex":
            levels = [self.value(level, depth) for level in _require_list(d.get("levels"))]
            codes = [self.value(c, depth) for c in _require_list(d.get("codes"))]
            names = self.value(d.get("names"), depth)
            sortorder = d.get("sortorder")
            if not all(isinstance(level, pd.Index) for level in levels) or not all(
                isinstance(c, np.ndarray) and c.dtype.kind == "i" for c in codes
            ):
                raise _refuse("a MultiIndex of unknown layout")
            if sortorder is not None and type(sortorder) is not int:
                raise _refuse("a MultiIndex with an invalid sort order")
            return pd.MultiIndex(
                levels=levels, codes=codes, sortorder=sortorder, names=names, verify_integrity=True
            )
        if kind not in (
            "pandas.Index",
            "pandas.CategoricalIndex",
            "pandas.DatetimeIndex",
            "pandas.TimedeltaIndex",
        ):
            raise _refuse(f"an index of class {kind}")
        data = self.value(d.get("data"), depth)
        freq = self.freq(d.get("freq"), depth) if rec.kind != "pandas._new_Index" else None
        if freq is None and rec.kind != "pandas._new_Index":
            freq = self.array_freq(d.get("data"), depth)
        if isinstance(data, np.ndarray):
            if data.ndim != 1:
                raise _refuse("an index of more than one dimension")
            if data.dtype == object:
                return pd.Index(data, dtype=object, name=name, copy=False)
        elif not _is_extension_array(data):
            raise _refuse("an index without its values")
        if kind == "pandas.DatetimeIndex":
            return pd.DatetimeIndex(data, name=name, freq=freq)
        if kind == "pandas.TimedeltaIndex":
            return pd.TimedeltaIndex(data, name=name, freq=freq)
        if kind == "pandas.CategoricalIndex":
            return pd.CategoricalIndex(data, name=name)
        return pd.Index(data, name=name, copy=False)

    def array_freq(self, obj: Any, depth: int) -> Any:
        """pandas 2 keeps an index's frequency in the state of its DatetimeArray/TimedeltaArray."""
        if type(obj) is not _Record or obj.kind != "pandas.__pyx_unpickle_NDArrayBacked":
            return None
        state = obj.state if obj.state is not _UNSET else (obj.args[2] if len(obj.args) == 3 else None)
        if type(state) is not tuple or len(state) != 3 or type(state[2]) is not dict:
            return None
        return self.freq(state[2].get("_freq"), depth)

    def categorical_dtype(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        args = self.args(rec, depth, (0, 1, 2), state=True)
        state = self.value(rec.state, depth) if rec.state is not _UNSET else {}
        if type(state) is not dict:
            raise _refuse("a CategoricalDtype of unknown layout")
        categories = args[0] if args else state.get("categories")
        ordered = args[1] if len(args) > 1 else state.get("ordered", state.get("_ordered", False))
        if (categories is not None and not isinstance(categories, pd.Index)) or ordered not in (
            True,
            False,
            None,
        ):
            raise _refuse("a CategoricalDtype of unknown layout")
        return pd.CategoricalDtype(categories, ordered=bool(ordered))

    def tz_dtype(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        args = self.args(rec, depth, (0, 2), state=True)
        state = self.value(rec.state, depth) if rec.state is not _UNSET else {}
        if type(state) is not dict:
            raise _refuse("a DatetimeTZDtype of unknown layout")
        unit, tz = args if args else (state.get("unit", "ns"), state.get("tz"))
        if unit not in ("s", "ms", "us", "ns"):
            raise _refuse(f"a DatetimeTZDtype of unit {unit!r}")
        zone = self.tzinfo(tz)
        if zone is None:
            raise _refuse("a DatetimeTZDtype without a time zone")
        return pd.DatetimeTZDtype(unit=unit, tz=zone)

    def string_dtype(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        args = self.args(rec, depth, (0, 1, 2))
        storage = args[0] if args else "python"
        na = args[1] if len(args) > 1 else pd.NA
        if storage == "pyarrow_numpy":
            storage, na = "pyarrow", np.nan
        if na is pd.NA:
            na_name = "NA"
        elif type(na) is float and math.isnan(na):
            na_name = "nan"
        else:
            raise _refuse("a StringDtype with an unknown missing value")
        return _string_dtype(storage, na_name)

    def simple_dtype(self, rec: _Record, depth: int) -> Any:
        self.args(rec, depth, (0,), state=True)
        if rec.state is not _UNSET and type(rec.state) is not dict:  # a dict holds only pandas' caches
            raise _refuse(f"state set on {rec.kind}")
        name = rec.kind.removeprefix("pandas.").removesuffix("Dtype")
        return _pandas().api.types.pandas_dtype("boolean" if name == "Boolean" else name)

    def masked_array(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        self.args(rec, depth, (0,), state=True)
        state = self.value(rec.state, depth)
        if type(state) is not dict:
            raise _refuse(f"a {rec.kind} of unknown layout")
        data, mask = state.get("_data"), state.get("_mask")
        if not isinstance(data, np.ndarray) or not isinstance(mask, np.ndarray):
            raise _refuse(f"a {rec.kind} without its values")
        if mask.dtype != np.bool_ or data.shape != mask.shape or data.ndim != 1:
            raise _refuse(f"a {rec.kind} whose mask does not fit its values")
        kinds = {"pandas.IntegerArray": "iu", "pandas.FloatingArray": "f", "pandas.BooleanArray": "b"}[
            rec.kind
        ]
        if data.dtype.kind not in kinds:
            raise _refuse(f"a {rec.kind} of {data.dtype} values")
        cls = {"i": pd.arrays.IntegerArray, "u": pd.arrays.IntegerArray, "f": pd.arrays.FloatingArray}.get(
            data.dtype.kind, pd.arrays.BooleanArray
        )
        return cls(data, mask)

    def arrow_string_array(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        self.args(rec, depth, (0,), state=True)
        state = rec.state
        if type(state) is not dict:
            raise _refuse("an ArrowStringArray of unknown layout")
        chunked = self.value(state.get("_pa_array", state.get("_data")), depth)  # pandas 2.0: _data
        dtype = self.value(state.get("_dtype"), depth)
        if dtype is None:
            dtype = _string_dtype("pyarrow", "nan" if rec.kind.endswith("NumpySemantics") else "NA")
        if not isinstance(dtype, pd.StringDtype):
            raise _refuse("an ArrowStringArray without a string dtype")
        return pd.array(chunked, dtype=dtype)

    def pa_chunked(self, rec: _Record, depth: int) -> Any:
        pa: Any = importlib.import_module("pyarrow")
        args = self.args(rec, depth, (1, 2))
        chunks = args[0]
        if type(chunks) is not list or not all(isinstance(c, pa.Array) for c in chunks):
            raise _refuse("a pyarrow chunked array of unknown layout")
        return pa.chunked_array(chunks, type=args[1] if len(args) == 2 else None)

    def pa_type(self, rec: _Record, depth: int) -> Any:
        pa: Any = importlib.import_module("pyarrow")
        (alias,) = self.args(rec, depth, (1,))
        if alias not in ("string", "large_string", "utf8", "large_utf8"):
            raise _refuse(f"the pyarrow type {alias!r}: only strings")
        return pa.type_for_alias(alias)

    def pa_buffer(self, rec: _Record, depth: int) -> Any:
        pa: Any = importlib.import_module("pyarrow")
        (raw,) = self.args(rec, depth, (1,))
        if type(raw) not in (bytes, bytearray):
            raise _refuse("a pyarrow buffer of anything but bytes")
        self.charge_bytes(len(raw))
        return pa.py_buffer(raw)

    def pa_array(self, rec: _Record, depth: int) -> Any:
        pa: Any = importlib.import_module("pyarrow")
        (parts,) = self.args(rec, depth, (1,))
        if type(parts) is not tuple or len(parts) != 7:
            raise _refuse("a pyarrow array of unknown layout")
        arrow_type, length, null_count, offset, buffers, children, dictionary = parts
        if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
            raise _refuse("a pyarrow array of anything but strings")
        if (
            not all(type(v) is int and v >= -1 for v in (length, null_count, offset))
            or length < 0
            or offset < 0
        ):
            raise _refuse("a pyarrow array with invalid sizes")
        if type(buffers) is not list or len(buffers) != 3 or children != [] or dictionary is not None:
            raise _refuse("a pyarrow array of unknown layout")
        if not all(b is None or isinstance(b, pa.Buffer) for b in buffers) or buffers[1] is None:
            raise _refuse("a pyarrow array without its buffers")
        arr = pa.Array.from_buffers(arrow_type, length, buffers, null_count=null_count, offset=offset)
        arr.validate(full=True)  # offsets inside the data, valid UTF-8
        return arr

    def timestamp(self, rec: _Record, depth: int) -> Any:
        pd = _pandas()
        args = self.args(rec, depth, (3, 4))
        value, _freq, tz = args[:3]
        unit = _DATETIME_UNITS.get(args[3] if len(args) == 4 else 10)
        if type(value) is not int or unit is None:
            raise _refuse("a Timestamp of unknown layout")
        ts = pd.Timestamp(np.datetime64(value, unit))  # type: ignore[call-overload]
        zone = self.tzinfo(tz)
        return ts if zone is None else ts.tz_localize("UTC").tz_convert(zone)

    def timedelta_(self, rec: _Record, depth: int) -> Any:
        args = self.args(rec, depth, (1, 2))
        unit = _DATETIME_UNITS.get(args[1] if len(args) == 2 else 10)
        if type(args[0]) is not int or unit is None:
            raise _refuse("a Timedelta of unknown layout")
        return _pandas().Timedelta(np.timedelta64(args[0], unit))  # type: ignore[call-overload]

    def nat(self, rec: _Record, depth: int) -> Any:
        self.args(rec, depth, (0, 1))
        return _pandas().NaT

    def freq(self, obj: Any, depth: int) -> Any:
        """An index's frequency: metadata, so one we do not rebuild is dropped (None), not refused."""
        if type(obj) is _Record and obj.kind.startswith("offset."):
            try:
                return self.value(obj, depth)
            except PickleRefusedError:
                return None
        return obj if obj is None or type(obj) is str else self.value(obj, depth)

    def offset(self, rec: _Record, depth: int) -> Any:
        """A pandas date offset from ``(n, normalize, *small extras)``, e.g. ``Week(1, False, 6)``."""
        name = rec.kind.removeprefix("offset.")
        args = self.args(rec, depth, (0, 1, 2, 3))
        extras_ok = all(
            a is None or type(a) is _dt.timedelta or (type(a) is int and -400 < a < 400) for a in args[2:]
        )
        if (
            name not in _OFFSETS
            or (args and (type(args[0]) is not int or not -(10**6) <= args[0] <= 10**6))
            or (len(args) > 1 and type(args[1]) is not bool)
            or not extras_ok
        ):
            raise _refuse(f"the date offset {name}{tuple(args)!r}")
        return getattr(_pandas().offsets, name)(*args)


_BUILTIN_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool)
}
_PART_KINDS = frozenset(
    {"pandas.BlockManager", "pandas.SingleBlockManager", "pandas.__pyx_unpickle_NDArrayBacked"}
)
_BUILDERS: dict[str, Callable[[_Rebuilder, _Record, int], Any]] = {
    "builtins.set": _Rebuilder.container,
    "builtins.frozenset": _Rebuilder.container,
    "builtins.bytearray": _Rebuilder.bytes_like,
    "builtins.bytes": _Rebuilder.bytes_like,
    "builtins.complex": _Rebuilder.complex_,
    "builtins.slice": _Rebuilder.slice_,
    "builtins.range": _Rebuilder.range_,
    "builtins.type": _Rebuilder.type_,
    "collections.OrderedDict": _Rebuilder.ordered_dict,
    "datetime.datetime": _Rebuilder.date_time,
    "datetime.date": _Rebuilder.date_time,
    "datetime.time": _Rebuilder.date_time,
    "datetime.timedelta": _Rebuilder.timedelta,
    "datetime.timezone": _Rebuilder.timezone,
    "zoneinfo.ZoneInfo._unpickle": _Rebuilder.zone,
    "zoneinfo.ZoneInfo": _Rebuilder.zone,
    "pytz._p": _Rebuilder.pytz_zone,
    "pytz._UTC": _Rebuilder.pytz_utc,
    "pytz.FixedOffset": _Rebuilder.fixed_offset,
    "dateutil.tz.tz.tzutc": _Rebuilder.utc,
    "numpy.dtype": _Rebuilder.dtype,
    "numpy._reconstruct": _Rebuilder.reconstruct,
    "numpy._frombuffer": _Rebuilder.frombuffer,
    "numpy.scalar": _Rebuilder.scalar,
    "numpy.ndarray": _Rebuilder.ndarray_class,
    "pandas.DataFrame": _Rebuilder.frame,
    "pandas.Series": _Rebuilder.series,
    "pandas.BlockManager": _Rebuilder.manager,
    "pandas.SingleBlockManager": _Rebuilder.manager,
    "pandas.__pyx_unpickle_NDArrayBacked": _Rebuilder.ndarray_backed,
    "pandas._new_Index": _Rebuilder.new_index,
    "pandas._new_DatetimeIndex": _Rebuilder.new_index,
    "pandas._new_TimedeltaIndex": _Rebuilder.new_index,
    "pandas.CategoricalDtype": _Rebuilder.categorical_dtype,
    "pandas.DatetimeTZDtype": _Rebuilder.tz_dtype,
    "pandas.StringDtype": _Rebuilder.string_dtype,
    "pandas.BooleanDtype": _Rebuilder.simple_dtype,
    "pandas.Float32Dtype": _Rebuilder.simple_dtype,
    "pandas.Float64Dtype": _Rebuilder.simple_dtype,
    **{f"pandas.{s}Int{b}Dtype": _Rebuilder.simple_dtype for s in ("", "U") for b in (8, 16, 32, 64)},
    "pandas.IntegerArray": _Rebuilder.masked_array,
    "pandas.FloatingArray": _Rebuilder.masked_array,
    "pandas.BooleanArray": _Rebuilder.masked_array,
    "pandas.ArrowStringArray": _Rebuilder.arrow_string_array,
    "pandas.ArrowStringArrayNumpySemantics": _Rebuilder.arrow_string_array,
    "pyarrow.lib.chunked_array": _Rebuilder.pa_chunked,
    "pyarrow.lib.type_for_alias": _Rebuilder.pa_type,
    "pyarrow.lib.py_buffer": _Rebuilder.pa_buffer,
    "pyarrow.lib._restore_array": _Rebuilder.pa_array,
    "pandas._unpickle_timestamp": _Rebuilder.timestamp,
    "pandas._timedelta_unpickle": _Rebuilder.timedelta_,
    "pandas._nat_unpickle": _Rebuilder.nat,
    "pandas.__nat_unpickle": _Rebuilder.nat,
}


def _is_extension_array(value: Any) -> bool:
    return "pandas" in sys.modules and isinstance(value, _pandas().api.extensions.ExtensionArray)


def _require_list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise _refuse("a list where the layout needs one")
    return value


def _pytz_for_pandas() -> Any:
    """pytz if the installed pandas is 2.x (its default time zones are pytz's), else None."""
    if int(_pandas().__version__.partition(".")[0]) >= 3:
        return None
    try:
        return importlib.import_module("pytz")
    except ImportError:
        return None


def _safe_zone(key: Any) -> zoneinfo.ZoneInfo:
    """A ZoneInfo for an IANA key that looks like one: letters, digits, ``_+-`` and up to 3 slashes."""
    if not isinstance(key, str) or _ZONE_KEY.fullmatch(key) is None:
        raise _refuse(f"the time zone {key!r}: only IANA names like 'Europe/Berlin' (no paths)")
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise PayloadError(f"unknown time zone {key!r} in a pickle") from exc

"""The pickle-free payload encoding for everything FLAME nodes exchange.

:func:`encode` turns plain data, NumPy arrays and pandas objects into bytes; :func:`decode` turns
them back. Nothing in an encoded payload can make the receiver run code: the format is MessagePack
plus a fixed set of extension types, and the decoder checks every size, dtype and offset it reads.

Supported values
----------------
* ``None``, ``bool``, ``int`` of any size (ints outside int64/uint64 travel as sign + big-endian
  magnitude), ``float`` (bit exact, including nan, inf and -0.0), ``complex``, ``str``, ``bytes``
  (``bytearray`` and ``memoryview`` are sent as ``bytes``);
* ``list``, ``tuple`` (decodes as ``tuple``), ``set``, ``frozenset``, and ``dict`` whose keys are
  ``str`` or ``int`` (NumPy integers too); other keys raise :class:`~flame.errors.PayloadError`;
* ``datetime.datetime`` (naive or aware, microsecond exact, ``fold`` kept), ``date``, ``time``,
  ``timedelta``; time zones travel as their IANA key (``zoneinfo``/``pytz``) or as a fixed offset
  (``datetime.timezone``), other ``tzinfo`` implementations are refused;
* NumPy arrays (exactly ``numpy.ndarray``) of bool, integer, float, complex, datetime64,
  timedelta64 and fixed-width bytes/str dtypes, any shape (0-d and empty too), byte order kept,
  C or Fortran order kept (other layouts are sent C-ordered); object and structured dtypes are
  refused; NumPy scalars keep their type (``np.float32(1.5)`` decodes as ``np.float32``);
* pandas ``DataFrame``, ``Series`` and ``Index`` (``RangeIndex``, ``MultiIndex``,
  ``DatetimeIndex`` with ``freq``, ``TimedeltaIndex``, ``CategoricalIndex``, ...), with columns of
  NumPy dtypes, object dtype (its values are encoded one by one like any other value), ``str`` /
  ``string`` (``StringDtype``, pyarrow- or python-backed), ``category``, tz-aware datetimes and the
  nullable ``Int*``/``UInt*``/``Float*``/``boolean`` dtypes; ``pd.Timestamp``, ``pd.Timedelta``,
  ``pd.NaT`` and ``pd.NA``. ``attrs`` and ``flags`` are not sent.

Subclasses of ``int``/``float``/``str``/``bytes``/``list``/``dict``/``tuple`` (an ``IntEnum``, an
``OrderedDict``, a namedtuple) are sent as their base type. Strings must be valid Unicode (no lone
surrogates). Values that are extension types (tuples, sets, arrays, pandas objects, ...) may nest at
most 64 levels deep inside each other, on both sides: each level costs the decoder a nested
``msgpack.unpackb`` call with a large C stack frame. Lists and dicts nest as deep as msgpack allows.

Decoded arrays are fresh, writeable, C/Fortran-contiguous copies that own their memory, like
unpickled ones: decoding copies each array buffer once (a memcpy), so a decoded array never
aliases, nor keeps alive, the payload it came from. pandas columns are built on those arrays without
a further copy; a decoded DataFrame is therefore not consolidated into 2-D blocks unless all its
columns share one NumPy dtype. pyarrow-backed strings decode as pyarrow-backed strings when pyarrow
is installed, else as python-backed ``StringDtype`` with the same missing-value semantics.

Wire format (version 1)
-----------------------
::

    payload := MAGIC b"FLMC" | VERSION (1 byte) | body length (a MessagePack uint) | body | buffers

The body is one MessagePack object; values MessagePack cannot express natively are extension types
(codes in :data:`EXT_CODES`). The raw bytes of every array travel *out of band* in the buffer area
after the body, in the order they were registered, and the array's extension payload names its
dtype, shape, order, offset and length in that area. This keeps MessagePack's ``bin``/``ext``
objects small, so encoding costs one copy of each array buffer (into the output) and decoding one
(out of it). pandas string columns backed by pyarrow travel in Arrow layout (offsets, UTF-8 data,
validity bitmap), not as Python strings. The decoder checks the offsets before Arrow sees them and
validates non-ASCII data as UTF-8. MessagePack's own timestamp extension (-1) is never written; if a
payload contains one, msgpack decodes it as ``msgpack.Timestamp``; every other unknown extension type
raises :class:`~flame.errors.PayloadError`.

Memory bounds
-------------
The decoder checks every declared size against the bytes it has before it allocates: each array takes
the *next unused* bytes of the buffer area (offsets must follow each other, so no byte makes two
arrays), shape x itemsize is computed in Python integers (no overflow) and must equal the bytes
named, dtypes with zero-size elements (``S0``, ``U0``) are refused, and the array bytes of one payload
may not exceed ``max_bytes`` (:data:`MAX_DECODED_BYTES`, 4 GiB, unless :func:`decode` is given
another). So the arrays of a decoded value never hold more than the payload carried. The rest of it
costs what MessagePack objects cost in Python: about 20 bytes of memory per payload byte for pandas
objects and short strings, at worst about 80 for empty lists and sets (one byte each on the wire).

Pickle
------
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
import itertools
import math
import pickle
import re
import sys
import zoneinfo
from collections.abc import Callable
from typing import Any, Literal

import msgpack
import numpy as np
import numpy.typing as npt

from flame.errors import PayloadError, PickleRefusedError

__all__ = [
    "EXT_CODES",
    "MAGIC",
    "MAX_DECODED_BYTES",
    "VERSION",
    "decode",
    "encode",
    "is_pickle",
]

MAGIC: bytes = b"FLMC"
"""The four bytes every codec payload starts with."""

VERSION: int = 1
"""The format version this module writes and reads (the byte after :data:`MAGIC`)."""

_HEADER = MAGIC + bytes([VERSION])

MAX_DECODED_BYTES: int = 4 << 30
"""The default ``max_bytes`` of :func:`decode`: at most 4 GiB of array data per payload."""

NDArray = npt.NDArray[Any]

# MessagePack extension type codes (0..127 are for applications).
_EXT_BIGINT = 1
_EXT_TUPLE = 2
_EXT_SET = 3
_EXT_FROZENSET = 4
_EXT_COMPLEX = 5
_EXT_DATETIME = 6
_EXT_DATE = 7
_EXT_TIME = 8
_EXT_TIMEDELTA = 9
_EXT_NDARRAY = 16
_EXT_NPSCALAR = 17
_EXT_DATAFRAME = 32
_EXT_SERIES = 33
_EXT_INDEX = 34
_EXT_PD_TIMESTAMP = 35
_EXT_PD_TIMEDELTA = 36
_EXT_PD_NAT = 37
_EXT_PD_NA = 38

EXT_CODES: dict[str, int] = {
    "bigint": _EXT_BIGINT,
    "tuple": _EXT_TUPLE,
    "set": _EXT_SET,
    "frozenset": _EXT_FROZENSET,
    "complex": _EXT_COMPLEX,
    "datetime": _EXT_DATETIME,
    "date": _EXT_DATE,
    "time": _EXT_TIME,
    "timedelta": _EXT_TIMEDELTA,
    "ndarray": _EXT_NDARRAY,
    "numpy_scalar": _EXT_NPSCALAR,
    "dataframe": _EXT_DATAFRAME,
    "series": _EXT_SERIES,
    "index": _EXT_INDEX,
    "pd_timestamp": _EXT_PD_TIMESTAMP,
    "pd_timedelta": _EXT_PD_TIMEDELTA,
    "pd_nat": _EXT_PD_NAT,
    "pd_na": _EXT_PD_NA,
}
"""The MessagePack extension type codes of format version 1, by name (for documentation and tests)."""

# dtype kinds that may travel as raw buffers: bool, ints, floats, complex, datetime64,
# timedelta64, fixed-width bytes and str. Never "O" (object), "V" (void/structured), "T".
_ARRAY_KINDS = frozenset("biufcmMSU")
# dtype kinds pandas stores as plain NumPy columns.
_PANDAS_NUMPY_KINDS = frozenset("biufcmM")
_MASKED_DTYPES = frozenset(
    {*(f"{sign}Int{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)), "Float32", "Float64", "boolean"}
)
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_MAX_NDIM = 64
_MAX_DIM = 2**62  # an array dimension; the byte count is checked against the payload anyway
# Tuples, sets, arrays, pandas objects ... are extension types, each decoded by a nested
# msgpack.unpackb call that puts ~30 KiB on the C stack: their nesting depth is bounded on both sides.
_MAX_EXT_DEPTH = 64
# column views a codec payload's multi-block DataFrames may make beyond one per payload byte: a
# column of an empty frame carries (almost) nothing, so a byte bound alone would refuse honest ones
_FREE_COLUMN_VIEWS = 1 << 16
_CONTAINERS = (dict, list, tuple, set, frozenset)
# an IANA time zone key: letters, digits and _+- in up to four parts; no dots, no leading slash
_ZONE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]{0,29}(/[A-Za-z0-9_+\-]{1,30}){0,3}")

_PICKLE_HINT = (
    "Pickle can run arbitrary code while loading. If this data comes from a peer you trust, "
    "call decode(data, allow_pickle=True): a restricted unpickler then loads builtins data types, "
    "NumPy and pandas objects only. Better, ask the sender to use flame.codec.encode"
)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def encode(obj: object) -> bytes:
    """Encode ``obj`` into a FLAME codec payload (see the module docstring for what is supported).

    Raises :class:`~flame.errors.PayloadError` naming the first value that cannot be encoded.
    """
    _check_keys(obj)
    encoder = _Encoder()
    try:
        body = encoder.pack(obj)
    except PayloadError:
        raise
    except UnicodeEncodeError as exc:
        raise PayloadError(
            f"cannot encode a str that is not valid Unicode ({exc.reason}); "
            "remove lone surrogates, or send the text as bytes"
        ) from exc
    except RecursionError as exc:
        raise PayloadError("cannot encode: the value is nested too deeply; flatten it") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"cannot encode the value: {exc}") from exc
    return b"".join([_HEADER, msgpack.packb(len(body)), body, *encoder.buffers])


def decode(
    data: bytes | bytearray | memoryview, *, allow_pickle: bool = False, max_bytes: int | None = None
) -> Any:
    """Decode a payload made by :func:`encode` and return the value.

    Malformed, truncated or unknown data raises :class:`~flame.errors.PayloadError`. Data that is a
    pickle raises :class:`~flame.errors.PickleRefusedError` unless ``allow_pickle`` is true, in which
    case a restricted unpickler loads it (only builtins data types, datetime, NumPy and pandas).

    ``max_bytes`` (default :data:`MAX_DECODED_BYTES`) caps the array data a payload may declare, checked
    before anything is allocated; a payload over it raises :class:`~flame.errors.PayloadError`.
    """
    if max_bytes is None:
        max_bytes = MAX_DECODED_BYTES
    if type(max_bytes) is not int or max_bytes < 0:
        raise PayloadError(f"max_bytes must be a non-negative int, not {max_bytes!r}")
    view = _as_byte_view(data)
    if is_pickle(view):
        if not allow_pickle:
            raise PickleRefusedError(
                f"the payload is a pickle (protocol {view[1]}) and was refused. {_PICKLE_HINT}."
            )
        return _restricted_loads(data if isinstance(data, bytes) else bytes(view), max_bytes)
    if len(view) < len(_HEADER) or bytes(view[:4]) != MAGIC:
        head = bytes(view[:8])
        raise PayloadError(
            f"not a FLAME codec payload: it should start with {MAGIC!r} but starts with {head!r}. "
            "Decode only data made by flame.codec.encode (or, for trusted pickles, allow_pickle=True)"
        )
    version = view[4]
    if version != VERSION:
        raise PayloadError(
            f"unsupported FLAME codec version {version}: this flame-python-sdk reads version {VERSION}. "
            "Use the same flame-python-sdk version on all nodes of the analysis"
        )
    body_len, pos = _read_uint(view, len(_HEADER))
    end = pos + body_len
    if end > len(view):
        raise PayloadError(
            f"truncated FLAME codec payload: the body needs {body_len} bytes but only {len(view) - pos} "
            "remain. The data was cut off in transit or storage; ask the sender to send it again"
        )
    decoder = _Decoder(view[end:], max_bytes, len(view))
    try:
        value = decoder.unpack(view[pos:end])
    except PayloadError:
        raise
    except Exception as exc:  # anything a malformed body makes msgpack, numpy or pandas raise
        raise PayloadError(
            f"malformed FLAME codec payload ({type(exc).__name__}: {exc}). The data is corrupt or was "
            "not made by flame.codec.encode; ask the sender to send it again"
        ) from exc
    if decoder.referenced != len(decoder.area):
        raise PayloadError(
            f"malformed FLAME codec payload: the buffer area has {len(decoder.area)} bytes but its arrays "
            f"reference {decoder.referenced}. The data is corrupt or has trailing bytes"
        )
    return value


def is_pickle(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like a pickle of protocol 2 to 5 (``0x80`` then the protocol byte)."""
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


# --------------------------------------------------------------------------------------------
# helpers shared by both directions
# --------------------------------------------------------------------------------------------


def _as_byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"decode() takes bytes, bytearray or memoryview, not {type(data).__name__}")
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise PayloadError("decode() needs a contiguous buffer; pass bytes(data)")
        view = view.cast("B")
    return view


def _read_uint(view: memoryview, pos: int) -> tuple[int, int]:
    """Read the MessagePack uint at ``pos``; return it and the position after it."""
    if pos >= len(view):
        raise PayloadError("truncated FLAME codec payload: it ends right after the header")
    first = view[pos]
    if first <= 0x7F:
        return first, pos + 1
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(first)
    if width is None or pos + 1 + width > len(view):
        raise PayloadError("malformed FLAME codec payload: the body length after the header is invalid")
    return int.from_bytes(view[pos + 1 : pos + 1 + width], "big"), pos + 1 + width


def _type_name(obj: object) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _check_keys(obj: object, depth: int = 0) -> None:
    """Refuse dict keys other than str and int anywhere inside lists, tuples, sets and dicts."""
    if depth > 500:
        raise PayloadError("cannot encode: the value is nested too deeply (more than 500 levels); flatten it")
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, (str, int, np.integer)):
                raise PayloadError(
                    f"cannot encode a dict key of type {_type_name(key)} ({key!r:.60}): keys must be str or "
                    "int. Convert the keys, e.g. to str, or send a list of (key, value) pairs"
                )
        values: Any = obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        values = obj
    else:
        return
    if any(issubclass(t, _CONTAINERS) for t in set(map(type, values))):
        for value in values:
            if isinstance(value, _CONTAINERS):
                _check_keys(value, depth + 1)


def _pandas() -> Any:
    import pandas

    return pandas


def _tz_spec(tz: Any) -> str | list[Any]:
    """A time zone as its IANA key, or as ``[offset in microseconds, name or None]`` if fixed."""
    key = None  # only zoneinfo's and pytz's keys: other libraries (dateutil 4) have ``key`` too
    if isinstance(tz, zoneinfo.ZoneInfo):
        key = tz.key
    elif type(tz).__module__.partition(".")[0] == "pytz":
        key = getattr(tz, "zone", None)
    if isinstance(key, str) and key:
        return key
    offset = tz.utcoffset(None)
    if isinstance(offset, _dt.timedelta):
        micro = offset // _dt.timedelta(microseconds=1)
        name = tz.tzname(None)
        plain = _dt.timezone(offset)
        keep_name = isinstance(name, str) and not (
            isinstance(tz, _dt.timezone) and name == plain.tzname(None)
        )
        return [micro, name if keep_name else None]
    raise PayloadError(
        f"cannot encode the time zone {tz!r} ({_type_name(tz)}): use zoneinfo.ZoneInfo, pytz or a "
        "fixed-offset datetime.timezone"
    )


def _tz_from_spec(spec: Any) -> _dt.tzinfo:
    if isinstance(spec, str):
        if _ZONE_KEY.fullmatch(spec) is None:  # IANA names only: no paths, no dots
            raise PayloadError(
                f"unknown time zone {spec!r} in the payload: only IANA names like 'Europe/Berlin' are decoded"
            )
        try:
            return zoneinfo.ZoneInfo(spec)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise PayloadError(
                f"unknown time zone {spec!r} in the payload: it is not in this node's IANA time zone "
                "database. If it is a real zone, install or update the tzdata package"
            ) from exc
    micro, name = spec
    offset = _dt.timedelta(microseconds=micro)
    return _dt.timezone(offset) if name is None else _dt.timezone(offset, name)


def _pandas_tz_from_spec(spec: Any) -> Any:
    """A time zone for a pandas dtype: IANA keys go to pandas, which picks its own implementation.

    The key is checked against the IANA database first: pandas would also accept ``dateutil/<path>``
    and open that file.
    """
    tz = _tz_from_spec(spec)
    return spec if isinstance(spec, str) else tz


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


class _Encoder:
    """One encode call: packs the body and collects the out-of-band array buffers."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []
        self.area_size = 0
        self._packers: list[Any] = []
        self._depth = 0

    def pack(self, obj: object) -> bytes:
        # Packers are not re-entrant and ``_default`` packs nested values, so keep one per depth.
        depth = self._depth
        if depth > _MAX_EXT_DEPTH:
            raise PayloadError(
                f"cannot encode: tuples, sets, arrays and pandas objects are nested more than {_MAX_EXT_DEPTH} "
                "levels deep; flatten the value (lists and dicts may nest deeper)"
            )
        if depth == len(self._packers):
            self._packers.append(
                msgpack.Packer(default=self._default, strict_types=True, buf_size=512 if depth else 4096)
            )
        self._depth += 1
        try:
            packed: bytes = self._packers[depth].pack(obj)
            return packed
        finally:
            self._depth -= 1

    def _ext(self, code: int, obj: object) -> msgpack.ExtType:
        return msgpack.ExtType(code, self.pack(obj))

    def _default(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is np.ndarray:
            return self._ext(_EXT_NDARRAY, self._array_meta(obj))
        if cls is tuple:
            return self._ext(_EXT_TUPLE, list(obj))
        if cls is int:  # only called for ints outside int64/uint64
            return _bigint(obj)
        if isinstance(obj, np.generic):
            return self._scalar(obj)
        if "pandas" in sys.modules and (cls.__module__ == "pandas" or cls.__module__.startswith("pandas.")):
            return self._pandas_value(obj)
        if cls is set:
            return self._ext(_EXT_SET, list(obj))
        if cls is frozenset:
            return self._ext(_EXT_FROZENSET, list(obj))
        if cls is complex:
            return self._ext(_EXT_COMPLEX, [obj.real, obj.imag])
        if isinstance(obj, _dt.datetime):
            tz = None if obj.tzinfo is None else _tz_spec(obj.tzinfo)
            fields = [obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond]
            return self._ext(_EXT_DATETIME, [*fields, obj.fold, tz])
        if isinstance(obj, _dt.date):
            return self._ext(_EXT_DATE, [obj.year, obj.month, obj.day])
        if isinstance(obj, _dt.time):
            tz = None if obj.tzinfo is None else _tz_spec(obj.tzinfo)
            return self._ext(_EXT_TIME, [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold, tz])
        if isinstance(obj, _dt.timedelta):
            return self._ext(_EXT_TIMEDELTA, [obj.days, obj.seconds, obj.microseconds])
        # subclasses of natively packed types travel as their base type
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            value = int(obj)
            return value if _INT64_MIN <= value <= _UINT64_MAX else _bigint(value)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, bytes):
            return bytes(obj)
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, tuple):
            return self._ext(_EXT_TUPLE, list(obj))
        if isinstance(obj, frozenset):
            return self._ext(_EXT_FROZENSET, list(obj))
        if isinstance(obj, set):
            return self._ext(_EXT_SET, list(obj))
        if isinstance(obj, np.ndarray):
            raise PayloadError(
                f"cannot encode a {_type_name(obj)} (an ndarray subclass); convert it with np.asarray() "
                "(a masked array's mask would be lost: send data and mask separately)"
            )
        raise PayloadError(
            f"cannot encode an object of type {_type_name(obj)}: flame.codec sends None, bool, int, float, "
            "complex, str, bytes, list, tuple, set, dict, datetime types, NumPy arrays and scalars and "
            "pandas DataFrame/Series/Index. Convert it to one of those"
        )

    # ---- NumPy ------------------------------------------------------------------------------

    def _array_meta(self, arr: NDArray) -> list[Any]:
        """Register ``arr``'s buffer; return ``[dtype, shape, fortran, offset, nbytes]``."""
        dtype = arr.dtype
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            what = "object" if dtype.kind == "O" else f"{dtype}"
            raise PayloadError(
                f"cannot encode a NumPy array of {what} dtype: only bool, integer, float, complex, "
                "datetime64, timedelta64 and fixed-width bytes/str arrays are sent. Convert it, e.g. "
                "with arr.astype(float), or send arr.tolist() if it holds plain values"
            )
        if arr.flags.c_contiguous:
            flat, fortran = arr, False
        elif arr.flags.f_contiguous:
            flat, fortran = arr.T, True
        else:
            flat, fortran = np.ascontiguousarray(arr), False
        raw = flat.reshape(-1).view(np.uint8)
        offset = self.area_size
        nbytes = int(raw.nbytes)
        if nbytes:
            self.buffers.append(memoryview(raw))  # type: ignore[arg-type]
            self.area_size += nbytes
        return [dtype.str, list(arr.shape), fortran, offset, nbytes]

    def _scalar(self, obj: np.generic) -> msgpack.ExtType:
        dtype = obj.dtype
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
            raise PayloadError(f"cannot encode a NumPy scalar of dtype {dtype}; convert it to a Python value")
        # an empty np.bytes_/np.str_ has a zero-size dtype but tobytes() gives one NUL: send none
        return self._ext(_EXT_NPSCALAR, [dtype.str, obj.tobytes() if dtype.itemsize else b""])

    # ---- pandas -----------------------------------------------------------------------------

    def _pandas_value(self, obj: Any) -> Any:
        pd = _pandas()
        if isinstance(obj, pd.DataFrame):
            return self._ext(_EXT_DATAFRAME, self._frame_meta(obj))
        if isinstance(obj, pd.Series):
            meta = {"name": obj.name, "index": obj.index, "values": self._column(obj.array, obj.dtype)}
            return self._ext(_EXT_SERIES, meta)
        if isinstance(obj, pd.Index):
            return self._ext(_EXT_INDEX, self._index_meta(obj))
        if obj is pd.NaT:
            return msgpack.ExtType(_EXT_PD_NAT, b"")
        if obj is pd.NA:
            return msgpack.ExtType(_EXT_PD_NA, b"")
        if isinstance(obj, pd.Timestamp):
            tz = None if obj.tz is None else _tz_spec(obj.tz)
            utc = obj.tz_convert(None) if obj.tz is not None else obj
            return self._ext(_EXT_PD_TIMESTAMP, [utc.to_datetime64(), tz])
        if isinstance(obj, pd.Timedelta):
            return self._ext(_EXT_PD_TIMEDELTA, obj.to_timedelta64())
        raise PayloadError(
            f"cannot encode a {_type_name(obj)}: of pandas, flame.codec sends DataFrame, Series, Index, "
            "Timestamp, Timedelta, NaT and NA. Convert it, e.g. to a Series or NumPy array"
        )

    def _frame_meta(self, df: Any) -> dict[str, Any]:
        dtypes = list(df.dtypes)
        blocks: list[Any] = []
        i, ncols = 0, len(dtypes)
        while i < ncols:
            dtype = dtypes[i]
            if isinstance(dtype, np.dtype) and dtype.kind in _PANDAS_NUMPY_KINDS:
                # a run of columns of one NumPy dtype travels as one 2-D (rows x columns) array:
                # usually a zero-copy, Fortran-ordered view of a pandas block
                j = i + 1
                while j < ncols and isinstance(dtypes[j], np.dtype) and dtypes[j] == dtype:
                    j += 1
                blocks.append({"kind": "numpy2d", "values": df.iloc[:, i:j].to_numpy()})
                i = j
            else:
                column = df.iloc[:, i]
                blocks.append(self._column(column.array, column.dtype))
                i += 1
        return {"columns": df.columns, "index": df.index, "blocks": blocks}

    def _index_meta(self, idx: Any) -> dict[str, Any]:
        pd = _pandas()
        if isinstance(idx, pd.RangeIndex):
            return {"kind": "range", "name": idx.name, "range": [idx.start, idx.stop, idx.step]}
        if isinstance(idx, pd.MultiIndex):
            codes = [np.asarray(c) for c in idx.codes]
            return {"kind": "multi", "names": list(idx.names), "levels": list(idx.levels), "codes": codes}
        freq = (
            getattr(idx, "freqstr", None) if isinstance(idx, (pd.DatetimeIndex, pd.TimedeltaIndex)) else None
        )
        return {
            "kind": "values",
            "name": idx.name,
            "freq": freq,
            "values": self._column(idx.array, idx.dtype),
        }

    def _column(self, values: Any, dtype: Any) -> dict[str, Any]:
        """One column (of a DataFrame, Series or Index) as a map of plain values and arrays."""
        pd = _pandas()
        if isinstance(dtype, np.dtype):
            arr = np.asarray(values)
            if dtype.kind == "O":
                items = arr.tolist()
                _check_keys(items)
                return {"kind": "object", "values": items}
            if dtype.kind not in _PANDAS_NUMPY_KINDS:
                raise PayloadError(f"cannot encode a pandas column of dtype {dtype}")
            return {"kind": "numpy", "values": arr}
        if isinstance(dtype, pd.CategoricalDtype):
            return {
                "kind": "category",
                "codes": np.asarray(values.codes),
                "categories": dtype.categories,
                "ordered": bool(dtype.ordered),
            }
        if isinstance(dtype, pd.DatetimeTZDtype):
            utc = np.asarray(values.tz_convert(None))
            return {"kind": "datetimetz", "values": utc, "tz": _tz_spec(dtype.tz)}
        if isinstance(dtype, pd.StringDtype):
            return self._string_column(values, dtype)
        if getattr(dtype, "name", None) in _MASKED_DTYPES and hasattr(dtype, "numpy_dtype"):
            mask = np.asarray(values.isna(), dtype=bool)
            data = values.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0))
            return {"kind": "masked", "dtype": dtype.name, "values": data, "mask": mask}
        raise PayloadError(
            f"cannot encode a pandas column of dtype {dtype}: flame.codec sends NumPy, object, str/string, "
            "category, datetime (naive or tz-aware) and nullable Int/UInt/Float/boolean columns. "
            "Convert it with .astype(...)"
        )

    def _string_column(self, values: Any, dtype: Any) -> dict[str, Any]:
        storage = str(dtype.storage)
        na_value = getattr(dtype, "na_value", None)
        if storage == "pyarrow_numpy":  # pandas 2.1-2.2 spelling of the NaN-semantics str dtype
            storage, na_value = "pyarrow", np.nan
        na = "NA" if na_value is None or na_value is _pandas().NA else "nan"
        if storage == "pyarrow" and hasattr(values, "__arrow_array__"):
            arr = values.__arrow_array__()
            if hasattr(arr, "num_chunks"):  # a ChunkedArray: combine_chunks() copies even a single chunk
                arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
            return {"kind": "arrow_string", "na": na, **_arrow_string_parts(arr)}
        items = values.to_numpy(dtype=object, na_value=None).tolist()
        return {"kind": "string", "na": na, "storage": storage, "values": items}


def _bigint(value: int) -> msgpack.ExtType:
    magnitude = abs(value)
    data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
    return msgpack.ExtType(_EXT_BIGINT, (b"\x01" if value < 0 else b"\x00") + data)


def _arrow_string_parts(arr: Any) -> dict[str, Any]:
    """Offsets, UTF-8 data and missing mask of a pyarrow (large_)string array, without copies."""
    pa: Any = importlib.import_module("pyarrow")
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    n = len(arr)
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, offsets_buf, data_buf = arr.buffers()
    if offsets_buf is None:
        offsets: NDArray = np.zeros(n + 1, dtype=offset_type)
    else:
        offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + n + 1]
    data: NDArray = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    start, stop = int(offsets[0]), int(offsets[-1])
    if start or stop != len(data):
        data = data[start:stop]
        offsets = offsets - offsets[0] if start else offsets
    valid = None
    if arr.null_count:
        missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        valid = np.packbits(~missing, bitorder="little")
    return {"offsets": offsets, "data": data, "valid": valid}


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


class _Decoder:
    """One decode call: unpacks the body, building arrays from the buffer area."""

    def __init__(self, area: memoryview, max_bytes: int, size: int = 0) -> None:
        self.area = area
        self.view_budget = size + _FREE_COLUMN_VIEWS  # column views of multi-block DataFrames
        self.referenced = 0  # the buffer area is consumed in order: each byte makes one array
        self.max_bytes = max_bytes
        self._depth = 0
        self._hooks: dict[int, Callable[[Any], Any]] = {
            _EXT_TUPLE: tuple,
            _EXT_SET: set,
            _EXT_FROZENSET: frozenset,
            _EXT_COMPLEX: lambda v: complex(float(v[0]), float(v[1])),
            _EXT_DATETIME: _datetime_from,
            _EXT_DATE: lambda v: _dt.date(*v),
            _EXT_TIME: _time_from,
            _EXT_TIMEDELTA: lambda v: _dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
            _EXT_NDARRAY: self._array,
            _EXT_NPSCALAR: _scalar_from,
            _EXT_DATAFRAME: self._frame,
            _EXT_SERIES: self._series,
            _EXT_INDEX: self._index,
            _EXT_PD_TIMESTAMP: _timestamp_from,
            _EXT_PD_TIMEDELTA: lambda v: _pandas().Timedelta(_require(v, np.timedelta64)),
        }

    def unpack(self, data: bytes | memoryview) -> Any:
        return msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_BIGINT:
            if not data or data[0] > 1:
                raise PayloadError("malformed FLAME codec payload: invalid big integer")
            magnitude = int.from_bytes(data[1:], "big")
            return -magnitude if data[0] else magnitude
        if code == _EXT_PD_NAT:
            return _pandas().NaT
        if code == _EXT_PD_NA:
            return _pandas().NA
        hook = self._hooks.get(code)
        if hook is None:
            raise PayloadError(
                f"unknown extension type {code} in a FLAME codec payload: the sender uses a newer or "
                "different flame-python-sdk. Use the same SDK version on all nodes of the analysis"
            )
        if self._depth >= _MAX_EXT_DEPTH:
            # each level is a nested msgpack.unpackb call with a large C stack frame: refuse to recurse
            # further rather than overflow the C stack
            raise PayloadError(
                f"malformed FLAME codec payload: extension types nested more than {_MAX_EXT_DEPTH} levels deep"
            )
        self._depth += 1
        try:
            return hook(self.unpack(data))
        finally:
            self._depth -= 1

    # ---- NumPy ------------------------------------------------------------------------------

    def _array(self, meta: Any) -> NDArray:
        dtype_str, shape, fortran, offset, nbytes = meta
        dtype = _safe_dtype(dtype_str)
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
            raise PayloadError("malformed FLAME codec payload: invalid array shape")
        if not all(type(n) is int and 0 <= n <= _MAX_DIM for n in shape):
            raise PayloadError("malformed FLAME codec payload: invalid array shape")
        if type(offset) is not int or type(nbytes) is not int or offset < 0:
            raise PayloadError("malformed FLAME codec payload: invalid array buffer reference")
        needed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if needed != nbytes:
            raise PayloadError(
                f"malformed FLAME codec payload: an array of shape {tuple(shape)} and dtype {dtype} "
                f"needs {needed} bytes, not {nbytes}"
            )
        order: Literal["C", "F"] = "F" if fortran else "C"
        if dtype.itemsize == 0 and math.prod(shape):  # NumPy would still allocate a byte per element
            raise PayloadError(
                f"refused an array of zero-size NumPy dtype {dtype_str!r} with elements in a FLAME codec payload"
            )
        if nbytes == 0:
            empty: NDArray = np.empty(tuple(shape), dtype=dtype, order=order)
            return empty
        # each array takes the next bytes of the buffer area, so no byte makes two arrays and the
        # arrays together never exceed the payload
        if offset != self.referenced:
            raise PayloadError(
                f"malformed FLAME codec payload: an array names bytes {offset}.. of the buffer area, but "
                f"the next unused byte is {self.referenced} (buffers are used once, in order)"
            )
        if offset + nbytes > len(self.area):
            raise PayloadError(
                f"truncated FLAME codec payload: an array needs bytes {offset}..{offset + nbytes} of the "
                f"buffer area, which has {len(self.area)}. Ask the sender to send it again"
            )
        if offset + nbytes > self.max_bytes:
            raise PayloadError(
                f"the payload's arrays hold more than max_bytes={self.max_bytes} bytes; "
                "pass a larger max_bytes to decode() if this data is expected"
            )
        self.referenced += nbytes
        # one copy out of the payload: the result is writeable and owns its (aligned) memory
        raw = np.frombuffer(self.area, dtype=np.uint8, count=nbytes, offset=offset).copy()
        flat: NDArray = raw.view(dtype)
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)

    # ---- pandas -----------------------------------------------------------------------------

    def _frame(self, meta: Any) -> Any:
        pd = _pandas()
        columns, index = _require(meta["columns"], pd.Index), _require(meta["index"], pd.Index)
        nrows = len(index)
        blocks = meta["blocks"]
        if len(blocks) == 1 and blocks[0]["kind"] == "numpy2d":
            values = self._block2d(blocks[0], nrows)
            return pd.DataFrame(values, index=index, columns=columns, copy=False)
        # check every block's width against the column names before one column view is made: an
        # array of shape (0, N) declares 0 bytes, so only this count bounds the views
        parts: list[Any] = []
        width = 0
        for block in blocks:
            if block["kind"] == "numpy2d":
                values = self._block2d(block, nrows)
                width += values.shape[1]
            else:
                values = self._column_values(block, nrows)
                width += 1
            parts.append((block["kind"], values))
        if width != len(columns):
            raise PayloadError(
                f"malformed FLAME codec payload: a DataFrame has {len(columns)} column names but "
                f"{width} columns"
            )
        self.charge_column_views(width)
        arrays: list[Any] = []
        for kind, values in parts:
            if kind == "numpy2d":
                arrays.extend(values[:, j] for j in range(values.shape[1]))
            else:
                arrays.append(values)
        data = {}
        for j, values in enumerate(arrays):
            if isinstance(values, np.ndarray) and values.dtype == object:
                # keep object dtype: pandas would infer "str" from an object array of strings
                values = pd.Series(values, index=index, dtype=object, copy=False)
            data[j] = values
        df = pd.DataFrame(data, index=index, copy=False)
        df.columns = columns
        return df

    def charge_column_views(self, n: int) -> None:
        """Each column of a multi-block DataFrame is one view (~150 bytes) that no byte count covers."""
        self.view_budget -= n
        if self.view_budget < 0:
            raise PayloadError(
                "refused a FLAME codec payload whose DataFrames have more columns than the payload has "
                f"bytes (plus {_FREE_COLUMN_VIEWS}); its blocks declare columns they do not carry"
            )

    def _block2d(self, block: Any, nrows: int) -> NDArray:
        values: NDArray = _require(block["values"], np.ndarray)
        if values.ndim != 2 or values.shape[0] != nrows or values.dtype.kind not in _PANDAS_NUMPY_KINDS:
            raise PayloadError("malformed FLAME codec payload: a DataFrame block does not fit its index")
        return values

    def _series(self, meta: Any) -> Any:
        pd = _pandas()
        index = _require(meta["index"], pd.Index)
        values = self._column_values(meta["values"], len(index))
        dtype = object if isinstance(values, np.ndarray) and values.dtype == object else None
        return pd.Series(values, index=index, name=meta["name"], dtype=dtype, copy=False)

    def _index(self, meta: Any) -> Any:
        pd = _pandas()
        kind = meta["kind"]
        if kind == "range":
            start, stop, step = meta["range"]
            return pd.RangeIndex(start, stop, step, name=meta["name"])
        if kind == "multi":
            levels = [_require(level, pd.Index) for level in meta["levels"]]
            codes = [_require(c, np.ndarray) for c in meta["codes"]]
            return pd.MultiIndex(levels=levels, codes=codes, names=meta["names"], verify_integrity=True)
        if kind != "values":
            raise PayloadError(f"malformed FLAME codec payload: unknown index kind {kind!r}")
        values = self._column_values(meta["values"], None)
        name, freq = meta["name"], meta["freq"]
        if isinstance(values, np.ndarray):
            if values.dtype == object:
                return pd.Index(values, dtype=object, name=name, copy=False)
            if values.dtype.kind == "M":
                return pd.DatetimeIndex(values, freq=freq, name=name)
            if values.dtype.kind == "m":
                return pd.TimedeltaIndex(values, freq=freq, name=name)
            return pd.Index(values, name=name, copy=False)
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            return pd.DatetimeIndex(values, freq=freq, name=name)
        if isinstance(values.dtype, pd.CategoricalDtype):
            return pd.CategoricalIndex(values, name=name)
        return pd.Index(values, name=name, copy=False)

    def _column_values(self, meta: Any, length: int | None) -> Any:
        """A column's values: an ndarray (NumPy and object dtypes) or a pandas ExtensionArray."""
        pd = _pandas()
        kind = meta["kind"]
        result: Any
        if kind == "numpy":
            result = _require(meta["values"], np.ndarray)
            if result.ndim != 1 or result.dtype.kind not in _PANDAS_NUMPY_KINDS:
                raise PayloadError("malformed FLAME codec payload: invalid column array")
        elif kind == "object":
            items = _require(meta["values"], list)
            result = np.fromiter(items, dtype=object, count=len(items))
        elif kind == "category":
            codes = _require(meta["codes"], np.ndarray)
            categories = _require(meta["categories"], pd.Index)
            dtype = pd.CategoricalDtype(categories, ordered=bool(meta["ordered"]))
            result = pd.Categorical.from_codes(codes, dtype=dtype)
        elif kind == "datetimetz":
            utc = _require(meta["values"], np.ndarray)
            if utc.ndim != 1 or utc.dtype.kind != "M":
                raise PayloadError("malformed FLAME codec payload: invalid datetime column")
            result = pd.array(utc).tz_localize("UTC").tz_convert(_pandas_tz_from_spec(meta["tz"]))
        elif kind == "arrow_string":
            result = _arrow_string_from(meta)
        elif kind == "string":
            items = _require(meta["values"], list)
            result = pd.array(items, dtype=_string_dtype(meta["storage"], meta["na"]))
        elif kind == "masked":
            name = meta["dtype"]
            if name not in _MASKED_DTYPES:
                raise PayloadError(f"malformed FLAME codec payload: unknown nullable dtype {name!r}")
            dtype = pd.api.types.pandas_dtype(name)
            data = _require(meta["values"], np.ndarray)
            mask = _require(meta["mask"], np.ndarray)
            if data.dtype != dtype.numpy_dtype or mask.dtype != np.bool_ or data.shape != mask.shape:
                raise PayloadError("malformed FLAME codec payload: invalid nullable column")
            result = dtype.construct_array_type()(data, mask)
        else:
            raise PayloadError(f"malformed FLAME codec payload: unknown column kind {kind!r}")
        if length is not None and len(result) != length:
            raise PayloadError(
                f"malformed FLAME codec payload: a column has {len(result)} values but its index {length}"
            )
        return result


def _require(value: Any, kind: Any) -> Any:
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else str(kind)
        raise PayloadError(f"malformed FLAME codec payload: expected {name}, found {_type_name(value)}")
    return value


def _safe_dtype(text: Any) -> np.dtype[Any]:
    if not isinstance(text, str) or len(text) > 32:
        raise PayloadError("malformed FLAME codec payload: invalid dtype")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"malformed FLAME codec payload: invalid dtype {text!r}") from exc
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PayloadError(
            f"refused a NumPy dtype {text!r} in a FLAME codec payload: object and structured dtypes are "
            "never decoded. The sender must convert the array to a numeric dtype"
        )
    return dtype


def _scalar_from(meta: Any) -> Any:
    dtype_str, raw = meta
    dtype = _safe_dtype(dtype_str)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise PayloadError("malformed FLAME codec payload: invalid NumPy scalar")
    if dtype.itemsize == 0:  # an empty np.bytes_ / np.str_
        return dtype.type()
    return np.frombuffer(raw, dtype=dtype)[0]


def _datetime_from(meta: Any) -> _dt.datetime:
    year, month, day, hour, minute, second, micro, fold, tz = meta
    tzinfo = None if tz is None else _tz_from_spec(tz)
    return _dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tzinfo, fold=fold)


def _time_from(meta: Any) -> _dt.time:
    hour, minute, second, micro, fold, tz = meta
    tzinfo = None if tz is None else _tz_from_spec(tz)
    return _dt.time(hour, minute, second, micro, tzinfo=tzinfo, fold=fold)


def _timestamp_from(meta: Any) -> Any:
    value, tz = meta
    ts = _pandas().Timestamp(_require(value, np.datetime64))
    return ts if tz is None else ts.tz_localize("UTC").tz_convert(_pandas_tz_from_spec(tz))


def _string_dtype(storage: Any, na: Any) -> Any:
    pd = _pandas()
    if storage not in ("python", "pyarrow") or na not in ("nan", "NA"):
        raise PayloadError("malformed FLAME codec payload: invalid string dtype")
    na_value = np.nan if na == "nan" else pd.NA
    if storage == "pyarrow" and not _has_pyarrow():
        storage = "python"
    try:
        return pd.StringDtype(storage, na_value=na_value)
    except TypeError:  # pandas < 2.3 has no na_value argument
        if na == "nan" and storage == "pyarrow":
            return pd.StringDtype("pyarrow_numpy")
        return pd.StringDtype(storage)


def _has_pyarrow() -> bool:
    try:
        importlib.import_module("pyarrow")
    except ImportError:
        return False
    return True


def _arrow_string_from(meta: Any) -> Any:
    """Strings from Arrow-layout parts: offsets (n + 1), UTF-8 data, validity bitmap (LSB first) or None."""
    pd = _pandas()
    offsets = _require(meta["offsets"], np.ndarray)
    data = _require(meta["data"], np.ndarray)
    valid = meta["valid"]
    if (
        offsets.ndim != 1
        or len(offsets) < 1
        or offsets.dtype.kind != "i"
        or offsets.dtype.itemsize not in (4, 8)
    ):
        raise PayloadError("malformed FLAME codec payload: invalid string offsets")
    offsets = offsets.astype(offsets.dtype.newbyteorder("="), copy=False)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise PayloadError("malformed FLAME codec payload: invalid string data")
    n = len(offsets) - 1
    # offsets must start at 0, never decrease and end at the data's end: Arrow would otherwise read
    # outside the buffers
    if offsets[0] != 0 or offsets[-1] != len(data) or (n > 1 and bool(np.any(offsets[1:] < offsets[:-1]))):
        raise PayloadError("malformed FLAME codec payload: invalid string offsets")
    if valid is not None and (
        not isinstance(valid, np.ndarray) or valid.dtype != np.uint8 or valid.shape != ((n + 7) // 8,)
    ):
        raise PayloadError("malformed FLAME codec payload: invalid string validity bitmap")
    ascii_only = len(data) == 0 or int(data.max()) < 0x80
    dtype = _string_dtype("pyarrow", meta["na"])
    if _has_pyarrow():
        pa: Any = importlib.import_module("pyarrow")
        arrow_type = pa.large_string() if offsets.dtype == np.int64 else pa.string()
        validity = None if valid is None else pa.py_buffer(valid)
        buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(data)]
        arr = pa.Array.from_buffers(arrow_type, n, buffers, null_count=-1 if valid is not None else 0)
        if not ascii_only:  # ASCII is valid UTF-8 however it is cut; anything else is checked in full
            arr.validate(full=True)
        return pd.array(arr, dtype=dtype)
    # no pyarrow here: build the strings in Python
    raw = data.tobytes()
    bounds = offsets.tolist()
    if ascii_only:  # byte offsets are character offsets
        text = raw.decode("ascii")
        items: list[Any] = [text[a:b] for a, b in itertools.pairwise(bounds)]
    else:
        items = [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]
    if valid is not None:
        missing = np.unpackbits(valid, count=n, bitorder="little") == 0
        for i in np.flatnonzero(missing).tolist():
            items[i] = None
    return pd.array(items, dtype=dtype)


# --------------------------------------------------------------------------------------------
# restricted unpickling (allow_pickle=True)
# --------------------------------------------------------------------------------------------


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
    """An unpickler whose globals are all stand-ins; see :func:`_restricted_loads`."""

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


def _restricted_loads(data: bytes, max_bytes: int) -> Any:
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

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
:class:`~flame.errors.PickleRefusedError` unless ``allow_pickle=True``; then
:mod:`flame.restricted_pickle` loads them, never running NumPy, pandas or pyarrow code on what the
pickle says.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import itertools
import math
import re
import sys
import zoneinfo
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgpack

from flame._lazy import on_first_use
from flame.errors import PayloadError, PickleRefusedError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    NDArray = npt.NDArray[Any]
else:  # NumPy (~50-100 ms) loads when a payload first needs it, not on ``import flame``
    np = on_first_use("numpy", globals(), "np")

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
        from flame.restricted_pickle import restricted_loads  # first use only: most nodes never load one

        return restricted_loads(data if isinstance(data, bytes) else bytes(view), max_bytes)
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

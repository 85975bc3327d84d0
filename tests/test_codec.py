"""Tests of flame.codec: exact round trips (property-based), error handling, and restricted pickle."""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import enum
import math
import os
import pickle
import struct
import subprocess
import zoneinfo
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest
from dateutil import tz as dateutil_tz  # a pandas dependency
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flame import codec, restricted_pickle
from flame.codec import MAGIC, VERSION, decode, encode, is_pickle
from flame.errors import FlameError, PayloadError, PickleRefusedError

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
# pandas 3's default ``str`` dtype (with pyarrow), spelt out: on pandas 2 ``"str"`` is object dtype
ARROW_STR = pd.StringDtype("pyarrow", na_value=np.nan)


# --------------------------------------------------------------------------------------------
# exact comparison
# --------------------------------------------------------------------------------------------


def assert_same(expected: Any, actual: Any) -> None:
    """Assert ``actual`` is an exact copy of ``expected``: same types, bits, dtypes, layout."""
    if isinstance(expected, (bytearray, memoryview)):
        assert type(actual) is bytes
        assert actual == bytes(expected)
        return
    assert type(actual) is type(expected), (type(expected), type(actual))
    if isinstance(expected, float):
        assert struct.pack("<d", actual) == struct.pack("<d", expected), (expected, actual)
    elif isinstance(expected, complex):
        assert_same(expected.real, actual.real)
        assert_same(expected.imag, actual.imag)
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for e, a in zip(expected, actual, strict=True):
            assert_same(e, a)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        assert [type(k) for k in actual] == [type(k) for k in expected]
        for key, value in expected.items():
            assert_same(value, actual[key])
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.dtype.str == expected.dtype.str
        assert actual.shape == expected.shape
        if expected.flags.c_contiguous or expected.flags.f_contiguous:
            assert actual.flags.c_contiguous == expected.flags.c_contiguous
            assert actual.flags.f_contiguous == expected.flags.f_contiguous
        else:
            assert actual.flags.c_contiguous
        assert actual.flags.writeable
        assert actual.tobytes() == expected.tobytes()  # logical (C-order) bytes: values bit for bit
    elif isinstance(expected, np.generic):
        assert actual.dtype == expected.dtype
        assert actual.tobytes() == expected.tobytes()
    elif isinstance(expected, (dt.datetime, dt.time)):
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None)  # wall-clock fields
        assert actual.fold == expected.fold
        assert actual.tzinfo == expected.tzinfo
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, check_freq=True)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected, check_exact=True, check_freq=True)
    elif isinstance(expected, pd.Index):
        pd.testing.assert_index_equal(actual, expected, exact=True, check_exact=True)
        assert getattr(actual, "freq", None) == getattr(expected, "freq", None)
    else:
        assert actual == expected


def roundtrip(value: Any) -> Any:
    data = encode(value)
    assert isinstance(data, bytes)
    assert data.startswith(MAGIC + bytes([VERSION]))
    return decode(data)


def check_roundtrip(value: Any) -> None:
    assert_same(value, roundtrip(value))


# --------------------------------------------------------------------------------------------
# plain Python values
# --------------------------------------------------------------------------------------------

big_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**8192), max_value=2**8192),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, -(2**64), 2**4096 + 1]),
)
naive_datetimes = st.datetimes()
aware_datetimes = st.datetimes(timezones=st.one_of(st.timezones(), st.just(dt.timezone.utc))) | st.builds(
    lambda d, minutes: d.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes))),
    st.datetimes(),
    st.integers(-23 * 60, 23 * 60),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    naive_datetimes,
    aware_datetimes,
    st.dates(),
    st.times(),
    st.timedeltas(),
)
hashables = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=5), st.binary(max_size=5))
keys = st.one_of(st.text(max_size=8), st.integers(min_value=-(2**80), max_value=2**80))
values = st.recursive(
    scalars | st.frozensets(hashables, max_size=4) | st.sets(hashables, max_size=4),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=20,
)


@given(values)
@settings(max_examples=100, deadline=None)
def test_python_values_roundtrip(value: Any) -> None:
    check_roundtrip(value)


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\xff")[0],  # a NaN with a payload
        complex(-0.0, math.nan),
        2**8192,
        -(2**8192) + 1,
        "",
        "ünïcødé 🐍",
        b"",
        bytearray(b"abc"),
        memoryview(b"xyz"),
        (),
        ((),),
        [(1, [2, (3,)])],
        {"a": (1, 2), 7: [None, True], -(2**100): {}},
        frozenset({1, "a"}),
        dt.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=BERLIN),
        dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")),
        dt.time(23, 59, 59, 999999, tzinfo=dt.timezone.utc),
        dt.date(1, 1, 1),
        dt.timedelta(days=-999999999),
    ],
    ids=repr,
)
def test_python_edge_values_roundtrip(value: Any) -> None:
    check_roundtrip(value)


def test_bytes_like_values_decode_as_bytes() -> None:
    assert roundtrip([bytearray(b"a"), memoryview(b"b")]) == [b"a", b"b"]


def test_subclasses_travel_as_their_base_type() -> None:
    class Colour(enum.IntEnum):
        RED = 1

    Point = collections.namedtuple("Point", "x y")
    out = roundtrip(
        [Colour.RED, collections.OrderedDict(a=1), Point(1, 2), collections.defaultdict(int, b=2)]
    )
    assert out == [1, {"a": 1}, (1, 2), {"b": 2}]
    assert [type(v) for v in out] == [int, dict, tuple, dict]


def test_tuple_and_list_stay_distinct() -> None:
    out = roundtrip({"t": (1, (2,)), "l": [1, [2]]})
    assert out == {"t": (1, (2,)), "l": [1, [2]]}
    assert type(out["t"]) is tuple and type(out["t"][1]) is tuple and type(out["l"][1]) is list


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode({"x": np.arange(3)})
    for buf in (bytearray(data), memoryview(data), memoryview(bytearray(data))):
        assert_same({"x": np.arange(3)}, decode(buf))


# --------------------------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------------------------

any_endian = "?"
array_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness=any_endian),
    hnp.unsigned_integer_dtypes(endianness=any_endian),
    hnp.floating_dtypes(endianness=any_endian),
    hnp.complex_number_dtypes(endianness=any_endian),
    hnp.datetime64_dtypes(endianness=any_endian),
    hnp.timedelta64_dtypes(endianness=any_endian),
    hnp.byte_string_dtypes(endianness=any_endian, max_len=4),
    hnp.unicode_string_dtypes(endianness=any_endian, max_len=4),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@given(hnp.arrays(array_dtypes, shapes), st.sampled_from(["C", "F", "strided"]))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_numpy_arrays_roundtrip(arr: np.ndarray[Any, Any], layout: str) -> None:
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = arr[..., ::2]
    out = roundtrip(arr)
    assert_same(arr, out)
    assert out.flags.writeable
    if layout == "F" and arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert out.flags.f_contiguous and not out.flags.c_contiguous


numeric_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(),
)


@given(numeric_dtypes.flatmap(lambda d: hnp.from_dtype(d).map(lambda v: d.type(v))))
@settings(max_examples=100, deadline=None)
def test_numpy_scalars_roundtrip(value: np.generic) -> None:
    out = roundtrip(value)
    assert type(out) is type(value)
    assert_same(value, out)


def test_numpy_scalar_keeps_its_type() -> None:
    out = roundtrip([np.float32(1.5), np.int16(-3), np.bool_(True), np.str_("ab"), np.datetime64("NaT")])
    assert [type(v) for v in out] == [np.float32, np.int16, np.bool_, np.str_, np.datetime64]
    assert out[0] == np.float32(1.5)


def test_large_array_is_copied_once_and_writeable() -> None:
    arr = np.random.default_rng(0).standard_normal((1000, 300))
    data = bytearray(encode(arr))
    out = decode(data)
    assert out.flags.writeable and out.flags.c_contiguous
    assert not np.shares_memory(out, np.frombuffer(data, dtype=np.uint8))
    out[0, 0] = 42.0  # the payload is untouched
    assert_same(arr, decode(data))
    assert len(data) - arr.nbytes < 100  # the buffer travels raw, plus a small header


def test_fortran_array_decodes_fortran() -> None:
    arr = np.asfortranarray(np.arange(24, dtype=">i4").reshape(2, 3, 4))
    out = roundtrip(arr)
    assert out.flags.f_contiguous and not out.flags.c_contiguous
    assert out.dtype.str == ">i4"
    np.testing.assert_array_equal(out, arr)


# --------------------------------------------------------------------------------------------
# pandas
# --------------------------------------------------------------------------------------------

small_text = st.text(max_size=6)
optional_text = st.one_of(st.none(), small_text)


@st.composite
def columns(draw: st.DrawFn, n: int) -> Any:
    """A pandas column of ``n`` values of one of the supported kinds."""
    kind = draw(
        st.sampled_from(
            [
                "numeric",
                "str",
                "string",
                "string_python",
                "str_arrow",
                "string_arrow",
                "object",
                "category",
                "datetime",
                "datetime_utc",
                "datetime_berlin",
                "timedelta",
                "Int64",
                "boolean",
                "Float64",
            ]
        )
    )
    if kind == "numeric":
        dtype = draw(st.sampled_from(["f8", "f4", "f2", "i1", "i8", "u1", "u8", "?", "c16"]))
        return pd.Series(draw(hnp.arrays(np.dtype(dtype), n)))
    if kind in ("str", "string", "string_python", "str_arrow", "string_arrow", "object"):
        items = draw(st.lists(optional_text, min_size=n, max_size=n))
        dtype = {
            "str": "str",
            "string": "string",
            "string_python": "string[python]",
            "str_arrow": ARROW_STR,
            "string_arrow": "string[pyarrow]",
            "object": object,
        }[kind]
        return pd.Series(items, dtype=dtype)
    if kind == "category":
        pool = draw(st.sampled_from([["a", "b", "c"], [1, 2, 30]]))
        items = draw(st.lists(st.sampled_from([*pool, None]), min_size=n, max_size=n))
        return pd.Series(pd.Categorical(items, categories=pool, ordered=draw(st.booleans())))
    if kind.startswith("datetime"):
        ints = draw(
            st.lists(st.integers(-(2**62), 2**62) | st.just(np.iinfo(np.int64).min), min_size=n, max_size=n)
        )
        unit = draw(st.sampled_from(["ns", "us", "s"]))
        series = pd.Series(np.array(ints, dtype=np.int64).view(f"M8[{unit}]"))
        if kind == "datetime_utc":
            series = series.dt.tz_localize("UTC")
        elif kind == "datetime_berlin":
            series = series.dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")
        return series
    if kind == "timedelta":
        ints = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
        return pd.Series(np.array(ints, dtype=np.int64).view("m8[ns]"))
    elements = {"Int64": st.integers(-(2**63), 2**63 - 1), "boolean": st.booleans(), "Float64": st.floats()}[
        kind
    ]
    items = draw(st.lists(st.none() | elements, min_size=n, max_size=n))
    return pd.Series(items, dtype=kind)


@st.composite
def indexes(draw: st.DrawFn, n: int) -> Any:
    kind = draw(
        st.sampled_from(["range", "int", "str", "object", "datetime", "datetime_tz", "category", "multi"])
    )
    name = draw(st.none() | small_text | st.integers(-3, 3))
    if kind == "range":
        start, step = draw(st.integers(-10, 10)), draw(st.integers(1, 3) | st.integers(-3, -1))
        return pd.RangeIndex(start, start + n * step, step, name=name)
    if kind == "int":
        return pd.Index(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), name=name)
    if kind == "str":
        return pd.Index(draw(st.lists(small_text, min_size=n, max_size=n)), dtype="str", name=name)
    if kind == "object":
        return pd.Index(draw(st.lists(small_text, min_size=n, max_size=n)), dtype=object, name=name)
    if kind in ("datetime", "datetime_tz"):
        tz = (
            "UTC"
            if kind == "datetime_tz" and draw(st.booleans())
            else ("Europe/Berlin" if kind == "datetime_tz" else None)
        )
        freq = draw(st.sampled_from(["D", "h", "min", "2s", "MS", None]))
        if freq is None:
            stamps = draw(st.lists(st.datetimes(min_value=dt.datetime(1700, 1, 1)), min_size=n, max_size=n))
            # microseconds from the start: pandas 2 would infer nanoseconds and overflow after 2262
            return pd.DatetimeIndex(np.array(stamps, dtype="M8[us]"), name=name).tz_localize(tz)
        return pd.date_range("2001-02-03", periods=n, freq=freq, tz=tz, name=name)
    if kind == "category":
        return pd.CategoricalIndex(draw(st.lists(st.sampled_from("xyz"), min_size=n, max_size=n)), name=name)
    first = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    second = draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n))
    return pd.MultiIndex.from_arrays([first, second], names=[name, "second"])


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 8))
    ncols = draw(st.integers(0, 6))
    name_kind = draw(st.sampled_from(["str", "int"]))
    names: list[Any] = draw(
        st.lists(
            small_text if name_kind == "str" else st.integers(-5, 100),
            min_size=ncols,
            max_size=ncols,
            unique=True,
        )
    )
    data = {name: draw(columns(n)) for name in names}
    df = pd.DataFrame(data, index=pd.RangeIndex(n))
    df.index = draw(indexes(n))
    return df


@given(frames())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_dataframes_roundtrip(df: pd.DataFrame) -> None:
    out = roundtrip(df)
    assert_same(df, out)
    assert type(out.index) is type(df.index)
    assert list(out.dtypes) == list(df.dtypes)


@given(st.integers(0, 8).flatmap(lambda n: st.tuples(columns(n), indexes(n), st.none() | small_text)))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_series_roundtrip(case: tuple[pd.Series, pd.Index, str | None]) -> None:
    series, index, name = case
    series = series.set_axis(index).rename(name)
    out = roundtrip(series)
    assert_same(series, out)
    assert out.dtype == series.dtype


@given(st.integers(0, 8).flatmap(indexes))
@settings(max_examples=40, deadline=None)
def test_indexes_roundtrip(index: pd.Index) -> None:
    assert_same(index, roundtrip(index))


def test_dataframe_examples() -> None:
    n = 6
    df = pd.DataFrame(
        {
            "f": [1.5, np.nan, -0.0, np.inf, 2.0, 3.0],
            "i": np.arange(n, dtype=np.int32),
            "s": pd.Series(["a", None, "ccc", "dé", "", "🐍"], dtype="str"),
            "c": pd.Categorical(["x", "y", None, "x", "y", "x"]),
            "t": pd.date_range("2020-01-01", periods=n, freq="h"),
            "tz": pd.date_range("2020-03-29", periods=n, freq="h", tz="Europe/Berlin"),
            "o": pd.Series(["a", 1, None, 2.5, (1, 2), {"k": [1]}], dtype=object),
        },
        index=pd.Index(list("uvwxyz"), name="key"),
    )
    check_roundtrip(df)
    check_roundtrip(df.T)  # all-object columns
    check_roundtrip(df.set_index(["i", "s"]))
    check_roundtrip(df.set_index("tz"))
    dup = pd.DataFrame([[1, 2.0, "a"], [3, 4.0, "b"]], columns=["a", "a", 0], index=[7, 7])
    check_roundtrip(dup)
    wide = pd.DataFrame(
        np.arange(12.0).reshape(3, 4), columns=pd.MultiIndex.from_product([["a", "b"], [1, 2]])
    )
    check_roundtrip(wide)
    check_roundtrip(pd.DataFrame())
    check_roundtrip(pd.DataFrame(index=pd.date_range("2000", periods=3)))
    check_roundtrip(
        {"frame": df, "series": df["s"], "index": df.index, "stamp": pd.Timestamp("2000", tz="UTC")}
    )


def test_pandas_scalars_roundtrip() -> None:
    for value in (
        pd.Timestamp("2000-01-01 00:00:00.000000001"),
        pd.Timestamp("2021-10-31 00:30", tz="UTC").tz_convert("Europe/Berlin"),
        pd.Timestamp("2000-01-01", tz="UTC").as_unit("s"),
        pd.Timedelta(123456789),
    ):
        out = roundtrip(value)
        assert out == value and type(out) is type(value) and out.unit == value.unit
        assert getattr(out, "tz", None) == getattr(value, "tz", None)
    assert roundtrip(pd.NaT) is pd.NaT
    assert roundtrip(pd.NA) is pd.NA


def test_arrow_strings_decode_without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame(
        {
            "s": pd.Series(["a", None, "dé", ""], dtype=ARROW_STR),
            "t": pd.array(["x", None, "y", "z"], dtype="string[pyarrow]"),
        }
    )
    assert [dtype.storage for dtype in df.dtypes] == ["pyarrow", "pyarrow"]
    data = encode(df)
    monkeypatch.setattr(codec, "_has_pyarrow", lambda: False)
    out = decode(data)
    assert out["s"].dtype == pd.StringDtype("python", na_value=np.nan)
    assert out["t"].dtype == pd.StringDtype("python", na_value=pd.NA)
    pd.testing.assert_frame_equal(out, df, check_dtype=False, check_column_type=False)


def test_sliced_and_chunked_arrow_strings_roundtrip() -> None:
    series = pd.Series(["a", "bb", None, "dddd", "é"], dtype=ARROW_STR)
    check_roundtrip(series[1:4])
    check_roundtrip(series[3:])
    check_roundtrip(pd.concat([series, series[2:]], ignore_index=True))
    check_roundtrip(pd.Series([], dtype=ARROW_STR))
    check_roundtrip(pd.Series([None, None], dtype="string[pyarrow]"))


def test_decoded_dataframe_is_writeable() -> None:
    df = pd.DataFrame({"a": np.arange(5.0), "b": np.arange(5)})
    out = roundtrip(df)
    out.loc[0, "a"] = 100.0
    assert out.loc[0, "a"] == 100.0 and df.loc[0, "a"] == 0.0


# --------------------------------------------------------------------------------------------
# encode errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, "a"], dtype=object),
        [np.array([None])],
        np.zeros(2, dtype=[("a", "i4")]),
        {(1, 2): "tuple key"},
        [{1.5: "float key"}],
        ({None: 1},),
        {"ok": {frozenset(): 1}},
        object(),
        [1, object()],
        np.ma.masked_array([1, 2], mask=[0, 1]),
        pd.Series(pd.period_range("2000", periods=2, freq="D")),
        pd.Series([1, 2], dtype="int64[pyarrow]"),
        "lone surrogate \udc80",
        dt.datetime(2000, 1, 1, tzinfo=dateutil_tz.gettz("Europe/Berlin")),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unencodable_values_raise_payload_error(value: Any) -> None:
    with pytest.raises(PayloadError):
        encode(value)


def test_object_array_error_explains() -> None:
    with pytest.raises(PayloadError, match="object dtype"):
        encode(np.array([{}], dtype=object))
    with pytest.raises(PayloadError, match="keys must be str or int"):
        encode({"outer": [{(1, 2): 3}]})
    assert issubclass(PayloadError, FlameError)


# --------------------------------------------------------------------------------------------
# decode errors
# --------------------------------------------------------------------------------------------


def frame_payload(body: Any, buffers: bytes = b"") -> bytes:
    """A payload around ``body`` (a value to pack, or already packed bytes) and a buffer area."""
    packed = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    return MAGIC + bytes([VERSION]) + msgpack.packb(len(packed)) + packed + buffers


def test_unknown_extension_type_raises() -> None:
    with pytest.raises(PayloadError, match="unknown extension type 99"):
        decode(frame_payload(msgpack.ExtType(99, b"")))
    negative_code = b"\x92\x01\x81\xa1a\xd4\xfbx"  # [1, {"a": ext(-5, b"x")}]
    with pytest.raises(PayloadError, match="unknown extension type -5"):
        decode(frame_payload(negative_code))


def test_object_dtype_in_payload_is_refused() -> None:
    meta = msgpack.packb(["|O", [1], False, 0, 8])
    with pytest.raises(PayloadError, match="object and structured dtypes"):
        decode(frame_payload(msgpack.ExtType(codec.EXT_CODES["ndarray"], meta), b"\0" * 8))


def test_array_reference_outside_buffer_area_raises() -> None:
    meta = msgpack.packb(["<f8", [4], False, 0, 32])
    with pytest.raises(PayloadError, match="truncated"):
        decode(frame_payload(msgpack.ExtType(codec.EXT_CODES["ndarray"], meta), b"\0" * 16))
    meta = msgpack.packb(["<f8", [4], False, 0, 16])
    with pytest.raises(PayloadError, match="needs 32 bytes"):
        decode(frame_payload(msgpack.ExtType(codec.EXT_CODES["ndarray"], meta), b"\0" * 16))


def test_truncated_payloads_raise() -> None:
    value = {"a": np.arange(10.0), "b": "text", "c": [1, 2**100, (3,)], "d": pd.DataFrame({"x": [1, 2]})}
    data = encode(value)
    for cut in range(len(data)):
        with pytest.raises(PayloadError):
            decode(data[:cut])


def test_trailing_bytes_raise() -> None:
    with pytest.raises(PayloadError, match="trailing"):
        decode(encode(np.arange(3)) + b"\0")
    with pytest.raises(PayloadError):
        decode(encode([1, 2]) + b"\0")


def test_wrong_magic_and_version_raise() -> None:
    data = encode([1, 2, 3])
    with pytest.raises(PayloadError, match="not a FLAME codec payload"):
        decode(b"XXXX" + data[4:])
    with pytest.raises(PayloadError, match="not a FLAME codec payload"):
        decode(b"")
    with pytest.raises(PayloadError, match="not a FLAME codec payload"):
        decode(b'{"json": true}')
    with pytest.raises(PayloadError, match="unsupported FLAME codec version 2"):
        decode(MAGIC + bytes([2]) + data[5:])
    with pytest.raises(PayloadError, match="bytes, bytearray or memoryview"):
        decode("text")  # type: ignore[arg-type]


def test_deep_nesting_is_refused_on_both_sides() -> None:
    deep: Any = 1
    for _ in range(64):
        deep = (deep,)
    assert roundtrip(deep) == deep
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        encode((deep,))
    body = msgpack.packb(1)
    for _ in range(1000):  # would overflow the C stack if the decoder followed it
        body = msgpack.packb(msgpack.ExtType(codec.EXT_CODES["tuple"], body))
    with pytest.raises(PayloadError, match="nested more than 64 levels"):
        decode(frame_payload(body))


def test_time_zone_keys_must_be_iana_zones() -> None:
    data = encode(pd.Series(pd.date_range("2000", periods=2, tz="Europe/Berlin")))
    for key in (b"dateutil/tmp/", b"../../etc/pas"):
        with pytest.raises(PayloadError, match="unknown time zone"):
            decode(data.replace(b"Europe/Berlin", key))
    data = encode(dt.datetime(2000, 1, 1, tzinfo=BERLIN))
    with pytest.raises(PayloadError, match="unknown time zone"):
        decode(data.replace(b"Europe/Berlin", b"/etc/passwd__"))


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_random_bodies_raise_only_payload_error(body: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode(MAGIC + bytes([VERSION]) + body)


_FUZZ_SOURCE = encode(
    {
        "arr": np.arange(6, dtype="<i2").reshape(2, 3),
        "df": pd.DataFrame(
            {"s": pd.Series(["a", None], dtype="str"), "c": pd.Categorical(["x", "y"]), "f": [1.0, 2.0]}
        ),
        "t": (1, dt.datetime(2000, 1, 1, tzinfo=BERLIN), 2**70),
    }
)


@given(
    st.lists(st.tuples(st.integers(0, len(_FUZZ_SOURCE) - 1), st.integers(0, 255)), min_size=1, max_size=4)
)
@settings(max_examples=200, deadline=None)
def test_corrupted_payloads_raise_only_payload_error(changes: list[tuple[int, int]]) -> None:
    data = bytearray(_FUZZ_SOURCE)
    for pos, byte in changes:
        data[pos] = byte
    with contextlib.suppress(PayloadError):
        decode(bytes(data))


# --------------------------------------------------------------------------------------------
# pickle
# --------------------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: the shape of a malicious pickle."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_is_refused_by_default(protocol: int) -> None:
    data = pickle.dumps({"a": 1}, protocol=protocol)
    assert is_pickle(data)
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        decode(data)


def test_is_pickle() -> None:
    assert not is_pickle(encode(1))
    assert not is_pickle(b"\x80")
    assert not is_pickle(b"\x80\x06")
    assert is_pickle(memoryview(pickle.dumps(1, protocol=2)))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize(
    "make_attack",
    [
        lambda path: _Reduce(os.system, f"touch {path}"),
        lambda path: [{"nested": _Reduce(os.system, f"touch {path}")}],
        lambda path: _Reduce(subprocess.call, ["touch", str(path)]),
        lambda path: _Reduce(eval, f"open({str(path)!r}, 'w')"),
        lambda path: _Reduce(exec, f"open({str(path)!r}, 'w')"),
        lambda path: _Reduce(getattr, Path, "touch"),
        lambda path: _Reduce(Path(path).touch),
        lambda path: _Reduce(__import__, "os"),
    ],
    ids=["os.system", "nested", "subprocess", "eval", "exec", "getattr", "method", "import"],
)
def test_malicious_pickle_is_refused_even_when_allowed(
    protocol: int, make_attack: Any, tmp_path: Path
) -> None:
    target = tmp_path / "pwned"
    data = pickle.dumps(make_attack(target), protocol=protocol)
    with pytest.raises(PickleRefusedError, match="refused"):
        decode(data, allow_pickle=True)
    assert not target.exists()


def test_refusal_names_the_global(tmp_path: Path) -> None:
    data = pickle.dumps(_Reduce(os.system, f"touch {tmp_path / 'x'}"), protocol=4)
    with pytest.raises(PickleRefusedError, match=rf"{os.system.__module__}\.system"):
        decode(data, allow_pickle=True)


def test_old_protocol_pickles_are_not_loaded(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    data = pickle.dumps(_Reduce(os.system, f"touch {target}"), protocol=0)
    with pytest.raises(PayloadError):
        decode(data, allow_pickle=True)
    assert not target.exists()


def _pickled_objects() -> list[Any]:
    n = 5
    df = pd.DataFrame(
        {
            "f": np.linspace(0, 1, n),
            "f32": np.arange(n, dtype=np.float32),
            "i": np.arange(n),
            "b": np.ones(n, dtype=bool),
            "s": pd.Series(["a", None, "c", "d", "e"], dtype="str"),
            "sp": pd.Series(list("abcde"), dtype="string[python]"),
            "o": pd.Series(list("abcde"), dtype=object),
            "c": pd.Categorical(list("xyxyx")),
            "I": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "t": pd.date_range("2000", periods=n),
            "tz": pd.date_range("2000", periods=n, tz="Europe/Berlin"),
            "utc": pd.date_range("2000", periods=n, tz="UTC"),
            "td": pd.timedelta_range(0, periods=n, freq="s"),
        }
    )
    return [
        df,
        df.set_index("s"),
        df.set_index(["i", "c"]),
        df.set_index("t"),
        df["tz"],
        df["c"],
        pd.Series([1.0, 2.0], index=pd.Index(["a", "b"], name="k"), name="v"),
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.arange(12).reshape(3, 4)),
        np.arange(4, dtype=">u2"),
        np.array(["ab", "c"]),
        np.arange(3).astype("M8[s]"),
        np.float32(1.5),
        np.int64(-3),
        {"list": [1, 2.5, "x", b"y", None, True], "tuple": (1,), "set": {1}, "big": 2**100, "c": 1j},
        collections.OrderedDict(a=1),
        [dt.datetime(2000, 1, 1, tzinfo=BERLIN), dt.date(2000, 1, 1), dt.timedelta(1), dt.timezone.utc],
    ]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_trusted_pickles_load_with_allow_pickle(protocol: int) -> None:
    for original in _pickled_objects():
        data = pickle.dumps(original, protocol=protocol)
        value = pickle.loads(data)  # what plain pickle makes of it (NumPy drops byte order before 5)
        out = decode(data, allow_pickle=True)
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(out, value, check_exact=True)
        elif isinstance(value, pd.Series):
            pd.testing.assert_series_equal(out, value, check_exact=True)
        elif isinstance(value, np.ndarray):
            assert out.dtype == value.dtype and out.flags.f_contiguous == value.flags.f_contiguous
            np.testing.assert_array_equal(out, value)
        else:
            assert out == value and type(out) is type(value)


def test_pickled_codec_types_unrelated_to_data_are_refused() -> None:
    data = pickle.dumps(collections.Counter(a=1), protocol=4)
    with pytest.raises(PickleRefusedError, match=r"collections\.Counter"):
        decode(data, allow_pickle=True)


def test_malformed_pickle_raises_payload_error() -> None:
    with pytest.raises(PayloadError):
        decode(b"\x80\x04garbage", allow_pickle=True)


def test_codec_payloads_never_reach_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(data: bytes) -> None:
        raise AssertionError("pickle was used")

    monkeypatch.setattr(restricted_pickle, "restricted_loads", fail)
    value = {"a": np.arange(3), "b": pd.DataFrame({"x": [1.0]}), "c": (1, "2")}
    assert_same(value, decode(encode(value), allow_pickle=True))
    with pytest.raises(PayloadError):
        decode(b"\x80\x01not a pickle we load", allow_pickle=True)


def _interop_objects() -> dict[str, Any]:
    objs: dict[str, Any] = {}
    for d in ("b1", "i1", "u2", "i4", "u8", "f2", "f4", "f8", "c16", "M8[ns]", "M8[s]", "M8[15s]", "m8[us]"):
        a = np.arange(6).astype(d)
        objs[f"arr_{d}"] = a
        objs[f"arrF_{d}"] = np.asfortranarray(a.reshape(2, 3))
        objs[f"scalar_{d}"] = a[1]
    for d in ("S3", "U5", ">U3"):
        objs[f"arr_{d}"] = np.array(["ab", "", "c"]).astype(d)
        objs[f"scalar_{d}"] = objs[f"arr_{d}"][1]
    objs |= {"0d": np.array(3.5), "empty": np.zeros((0, 3)), "strided": np.arange(10)[::2]}
    text = np.array([["a", "b", "c"], ["d", None, (1, 2)]], dtype=object)
    objs |= {"obj2d": text, "obj2dF": np.asfortranarray(text), "objT": text.T}
    objs |= {"long_str": np.array(["x" * 3000, "y"]), "long_str_scalar": np.str_("z" * 3000)}
    objs |= {"nat": np.datetime64("NaT"), "str_": np.str_("abc"), "bool_": np.bool_(True)}
    df = pd.DataFrame(
        {
            "i": [1, 2, 3, 4],
            "f": [1.5, 2, 3, np.nan],
            "s": ["a", "b", None, "d"],
            "b": [True, False, True, True],
            "t": pd.date_range("2020", periods=4),
            "o": pd.Series(["x", "y", "z", "w"], dtype=object),
        }
    )
    objs |= {"df": df, "df_empty": pd.DataFrame(), "df_0rows": df.iloc[:0], "df_by_str": df.set_index("s")}
    objs["df_dupcols"] = pd.DataFrame([[1, 2], [3, 4]], columns=["a", "a"])
    objs["df_multicol"] = pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
    objs["df_hourly"] = pd.DataFrame({"x": range(3)}, index=pd.date_range("2020", periods=3, freq="h"))
    objs["df_td"] = pd.DataFrame({"x": [1.0, 2]}, index=pd.to_timedelta([1, 2], unit="s"))
    objs["series_obj"] = pd.Series(["a", 1, None], dtype=object)
    objs["series_name"] = pd.Series([1.0], name=("a", 1))
    objs["series_fixed_tz"] = pd.Series(
        pd.date_range("2020", periods=2, tz=dt.timezone(dt.timedelta(hours=2)))
    )
    objs["series_masked"] = pd.Series([True, None], dtype="boolean")
    objs["series_floating"] = pd.Series([1.0, None], dtype="Float64")
    objs |= {"range": pd.RangeIndex(0, 10, 2, name="r"), "ts": pd.Timestamp("2020-01-01 12:00", tz=BERLIN)}
    objs |= {"td": pd.Timedelta("1 day"), "nat_pd": pd.NaT, "types": [int, float, np.float64, type(None)]}
    objs["nested"] = {
        "a": [df, np.arange(3), {"b": (1, 2.5, "x", None)}],
        "fs": frozenset({3}),
        "r": range(3),
    }
    objs["datetimes"] = [dt.time(1, 2, tzinfo=dt.timezone.utc), dt.timezone(dt.timedelta(hours=-3), "X")]
    return objs


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_trusted_pickles_decode_like_pickle_loads(protocol: int) -> None:
    for name, original in _interop_objects().items():
        data = pickle.dumps(original, protocol=protocol)
        ref, out = pickle.loads(data), decode(data, allow_pickle=True)
        if isinstance(ref, pd.DataFrame):
            pd.testing.assert_frame_equal(out, ref, check_exact=True)
        elif isinstance(ref, pd.Series):
            pd.testing.assert_series_equal(out, ref, check_exact=True)
        elif isinstance(ref, pd.Index):
            pd.testing.assert_index_equal(out, ref, exact=True)
        elif isinstance(ref, np.ndarray):
            assert (out.dtype, out.shape, out.flags.f_contiguous) == (
                ref.dtype,
                ref.shape,
                ref.flags.f_contiguous,
            )
            np.testing.assert_array_equal(out, ref)
        elif isinstance(ref, np.generic):
            assert type(out) is type(ref) and out.dtype == ref.dtype, name
            assert out == ref or (out != out and ref != ref), name
        else:
            assert repr(out) == repr(ref), name


def test_index_frequencies_load_or_are_dropped() -> None:
    for freq in ("D", "h", "W", "B", "ME", "2QS-FEB", "YE"):
        index = pd.date_range("2020", periods=4, freq=freq)
        out = decode(pickle.dumps(index, protocol=4), allow_pickle=True)
        pd.testing.assert_index_equal(out, index, exact=True)
        assert out.freq == index.freq, freq
    # an offset we do not rebuild (custom business days carry calendars) is dropped, not refused
    index = pd.date_range("2020", periods=4, freq=pd.offsets.CustomBusinessDay(weekmask="Mon Wed"))
    out = decode(pickle.dumps(index, protocol=4), allow_pickle=True)
    pd.testing.assert_index_equal(out, pd.DatetimeIndex(index, freq=None), exact=True)
    assert out.freq is None


def test_numpy_1_module_paths_load() -> None:
    """NumPy 1.x pickles name numpy.core.multiarray; protocol 2 spells globals as text lines."""
    value = {"a": np.arange(3.0), "s": np.float32(2.5), "df": pd.DataFrame({"x": [1, 2]})}
    data = pickle.dumps(value, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in data
    out = decode(data, allow_pickle=True)
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["s"] == np.float32(2.5) and type(out["s"]) is np.float32
    pd.testing.assert_frame_equal(out["df"], value["df"])


def _pytz_pickle(tz_opcodes: bytes) -> bytes:
    """What pandas 2 writes for ``pd.Timestamp(0, tz=<pytz zone>)``: _unpickle_timestamp(value, freq, tz, reso)."""
    from tests import hostile_pickles as H

    func = H.glob("pandas._libs.tslibs.timestamps", "_unpickle_timestamp")
    return H.program(H.call(func, H.const(0), H.NONE, tz_opcodes, H.const(10)))


def test_pytz_time_zones_from_pandas_2_load_as_the_receivers_default() -> None:
    """pandas 2 receives the pytz zone pickle.loads would give; pandas 3 the zoneinfo one."""
    from tests import hostile_pickles as H

    pandas_2 = int(pd.__version__.partition(".")[0]) < 3
    berlin = H.call(H.glob("pytz", "_p"), H.const("Europe/Berlin"), H.const(3600), H.const(0), H.const("CET"))
    out = decode(_pytz_pickle(berlin), allow_pickle=True)
    assert out == pd.Timestamp(0, tz="UTC") and out.utcoffset() == dt.timedelta(hours=1)
    assert out.tz is pd.Timestamp(0, tz="Europe/Berlin").tz or out.tz == zoneinfo.ZoneInfo("Europe/Berlin")
    assert type(out.tz).__module__.startswith("pytz") is pandas_2
    utc = decode(_pytz_pickle(H.call(H.glob("pytz", "_UTC"))), allow_pickle=True).tz
    assert utc.utcoffset(None) == dt.timedelta(0) and type(utc).__module__.startswith("pytz") is pandas_2
    fixed = H.call(H.glob("pytz", "FixedOffset"), H.const(90))
    out = decode(_pytz_pickle(fixed), allow_pickle=True)
    assert (
        out.utcoffset() == dt.timedelta(minutes=90) and type(out.tz).__module__.startswith("pytz") is pandas_2
    )
    for key in ("/etc/hostname", "../../etc/hostname", "dateutil//etc/hostname"):
        path = H.call(H.glob("pytz", "_p"), H.const(key))
        with pytest.raises(PickleRefusedError, match="time zone"):
            decode(_pytz_pickle(path), allow_pickle=True)


def test_pytz_localized_datetimes_keep_their_instant() -> None:
    """A datetime pickled with a pytz zone keeps its offset; one this pytz does not know loads as zoneinfo."""
    from tests import hostile_pickles as H

    wall = dt.datetime(2021, 7, 1, 12).__reduce__()[1][0]  # datetime's 10-byte state
    expected = dt.datetime(2021, 7, 1, 12, tzinfo=BERLIN)  # CEST, +2 h
    cases = [("Europe/Berlin", 7200, 3600, "CEST", "pytz"), ("Europe/Berlin", 7200, 3600, "MESZ", "zoneinfo")]
    for key, offset, dst, name, module in cases:
        zone = H.call(H.glob("pytz", "_p"), H.const(key), H.const(offset), H.const(dst), H.const(name))
        data = H.program(H.call(H.glob("datetime", "datetime"), H.const(wall), zone))
        out = decode(data, allow_pickle=True)
        assert out == expected and out.utcoffset() == dt.timedelta(hours=2)
        pandas_2 = int(pd.__version__.partition(".")[0]) < 3
        assert type(out.tzinfo).__module__.partition(".")[0] == (module if pandas_2 else "zoneinfo")
    if int(pd.__version__.partition(".")[0]) < 3:  # the unknown "MESZ" was looked up, not added to pytz
        import pytz

        assert all(name != "MESZ" for *_, name in pytz.timezone("Europe/Berlin")._tzinfos)
    forged = [
        (H.const("Europe/Berlin"), H.const(10**9), H.const(0), H.const("X")),
        (H.const("Europe/Berlin"), H.const(3600)),
        (H.const("Europe/Berlin"), H.const(3600), H.const(0), H.const(7)),
        (H.const(5),),
    ]
    for args in forged:
        zone = H.call(H.glob("pytz", "_p"), *args)
        with pytest.raises(PickleRefusedError, match=r"time zone|pytz\._p called with 2"):
            decode(H.program(H.call(H.glob("datetime", "datetime"), H.const(wall), zone)), allow_pickle=True)


_PANDAS_2_PICKLE = (  # pickle.dumps(<the frame below>, protocol=4) written by pandas 2.3.3 with pytz
    "gASViAQAAAAAAACMEXBhbmRhcy5jb3JlLmZyYW1llIwJRGF0YUZyYW1llJOUKYGUfZQojARfbWdylIwecGFuZGFzLmNvcmUu"
    "aW50ZXJuYWxzLm1hbmFnZXJzlIwMQmxvY2tNYW5hZ2VylJOUjBZwYW5kYXMuX2xpYnMuaW50ZXJuYWxzlIwPX3VucGlja2xl"
    "X2Jsb2NrlJOUjBNwYW5kYXMuX2xpYnMuYXJyYXlzlIwcX19weXhfdW5waWNrbGVfTkRBcnJheUJhY2tlZJSTlIwccGFuZGFz"
    "LmNvcmUuYXJyYXlzLmRhdGV0aW1lc5SMDURhdGV0aW1lQXJyYXmUk5RKHwbxBE6HlFKUjBlwYW5kYXMuY29yZS5kdHlwZXMu"
    "ZHR5cGVzlIwPRGF0ZXRpbWVUWkR0eXBllJOUKYGUfZQojAR1bml0lIwCbnOUjAJ0epSMBHB5dHqUjAJfcJSTlCiMDUV1cm9w"
    "ZS9CZXJsaW6UTWwMSwCMA0xNVJR0lFKUdWKMFm51bXB5Ll9jb3JlLm11bHRpYXJyYXmUjAxfcmVjb25zdHJ1Y3SUk5SMBW51"
    "bXB5lIwHbmRhcnJheZSTlEsAhZRDAWKUh5RSlChLAUsBSwOGlGgmjAVkdHlwZZSTlIwCTTiUiYiHlFKUKEsEjAE8lE5OTkr/"
    "////Sv////9LAE4oQwJuc5RLAUsBSwF0lIaUdJRiiUMYAGBNGEBVcBYAAAZJhlhwFgCgvnnMW3AWlHSUYn2Uh5RijAhidWls"
    "dGluc5SMBXNsaWNllJOUSwBLAUsBh5RSlEsCh5RSlIWUXZQojBhwYW5kYXMuY29yZS5pbmRleGVzLmJhc2WUjApfbmV3X0lu"
    "ZGV4lJOUaEWMBUluZGV4lJOUfZQojARkYXRhlGglaChLAIWUaCqHlFKUKEsBSwGFlGgvjAJPOJSJiIeUUpQoSwOMAXyUTk5O"
    "Sv////9K/////0s/dJRiiV2UaBthdJRijARuYW1llE51hpRSlIwdcGFuZGFzLmNvcmUuaW5kZXhlcy5kYXRldGltZXOUjBJf"
    "bmV3X0RhdGV0aW1lSW5kZXiUk5RoWowNRGF0ZXRpbWVJbmRleJSTlH2UKGhLaA5oEUofBvEEToeUUpRoL4wCTTiUiYiHlFKU"
    "KEsEaDNOTk5K/////0r/////SwBOKEMCbnOUSwFLAUsBdJSGlHSUYmglaChLAIWUaCqHlFKUKEsBSwOFlGgvjAJNOJSJiIeU"
    "UpQoSwRoM05OTkr/////Sv////9LAE4oQwJuc5RLAUsBSwF0lIaUdJRiiUMYAACKuTWa5RUAANlKyujlFQAAKNxeN+YVlHSU"
    "Yn2UjAVfZnJlcZSMG3BhbmRhcy5fbGlicy50c2xpYnMub2Zmc2V0c5SMA0RheZSTlEsBiYaUUpRzh5RiaFeMA2RheZR1hpRS"
    "lGWGlFKUjARfdHlwlIwJZGF0YWZyYW1llIwJX21ldGFkYXRhlF2UjAVhdHRyc5R9lIwGX2ZsYWdzlH2UjBdhbGxvd3NfZHVw"
    "bGljYXRlX2xhYmVsc5SIc3ViLg=="
)


def test_pandas_2_pickle_loads_on_this_pandas() -> None:
    """A pandas 2 pickle: freq in the DatetimeArray state, a pytz column; equal to this pandas' own frame."""
    out = decode(base64.b64decode(_PANDAS_2_PICKLE), allow_pickle=True)
    expected = pd.DataFrame(
        {"tz": pd.date_range("2021-03-28", periods=3, freq="h", tz="Europe/Berlin").as_unit("ns")},
        index=pd.date_range("2020-01-01", periods=3, freq="D", name="day").as_unit("ns"),
    )
    expected.columns = pd.Index(["tz"], dtype=object)  # pandas 2's labels, as pickle.loads keeps them
    pd.testing.assert_frame_equal(out, expected, check_exact=True)
    assert out.index.freq == pd.offsets.Day() and out["tz"].dtype == pd.DatetimeTZDtype("ns", "Europe/Berlin")
    assert [t.utcoffset() for t in out["tz"]] == [dt.timedelta(hours=h) for h in (1, 1, 2)]

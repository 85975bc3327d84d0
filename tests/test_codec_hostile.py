"""Hostile payloads against flame.codec.decode: pickles under allow_pickle=True and codec payloads.

Every hostile payload is decoded in a child interpreter (``subprocess.run([sys.executable, ...])``), so
a segfault is a failing test rather than a dead test run. The child limits its address space to 4 GiB
(a runaway allocation becomes a MemoryError, not a swapping machine), records every ``open`` of a
path outside the Python installation through an audit hook, and reports per payload whether it was
refused, the error type and how much its peak memory (``ru_maxrss``) grew.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame import codec
from flame.codec import decode, encode
from flame.errors import PayloadError, PickleRefusedError
from tests import hostile_pickles as H

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child: decode each named payload, print one JSON line per payload.
_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, sysconfig
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    sys.path[:0] = [{root!r}, {src!r}]
    import numpy, pandas  # imported before measuring: their own memory is not the payload's
    from flame import codec, restricted_pickle  # codec loads the unpickler on first use: not the payload's doing
    from flame.errors import PayloadError
    from tests import hostile_pickles as H

    INSTALL = tuple({{sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}})
    opened = []

    def audit(event, args):
        if event == "open" and isinstance(args[0], str) and not args[0].startswith(INSTALL):
            opened.append(args[0])

    sys.addaudithook(audit)
    table = {{"pickle": H.HOSTILE_PICKLES, "codec": H.HOSTILE_CODEC}}
    for source, name in json.loads(sys.argv[1]):
        if source == "build":
            module, attr = name.split(":")
            data = H.build_on_global(module, attr)
        elif source == "dunder":
            module, attr = name.split(":")
            data = H.build_dunder_on_global(module, attr)
        else:
            data = table[source][name]()
        print(json.dumps({{"start": name}}), flush=True)
        del opened[:]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            value = codec.decode(data, allow_pickle=True)
            outcome, error, message = "decoded", None, repr(value)[:200]  # repr reads every element
        except PayloadError as exc:
            outcome, error, message = "refused", type(exc).__name__, str(exc)[:300]
        except BaseException as exc:
            outcome, error, message = "other", type(exc).__name__, str(exc)[:300]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        result = {{"name": name, "outcome": outcome, "error": error, "message": message,
                   "grown": grown, "size": len(data), "opened": list(opened)}}
        if source in ("build", "dunder"):
            import importlib
            attrs = getattr(getattr(importlib.import_module(module), attr), "__dict__", {{}})
            result["mutated"] = "flame_pwned" in attrs or attrs.get("__len__") is int
            result["pandas_ok"] = len(pandas.Index([1, 2, 3])) == 3
        print(json.dumps(result), flush=True)
    """
).format(root=str(ROOT), src=str(ROOT / "src"))


def run_child(cases: list[tuple[str, str]], timeout: float = 300) -> dict[str, dict[str, Any]]:
    """Decode ``cases`` ((source, name) pairs) in one child; fail naming the payload that killed it."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    results: dict[str, dict[str, Any]] = {}
    running = None
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if "start" in record:
            running = record["start"]
        else:
            results[record["name"]] = record
            running = None
    assert proc.returncode == 0, (
        f"the child died (exit code {proc.returncode}) while decoding {running!r}: {proc.stderr[-2000:]}"
    )
    return results


def assert_refused(result: dict[str, Any]) -> None:
    assert result["outcome"] == "refused", result
    assert result["opened"] == [], result
    # peak memory: 64 MiB of slack for the interpreter plus a small multiple of the payload
    assert result["grown"] < 64 * 2**20 + 4 * result["size"], result


# --------------------------------------------------------------------------------------------
# finding 1: hostile pickles under allow_pickle=True
# --------------------------------------------------------------------------------------------

# the ones that crashed the receiver (SIGSEGV) before the restricted unpickler used stand-ins: one child each
CRASHERS = [
    "forged_dtype_frombuffer",
    "forged_dtype_scalar",
    "forged_dtype_reconstruct",
    "forged_dtype_ndarray_call",
    "object_subarray_dtype",
]


@pytest.mark.process
@pytest.mark.parametrize("name", CRASHERS)
def test_forged_dtype_pickles_are_refused_without_crashing(name: str) -> None:
    assert_refused(run_child([("pickle", name)])[name])


@pytest.fixture(scope="module")
def hostile_results() -> dict[str, dict[str, Any]]:
    names = [name for name in H.HOSTILE_PICKLES if name not in CRASHERS]
    return run_child([("pickle", name) for name in names])


@pytest.mark.process
@pytest.mark.parametrize("name", [name for name in H.HOSTILE_PICKLES if name not in CRASHERS])
def test_hostile_pickles_are_refused(name: str, hostile_results: dict[str, dict[str, Any]]) -> None:
    assert_refused(hostile_results[name])


def test_time_zone_paths_name_what_was_refused() -> None:
    with pytest.raises(PickleRefusedError, match="dateutil//etc/hostname"):
        decode(H.timestamp_tz("dateutil//etc/hostname")(), allow_pickle=True)
    with pytest.raises(PickleRefusedError, match="IANA names"):
        decode(H.zoneinfo_key("../../../../../etc/hostname")(), allow_pickle=True)


def test_reused_buffer_is_refused_before_it_is_copied() -> None:
    with pytest.raises(PayloadError, match="more bytes than it carries"):
        decode(H.repeated_buffer_arrays(copies=50, size=4096), allow_pickle=True)
    with pytest.raises(PayloadError, match="copies its containers"):
        decode(H.memo_list_copies(items=1000, copies=50), allow_pickle=True)


# every global the restricted unpickler resolved before it used stand-ins
_FORMERLY_ALLOWED = sorted(
    {
        *(
            f"builtins:{n}"
            for n in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray")
        ),
        *(f"builtins:{n}" for n in ("int", "float", "complex", "bool", "slice", "range", "getattr")),
        "collections:OrderedDict",
        *(f"datetime:{n}" for n in ("date", "datetime", "time", "timedelta", "timezone")),
        "zoneinfo:ZoneInfo",
        *("numpy:dtype", "numpy:ndarray", "numpy:float64", "numpy:int32", "numpy:void", "numpy:str_"),
        *(
            "numpy.core.multiarray:_reconstruct",
            "numpy.core.multiarray:scalar",
            "numpy.core.numeric:_frombuffer",
        ),
        *(
            f"pandas:{n}"
            for n in ("DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "DatetimeIndex")
        ),
        *(f"pandas:{n}" for n in ("Categorical", "CategoricalDtype", "DatetimeTZDtype", "StringDtype")),
        *(f"pandas:{n}" for n in ("Int64Dtype", "Timestamp", "Timedelta", "NaT", "NA", "CategoricalIndex")),
        *(f"pandas.arrays:{n}" for n in ("ArrowStringArray", "StringArray", "DatetimeArray", "IntegerArray")),
        "pandas._libs.arrays:__pyx_unpickle_NDArrayBacked",
        "pandas._libs.internals:_unpickle_block",
        "pandas._libs.tslibs.timestamps:_unpickle_timestamp",
        "pandas.core.internals.managers:BlockManager",
        "pandas.core.internals.managers:SingleBlockManager",
        "pandas.core.indexes.base:_new_Index",
        "pandas._libs.tslibs.offsets:Day",
        "pyarrow.lib:py_buffer",
        "pyarrow.lib:_restore_array",
    }
)


@pytest.fixture(scope="module")
def build_results() -> dict[str, dict[str, Any]]:
    cases = [("build", name) for name in _FORMERLY_ALLOWED]
    cases += [("dunder", name) for name in ("pandas:Index", "pandas:DataFrame", "builtins:dict")]
    results = run_child(cases)
    return results


@pytest.mark.process
@pytest.mark.parametrize("name", _FORMERLY_ALLOWED)
def test_build_on_an_allowed_global_changes_nothing(
    name: str, build_results: dict[str, dict[str, Any]]
) -> None:
    result = build_results[name]
    assert_refused(result)
    assert not result["mutated"], result
    assert result["pandas_ok"], result


@pytest.mark.process
def test_pandas_index_len_cannot_be_replaced(build_results: dict[str, dict[str, Any]]) -> None:
    # pandas.Index.__len__ = int made every len(Index) fail for the whole process
    assert not build_results["pandas:Index"]["mutated"]
    assert build_results["pandas:Index"]["pandas_ok"]


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(PayloadError, match="nested"):
        decode(H.deep_nesting(100_000), allow_pickle=True)
    shallow = pickle.dumps(((((1,),),),), protocol=4)
    assert decode(shallow, allow_pickle=True) == ((((1,),),),)


def test_self_referencing_list_still_loads() -> None:
    value: list[Any] = [1]
    value.append(value)
    out = decode(pickle.dumps(value, protocol=4), allow_pickle=True)
    assert out[0] == 1 and out[1] is out


def test_shared_array_is_rebuilt_once() -> None:
    arr = np.arange(1000.0)
    out = decode(pickle.dumps([arr, arr], protocol=5), allow_pickle=True)
    assert out[0] is out[1]
    np.testing.assert_array_equal(out[0], arr)


def test_object_columns_of_plain_values_load() -> None:
    df = pd.DataFrame({"s": pd.Series(["a", "b", None], dtype=object), "x": [1, 2, 3]})
    for protocol in (2, 3, 4, 5):
        out = decode(pickle.dumps(df, protocol=protocol), allow_pickle=True)
        pd.testing.assert_frame_equal(out, pickle.loads(pickle.dumps(df, protocol=protocol)))
        assert out["s"].dtype == object


def test_pickle_over_max_bytes_is_refused() -> None:
    data = pickle.dumps(np.zeros(1000), protocol=5)
    with pytest.raises(PayloadError, match="max_bytes"):
        decode(data, allow_pickle=True, max_bytes=1000)
    assert decode(data, allow_pickle=True, max_bytes=len(data)).shape == (1000,)


# --------------------------------------------------------------------------------------------
# finding 2: codec payloads that declare more than they carry
# --------------------------------------------------------------------------------------------


@pytest.mark.process
def test_hostile_codec_payloads_are_refused_within_memory() -> None:
    results = run_child([("codec", name) for name in H.HOSTILE_CODEC])
    for name in H.HOSTILE_CODEC:
        assert_refused(results[name])
        assert results[name]["error"] == "PayloadError", results[name]


def test_buffer_area_bytes_make_one_array_each() -> None:
    with pytest.raises(PayloadError, match="used once, in order"):
        decode(H.codec_shared_buffer(buffer=1024, refs=3))
    with pytest.raises(PayloadError, match="used once, in order"):
        decode(H.codec_overlapping_arrays())


def test_zero_size_dtypes_are_refused() -> None:
    for payload in (H.codec_zero_itemsize(), H.codec_zero_itemsize_2d()):
        with pytest.raises(PayloadError, match="zero-size"):
            decode(payload)


def test_empty_strings_of_zero_size_dtypes_still_roundtrip() -> None:
    for value in (np.bytes_(b""), np.str_("")):
        out = decode(encode(value))
        assert out == value and type(out) is type(value)
    empty = np.empty((0, 4), dtype="S0")
    assert decode(encode(empty)).shape == (0, 4)


def test_shape_products_are_checked_without_overflow() -> None:
    with pytest.raises(PayloadError, match=r"invalid array shape|needs"):
        decode(H.codec_huge_shape_product())
    # the product wraps to 0 in int64 arithmetic, but is huge in Python's
    body = msgpack.packb(H.array_ext("<f8", [2**32, 2**32], 0, 0))
    with pytest.raises(PayloadError, match="needs"):
        decode(H.frame(body))


def test_max_bytes_caps_array_data() -> None:
    data = encode([np.zeros(1000), np.zeros(1000)])
    with pytest.raises(PayloadError, match="max_bytes=10000"):
        decode(data, max_bytes=10_000)
    out = decode(data, max_bytes=16_000)
    assert len(out) == 2
    with pytest.raises(PayloadError, match="max_bytes"):
        decode(data, max_bytes=-1)


def test_default_cap_is_documented() -> None:
    assert codec.MAX_DECODED_BYTES == 4 << 30
    assert "max_bytes" in (decode.__doc__ or "")


_MUTATION_SOURCE = encode(
    {
        "a": np.arange(12, dtype="<i4").reshape(3, 4),
        "f": np.asfortranarray(np.ones((2, 3))),
        "df": pd.DataFrame({"x": [1.0, 2.0], "s": pd.Series(["a", None], dtype="str")}),
        "t": (b"x", "y", 2**70),
    }
)


@given(
    st.lists(
        st.tuples(st.integers(0, len(_MUTATION_SOURCE) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(0, len(_MUTATION_SOURCE)),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_or_truncated_payloads_raise_only_payload_error(
    changes: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(_MUTATION_SOURCE)
    for pos, byte in changes:
        data[pos] = byte
    for candidate in (bytes(data), bytes(data[:cut])):
        with contextlib.suppress(PayloadError):
            value = decode(candidate)
            # whatever decodes holds no more array bytes than the payload carries
            arrays = [v for v in _walk(value) if isinstance(v, np.ndarray)]
            assert sum(a.nbytes for a in arrays) <= len(candidate)


def _walk(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, dict):
        for v in value.values():
            out.extend(_walk(v))
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_walk(v))
    return out


_PICKLE_SOURCES = [
    pickle.dumps(
        {"df": pd.DataFrame({"x": [1.0, 2.0], "i": [1, 2], "o": ["a", "b"]}), "a": np.arange(4)}, protocol=p
    )
    for p in (2, 4, 5)
]


@given(
    st.sampled_from(_PICKLE_SOURCES),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_pickles_raise_only_payload_error(source: bytes, changes: list[tuple[int, int]]) -> None:
    data = bytearray(source)
    for pos, byte in changes:
        data[pos % len(data)] = byte
    with contextlib.suppress(PayloadError):
        decode(bytes(data), allow_pickle=True)


# --------------------------------------------------------------------------------------------
# review: rebuilt datetimes are range-checked; column counts and views are charged
# --------------------------------------------------------------------------------------------


def test_datetime_state_out_of_range_is_refused() -> None:
    # year 2020, month 2, day 0, 200:200:200, 16777215 us: datetime(bytes) accepted it unchecked
    state = bytes([2020 >> 8, 2020 & 0xFF, 2, 0, 200, 200, 200, 0xFF, 0xFF, 0xFF])
    with pytest.raises(PayloadError, match="invalid datetime"):
        decode(H.program(H.call(H.glob("datetime", "datetime"), H.const(state))), allow_pickle=True)
    with pytest.raises(PayloadError, match="invalid datetime"):
        decode(
            H.program(H.call(H.glob("datetime", "date"), H.const(bytes([7, 228, 13, 1])))), allow_pickle=True
        )
    with pytest.raises(PayloadError, match="invalid datetime"):
        decode(
            H.program(H.call(H.glob("datetime", "time"), H.const(bytes([25, 0, 0, 0, 0, 0])))),
            allow_pickle=True,
        )


def test_valid_datetimes_still_load_from_pickles() -> None:
    import datetime as dt

    values = [
        dt.datetime(2020, 2, 29, 23, 59, 58, 999_999),
        dt.datetime(2021, 11, 7, 1, 30, fold=1),
        dt.datetime(1, 1, 1),
        dt.datetime(2020, 1, 1, 12, tzinfo=dt.timezone.utc),
        dt.date(9999, 12, 31),
        dt.time(23, 59, 59, 123_456),
        dt.time(1, 30, fold=1),
    ]
    for proto in (2, 5):
        loaded = decode(pickle.dumps(values, protocol=proto), allow_pickle=True)
        assert loaded == values
        expected = pickle.loads(pickle.dumps(values, protocol=proto))  # protocol 2 drops fold
        assert [getattr(v, "fold", 0) for v in loaded] == [getattr(v, "fold", 0) for v in expected]


def test_wide_codec_frame_blocks_are_counted_before_views() -> None:
    with pytest.raises(PayloadError, match="1 column names but 20 columns"):
        decode(H.codec_wide_empty_blocks(columns=10))
    with pytest.raises(PayloadError, match="more columns than the payload has bytes"):
        decode(H.codec_wide_empty_blocks_matching(columns=10**6))


def test_honest_wide_frames_still_roundtrip() -> None:
    for df in (
        pd.DataFrame(np.zeros((0, 1000))),
        pd.DataFrame(
            {**{f"a{i}": np.zeros(0) for i in range(500)}, **{f"b{i}": np.zeros(0, "i8") for i in range(500)}}
        ),
        pd.DataFrame({"a": [1, 2], "b": [1.5, 2.5], "c": ["x", "y"]}),
    ):
        assert decode(encode(df)).equals(df)
        for proto in (2, 5):
            assert decode(pickle.dumps(df, protocol=proto), allow_pickle=True).equals(df)

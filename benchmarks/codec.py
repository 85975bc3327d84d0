"""Benchmark flame.codec against pickle protocol 5.

Run ``python benchmarks/codec.py`` (``--quick`` for sizes 10x smaller). For each case it measures
the encoded size and the best of ``--repeat`` runs of encode and of decode (time.perf_counter,
garbage collector off during a run, the runs of the two codecs interleaved) for ``flame.codec`` and
for ``pickle.dumps(obj, protocol=5)``, and prints a table with the ratios ours/pickle. Targets:
encode+decode time ratio <= 1.5, size ratio <= 1.01. The script reports; it always exits 0.

Cases:

(a) a 10-million-element float64 array (standard normal values);
(b) a 1-million-row DataFrame: 4 float64 columns, 1 int64, 1 string column of pandas' default
    ``str`` dtype (pyarrow-backed when pyarrow is installed; 1,000 distinct words of 3-12
    letters, 1 % missing) and 1 datetime64[ns] column, on a RangeIndex;
(c) for information, the same DataFrame with the string column as ``category`` and the datetime
    column tz-aware (UTC).

Then, for information, what reading a PrivateAIM peer's pickle costs: ``decode(data,
allow_pickle=True)`` (the restricted unpickler, which rebuilds arrays and frames from checked parts)
against ``pickle.loads`` for cases (a) and (b) pickled with protocol 4, for (b) with its string column
as ``object`` (what pandas 2 sends), and for a list of 100,000 NumPy float64 scalars (a pickle of
records each rebuilt on its own: the restricted unpickler's worst case per byte).
"""

from __future__ import annotations

import argparse
import gc
import math
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flame.codec import decode, encode

TIME_TARGET = 1.5
SIZE_TARGET = 1.01


def timed(fn: Callable[[], Any]) -> float:
    """The duration of one call of ``fn``, in seconds, with the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    del result
    return elapsed


def make_array(n: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).standard_normal(n)


def make_frame(rows: int, *, categorical: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(3, 13))) for _ in range(1000)]
    text = pd.Series(rng.choice(words, size=rows), dtype="str")
    text[rng.random(rows) < 0.01] = None
    times = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 10**15, size=rows), unit="ns")
    frame = pd.DataFrame({f"x{i}": rng.standard_normal(rows) for i in range(4)})
    frame["count"] = rng.integers(0, 10**6, size=rows)
    frame["word"] = text.astype("category") if categorical else text
    frame["when"] = pd.DatetimeIndex(times).as_unit("ns")
    if categorical:
        frame["when"] = frame["when"].dt.tz_localize("UTC")
    return frame


def measure(obj: Any, repeat: int) -> dict[str, float]:
    ours = encode(obj)
    theirs = pickle.dumps(obj, protocol=5)
    back = decode(ours)  # check the round trip once, outside the timings
    if isinstance(obj, pd.DataFrame):
        pd.testing.assert_frame_equal(back, obj, check_exact=True)
    else:
        np.testing.assert_array_equal(back, obj)
    del back  # a live decoded copy would change the allocator's state during the timings
    ops = {
        "enc": lambda: encode(obj),
        "p_enc": lambda: pickle.dumps(obj, protocol=5),
        "dec": lambda: decode(ours),
        "p_dec": lambda: pickle.loads(theirs),
    }
    # interleave the runs, so a change in machine load hits both codecs alike; keep the best of each
    best = {name: math.inf for name in ops}
    for _ in range(repeat):
        for name, fn in ops.items():
            best[name] = min(best[name], timed(fn))
    return {**best, "size": len(ours), "p_size": len(theirs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10x smaller")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    n_array, n_rows = 10_000_000 // scale, 1_000_000 // scale

    cases = [
        (f"(a) float64 array, {n_array:,} elements", make_array(n_array)),
        (f"(b) DataFrame {n_rows:,} rows: 4 float, int, str, datetime", make_frame(n_rows)),
        (
            f"(c) DataFrame {n_rows:,} rows: 4 float, int, category, datetime UTC",
            make_frame(n_rows, categorical=True),
        ),
    ]
    ms = 1e3
    header = (
        f"{'case':<66} {'codec':>6} {'enc ms':>8} {'dec ms':>8} {'total ms':>9} {'size MB':>9}"
        f" {'time ratio':>10} {'size ratio':>10}  targets"
    )
    print(
        f"flame.codec vs pickle protocol 5 (best of {args.repeat}; numpy {np.__version__}, pandas {pd.__version__})"
    )
    print(header)
    print("-" * len(header))
    for name, obj in cases:
        r = measure(obj, args.repeat)
        total, p_total = r["enc"] + r["dec"], r["p_enc"] + r["p_dec"]
        time_ratio, size_ratio = total / p_total, r["size"] / r["p_size"]
        met = time_ratio <= TIME_TARGET and size_ratio <= SIZE_TARGET
        verdict = "met" if met else f"MISSED (time <= {TIME_TARGET}, size <= {SIZE_TARGET})"
        print(
            f"{name:<66} {'flame':>6} {r['enc'] * ms:8.1f} {r['dec'] * ms:8.1f} {total * ms:9.1f}"
            f" {r['size'] / 1e6:9.2f} {time_ratio:10.2f} {size_ratio:10.4f}  {verdict}"
        )
        print(
            f"{'':<66} {'pickle':>6} {r['p_enc'] * ms:8.1f} {r['p_dec'] * ms:8.1f} {p_total * ms:9.1f}"
            f" {r['p_size'] / 1e6:9.2f}"
        )
    print()
    print(f"reading pickles: decode(allow_pickle=True) vs pickle.loads (protocol 4, best of {args.repeat})")
    pickles = [
        ("(a) float64 array", cases[0][1]),
        ("(b) DataFrame", cases[1][1]),
        ("(b) DataFrame, str column as object (pandas 2)", cases[1][1].astype({"word": object})),
        ("100,000 NumPy float64 scalars in a list", list(make_array(100_000))),
    ]
    print(f"{'case':<66} {'restricted ms':>14} {'pickle ms':>10} {'ratio':>7}")
    for name, obj in pickles:
        data = pickle.dumps(obj, protocol=4)
        ours = min(timed(lambda: decode(data, allow_pickle=True)) for _ in range(args.repeat))  # noqa: B023
        theirs = min(timed(lambda: pickle.loads(data)) for _ in range(args.repeat))  # noqa: B023
        print(f"{name:<66} {ours * ms:14.1f} {theirs * ms:10.1f} {ours / theirs:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

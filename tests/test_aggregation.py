"""Tests of flame.protocols.aggregation: federated results equal the pooled ones, numerics, errors."""

# The error table passes wrongly typed updates on purpose.
# mypy: disable-error-code="arg-type, dict-item, call-overload"

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.errors import PayloadError
from flame.protocols import (
    AggregationError,
    concatenate,
    count,
    fed_avg,
    merged_histogram,
    pooled_mean_variance,
    summarise,
    total,
    weighted_mean,
)

EPS = 2.0**-53  # unit roundoff of float64
FAST = settings(max_examples=60, deadline=None)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def partitions(draw: st.DrawFn, elements: st.SearchStrategy[Any], max_size: int = 40) -> list[list[Any]]:
    """A non-empty list split into 1..6 consecutive non-empty parts (parts of size 1 included)."""
    data = draw(st.lists(elements, min_size=1, max_size=max_size))
    n_parts = draw(st.integers(min_value=1, max_value=min(6, len(data))))
    cuts: list[int] = []
    if n_parts > 1:
        cuts = sorted(
            draw(st.sets(st.integers(1, len(data) - 1), min_size=n_parts - 1, max_size=n_parts - 1))
        )
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def nodes(parts: list[Any], make: Callable[[Any], Any] = lambda p: p) -> dict[str, Any]:
    """One update per part, keyed node-00, node-01, ... (inserted in reverse to test the ordering)."""
    return {f"node-{i:02d}": make(part) for i, part in reversed(list(enumerate(parts)))}


def naive_federated_variance(parts: list[np.ndarray], ddof: int) -> float:
    """The textbook federated variance: nodes send (n, sum x, sum x**2), the aggregator computes
    (sum x**2 - (sum x)**2 / N) / (N - ddof). Even with correctly rounded sums (fsum) it subtracts
    two numbers near N * 1e18 whose difference is about N: every digit is lost."""
    n = sum(len(p) for p in parts)
    s1 = math.fsum(math.fsum(p) for p in parts)
    s2 = math.fsum(math.fsum(float(v) * float(v) for v in p) for p in parts)
    return (s2 - s1 * s1 / n) / (n - ddof)


# ------------------------------------------------------------------------------------------------
# pooled mean and variance


@FAST
@given(parts=partitions(finite), ddof=st.sampled_from([0, 1]), with_empty_node=st.booleans())
def test_pooled_mean_variance_equals_numpy_on_the_pooled_data(
    parts: list[list[float]], ddof: int, with_empty_node: bool
) -> None:
    pooled = np.array([x for p in parts for x in p])
    if len(pooled) <= ddof:
        parts.append([0.0, 1.0])  # the variance needs more than ddof observations
        pooled = np.array([x for p in parts for x in p])
    updates = nodes(parts, summarise)
    if with_empty_node:
        updates["node-empty"] = summarise([])
    result = pooled_mean_variance(updates, ddof=ddof)
    scale = float(np.max(np.abs(pooled))) or 1.0
    assert result["n"] == len(pooled)
    assert isinstance(result["mean"], float)
    assert isinstance(result["variance"], float)
    assert result["mean"] == pytest.approx(np.mean(pooled), rel=1e-9, abs=1e-12 * scale)
    assert result["variance"] == pytest.approx(np.var(pooled, ddof=ddof), rel=1e-9, abs=1e-12 * scale**2)
    assert result["std"] == pytest.approx(np.std(pooled, ddof=ddof), rel=1e-9, abs=1e-6 * scale)


@FAST
@given(data=st.lists(finite, min_size=2, max_size=30), ddof=st.sampled_from([0, 1]))
def test_pooled_mean_variance_with_one_observation_per_node(data: list[float], ddof: int) -> None:
    # Every node has n = 1 and m2 = 0: all of the variance comes from the between-node term.
    result = pooled_mean_variance(nodes([[x] for x in data], summarise), ddof=ddof)
    scale = max(abs(x) for x in data) or 1.0
    assert result["variance"] == pytest.approx(np.var(data, ddof=ddof), rel=1e-9, abs=1e-12 * scale**2)


@FAST
@given(
    parts=partitions(st.lists(finite, min_size=3, max_size=3), max_size=25),
    ddof=st.sampled_from([0, 1]),
)
def test_pooled_mean_variance_per_column_for_arrays(parts: list[list[list[float]]], ddof: int) -> None:
    pooled = np.array([row for p in parts for row in p])
    if len(pooled) <= ddof:
        parts.append([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]])
        pooled = np.array([row for p in parts for row in p])
    result = pooled_mean_variance(nodes([np.array(p) for p in parts], summarise), ddof=ddof)
    scale = float(np.max(np.abs(pooled))) or 1.0
    assert isinstance(result["variance"], np.ndarray)
    assert result["variance"].shape == (3,)
    np.testing.assert_allclose(result["mean"], pooled.mean(axis=0), rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(
        result["variance"], pooled.var(axis=0, ddof=ddof), rtol=1e-9, atol=1e-12 * scale**2
    )
    np.testing.assert_allclose(result["std"], pooled.std(axis=0, ddof=ddof), rtol=1e-9, atol=1e-6 * scale)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(2, 300),
    n_nodes=st.integers(1, 8),
    offset=st.sampled_from([1e6, 1e9, -1e9, 1e12]),
    spread=st.floats(0.05, 20.0),
    ddof=st.sampled_from([0, 1]),
)
def test_pooled_variance_stays_accurate_with_a_huge_offset(
    seed: int, size: int, n_nodes: int, offset: float, spread: float, ddof: int
) -> None:
    rng = np.random.default_rng(seed)
    data = offset + rng.normal(0.0, spread, size)
    cuts = np.sort(rng.choice(np.arange(1, size), size=min(n_nodes, size) - 1, replace=False))
    parts = np.split(data, cuts)
    # Exact reference: statistics computes with Fractions, so it is exact up to the final rounding.
    exact: float = statistics.variance(data.tolist()) if ddof == 1 else statistics.pvariance(data.tolist())
    result = pooled_mean_variance(nodes(parts, summarise), ddof=ddof)
    assert abs(float(result["variance"]) - exact) / exact < 1e-9
    assert abs(float(result["mean"]) - statistics.fmean(data.tolist())) <= 4 * EPS * abs(offset)


def test_naive_sum_of_squares_loses_every_digit_where_pooled_mean_variance_does_not() -> None:
    rng = np.random.default_rng(2024)
    data = 1e9 + rng.normal(0.0, 1.0, 1000)  # values around 1e9, spread 1
    parts = np.split(data, [300, 750])
    exact = statistics.variance(data.tolist())  # about 1
    # Naive: sum(x**2) is about 1e21, float64 holds it to +-1e5, and the difference we need is 1e3.
    naive = naive_federated_variance(parts, ddof=1)
    assert abs(naive - exact) / exact > 0.5  # no correct digit left (it may even come out negative)
    ours = pooled_mean_variance(nodes(parts, summarise), ddof=1)
    assert abs(ours["variance"] - exact) / exact < 1e-9


def test_mean_residual_keeps_the_digits_a_float64_mean_cannot_hold() -> None:
    # The pooled variance depends on the node means to first order; a mean of values near 1e9 is
    # rounded to 1.2e-7, which for a spread of 0.1 costs digits unless mean_residual restores them.
    rng = np.random.default_rng(7)
    data = 1e9 + rng.normal(0.0, 0.1, 400)
    parts = np.split(data, [50, 120, 200, 333])
    exact = statistics.variance(data.tolist())
    summaries = nodes(parts, summarise)
    with_residual = pooled_mean_variance(summaries)["variance"]
    three_keys = {node: {k: s[k] for k in ("n", "mean", "m2")} for node, s in summaries.items()}
    without_residual = pooled_mean_variance(three_keys)["variance"]
    assert abs(with_residual - exact) / exact < 1e-12
    assert abs(without_residual - exact) / exact > 1e-10  # still far better than naive, but not 1e-9


def test_summarise_gives_local_statistics() -> None:
    s = summarise([1.0, 2.0, 3.0, 6.0])
    assert s == {"n": 4, "mean": 3.0, "m2": 14.0, "mean_residual": 0.0}
    table = summarise(np.array([[1, 10], [3, 30]]))
    assert table["n"] == 2
    np.testing.assert_array_equal(table["mean"], [2.0, 20.0])
    np.testing.assert_array_equal(table["m2"], [2.0, 200.0])
    rows = summarise(np.array([[1, 10], [3, 30]]), axis=1)
    np.testing.assert_array_equal(rows["mean"], [5.5, 16.5])
    flat = summarise(np.array([[1, 2], [3, 4]]), axis=None)
    assert (flat["n"], flat["mean"], flat["m2"]) == (4, 2.5, 5.0)
    assert summarise(pd.Series([True, False, True, True]))["mean"] == 0.75
    empty = summarise(np.zeros((0, 2)))
    assert empty["n"] == 0
    np.testing.assert_array_equal(empty["mean"], [0.0, 0.0])


def test_pooled_mean_variance_accepts_summaries_without_mean_residual_and_numpy_types() -> None:
    updates = {
        "a": {"n": np.int64(2), "mean": np.float32(1.0), "m2": 2.0},  # values 0, 2
        "b": {"n": 2, "mean": 5.0, "m2": 2.0},  # values 4, 6
        "c": {"n": 0, "mean": float("nan"), "m2": float("nan")},  # no data: skipped
    }
    result = pooled_mean_variance(updates, ddof=0)
    assert result == {"n": 4, "mean": 3.0, "variance": 5.0, "std": math.sqrt(5.0)}


# ------------------------------------------------------------------------------------------------
# weighted mean (FedAvg)


@FAST
@given(parts=partitions(finite))
def test_weighted_mean_with_counts_as_weights_is_the_pooled_mean(parts: list[list[float]]) -> None:
    pooled = np.array([x for p in parts for x in p])
    fedavg = weighted_mean(nodes(parts, lambda p: {"value": float(np.mean(p)), "weight": len(p)}))
    from_summaries = pooled_mean_variance(nodes(parts, summarise), ddof=0)["mean"]
    scale = float(np.max(np.abs(pooled))) or 1.0
    assert fedavg == pytest.approx(from_summaries, rel=1e-12, abs=1e-12 * scale)
    assert fedavg == pytest.approx(np.mean(pooled), rel=1e-9, abs=1e-12 * scale)


def test_weighted_mean_of_arrays_and_the_fed_avg_alias() -> None:
    updates = {
        "b": {"value": np.array([3.0, 4.0]), "weight": 3},
        "a": {"value": [1.0, 2.0], "weight": 1},
        "c": {"value": np.array([np.nan, np.nan]), "weight": 0},  # no data: left out
    }
    np.testing.assert_array_equal(weighted_mean(updates), [2.5, 3.5])
    assert fed_avg is weighted_mean
    assert weighted_mean({"a": {"value": 2, "weight": 1.5}, "b": {"value": 4, "weight": 0.5}}) == 2.5


def test_weighted_mean_does_not_modify_its_input() -> None:
    value = np.array([1.0, 2.0])
    weighted_mean({"a": {"value": value, "weight": 2}, "b": {"value": value, "weight": 2}})
    np.testing.assert_array_equal(value, [1.0, 2.0])


# ------------------------------------------------------------------------------------------------
# total and count


def test_total_cancellation_is_exact_where_a_naive_sum_is_not() -> None:
    updates = {"a": 1e16, "b": 1.0, "c": -1e16}
    assert sum(updates.values()) == 0.0  # naive: the 1.0 is lost
    assert total(updates) == 1.0
    arrays = {k: np.array([v, 2 * v]) for k, v in updates.items()}
    assert (arrays["a"] + arrays["b"] + arrays["c"]).tolist() == [0.0, 0.0]  # naive, element-wise
    np.testing.assert_array_equal(total(arrays), [1.0, 2.0])


@FAST
@given(values=st.lists(st.floats(-1e300, 1e300, allow_nan=False), min_size=1, max_size=20), data=st.data())
def test_total_of_floats_is_the_correctly_rounded_sum_whatever_the_arrival_order(
    values: list[float], data: st.DataObject
) -> None:
    updates = {f"n{i:02d}": v for i, v in enumerate(values)}
    shuffled = dict(data.draw(st.permutations(list(updates.items()))))
    assert total(updates) == math.fsum(values)
    assert total(shuffled) == total(updates)


@FAST
@given(
    columns=st.lists(
        st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=2, max_size=12), min_size=1, max_size=5
    )
)
def test_total_of_float_arrays_is_within_the_compensated_error_bound(columns: list[list[float]]) -> None:
    k = len(columns[0])
    columns = [(c * k)[:k] for c in columns]  # every column gets k entries: node i sends row i
    updates = {f"n{i:02d}": np.array([c[i] for c in columns]) for i in range(k)}
    result = total(updates)
    for j, column in enumerate(columns):
        exact = math.fsum(column)
        bound = 2 * EPS * abs(exact) + 8 * k * EPS**2 * math.fsum(abs(x) for x in column)
        assert abs(result[j] - exact) <= bound


def test_total_of_ints_and_int_arrays_is_exact() -> None:
    assert total({"a": 2**53, "b": 1}) == 2**53 + 1  # a float sum would give 2**53
    assert total({"a": 2**80, "b": np.int64(-1)}) == 2**80 - 1
    assert isinstance(total({"a": 1, "b": 2}), int)
    assert isinstance(total({"a": 1, "b": 2.0}), float)
    big = {"a": np.array([2**53, 3]), "b": np.array([1, -3], dtype=np.int32)}
    summed = total(big)
    assert summed.dtype == np.int64
    assert summed.tolist() == [2**53 + 1, 0]
    # Partial sums beyond int64, total inside: computed exactly, returned as int64.
    assert total(
        {"a": np.array([2**62 + 5]), "b": np.array([2**62]), "c": np.array([-(2**62)])}
    ).tolist() == [2**62 + 5]
    mixed = total({"a": np.array([1, 2]), "b": np.array([0.5, 0.25])})
    assert mixed.dtype == np.float64
    assert mixed.tolist() == [1.5, 2.25]


def test_total_non_finite_values_follow_ieee() -> None:
    assert total({"a": math.inf, "b": 1.0}) == math.inf
    assert math.isnan(total({"a": math.inf, "b": -math.inf}))
    assert total({"a": 1e308, "b": 1e308, "c": -1e308}) == 1e308  # partial sums overflow, the total not
    assert total({"a": 1e308, "b": 1e308}) == math.inf
    arrays = total({"a": np.array([np.inf, 1.0]), "b": np.array([1.0, np.nan])})
    assert arrays[0] == np.inf
    assert np.isnan(arrays[1])


def test_count_is_exact() -> None:
    assert count({"a": 3, "b": np.int64(4), "c": 0}) == 7
    assert count({"a": 2**64, "b": 2**64}) == 2**65
    assert isinstance(count({"a": np.uint8(3)}), int)


# ------------------------------------------------------------------------------------------------
# histograms


@FAST
@given(
    parts=partitions(st.floats(-12, 12, allow_nan=False)),
    bins=st.integers(1, 12),
    weighted=st.booleans(),
)
def test_merged_histogram_equals_the_histogram_of_the_pooled_data(
    parts: list[list[float]], bins: int, weighted: bool
) -> None:
    edges = np.histogram_bin_edges([], bins=bins, range=(-10, 10))  # agreed in advance, data-free
    pooled = np.array([x for p in parts for x in p])

    def local(part: list[float]) -> dict[str, Any]:
        weights = np.full(len(part), 0.5) if weighted else None
        counts, local_edges = np.histogram(part, bins=edges, weights=weights)
        return {"edges": local_edges, "counts": counts}

    merged = merged_histogram(nodes(parts, local))
    expected, _ = np.histogram(pooled, bins=edges, weights=np.full(len(pooled), 0.5) if weighted else None)
    np.testing.assert_array_equal(merged["edges"], edges)
    np.testing.assert_array_equal(merged["counts"], expected)
    assert merged["counts"].dtype == (np.float64 if weighted else np.int64)


# ------------------------------------------------------------------------------------------------
# concatenation


def test_concatenate_lists_in_node_id_order_or_a_given_order() -> None:
    updates = {"node-b": [3, 4], "node-a": (1, 2), "node-c": []}
    assert concatenate(updates) == [1, 2, 3, 4]
    assert concatenate(updates, order=["node-c", "node-b", "node-a"]) == [3, 4, 1, 2]


def test_concatenate_arrays() -> None:
    updates = {"b": np.array([[3, 4]]), "a": np.array([[1, 2], [5, 6]])}
    np.testing.assert_array_equal(concatenate(updates), [[1, 2], [5, 6], [3, 4]])
    np.testing.assert_array_equal(concatenate({"a": np.array([1.0]), "b": [2.0, 3.0]}), [1.0, 2.0, 3.0])


def test_concatenate_dataframes_and_series_with_a_fresh_index() -> None:
    b = pd.DataFrame({"age": [70], "sex": ["f"]}, index=[0])
    a = pd.DataFrame({"sex": ["m", "f"], "age": [50, 60]}, index=[0, 1])
    frame = concatenate({"hospital-b": b, "hospital-a": a})
    assert list(frame.index) == [0, 1, 2]
    assert frame["age"].tolist() == [50, 60, 70]
    assert frame["sex"].tolist() == ["m", "f", "f"]
    series = concatenate({"b": pd.Series([3], index=[9]), "a": pd.Series([1, 2])}, order=["b", "a"])
    assert series.tolist() == [3, 1, 2]
    assert list(series.index) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------
# errors


def _h(edges: Any, counts: Any) -> dict[str, Any]:
    return {"edges": edges, "counts": counts}


ERROR_CASES: list[tuple[str, Callable[[], Any], str]] = [
    # no updates, or not a mapping
    *[
        (f"{f.__name__}-empty", (lambda f=f: f({})), "no updates")
        for f in (
            total,
            count,
            weighted_mean,
            pooled_mean_variance,
            merged_histogram,
            concatenate,
        )
    ],
    ("not-a-mapping", lambda: total([1, 2]), "must be a mapping node_id"),
    ("incomparable-ids", lambda: total({1: 1, "a": 2}), "node ids must be strings"),
    # total
    ("total-shapes", lambda: total({"a": np.zeros(3), "b": np.zeros(4)}), r"shape \(4,\).*same shape"),
    ("total-scalar-and-array", lambda: total({"a": 1.0, "b": np.zeros(2)}), "same shape"),
    ("total-string", lambda: total({"a": 1, "b": "2"}), "must be a number"),
    ("total-bool", lambda: total({"a": 1, "b": True}), "must be a number"),
    ("total-object-dtype", lambda: total({"a": np.array([1, None])}), "dtype object"),
    ("total-ragged", lambda: total({"a": [[1, 2], [3]]}), "not a numeric array"),
    (
        "total-int64-overflow",
        lambda: total({"a": np.array([2**62]), "b": np.array([2**62])}),
        "overflows int64",
    ),
    # count
    ("count-float", lambda: count({"a": 3.0}), "must be an int"),
    ("count-bool", lambda: count({"a": True}), "must be an int"),
    ("count-negative", lambda: count({"a": 3, "b": -1}), "negative"),
    # weighted mean
    ("wm-not-a-dict", lambda: weighted_mean({"a": 1.0}), "must be a dict"),
    ("wm-missing-weight", lambda: weighted_mean({"a": {"value": 1.0}}), "lacks key.*'weight'"),
    (
        "wm-unknown-key",
        lambda: weighted_mean({"a": {"value": 1, "weigth": 1, "weight": 1}}),
        "unknown key.*weigth",
    ),
    (
        "wm-negative",
        lambda: weighted_mean({"a": {"value": 1, "weight": 2}, "b": {"value": 1, "weight": -1}}),
        "negative",
    ),
    ("wm-zero-total", lambda: weighted_mean({"a": {"value": 1, "weight": 0}}), "positive weight"),
    ("wm-nan-weight", lambda: weighted_mean({"a": {"value": 1, "weight": math.nan}}), "not finite"),
    ("wm-array-weight", lambda: weighted_mean({"a": {"value": 1, "weight": np.ones(2)}}), "must be a number"),
    (
        "wm-shapes",
        lambda: fed_avg({"a": {"value": np.ones(2), "weight": 1}, "b": {"value": np.ones(3), "weight": 1}}),
        "same shape",
    ),
    # pooled mean and variance
    ("pmv-missing-m2", lambda: pooled_mean_variance({"a": {"n": 2, "mean": 1.0}}), "lacks key.*'m2'"),
    (
        "pmv-unknown-key",
        lambda: pooled_mean_variance({"a": {"n": 2, "mean": 1.0, "m2": 1.0, "var": 1}}),
        "unknown key.*'var'",
    ),
    ("pmv-negative-n", lambda: pooled_mean_variance({"a": {"n": -1, "mean": 1.0, "m2": 1.0}}), "int >= 0"),
    ("pmv-float-n", lambda: pooled_mean_variance({"a": {"n": 2.0, "mean": 1.0, "m2": 1.0}}), "int >= 0"),
    (
        "pmv-nan-mean",
        lambda: pooled_mean_variance({"a": {"n": 2, "mean": math.nan, "m2": 1.0}}),
        "NaN or infinity",
    ),
    (
        "pmv-negative-m2",
        lambda: pooled_mean_variance({"a": {"n": 2, "mean": 1.0, "m2": -1.0}}),
        "m2 .* negative",
    ),
    (
        "pmv-m2-shape",
        lambda: pooled_mean_variance({"a": {"n": 2, "mean": np.ones(2), "m2": np.ones(3)}}),
        "its mean has shape",
    ),
    (
        "pmv-node-shapes",
        lambda: pooled_mean_variance({"a": summarise(np.ones((3, 2))), "b": summarise(np.ones((3, 3)))}),
        "same shape",
    ),
    (
        "pmv-residual-shape",
        lambda: pooled_mean_variance({"a": {"n": 2, "mean": 1.0, "m2": 1.0, "mean_residual": [0, 0]}}),
        "mean_residual",
    ),
    ("pmv-no-observations", lambda: pooled_mean_variance({"a": summarise([]), "b": summarise([])}), "n = 0"),
    (
        "pmv-too-few",
        lambda: pooled_mean_variance({"a": summarise([1.0])}, ddof=1),
        "more than 1 observations",
    ),
    (
        "pmv-negative-ddof",
        lambda: pooled_mean_variance({"a": summarise([1.0, 2.0])}, ddof=-1),
        "ddof must be >= 0",
    ),
    (
        "pmv-string-ddof",
        lambda: pooled_mean_variance({"a": summarise([1.0, 2.0])}, ddof="1"),
        "ddof must be a number",
    ),
    # summarise
    ("summarise-nan", lambda: summarise([1.0, math.nan]), "NaN or infinity"),
    ("summarise-scalar", lambda: summarise(3.0), "one number"),
    ("summarise-strings", lambda: summarise(["a", "b"]), "expected numbers"),
    ("summarise-axis", lambda: summarise([1.0, 2.0], axis=1), "axis 1 is out of range"),
    # histograms
    (
        "hist-different-edges",
        lambda: merged_histogram({"a": _h([0, 1, 2], [1, 1]), "b": _h([0, 1.5, 2], [1, 1])}),
        "same bin edges.*in advance",
    ),
    (
        "hist-different-bins",
        lambda: merged_histogram({"a": _h([0, 1, 2], [1, 1]), "b": _h([0, 2], [1])}),
        "2 edges on node 'b', 3 on node 'a'",
    ),
    ("hist-counts-length", lambda: merged_histogram({"a": _h([0, 1, 2], [1, 1, 1])}), "2 bins"),
    ("hist-negative", lambda: merged_histogram({"a": _h([0, 1, 2], [1, -1])}), "negative"),
    ("hist-2d-edges", lambda: merged_histogram({"a": _h([[0, 1], [1, 2]], [1])}), "1-D array"),
    ("hist-decreasing", lambda: merged_histogram({"a": _h([0, 2, 1], [1, 1])}), "non-decreasing"),
    ("hist-missing-key", lambda: merged_histogram({"a": {"counts": [1]}}), "lacks key.*'edges'"),
    # concatenation
    ("concat-order-missing", lambda: concatenate({"a": [1], "b": [2]}, order=["a"]), "leaves out.*'b'"),
    ("concat-order-unknown", lambda: concatenate({"a": [1]}, order=["a", "z"]), "without an update: 'z'"),
    ("concat-order-repeated", lambda: concatenate({"a": [1]}, order=["a", "a"]), "more than once"),
    ("concat-order-string", lambda: concatenate({"a": [1]}, order="a"), "sequence of node ids"),
    ("concat-mixed", lambda: concatenate({"a": pd.DataFrame({"x": [1]}), "b": [1]}), "mix pandas"),
    (
        "concat-columns",
        lambda: concatenate({"a": pd.DataFrame({"x": [1]}), "b": pd.DataFrame({"y": [1]})}),
        "same columns",
    ),
    (
        "concat-trailing-shape",
        lambda: concatenate({"a": np.ones((1, 2)), "b": np.ones((1, 3))}),
        "first dimension",
    ),
    ("concat-0d", lambda: concatenate({"a": np.array(1.0), "b": np.ones(1)}), "0-d array"),
    ("concat-numbers", lambda: concatenate({"a": 1, "b": 2}), "expected a list"),
]


@pytest.mark.parametrize(
    ("call", "match"), [case[1:] for case in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_updates_raise_a_clear_payload_error(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(AggregationError, match=match) as info:
        call()
    assert isinstance(info.value, PayloadError)
    assert isinstance(info.value, ValueError)


def test_error_messages_name_the_node() -> None:
    with pytest.raises(PayloadError, match="node 'hospital-b'"):
        total({"hospital-a": np.zeros(2), "hospital-b": np.zeros(3)})

"""Aggregation functions: combine what the analysis nodes send into one result.

One function per aggregation. Each takes ``updates``, a mapping ``node_id -> update`` as the
aggregator receives them, and returns the aggregate. The functions are pure: no I/O, no global
state, and the updates are never modified.

Conventions shared by every function
------------------------------------
* **Deterministic order.** Updates are combined in sorted node-id order, so the result does not
  depend on the order in which the messages arrived (floating-point addition is not associative).
* **Scalars in, scalars out.** Python or NumPy numbers give a Python ``int``/``float``; arrays give
  a NumPy array (``float64``, or ``int64`` for exact integer sums). Every node must send the same
  shape; nothing is broadcast.
* **Careful numerics.** Scalar sums use :func:`math.fsum` (correctly rounded); array sums over
  nodes use float64 compensated (Neumaier) summation, whose error does not grow with the number of
  nodes; integer sums are exact. Variances never use the naive ``sum(x**2) - n*mean**2``.
* **Typed statistics.** What an analysis node sends carries the number of records behind it
  (``summarise`` its ``n``; histograms and contingency tables their counts), so the node's
  disclosure guard (:mod:`flame.disclosure`) can refuse a statistic over fewer records than the
  node's policy allows (default 5) or a table with a cell of 1 to 4, before it leaves the node.
* **Errors raise.** Bad input raises :class:`AggregationError` (a :class:`~flame.errors.PayloadError`
  and a :class:`ValueError`) whose message names the function, the node and the problem: no updates,
  a missing or unknown key, mismatched shapes, a non-numeric value, a negative weight or count.

Functions
---------
* :func:`total`: element-wise sum of numbers or arrays.
* :func:`count`: exact sum of non-negative integer counts.
* :func:`weighted_mean`: weighted mean of ``{"value", "weight"}`` updates (FedAvg); alias :func:`fed_avg`.
* :func:`summarise`: an analysis node's local ``{"n", "mean", "m2", "mean_residual"}`` of raw data.
* :func:`pooled_mean_variance`: pooled ``{"n", "mean", "variance", "std"}`` from the local summaries.
* :func:`merged_histogram`: summed counts of histograms that share their bin edges.
* :func:`contingency_table`: an analysis node's cross-tabulation of two variables over agreed levels.
* :func:`merged_contingency_table`: summed counts of contingency tables with the same levels.
* :func:`concatenate`: lists, arrays or pandas objects joined in node-id (or a given) order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypedDict, TypeVar, overload

import numpy as np
import numpy.typing as npt

from flame.errors import AggregationError

__all__ = [
    "AggregationError",
    "ContingencyTable",
    "Histogram",
    "MeanVariance",
    "Summary",
    "concatenate",
    "contingency_table",
    "count",
    "fed_avg",
    "merged_contingency_table",
    "merged_histogram",
    "pooled_mean_variance",
    "summarise",
    "total",
    "weighted_mean",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
#: A number or array a node may send (lists and tuples of numbers are accepted as arrays too).
Numeric: TypeAlias = int | float | np.integer[Any] | np.floating[Any] | npt.NDArray[Any]
#: A float or a float64 array: the type of means, variances and weighted means.
FloatOrArray: TypeAlias = float | FloatArray

T = TypeVar("T")

_I64_MIN = int(np.iinfo(np.int64).min)
_I64_MAX = int(np.iinfo(np.int64).max)
_REAL_KINDS = "iuf"  # NumPy dtype kinds accepted as numbers: signed, unsigned, float
_INT_KINDS = "iu"
# Powers of two used to rescale a sum whose partial sums overflow; multiplying by them is exact.
_DOWN = 2.0**-64
_UP = 2.0**64


class Summary(TypedDict):
    """One node's summary statistics, as :func:`summarise` makes them.

    ``mean_residual`` is optional for :func:`pooled_mean_variance`; see there why it helps.
    """

    n: int
    mean: FloatOrArray
    m2: FloatOrArray
    mean_residual: FloatOrArray


class MeanVariance(TypedDict):
    """The pooled statistics :func:`pooled_mean_variance` returns."""

    n: int
    mean: FloatOrArray
    variance: FloatOrArray
    std: FloatOrArray


class Histogram(TypedDict):
    """A histogram: ``counts[i]`` values fell in ``[edges[i], edges[i + 1])`` (the last bin is closed)."""

    edges: FloatArray
    counts: npt.NDArray[Any]


class ContingencyTable(TypedDict):
    """A cross-tabulation: ``counts[i, j]`` records have ``rows[i]`` and ``columns[j]``."""

    counts: IntArray
    rows: list[Any]
    columns: list[Any]


# --------------------------------------------------------------------------------------------
# validation helpers


def _ordered(updates: Mapping[Any, T], what: str) -> list[tuple[str, T]]:
    """The updates as ``(node_id, update)`` pairs in sorted node-id order; refuses no updates."""
    if not isinstance(updates, Mapping):
        raise AggregationError(
            f"{what}: updates must be a mapping node_id -> update, got {type(updates).__name__}"
        )
    if not updates:
        raise AggregationError(f"{what}: no updates to aggregate; at least one node must send one")
    try:
        keys = sorted(updates)
    except TypeError:
        kinds = sorted({type(k).__name__ for k in updates})
        raise AggregationError(
            f"{what}: node ids must be strings (mutually comparable), got keys of types {', '.join(kinds)}"
        ) from None
    return [(k, updates[k]) for k in keys]


def _is_scalar(value: object) -> bool:
    """A real number that is not a bool (Python or NumPy); arrays, even 0-d ones, are not scalars."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}" if _is_short(value) else type(value).__name__


def _is_short(value: object) -> bool:
    return isinstance(value, (bool, int, float, str, bytes, type(None))) and len(repr(value)) <= 40


def _to_float(value: object, what: str, node: str, field: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise AggregationError(f"{what}: {field} from node {node!r} is too large for a float") from None


def _real_array(value: object, what: str, node: str, field: str) -> npt.NDArray[Any]:
    """``value`` as a NumPy array of real numbers (int or float dtype), or an AggregationError."""
    if isinstance(value, (bool, np.bool_, str, bytes, Mapping)) or value is None:
        raise AggregationError(
            f"{what}: {field} from node {node!r} must be a number or a numeric array, got {_describe(value)}"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise AggregationError(
            f"{what}: {field} from node {node!r} is not a numeric array (ragged or mixed data?): {exc}"
        ) from None
    if array.dtype.kind not in _REAL_KINDS:
        raise AggregationError(
            f"{what}: {field} from node {node!r} has dtype {array.dtype}; expected real numbers "
            "(integer or float; convert booleans with .astype(int))"
        )
    return array


def _same_shape(arrays: Sequence[tuple[str, npt.NDArray[Any]]], what: str, field: str) -> tuple[int, ...]:
    first_node, first = arrays[0]
    for node, array in arrays[1:]:
        if array.shape != first.shape:
            raise AggregationError(
                f"{what}: {field} from node {node!r} has shape {array.shape}, but node {first_node!r} "
                f"sent shape {first.shape}; every node must send the same shape"
            )
    return first.shape


def _fields(
    update: object, what: str, node: str, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> Mapping[str, Any]:
    """Check that ``update`` is a dict with the required keys and no unknown ones."""
    expected = ", ".join(repr(k) for k in sorted(required))
    if not isinstance(update, Mapping):
        raise AggregationError(
            f"{what}: the update from node {node!r} must be a dict with keys {expected}, "
            f"got {_describe(update)}"
        )
    keys = set(update.keys())
    missing = required - keys
    if missing:
        raise AggregationError(
            f"{what}: the update from node {node!r} lacks key(s) {', '.join(sorted(map(repr, missing)))}; "
            f"expected keys {expected}"
        )
    unknown = keys - required - optional
    if unknown:
        allowed = expected + (f" (optional: {', '.join(sorted(map(repr, optional)))})" if optional else "")
        raise AggregationError(
            f"{what}: the update from node {node!r} has unknown key(s) "
            f"{', '.join(sorted(map(repr, unknown)))}; expected keys {allowed}"
        )
    return update


def _finite(array: npt.NDArray[Any], what: str, node: str, field: str) -> None:
    if not np.all(np.isfinite(array)):
        raise AggregationError(
            f"{what}: {field} from node {node!r} contains NaN or infinity; "
            "remove or impute missing values before summarising"
        )


def _output(array: npt.NDArray[Any], scalar: bool) -> Any:
    """A Python float for scalar results, the array otherwise."""
    return float(array) if scalar else array


# --------------------------------------------------------------------------------------------
# summation kernels


def _fsum(values: Sequence[float]) -> float:
    """Correctly rounded sum of floats (math.fsum), with IEEE semantics for inf/nan and no spurious
    OverflowError when a partial sum overflows but the total does not."""
    if not all(math.isfinite(v) for v in values):
        return float(sum(values))  # inf stays inf; inf - inf and nan give nan
    try:
        return math.fsum(values)
    except OverflowError:
        # Scaling by a power of two is exact (barring subnormals, negligible next to an overflow);
        # a total that really overflows becomes inf on scaling back.
        return math.fsum([v * _DOWN for v in values]) * _UP


def _compensated_sum(arrays: Sequence[npt.NDArray[Any]]) -> FloatArray:
    """Element-wise sum over nodes in float64 with Neumaier's compensated summation.

    The error is at most about ``2 eps |sum| + O(k eps^2) sum|x|`` for ``k`` arrays, instead of
    ``O(k eps) sum|x|`` for plain summation: cancellation between nodes (``1e16 + 1 - 1e16``) keeps
    its small terms. Elements that end non-finite fall back to the plain IEEE sum.
    """
    s = np.array(arrays[0], dtype=np.float64, copy=True)
    c = np.zeros_like(s)
    with np.errstate(invalid="ignore", over="ignore"):
        for x in arrays[1:]:
            x = np.asarray(x, dtype=np.float64)
            t = s + x
            c += np.where(np.abs(s) >= np.abs(x), (s - t) + x, (x - t) + s)
            s = t
        result: FloatArray = np.where(np.isfinite(s), s + c, s)
    return result


def _int_array_sum(arrays: Sequence[tuple[str, npt.NDArray[Any]]], what: str) -> IntArray:
    """Exact element-wise sum of integer arrays as int64; refuses a total that does not fit."""
    bound = 0
    converted: list[IntArray] = []
    for node, array in arrays:
        if array.size:
            lo, hi = int(array.min()), int(array.max())
            if lo < _I64_MIN or hi > _I64_MAX:
                raise AggregationError(f"{what}: values from node {node!r} do not fit in int64")
            bound += max(-lo, hi)
        converted.append(array.astype(np.int64, copy=False))
    if bound <= _I64_MAX:  # no partial sum can overflow
        out = np.zeros(converted[0].shape, dtype=np.int64)
        for array in converted:
            out += array
        return out
    exact = np.zeros(converted[0].shape, dtype=object)
    for array in converted:
        exact = exact + array.astype(object)
    if exact.size and (min(exact.flat) < _I64_MIN or max(exact.flat) > _I64_MAX):
        raise AggregationError(
            f"{what}: the integer total overflows int64; send the values as floats if rounding is acceptable"
        )
    return exact.astype(np.int64)


# --------------------------------------------------------------------------------------------
# sums and counts


@overload
def total(updates: Mapping[str, int]) -> int: ...
@overload
def total(updates: Mapping[str, float]) -> float: ...
@overload
def total(updates: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any]: ...
@overload
def total(updates: Mapping[str, Numeric]) -> int | float | npt.NDArray[Any]: ...
def total(updates: Mapping[str, Numeric]) -> int | float | npt.NDArray[Any]:
    """Element-wise sum of the nodes' numbers or arrays.

    Parameters
    ----------
    updates : Mapping[str, int | float | numpy.ndarray]
        node id -> a number, or an array (lists/tuples of numbers count as arrays). Either all
        numbers, or arrays that all have the same shape.

    Returns
    -------
    int | float | numpy.ndarray
        All ``int``: their exact ``int`` sum. Numbers with a float among them: a ``float``.
        Arrays: all integer dtypes give the exact ``int64`` sum, otherwise a ``float64`` array.

    Raises
    ------
    AggregationError
        No updates; a value that is not a number or numeric array (bools are refused: convert
        them); arrays of different shapes, or numbers mixed with arrays; an integer total outside
        int64 for integer arrays.

    Notes
    -----
    Numbers are summed with :func:`math.fsum`: the result is the correctly rounded exact sum, so
    ``{"a": 1e16, "b": 1.0, "c": -1e16}`` gives ``1.0`` (a plain ``sum`` gives ``0.0``). Float arrays
    are accumulated in float64 with compensated summation over the nodes. Non-finite values follow
    IEEE rules (``inf`` stays ``inf``; ``inf - inf`` is ``nan``).
    """
    what = "total"
    items = _ordered(updates, what)
    if all(_is_scalar(v) for _, v in items):
        if all(_is_int(v) for _, v in items):
            return sum(int(v) for _, v in items)
        return _fsum([_to_float(v, what, node, "the value") for node, v in items])
    arrays = [(node, _real_array(v, what, node, "the value")) for node, v in items]
    _same_shape(arrays, what, "the value")
    if all(a.dtype.kind in _INT_KINDS for _, a in arrays):
        return _int_array_sum(arrays, what)
    return _compensated_sum([a for _, a in arrays])


def count(updates: Mapping[str, int]) -> int:
    """Exact sum of the nodes' non-negative integer counts.

    Parameters
    ----------
    updates : Mapping[str, int]
        node id -> a count (a Python or NumPy integer, ``>= 0``).

    Returns
    -------
    int
        The exact sum, as a Python ``int`` (never rounded, never overflows).

    Raises
    ------
    AggregationError
        No updates; a count that is not an integer (floats and bools are refused, even ``3.0``),
        or is negative.

    Notes
    -----
    For element-wise counts (arrays), use :func:`total` or :func:`merged_histogram`.
    """
    what = "count"
    items = _ordered(updates, what)
    for node, value in items:
        if not _is_int(value):
            raise AggregationError(
                f"{what}: the count from node {node!r} must be an int, got {_describe(value)}"
            )
        if value < 0:
            raise AggregationError(f"{what}: the count from node {node!r} is negative ({value})")
    return sum(int(v) for _, v in items)


# --------------------------------------------------------------------------------------------
# means


_WEIGHTED_KEYS = frozenset({"value", "weight"})


def weighted_mean(updates: Mapping[str, Mapping[str, Any]]) -> FloatOrArray:
    """Weighted mean of the nodes' values: FedAvg (McMahan et al., 2017).

    Parameters
    ----------
    updates : Mapping[str, Mapping[str, Any]]
        node id -> ``{"value": number | array, "weight": number}``. ``weight`` is the node's
        share, typically its number of observations ``n``; it must be finite and ``>= 0``, and the
        weights must not all be 0. Values are numbers, or arrays of one common shape.

    Returns
    -------
    float | numpy.ndarray
        ``sum(weight_i * value_i) / sum(weight_i)``: a ``float`` for numbers, a ``float64`` array
        for arrays.

    Raises
    ------
    AggregationError
        No updates; an update that is not a dict with exactly the keys ``"value"`` and
        ``"weight"``; a negative, non-finite or non-numeric weight; weights that sum to 0; values
        of different shapes or that are not numeric.

    Notes
    -----
    The products ``weight_i * value_i`` are summed with :func:`math.fsum` (numbers) or float64
    compensated summation (arrays), then divided once by the fsum of the weights. A node with
    weight 0 is checked but left out of the sum, so its value may be NaN (a node without data).
    With ``weight = n`` and ``value`` the local mean, the result is the pooled mean, the same as
    ``pooled_mean_variance(...)["mean"]`` up to rounding.
    """
    what = "weighted_mean"
    items = _ordered(updates, what)
    values: list[tuple[str, Any]] = []
    weights: list[float] = []
    for node, update in items:
        fields = _fields(update, what, node, _WEIGHTED_KEYS)
        weight = fields["weight"]
        if not _is_scalar(weight):
            raise AggregationError(
                f"{what}: the weight from node {node!r} must be a number, got {_describe(weight)}"
            )
        w = _to_float(weight, what, node, "the weight")
        if not math.isfinite(w):
            raise AggregationError(f"{what}: the weight from node {node!r} is not finite ({w})")
        if w < 0:
            raise AggregationError(
                f"{what}: the weight from node {node!r} is negative ({weight}); weights must be >= 0"
            )
        values.append((node, fields["value"]))
        weights.append(w)
    weight_sum = _fsum(weights)
    if not weight_sum > 0:
        raise AggregationError(
            f"{what}: the weights sum to {weight_sum}; at least one node must have a positive weight"
        )
    if not math.isfinite(weight_sum):
        raise AggregationError(f"{what}: the weights sum to infinity; rescale them")
    if all(_is_scalar(v) for _, v in values):
        terms = [
            w * _to_float(v, what, node, "the value")
            for (node, v), w in zip(values, weights, strict=True)
            if w > 0
        ]
        return _fsum(terms) / weight_sum
    arrays = [(node, _real_array(v, what, node, "the value")) for node, v in values]
    _same_shape(arrays, what, "the value")
    products = [
        w * a.astype(np.float64, copy=False) for (_, a), w in zip(arrays, weights, strict=True) if w > 0
    ]
    result: FloatArray = _compensated_sum(products) / weight_sum
    return result


fed_avg = weighted_mean
"""Alias of :func:`weighted_mean` under the name federated learning uses (FedAvg)."""


# --------------------------------------------------------------------------------------------
# mean and variance from local summaries


def summarise(values: npt.ArrayLike, axis: int | None = 0) -> Summary:
    """An analysis node's local summary of raw data, for :func:`pooled_mean_variance`.

    Parameters
    ----------
    values : array_like
        The node's data: a sequence or array of numbers (bools count as 0/1), e.g. a pandas column.
        Must not contain NaN or infinity.
    axis : int | None
        The axis along which observations run (default 0: rows are observations, so a 2-D array
        gives one statistic per column). ``None`` summarises all values together.

    Returns
    -------
    Summary
        ``{"n": int, "mean": ..., "m2": ..., "mean_residual": ...}``: the number of observations,
        their mean, the sum of squared deviations from the mean, and the part of the exact mean
        that rounding ``mean`` to float64 dropped. Floats for 1-D data (or ``axis=None``), float64
        arrays otherwise. With ``n == 0``, the statistics are zeros.

    Raises
    ------
    AggregationError
        Values that are not numeric, are 0-dimensional, or contain NaN or infinity; a bad ``axis``.

    Notes
    -----
    Corrected two-pass algorithm (Chan, Golub & LeVeque, 1983): ``mean`` first, then
    ``m2 = sum(d**2) - sum(d)**2 / n`` with ``d = x - mean``, accurate even for data with a large
    offset (values near 1e9 with spread 1), where the one-pass ``sum(x**2) - n * mean**2`` loses
    every digit. ``mean_residual = sum(d) / n`` makes ``mean + mean_residual`` the local mean to
    about twice float64 precision; sending it lets the aggregator combine nodes without losing the
    digits of ``mean`` that a float64 cannot hold (see :func:`pooled_mean_variance`).

    The summary is a typed statistic: ``n`` travels with it, and the node's disclosure guard refuses
    to let a summary of fewer than ``min_records`` observations (default 5) leave the node, so
    ``summarise([42.0])`` never reaches the aggregator.
    """
    what = "summarise"
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise AggregationError(
            f"{what}: values are not a numeric array (ragged or mixed data?): {exc}"
        ) from None
    if array.dtype.kind not in "b" + _REAL_KINDS:
        raise AggregationError(f"{what}: values have dtype {array.dtype}; expected numbers")
    if array.ndim == 0:
        raise AggregationError(f"{what}: values must be a sequence or array of observations, got one number")
    data = array.astype(np.float64, copy=False)
    if axis is None:
        data, axis = data.reshape(-1), 0
    if not isinstance(axis, int) or isinstance(axis, bool) or not -data.ndim <= axis < data.ndim:
        raise AggregationError(f"{what}: axis {axis!r} is out of range for data of shape {data.shape}")
    axis %= data.ndim
    scalar = data.ndim == 1
    n = int(data.shape[axis])
    if n == 0:
        zeros = np.zeros(data.shape[:axis] + data.shape[axis + 1 :], dtype=np.float64)
        return {
            "n": 0,
            "mean": _output(zeros, scalar),
            "m2": _output(zeros, scalar),
            "mean_residual": _output(zeros, scalar),
        }
    _finite(data, what, "this node", "the data")
    mean = np.mean(data, axis=axis)
    deviations = data - np.expand_dims(mean, axis)
    deviation_sum = np.sum(deviations, axis=axis)
    m2 = np.sum(deviations * deviations, axis=axis) - deviation_sum * deviation_sum / n
    m2 = np.maximum(m2, 0.0)  # >= 0 in exact arithmetic; guards against a rounding below 0
    residual = deviation_sum / n
    return {
        "n": n,
        "mean": _output(mean, scalar),
        "m2": _output(m2, scalar),
        "mean_residual": _output(residual, scalar),
    }


_SUMMARY_KEYS = frozenset({"n", "mean", "m2"})
_SUMMARY_OPTIONAL = frozenset({"mean_residual"})


def pooled_mean_variance(updates: Mapping[str, Mapping[str, Any]], ddof: float = 1) -> MeanVariance:
    """Mean, variance and standard deviation of the pooled data, from each node's summary.

    Parameters
    ----------
    updates : Mapping[str, Mapping[str, Any]]
        node id -> ``{"n": int, "mean": float | array, "m2": float | array}`` with
        ``m2 = sum((x - mean)**2)`` over the node's ``n`` observations, as :func:`summarise` makes
        it; optionally ``"mean_residual"`` (also from :func:`summarise`). Arrays (one statistic per
        column) must all have the same shape. Nodes with ``n == 0`` are skipped.
    ddof : float
        Delta degrees of freedom: the variance divides by ``N - ddof``. ``1`` (the default) gives
        the unbiased sample variance, ``0`` the population variance, as in ``np.var(ddof=...)``.

    Returns
    -------
    MeanVariance
        ``{"n": N, "mean": ..., "variance": ..., "std": ...}`` of all ``N = sum(n)`` observations,
        equal to ``np.mean``/``np.var(ddof=ddof)``/``np.std(ddof=ddof)`` of the concatenated data.
        Floats when the nodes sent floats, float64 arrays when they sent arrays.

    Raises
    ------
    AggregationError
        No updates; an update without exactly the keys above; ``n`` not a non-negative int;
        ``mean``/``m2`` not numeric, not finite, of different shapes, or ``m2 < 0``; ``N == 0``, or
        ``N <= ddof`` (too few observations for the variance); a negative ``ddof``.

    Notes
    -----
    Chan, Golub & LeVeque's parallel combination of (n, mean, M2), in its k-way form
    ``M2 = sum(m2_i) + sum(n_i * (mean_i - mean)**2)`` (the same as applying their pairwise update
    node by node) and evaluated in coordinates shifted to the first node's mean: the sums of
    squares are never formed from raw values, so data near 1e9 with spread 1 keeps its digits. The
    variance depends on the node means to first order, so a mean rounded to float64 (relative
    error 1e-16, i.e. absolute 1e-7 at 1e9) can cost digits when the spread is tiny next to the
    offset; ``mean_residual`` restores the dropped part and with it full accuracy. Sums over nodes
    use float64 compensated summation.
    """
    what = "pooled_mean_variance"
    if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise AggregationError(f"{what}: ddof must be a number, got {_describe(ddof)}")
    if not ddof >= 0:
        raise AggregationError(f"{what}: ddof must be >= 0, got {ddof}")
    items = _ordered(updates, what)
    counts: list[int] = []
    means: list[tuple[str, npt.NDArray[Any]]] = []
    m2s: list[npt.NDArray[Any]] = []
    residuals: list[npt.NDArray[Any] | None] = []
    scalar = True
    for node, update in items:
        fields = _fields(update, what, node, _SUMMARY_KEYS, _SUMMARY_OPTIONAL)
        n = fields["n"]
        if not _is_int(n) or n < 0:
            raise AggregationError(f"{what}: n from node {node!r} must be an int >= 0, got {_describe(n)}")
        if n == 0:
            continue  # a node without observations; its mean is undefined
        mean = _real_array(fields["mean"], what, node, "the mean")
        m2 = _real_array(fields["m2"], what, node, "m2")
        if m2.shape != mean.shape:
            raise AggregationError(
                f"{what}: m2 from node {node!r} has shape {m2.shape}, but its mean has shape {mean.shape}"
            )
        _finite(mean, what, node, "the mean")
        _finite(m2, what, node, "m2")
        if np.any(m2 < 0):
            raise AggregationError(
                f"{what}: m2 from node {node!r} is negative; m2 is a sum of squared deviations, "
                "sum((x - mean)**2), computed e.g. by summarise()"
            )
        residual = None
        if "mean_residual" in fields:
            residual = _real_array(fields["mean_residual"], what, node, "mean_residual")
            if residual.shape != mean.shape:
                raise AggregationError(
                    f"{what}: mean_residual from node {node!r} has shape {residual.shape}, "
                    f"but its mean has shape {mean.shape}"
                )
            _finite(residual, what, node, "mean_residual")
            residual = residual.astype(np.float64)
        scalar = scalar and _is_scalar(fields["mean"]) and _is_scalar(fields["m2"])
        counts.append(int(n))
        means.append((node, mean.astype(np.float64)))
        m2s.append(m2.astype(np.float64))
        residuals.append(residual)
    big_n = sum(counts)
    if big_n == 0:
        raise AggregationError(f"{what}: no observations: every node reported n = 0")
    if not big_n > ddof:
        raise AggregationError(
            f"{what}: the variance with ddof={ddof} needs more than {ddof} observations, "
            f"but the nodes have {big_n} in total"
        )
    _same_shape(means, what, "the mean")
    reference = means[0][1]
    # Node means relative to the reference, including what float64 rounding of each mean dropped.
    shifted = [
        (mean - reference) + (residual if residual is not None else 0.0)
        for (_, mean), residual in zip(means, residuals, strict=True)
    ]
    weights = [n / big_n for n in counts]  # n_i / N; exact when N is a power of two, else 1 ulp
    shifted_mean = _compensated_sum([w * d for w, d in zip(weights, shifted, strict=True)])
    between = _compensated_sum([n * (d - shifted_mean) ** 2 for n, d in zip(counts, shifted, strict=True)])
    m2_total = _compensated_sum([*m2s, between])
    variance = m2_total / (big_n - ddof)
    return {
        "n": big_n,
        "mean": _output(reference + shifted_mean, scalar),
        "variance": _output(variance, scalar),
        "std": _output(np.sqrt(variance), scalar),
    }


# --------------------------------------------------------------------------------------------
# histograms


_HISTOGRAM_KEYS = frozenset({"edges", "counts"})


def merged_histogram(updates: Mapping[str, Mapping[str, Any]]) -> Histogram:
    """Histogram of the pooled data, from the nodes' histograms over common bin edges.

    Parameters
    ----------
    updates : Mapping[str, Mapping[str, Any]]
        node id -> ``{"edges": array, "counts": array}``, e.g. from
        ``counts, edges = np.histogram(x, bins=edges)``. ``edges`` is 1-D, finite, non-decreasing,
        with at least 2 entries, and IDENTICAL on every node; ``counts`` has ``len(edges) - 1``
        non-negative entries (integers, or floats for weighted histograms).

    Returns
    -------
    Histogram
        ``{"edges": float64 array, "counts": array}``: the common edges and the bin-wise sum of
        the counts, ``int64`` (exact) when every node sent integer counts, else ``float64``. Equal
        to ``np.histogram`` of the pooled data with those edges.

    Raises
    ------
    AggregationError
        No updates; an update without exactly the keys ``"edges"`` and ``"counts"``; edges that
        differ between nodes (histograms with different bins cannot be added); malformed edges;
        counts of the wrong length, negative or non-numeric.

    Notes
    -----
    Nodes must bin with the same edges, agreed in advance (for example computed from a public
    range, ``np.histogram_bin_edges(range=(lo, hi), bins=k)``, and sent with the analysis
    parameters), not chosen per node from its own data (``bins="auto"`` or ``bins=10`` without a
    ``range``); the aggregator cannot re-bin counts. Edges are compared exactly.
    """
    what = "merged_histogram"
    items = _ordered(updates, what)
    first_node = ""
    first_edges: FloatArray | None = None
    counts: list[tuple[str, npt.NDArray[Any]]] = []
    for node, update in items:
        fields = _fields(update, what, node, _HISTOGRAM_KEYS)
        edges = _real_array(fields["edges"], what, node, "the edges").astype(np.float64)
        if edges.ndim != 1 or edges.size < 2:
            raise AggregationError(
                f"{what}: the edges from node {node!r} must be a 1-D array of at least 2 bin edges, "
                f"got shape {edges.shape}"
            )
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
            raise AggregationError(f"{what}: the edges from node {node!r} must be finite and non-decreasing")
        if first_edges is None:
            first_node, first_edges = node, edges
        elif not np.array_equal(edges, first_edges):
            if edges.shape != first_edges.shape:
                difference = f"{edges.size} edges on node {node!r}, {first_edges.size} on node {first_node!r}"
            else:
                i = int(np.argmax(edges != first_edges))
                difference = (
                    f"edge {i} is {edges[i]!r} on node {node!r}, {first_edges[i]!r} on node {first_node!r}"
                )
            raise AggregationError(
                f"{what}: node {node!r} used other bin edges than node {first_node!r} ({difference}). "
                "Histograms can only be merged when every node uses the same bin edges: agree on them "
                "in advance (e.g. np.histogram_bin_edges over a public range, sent with the analysis "
                "parameters) instead of letting each node choose bins from its own data"
            )
        bins = _real_array(fields["counts"], what, node, "the counts")
        if bins.shape != (edges.size - 1,):
            raise AggregationError(
                f"{what}: the counts from node {node!r} have shape {bins.shape}, but {edges.size} edges "
                f"make {edges.size - 1} bins"
            )
        _finite(bins, what, node, "the counts")
        if np.any(bins < 0):
            raise AggregationError(f"{what}: the counts from node {node!r} contain negative values")
        counts.append((node, bins))
    assert first_edges is not None  # _ordered refused empty updates
    summed: npt.NDArray[Any]
    if all(c.dtype.kind in _INT_KINDS for _, c in counts):
        summed = _int_array_sum(counts, what)
    else:
        summed = _compensated_sum([c for _, c in counts])
    return {"edges": first_edges, "counts": summed}


# --------------------------------------------------------------------------------------------
# contingency tables


def _levels(values: npt.NDArray[Any], given: Sequence[Any] | None, what: str, name: str) -> list[Any]:
    if given is None:
        return sorted({v.item() if isinstance(v, np.generic) else v for v in values.tolist()}, key=repr)
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise AggregationError(f"{what}: {name} must be a sequence of levels, got {_describe(given)}")
    levels = list(given)
    if len(set(map(repr, levels))) != len(levels):
        raise AggregationError(f"{what}: {name} lists a level twice")
    return levels


def contingency_table(
    row_values: npt.ArrayLike,
    column_values: npt.ArrayLike,
    *,
    rows: Sequence[Any] | None = None,
    columns: Sequence[Any] | None = None,
) -> ContingencyTable:
    """An analysis node's cross-tabulation of two variables, for :func:`merged_contingency_table`.

    Parameters
    ----------
    row_values, column_values : array_like
        One entry per record (e.g. two pandas columns), of equal length.
    rows, columns : Sequence | None
        The levels to count, agreed in advance by every node (e.g. ``["female", "male"]``), so that
        the tables can be added. Default: the sorted distinct values of this node's data; a record
        whose value is not among given levels raises.

    Returns
    -------
    ContingencyTable
        ``{"counts": int64 array (len(rows), len(columns)), "rows": [...], "columns": [...]}``.
        Leaving the node, the disclosure guard refuses (or suppresses, per policy) cells of 1 to
        ``min_cell_count - 1``.
    """
    what = "contingency_table"
    a = np.asarray(row_values, dtype=object).reshape(-1)
    b = np.asarray(column_values, dtype=object).reshape(-1)
    if a.shape != b.shape:
        raise AggregationError(f"{what}: {a.size} row values but {b.size} column values; one each per record")
    row_levels = _levels(a, rows, what, "rows")
    column_levels = _levels(b, columns, what, "columns")
    row_index = {repr(v): i for i, v in enumerate(row_levels)}
    column_index = {repr(v): i for i, v in enumerate(column_levels)}
    counts = np.zeros((len(row_levels), len(column_levels)), dtype=np.int64)
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        i, j = row_index.get(repr(x)), column_index.get(repr(y))
        if i is None or j is None:
            missing = x if i is None else y
            raise AggregationError(f"{what}: the value {missing!r} is not among the given levels")
        counts[i, j] += 1
    return {"counts": counts, "rows": row_levels, "columns": column_levels}


_TABLE_KEYS = frozenset({"counts", "rows", "columns"})


def merged_contingency_table(updates: Mapping[str, Mapping[str, Any]]) -> ContingencyTable:
    """The cell-wise sum of the nodes' contingency tables, which must share their levels.

    Raises :class:`AggregationError` for tables with other levels, shapes or negative counts.
    Cells a node suppressed (missing) make the merged cell missing too.
    """
    what = "merged_contingency_table"
    items = _ordered(updates, what)
    first: tuple[str, list[Any], list[Any]] | None = None
    parts: list[tuple[str, npt.NDArray[Any]]] = []
    for node, update in items:
        fields = _fields(update, what, node, _TABLE_KEYS)
        rows, columns = list(fields["rows"]), list(fields["columns"])
        if first is None:
            first = (node, rows, columns)
        elif rows != first[1] or columns != first[2]:
            raise AggregationError(
                f"{what}: node {node!r} counted other levels than node {first[0]!r}; agree on the row "
                "and column levels in advance (contingency_table(rows=..., columns=...))"
            )
        counts = _real_array(fields["counts"], what, node, "the counts")
        if counts.shape != (len(rows), len(columns)):
            raise AggregationError(
                f"{what}: the counts from node {node!r} have shape {counts.shape}, expected "
                f"{(len(rows), len(columns))}"
            )
        if np.any(counts[np.isfinite(counts)] < 0):
            raise AggregationError(f"{what}: the counts from node {node!r} contain negative values")
        parts.append((node, counts))
    assert first is not None
    summed: npt.NDArray[Any]
    if all(c.dtype.kind in _INT_KINDS for _, c in parts):
        summed = _int_array_sum(parts, what)
    else:
        summed = np.sum([c.astype(np.float64) for _, c in parts], axis=0)
    return {"counts": summed, "rows": first[1], "columns": first[2]}


# --------------------------------------------------------------------------------------------
# concatenation


def pandas_kind(value: object) -> str | None:
    """``"frame"``/``"series"`` for pandas objects, else None; never imports pandas itself."""
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if isinstance(value, pd.DataFrame):
        return "frame"
    if isinstance(value, pd.Series):
        return "series"
    return None


def _order(updates: Mapping[str, Any], order: Sequence[str] | None, what: str) -> list[tuple[str, Any]]:
    if order is None:
        return _ordered(updates, what)
    if isinstance(order, (str, bytes)) or not isinstance(order, Sequence):
        raise AggregationError(f"{what}: order must be a sequence of node ids, got {_describe(order)}")
    _ordered(updates, what)  # the same checks as the default order
    duplicates = sorted({repr(k) for k in order if list(order).count(k) > 1})
    if duplicates:
        raise AggregationError(f"{what}: order names node(s) {', '.join(duplicates)} more than once")
    unknown = [k for k in order if k not in updates]
    missing = [k for k in updates if k not in set(order)]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"names node(s) without an update: {', '.join(map(repr, unknown))}")
        if missing:
            problems.append(f"leaves out node(s): {', '.join(map(repr, sorted(missing)))}")
        raise AggregationError(
            f"{what}: order {'; and '.join(problems)}; it must list each updating node exactly once"
        )
    return [(k, updates[k]) for k in order]


@overload
def concatenate(
    updates: Mapping[str, npt.NDArray[Any]], order: Sequence[str] | None = None
) -> npt.NDArray[Any]: ...
@overload
def concatenate(updates: Mapping[str, list[T]], order: Sequence[str] | None = None) -> list[T]: ...
@overload
def concatenate(updates: Mapping[str, tuple[T, ...]], order: Sequence[str] | None = None) -> list[T]: ...
@overload
def concatenate(updates: Mapping[str, Any], order: Sequence[str] | None = None) -> Any: ...
def concatenate(updates: Mapping[str, Any], order: Sequence[str] | None = None) -> Any:
    """The nodes' lists, arrays or pandas objects joined one after another.

    Parameters
    ----------
    updates : Mapping[str, list | tuple | numpy.ndarray | pandas.DataFrame | pandas.Series]
        node id -> the node's part. All parts are of one family: lists/tuples, arrays (lists are
        accepted alongside arrays), DataFrames, or Series.
    order : Sequence[str] | None
        The node ids in the order to join their parts; it must list every node exactly once.
        Default: sorted node-id order.

    Returns
    -------
    list | numpy.ndarray | pandas.DataFrame | pandas.Series
        A ``list`` for lists/tuples; ``np.concatenate`` along axis 0 for arrays (the shapes after
        the first axis must agree); ``pd.concat(..., ignore_index=True)`` for pandas objects, so
        the result has a fresh ``RangeIndex``.

    Raises
    ------
    AggregationError
        No updates; parts of different families (a DataFrame with a list); arrays whose trailing
        shapes differ, 0-d arrays or numbers; DataFrames with different column sets (pandas
        would silently fill the gaps with NaN); an ``order`` that misses, repeats or invents a node.

    Notes
    -----
    Joining row-level data moves individual records to the aggregator: use it only where the
    analysis is allowed to do so. The inputs are not modified.
    """
    what = "concatenate"
    items = _order(updates, order, what)
    kinds = {pandas_kind(v) for _, v in items}
    if kinds & {"frame", "series"}:
        if len(kinds) != 1:
            raise AggregationError(
                f"{what}: the parts mix pandas objects with other values or DataFrames with Series; "
                "send one kind from every node"
            )
        import pandas as pd

        parts = [v for _, v in items]
        if kinds == {"frame"}:
            first_node, first = items[0]
            columns = set(first.columns)
            for node, frame in items[1:]:
                if set(frame.columns) != columns:
                    extra = sorted(map(str, set(frame.columns) - columns))
                    lacking = sorted(map(str, columns - set(frame.columns)))
                    raise AggregationError(
                        f"{what}: the DataFrame from node {node!r} has other columns than node "
                        f"{first_node!r}'s (extra: {extra}, missing: {lacking}); every node must send "
                        "the same columns"
                    )
        return pd.concat(parts, ignore_index=True)
    if any(isinstance(v, np.ndarray) for _, v in items):
        arrays: list[tuple[str, npt.NDArray[Any]]] = []
        for node, value in items:
            if not isinstance(value, (np.ndarray, list, tuple)):
                raise AggregationError(
                    f"{what}: the part from node {node!r} is {_describe(value)}; expected an array or list"
                )
            try:
                array = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise AggregationError(
                    f"{what}: the part from node {node!r} is not an array: {exc}"
                ) from None
            if array.ndim == 0:
                raise AggregationError(
                    f"{what}: the part from node {node!r} is a 0-d array; send a 1-D array (e.g. [x])"
                )
            arrays.append((node, array))
        first_node, first = arrays[0]
        for node, array in arrays[1:]:
            if array.shape[1:] != first.shape[1:]:
                raise AggregationError(
                    f"{what}: the array from node {node!r} has shape {array.shape}, node {first_node!r}'s "
                    f"{first.shape}; all but the first dimension must agree"
                )
        return np.concatenate([a for _, a in arrays], axis=0)
    joined: list[Any] = []
    for node, value in items:
        if not isinstance(value, (list, tuple)):
            raise AggregationError(
                f"{what}: the part from node {node!r} is {_describe(value)}; expected a list, tuple, "
                "array, DataFrame or Series"
            )
        joined.extend(value)
    return joined

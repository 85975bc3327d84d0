"""The checks every outgoing payload passes, and what the node knows of its own data to run them.

:func:`inspect` walks a payload (dicts, lists, tuples, NumPy arrays, pandas objects, strings, bytes,
numbers) and judges each part by the node's :class:`~flame.disclosure.policy.DisclosurePolicy`:

``row-level``
    A DataFrame, array, list or text whose length is at least ``row_fraction`` of the node's record
    count (and at least ``min_records``): individual records, not a statistic.
``identifier-column``
    A DataFrame column, Series, or column-like dict entry named like an identifier (``patient_id``).
``identifier-value``
    A string equal to an identifier the node's own data holds (a patient id read from a CSV column
    named like an identifier, a FHIR resource id or identifier value).
``identifier-pattern``
    A string matching one of the policy's identifier patterns (e-mail address, insurance number).
``min-records``
    A typed statistic (a dict with an integer ``"n"`` next to the numbers it summarises, as
    :func:`~flame.protocols.aggregation.summarise` makes it; a histogram or contingency table) over
    fewer than ``min_records`` records.
``min-cell-count``
    A count table (histogram, contingency table, or an integer pandas object that is not row-level,
    such as ``pd.crosstab`` or ``value_counts``) with a cell between 1 and ``min_cell_count - 1``;
    refused, or the cells suppressed (set missing), as the policy says.
``parameter-ratio``
    More fitted parameters than ``max_parameter_ratio`` times the records behind them: for a typed
    statistic its ``n``; for an untyped numeric vector the node's record count.

Numbers the checks cannot judge (a float outside any typed statistic) pass and are listed as
``unjudged`` in the audit, as are bytes that are not text and scalars such as dates.

``uninspectable``
    An object of a type the checks cannot see into (a dataclass, a fitted model, a custom class):
    what it holds, and what ``str()`` or pickle make of it, is unknown. Refused in enforce mode.
    Object-dtype arrays are judged element by element, structured arrays field by field.

The node's knowledge of its data (:class:`LocalData`) is gathered as the runtime reads it: the largest
number of records of any table or FHIR search, and the values of identifier-like columns and FHIR ids
(tables above :data:`LARGE_OBJECT` are only counted, so their identifiers are not known). It lives in
memory only and is never written anywhere.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flame._lazy import on_first_use
from flame.disclosure.policy import DisclosurePolicy, normalise_name

if TYPE_CHECKING:
    import numpy as np

    from flame.protocols import aggregation
else:  # NumPy (and the aggregation protocols on it) load when a payload is first checked, not on import
    np = on_first_use("numpy", globals(), "np")
    aggregation = on_first_use("flame.protocols.aggregation", globals(), "aggregation")

Outcome = Literal["refused", "suppressed", "warned", "unjudged", "dp"]

#: Tokens compared with the node's identifiers: runs of letters, digits and ``-_.:/``.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
#: How many unjudged paths an inspection lists by name (the rest are counted).
UNJUDGED_LISTED = 50
#: Shorter identifier values ("7", "A1") are not matched: they occur in ordinary text and numbers.
MIN_IDENTIFIER_LENGTH = 4
#: Tables larger than this (bytes) are only counted, not parsed for identifiers, when the node reads them.
LARGE_OBJECT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One check's verdict on one field of a payload."""

    rule: str
    path: str
    outcome: Outcome
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "path": self.path, "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True)
class Statistic:
    """A typed statistic in a payload and the number of records behind it."""

    path: str
    kind: str
    n: int


@dataclass
class Inspection:
    """What :func:`inspect` found in one payload."""

    value: Any
    findings: list[Finding] = field(default_factory=list)
    statistics: list[Statistic] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    unjudged: int = 0

    @property
    def refusals(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == "refused"]


class LocalData:
    """What the node learnt about its own data while reading it: record count and identifiers.

    Held in memory only. ``observe_*`` never raise: a source they cannot read is left out.
    """

    def __init__(self) -> None:
        self.records = 0
        self.identifiers: set[str] = set()

    def observe_frame(self, frame: Any, columns: frozenset[str]) -> None:
        """A table the node read: its rows count as records, identifier-like columns as identifiers."""
        try:
            self.records = max(self.records, len(frame))
            for name in frame.columns:
                if normalise_name(name) in columns:
                    values = (str(v) for v in frame[name].dropna().unique())
                    self.identifiers.update(v for v in values if len(v) >= MIN_IDENTIFIER_LENGTH)
        except Exception:  # observing must never break the analysis's reading of its data
            return

    def observe_bytes(self, key: str, data: bytes, columns: frozenset[str]) -> None:
        """An object read from an S3 source: tables (CSV, TSV, Parquet) are observed as tables."""
        from flame.clients.data_api import read_dataframe

        if not key.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")):
            return
        if len(data) > LARGE_OBJECT and key.lower().endswith((".csv", ".tsv")):
            # parsing a large table here would hold up the node's event loop: count its lines only
            self.records = max(self.records, data.count(b"\n") - 1)
            return
        try:
            frame = read_dataframe(data, key)
        except Exception:  # not a table after all; the analysis may read it otherwise
            return
        self.observe_frame(frame, columns)

    def observe_fhir(self, resources: Iterable[Mapping[str, Any]]) -> None:
        """Resources of one FHIR search: their number counts as records, ids and identifiers as ids."""
        count = 0
        try:
            for resource in resources:
                count += 1
                rid = resource.get("id")
                if isinstance(rid, str) and len(rid) >= MIN_IDENTIFIER_LENGTH:
                    self.identifiers.add(rid)
                    rtype = resource.get("resourceType")
                    if isinstance(rtype, str):
                        self.identifiers.add(f"{rtype}/{rid}")
                for ident in resource.get("identifier") or ():
                    value = ident.get("value") if isinstance(ident, Mapping) else None
                    if isinstance(value, str) and len(value) >= MIN_IDENTIFIER_LENGTH:
                        self.identifiers.add(value)
        except Exception:  # a malformed resource: what was counted so far still counts
            pass
        self.records = max(self.records, count)


# -- the walk -----------------------------------------------------------------------------------------


DPHandler = Callable[[str, Any], Any]


class _Walker:
    def __init__(
        self, policy: DisclosurePolicy, local: LocalData, on_dp: DPHandler | None, dp_types: tuple[type, ...]
    ) -> None:
        self.policy = policy
        self.local = local
        self.on_dp = on_dp
        self.dp_types = dp_types
        self.result = Inspection(value=None)

    # helpers --------------------------------------------------------------------------------------

    def add(self, rule: str, path: str, outcome: Outcome, detail: str) -> None:
        if outcome == "refused" and not self.policy.enforcing:
            outcome = "warned"
        self.result.findings.append(Finding(rule, path or "<payload>", outcome, detail))

    def unjudged(self, path: str, what: str) -> None:
        self.result.unjudged += 1
        if self.result.unjudged <= UNJUDGED_LISTED:
            self.result.findings.append(Finding("untyped", path or "<payload>", "unjudged", what))

    def field(self, path: str, kind: str, shape: Any = None, n: int | None = None) -> None:
        entry: dict[str, Any] = {"path": path or "<payload>", "kind": kind}
        if shape is not None:
            entry["shape"] = list(shape) if isinstance(shape, tuple) else shape
        if n is not None:
            entry["n"] = n
        self.result.fields.append(entry)

    @property
    def records(self) -> int:
        return self.local.records if self.local.records >= self.policy.min_records else 0

    def row_threshold(self) -> int | None:
        """Length from which a sequence is row-level; None when the node holds no data."""
        if not self.records:
            return None
        return max(self.policy.min_records, math.ceil(self.policy.row_fraction * self.records))

    def check_length(self, path: str, length: int, what: str, numeric: bool) -> bool:
        """Row-level and (for numeric vectors) parameter-ratio by length; True when refused."""
        threshold = self.row_threshold()
        if threshold is None:
            return False
        if length >= threshold:
            self.add(
                "row-level",
                path,
                "refused",
                f"{what} of {length} entries from a node with {self.records} records "
                f"(row-level from {threshold}); send statistics, not records",
            )
            return True
        if numeric and length > self.policy.max_parameter_ratio * self.records and length > 1:
            self.add(
                "parameter-ratio",
                path,
                "refused",
                f"{what} of {length} values from a node with {self.records} records exceeds "
                f"{self.policy.max_parameter_ratio:g} per record",
            )
            return True
        return False

    def check_string(self, path: str, text: str) -> None:
        if self.local.identifiers:
            for token in _TOKEN.findall(text):
                if token in self.local.identifiers:
                    self.add(
                        "identifier-value",
                        path,
                        "refused",
                        "a value equal to an identifier in this node's data",
                    )
                    return
        for pattern in self.policy.patterns:
            if pattern.search(text):
                self.add(
                    "identifier-pattern",
                    path,
                    "refused",
                    f"a value matching the identifier pattern {pattern.pattern!r}",
                )
                return

    def check_strings(self, path: str, values: Iterable[Any]) -> None:
        """Strings of an array or column, each distinct value once."""
        seen: set[str] = set()
        before = len(self.result.findings)
        for value in values:
            if isinstance(value, str) and value not in seen:
                seen.add(value)
                self.check_string(path, value)
                if len(self.result.findings) > before:
                    return

    def check_table(self, path: str, cells: np.ndarray[Any, Any], kind: str) -> np.ndarray[Any, Any]:
        """Min-cell-count on a count table; returns the cells, suppressed if the policy says so."""
        counts = np.asarray(cells, dtype=np.float64)
        finite = np.where(np.isfinite(counts), counts, 0.0)
        small = (finite > 0) & (finite < self.policy.min_cell_count)
        total = float(np.nansum(finite))
        self.result.statistics.append(Statistic(path or "<payload>", kind, int(total)))
        if not small.any():
            return cells
        index = tuple(int(i) for i in np.argwhere(small)[0])
        where = f"{path}[{', '.join(map(str, index))}]" if index else path
        cell = finite[index] if index else float(finite)
        if self.policy.small_cells == "suppress":
            self.add(
                "min-cell-count",
                where,
                "suppressed",
                f"{int(small.sum())} cell(s) below {self.policy.min_cell_count} set missing",
            )
            suppressed: np.ndarray[Any, Any] = counts.copy()
            suppressed[small] = np.nan
            return suppressed
        self.add(
            "min-cell-count",
            where,
            "refused",
            f"a cell of {cell:g} in a count table; cells of 1 to {self.policy.min_cell_count - 1} "
            "identify too few people",
        )
        return cells

    def check_n(self, path: str, n: int, kind: str) -> None:
        self.result.statistics.append(Statistic(path or "<payload>", kind, n))
        if 0 < n < self.policy.min_records:
            self.add(
                "min-records",
                _join(path, "n"),
                "refused",
                f"a {kind} over {n} record(s); at least {self.policy.min_records} are needed",
            )

    # the walk ---------------------------------------------------------------------------------------

    def walk(self, value: Any, path: str) -> Any:
        if self.dp_types and isinstance(value, self.dp_types):
            self.field(path, "dp")
            if self.on_dp is None:
                return value
            return self.on_dp(path, value)
        if value is None or isinstance(value, bool | np.bool_):
            return value
        if isinstance(value, str):
            self.check_string(path, value)
            return value
        if isinstance(value, int | float | np.integer | np.floating | complex):
            self.unjudged(path, "a number outside any typed statistic")
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return self.walk_bytes(bytes(value), path)
        if isinstance(value, Mapping):
            return self.walk_mapping(value, path)
        pandas = aggregation.pandas_kind(value)
        if pandas == "frame":
            return self.walk_frame(value, path)
        if pandas == "series":
            return self.walk_series(value, path)
        if isinstance(value, np.ndarray):
            return self.walk_array(value, path)
        if isinstance(value, list | tuple):
            return self.walk_sequence(value, path)
        if isinstance(value, set | frozenset):
            return self.walk_sequence(list(value), path)
        if isinstance(value, _scalars()):
            self.unjudged(path, f"a {type(value).__name__} outside any typed statistic")
            return value
        # an object the checks cannot see into (a dataclass, a model, ...): what it holds, and what
        # str() or pickle make of it, is unknown; refused in enforce mode
        self.add(
            "uninspectable",
            path,
            "refused",
            f"an object of type {type(value).__name__} the checks cannot see into; send plain numbers, "
            "strings, lists, dicts, arrays, DataFrames or typed statistics",
        )
        return value

    def walk_bytes(self, data: bytes, path: str) -> bytes:
        self.field(path, "bytes", n=len(data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.unjudged(path, f"{len(data)} bytes that are not text")
            return data
        lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
        if not self.check_length(path, lines, "text", numeric=False):
            self.check_string(path, text)
        return data

    def walk_mapping(self, value: Mapping[Any, Any], path: str) -> Any:
        keys = set(value.keys())
        if {"edges", "counts"} <= keys:
            return self.walk_histogram(value, path)
        if {"counts", "rows", "columns"} <= keys:
            return self.walk_contingency(value, path)
        raw_n = value.get("n")
        # a statistic: an integer "n" next to numbers it summarises ({"n": 7} alone is just a number)
        typed = _is_int(raw_n) and any(_numeric_leaf(v) for k, v in value.items() if k != "n")
        if typed:
            n = int(raw_n)  # type: ignore[arg-type]
            kind = _stat_kind(keys)
            self.field(path, kind, n=n)
            self.check_n(path, n, kind)
            self.check_parameters(value, path, n)
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            child = _join(path, str(key))
            if _column_like(item) and normalise_name(key) in self.policy.identifier_columns:
                self.add(
                    "identifier-column", child, "refused", f"a column named like an identifier ({key!r})"
                )
            if typed and key == "n":
                out[key] = item
                continue
            if typed and _numeric_leaf(item):
                self.field(child, "statistic", shape=_shape(item))
                out[key] = item
                continue
            new = self.walk(item, child)
            changed = changed or new is not item
            out[key] = new
        if not changed:
            return value
        return type(value)(out) if isinstance(value, dict) else out

    def check_parameters(self, value: Mapping[Any, Any], path: str, n: int) -> None:
        if n <= 0:
            return
        for key, item in value.items():
            if key == "n":
                continue
            count = _parameter_count(item)
            if count > 1 and count > self.policy.max_parameter_ratio * n:
                self.add(
                    "parameter-ratio",
                    _join(path, str(key)),
                    "refused",
                    f"{count} parameters over {n} records exceeds {self.policy.max_parameter_ratio:g} "
                    "per record",
                )

    def walk_histogram(self, value: Mapping[Any, Any], path: str) -> Any:
        counts = np.asarray(value["counts"])
        self.field(path, "histogram", shape=counts.shape, n=int(np.nansum(counts)) if counts.size else 0)
        if counts.dtype.kind not in "iuf":
            return self.walk_plain(value, path)
        checked = self.check_table(_join(path, "counts"), counts, "histogram")
        self.check_total(path, checked, "histogram")
        rest = {k: v for k, v in value.items() if k not in ("edges", "counts")}
        for key, item in rest.items():
            self.walk(item, _join(path, str(key)))
        if checked is counts:
            return value
        return {**value, "counts": checked}

    def walk_contingency(self, value: Mapping[Any, Any], path: str) -> Any:
        counts = np.asarray(value["counts"])
        self.field(path, "contingency-table", shape=counts.shape)
        if counts.dtype.kind not in "iuf":
            return self.walk_plain(value, path)
        checked = self.check_table(_join(path, "counts"), counts, "contingency-table")
        self.check_total(path, checked, "contingency table")
        for key in ("rows", "columns"):  # level labels: judged for identifiers only
            labels = value[key]
            if isinstance(labels, list | tuple | np.ndarray):
                self.check_strings(_join(path, key), list(labels))
            else:
                self.walk(labels, _join(path, key))
        if checked is counts:
            return value
        return {**value, "counts": checked}

    def check_total(self, path: str, counts: np.ndarray[Any, Any], kind: str) -> None:
        total = float(np.nansum(np.asarray(counts, dtype=np.float64)))
        if 0 < total < self.policy.min_records:
            self.add(
                "min-records",
                path,
                "refused",
                f"a {kind} over {total:g} record(s); at least {self.policy.min_records} are needed",
            )

    def walk_plain(self, value: Mapping[Any, Any], path: str) -> Any:
        for key, item in value.items():
            self.walk(item, _join(path, str(key)))
        return value

    def walk_frame(self, frame: Any, path: str) -> Any:
        self.field(path, "dataframe", shape=tuple(frame.shape))
        refused = False
        for name in frame.columns:
            if normalise_name(name) in self.policy.identifier_columns:
                self.add(
                    "identifier-column",
                    f"{path}[{name!r}]",
                    "refused",
                    f"a column named like an identifier ({name!r})",
                )
                refused = True
        if self.check_length(path, len(frame), "a DataFrame", numeric=False):
            return frame
        if refused:
            return frame
        for name in frame.columns:
            column = frame[name]
            if column.dtype.kind == "O" or str(column.dtype) in ("string", "category"):
                self.check_strings(f"{path}[{name!r}]", column.astype(object).tolist())
        self.check_strings(path + ".index", [str(i) for i in frame.index if isinstance(i, str)])
        kinds = {dtype.kind for dtype in frame.dtypes}
        if frame.size and kinds <= {"i", "u"}:
            values = frame.to_numpy(dtype=np.float64, na_value=np.nan)  # nullable Int64 too
            if (values[np.isfinite(values)] >= 0).all():
                checked = self.check_table(path, values, "count-table")
                if checked is not values:
                    return frame.__class__(checked, index=frame.index, columns=frame.columns)
            return frame
        if frame.size and kinds <= {"f", "i", "u"}:
            self.unjudged(path, "a DataFrame of numbers outside any typed statistic")
        return frame

    def walk_series(self, series: Any, path: str) -> Any:
        self.field(path, "series", shape=(len(series),))
        if series.name is not None and normalise_name(series.name) in self.policy.identifier_columns:
            self.add(
                "identifier-column", path, "refused", f"a Series named like an identifier ({series.name!r})"
            )
            return series
        if self.check_length(path, len(series), "a Series", numeric=False):
            return series
        if series.dtype.kind == "O" or str(series.dtype) in ("string", "category"):
            self.check_strings(path, series.astype(object).tolist())
        self.check_strings(path + ".index", [i for i in series.index if isinstance(i, str)])
        if len(series) and series.dtype.kind in "iu":
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            if (values[np.isfinite(values)] >= 0).all():
                checked = self.check_table(path, values, "count-table")
                if checked is not values:
                    return series.__class__(checked, index=series.index, name=series.name)
            return series
        if len(series) and series.dtype.kind == "f":
            self.unjudged(path, "a Series of numbers outside any typed statistic")
        return series

    def walk_array(self, array: np.ndarray[Any, Any], path: str) -> Any:
        self.field(path, "array", shape=array.shape)
        if array.ndim == 0:
            return self.walk(array.item(), path)
        numeric = array.dtype.kind in "iufcb"
        if self.check_length(path, int(array.shape[0]), "an array", numeric=numeric and array.ndim == 1):
            return array
        if numeric:
            self.unjudged(path, f"an array of shape {array.shape} outside any typed statistic")
        elif array.dtype.kind == "O":
            return self.walk_objects(array, path)
        elif array.dtype.names:
            return self.walk_structured(array, path)
        elif array.dtype.kind in "OUS":
            self.check_strings(
                path, (v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist())
            )
        return array

    def walk_objects(self, array: np.ndarray[Any, Any], path: str) -> Any:
        """An object-dtype array: each element judged (strings once each), DP requests drawn."""
        out: np.ndarray[Any, Any] | None = None
        seen: set[str] = set()
        for index, item in np.ndenumerate(array):
            if isinstance(item, str):
                if item not in seen:
                    seen.add(item)
                    self.check_string(path, item)
                continue
            where = f"{path}[{', '.join(map(str, index))}]"
            new = self.walk(item, where)
            if new is not item:
                if out is None:
                    out = array.copy()
                out[index] = new
        return array if out is None else out

    def walk_structured(self, array: np.ndarray[Any, Any], path: str) -> Any:
        """A structured (record) array: each field judged like a DataFrame column."""
        for name in array.dtype.names or ():
            where = f"{path}[{name!r}]"
            if normalise_name(name) in self.policy.identifier_columns:
                self.add(
                    "identifier-column", where, "refused", f"a field named like an identifier ({name!r})"
                )
                continue
            self.walk_array(np.asarray(array[name]), where)
        return array

    def walk_sequence(self, items: list[Any] | tuple[Any, ...], path: str) -> Any:
        numeric = bool(items) and all(_is_number(i) for i in items)
        self.field(path, "list", shape=(len(items),))
        if self.check_length(path, len(items), "a list", numeric=numeric):
            return items
        if numeric:
            self.unjudged(path, f"a list of {len(items)} numbers outside any typed statistic")
            return items
        out = [self.walk(item, f"{path}[{i}]") for i, item in enumerate(items)]
        if all(a is b for a, b in zip(out, items, strict=True)):
            return items
        return type(items)(out) if isinstance(items, tuple) else out


def inspect(
    value: Any,
    policy: DisclosurePolicy,
    local: LocalData | None = None,
    *,
    path: str = "",
    on_dp: DPHandler | None = None,
    dp_types: tuple[type, ...] = (),
) -> Inspection:
    """Judge ``value`` by ``policy``; returns the findings and the value to release.

    The value returned differs from ``value`` only where the policy suppresses small cells or
    ``on_dp`` replaced a differential-privacy request (instances of ``dp_types``) by its noisy value.
    """
    walker = _Walker(policy, local or LocalData(), on_dp, dp_types)
    out = walker.walk(value, path)
    walker.result.value = out
    return walker.result


# -- small helpers ------------------------------------------------------------------------------------


@functools.cache
def _scalars() -> tuple[type, ...]:
    """Scalars the checks pass as unjudged, like numbers: they hold one value, not records."""
    return (
        datetime.date,
        datetime.time,
        datetime.timedelta,
        decimal.Decimal,
        fractions.Fraction,
        np.number,
        np.datetime64,
        np.timedelta64,
        enum.Enum,
        range,
        type(Ellipsis),
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _numeric_leaf(value: object) -> bool:
    if _is_number(value):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iuf"
    if isinstance(value, list | tuple):
        return bool(value) and all(_is_number(v) for v in value)
    return False


def _shape(value: object) -> Any:
    if isinstance(value, np.ndarray):
        return value.shape
    if isinstance(value, list | tuple):
        return (len(value),)
    return ()


def _parameter_count(value: object) -> int:
    """Fitted parameters a field carries: a vector's length; a square matrix (Hessian) its side."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        if value.ndim == 0:
            return 1
        return int(value.shape[0])
    if isinstance(value, list | tuple) and value and all(_is_number(v) for v in value):
        return len(value)
    if isinstance(value, Mapping) and value and all(_is_number(v) for v in value.values()):
        return len(value)
    return 1 if _is_number(value) else 0


def _column_like(value: object) -> bool:
    if isinstance(value, list | tuple | np.ndarray):
        return True
    return aggregation.pandas_kind(value) is not None


def _stat_kind(keys: set[Any]) -> str:
    if {"n", "mean", "m2"} <= keys <= {"n", "mean", "m2", "mean_residual"}:
        return "summary"
    if {"n", "mean", "variance", "std"} <= keys:
        return "mean-variance"
    return "statistic"


__all__ = ["Finding", "Inspection", "LocalData", "Statistic", "inspect"]

"""Descriptive statistics: ``describe``, ``crosstab``, ``corr`` and ``cov``.

Each statistic has public per-node (``*_local``) and combining (``*_combine``) functions, usable in an
author's own :class:`~flame.Analyzer` / :class:`~flame.Aggregator`, and a function returning the
ready analysis.

What a node releases:

* ``describe``: per column its count of values and of missing values, mean and sum of squared
  deviations (a typed summary the node's guard refuses below ``min_records`` values). Min and max
  are single records' values: asked for (``extremes=True``), a node sends them only when its policy
  does not enforce (``mode: "warn"``, for test data), labelled as statistics over one record so that
  the guard's audit says what they are; an enforcing node withholds them and the result says so.
* ``crosstab``: count tables (the guard refuses, or suppresses as its policy says, cells of 1 to
  ``min_cell_count - 1``); without given levels first the counts of each variable's levels.
* ``corr`` / ``cov``: over the rows without a missing value in the columns (listwise), the count,
  the mean vector and the matrix of centred cross-products (a typed summary).

The combination is exact up to float64 rounding: Chan, Golub and LeVeque's pairwise update in its
k-way form, with the node means shifted to the first node's mean, for means, variances and
cross-products alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from flame.disclosure.policy import DisclosurePolicy
from flame.errors import AggregationError, ConfigurationError
from flame.federated.options import FederationOptions
from flame.protocols.aggregation import (
    merged_contingency_table,
    pooled_mean_variance,
    summarise,
)
from flame.stats import dist
from flame.stats.framework import (
    StatsAnalysis,
    Step,
    build_analysis,
    columns_of,
    records_by_node,
    require_columns,
)
from flame.stats.results import StatsResult, axes
from flame.stats.source import Source, as_source

# -- describe -----------------------------------------------------------------------------------------


def numeric_column(frame: pd.DataFrame, column: str, statistic: str) -> npt.NDArray[np.float64]:
    """A column as float64 (booleans as 0/1), missing values as NaN; refuses text columns."""
    series = frame[column]
    if series.dtype.kind == "b":
        flags: npt.NDArray[np.float64] = series.to_numpy(dtype=np.float64)
        return flags
    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if bad.any():
        example = series[bad].iloc[0]
        raise ConfigurationError(
            f"{statistic}: column {column!r}",
            f"holds values that are not numbers (e.g. {str(example)[:20]!r})",
            "numeric columns (use crosstab for categorical ones)",
        )
    values: npt.NDArray[np.float64] = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    return values


def describe_local(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    extremes: bool = False,
    policy: DisclosurePolicy | None = None,
) -> dict[str, Any]:
    """This node's part of :func:`describe`: per column a summary (``summarise``) and the missing count.

    ``extremes`` asks for each column's min and max, single records' values: sent (each as
    ``{"n": 1, "value": ...}``) only when the node's ``policy`` does not enforce; an enforcing policy
    (the default) withholds them and the update says ``"extremes": "withheld"``.
    """
    names = columns_of(list(columns))
    require_columns(frame, names, "describe")
    summaries: dict[str, Any] = {}
    missing: dict[str, int] = {}
    ranges: dict[str, Any] = {}
    release = extremes and policy is not None and not policy.enforcing
    for column in names:
        values = numeric_column(frame, column, "describe")
        present = values[~np.isnan(values)]
        summaries[column] = summarise(present)
        missing[column] = int(values.size - present.size)
        if release and present.size:
            ranges[column] = {
                "min": {"n": 1, "value": float(present.min())},
                "max": {"n": 1, "value": float(present.max())},
            }
    update: dict[str, Any] = {"records": len(frame), "summaries": summaries, "missing": missing}
    if extremes:
        update["extremes"] = ranges if release else "withheld"
    return update


def describe_combine(updates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The pooled ``{"nodes", "columns": {column: {n, missing, mean, sd[, min, max]}}}``."""
    if not updates:
        raise AggregationError("describe_combine: no updates")
    first = next(iter(updates.values()))
    columns = list(first["summaries"])
    table: dict[str, dict[str, Any]] = {}
    for column in columns:
        parts = {node: u["summaries"][column] for node, u in updates.items()}
        total = sum(int(p["n"]) for p in parts.values())
        row: dict[str, Any] = {
            "n": total,
            "missing": sum(int(u["missing"][column]) for u in updates.values()),
            "mean": math.nan,
            "sd": math.nan,
        }
        if total >= 1:
            pooled = pooled_mean_variance(parts, ddof=1 if total > 1 else 0)
            row["mean"] = float(pooled["mean"])
            row["sd"] = float(pooled["std"]) if total > 1 else math.nan
        if "extremes" in first:
            sent = [u["extremes"] for u in updates.values()]
            found = [e[column] for e in sent if isinstance(e, Mapping) and column in e]
            complete = all(isinstance(e, Mapping) for e in sent)  # a withholding node's range is unknown
            row["min"] = (
                min((float(e["min"]["value"]) for e in found), default=math.nan) if complete else math.nan
            )
            row["max"] = (
                max((float(e["max"]["value"]) for e in found), default=math.nan) if complete else math.nan
            )
        table[column] = row
    withheld = sorted(node for node, u in updates.items() if u.get("extremes") == "withheld")
    return {"nodes": records_by_node(updates), "columns": table, "extremes_withheld": withheld}


@dataclass(frozen=True)
class Description(StatsResult):
    """``describe``: per column n, missing, mean, sd (and min, max when released)."""

    columns: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: nodes whose policy withheld min and max (single records' values)
    extremes_withheld: Sequence[str] = ()

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame.from_dict({c: dict(v) for c, v in self.columns.items()}, orient="index")
        frame["n"] = frame["n"].astype(int)
        frame["missing"] = frame["missing"].astype(int)
        return frame

    def notes(self) -> list[str]:
        lines = ["sd: sample standard deviation (ddof=1); missing values left out per column"]
        if self.extremes_withheld:
            lines.append(
                f"min/max withheld by the disclosure policy of {len(self.extremes_withheld)} node(s) "
                "(single records' values; released only where a node's policy does not enforce)"
            )
        return lines

    def plot(self, ax: Any = None) -> Any:
        """Means with +-1 sd bars, one per column."""
        ax = axes(ax)
        frame = self.to_frame()
        ax.errorbar(frame.index, frame["mean"], yerr=frame["sd"], fmt="o", capsize=4)
        ax.set_ylabel("mean +- sd")
        ax.set_title(self.title)
        return ax


class DescribeStep(Step):
    name = "describe"

    def __init__(self, columns: list[str], extremes: bool) -> None:
        self.columns = columns
        self.extremes = extremes

    @property
    def title(self) -> str:
        return f"describe({', '.join(self.columns)})"

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        return describe_local(frame, self.columns, extremes=self.extremes, policy=policy)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        return describe_combine(updates)

    def final(self, aggregate: Any) -> dict[str, Any]:
        return dict(aggregate)

    def interpret(self, final: Mapping[str, Any]) -> Description:
        return Description(
            self.title,
            dict(final["nodes"]),
            int(final["rounds"]),
            dict(final["columns"]),
            list(final.get("extremes_withheld", [])),
        )


def describe(
    columns: str | Sequence[str],
    source: Source | str,
    *,
    where: str | None = None,
    extremes: bool = False,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """n, missing, mean and sd of numeric ``columns`` over every node's rows, in one round.

    ``extremes=True`` asks for min and max too: single records' values, which a node releases only
    when its disclosure policy does not enforce (test data); otherwise the result shows them
    missing and says which nodes withheld them.
    """
    names = columns_of(columns if isinstance(columns, str) else list(columns))
    return build_analysis(
        DescribeStep(names, extremes), as_source(source, where), options=options, **option_values
    )


# -- crosstab ------------------------------------------------------------------------------------------


def level(value: Any) -> Any:
    """A category level as nodes agree on it: NumPy scalars as Python ones, 1.0 as 1."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _level_order(value: Any) -> tuple[int, Any]:
    """Numbers first (by value), then text (alphabetically), then anything else (by repr)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def _sort_levels(levels: Sequence[Any]) -> list[Any]:
    return sorted(levels, key=_level_order)


def _categorical(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].map(level, na_action="ignore")


def level_counts(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """Per column a one-column count table of its levels (missing values left out)."""
    require_columns(frame, list(columns), "crosstab")
    tables: dict[str, Any] = {}
    for column in columns:
        values = _categorical(frame, column).dropna()
        levels = _sort_levels(list({repr(v): v for v in values.unique().tolist()}.values()))
        codes = _codes(values, levels)
        counts = np.bincount(codes, minlength=len(levels)).astype(np.int64).reshape(-1, 1)
        tables[column] = {"counts": counts, "rows": levels, "columns": ["n"]}
    return {"records": len(frame), "levels": tables}


def _codes(values: pd.Series, levels: Sequence[Any]) -> npt.NDArray[np.intp]:
    """Each value's index among ``levels`` (compared by ``repr``: 1 and "1" differ), -1 if absent."""
    indexer: npt.NDArray[np.intp] = pd.Index([repr(v) for v in levels]).get_indexer(values.map(repr))
    return indexer


def union_levels(updates: Mapping[str, Mapping[str, Any]], column: str) -> list[Any]:
    """The levels any node has of ``column`` (from :func:`level_counts`), in a stable order."""
    seen: dict[str, Any] = {}
    for update in updates.values():
        for value in update["levels"][column]["rows"]:
            seen.setdefault(repr(level(value)), level(value))
    return _sort_levels(list(seen.values()))


def crosstab_local(
    frame: pd.DataFrame, row: str, column: str | None, rows: Sequence[Any], columns: Sequence[Any] | None
) -> dict[str, Any]:
    """This node's count table of ``row`` by ``column`` (one column ``"n"`` without one) over given levels.

    Rows with a missing value in either variable are left out and counted as ``missing``.
    """
    names = [row] if column is None else [row, column]
    require_columns(frame, names, "crosstab")
    a = _categorical(frame, row)
    b = _categorical(frame, column) if column is not None else pd.Series("n", index=frame.index)
    keep = a.notna() & b.notna()
    wanted_rows = [level(v) for v in rows]
    wanted_columns = [level(v) for v in columns] if columns is not None else ["n"]
    a, b = a[keep], b[keep]
    row_codes = _codes(a, wanted_rows)
    column_codes = _codes(b, wanted_columns) if column is not None else np.zeros(len(b), dtype=np.intp)
    unknown = (row_codes < 0) | (column_codes < 0)
    if unknown.any():
        raise ConfigurationError(
            "crosstab levels",
            f"this node has {int(unknown.sum())} record(s) with a level not among the given ones",
            "give every level of the variables (or none, to have them collected first)",
        )
    cells = np.bincount(
        row_codes * len(wanted_columns) + column_codes, minlength=len(wanted_rows) * len(wanted_columns)
    )
    table = {
        "counts": cells.astype(np.int64).reshape(len(wanted_rows), len(wanted_columns)),
        "rows": wanted_rows,
        "columns": wanted_columns,
    }
    return {"records": len(frame), "missing": int((~keep).sum()), "table": table}


def crosstab_combine(updates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The summed count table; a cell some node suppressed is missing (NaN) in the sum."""
    merged = merged_contingency_table({node: u["table"] for node, u in updates.items()})
    counts = np.asarray(merged["counts"], dtype=np.float64)
    return {
        "nodes": records_by_node(updates),
        "missing": sum(int(u["missing"]) for u in updates.values()),
        "counts": counts,
        "rows": list(merged["rows"]),
        "columns": list(merged["columns"]),
    }


@dataclass(frozen=True)
class CrossTable(StatsResult):
    """``crosstab``: counts by the levels of one or two variables; NaN where a node suppressed a cell."""

    counts: Any = None
    rows: Sequence[Any] = ()
    columns: Sequence[Any] = ()
    row_name: str = ""
    column_name: str | None = None
    missing: int = 0

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            np.asarray(self.counts, dtype=np.float64),
            index=pd.Index(list(self.rows), name=self.row_name),
            columns=pd.Index(list(self.columns), name=self.column_name),
        )
        if not frame.isna().any().any():
            frame = frame.astype(np.int64)
        return frame

    @property
    def suppressed(self) -> int:
        """Cells missing because a node's policy suppressed a small count there."""
        return int(np.isnan(np.asarray(self.counts, dtype=np.float64)).sum())

    def notes(self) -> list[str]:
        lines = [f"Rows with a missing value left out: {self.missing}"]
        if self.suppressed:
            lines.append(f"{self.suppressed} cell(s) suppressed by a node's disclosure policy (shown as .)")
        return lines

    def plot(self, ax: Any = None) -> Any:
        """Grouped bars of the counts."""
        ax = axes(ax)
        self.to_frame().plot.bar(ax=ax)
        ax.set_ylabel("count")
        ax.set_title(self.title)
        return ax


class CrosstabStep(Step):
    """Count tables over agreed levels; collects the levels in a first round unless given."""

    name = "crosstab"

    def __init__(
        self, row: str, column: str | None, rows: list[Any] | None, columns: list[Any] | None
    ) -> None:
        self.row = row
        self.column = column
        self.rows = rows
        self.columns = columns
        self.collect = rows is None or (column is not None and columns is None)
        self.max_rounds = 2 if self.collect else 1

    @property
    def title(self) -> str:
        return f"crosstab({self.row}{', ' + self.column if self.column else ''})"

    def _variables(self) -> list[str]:
        return [self.row] if self.column is None else [self.row, self.column]

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        if self.collect and round == 1:
            unknown = [
                v
                for v, given in zip(self._variables(), (self.rows, self.columns), strict=False)
                if given is None
            ]
            return level_counts(frame, unknown)
        rows = self.rows if self.rows is not None else aggregate["levels"][self.row]
        columns = None
        if self.column is not None:
            columns = self.columns if self.columns is not None else aggregate["levels"][self.column]
        return crosstab_local(frame, self.row, self.column, rows, columns)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        if self.collect and round == 1:
            first = next(iter(updates.values()))
            return {"levels": {column: union_levels(updates, column) for column in first["levels"]}}
        return crosstab_combine(updates)

    def converged(self, aggregate: Any, previous: Any, round: int) -> bool:
        return "table" in aggregate or "counts" in aggregate

    def final(self, aggregate: Any) -> dict[str, Any]:
        return dict(aggregate)

    def interpret(self, final: Mapping[str, Any]) -> StatsResult:
        return CrossTable(
            self.title,
            dict(final["nodes"]),
            int(final["rounds"]),
            np.asarray(final["counts"], dtype=np.float64),
            list(final["rows"]),
            list(final["columns"]),
            self.row,
            self.column,
            int(final["missing"]),
        )


def _levels_arg(levels: Sequence[Any] | None, what: str) -> list[Any] | None:
    if levels is None:
        return None
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence) or not levels:
        raise ConfigurationError(
            what, f"is {levels!r:.60}", "a non-empty list of levels, e.g. ['female', 'male']"
        )
    values = [level(v) for v in levels]
    if len({repr(v) for v in values}) != len(values):
        raise ConfigurationError(what, "lists a level twice", "each level once")
    return values


def crosstab(
    row: str,
    column: str | None = None,
    *,
    source: Source | str,
    where: str | None = None,
    row_levels: Sequence[Any] | None = None,
    column_levels: Sequence[Any] | None = None,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Counts by the levels of ``row`` (and ``column``): one round with given levels, else two.

    Without levels, the first round collects each node's level counts (count tables, judged by the
    node's guard like the final table).
    """
    step = CrosstabStep(
        row, column, _levels_arg(row_levels, "row_levels"), _levels_arg(column_levels, "column_levels")
    )
    return build_analysis(step, as_source(source, where), options=options, **option_values)


# -- corr / cov ----------------------------------------------------------------------------------------


def crossproducts_local(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """This node's ``{"n", "mean", "m2", "mean_residual"}`` of the complete rows of ``columns``.

    ``m2`` is the matrix of centred cross-products ``(X - mean)^T (X - mean)``, by the corrected
    two-pass formula (so data with a large offset keeps its digits).
    """
    names = columns_of(list(columns))
    require_columns(frame, names, "corr/cov")
    matrix = np.column_stack([numeric_column(frame, c, "corr/cov") for c in names])
    complete = matrix[~np.isnan(matrix).any(axis=1)]
    n = int(complete.shape[0])
    p = len(names)
    if n == 0:
        zeros = np.zeros(p)
        summary = {"n": 0, "mean": zeros, "m2": np.zeros((p, p)), "mean_residual": zeros}
    else:
        mean = complete.mean(axis=0)
        deviations = complete - mean
        sums = deviations.sum(axis=0)
        m2 = deviations.T @ deviations - np.outer(sums, sums) / n
        summary = {"n": n, "mean": mean, "m2": (m2 + m2.T) / 2, "mean_residual": sums / n}
    return {"records": len(frame), "crossproducts": summary}


def crossproducts_combine(updates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Pooled ``{"n", "mean", "m2"}`` (cross-products about the pooled mean) from the nodes' parts."""
    parts = [
        (node, u["crossproducts"]) for node, u in sorted(updates.items()) if int(u["crossproducts"]["n"]) > 0
    ]
    if not parts:
        raise AggregationError("crossproducts_combine: no complete rows on any node")
    counts = np.array([int(p["n"]) for _, p in parts], dtype=np.float64)
    total = counts.sum()
    reference = np.asarray(parts[0][1]["mean"], dtype=np.float64)
    shifted = [
        np.asarray(p["mean"], dtype=np.float64) - reference + np.asarray(p.get("mean_residual", 0.0))
        for _, p in parts
    ]
    mean_shift = np.sum([c / total * d for c, d in zip(counts, shifted, strict=True)], axis=0)
    m2 = np.sum([np.asarray(p["m2"], dtype=np.float64) for _, p in parts], axis=0)
    for c, d in zip(counts, shifted, strict=True):
        e = d - mean_shift
        m2 = m2 + c * np.outer(e, e)
    return {"n": int(total), "mean": reference + mean_shift, "m2": m2}


@dataclass(frozen=True)
class Matrix(StatsResult):
    """``corr`` or ``cov``: the pooled matrix over the complete rows; ``tests()`` for correlations."""

    kind: str = "corr"
    names: Sequence[str] = ()
    matrix: Any = None
    #: complete rows over all nodes (the matrix's n)
    complete: int = 0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(np.asarray(self.matrix), index=list(self.names), columns=list(self.names))

    def tests(self, alpha: float = 0.05) -> pd.DataFrame:
        """Each pair's Pearson r with its t-test (n - 2 df) and Fisher-z confidence interval."""
        if self.kind != "corr":
            raise ConfigurationError("tests", "are for a correlation matrix", "stats.corr(...)")
        rows = []
        n = self.complete
        z_crit = dist.norm_ppf(1 - alpha / 2)
        matrix = np.asarray(self.matrix)
        for i, a in enumerate(self.names):
            for j in range(i + 1, len(self.names)):
                r = float(matrix[i, j])
                df = n - 2
                t = r * math.sqrt(df / max(1e-300, 1 - r * r)) if df > 0 else math.nan
                p = 2 * dist.t_sf(abs(t), df) if df > 0 else math.nan
                if n > 3 and abs(r) < 1:
                    z, se = math.atanh(r), 1 / math.sqrt(n - 3)
                    low, high = math.tanh(z - z_crit * se), math.tanh(z + z_crit * se)
                else:
                    low = high = math.nan
                rows.append({"pair": f"{a} ~ {self.names[j]}", "r": r, "t": t, "P>|t|": p,
                             f"[{alpha / 2:g}": low, f"{1 - alpha / 2:g}]": high, "n": n})  # fmt: skip
        return pd.DataFrame(rows).set_index("pair")

    def notes(self) -> list[str]:
        return [
            f"{'Pearson correlation' if self.kind == 'corr' else 'Covariance (ddof=1)'} over {self.complete} rows without a missing value (listwise)"
        ]

    def summary(self) -> str:
        text = super().summary()
        if self.kind == "corr" and len(self.names) > 1 and self.complete > 3:
            from flame.stats.results import format_table

            text += "\n\nPairwise tests (t with n - 2 df, Fisher-z 95% CI):\n" + format_table(self.tests())
        return text

    def plot(self, ax: Any = None) -> Any:
        """A heat map of the matrix."""
        ax = axes(ax)
        frame = self.to_frame()
        image = ax.imshow(
            frame.to_numpy(),
            cmap="RdBu_r",
            vmin=-1 if self.kind == "corr" else None,
            vmax=1 if self.kind == "corr" else None,
        )
        ax.set_xticks(range(len(frame)), labels=frame.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(frame)), labels=frame.index)
        ax.figure.colorbar(image, ax=ax)
        ax.set_title(self.title)
        return ax


class MatrixStep(Step):
    def __init__(self, kind: str, columns: list[str]) -> None:
        self.name = kind
        self.columns = columns

    @property
    def title(self) -> str:
        return f"{self.name}({', '.join(self.columns)})"

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        return crossproducts_local(frame, self.columns)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        pooled = crossproducts_combine(updates)
        n = pooled["n"]
        if n < 2:
            raise AggregationError(f"{self.name}: {n} complete row(s) over all nodes; at least 2 are needed")
        cov = pooled["m2"] / (n - 1)
        if self.name == "cov":
            matrix = cov
        else:
            scale = np.sqrt(np.diag(cov))
            with np.errstate(divide="ignore", invalid="ignore"):
                matrix = cov / np.outer(scale, scale)
            np.fill_diagonal(matrix, np.where(scale > 0, 1.0, np.nan))
        return {"nodes": records_by_node(updates), "n": n, "matrix": matrix}

    def final(self, aggregate: Any) -> dict[str, Any]:
        # the complete-row count under its own name: a bare "n" next to the matrix would make the
        # whole result one typed statistic, whose matrix the guard counts as fitted parameters
        return {"nodes": aggregate["nodes"], "complete": int(aggregate["n"]), "matrix": aggregate["matrix"]}

    def interpret(self, final: Mapping[str, Any]) -> Matrix:
        return Matrix(
            self.title,
            dict(final["nodes"]),
            int(final["rounds"]),
            self.name,
            list(self.columns),
            np.asarray(final["matrix"], dtype=np.float64),
            int(final["complete"]),
        )


def corr(
    columns: Sequence[str],
    source: Source | str,
    *,
    where: str | None = None,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Pearson correlation matrix of ``columns`` over the complete rows of every node, one round."""
    names = columns_of(list(columns))
    return build_analysis(
        MatrixStep("corr", names), as_source(source, where), options=options, **option_values
    )


def cov(
    columns: Sequence[str],
    source: Source | str,
    *,
    where: str | None = None,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Covariance matrix (ddof=1) of ``columns`` over the complete rows of every node, one round."""
    names = columns_of(list(columns))
    return build_analysis(
        MatrixStep("cov", names), as_source(source, where), options=options, **option_values
    )

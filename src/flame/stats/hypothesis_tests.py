"""Hypothesis tests: Welch's and the paired t-test, the chi-square test of independence, Fisher's exact test.

What a node releases:

* ``ttest`` (Welch): per group level, the count, mean and sum of squared deviations of the variable
  (typed summaries; the node's guard refuses a group of fewer than ``min_records`` values).
* ``ttest_paired``: the same summary of the differences over the complete pairs.
* ``chi2_test`` and ``fisher_exact``: the count table of :func:`~flame.stats.crosstab` (cells of 1 to
  ``min_cell_count - 1`` refused, or suppressed, by the node's guard).

The statistics are computed from the pooled summaries or table, so they equal the pooled tests
(:func:`scipy.stats.ttest_ind` with ``equal_var=False``, :func:`scipy.stats.ttest_rel`,
:func:`scipy.stats.chi2_contingency`, :func:`scipy.stats.fisher_exact`) to float64 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from flame.disclosure.policy import DisclosurePolicy
from flame.errors import AggregationError, ConfigurationError
from flame.federated.options import FederationOptions
from flame.protocols.aggregation import pooled_mean_variance, summarise
from flame.stats import dist
from flame.stats.describe import CrosstabStep, _levels_arg, _sort_levels, level, numeric_column
from flame.stats.framework import StatsAnalysis, Step, build_analysis, records_by_node, require_columns
from flame.stats.results import StatsResult, format_table
from flame.stats.source import Source, as_source

Alternative = Literal["two-sided", "less", "greater"]


def _check_alternative(alternative: str) -> None:
    if alternative not in ("two-sided", "less", "greater"):
        raise ConfigurationError("alternative", f"is {alternative!r}", "'two-sided', 'less' or 'greater'")


def _p_value(t: float, df: float, alternative: str) -> float:
    if alternative == "less":
        return 1.0 - dist.t_sf(t, df)
    if alternative == "greater":
        return dist.t_sf(t, df)
    return min(1.0, 2.0 * dist.t_sf(abs(t), df))


def _interval(estimate: float, se: float, df: float, alpha: float, alternative: str) -> tuple[float, float]:
    if alternative == "two-sided":
        q = dist.t_ppf(1 - alpha / 2, df)
        return estimate - q * se, estimate + q * se
    q = dist.t_ppf(1 - alpha, df)
    return (-math.inf, estimate + q * se) if alternative == "less" else (estimate - q * se, math.inf)


@dataclass(frozen=True)
class TestResult(StatsResult):
    """One test: estimate, standard error, statistic, degrees of freedom, p-value, confidence interval."""

    __test__ = False  # not a pytest test class, whatever imports it

    test: str = ""
    estimate_name: str = ""
    estimate: float = math.nan
    se: float = math.nan
    statistic_name: str = "t"
    statistic: float = math.nan
    df: float = math.nan
    p_value: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    alpha: float = 0.05
    alternative: str = "two-sided"
    #: further figures (group means and counts, expected counts, ...)
    details: Mapping[str, Any] = field(default_factory=dict)
    method: str = ""

    def to_frame(self) -> pd.DataFrame:
        p_label = {"two-sided": f"P>|{self.statistic_name}|", "greater": f"P>{self.statistic_name}"}.get(
            self.alternative, f"P<{self.statistic_name}"
        )
        row = {
            "estimate": self.estimate,
            "std err": self.se,
            self.statistic_name: self.statistic,
            "df": self.df,
            p_label: self.p_value,
            f"[{self.alpha / 2:g}" if self.alternative == "two-sided" else "[lower": self.ci[0],
            f"{1 - self.alpha / 2:g}]" if self.alternative == "two-sided" else "upper]": self.ci[1],
        }
        return pd.DataFrame([row], index=pd.Index([self.estimate_name], name=self.test))

    def notes(self) -> list[str]:
        lines = [self.method] if self.method else []
        if self.alternative != "two-sided":
            lines.append(f"alternative: {self.alternative}")
        table = self.details.get("groups")
        if isinstance(table, Mapping) and table:
            frame = pd.DataFrame.from_dict({str(k): dict(v) for k, v in table.items()}, orient="index")
            lines.append(format_table(frame))
        return lines


# -- Welch's t-test ------------------------------------------------------------------------------------


def group_summaries_local(
    frame: pd.DataFrame, column: str, by: str, groups: Sequence[Any] | None
) -> dict[str, Any]:
    """This node's summary of ``column`` per level of ``by`` (only ``groups`` when given).

    Rows missing either value are left out. Returns ``{"records", "groups": [[level, summary], ...]}``.
    """
    require_columns(frame, [column, by], "ttest")
    values = numeric_column(frame, column, "ttest")
    labels = frame[by].map(level, na_action="ignore")
    keep = ~np.isnan(values) & labels.notna().to_numpy()
    present = _sort_levels(list(set(labels[keep].tolist())))
    wanted = present if groups is None else [level(g) for g in groups]
    parts = []
    for value in wanted:
        selected = values[keep & (labels.map(repr) == repr(value)).to_numpy()]
        parts.append([value, summarise(selected)])
    return {"records": len(frame), "groups": parts}


def welch_combine(
    updates: Mapping[str, Mapping[str, Any]],
    groups: Sequence[Any] | None = None,
    *,
    alpha: float = 0.05,
    alternative: str = "two-sided",
) -> dict[str, Any]:
    """Welch's t-test of the first group's mean minus the second's, from :func:`group_summaries_local`."""
    by_level: dict[str, tuple[Any, dict[str, Any]]] = {}
    for node, update in sorted(updates.items()):
        for value, summary in update["groups"]:
            key = repr(level(value))
            by_level.setdefault(key, (level(value), {}))[1][node] = summary
    order = (
        [repr(level(g)) for g in groups]
        if groups is not None
        else [repr(v) for v in _sort_levels([v for v, _ in by_level.values()])]
    )
    if len(order) != 2 or any(k not in by_level for k in order):
        found = ", ".join(repr(v) for v, _ in by_level.values())
        raise AggregationError(
            f"ttest: the grouping variable has the levels {found} over all nodes; Welch's test compares "
            "two: give groups=(first, second)"
        )
    stats_: list[dict[str, Any]] = []
    for key in order:
        value, parts = by_level[key]
        total = sum(int(p["n"]) for p in parts.values())
        if total < 2:
            raise AggregationError(
                f"ttest: group {value!r} has {total} value(s) over all nodes; at least 2 are needed"
            )
        pooled = pooled_mean_variance(parts)
        stats_.append(
            {
                "level": value,
                "n": int(pooled["n"]),
                "mean": float(pooled["mean"]),
                "variance": float(pooled["variance"]),
            }
        )
    a, b = stats_
    va, vb = a["variance"] / a["n"], b["variance"] / b["n"]
    se = math.sqrt(va + vb)
    diff = a["mean"] - b["mean"]
    t = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else math.nan
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1)) if se > 0 else math.nan
    low, high = _interval(diff, se, df, alpha, alternative)
    return {
        "nodes": records_by_node(updates),
        "estimate": diff,
        "se": se,
        "t": t,
        "df": df,
        "p": _p_value(t, df, alternative),
        "ci": [low, high],
        "groups": [
            [s["level"], {"count": s["n"], "mean": s["mean"], "sd": math.sqrt(s["variance"])}] for s in stats_
        ],
    }


class WelchStep(Step):
    name = "ttest"

    def __init__(
        self, column: str, by: str, groups: list[Any] | None, alpha: float, alternative: str
    ) -> None:
        self.column, self.by, self.groups = column, by, groups
        self.alpha, self.alternative = alpha, alternative

    @property
    def title(self) -> str:
        return f"Welch's t-test of {self.column} by {self.by}"

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        return group_summaries_local(frame, self.column, self.by, self.groups)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        return welch_combine(updates, self.groups, alpha=self.alpha, alternative=self.alternative)

    def final(self, aggregate: Any) -> dict[str, Any]:
        return dict(aggregate)

    def interpret(self, final: Mapping[str, Any]) -> TestResult:
        (la, ga), (lb, gb) = final["groups"]
        return TestResult(
            self.title, dict(final["nodes"]), int(final["rounds"]),
            test="Welch's t-test", estimate_name=f"mean({la}) - mean({lb})", estimate=float(final["estimate"]),
            se=float(final["se"]), statistic=float(final["t"]), df=float(final["df"]), p_value=float(final["p"]),
            ci=(float(final["ci"][0]), float(final["ci"][1])), alpha=self.alpha, alternative=self.alternative,
            details={"groups": {f"{self.by}={la}": ga, f"{self.by}={lb}": gb}},
            method="Unequal variances; Welch-Satterthwaite degrees of freedom",
        )  # fmt: skip


def ttest(
    column: str,
    by: str,
    *,
    source: Source | str,
    where: str | None = None,
    groups: Sequence[Any] | None = None,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Welch's t-test of ``column`` between the two levels of ``by`` (``groups`` picks and orders them).

    The estimate is the first group's mean minus the second's (levels in sorted order without
    ``groups``). One round.
    """
    _check_alternative(alternative)
    step = WelchStep(column, by, _levels_arg(groups, "groups"), alpha, alternative)
    if step.groups is not None and len(step.groups) != 2:
        raise ConfigurationError("groups", f"names {len(step.groups)} levels", "two levels, e.g. ('A', 'B')")
    return build_analysis(step, as_source(source, where), options=options, **option_values)


# -- paired t-test -------------------------------------------------------------------------------------


def differences_local(frame: pd.DataFrame, first: str, second: str) -> dict[str, Any]:
    """This node's summary of ``first - second`` over its complete pairs."""
    require_columns(frame, [first, second], "ttest_paired")
    diff = numeric_column(frame, first, "ttest_paired") - numeric_column(frame, second, "ttest_paired")
    return {"records": len(frame), "differences": summarise(diff[~np.isnan(diff)])}


def paired_combine(
    updates: Mapping[str, Mapping[str, Any]], *, alpha: float = 0.05, alternative: str = "two-sided"
) -> dict[str, Any]:
    """The paired t-test (one-sample t-test of the differences) from :func:`differences_local`."""
    parts = {node: u["differences"] for node, u in updates.items()}
    total = sum(int(p["n"]) for p in parts.values())
    if total < 2:
        raise AggregationError(
            f"ttest_paired: {total} complete pair(s) over all nodes; at least 2 are needed"
        )
    pooled = pooled_mean_variance(parts)
    n, mean, sd = int(pooled["n"]), float(pooled["mean"]), float(pooled["std"])
    se = sd / math.sqrt(n)
    t = mean / se if se > 0 else math.nan
    low, high = _interval(mean, se, n - 1, alpha, alternative)
    return {"nodes": records_by_node(updates), "pairs": n, "estimate": mean, "sd": sd, "se": se, "t": t,
            "df": n - 1, "p": _p_value(t, n - 1, alternative), "ci": [low, high]}  # fmt: skip


class PairedStep(Step):
    name = "ttest_paired"

    def __init__(self, first: str, second: str, alpha: float, alternative: str) -> None:
        self.first, self.second, self.alpha, self.alternative = first, second, alpha, alternative

    @property
    def title(self) -> str:
        return f"Paired t-test of {self.first} - {self.second}"

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        return differences_local(frame, self.first, self.second)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        return paired_combine(updates, alpha=self.alpha, alternative=self.alternative)

    def final(self, aggregate: Any) -> dict[str, Any]:
        return dict(aggregate)

    def interpret(self, final: Mapping[str, Any]) -> TestResult:
        return TestResult(
            self.title, dict(final["nodes"]), int(final["rounds"]),
            test="Paired t-test", estimate_name=f"mean({self.first} - {self.second})",
            estimate=float(final["estimate"]), se=float(final["se"]), statistic=float(final["t"]),
            df=float(final["df"]), p_value=float(final["p"]), ci=(float(final["ci"][0]), float(final["ci"][1])),
            alpha=self.alpha, alternative=self.alternative,
            details={"pairs": int(final["pairs"]), "sd": float(final["sd"])},
            method=f"{int(final['pairs'])} complete pairs; sd of the differences {float(final['sd']):.4g}",
        )  # fmt: skip


def ttest_paired(
    first: str,
    second: str,
    *,
    source: Source | str,
    where: str | None = None,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Paired t-test of ``first - second`` over the records with both values. One round."""
    _check_alternative(alternative)
    return build_analysis(
        PairedStep(first, second, alpha, alternative),
        as_source(source, where),
        options=options,
        **option_values,
    )


# -- tests on count tables -----------------------------------------------------------------------------


def _complete_table(aggregate: Mapping[str, Any], test: str) -> np.ndarray[Any, Any]:
    counts = np.asarray(aggregate["counts"], dtype=np.float64)
    if np.isnan(counts).any():
        raise AggregationError(
            f"{test}: {int(np.isnan(counts).sum())} cell(s) of the table were suppressed by a node's disclosure "
            "policy, so the test cannot be computed; merge sparse levels (e.g. with where= or fewer levels)"
        )
    return counts


def chi2_from_table(counts: np.ndarray[Any, Any], correction: bool = True) -> dict[str, Any]:
    """Pearson's chi-square test of independence of a count table (Yates' correction for 1 df if asked)."""
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or min(table.shape) < 2:
        raise AggregationError(f"chi2_test: needs a table of at least 2 x 2 levels, got {table.shape}")
    total = table.sum()
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / total if total else table * 0
    if (expected == 0).any():
        raise AggregationError("chi2_test: a row or column of the table is all zero (an expected count of 0)")
    df = (table.shape[0] - 1) * (table.shape[1] - 1)
    deviation = table - expected
    if correction and df == 1:
        deviation = np.sign(deviation) * np.maximum(np.abs(deviation) - 0.5, 0.0)
    statistic = float(np.sum(deviation**2 / expected))
    return {"statistic": statistic, "df": df, "p": dist.chi2_sf(statistic, df), "expected": expected}


def fisher_from_table(counts: np.ndarray[Any, Any], alternative: str = "two-sided") -> dict[str, Any]:
    """Fisher's exact test of a 2 x 2 table: the sample odds ratio and the hypergeometric p-value."""
    table = np.asarray(counts, dtype=np.float64)
    if table.shape != (2, 2):
        raise AggregationError(f"fisher_exact: needs a 2 x 2 table, got {table.shape}")
    a, b, c, d = (round(float(v)) for v in table.ravel())
    odds = (a * d) / (b * c) if b * c else (math.inf if a * d else math.nan)
    row1, col1, total = a + b, a + c, a + b + c + d
    low, high = max(0, col1 - (total - row1)), min(row1, col1)
    support = np.arange(low, high + 1)
    log_pmf = np.asarray(
        dist.log_comb(col1, support)
        + dist.log_comb(total - col1, row1 - support)
        - dist.log_comb(total, row1),
        dtype=np.float64,
    )
    pmf = np.exp(log_pmf)
    if alternative == "less":
        p = float(pmf[support <= a].sum())
    elif alternative == "greater":
        p = float(pmf[support >= a].sum())
    else:
        observed = log_pmf[support == a][0]
        # as likely or less likely than the observed table (relative slack for rounding, as SciPy does)
        p = float(pmf[log_pmf <= observed + 1e-7].sum())
    return {"odds_ratio": odds, "p": min(1.0, p)}


class TableTestStep(CrosstabStep):
    """A test on the pooled count table of ``crosstab`` (its rounds, then the test at the aggregator)."""

    def __init__(
        self, test: str, row: str, column: str, rows: list[Any] | None, columns: list[Any] | None,
        correction: bool, alternative: str,
    ) -> None:  # fmt: skip
        super().__init__(row, column, rows, columns)
        self.name = test
        self.correction = correction
        self.alternative = alternative

    @property
    def title(self) -> str:
        kind = "Chi-square test of independence" if self.name == "chi2_test" else "Fisher's exact test"
        return f"{kind}: {self.row} x {self.column}"

    def final(self, aggregate: Any) -> dict[str, Any]:
        final = dict(aggregate)
        counts = _complete_table(aggregate, self.name)
        if self.name == "chi2_test":
            test = chi2_from_table(counts, self.correction)
            final.update(statistic=test["statistic"], df=test["df"], p=test["p"], expected=test["expected"])
        else:
            test = fisher_from_table(counts, self.alternative)
            final.update(odds_ratio=test["odds_ratio"], p=test["p"])
        return final

    def interpret(self, final: Mapping[str, Any]) -> TestResult:
        table = pd.DataFrame(
            np.asarray(final["counts"]),
            index=pd.Index(list(final["rows"]), name=self.row),
            columns=pd.Index(list(final["columns"]), name=self.column),
        ).astype(np.int64)
        common = (self.title, dict(final["nodes"]), int(final["rounds"]))
        if self.name == "chi2_test":
            yates = self.correction and int(final["df"]) == 1
            return TestResult(
                *common, test="Chi-square test", estimate_name=f"{self.row} x {self.column}",
                statistic_name="chi2", statistic=float(final["statistic"]), df=float(final["df"]),
                p_value=float(final["p"]),
                details={"table": table, "expected": np.asarray(final["expected"])},
                method=f"Pearson's chi-square{' with Yates continuity correction' if yates else ''}\n" + table.to_string(),
            )  # fmt: skip
        return TestResult(
            *common, test="Fisher's exact test", estimate_name="odds ratio", estimate=float(final["odds_ratio"]),
            statistic_name="OR", statistic=float(final["odds_ratio"]), p_value=float(final["p"]),
            alternative=self.alternative, details={"table": table},
            method="Sample odds ratio (a d) / (b c); hypergeometric p-value\n" + table.to_string(),
        )  # fmt: skip


def chi2_test(
    row: str,
    column: str,
    *,
    source: Source | str,
    where: str | None = None,
    row_levels: Sequence[Any] | None = None,
    column_levels: Sequence[Any] | None = None,
    correction: bool = True,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Chi-square test of independence of two categorical variables (Yates' correction for 2 x 2 as SciPy)."""
    step = TableTestStep(
        "chi2_test", row, column, _levels_arg(row_levels, "row_levels"),
        _levels_arg(column_levels, "column_levels"), correction, "two-sided",
    )  # fmt: skip
    return build_analysis(step, as_source(source, where), options=options, **option_values)


def fisher_exact(
    row: str,
    column: str,
    *,
    source: Source | str,
    where: str | None = None,
    row_levels: Sequence[Any] | None = None,
    column_levels: Sequence[Any] | None = None,
    alternative: Alternative = "two-sided",
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Fisher's exact test of a 2 x 2 table (two variables of two levels each).

    The table's cells pass the nodes' cell rules like any crosstab: a node with a cell of 1 to
    ``min_cell_count - 1`` refuses (or suppresses it, and the test then says it cannot be computed).
    """
    _check_alternative(alternative)
    step = TableTestStep(
        "fisher_exact", row, column, _levels_arg(row_levels, "row_levels"),
        _levels_arg(column_levels, "column_levels"), True, alternative,
    )  # fmt: skip
    for given, what in ((step.rows, "row_levels"), (step.columns, "column_levels")):
        if given is not None and len(given) != 2:
            raise ConfigurationError(what, f"names {len(given)} levels", "two levels for a 2 x 2 table")
    return build_analysis(step, as_source(source, where), options=options, **option_values)


__all__ = [
    "TestResult",
    "chi2_from_table",
    "chi2_test",
    "differences_local",
    "fisher_exact",
    "fisher_from_table",
    "group_summaries_local",
    "paired_combine",
    "ttest",
    "ttest_paired",
    "welch_combine",
]

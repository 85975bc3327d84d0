"""Quantiles and the median by a federated search on counts: no node releases a record's value.

The method (numpy's default ``linear`` definition: the quantile ``q`` of ``N`` values interpolates
the order statistics ``x[k]`` and ``x[k + 1]`` with ``k = floor((N - 1) q)``):

1. Round 1: each node sends, per column, its count, mean and sum of squared deviations (a typed
   summary). The aggregator pools them and brackets each needed order statistic by ``(-inf, inf]``.
2. Each further round the aggregator sends thresholds inside every open bracket (``bins`` evenly
   spaced ones; ``mean +- 10 sd`` at first; outward geometric steps for a half-open bracket). A node
   answers with a histogram over the thresholds it is willing to answer: it adds a threshold to the
   ones it answered before only when each of the two intervals it makes, between the neighbouring
   answered thresholds, holds none or at least ``min_cell_count`` (its policy's) of its values. Every
   bin it ever releases therefore holds 0 or at least ``min_cell_count`` values, whatever rounds are
   combined (it sends only the answered thresholds next to this round's, merging the bins between,
   which keeps that property), and the node's guard judges the histogram like any count table.
3. The aggregator bounds the pooled count at or below each threshold by the nodes' answered
   neighbours and narrows each bracket to the thresholds that surely lie below and at or above the
   order statistic. It stops when every bracket is at most ``tolerance`` wide or did not narrow in a
   round (near the quantile some node holds fewer than ``min_cell_count`` values per interval, so
   finer thresholds go unanswered): then the result states the precision it reached.

The estimate is the bracket's midpoint, interpolated like numpy; ``precision`` bounds its distance
from ``np.quantile`` of the pooled values. Rounds: 1 + about ``log(20 sd / tolerance) / log(bins + 1)``
(5 with the defaults; one more where a bracket stops narrowing), independent of the number of
records. Each node's histogram has at most one bin per threshold it answered.
"""

from __future__ import annotations

import bisect
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
from flame.protocols.aggregation import pooled_mean_variance, summarise
from flame.stats.describe import numeric_column
from flame.stats.framework import (
    StatsAnalysis,
    Step,
    build_analysis,
    columns_of,
    records_by_node,
    require_columns,
)
from flame.stats.results import StatsResult
from flame.stats.source import Source, as_source

#: Half-width of the first grid, in pooled standard deviations.
FIRST_SPAN = 10.0
#: Outward steps of a half-open bracket: from 0.01 to 1e10 standard deviations.
OUTWARD = (0.01, 1e10)


# -- the node's side -----------------------------------------------------------------------------------


def _acceptable(count: int, smallest: int) -> bool:
    return count == 0 or count >= smallest


class Answered:
    """The thresholds a node answered for one column (sorted) and its counts at or below them."""

    def __init__(self, values: npt.NDArray[np.float64]) -> None:
        self.values = np.sort(values)
        self.n = int(values.size)
        self.thresholds: list[float] = []
        self.counts: list[int] = []

    def count_at(self, threshold: float) -> int:
        return int(np.searchsorted(self.values, threshold, side="right"))

    def offer(self, thresholds: npt.NDArray[np.float64], smallest: int) -> None:
        """Answer each threshold that keeps every interval between answered ones at 0 or >= ``smallest``."""
        for value in np.unique(np.asarray(thresholds, dtype=np.float64)):
            t = float(value)
            i = bisect.bisect_left(self.thresholds, t)
            if i < len(self.thresholds) and self.thresholds[i] == t:
                continue
            count = self.count_at(t)
            left = self.counts[i - 1] if i > 0 else 0
            right = self.counts[i] if i < len(self.counts) else self.n
            if _acceptable(count - left, smallest) and _acceptable(right - count, smallest):
                self.thresholds.insert(i, t)
                self.counts.insert(i, count)

    def histogram(self, near: npt.NDArray[np.float64] | None = None) -> dict[str, Any]:
        """The answered thresholds as a histogram ``{"edges": [-inf, ..., inf], "counts": [...]}``.

        With ``near``, only the answered thresholds next to one of those (the nearest at or below
        and at or above each): the bins in between are merged, and still hold 0 or >= the minimum.
        """
        chosen: list[int] = list(range(len(self.thresholds)))
        if near is not None:
            picked: set[int] = set()
            for value in np.asarray(near, dtype=np.float64):
                below = bisect.bisect_right(self.thresholds, float(value)) - 1
                above = bisect.bisect_left(self.thresholds, float(value))
                picked.update(i for i in (below, above) if 0 <= i < len(self.thresholds))
            chosen = sorted(picked)
        cumulative = np.array([0, *(self.counts[i] for i in chosen), self.n], dtype=np.int64)
        return {
            "edges": np.array([-math.inf, *(self.thresholds[i] for i in chosen), math.inf], dtype=np.float64),
            "counts": np.diff(cumulative),
        }


def quantile_search_local(
    frame: pd.DataFrame, columns: Sequence[str], asked: Mapping[str, Sequence[Any]] | None, smallest: int = 5
) -> dict[str, Any]:
    """This node's update: round 1 (``asked`` None) the summaries, then the histograms over answered thresholds.

    ``asked[column]`` lists the threshold arrays of every search round so far, the last one the
    current; the earlier ones are replayed, so the node answers the same thresholds each time
    (restarts included) without keeping state. ``smallest``: the node's ``min_cell_count``.
    """
    names = columns_of(list(columns))
    require_columns(frame, names, "quantiles")
    values = {c: numeric_column(frame, c, "quantiles") for c in names}
    present = {c: v[~np.isnan(v)] for c, v in values.items()}
    if asked is None:
        return {"records": len(frame), "summaries": {c: summarise(present[c]) for c in names}}
    histograms: dict[str, Any] = {}
    for column in names:
        answered = Answered(present[column])
        for thresholds in asked[column]:
            answered.offer(np.asarray(thresholds, dtype=np.float64), smallest)
        current = np.asarray(asked[column][-1], dtype=np.float64) if asked[column] else np.zeros(0)
        histograms[column] = answered.histogram(near=current)
    return {"records": len(frame), "histograms": histograms}


# -- the aggregator's side -----------------------------------------------------------------------------


def _cumulative_bounds(
    histograms: Sequence[Mapping[str, Any]], thresholds: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Lower and upper bounds of the pooled count at or below each threshold."""
    low = np.zeros(thresholds.size, dtype=np.int64)
    high = np.zeros(thresholds.size, dtype=np.int64)
    for histogram in histograms:
        edges = np.asarray(histogram["edges"], dtype=np.float64)
        counts = np.asarray(histogram["counts"], dtype=np.float64)
        if edges.size != counts.size + 1 or np.isnan(counts).any():
            raise AggregationError("quantiles: a node's histogram is malformed or has suppressed bins")
        cumulative = np.concatenate([[0], np.cumsum(counts.astype(np.int64))])  # at edges[0..m]
        below = np.searchsorted(edges, thresholds, side="right") - 1  # largest edge <= t
        above = np.searchsorted(edges, thresholds, side="left")  # smallest edge >= t
        low += cumulative[np.clip(below, 0, edges.size - 1)]
        high += cumulative[np.clip(above, 0, edges.size - 1)]
    return low, high


def _grid(bracket: Mapping[str, Any], bins: int, mean: float, sd: float) -> npt.NDArray[np.float64]:
    lo, hi = float(bracket["lo"]), float(bracket["hi"])
    if math.isinf(lo) and math.isinf(hi):
        return mean + sd * np.linspace(-FIRST_SPAN, FIRST_SPAN, bins)
    steps = sd * np.geomspace(*OUTWARD, bins)
    if math.isinf(lo):
        return np.sort(hi - steps)
    if math.isinf(hi):
        return lo + steps
    return lo + (hi - lo) * np.arange(1, bins + 1) / (bins + 1)


def _next_thresholds(column: Mapping[str, Any], bins: int) -> npt.NDArray[np.float64]:
    grids = [_grid(b, bins, column["mean"], column["sd"]) for b in column["brackets"] if not b["done"]]
    if not grids:
        return np.zeros(0)
    return np.unique(np.concatenate(grids))


def quantile_search_start(
    updates: Mapping[str, Mapping[str, Any]],
    probs: Sequence[float],
    *,
    bins: int = 100,
    tolerance: float | None = None,
    rtol: float = 1e-6,
) -> dict[str, Any]:
    """After round 1: per column the pooled N, mean, sd, the brackets and the first thresholds."""
    first = next(iter(updates.values()))
    columns: dict[str, Any] = {}
    for name in first["summaries"]:
        parts = {node: u["summaries"][name] for node, u in updates.items()}
        total = sum(int(p["n"]) for p in parts.values())
        if total == 0:
            raise AggregationError(f"quantiles: column {name!r} has no values on any node")
        pooled = pooled_mean_variance(parts, ddof=1 if total > 1 else 0)
        mean, sd = float(pooled["mean"]), float(pooled["std"])
        ranks = sorted({k for q in probs for k in _ranks(q, total)})
        tol = float(tolerance) if tolerance is not None else rtol * sd
        brackets = []
        for rank in ranks:
            if sd == 0.0:  # every value equals the mean
                brackets.append({"rank": rank, "lo": mean, "hi": mean, "stalled": 0, "done": True})
            else:
                brackets.append({"rank": rank, "lo": -math.inf, "hi": math.inf, "stalled": 0, "done": False})
        column = {"n": total, "mean": mean, "sd": sd, "tol": tol, "brackets": brackets, "asked": []}
        following = _next_thresholds(column, bins)
        if following.size:
            column["asked"] = [following]
        columns[name] = column
    return {"nodes": records_by_node(updates), "columns": columns}


def quantile_search_step(
    updates: Mapping[str, Mapping[str, Any]], previous: Mapping[str, Any], *, bins: int = 100
) -> dict[str, Any]:
    """One search round: narrow every open bracket by the nodes' histograms, choose the next thresholds."""
    if set(updates) != set(previous["nodes"]):
        raise AggregationError(
            "quantiles: the search needs the same nodes every round (its counts are sums over them); "
            f"round 1 had {sorted(previous['nodes'])}, this round {sorted(updates)}: run it without a quorum"
        )
    columns: dict[str, Any] = {}
    for name, before in previous["columns"].items():
        column = {**before, "brackets": [dict(b) for b in before["brackets"]], "asked": list(before["asked"])}
        open_brackets = [b for b in column["brackets"] if not b["done"]]
        if open_brackets and column["asked"]:
            thresholds = np.asarray(column["asked"][-1], dtype=np.float64)
            low, high = _cumulative_bounds(
                [u["histograms"][name] for _, u in sorted(updates.items())], thresholds
            )
            for bracket in open_brackets:
                target = int(bracket["rank"]) + 1  # x[k] is the smallest t with count(<= t) >= k + 1
                inside = (thresholds > bracket["lo"]) & (thresholds < bracket["hi"])
                below = thresholds[inside & (high < target)]
                above = thresholds[inside & (low >= target)]
                lo = float(below.max()) if below.size else float(bracket["lo"])
                hi = float(above.min()) if above.size else float(bracket["hi"])
                narrowed = (lo, hi) != (bracket["lo"], bracket["hi"])
                bracket.update(lo=lo, hi=hi, stalled=0 if narrowed else int(bracket["stalled"]) + 1)
                bracket["done"] = (hi - lo) <= column["tol"] or bracket["stalled"] >= 1
        following = _next_thresholds(column, bins)
        if following.size:
            column["asked"].append(following)
        columns[name] = column
    return {"nodes": dict(previous["nodes"]), "columns": columns}


def _ranks(q: float, total: int) -> list[int]:
    h = (total - 1) * q
    k = math.floor(h)
    return [k] if h == k or k + 1 >= total else [k, k + 1]


def quantile_estimates(
    search: Mapping[str, Any], probs: Sequence[float]
) -> dict[str, list[dict[str, float]]]:
    """Per column and ``q``: the estimate, its precision (bound on the distance from numpy's), and n."""
    out: dict[str, list[dict[str, float]]] = {}
    for name, column in search["columns"].items():
        brackets = {int(b["rank"]): b for b in column["brackets"]}
        rows = []
        for q in probs:
            total = int(column["n"])
            h = (total - 1) * q
            k = math.floor(h)
            g = h - k
            points = []
            for rank, weight in ((k, 1.0 - g), (k + 1, g)):
                if weight == 0.0 or rank >= total:
                    continue
                b = brackets[rank]
                lo, hi = float(b["lo"]), float(b["hi"])
                middle = (lo + hi) / 2 if math.isfinite(lo) and math.isfinite(hi) else math.nan
                points.append((weight, middle, (hi - lo) / 2, lo, hi))
            estimate = sum(w * m for w, m, *_ in points)
            precision = sum(w * half for w, _, half, *_ in points)
            lower = sum(w * lo for w, *_, lo, _ in points)
            upper = sum(w * hi for w, *_, hi in points)
            rows.append(
                {
                    "q": q,
                    "estimate": estimate,
                    "precision": precision,
                    "lower": lower,
                    "upper": upper,
                    "n": total,
                }
            )
        out[name] = rows
    return out


@dataclass(frozen=True)
class Quantiles(StatsResult):
    """``quantiles`` / ``median``: per column and probability the estimate and its precision."""

    estimates: Mapping[str, Sequence[Mapping[str, float]]] = field(default_factory=dict)
    tolerance: Mapping[str, float] = field(default_factory=dict)
    #: False when the round limit ended the search early (the brackets are wider than they could be)
    complete: bool = True

    def to_frame(self) -> pd.DataFrame:
        rows = [{"column": c, **dict(r)} for c, values in self.estimates.items() for r in values]
        frame = pd.DataFrame(rows).set_index(["column", "q"])
        frame["n"] = frame["n"].astype(int)
        return frame

    def value(self, column: str, q: float = 0.5) -> float:
        """The estimate of ``column``'s quantile ``q``."""
        for row in self.estimates[column]:
            if row["q"] == q:
                return float(row["estimate"])
        raise KeyError(f"no quantile {q} of {column!r}; have {[r['q'] for r in self.estimates[column]]}")

    def notes(self) -> list[str]:
        lines = [
            "Federated search on counts (numpy's linear definition); each node released only histograms whose "
            "bins hold 0 or at least its min_cell_count values",
            "precision: bound on the distance from the pooled np.quantile; [lower, upper]: where it lies",
        ]
        coarse = [
            f"{c} (q={r['q']:g}: +-{r['precision']:.3g} > tolerance {self.tolerance.get(c, 0.0):.3g})"
            for c, rows in self.estimates.items()
            for r in rows
            if not r["precision"] <= self.tolerance.get(c, 0.0)
        ]
        if not self.complete:
            lines.append(
                f"The search was cut at {self.rounds} round(s) (max_rounds) before it converged: allow more rounds"
            )
        if coarse:
            lines.append(
                "Coarser than the tolerance, where nodes hold too few values near the quantile: "
                + "; ".join(coarse)
            )
        return lines

    def plot(self, ax: Any = None) -> Any:
        """The estimates with their [lower, upper] intervals, one panel row per column."""
        from flame.stats.results import axes

        ax = axes(ax)
        frame = self.to_frame().reset_index()
        labels = [f"{c} q={q:g}" for c, q in zip(frame["column"], frame["q"], strict=True)]
        ax.errorbar(
            frame["estimate"], labels,
            xerr=[frame["estimate"] - frame["lower"], frame["upper"] - frame["estimate"]], fmt="o", capsize=4,
        )  # fmt: skip
        ax.set_title(self.title)
        return ax


class QuantileStep(Step):
    name = "quantiles"

    def __init__(
        self,
        columns: list[str],
        probs: list[float],
        bins: int,
        tolerance: float | None,
        rtol: float,
        max_rounds: int,
    ) -> None:
        self.columns, self.probs, self.bins = columns, probs, bins
        self.tolerance, self.rtol, self.max_rounds = tolerance, rtol, max_rounds

    @property
    def title(self) -> str:
        return f"quantiles({', '.join(self.columns)}; q = {', '.join(f'{q:g}' for q in self.probs)})"

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        asked = None if aggregate is None else {c: aggregate["columns"][c]["asked"] for c in self.columns}
        return quantile_search_local(frame, self.columns, asked, policy.min_cell_count)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        if previous is None:
            return quantile_search_start(
                updates, self.probs, bins=self.bins, tolerance=self.tolerance, rtol=self.rtol
            )
        return quantile_search_step(updates, previous, bins=self.bins)

    def converged(self, aggregate: Any, previous: Any, round: int) -> bool:
        return all(b["done"] for column in aggregate["columns"].values() for b in column["brackets"])

    def final(self, aggregate: Any) -> dict[str, Any]:
        return {
            "nodes": aggregate["nodes"],
            "estimates": quantile_estimates(aggregate, self.probs),
            "tolerance": {c: float(v["tol"]) for c, v in aggregate["columns"].items()},
            # False: the round limit (max_rounds) ended the search before every bracket converged
            "complete": self.converged(aggregate, None, 0),
        }

    def interpret(self, final: Mapping[str, Any]) -> Quantiles:
        return Quantiles(
            self.title,
            dict(final["nodes"]),
            int(final["rounds"]),
            dict(final["estimates"]),
            dict(final["tolerance"]),
            bool(final.get("complete", True)),
        )


def quantiles(
    columns: str | Sequence[str],
    probs: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    source: Source | str,
    where: str | None = None,
    tolerance: float | None = None,
    rtol: float = 1e-6,
    bins: int = 100,
    max_rounds: int = 12,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """Quantiles ``probs`` of numeric ``columns`` by the federated count search (see the module).

    ``tolerance`` (absolute; default ``rtol`` times the pooled sd) is the bracket width at which the
    search stops; ``bins`` thresholds per bracket and round; ``max_rounds`` bounds the rounds (the
    aggregator stops as soon as every bracket converged).
    """
    names = columns_of(columns if isinstance(columns, str) else list(columns))
    wanted = [float(q) for q in probs]
    if not wanted or not all(0.0 <= q <= 1.0 for q in wanted):
        raise ConfigurationError(
            "probs", f"is {list(probs)!r:.80}", "probabilities in [0, 1], e.g. (0.25, 0.5, 0.75)"
        )
    if not isinstance(bins, int) or bins < 2:
        raise ConfigurationError("bins", f"is {bins!r}", "a whole number >= 2, e.g. 100")
    if tolerance is not None and not tolerance > 0:
        raise ConfigurationError("tolerance", f"is {tolerance!r}", "a positive number (absolute)")
    if not rtol > 0:
        raise ConfigurationError("rtol", f"is {rtol!r}", "a positive number, e.g. 1e-6")
    step = QuantileStep(names, wanted, bins, tolerance, rtol, max_rounds)
    return build_analysis(step, as_source(source, where), options=options, **option_values)


def median(
    column: str,
    *,
    source: Source | str,
    where: str | None = None,
    tolerance: float | None = None,
    rtol: float = 1e-6,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """The median of ``column`` (``quantiles(column, [0.5])``); the result's ``value(column)``."""
    return quantiles(
        column,
        [0.5],
        source=source,
        where=where,
        tolerance=tolerance,
        rtol=rtol,
        options=options,
        **option_values,
    )


__all__ = [
    "Quantiles",
    "median",
    "quantile_estimates",
    "quantile_search_local",
    "quantile_search_start",
    "quantile_search_step",
    "quantiles",
]

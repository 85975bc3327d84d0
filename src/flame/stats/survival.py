"""Federated survival analysis: Kaplan-Meier, the log-rank test and the Cox proportional-hazards model.

Event times never leave a node. Every statistic counts on a time grid the analyst declares
(``grid=[30, 60, 90, ...]`` or :func:`time_grid`), which is public: a record's time ``t`` is placed
at the first grid time ``>= t``; follow-up beyond the last grid time is cut there (the record counts
as censored at the last grid time). The federated estimate equals the pooled one on the same
quantised times (:func:`quantise` gives them, for a pooled check with lifelines).

What a node sends, per grid interval: the number of events and of records leaving the risk set
(events plus censorings), by group for Kaplan-Meier and the log-rank test; for the Cox model, at the
coefficients of the round, the sums over the records leaving in each interval of ``exp(x'b)``,
``x exp(x'b)`` and ``x x' exp(x'b)``, the same sums over its events (the Efron correction for ties),
and the sum of its events' covariates. The aggregator adds the nodes' interval sums and accumulates
them into risk-set sums, so its risk sets are the pooled ones: the model is the pooled Cox model
(not one stratified by node), and equals lifelines' fit (Efron ties) or statsmodels' PHReg
(``ties="breslow"``) on the quantised times.

Disclosure, judged on the node before anything leaves it: fewer records than the policy's
``min_records``; an interval with between 1 and ``min_cell_count - 1`` events, or with that few
records leaving the risk set (their sums would be those of a handful of patients; choose a coarser
grid or an earlier last grid time); for the Cox model also more parameters than
``max_parameter_ratio`` times the node's records, and a rare dummy column (as :mod:`flame.stats.glm`).
All are refused with :class:`~flame.errors.DisclosureRefusedError`. The cell rule also bounds the
intervals a node fills by its records over ``min_cell_count``; for the Cox model the node's
disclosure guard further refuses a grid of more intervals than ``max_parameter_ratio`` times the
node's records (its sums are typed statistics over ``n`` records).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flame.disclosure.policy import DisclosurePolicy
from flame.errors import AggregationError, ConfigurationError, DisclosureRefusedError
from flame.federated.options import FederationOptions
from flame.stats.framework import StatsAnalysis, Step, build_analysis
from flame.stats.glm import (
    Levels,
    LevelsFirst,
    check_design,
    complete_rows,
    declared_levels,
    forest_plot,
    model_matrices,
)
from flame.stats.results import StatsResult, axes
from flame.stats.source import Source, as_source

TIES = ("efron", "breslow")


# -- the grid ----------------------------------------------------------------------------------------


def time_grid(step: float, horizon: float) -> list[float]:
    """``[step, 2 step, ...]`` up to the first multiple of ``step`` at or beyond ``horizon``."""
    if not (step > 0 and math.isfinite(step) and horizon > 0 and math.isfinite(horizon)):
        raise ConfigurationError("survival: time_grid", f"step={step!r}, horizon={horizon!r}", "numbers > 0")
    count = math.ceil(horizon / step - 1e-9)
    return [step * (k + 1) for k in range(count)]


def check_grid(grid: Sequence[float] | np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``grid`` as a strictly increasing float array of positive times; :class:`ConfigurationError` else."""
    values = np.asarray(list(grid), dtype=float)
    if (
        values.ndim != 1
        or len(values) == 0
        or not np.isfinite(values).all()
        or (values <= 0).any()
        or (np.diff(values) <= 0).any()
    ):
        raise ConfigurationError(
            "survival: grid",
            f"is {list(grid)[:8]!r:.100}",
            "strictly increasing times > 0, the same on every node (e.g. time_grid(30, 1825))",
        )
    return values


def quantise(
    time: Sequence[float] | np.ndarray[Any, Any] | pd.Series,
    event: Sequence[Any] | np.ndarray[Any, Any] | pd.Series,
    grid: Sequence[float] | np.ndarray[Any, Any],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Times on ``grid`` and events as the federated statistics see them: ``(times, events)``.

    A time goes to the first grid time at or after it; beyond the last grid time, to the last one as
    censored.
    """
    points = check_grid(grid)
    _, events, index = _on_grid(np.asarray(time, dtype=float), np.asarray(event), points)
    return points[index], events


def _on_grid(
    times: np.ndarray[Any, Any], events: np.ndarray[Any, Any], grid: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    if not np.isfinite(times).all() or (times < 0).any():
        raise ConfigurationError("survival: time", "has negative or non-finite values", "times >= 0")
    flags = events.astype(float)
    if not np.isin(flags, (0.0, 1.0)).all():
        raise ConfigurationError("survival: event", "has values other than 0/1", "0/1 or booleans")
    index = np.searchsorted(grid, times, side="left")
    beyond = index >= len(grid)
    index[beyond] = len(grid) - 1
    flags = np.where(beyond, 0.0, flags)
    return times, flags.astype(np.int64), index


def _rows(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigurationError(
            "survival: columns",
            f"{', '.join(map(repr, missing))} not in this node's table",
            f"columns of the table ({', '.join(map(str, list(frame.columns)[:20]))})",
        )
    return frame.loc[frame[list(columns)].notna().all(axis=1), list(columns)]


def _check_cells(
    events: np.ndarray[Any, Any],
    leaving: np.ndarray[Any, Any],
    grid: np.ndarray[Any, Any],
    policy: DisclosurePolicy,
    what: str,
) -> None:
    minimum = policy.min_cell_count
    for name, counts in (("events", events), ("records leaving the risk set", leaving)):
        small = np.argwhere((counts > 0) & (counts < minimum))
        if len(small):
            k = int(small[0][-1])
            lower = 0.0 if k == 0 else float(grid[k - 1])
            raise DisclosureRefusedError(
                f"{what}: {int(counts[tuple(small[0])])} {name} in the grid interval ({lower:g}, {float(grid[k]):g}] on "
                f"this node, fewer than {minimum}; choose a coarser grid or an earlier last grid time",
                rule="min-cell-count",
                path=f"{'events' if name == 'events' else 'leaving'}[{k}]",
            )


def _check_records(n: int, policy: DisclosurePolicy, what: str) -> None:
    if 0 < n < policy.min_records:
        raise DisclosureRefusedError(
            f"{what}: {n} record(s) on this node; at least {policy.min_records} are needed",
            rule="min-records",
            path="n",
        )


# -- Kaplan-Meier and log-rank: counts per interval ---------------------------------------------------


def survival_local(
    frame: pd.DataFrame,
    time: str,
    event: str,
    grid: Sequence[float] | np.ndarray[Any, Any],
    group: str | None = None,
    policy: DisclosurePolicy | None = None,
) -> dict[str, Any]:
    """This node's events and records leaving the risk set per grid interval (and group).

    Returns ``{"n", "groups", "events", "leaving"}`` with ``events``/``leaving`` integer arrays of
    shape (groups, grid intervals); without ``group`` one group named ``"all"``.
    """
    policy = policy or DisclosurePolicy()
    points = check_grid(grid)
    columns = [time, event] + ([group] if group else [])
    rows = _rows(frame, columns)
    _, flags, index = _on_grid(rows[time].to_numpy(dtype=float), rows[event].to_numpy(), points)
    labels = rows[group].map(_plain).to_numpy() if group else np.array(["all"] * len(rows), dtype=object)
    groups = sorted(set(labels.tolist()), key=_sort_key)
    events = np.zeros((len(groups), len(points)), dtype=np.int64)
    leaving = np.zeros((len(groups), len(points)), dtype=np.int64)
    for g, label in enumerate(groups):
        mine = labels == label
        np.add.at(events[g], index[mine], flags[mine])
        np.add.at(leaving[g], index[mine], 1)
    _check_records(len(rows), policy, "survival")
    _check_cells(events, leaving, points, policy, "survival")
    return {"n": len(rows), "groups": groups, "events": events, "leaving": leaving}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def survival_combine(updates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The pooled counts of :func:`survival_local` updates over the union of the groups.

    Returns ``{"groups", "events", "leaving", "at_risk", "nodes"}``; ``at_risk[g, k]`` the records
    of group ``g`` at risk at grid time ``k``.
    """
    if not updates:
        raise AggregationError("survival_combine: no updates")
    ordered = sorted(updates.items())
    width = {np.asarray(u["events"]).shape[-1] for _, u in ordered}
    if len(width) != 1:
        raise AggregationError(f"survival_combine: the nodes counted on grids of {sorted(width)} intervals")
    intervals = width.pop()
    groups = sorted({_plain(g) for _, u in ordered for g in u["groups"]}, key=_sort_key)
    events = np.zeros((len(groups), intervals), dtype=np.int64)
    leaving = np.zeros((len(groups), intervals), dtype=np.int64)
    for node, update in ordered:
        node_events = np.asarray(update["events"], dtype=np.int64)
        node_leaving = np.asarray(update["leaving"], dtype=np.int64)
        if node_events.shape != (len(update["groups"]), intervals) or node_leaving.shape != node_events.shape:
            raise AggregationError(f"survival_combine: node {node!r} sent counts of the wrong shape")
        if (node_events < 0).any() or (node_leaving < node_events).any():
            raise AggregationError(f"survival_combine: node {node!r} sent impossible counts")
        for g, label in enumerate(update["groups"]):
            row = groups.index(_plain(label))
            events[row] += node_events[g]
            leaving[row] += node_leaving[g]
    at_risk = leaving.sum(axis=1, keepdims=True) - np.cumsum(leaving, axis=1) + leaving
    return {
        "groups": groups,
        "events": events,
        "leaving": leaving,
        "at_risk": at_risk,
        "nodes": {node: int(u["n"]) for node, u in ordered},
    }


def kaplan_meier_table(
    pooled: Mapping[str, Any], grid: Sequence[float] | np.ndarray[Any, Any], alpha: float = 0.05
) -> pd.DataFrame:
    """The Kaplan-Meier estimate per group at every grid time, with Greenwood confidence intervals.

    Columns ``group, time, at_risk, events, censored, survival, std_error, ci_lower, ci_upper``; the
    interval is the log(-log) one lifelines reports (``exp(-exp(log(-log S) ± z sqrt(V) / log S))``,
    ``V = sum d / (n (n - d))``), the standard error Greenwood's ``S sqrt(V)``.
    """
    from scipy import special

    points = check_grid(grid)
    z = float(special.ndtri(1.0 - alpha / 2.0))
    frames = []
    for g, label in enumerate(pooled["groups"]):
        d = np.asarray(pooled["events"][g], dtype=float)
        n = np.asarray(pooled["at_risk"][g], dtype=float)
        leaving = np.asarray(pooled["leaving"][g], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(n > 0, 1.0 - d / np.where(n > 0, n, 1.0), 1.0)
            s = np.cumprod(factor)
            terms = np.where((n > 0) & (n > d), d / (n * (n - d)), np.where(d > 0, np.inf, 0.0))
            v = np.cumsum(terms)
            log_s = np.log(s)
            spread = z * np.sqrt(v) / log_s
            lower = np.exp(-np.exp(np.log(-log_s) - spread))
            upper = np.exp(-np.exp(np.log(-log_s) + spread))
        lower = np.where(s >= 1.0, 1.0, lower)
        upper = np.where(s >= 1.0, 1.0, upper)
        frames.append(
            pd.DataFrame(
                {
                    "group": label,
                    "time": points,
                    "at_risk": n.astype(np.int64),
                    "events": d.astype(np.int64),
                    "censored": (leaving - d).astype(np.int64),
                    "survival": s,
                    "std_error": s * np.sqrt(v),
                    "ci_lower": np.minimum(lower, upper),
                    "ci_upper": np.maximum(lower, upper),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def logrank_test(pooled: Mapping[str, Any]) -> dict[str, Any]:
    """The log-rank test of equal survival across the groups of pooled counts.

    Returns ``{"groups", "observed", "expected", "statistic", "df", "p_value"}``: the chi-square
    statistic on ``groups - 1`` degrees of freedom with the hypergeometric variance, as lifelines'
    ``multivariate_logrank_test``.
    """
    from scipy import special

    d_g = np.asarray(pooled["events"], dtype=float)
    n_g = np.asarray(pooled["at_risk"], dtype=float)
    groups = list(pooled["groups"])
    if len(groups) < 2:
        raise AggregationError(f"logrank: needs at least two groups, the nodes hold {groups}")
    d = d_g.sum(axis=0)
    n = n_g.sum(axis=0)
    live = n > 0
    share = np.where(live, n_g / np.where(live, n, 1.0), 0.0)
    expected = (d * share).sum(axis=1)
    observed = d_g.sum(axis=1)
    spread = np.where(n > 1, d * (n - d) / np.where(n > 1, n - 1.0, 1.0), 0.0)
    k = len(groups)
    variance = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            variance[i, j] = np.sum(spread * share[i] * ((1.0 if i == j else 0.0) - share[j]))
    diff = (observed - expected)[:-1]
    statistic = float(diff @ np.linalg.solve(variance[:-1, :-1], diff))
    df = k - 1
    return {
        "groups": groups,
        "observed": observed,
        "expected": expected,
        "statistic": statistic,
        "df": df,
        "p_value": float(special.chdtrc(df, statistic)),
    }


# -- Cox proportional hazards: risk-set sums per interval ---------------------------------------------


def cox_design(
    frame: pd.DataFrame,
    formula: str,
    time: str,
    event: str,
    levels: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]]:
    """``(times, events, X, columns)`` of the complete rows: ``X`` codes ``formula`` (covariates only,
    e.g. ``"age + C(stage)"``) without an intercept, categories over ``levels``, as lifelines does."""
    rows = complete_rows(frame, f"{time} ~ {formula} + {event}")
    _, x, columns = model_matrices(rows, f"{time} ~ {formula}", levels)
    keep = [j for j, c in enumerate(columns) if c != "Intercept"]
    return (
        rows[time].to_numpy(dtype=float),
        rows[event].to_numpy(),
        x[:, keep],
        [columns[j] for j in keep],
    )


def cox_local(
    frame: pd.DataFrame,
    formula: str,
    time: str,
    event: str,
    grid: Sequence[float] | np.ndarray[Any, Any],
    beta: Sequence[float] | None,
    levels: Mapping[str, Sequence[Any]] | None = None,
    policy: DisclosurePolicy | None = None,
    *,
    design: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]] | None = None,
) -> dict[str, Any]:
    """This node's sums per grid interval at the coefficients ``beta`` (``None``: all zero).

    ``design``: the node's :func:`cox_design`, when already made (it does not change between rounds).

    Returns ``{"n", "columns", "events", "leaving", "s0", "s1", "s2", "e0", "e1", "e2", "x_events"}``:
    ``s*`` the sums of ``exp(x'b)``, ``x exp(x'b)``, ``x x' exp(x'b)`` over the records leaving the
    risk set in each interval, ``e*`` the same over its events, ``x_events`` the sum of the events'
    covariates.
    """
    policy = policy or DisclosurePolicy()
    points = check_grid(grid)
    times, raw_events, x, columns = (
        design if design is not None else cox_design(frame, formula, time, event, levels)
    )
    _, flags, index = _on_grid(times, raw_events, points)
    check_design(x, columns, policy)
    p = x.shape[1]
    coefficients = np.zeros(p) if beta is None else np.asarray(beta, dtype=float)
    if coefficients.shape != (p,):
        raise AggregationError(f"cox_local: {len(coefficients)} coefficients for {p} covariates")
    G = len(points)
    events = np.bincount(index, weights=flags, minlength=G).astype(np.int64)
    leaving = np.bincount(index, minlength=G).astype(np.int64)
    _check_records(len(times), policy, "cox")
    _check_cells(events, leaving, points, policy, "cox")
    risk = np.exp(np.clip(x @ coefficients, -700, 700))
    xr = x * risk[:, None]
    is_event = flags == 1
    # records sorted by interval: each interval's sums are those of one contiguous block
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(G + 1))
    s0, e0 = np.zeros(G), np.zeros(G)
    s1, e1 = np.zeros((G, p)), np.zeros((G, p))
    s2, e2 = np.zeros((G, p, p)), np.zeros((G, p, p))
    for k in range(G):
        block = order[bounds[k] : bounds[k + 1]]
        if not len(block):
            continue
        s0[k], s1[k], s2[k] = risk[block].sum(), xr[block].sum(axis=0), xr[block].T @ x[block]
        hit = block[is_event[block]]
        if len(hit):
            e0[k], e1[k], e2[k] = risk[hit].sum(), xr[hit].sum(axis=0), xr[hit].T @ x[hit]
    return {
        "n": len(times),
        "columns": columns,
        "events": events,
        "leaving": leaving,
        "s0": s0,
        "s1": s1,
        "s2": s2,
        "e0": e0,
        "e1": e1,
        "e2": e2,
        "x_events": x[is_event].sum(axis=0),
    }


def _total(updates: list[tuple[str, Mapping[str, Any]]], key: str, shape: tuple[int, ...]) -> Any:
    total = np.zeros(shape)
    for node, update in updates:
        value = np.asarray(update[key], dtype=float)
        if value.shape != shape or not np.isfinite(value).all():
            raise AggregationError(
                f"cox_combine: node {node!r} sent {key} of shape {value.shape}, not {shape}"
            )
        total = total + value
    return total


def cox_derivatives(
    updates: Mapping[str, Mapping[str, Any]],
    beta: Sequence[float] | np.ndarray[Any, Any],
    ties: str = "efron",
) -> tuple[float, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The pooled partial log-likelihood, its gradient and Hessian at ``beta`` from :func:`cox_local` sums."""
    if ties not in TIES:
        raise ConfigurationError("cox: ties", f"is {ties!r}", f"one of {', '.join(TIES)}")
    ordered = sorted(updates.items())
    columns = [str(c) for c in ordered[0][1]["columns"]]
    for node, update in ordered:
        if [str(c) for c in update["columns"]] != columns:
            raise AggregationError(
                f"cox_combine: node {node!r} has covariates {list(update['columns'])}, others {columns}; "
                "the nodes must code categories over the same levels"
            )
    p = len(columns)
    G = np.asarray(ordered[0][1]["events"]).shape[0]
    d = _total(ordered, "events", (G,))
    sums = {
        key: _total(ordered, key, (G, p, p) if key.endswith("2") else (G, p) if key.endswith("1") else (G,))
        for key in ("s0", "s1", "s2", "e0", "e1", "e2")
    }
    # risk-set sums at each grid time: everything leaving at or after it
    risk = {key: np.cumsum(sums[key][::-1], axis=0)[::-1] for key in ("s0", "s1", "s2")}
    coefficients = np.asarray(beta, dtype=float)
    loglik = float(coefficients @ _total(ordered, "x_events", (p,)))
    gradient = _total(ordered, "x_events", (p,))
    hessian = np.zeros((p, p))
    for k in np.flatnonzero(d > 0):
        count = round(float(d[k]))
        a = np.arange(count) / count if ties == "efron" else np.zeros(count)
        s0, s1, s2 = risk["s0"][k], risk["s1"][k], risk["s2"][k]
        e0, e1, e2 = sums["e0"][k], sums["e1"][k], sums["e2"][k]
        denominator = s0 - a * e0
        inv = 1.0 / denominator
        inv2 = inv * inv
        loglik -= float(np.sum(np.log(denominator)))
        gradient -= s1 * inv.sum() - e1 * (a * inv).sum()
        first = s2 * inv.sum() - e2 * (a * inv).sum()
        second = (
            np.outer(s1, s1) * inv2.sum()
            - (np.outer(s1, e1) + np.outer(e1, s1)) * (a * inv2).sum()
            + np.outer(e1, e1) * (a * a * inv2).sum()
        )
        hessian -= first - second
    return loglik, gradient, hessian


def cox_combine(
    updates: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Any] | None = None,
    *,
    ties: str = "efron",
    tol: float = 1e-10,
) -> dict[str, Any]:
    """The next Newton-Raphson state from the nodes' :func:`cox_local` sums at ``state["beta"]``.

    Returns ``{"beta", "evaluated", "columns", "logliks", "converged", "iterations", "hessian",
    "nodes", "events"}``: ``evaluated`` the coefficients the nodes used, ``beta`` the next ones (a
    Newton step, or half the last step back when the partial likelihood fell), ``converged`` when
    the relative change of the partial log-likelihood is below ``tol``.
    """
    if not updates:
        raise AggregationError("cox_combine: no updates")
    ordered = sorted(updates.items())
    p = len(ordered[0][1]["columns"])
    evaluated = np.zeros(p) if state is None else np.asarray(state["beta"], dtype=float)
    loglik, gradient, hessian = cox_derivatives(updates, evaluated, ties)
    logliks = [*(state or {}).get("logliks", []), loglik]
    previous = None if state is None else state.get("evaluated")
    if len(logliks) >= 2 and previous is not None and loglik < logliks[-2] - 1e-9 * abs(logliks[-2]):
        # the step overshot: go back half-way instead of trusting the derivatives here
        step_from = np.asarray(previous, dtype=float)
        beta = step_from + (evaluated - step_from) / 2.0
        converged = False
    else:
        information = -hessian
        size = np.sqrt(np.clip(np.diag(information), 0.0, None))
        step = np.full(p, np.nan)
        # singular when the covariates, each scaled to unit information, are (nearly) collinear
        if (size > 0).all() and np.linalg.cond(information / np.outer(size, size)) <= 1e12:
            with contextlib.suppress(np.linalg.LinAlgError):
                step = np.linalg.solve(information, gradient)
        if not np.isfinite(step).all():
            raise AggregationError(
                f"cox_combine: the Hessian of covariates {list(ordered[0][1]['columns'])} is singular: "
                "collinear covariates, a covariate constant over everyone at risk, or no events"
            )
        beta = evaluated + step
        # an observed change, not the one the next step predicts: the covariance is that of the
        # evaluated coefficients, which must be converged themselves
        converged = len(logliks) >= 2 and abs(logliks[-1] - logliks[-2]) / (abs(logliks[-1]) + 0.1) < tol
    return {
        "beta": beta.tolist(),
        "evaluated": evaluated.tolist(),
        "columns": [str(c) for c in ordered[0][1]["columns"]],
        "logliks": logliks,
        "converged": bool(converged),
        "iterations": len(logliks),
        "hessian": hessian.tolist(),
        "nodes": {node: int(u["n"]) for node, u in ordered},
        "events": int(sum(int(np.sum(u["events"])) for _, u in ordered)),
    }


@dataclass(frozen=True)
class CoxFit:
    """Coefficients, hazard ratios, standard errors, Wald z and confidence intervals of a Cox model."""

    formula: str
    columns: list[str]
    params: np.ndarray[Any, Any]
    cov: np.ndarray[Any, Any]
    loglik: float
    events: int
    nodes: dict[str, int] = field(default_factory=dict)
    iterations: int = 0
    converged: bool = True
    ties: str = "efron"
    alpha: float = 0.05

    @property
    def bse(self) -> np.ndarray[Any, Any]:
        return np.asarray(np.sqrt(np.diag(self.cov)))

    def table(self) -> pd.DataFrame:
        """coef, exp(coef), std_error, z, p_value, ci_lower, ci_upper per covariate column."""
        from scipy import special

        se = self.bse
        z = self.params / se
        quantile = float(special.ndtri(1.0 - self.alpha / 2.0))
        return pd.DataFrame(
            {
                "estimate": self.params,
                "hazard_ratio": np.exp(self.params),
                "std_error": se,
                "z": z,
                "p_value": 2.0 * special.ndtr(-np.abs(z)),
                "ci_lower": self.params - quantile * se,
                "ci_upper": self.params + quantile * se,
            },
            index=pd.Index(self.columns, name="covariate"),
        )


def cox_fit(state: Mapping[str, Any], formula: str, ties: str = "efron", alpha: float = 0.05) -> CoxFit:
    """The fitted model of a final :func:`cox_combine` state."""
    hessian = np.asarray(state["hessian"], dtype=float)
    return CoxFit(
        formula=formula,
        columns=list(state["columns"]),
        params=np.asarray(state["beta"], dtype=float),
        cov=np.linalg.inv(-hessian),
        loglik=float(state["logliks"][-1]),
        events=int(state["events"]),
        nodes=dict(state.get("nodes", {})),
        iterations=int(state["iterations"]),
        converged=bool(state["converged"]),
        ties=ties,
        alpha=alpha,
    )


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanMeier(StatsResult):
    """``kaplan_meier``: the survival curve per group at every grid time, with confidence intervals."""

    table: pd.DataFrame | None = None
    alpha: float = 0.05

    def to_frame(self) -> pd.DataFrame:
        """``group, time, at_risk, events, censored, survival, std_error, ci_lower, ci_upper``."""
        return pd.DataFrame() if self.table is None else self.table.copy()

    def median(self) -> pd.Series:
        """The median survival time per group: the first grid time with survival at or below 0.5
        (``inf`` where the curve stays above it)."""
        frame = self.to_frame()
        out = {}
        for group, rows in frame.groupby("group", sort=False):
            below = rows[rows["survival"] <= 0.5]
            out[group] = float(below["time"].iloc[0]) if len(below) else math.inf
        return pd.Series(out, name="median_survival")

    def summary(self) -> str:
        frame = self.to_frame()
        shown = frame[(frame["events"] > 0) | (frame["censored"] > 0)].set_index(["group", "time"])
        from flame.stats.results import format_summary

        return format_summary(self.title, shown, self.notes(), self.nodes, self.rounds)

    def notes(self) -> list[str]:
        medians = ", ".join(
            f"{g}: {m:g}" if math.isfinite(m) else f"{g}: not reached" for g, m in self.median().items()
        )
        return [
            f"Greenwood standard errors; {100 * (1 - self.alpha):g}% log(-log) confidence intervals "
            "(as lifelines); times on the declared grid",
            f"Median survival: {medians}",
        ]

    def plot(self, ax: Any = None) -> Any:
        """Step curves per group with their confidence bands."""
        ax = axes(ax)
        for group, rows in self.to_frame().groupby("group", sort=False):
            times = np.concatenate([[0.0], rows["time"].to_numpy(dtype=float)])
            survival = np.concatenate([[1.0], rows["survival"].to_numpy(dtype=float)])
            lower = np.concatenate([[1.0], rows["ci_lower"].to_numpy(dtype=float)])
            upper = np.concatenate([[1.0], rows["ci_upper"].to_numpy(dtype=float)])
            (line,) = ax.step(times, survival, where="post", label=str(group))
            ax.fill_between(times, lower, upper, step="post", alpha=0.2, color=line.get_color())
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("time")
        ax.set_ylabel("survival probability")
        ax.set_title(self.title)
        ax.legend()
        return ax


@dataclass(frozen=True)
class LogRank(StatsResult):
    """``logrank``: observed and expected events per group, the chi-square statistic and its p-value."""

    groups: list[Any] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    statistic: float = math.nan
    df: int = 0
    p_value: float = math.nan

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"observed": self.observed, "expected": self.expected},
            index=pd.Index(self.groups, name="group"),
        )

    def notes(self) -> list[str]:
        return [f"Log-rank chi-square {self.statistic:.6g} on {self.df} df, p = {self.p_value:.4g}"]


@dataclass(frozen=True)
class CoxResult(StatsResult):
    """``cox``: coefficients, hazard ratios and Wald tests as lifelines prints them."""

    fit: CoxFit | None = None

    def _fit(self) -> CoxFit:
        if self.fit is None:
            raise ConfigurationError("cox result", "holds no fit", "a result made by flame.stats.cox")
        return self.fit

    @property
    def params(self) -> pd.Series:
        """The log hazard ratios by covariate column."""
        return self.to_frame()["estimate"]

    @property
    def hazard_ratios(self) -> pd.Series:
        return self.to_frame()["hazard_ratio"]

    def to_frame(self) -> pd.DataFrame:
        return self._fit().table()

    def notes(self) -> list[str]:
        fit = self._fit()
        return [
            f"Partial log-likelihood {fit.loglik:.6f}; {fit.events} events; {fit.ties} ties; times on the "
            "declared grid",
            f"Newton-Raphson iterations: {fit.iterations}, "
            + ("converged" if fit.converged else "NOT converged within the round limit"),
        ]

    def plot(self, ax: Any = None) -> Any:
        """A forest plot of the log hazard ratios with their confidence intervals."""
        return forest_plot(self.to_frame(), self.title, ax)


# -- the steps and the analyses ----------------------------------------------------------------------


class SurvivalStep(Step):
    """Counts per grid interval (and group) in one round: Kaplan-Meier or the log-rank test."""

    def __init__(
        self, name: str, time: str, event: str, grid: list[float], group: str | None, alpha: float
    ) -> None:
        self.name = name
        self.time = time
        self.event = event
        self.grid = grid
        self.group = group
        self.alpha = alpha

    @property
    def title(self) -> str:
        by = f" by {self.group}" if self.group else ""
        return f"{self.name}({self.time}, {self.event}){by}"

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        return survival_local(frame, self.time, self.event, self.grid, self.group, policy)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        pooled = survival_combine(updates)
        return {
            key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in pooled.items()
        }

    def final(self, aggregate: Any) -> dict[str, Any]:
        if self.name == "logrank":
            test = logrank_test(aggregate)
            return {
                "nodes": aggregate["nodes"],
                "groups": test["groups"],
                "observed": test["observed"].tolist(),
                "expected": test["expected"].tolist(),
                "chi_square": test["statistic"],
                "df": test["df"],
                "p_value": test["p_value"],
            }
        return dict(aggregate)

    def interpret(self, final: Mapping[str, Any]) -> StatsResult:
        nodes = {str(k): int(v) for k, v in dict(final["nodes"]).items()}
        rounds = int(final["rounds"])
        if self.name == "logrank":
            return LogRank(
                self.title,
                nodes,
                rounds,
                list(final["groups"]),
                [float(v) for v in final["observed"]],
                [float(v) for v in final["expected"]],
                float(final["chi_square"]),
                int(final["df"]),
                float(final["p_value"]),
            )
        table = kaplan_meier_table(final, self.grid, self.alpha)
        return KaplanMeier(self.title, nodes, rounds, table, self.alpha)


class CoxStep(LevelsFirst):
    """Federated Newton-Raphson on pooled risk sets: one iteration per round."""

    name = "cox"

    def __init__(
        self,
        formula: str,
        time: str,
        event: str,
        grid: list[float],
        ties: str,
        levels: Levels | None,
        tol: float,
        max_iter: int,
        alpha: float,
    ) -> None:
        self.covariates = formula
        self.formula = f"{time} ~ {formula}"  # what local_levels reads: the covariates' variables
        self.time = time
        self.event = event
        self.grid = grid
        self.ties = ties
        self.levels = levels
        self.tol = tol
        self.alpha = alpha
        self.max_iter = max_iter
        self.max_rounds = max_iter + (1 if levels is None else 0)

    @property
    def title(self) -> str:
        return f"cox({self.covariates}; {self.time}, {self.event})"

    def sums(
        self, frame: pd.DataFrame, state: Mapping[str, Any] | None, levels: Levels, policy: DisclosurePolicy
    ) -> dict[str, Any]:
        beta = None if state is None else state["beta"]
        design = self.cached(
            frame, levels, lambda: cox_design(frame, self.covariates, self.time, self.event, levels)
        )
        return cox_local(
            frame, self.covariates, self.time, self.event, self.grid, beta, levels, policy, design=design
        )

    def fold(self, updates: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, Any]:
        return cox_combine(updates, state, ties=self.ties, tol=self.tol)

    def final(self, aggregate: Any) -> dict[str, Any]:
        if "iterations" not in aggregate:
            raise AggregationError("cox: the federation ended before the first iteration")
        fit = cox_fit(aggregate, self.covariates, self.ties, self.alpha)
        return {
            "nodes": dict(aggregate["nodes"]),
            "columns": fit.columns,
            "params": fit.params.tolist(),
            "cov": fit.cov.tolist(),
            "loglik": fit.loglik,
            "events": fit.events,
            "iterations": fit.iterations,
            "converged": fit.converged,
        }

    def interpret(self, final: Mapping[str, Any]) -> CoxResult:
        nodes = {str(k): int(v) for k, v in dict(final["nodes"]).items()}
        fit = CoxFit(
            formula=self.covariates,
            columns=list(final["columns"]),
            params=np.asarray(final["params"], dtype=float),
            cov=np.asarray(final["cov"], dtype=float),
            loglik=float(final["loglik"]),
            events=int(final["events"]),
            nodes=nodes,
            iterations=int(final["iterations"]),
            converged=bool(final["converged"]),
            ties=self.ties,
            alpha=self.alpha,
        )
        return CoxResult(self.title, nodes, int(final["rounds"]), fit)


def _grid_argument(grid: Sequence[float] | None) -> list[float]:
    if grid is None:
        raise ConfigurationError(
            "grid",
            "is missing",
            "the time grid every node counts on, e.g. grid=time_grid(30, 1825) (monthly over five years)",
        )
    return [float(v) for v in check_grid(grid)]


def _alpha(alpha: float) -> float:
    if not (0 < alpha < 1):
        raise ConfigurationError("alpha", f"is {alpha!r}", "a level between 0 and 1, e.g. 0.05")
    return float(alpha)


def kaplan_meier(
    time: str,
    event: str,
    *,
    source: Source | str,
    grid: Sequence[float],
    group: str | None = None,
    where: str | None = None,
    alpha: float = 0.05,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """The Kaplan-Meier estimate (per ``group``) with Greenwood confidence intervals, in one round.

    ``grid``: the public time grid every node counts on (see the module's description).
    """
    step = SurvivalStep("kaplan_meier", time, event, _grid_argument(grid), group, _alpha(alpha))
    return build_analysis(step, as_source(source, where), options=options, **option_values)


def logrank(
    time: str,
    event: str,
    group: str,
    *,
    source: Source | str,
    grid: Sequence[float],
    where: str | None = None,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """The log-rank test of equal survival across the levels of ``group``, in one round."""
    step = SurvivalStep("logrank", time, event, _grid_argument(grid), group, 0.05)
    return build_analysis(step, as_source(source, where), options=options, **option_values)


def cox(
    formula: str,
    *,
    time: str,
    event: str,
    source: Source | str,
    grid: Sequence[float],
    ties: str = "efron",
    where: str | None = None,
    levels: Mapping[str, Sequence[Any]] | None = None,
    tol: float = 1e-10,
    max_iter: int = 25,
    alpha: float = 0.05,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """The Cox proportional-hazards model of the covariates ``formula`` (e.g. ``"age + C(stage)"``).

    Newton-Raphson over pooled risk sets, one iteration per round, until the relative change of the
    partial log-likelihood is below ``tol``; ``ties`` ``"efron"`` (as lifelines) or ``"breslow"``.
    """
    if ties not in TIES:
        raise ConfigurationError("ties", f"is {ties!r}", f"one of {', '.join(TIES)}")
    if not isinstance(formula, str) or "~" in formula or not formula.strip():
        raise ConfigurationError(
            "cox: formula",
            f"is {formula!r:.80}",
            "covariates only, e.g. 'age + C(stage)' (time and event apart)",
        )
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ConfigurationError("max_iter", f"is {max_iter!r}", "an integer >= 1")
    step = CoxStep(
        formula,
        time,
        event,
        _grid_argument(grid),
        ties,
        declared_levels(levels),
        tol,
        max_iter,
        _alpha(alpha),
    )
    return build_analysis(step, as_source(source, where), options=options, **option_values)


__all__ = [
    "TIES",
    "CoxFit",
    "CoxResult",
    "CoxStep",
    "KaplanMeier",
    "LogRank",
    "SurvivalStep",
    "check_grid",
    "cox",
    "cox_combine",
    "cox_derivatives",
    "cox_design",
    "cox_fit",
    "cox_local",
    "kaplan_meier",
    "kaplan_meier_table",
    "logrank",
    "logrank_test",
    "quantise",
    "survival_combine",
    "survival_local",
    "time_grid",
]

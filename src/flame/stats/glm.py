"""Federated generalised linear models (Gaussian, binomial/logit, Poisson/log) by IRLS.

Each IRLS iteration is one federation round. For the coefficients ``beta`` the aggregator sent, every
node evaluates its rows and sends (:func:`glm_local`)::

    {"n", "xtwx": X'WX (p x p), "xtwz": X'Wz (p), "deviance", "pearson"}

the weighted cross-products of the working response ``z`` and the model matrix ``X`` at ``beta``, and
its deviance and Pearson chi-square there: sums over its records, never a record. The aggregator
adds them, solves ``X'WX beta' = X'Wz`` for the next coefficients and stops by its own criterion, the
relative change of the pooled deviance between two iterations (``|D_k - D_k-1| / (|D_k| + 0.1) <
tol``, as R's and statsmodels' IRLS), not after a fixed number of rounds (:func:`glm_combine`).
The reported coefficients are those of the last solve and the covariance is ``scale * (X'WX)^-1``
with the weights of the last iteration, as statsmodels reports them; the Gaussian scale is the
Pearson chi-square over the residual degrees of freedom, binomial and Poisson have scale 1. Wald
statistics are z (standard normal), as statsmodels' GLM.

Model matrices come from a Wilkinson formula (``formulaic``: ``y ~ age + C(stage) + age:sex``). They
must have the same columns on every node, so categorical variables (non-numeric columns, booleans,
and anything inside ``C(...)``) are coded over levels every node agrees on: either declared by the
analyst (``levels={"sex": ["f", "m"]}``), or agreed in a first round in which every node sends the
levels it holds, and only if each of them has at least the policy's ``min_cell_count`` records there
(the level names leave the node, their counts do not). The first level (sorted) is the reference.

Disclosure, judged on the node before anything leaves it: fewer records than the policy's
``min_records``; more parameters than ``max_parameter_ratio`` times the node's records (DataSHIELD's
``nfilter.glm``, default 0.33); and a 0/1 column of the model matrix (a dummy, or an interaction of
dummies) with between 1 and ``min_cell_count - 1`` records on the node (its row of ``X'WX`` would be
a sum over that handful of records) are refused with :class:`~flame.errors.DisclosureRefusedError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flame.disclosure.policy import DisclosurePolicy
from flame.errors import AggregationError, ConfigurationError, DisclosureRefusedError
from flame.federated.options import FederationOptions
from flame.stats.framework import StatsAnalysis, Step, build_analysis
from flame.stats.results import StatsResult, axes
from flame.stats.source import Source, as_source

FAMILIES = ("gaussian", "binomial", "poisson")

#: ``levels`` as they travel: variable -> its levels (strings, numbers or booleans), in coding order.
Levels = dict[str, list[Any]]

_C_CALL = re.compile(r"\bC\(\s*([A-Za-z_][A-Za-z0-9_]*)")
_EPS = 1e-10


# -- formulas and model matrices -------------------------------------------------------------------


def check_family(family: str) -> str:
    """``family`` as a known family name; :class:`ConfigurationError` otherwise."""
    name = str(family).lower()
    if name not in FAMILIES:
        raise ConfigurationError("glm: family", f"is {family!r}", f"one of {', '.join(FAMILIES)}")
    return name


def _formula(formula: str) -> Any:
    from formulaic import Formula

    if not isinstance(formula, str) or "~" not in formula:
        raise ConfigurationError(
            "glm: formula", f"is {formula!r:.80}", "a Wilkinson formula such as 'y ~ age + C(stage)'"
        )
    try:
        return Formula(formula)
    except Exception as exc:  # formulaic's own parse errors
        raise ConfigurationError("glm: formula", f"{formula!r} does not parse ({exc})", "a formula") from None


def formula_variables(formula: str) -> list[str]:
    """The columns a formula reads (sorted)."""
    return sorted(str(v) for v in _formula(formula).required_variables)


def categorical_variables(frame: pd.DataFrame, formula: str) -> list[str]:
    """The variables of ``formula`` coded as categories: non-numeric or boolean columns, and ``C(x)``
    (not the response, which must be numeric or boolean)."""
    response = formula.split("~", 1)[0].strip()
    names = [v for v in formula_variables(formula) if v in frame.columns and v != response]
    wrapped = set(_C_CALL.findall(formula))
    out = []
    for name in names:
        column = frame[name]
        if name in wrapped or pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            out.append(name)
    return out


def response_name(formula: str) -> str:
    """The left-hand side of ``formula`` (one column)."""
    lhs = formula.split("~", 1)[0].strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", lhs):
        raise ConfigurationError(
            "glm: formula", f"has response {lhs!r}", "one column name left of '~' (e.g. 'y ~ x')"
        )
    return lhs


def complete_rows(frame: pd.DataFrame, formula: str) -> pd.DataFrame:
    """The rows of ``frame`` with no missing value in a variable of ``formula``."""
    names = formula_variables(formula)
    missing = [v for v in names if v not in frame.columns]
    if missing:
        raise ConfigurationError(
            "glm: formula",
            f"reads {', '.join(map(repr, missing))}, not in this node's table",
            f"columns of the table ({', '.join(map(str, list(frame.columns)[:20]))})",
        )
    return frame.loc[frame[names].notna().all(axis=1), names]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def local_levels(frame: pd.DataFrame, formula: str, policy: DisclosurePolicy | None = None) -> Levels:
    """The levels of each categorical variable of ``formula`` on this node (complete rows only).

    Refuses (:class:`DisclosureRefusedError`, rule ``min-cell-count``) when a level has fewer than
    the policy's ``min_cell_count`` records: its name alone would say that a few such patients are here.
    """
    policy = policy or DisclosurePolicy()
    rows = complete_rows(frame, formula)
    out: Levels = {}
    for name in categorical_variables(rows, formula):
        counts = rows[name].value_counts()
        rare = [str(level) for level, count in counts.items() if 0 < count < policy.min_cell_count]
        if rare:
            raise DisclosureRefusedError(
                f"glm: level(s) {', '.join(rare[:5])} of {name!r} have fewer than "
                f"{policy.min_cell_count} records on this node; merge rare categories, or declare the "
                "levels (levels=...) and filter the rare ones out with where=",
                rule="min-cell-count",
                path=f"levels.{name}",
            )
        out[name] = sorted((_plain(v) for v in counts.index), key=_sort_key)
    return out


def union_of_levels(updates: Mapping[str, Levels]) -> Levels:
    """The sorted union of each variable's levels over the nodes' :func:`local_levels`."""
    out: dict[str, set[Any]] = {}
    for node, levels in sorted(updates.items()):
        if not isinstance(levels, Mapping):
            raise AggregationError(f"union_of_levels: node {node!r} sent {type(levels).__name__}, not levels")
        for name, values in levels.items():
            out.setdefault(str(name), set()).update(_plain(v) for v in values)
    return {name: sorted(values, key=_sort_key) for name, values in sorted(out.items())}


def model_matrices(
    frame: pd.DataFrame, formula: str, levels: Mapping[str, Sequence[Any]] | None = None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]]:
    """``(y, X, column names)`` of ``formula`` over the complete rows of ``frame``.

    Categorical variables are coded over ``levels`` (every node passes the same, so the columns are
    the same everywhere); a value outside them is an error, not a dropped row.
    """
    from formulaic import model_matrix

    rows = complete_rows(frame, formula).copy()
    levels = dict(levels or {})
    for name in categorical_variables(rows, formula):
        if name not in levels:
            raise ConfigurationError(
                f"glm: levels of {name!r}",
                "are not known",
                "levels agreed by the nodes or declared with levels={...}",
            )
    for name, values in levels.items():
        if name not in rows.columns:
            continue
        allowed = list(values)
        known = set(allowed)
        present = rows[name].astype(object)  # NumPy scalars as Python ones, as levels travel
        unknown = sorted((v for v in pd.unique(present) if v not in known), key=_sort_key)
        if unknown:
            raise ConfigurationError(
                f"glm: levels of {name!r}",
                f"do not include {', '.join(map(repr, unknown[:5]))}, which this node holds",
                "every level of the data among the declared levels",
            )
        rows[name] = pd.Categorical(present, categories=allowed)
    response = response_name(formula)
    rhs = formula.split("~", 1)[1]
    matrix = model_matrix(rhs, rows, na_action="raise")
    y = pd.to_numeric(rows[response], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(y).all():
        raise ConfigurationError(
            f"glm: response {response!r}", "is not numeric on this node", "a numeric or 0/1 column"
        )
    return y, np.asarray(matrix, dtype=float), [str(c) for c in matrix.columns]


def glm_design(
    frame: pd.DataFrame,
    formula: str,
    levels: Mapping[str, Sequence[Any]] | None = None,
    offset: str | None = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[str], np.ndarray[Any, Any]]:
    """``(y, X, column names, offset)`` of ``formula`` over the rows complete in it and in ``offset``.

    ``offset``: a column added to the linear predictor with coefficient 1 (for a Poisson rate, the
    log of the person-time); zeros without one.
    """
    if offset is None:
        y, x, columns = model_matrices(frame, formula, levels)
        return y, x, columns, np.zeros(len(y))
    if offset not in frame.columns:
        raise ConfigurationError(
            "glm: offset", f"{offset!r} is not a column of this node's table", "a column"
        )
    rows = frame.loc[frame[offset].notna()]
    y, x, columns = model_matrices(rows, formula, levels)
    shift = pd.to_numeric(rows.loc[complete_rows(rows, formula).index, offset], errors="coerce")
    values = shift.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ConfigurationError(
            "glm: offset", f"{offset!r} is not numeric and finite on this node", "numbers"
        )
    return y, x, columns, values


# -- the family: link, variance, deviance ------------------------------------------------------------


def _mean(family: str, eta: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if family == "gaussian":
        return eta
    if family == "binomial":
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(eta, -700, 700))))
    return np.asarray(np.exp(np.clip(eta, -700, 700)))


def _link(family: str, mu: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if family == "gaussian":
        return mu
    if family == "binomial":
        return np.asarray(np.log(mu / (1.0 - mu)))
    return np.asarray(np.log(mu))


def _variance(family: str, mu: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if family == "gaussian":
        return np.ones_like(mu)
    if family == "binomial":
        return np.asarray(mu * (1.0 - mu))
    return mu


def _dmu_deta(family: str, mu: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if family == "gaussian":
        return np.ones_like(mu)
    if family == "binomial":
        return np.asarray(mu * (1.0 - mu))
    return mu


def _xlogy(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.zeros_like(x)
    positive = x > 0
    out[positive] = x[positive] * np.log(y[positive])
    return out


def deviance(family: str, y: np.ndarray[Any, Any], mu: np.ndarray[Any, Any]) -> float:
    """The deviance of means ``mu`` for responses ``y``."""
    if family == "gaussian":
        return math.fsum((y - mu) ** 2)
    if family == "binomial":
        terms = _xlogy(y, y / mu) + _xlogy(1.0 - y, (1.0 - y) / (1.0 - mu))
        return 2.0 * math.fsum(terms)
    return 2.0 * math.fsum(_xlogy(y, y / mu) - (y - mu))


def _check_response(family: str, y: np.ndarray[Any, Any], name: str) -> None:
    if family == "binomial" and ((y < 0) | (y > 1)).any():
        raise ConfigurationError(
            f"glm(binomial): response {name!r}", "has values outside 0..1 on this node", "0/1 outcomes"
        )
    if family == "poisson" and (y < 0).any():
        raise ConfigurationError(
            f"glm(poisson): response {name!r}", "has negative values on this node", "counts >= 0"
        )


# -- the node's step ------------------------------------------------------------------------------


def check_design(x: np.ndarray[Any, Any], columns: Sequence[str], policy: DisclosurePolicy) -> None:
    """Refuse a model matrix this node must not send sums of (see the module's disclosure rules)."""
    n, p = x.shape
    if 0 < n < policy.min_records:
        raise DisclosureRefusedError(
            f"glm: {n} record(s) on this node; at least {policy.min_records} are needed",
            rule="min-records",
            path="n",
        )
    if n and p > policy.max_parameter_ratio * n:
        raise DisclosureRefusedError(
            f"glm: {p} parameters over {n} records on this node exceed {policy.max_parameter_ratio:g} per "
            "record (the policy's max_parameter_ratio); fit fewer terms or pool more records",
            rule="parameter-ratio",
            path="xtwx",
        )
    indicator = ((x == 0) | (x == 1)).all(axis=0)
    counts = (x != 0).sum(axis=0)
    for j in np.flatnonzero(indicator & (counts > 0) & (counts < policy.min_cell_count)).tolist():
        raise DisclosureRefusedError(
            f"glm: column {columns[j]!r} of the model matrix is 1 for {int(counts[j])} record(s) on this "
            f"node, fewer than {policy.min_cell_count}; merge rare categories or drop the term",
            rule="min-cell-count",
            path=f"xtwx.{columns[j]}",
        )


def glm_local(
    frame: pd.DataFrame,
    formula: str,
    family: str,
    beta: Sequence[float] | None,
    levels: Mapping[str, Sequence[Any]] | None = None,
    policy: DisclosurePolicy | None = None,
    *,
    offset: str | None = None,
    design: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[str], np.ndarray[Any, Any]] | None = None,
) -> dict[str, Any]:
    """One node's IRLS sums at ``beta`` (``None``: the family's usual start from the node's own data).

    ``offset``: a column added to the linear predictor (see :func:`glm_design`). ``design``: the
    node's :func:`glm_design`, when already made (it does not change from one iteration to the
    next). Returns ``{"n", "columns", "xtwx", "xtwz", "deviance", "pearson"}``.
    """
    family = check_family(family)
    policy = policy or DisclosurePolicy()
    y, x, columns, shift = design if design is not None else glm_design(frame, formula, levels, offset)
    check_design(x, columns, policy)
    _check_response(family, y, response_name(formula))
    if beta is None:
        # the family's usual start (statsmodels' and R's), from this node's responses
        mu = (y + 0.5) / 2.0 if family == "binomial" else (y + (y.mean() if len(y) else 0.0)) / 2.0
        if family == "poisson":
            mu = np.maximum(mu, _EPS)
        eta = _link(family, mu)
    else:
        coefficients = np.asarray(beta, dtype=float)
        if coefficients.shape != (x.shape[1],):
            raise AggregationError(
                f"glm_local: {len(coefficients)} coefficients for a model matrix of {x.shape[1]} columns"
            )
        eta = x @ coefficients + shift
        mu = _mean(family, eta)
        if family == "binomial":
            mu = np.clip(mu, _EPS, 1.0 - _EPS)
    gprime = _dmu_deta(family, mu)
    variance = _variance(family, mu)
    weights = gprime**2 / variance
    # the working response of the coefficients: without the offset, which has no coefficient
    z = eta + (y - mu) / gprime - shift
    xw = x * weights[:, None]
    return {
        "n": len(y),
        "columns": columns,
        "xtwx": xw.T @ x,
        "xtwz": xw.T @ z,
        "deviance": deviance(family, y, mu),
        "pearson": math.fsum((y - mu) ** 2 / variance),
    }


# -- the aggregator's step -----------------------------------------------------------------------------


def _sum_arrays(updates: Mapping[str, Mapping[str, Any]], key: str, shape: tuple[int, ...]) -> Any:
    total = np.zeros(shape)
    for node, update in sorted(updates.items()):
        value = np.asarray(update[key], dtype=float)
        if value.shape != shape or not np.isfinite(value).all():
            raise AggregationError(
                f"glm_combine: node {node!r} sent {key} of shape {value.shape}, not {shape}"
            )
        total = total + value
    return total


def glm_combine(
    updates: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Any] | None = None,
    *,
    tol: float = 1e-10,
) -> dict[str, Any]:
    """The next IRLS state from the nodes' :func:`glm_local` sums.

    ``state`` is the previous result of this function (``None`` at the first iteration). Returns
    ``{"beta", "columns", "deviances", "converged", "iterations", "n", "nodes", "xtwx", "pearson"}``:
    ``beta`` the solved coefficients, ``deviances`` the pooled deviance of every iteration (at the
    coefficients the nodes evaluated), ``converged`` whether the relative change of the last two is
    below ``tol``; ``xtwx`` and ``pearson`` those of the last iteration (for the covariance).
    """
    if not updates:
        raise AggregationError("glm_combine: no updates")
    ordered = sorted(updates.items())
    columns = [str(c) for c in ordered[0][1]["columns"]]
    for node, update in ordered:
        if [str(c) for c in update["columns"]] != columns:
            raise AggregationError(
                f"glm_combine: node {node!r} has model-matrix columns {list(update['columns'])}, "
                f"others {columns}; the nodes must code categories over the same levels"
            )
    p = len(columns)
    xtwx = _sum_arrays(updates, "xtwx", (p, p))
    xtwz = _sum_arrays(updates, "xtwz", (p,))
    nodes = {node: int(update["n"]) for node, update in ordered}
    dev = math.fsum(float(u["deviance"]) for _, u in ordered)
    pearson = math.fsum(float(u["pearson"]) for _, u in ordered)
    # singular when the columns, each scaled to unit weight, are (nearly) collinear: the condition of
    # the unscaled matrix would also flag well-posed models whose covariates differ in units
    size = np.sqrt(np.diag(xtwx))
    singular = not (size > 0).all()
    beta = None
    if not singular:
        singular = np.linalg.cond(xtwx / np.outer(size, size)) > 1e12
        try:
            beta = np.linalg.solve(xtwx, xtwz)
        except np.linalg.LinAlgError:
            singular = True
    if singular or beta is None or not np.isfinite(beta).all():
        raise AggregationError(
            f"glm_combine: the pooled X'WX of columns {columns} is singular: collinear terms, or a "
            "category without records at any node; drop or merge terms"
        )
    deviances = [*(state or {}).get("deviances", []), dev]
    # stop on an observed change, not on the one the next step predicts (the Newton decrement): the
    # covariance is that of the last evaluated coefficients, which must be converged themselves
    converged = len(deviances) >= 2 and abs(deviances[-1] - deviances[-2]) / (abs(deviances[-1]) + 0.1) < tol
    return {
        "beta": beta.tolist(),
        "columns": columns,
        "deviances": deviances,
        "converged": bool(converged),
        "iterations": len(deviances),
        "n": sum(nodes.values()),
        "nodes": nodes,
        "xtwx": xtwx.tolist(),
        "pearson": pearson,
    }


# -- the result ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GLMFit:
    """Coefficients, standard errors, Wald z statistics, p-values and confidence intervals of a GLM."""

    formula: str
    family: str
    columns: list[str]
    params: np.ndarray[Any, Any]
    cov: np.ndarray[Any, Any]
    scale: float
    deviance: float
    n: int
    nodes: dict[str, int] = field(default_factory=dict)
    iterations: int = 0
    converged: bool = True
    alpha: float = 0.05

    @property
    def df_resid(self) -> int:
        return self.n - len(self.columns)

    @property
    def bse(self) -> np.ndarray[Any, Any]:
        return np.asarray(np.sqrt(np.diag(self.cov)))

    def table(self) -> pd.DataFrame:
        """estimate, std_error, z, p_value, ci_lower, ci_upper per model-matrix column."""
        from scipy import special

        se = self.bse
        z = self.params / se
        quantile = float(special.ndtri(1.0 - self.alpha / 2.0))
        return pd.DataFrame(
            {
                "estimate": self.params,
                "std_error": se,
                "z": z,
                "p_value": 2.0 * special.ndtr(-np.abs(z)),
                "ci_lower": self.params - quantile * se,
                "ci_upper": self.params + quantile * se,
            },
            index=pd.Index(self.columns, name="term"),
        )


def glm_fit(state: Mapping[str, Any], formula: str, family: str, alpha: float = 0.05) -> GLMFit:
    """The fitted model of a final :func:`glm_combine` state."""
    family = check_family(family)
    xtwx = np.asarray(state["xtwx"], dtype=float)
    n = int(state["n"])
    p = len(state["columns"])
    scale = float(state["pearson"]) / (n - p) if family == "gaussian" and n > p else 1.0
    cov = scale * np.linalg.inv(xtwx)
    return GLMFit(
        formula=formula,
        family=family,
        columns=[str(c) for c in state["columns"]],
        params=np.asarray(state["beta"], dtype=float),
        cov=cov,
        scale=scale,
        deviance=float(state["deviances"][-1]),
        n=n,
        nodes=dict(state.get("nodes", {})),
        iterations=int(state["iterations"]),
        converged=bool(state["converged"]),
        alpha=alpha,
    )


@dataclass(frozen=True)
class GLMResult(StatsResult):
    """``glm``: the fitted model; ``to_frame()`` is the coefficient table as statsmodels prints it."""

    fit: GLMFit | None = None

    def _fit(self) -> GLMFit:
        if self.fit is None:
            raise ConfigurationError("glm result", "holds no fit", "a result made by flame.stats.glm")
        return self.fit

    @property
    def params(self) -> pd.Series:
        """The coefficients by model-matrix column."""
        return self.to_frame()["estimate"]

    @property
    def bse(self) -> pd.Series:
        """The standard errors by model-matrix column."""
        return self.to_frame()["std_error"]

    @property
    def cov_params(self) -> pd.DataFrame:
        """The covariance matrix of the coefficients."""
        fit = self._fit()
        return pd.DataFrame(fit.cov, index=fit.columns, columns=fit.columns)

    def to_frame(self) -> pd.DataFrame:
        return self._fit().table()

    def notes(self) -> list[str]:
        fit = self._fit()
        link = {"gaussian": "identity", "binomial": "logit", "poisson": "log"}[fit.family]
        lines = [
            f"Family: {fit.family} (link {link}); deviance {fit.deviance:.6g} on {fit.df_resid} residual "
            f"degrees of freedom; dispersion {fit.scale:.6g}",
            f"IRLS iterations: {fit.iterations}, "
            + ("converged" if fit.converged else "NOT converged within the round limit"),
            f"Wald z statistics; {100 * (1 - fit.alpha):g}% confidence intervals",
        ]
        return lines

    def plot(self, ax: Any = None, *, intercept: bool = False) -> Any:
        """A forest plot: each coefficient with its confidence interval (the intercept left out)."""
        return forest_plot(self.to_frame(), self.title, ax, drop=() if intercept else ("Intercept",))


def forest_plot(table: pd.DataFrame, title: str, ax: Any = None, drop: Sequence[str] = ()) -> Any:
    """Estimates with confidence intervals, one row per term, a line at zero."""
    ax = axes(ax)
    shown = table.drop(index=[t for t in drop if t in table.index])
    rows = np.arange(len(shown))[::-1]
    ax.errorbar(
        shown["estimate"],
        rows,
        xerr=[shown["estimate"] - shown["ci_lower"], shown["ci_upper"] - shown["estimate"]],
        fmt="o",
        capsize=3,
    )
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(rows)
    ax.set_yticklabels([str(t) for t in shown.index])
    ax.set_xlabel("estimate (confidence interval)")
    ax.set_title(title)
    return ax


class LevelsFirst(Step):
    """A model whose categorical variables need levels every node codes alike.

    Round 1 without declared levels: every node sends the levels it holds (:func:`local_levels`)
    and, when it holds no categorical variable, also its sums of the first iteration, so a model
    of numeric covariates spends no round on levels.
    """

    formula: str = ""
    levels: Levels | None = None
    #: iterations at most (the round for the levels comes on top)
    max_iter: int = 25

    def cached(self, frame: pd.DataFrame, levels: Levels, make: Any) -> Any:
        """``make()``, kept per node's table and levels: a node's model matrix is made once, not per
        round (in the local federation the step is shared by every node, so it is keyed by table)."""
        designs: dict[int, tuple[pd.DataFrame, str, Any]] = self.__dict__.setdefault("_designs", {})
        key = repr(sorted(levels.items()))
        entry = designs.get(id(frame))
        if entry is not None and entry[0] is frame and entry[1] == key:
            return entry[2]
        value = make()
        if len(designs) >= 64:
            designs.clear()
        designs[id(frame)] = (frame, key, value)
        return value

    def sums(
        self, frame: pd.DataFrame, state: Mapping[str, Any] | None, levels: Levels, policy: DisclosurePolicy
    ) -> dict[str, Any]:
        raise NotImplementedError

    def fold(self, updates: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def local(self, frame: pd.DataFrame, aggregate: Any, round: int, policy: DisclosurePolicy) -> Any:
        if aggregate is None:
            if self.levels is not None:
                return self.sums(frame, None, self.levels, policy)
            levels = local_levels(frame, self.formula, policy)
            if levels:
                return {"levels": levels}
            return {"levels": {}, **self.sums(frame, None, {}, policy)}
        state = aggregate if "iterations" in aggregate else None
        return self.sums(frame, state, dict(aggregate["levels"]), policy)

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any) -> Any:
        if previous is None:
            levels = self.levels
            if levels is None:
                levels = union_of_levels({node: u.get("levels", {}) for node, u in updates.items()})
                if levels or not all("n" in u for u in updates.values()):
                    return {"levels": levels}
            sums = {node: {k: v for k, v in u.items() if k != "levels"} for node, u in updates.items()}
            return {**self.fold(sums, None), "levels": levels}
        state = previous if "iterations" in previous else None
        return {**self.fold(updates, state), "levels": previous["levels"]}

    def converged(self, aggregate: Any, previous: Any, round: int) -> bool:
        """Done when the fit converged, or after ``max_iter`` iterations (the result says which)."""
        return bool(aggregate.get("converged", False)) or int(aggregate.get("iterations", 0)) >= self.max_iter


class GLMStep(LevelsFirst):
    """Federated IRLS: one iteration per round until the pooled deviance settles."""

    name = "glm"

    def __init__(
        self,
        formula: str,
        family: str,
        levels: Levels | None,
        tol: float,
        max_iter: int,
        alpha: float,
        offset: str | None = None,
    ) -> None:
        self.formula = formula
        self.family = family
        self.offset = offset
        self.levels = levels
        self.tol = tol
        self.alpha = alpha
        self.max_iter = max_iter
        self.max_rounds = max_iter + (1 if levels is None else 0)

    @property
    def title(self) -> str:
        offset = f", offset={self.offset}" if self.offset else ""
        return f"glm({self.formula}, family={self.family}{offset})"

    def sums(
        self, frame: pd.DataFrame, state: Mapping[str, Any] | None, levels: Levels, policy: DisclosurePolicy
    ) -> dict[str, Any]:
        beta = None if state is None else state["beta"]
        design = self.cached(frame, levels, lambda: glm_design(frame, self.formula, levels, self.offset))
        return glm_local(frame, self.formula, self.family, beta, levels, policy, design=design)

    def fold(self, updates: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, Any]:
        return glm_combine(updates, state, tol=self.tol)

    def final(self, aggregate: Any) -> dict[str, Any]:
        if "iterations" not in aggregate:
            raise AggregationError("glm: the federation ended before the first iteration")
        fit = glm_fit(aggregate, self.formula, self.family, self.alpha)
        return {
            "nodes": dict(aggregate["nodes"]),
            "columns": fit.columns,
            "params": fit.params.tolist(),
            "cov": fit.cov.tolist(),
            "scale": fit.scale,
            "deviance": fit.deviance,
            "iterations": fit.iterations,
            "converged": fit.converged,
        }

    def interpret(self, final: Mapping[str, Any]) -> GLMResult:
        nodes = {str(k): int(v) for k, v in dict(final["nodes"]).items()}
        fit = GLMFit(
            formula=self.formula,
            family=self.family,
            columns=list(final["columns"]),
            params=np.asarray(final["params"], dtype=float),
            cov=np.asarray(final["cov"], dtype=float),
            scale=float(final["scale"]),
            deviance=float(final["deviance"]),
            n=sum(nodes.values()),
            nodes=nodes,
            iterations=int(final["iterations"]),
            converged=bool(final["converged"]),
            alpha=self.alpha,
        )
        return GLMResult(self.title, nodes, int(final["rounds"]), fit)


def declared_levels(levels: Mapping[str, Sequence[Any]] | None) -> Levels | None:
    """``levels`` as an analyst declares them, checked: variable -> non-empty list of distinct levels."""
    if levels is None:
        return None
    if not isinstance(levels, Mapping) or not all(
        isinstance(v, Sequence) and not isinstance(v, str | bytes) and len(v) for v in levels.values()
    ):
        raise ConfigurationError(
            "levels", f"is {levels!r:.80}", "a mapping of variable to its levels, e.g. {'sex': ['f', 'm']}"
        )
    out: Levels = {}
    for name, values in levels.items():
        plain = [_plain(v) for v in values]
        if len({repr(v) for v in plain}) != len(plain):
            raise ConfigurationError(f"levels of {name!r}", "list a level twice", "each level once")
        out[str(name)] = plain
    return out


def glm(
    formula: str,
    source: Source | str,
    *,
    family: str = "gaussian",
    where: str | None = None,
    levels: Mapping[str, Sequence[Any]] | None = None,
    offset: str | None = None,
    tol: float = 1e-10,
    max_iter: int = 25,
    alpha: float = 0.05,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """A generalised linear model of ``formula`` over every node's rows, equal to the pooled fit.

    ``family``: ``"gaussian"`` (identity link), ``"binomial"`` (logit; a 0/1 response) or
    ``"poisson"`` (log). ``levels`` declares the levels of categorical variables (the first is the
    reference) and saves the round in which the nodes would report theirs. ``offset`` names a column
    added to the linear predictor (e.g. the log of person-years of a Poisson rate). IRLS stops when the
    relative change of the pooled deviance is below ``tol``, after ``max_iter`` iterations at most.
    """
    _formula(formula)
    response_name(formula)
    if not (0 < alpha < 1):
        raise ConfigurationError("alpha", f"is {alpha!r}", "a level between 0 and 1, e.g. 0.05")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ConfigurationError("max_iter", f"is {max_iter!r}", "an integer >= 1")
    if offset is not None and not (isinstance(offset, str) and offset):
        raise ConfigurationError("offset", f"is {offset!r}", "a column name")
    step = GLMStep(formula, check_family(family), declared_levels(levels), tol, max_iter, alpha, offset)
    return build_analysis(step, as_source(source, where), options=options, **option_values)


__all__ = [
    "FAMILIES",
    "GLMFit",
    "GLMResult",
    "GLMStep",
    "Levels",
    "LevelsFirst",
    "categorical_variables",
    "check_design",
    "check_family",
    "complete_rows",
    "declared_levels",
    "deviance",
    "forest_plot",
    "formula_variables",
    "glm",
    "glm_combine",
    "glm_design",
    "glm_fit",
    "glm_local",
    "local_levels",
    "model_matrices",
    "response_name",
    "union_of_levels",
]

"""flame.stats survival: Kaplan-Meier, log-rank and Cox equal lifelines (statsmodels for Breslow ties)
on the same grid-quantised times; nodes refuse intervals with a handful of events."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from statsmodels.duration.hazard_regression import PHReg

from flame import stats
from flame.errors import AggregationError, ConfigurationError, DisclosureRefusedError, FederationError
from flame.sim.synthetic import generate_study_patients
from flame.stats.glm import local_levels, union_of_levels
from flame.stats.survival import (
    cox_combine,
    cox_fit,
    cox_local,
    kaplan_meier_table,
    logrank_test,
    quantise,
    survival_combine,
    survival_local,
    time_grid,
)
from tests.stats_helpers import MID_FIT_DELAY, run_stats, run_stats_federation, split

SPLITS = {"3 nodes": [2000, 2000, 0], "5 uneven nodes": [600, 2400, 900, 1200, 0]}
#: half-years over three years: coarse enough that no node has an interval with 1 to 4 events
GRID = time_grid(183, 1096)


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    return generate_study_patients(6000, 5, site="pooled", missing=0.05)


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    """Continuous times (no ties before quantising), three arms, for the in-process checks."""
    rng = np.random.default_rng(2)
    n = 12_000
    frame = pd.DataFrame(
        {"age": rng.normal(60, 10, n), "arm": rng.choice(["a", "b", "c"], n), "bmi": rng.normal(27, 4, n)}
    )
    hazard = 0.002 * np.exp(
        0.03 * (frame["age"] - 60) + 0.4 * (frame["arm"] == "b") - 0.2 * (frame["arm"] == "c")
    )
    event_time = rng.exponential(1 / hazard)
    censor = rng.uniform(0, 1500, n)
    frame["time"] = np.minimum(event_time, censor)
    frame["event"] = (event_time <= censor).astype(int)
    return frame


def quantised(frame: pd.DataFrame, grid: list[float]) -> pd.DataFrame:
    times, events = quantise(frame["time"], frame["event"], grid)
    return frame.assign(time=times, event=events)


def assert_km_equals_lifelines(table: pd.DataFrame, frame: pd.DataFrame, group: str | None) -> float:
    """Largest difference of survival and interval bounds from lifelines at the observed times."""
    worst = 0.0
    labels = sorted(frame[group].dropna().unique()) if group else ["all"]
    for label in labels:
        rows = frame if group is None else frame[frame[group] == label]
        fitter = KaplanMeierFitter().fit(rows["time"], rows["event"])
        times = np.unique(rows["time"])
        ours = table[table["group"] == label].set_index("time").loc[times]
        bounds = fitter.confidence_interval_.loc[times]
        for column, reference in (
            ("survival", fitter.survival_function_.iloc[:, 0].loc[times]),
            ("ci_lower", bounds.iloc[:, 0]),
            ("ci_upper", bounds.iloc[:, 1]),
        ):
            np.testing.assert_allclose(ours[column].to_numpy(), reference.to_numpy(), rtol=1e-9, atol=1e-12)
            worst = max(worst, float(np.nanmax(np.abs(ours[column].to_numpy() - reference.to_numpy()))))
    return worst


def test_local_counts_give_lifelines_kaplan_meier_and_logrank(cohort: pd.DataFrame) -> None:
    grid = time_grid(100, 800)
    parts = split(cohort, [2500, 3500, 0])
    pooled_counts = survival_combine(
        {f"node-{i}": survival_local(p, "time", "event", grid, group="arm") for i, p in enumerate(parts)}
    )
    reference_rows = quantised(cohort, grid)
    assert assert_km_equals_lifelines(kaplan_meier_table(pooled_counts, grid), reference_rows, "arm") < 1e-9
    test = logrank_test(pooled_counts)
    reference = multivariate_logrank_test(
        reference_rows["time"], reference_rows["arm"], reference_rows["event"]
    )
    assert test["statistic"] == pytest.approx(reference.test_statistic, rel=1e-9)
    assert test["p_value"] == pytest.approx(reference.p_value, rel=1e-6)


def cox_in_process(
    parts: list[pd.DataFrame], formula: str, grid: list[float], ties: str
) -> tuple[pd.DataFrame, int]:
    levels = union_of_levels({f"node-{i}": local_levels(p, f"time ~ {formula}") for i, p in enumerate(parts)})
    state = None
    for _ in range(30):
        beta = None if state is None else state["beta"]
        updates = {
            f"node-{i}": cox_local(p, formula, "time", "event", grid, beta, levels)
            for i, p in enumerate(parts)
        }
        state = cox_combine(updates, state, ties=ties)
        if state["converged"]:
            break
    assert state is not None and state["converged"]
    return cox_fit(state, formula, ties).table(), int(state["iterations"])


def test_local_risk_set_sums_give_lifelines_cox_with_efron_ties(cohort: pd.DataFrame) -> None:
    grid = time_grid(30, 900)  # 30 intervals: many tied event times
    table, iterations = cox_in_process(split(cohort, [2500, 3500, 0]), "age + arm + bmi", grid, "efron")
    rows = quantised(cohort, grid)
    reference = CoxPHFitter().fit(
        rows[["time", "event", "age", "arm", "bmi"]],
        "time",
        "event",
        formula="age + arm + bmi",
        fit_options={"precision": 1e-12},
    )
    np.testing.assert_allclose(table["estimate"].loc[reference.params_.index], reference.params_, rtol=1e-6)
    np.testing.assert_allclose(
        table["std_error"].loc[reference.params_.index], reference.standard_errors_, rtol=1e-6
    )
    assert iterations <= 8


def test_breslow_ties_equal_statsmodels_phreg(cohort: pd.DataFrame) -> None:
    grid = time_grid(30, 900)
    table, _ = cox_in_process(split(cohort, [4000, 0]), "age + arm", grid, "breslow")
    rows = quantised(cohort, grid)
    design = pd.DataFrame(
        {"age": rows["age"], "b": (rows["arm"] == "b") * 1.0, "c": (rows["arm"] == "c") * 1.0}
    )
    reference = PHReg(rows["time"], design, status=rows["event"], ties="breslow").fit()
    np.testing.assert_allclose(table["estimate"].to_numpy(), reference.params, rtol=1e-6)
    np.testing.assert_allclose(table["std_error"].to_numpy(), reference.bse, rtol=1e-6)


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_federated_kaplan_meier_equals_lifelines(pooled: pd.DataFrame, sizes: list[int]) -> None:
    analysis = stats.kaplan_meier("time", "event", source="patients.csv", grid=GRID, group="group")
    result = await run_stats(analysis, split(pooled, sizes))
    assert assert_km_equals_lifelines(result.to_frame(), quantised(pooled, GRID), "group") < 1e-9
    assert result.rounds == 1 and result.n == len(pooled)
    assert "Greenwood" in result.summary()
    assert set(result.median().index) == {"A", "B"}


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_federated_logrank_equals_lifelines(pooled: pd.DataFrame, sizes: list[int]) -> None:
    analysis = stats.logrank("time", "event", "group", source="patients.csv", grid=GRID)
    result = await run_stats(analysis, split(pooled, sizes))
    rows = quantised(pooled, GRID)
    reference = multivariate_logrank_test(rows["time"], rows["group"], rows["event"])
    assert result.statistic == pytest.approx(reference.test_statistic, rel=1e-9)
    assert result.p_value == pytest.approx(reference.p_value, rel=1e-6)
    assert "Log-rank chi-square" in result.summary()


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_federated_cox_equals_lifelines(pooled: pd.DataFrame, sizes: list[int]) -> None:
    formula = "age + diabetes + group + bmi"
    analysis = stats.cox(
        formula, time="time", event="event", source="patients.csv", grid=GRID, where="age >= 30"
    )
    result = await run_stats(analysis, split(pooled, sizes))
    rows = quantised(pooled[pooled["age"] >= 30], GRID)[
        ["time", "event", "age", "diabetes", "group", "bmi"]
    ].dropna()
    reference = CoxPHFitter().fit(rows, "time", "event", formula=formula, fit_options={"precision": 1e-12})
    frame = result.to_frame()
    np.testing.assert_allclose(frame["estimate"].loc[reference.params_.index], reference.params_, rtol=1e-6)
    np.testing.assert_allclose(
        frame["std_error"].loc[reference.params_.index], reference.standard_errors_, rtol=1e-6
    )
    assert result.fit.loglik == pytest.approx(reference.log_likelihood_, rel=1e-9)
    assert result.n == len(rows) and result.rounds <= 8
    assert "efron ties" in result.summary()


def test_node_refuses_an_interval_with_few_events(pooled: pd.DataFrame) -> None:
    with pytest.raises(DisclosureRefusedError, match="fewer than 5") as refused:
        survival_local(pooled.head(300), "time", "event", time_grid(7, 1096))
    assert refused.value.rule == "min-cell-count"
    with pytest.raises(DisclosureRefusedError, match="fewer than 5"):
        cox_local(pooled.head(300), "age", "time", "event", time_grid(7, 1096), None)


async def test_federated_kaplan_meier_is_refused_on_a_fine_grid(pooled: pd.DataFrame) -> None:
    analysis = stats.kaplan_meier("time", "event", source="patients.csv", grid=time_grid(7, 1096))
    with pytest.raises(FederationError, match=r"fewer than 5; choose a coarser grid"):
        await run_stats(analysis, split(pooled.head(1200), [600, 0]))


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigurationError, match="grid"):
        stats.kaplan_meier("time", "event", source="patients.csv", grid=[30, 20])
    with pytest.raises(ConfigurationError, match="ties"):
        stats.cox("age", time="time", event="event", source="patients.csv", grid=GRID, ties="exact")
    with pytest.raises(ConfigurationError, match="covariates only"):
        stats.cox("time ~ age", time="time", event="event", source="patients.csv", grid=GRID)


def load_example(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_equals_its_pooled_check(tmp_path: Path) -> None:
    folder = Path(__file__).resolve().parents[1] / "examples" / "stats_survival"
    example = load_example(folder / "analysis.py", "stats_survival_example")
    pooled_check = load_example(folder / "pooled.py", "stats_survival_pooled_check")
    data = load_example(folder / "make_data.py", "stats_survival_make_data")
    study = pd.read_csv(data.write(tmp_path / "study.csv"))
    result = await run_stats(example.ANALYSIS, split(study, [1000, 1000, 0]))
    reference = pooled_check.pooled_cox(study)
    ours = result.to_frame().loc[reference.params_.index]
    np.testing.assert_allclose(ours["estimate"], reference.params_, rtol=1e-6)
    np.testing.assert_allclose(ours["std_error"], reference.standard_errors_, rtol=1e-6)
    curves = await run_stats(example.KAPLAN_MEIER, split(study, [1000, 1000, 0]))
    assert assert_km_equals_lifelines(curves.to_frame(), pooled_check.on_grid(study), "group") < 1e-9
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = curves.plot()
    assert [line.get_label() for line in ax.get_lines()] == ["A", "B"] and len(ax.collections) == 2
    assert result.plot().get_yticklabels()[0].get_text() == "age"


def test_a_step_that_lowers_the_partial_likelihood_is_halved(cohort: pd.DataFrame) -> None:
    grid = time_grid(30, 900)
    parts = split(cohort, [5000, 0])
    start = {f"node-{i}": cox_local(p, "age + bmi", "time", "event", grid, None) for i, p in enumerate(parts)}
    state = cox_combine(start)
    # pretend the last Newton step overshot far: the nodes evaluate a poor point
    state = {**state, "beta": [0.5, -0.5]}
    poor = {
        f"node-{i}": cox_local(p, "age + bmi", "time", "event", grid, [0.5, -0.5])
        for i, p in enumerate(parts)
    }
    halved = cox_combine(poor, state)
    assert halved["logliks"][-1] < halved["logliks"][-2]
    assert halved["beta"] == pytest.approx([0.25, -0.25]) and not halved["converged"]
    state = halved
    for _ in range(30):
        updates = {
            f"node-{i}": cox_local(p, "age + bmi", "time", "event", grid, state["beta"])
            for i, p in enumerate(parts)
        }
        state = cox_combine(updates, state)
        if state["converged"]:
            break
    rows = quantised(cohort, grid)[["time", "event", "age", "bmi"]]
    reference = CoxPHFitter().fit(rows, "time", "event", fit_options={"precision": 1e-12})
    np.testing.assert_allclose(
        cox_fit(state, "age + bmi").params, reference.params_[["age", "bmi"]], rtol=1e-6
    )


@pytest.mark.parametrize("statistic", ["logrank", "cox"])
async def test_federated_logrank_and_cox_are_refused_on_a_fine_grid(
    pooled: pd.DataFrame, statistic: str
) -> None:
    grid = time_grid(14, 1096)
    analysis = (
        stats.logrank("time", "event", "group", source="patients.csv", grid=grid)
        if statistic == "logrank"
        else stats.cox("age + group", time="time", event="event", source="patients.csv", grid=grid)
    )
    with pytest.raises(FederationError, match=r"fewer than 5; choose a coarser grid"):
        await run_stats(analysis, split(pooled.head(1200), [600, 0]))


def test_logrank_needs_two_groups(pooled: pd.DataFrame) -> None:
    counts = survival_combine({"node-1": survival_local(pooled, "time", "event", GRID)})
    with pytest.raises(AggregationError, match="two groups"):
        logrank_test(counts)


@pytest.mark.integration
async def test_an_aggregator_restarted_mid_fit_gives_the_same_cox_model(pooled: pd.DataFrame) -> None:
    # the Newton-Raphson state (coefficients, log-likelihoods) travels in the checkpointed aggregate
    analysis = stats.cox("age + group", time="time", event="event", source="patients.csv", grid=GRID)
    frames = split(pooled, [2000, 2000, 0])
    undisturbed = await run_stats_federation(analysis, frames)
    disturbed = await run_stats_federation(analysis, frames, faults=f"restart=aggregator@0.5;{MID_FIT_DELAY}")
    assert disturbed.ok, disturbed.report()
    assert disturbed.outcomes["aggregator"].incarnations == 2
    pd.testing.assert_frame_equal(
        analysis.interpret(disturbed.result).to_frame(), analysis.interpret(undisturbed.result).to_frame()
    )


def test_collinear_covariates_are_an_error(cohort: pd.DataFrame) -> None:
    frame = cohort.assign(twice_age=2 * cohort["age"])
    updates = {"node-1": cox_local(frame, "age + twice_age", "time", "event", time_grid(100, 800), None)}
    with pytest.raises(AggregationError, match="singular"):
        cox_combine(updates)

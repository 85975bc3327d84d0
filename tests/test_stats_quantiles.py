"""quantiles / median: within the stated precision of numpy on the pooled values; no node bin of 1 to 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flame import stats
from flame.disclosure import DisclosurePolicy, inspect
from flame.errors import ConfigurationError, FederationError
from flame.sim.synthetic import generate_study_patients
from tests.stats_helpers import MID_FIT_DELAY, run_stats, run_stats_federation, split

SPLITS = {"3 nodes": [600, 600, 0], "5 uneven nodes": [150, 700, 250, 400, 0]}
PROBS = [0.1, 0.25, 0.5, 0.75, 0.9]


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    frame = generate_study_patients(2000, 21, site="pooled", missing=0.05)
    frame["creatinine"] = np.random.default_rng(4).lognormal(0.0, 0.4, len(frame))  # continuous, skewed
    return frame


def check_against_numpy(result: Any, frame: pd.DataFrame, columns: list[str], probs: list[float]) -> None:
    table = result.to_frame()
    for column in columns:
        reference = np.quantile(frame[column].dropna(), probs)
        for q, expected in zip(probs, reference, strict=True):
            row = table.loc[(column, q)]
            assert abs(row["estimate"] - expected) <= row["precision"] + 1e-9 * abs(expected)
            assert row["lower"] <= expected <= row["upper"] or np.isclose(expected, row["upper"])
            assert row["n"] == frame[column].count()


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_quantiles_are_within_their_precision_of_numpy(pooled: pd.DataFrame, sizes: list[int]) -> None:
    columns = ["age", "bmi", "creatinine", "time"]
    result = await run_stats(stats.quantiles(columns, PROBS, source="patients.csv"), split(pooled, sizes))
    check_against_numpy(result, pooled, columns, PROBS)
    table = result.to_frame()
    # whole years: a bracket closes on the value itself, to the tolerance (1e-6 sd), unless a node
    # holds fewer than 5 patients of that age; then it stays within a year
    age = table.loc["age", "precision"]
    assert (age <= 1.0).all() and (age <= 1e-6 * pooled["age"].std()).sum() >= 3
    # continuous values: as precise as bins of at least 5 values per node allow, well below 5% of an sd
    assert (table.loc["creatinine", "precision"] < 0.05 * pooled["creatinine"].std()).all()
    assert 3 <= result.rounds <= 8
    assert "Federated search on counts" in result.summary()


async def test_the_median_of_a_subgroup(pooled: pd.DataFrame) -> None:
    analysis = stats.median("systolic_bp", source="patients.csv", where="diabetes == 1 and age >= 40")
    result = await run_stats(analysis, split(pooled, [700, 0]))
    rows = pooled[(pooled["diabetes"] == 1) & (pooled["age"] >= 40)]
    precision = result.to_frame().loc[("systolic_bp", 0.5), "precision"]
    assert (
        abs(result.value("systolic_bp") - np.median(rows["systolic_bp"])) <= precision <= 1.0
    )  # whole mm[Hg]


def test_every_release_passes_the_guard_and_no_bin_holds_one_to_four_values(pooled: pd.DataFrame) -> None:
    frames = split(pooled, [150, 700, 0])
    probs = [0.05, 0.5, 0.95]
    step = stats.quantiles(["creatinine", "bmi"], probs, source="x.csv").step
    assert step is not None
    policy = DisclosurePolicy()
    aggregate: Any = None
    for round in range(1, step.max_rounds + 1):
        updates = {f"n{i}": step.local(f, aggregate, round, policy) for i, f in enumerate(frames)}
        for update in updates.values():
            assert not inspect(update, policy).refusals
            for histogram in update.get("histograms", {}).values():
                counts = np.asarray(histogram["counts"])
                assert not ((counts > 0) & (counts < policy.min_cell_count)).any()
                assert "values" not in histogram  # counts and thresholds only
        aggregate = step.combine(updates, round, aggregate)
        if step.converged(aggregate, None, round):
            break
    result = step.interpret({**step.final(aggregate), "result_of": "quantiles", "rounds": round})
    check_against_numpy(result, pd.concat(frames), ["creatinine", "bmi"], probs)


def test_a_stricter_cell_rule_gives_coarser_brackets_that_still_hold(pooled: pd.DataFrame) -> None:
    frames = split(pooled, [500, 0])
    step = stats.quantiles("creatinine", [0.5], source="x.csv").step
    assert step is not None
    precision = {}
    for smallest in (5, 50):
        policy = DisclosurePolicy(min_cell_count=smallest)
        aggregate: Any = None
        for round in range(1, step.max_rounds + 1):
            updates = {f"n{i}": step.local(f, aggregate, round, policy) for i, f in enumerate(frames)}
            aggregate = step.combine(updates, round, aggregate)
            if step.converged(aggregate, None, round):
                break
        estimate = stats.quantile_estimates(aggregate, [0.5])["creatinine"][0]
        assert abs(estimate["estimate"] - np.median(pooled["creatinine"])) <= estimate["precision"] + 1e-12
        precision[smallest] = estimate["precision"]
    assert precision[50] > precision[5]


async def test_quantiles_over_three_values_on_a_node_are_refused(pooled: pd.DataFrame) -> None:
    node_2 = pooled.iloc[700:1000].copy()
    node_2["bmi"] = [25.0, 26.5, 31.0] + [np.nan] * (len(node_2) - 3)  # three bmi values on node 2
    with pytest.raises(FederationError, match=r"min-records.*over 3 record"):
        await run_stats(stats.median("bmi", source="patients.csv"), [pooled.head(700), node_2])


def test_constant_columns_and_bad_arguments() -> None:
    frame = pd.DataFrame({"x": [7.0] * 20})
    updates = {
        "a": stats.quantile_search_local(frame, ["x"], None),
        "b": stats.quantile_search_local(frame, ["x"], None),
    }
    search = stats.quantile_search_start(updates, [0.5])
    assert stats.quantile_estimates(search, [0.5])["x"][0]["estimate"] == 7.0
    with pytest.raises(ConfigurationError, match="probs"):
        stats.quantiles("x", [1.5], source="x.csv")
    with pytest.raises(ConfigurationError, match="bins"):
        stats.quantiles("x", source="x.csv", bins=1)


@pytest.mark.integration
@pytest.mark.parametrize("restarted", ["node-2", "aggregator"])
async def test_a_restart_in_the_middle_of_the_search_gives_the_same_quantiles(
    pooled: pd.DataFrame, restarted: str
) -> None:
    # the nodes keep no state: a restarted one replays the thresholds of the earlier rounds
    analysis = stats.quantiles(["age", "bmi", "creatinine"], PROBS, source="patients.csv")
    frames = split(pooled, [600, 600, 0])
    undisturbed = await run_stats_federation(analysis, frames)
    disturbed = await run_stats_federation(
        analysis, frames, faults=f"restart={restarted}@0.5;{MID_FIT_DELAY}"
    )
    assert disturbed.ok, disturbed.report()
    assert disturbed.outcomes[restarted].incarnations == 2
    pd.testing.assert_frame_equal(
        analysis.interpret(disturbed.result).to_frame(), analysis.interpret(undisturbed.result).to_frame()
    )


async def test_a_search_cut_by_max_rounds_says_so_instead_of_a_wrong_answer(pooled: pd.DataFrame) -> None:
    analysis = stats.median("bmi", source="patients.csv").with_options(max_rounds=2)
    result = await run_stats(analysis, split(pooled, [900, 0]))
    assert result.rounds == 2 and not result.complete
    assert "cut at 2 round(s) (max_rounds)" in result.summary()
    row = result.to_frame().loc[("bmi", 0.5)]
    assert row["lower"] <= np.median(pooled["bmi"].dropna()) <= row["upper"]  # wide, but true


async def test_the_nodes_use_their_own_policy_s_cell_minimum(pooled: pd.DataFrame, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"min_cell_count": 60}))
    analysis = stats.median("creatinine", source="patients.csv")
    frames = split(pooled, [1000, 0])
    default = (await run_stats(analysis, frames)).to_frame().loc[("creatinine", 0.5)]
    strict = (await run_stats(analysis, frames, policy=str(policy))).to_frame().loc[("creatinine", 0.5)]
    expected = np.median(pooled["creatinine"])
    for row in (default, strict):
        assert abs(row["estimate"] - expected) <= row["precision"]
    assert strict["precision"] > 3 * default["precision"]  # bins of 60 values per node, not 5

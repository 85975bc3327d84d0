"""describe, crosstab, corr and cov: federated equals pooled (pandas/numpy), and the policy refuses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flame import stats
from flame.disclosure import DisclosurePolicy, inspect
from flame.errors import ConfigurationError, FederationError
from flame.sim.synthetic import generate_study_patients
from tests.stats_helpers import run_stats, split

#: the uneven 5-node split (the last node takes the rest)
SPLITS = {"3 nodes": [400, 400, 0], "5 uneven nodes": [60, 700, 90, 250, 0]}


def study(n: int = 1500, seed: int = 3) -> pd.DataFrame:
    return generate_study_patients(n, seed, site="pooled", missing=0.05)


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    return study()


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_describe_equals_pandas_on_the_pooled_rows(pooled: pd.DataFrame, sizes: list[int]) -> None:
    columns = ["age", "bmi", "cholesterol", "systolic_bp"]
    analysis = stats.describe(columns, "patients.csv", where="age >= 25", extremes=True)
    result = await run_stats(analysis, split(pooled, sizes))
    selected = pooled[pooled["age"] >= 25]
    frame = result.to_frame()
    for column in columns:
        assert frame.loc[column, "n"] == selected[column].count()
        assert frame.loc[column, "missing"] == selected[column].isna().sum()
        assert frame.loc[column, "mean"] == pytest.approx(selected[column].mean(), rel=1e-12)
        assert frame.loc[column, "sd"] == pytest.approx(selected[column].std(ddof=1), rel=1e-12)
        assert np.isnan(frame.loc[column, "min"]) and np.isnan(frame.loc[column, "max"])
    assert result.n == len(selected) and len(result.nodes) == len(sizes)
    text = result.summary()
    assert "describe(age, bmi, cholesterol, systolic_bp)" in text and f"{len(selected)} in total" in text
    # min and max are single records' values: every (enforcing) node withheld them
    assert len(result.extremes_withheld) == len(sizes) and "min/max withheld" in text


def test_min_and_max_leave_a_node_only_under_a_policy_that_does_not_enforce(pooled: pd.DataFrame) -> None:
    trying = DisclosurePolicy(mode="warn")
    parts = {"n1": pooled.head(700), "n2": pooled.iloc[700:]}
    updates = {n: stats.describe_local(f, ["bmi"], extremes=True, policy=trying) for n, f in parts.items()}
    findings = inspect(updates["n1"], trying).findings
    assert {(f.rule, f.outcome) for f in findings} >= {("min-records", "warned")}  # labelled as one record
    assert inspect(updates["n1"], DisclosurePolicy()).refusals  # an enforcing guard would refuse them
    row = stats.describe_combine(updates)["columns"]["bmi"]
    assert (row["min"], row["max"]) == (pooled["bmi"].min(), pooled["bmi"].max())
    enforcing = stats.describe_local(pooled, ["bmi"], extremes=True, policy=DisclosurePolicy())
    assert enforcing["extremes"] == "withheld"
    mixed = stats.describe_combine({"n1": updates["n1"], "n2": enforcing})
    assert np.isnan(mixed["columns"]["bmi"]["min"]) and mixed["extremes_withheld"] == ["n2"]


async def test_describe_of_a_parquet_object_without_extremes_sends_no_single_values(
    pooled: pd.DataFrame,
) -> None:
    update = stats.describe_local(pooled, ["age"])
    assert "extremes" not in update
    result = await run_stats(stats.describe("age", "patients.parquet"), split(pooled, [500, 0]))
    assert list(result.to_frame().columns) == ["n", "missing", "mean", "sd"]
    assert result.to_frame().loc["age", "mean"] == pytest.approx(pooled["age"].mean(), rel=1e-12)


async def test_describe_over_three_rows_is_refused_by_the_node(pooled: pd.DataFrame) -> None:
    # node-2 has three patients aged 85+: its summary is over fewer than min_records (5) values
    old = pooled[pooled["age"] >= 85].head(3)
    parts = [pooled.head(400), pd.concat([pooled.iloc[400:800][pooled.iloc[400:800]["age"] < 85], old])]
    with pytest.raises(FederationError, match=r"min-records.*over 3 record"):
        await run_stats(stats.describe("bmi", "patients.csv", where="age >= 85"), parts)


@pytest.mark.parametrize(
    ("sizes", "row", "column"),
    [(SPLITS["3 nodes"], "stage", "group"), (SPLITS["5 uneven nodes"], "smoker", "gender")],
    ids=SPLITS.keys(),
)
async def test_crosstab_equals_pandas_crosstab(
    pooled: pd.DataFrame, sizes: list[int], row: str, column: str
) -> None:
    result = await run_stats(stats.crosstab(row, column, source="patients.csv"), split(pooled, sizes))
    expected = pd.crosstab(pooled[row], pooled[column])
    pd.testing.assert_frame_equal(result.to_frame(), expected, check_names=False, check_dtype=False)
    assert result.rounds == 2  # the levels first, then the table
    assert result.missing == pooled[[row, column]].isna().any(axis=1).sum()


async def test_crosstab_of_one_variable_with_given_levels_takes_one_round(pooled: pd.DataFrame) -> None:
    analysis = stats.crosstab("gender", source="patients.csv", row_levels=["female", "male"])
    result = await run_stats(analysis, split(pooled, [700, 0]))
    counts = pooled["gender"].value_counts()
    assert result.to_frame()["n"].to_dict() == {"female": counts["female"], "male": counts["male"]}
    assert result.rounds == 1


async def test_a_crosstab_cell_of_two_is_refused_by_the_node(pooled: pd.DataFrame) -> None:
    node_2 = pooled.iloc[500:900].copy()
    node_2["group"] = "A"
    node_2.iloc[:2, node_2.columns.get_loc("group")] = "B"  # two patients in arm B on node 2
    with pytest.raises(FederationError, match=r"min-cell-count.*a cell of 2"):
        await run_stats(stats.crosstab("group", source="patients.csv"), [pooled.head(500), node_2])


def test_a_node_with_a_suppressing_policy_sends_missing_cells_and_the_table_says_so() -> None:
    frame = pd.DataFrame({"sex": ["f"] * 20 + ["m"] * 3, "arm": ["A"] * 10 + ["B"] * 10 + ["A"] * 3})
    update = stats.crosstab_local(frame, "sex", "arm", ["f", "m"], ["A", "B"])
    released = inspect(update, DisclosurePolicy(small_cells="suppress")).value
    other = stats.crosstab_local(frame.iloc[:20], "sex", "arm", ["f", "m"], ["A", "B"])
    combined = stats.crosstab_combine({"n1": released, "n2": other})
    assert np.isnan(combined["counts"][1, 0]) and combined["counts"][0, 0] == 20
    step = stats.crosstab("sex", "arm", source="x.csv").step
    assert step is not None
    table = step.interpret({**combined, "result_of": "crosstab", "rounds": 2})
    assert table.suppressed == 1 and "suppressed by a node's disclosure policy" in table.summary()


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_corr_and_cov_equal_the_pooled_matrices(pooled: pd.DataFrame, sizes: list[int]) -> None:
    columns = ["age", "bmi", "systolic_bp", "cholesterol", "smoker"]
    complete = pooled[columns].dropna()
    result = await run_stats(stats.corr(columns, "patients.csv"), split(pooled, sizes))
    np.testing.assert_allclose(
        result.to_frame().to_numpy(), complete.corr().to_numpy(), rtol=1e-12, atol=1e-14
    )
    assert result.complete == len(complete)
    covariance = await run_stats(stats.cov(columns, "patients.csv"), split(pooled, sizes))
    np.testing.assert_allclose(covariance.to_frame().to_numpy(), np.cov(complete.to_numpy().T), rtol=1e-12)


def test_corr_pair_tests_equal_scipy_pearsonr(pooled: pd.DataFrame) -> None:
    from scipy import stats as scipy_stats

    complete = pooled[["age", "systolic_bp"]].dropna()
    updates = {
        f"n{i}": stats.crossproducts_local(part, ["age", "systolic_bp"])
        for i, part in enumerate(split(complete, [300, 0]))
    }
    step = stats.corr(["age", "systolic_bp"], "x.csv").step
    assert step is not None
    aggregate = step.combine(updates, 1, None)
    result = step.interpret({**step.final(aggregate), "result_of": "corr", "rounds": 1})
    reference = scipy_stats.pearsonr(complete["age"], complete["systolic_bp"])
    row = result.tests().iloc[0]
    assert row["r"] == pytest.approx(reference.statistic, rel=1e-12)
    assert row["P>|t|"] == pytest.approx(reference.pvalue, rel=1e-9)
    low, high = reference.confidence_interval(0.95)
    assert (row["[0.025"], row["0.975]"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_a_corr_over_few_rows_is_refused_by_the_guard(pooled: pd.DataFrame) -> None:
    update = stats.crossproducts_local(pooled.head(4), ["age", "bmi"])
    refusals = inspect(update, DisclosurePolicy()).refusals
    assert refusals and refusals[0].rule == "min-records"
    update = stats.crossproducts_local(pooled.head(40), ["age", "bmi", "systolic_bp", "cholesterol"])
    assert not inspect(update, DisclosurePolicy()).refusals
    assert inspect(update, DisclosurePolicy(max_parameter_ratio=0.05)).refusals[0].rule == "parameter-ratio"


def test_the_plots_draw(pooled: pd.DataFrame) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    updates = {"n": stats.crossproducts_local(pooled, ["age", "bmi"])}
    step = stats.corr(["age", "bmi"], "x.csv").step
    assert step is not None
    result = step.interpret({**step.final(step.combine(updates, 1, None)), "result_of": "corr", "rounds": 1})
    assert result.plot() is not None


def test_every_result_draws_and_says_what_to_install_without_matplotlib(
    pooled: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    frames = {"n1": pooled.head(700), "n2": pooled.iloc[700:]}
    results = []
    for analysis, rounds in (
        (stats.describe(["age", "bmi"], "x.csv"), 1),
        (
            stats.crosstab(
                "stage",
                "group",
                source="x.csv",
                row_levels=["I", "II", "III", "IV"],
                column_levels=["A", "B"],
            ),
            1,
        ),
        (stats.quantiles("age", [0.5], source="x.csv"), 8),
    ):
        step = analysis.step
        assert step is not None
        aggregate = None
        for round in range(1, rounds + 1):
            value = step.combine(
                {n: step.local(f, aggregate, round, DisclosurePolicy()) for n, f in frames.items()},
                round,
                aggregate,
            )
            aggregate = value
            if step.converged(value, None, round):
                break
        results.append(step.interpret({**step.final(aggregate), "result_of": step.name, "rounds": round}))
    for result in results:
        assert result.plot() is not None
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.pyplot", None)
    with pytest.raises(ConfigurationError, match=r"needs matplotlib.*flame-python-sdk\[plot\]"):
        results[0].plot()

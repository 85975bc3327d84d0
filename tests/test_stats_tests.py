"""Welch and paired t-tests, chi-square and Fisher's exact test: federated equals scipy.stats on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from flame import stats
from flame.disclosure import DisclosurePolicy, inspect
from flame.errors import AggregationError, ConfigurationError, FederationError
from flame.sim.synthetic import generate_study_patients
from tests.stats_helpers import run_stats, split

SPLITS = {"3 nodes": [800, 800, 0], "5 uneven nodes": [300, 1200, 400, 600, 0]}


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    return generate_study_patients(3000, 11, site="pooled", missing=0.05)


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_welch_t_test_equals_scipy(pooled: pd.DataFrame, sizes: list[int]) -> None:
    result = await run_stats(stats.ttest("bmi", "group", source="patients.csv"), split(pooled, sizes))
    a = pooled.loc[pooled["group"] == "A", "bmi"].dropna()
    b = pooled.loc[pooled["group"] == "B", "bmi"].dropna()
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result.estimate == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.df == pytest.approx(reference.df, rel=1e-10)
    low, high = reference.confidence_interval(0.95)
    assert result.ci == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    assert "Welch's t-test" in result.summary() and "P>|t|" in result.summary()


async def test_welch_one_sided_with_given_groups_equals_scipy(pooled: pd.DataFrame) -> None:
    analysis = stats.ttest(
        "systolic_bp",
        "diabetes",
        source="patients.csv",
        groups=[1, 0],
        alternative="greater",
        where="age > 30",
    )
    result = await run_stats(analysis, split(pooled, [500, 0]))
    rows = pooled[pooled["age"] > 30]
    reference = scipy_stats.ttest_ind(
        rows.loc[rows["diabetes"] == 1, "systolic_bp"],
        rows.loc[rows["diabetes"] == 0, "systolic_bp"],
        equal_var=False,
        alternative="greater",
    )
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.ci[0] == pytest.approx(reference.confidence_interval(0.95).low, rel=1e-10)


def test_welch_needs_two_groups_and_refuses_a_small_one(pooled: pd.DataFrame) -> None:
    update = stats.group_summaries_local(pooled, "bmi", "stage", None)
    with pytest.raises(AggregationError, match=r"levels 'I', 'II', 'III', 'IV'.*give groups="):
        stats.welch_combine({"n1": update})
    few = pooled.head(300).copy()
    few.loc[few.index[:3], "group"] = "C"  # a group of three on this node
    refusals = inspect(
        stats.group_summaries_local(few, "bmi", "group", ["A", "C"]), DisclosurePolicy()
    ).refusals
    assert refusals and refusals[0].rule == "min-records" and "over 3 record" in refusals[0].detail
    with pytest.raises(ConfigurationError, match="two levels"):
        stats.ttest("bmi", "group", source="p.csv", groups=["A"])


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_paired_t_test_equals_scipy(pooled: pd.DataFrame, sizes: list[int]) -> None:
    analysis = stats.ttest_paired("systolic_bp", "systolic_bp_followup", source="patients.csv")
    result = await run_stats(analysis, split(pooled, sizes))
    reference = scipy_stats.ttest_rel(pooled["systolic_bp"], pooled["systolic_bp_followup"])
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.df == reference.df
    low, high = reference.confidence_interval(0.95)
    assert result.ci == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))


def test_a_paired_t_test_over_four_pairs_is_refused_by_the_guard(pooled: pd.DataFrame) -> None:
    update = stats.differences_local(pooled.head(4), "systolic_bp", "systolic_bp_followup")
    assert inspect(update, DisclosurePolicy()).refusals[0].rule == "min-records"


@pytest.mark.parametrize(
    ("sizes", "row", "column"),
    [(SPLITS["3 nodes"], "stage", "group"), (SPLITS["5 uneven nodes"], "gender", "diabetes")],
    ids=SPLITS.keys(),
)
async def test_chi_square_test_equals_scipy(
    pooled: pd.DataFrame, sizes: list[int], row: str, column: str
) -> None:
    result = await run_stats(stats.chi2_test(row, column, source="patients.csv"), split(pooled, sizes))
    table = pd.crosstab(pooled[row], pooled[column])
    reference = scipy_stats.chi2_contingency(table.to_numpy())  # Yates' correction for 2 x 2, as default
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.df == reference.dof
    np.testing.assert_allclose(result.details["expected"], reference.expected_freq, rtol=1e-12)


def test_a_chi_square_test_with_a_suppressed_cell_says_it_cannot_be_computed() -> None:
    frame = pd.DataFrame(
        {"sex": ["f"] * 20 + ["m"] * 13, "arm": ["A"] * 10 + ["B"] * 10 + ["A"] * 3 + ["B"] * 10}
    )
    update = stats.crosstab_local(frame, "sex", "arm", ["f", "m"], ["A", "B"])
    assert inspect(update, DisclosurePolicy()).refusals[0].rule == "min-cell-count"
    released = inspect(update, DisclosurePolicy(small_cells="suppress")).value
    step = stats.chi2_test("sex", "arm", source="x.csv").step
    assert step is not None
    with pytest.raises(AggregationError, match="suppressed by a node's disclosure policy"):
        step.final(stats.crosstab_combine({"n1": released}))


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_fisher_exact_test_equals_scipy(pooled: pd.DataFrame, sizes: list[int]) -> None:
    analysis = stats.fisher_exact("smoker", "gender", source="patients.csv", where="age >= 40")
    result = await run_stats(analysis, split(pooled, sizes))
    rows = pooled[pooled["age"] >= 40]
    reference = scipy_stats.fisher_exact(pd.crosstab(rows["smoker"], rows["gender"]).to_numpy())
    assert result.estimate == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
@pytest.mark.parametrize("table", [[[8, 2], [1, 5]], [[0, 5], [9, 7]], [[12, 30], [25, 6]], [[3, 3], [3, 3]]])
def test_fisher_p_values_equal_scipy_on_small_tables(table: list[list[int]], alternative: str) -> None:
    ours = stats.fisher_from_table(np.array(table), alternative)
    reference = scipy_stats.fisher_exact(table, alternative=alternative)
    assert ours["p"] == pytest.approx(reference.pvalue, rel=1e-9)


async def test_fisher_refuses_where_a_node_has_a_cell_of_three(pooled: pd.DataFrame) -> None:
    node_2 = pooled.iloc[500:800].copy()
    node_2["smoker"] = 0
    node_2.iloc[:3, node_2.columns.get_loc("smoker")] = 1
    node_2.iloc[:3, node_2.columns.get_loc("diabetes")] = 1
    analysis = stats.fisher_exact(
        "smoker", "diabetes", source="patients.csv", row_levels=[0, 1], column_levels=[0, 1]
    )
    with pytest.raises(FederationError, match=r"min-cell-count.*a cell of 3"):
        await run_stats(analysis, [pooled.head(500), node_2])

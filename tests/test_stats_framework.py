"""flame.stats framework: sources, the row filter, the ready analysis and its typed result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flame
from flame import codec, stats
from flame.disclosure.policy import DisclosurePolicy
from flame.errors import ConfigurationError
from flame.runner import reset_run_hook, set_run_hook
from flame.sim import FlameStack, StackSettings
from flame.sim.federation import run_federation
from flame.stats.framework import node_policy

FRAME = pd.DataFrame(
    {
        "age": [17, 18, 40, 65, 80, np.nan],
        "sex": ["f", "m", "f", "m", None, "f"],
        "smoker": [True, False, True, False, False, True],
        "bmi": [20.0, 31.5, 27.2, np.nan, 35.0, 22.0],
    }
)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("age >= 18", [1, 2, 3, 4]),
        ("age >= 18 and sex == 'f'", [2]),
        ("(age < 18) | (bmi > 30)", [0, 1, 4]),
        ("18 <= age < 65", [1, 2]),
        ("sex in ['m', 'x']", [1, 3]),
        ("sex not in ['m']", [0, 2, 5]),
        ("not smoker", [1, 3, 4]),
        ("~smoker & (age > 20)", [3, 4]),
        ("bmi == None", [3]),
        ("bmi != None and age > -1.5", [0, 1, 2, 4]),
        ("age > bmi", [2, 4]),
    ],
)
def test_the_row_filter_selects_what_pandas_would(where: str, expected: list[int]) -> None:
    assert list(FRAME.index[stats.where_mask(FRAME, where)]) == expected


@pytest.mark.parametrize(
    "where",
    [
        "__import__('os').system('true')",
        "age.max() > 3",
        "age + 1 > 3",
        "@limit < age",
        "age > limit[0]",
        "lambda: 1",
        "age if sex else bmi",
        "3 > 2",
        "age is None",
        "[x for x in age]",
        "sex in other_column",
        "age >= ",
        "age > 18 & sex == 'f'",
        "",
    ],
)
def test_the_row_filter_refuses_anything_but_comparisons_and_boolean_operators(where: str) -> None:
    with pytest.raises(ConfigurationError, match="where"):
        stats.parse_where(where)


def test_a_filter_naming_a_missing_column_says_which_columns_exist() -> None:
    with pytest.raises(ConfigurationError, match=r"'weight'.*one of age, sex, smoker, bmi"):
        stats.where_mask(FRAME, "weight > 3")


def test_a_source_string_is_a_fhir_search_or_an_s3_key() -> None:
    assert stats.as_source("patients.csv").key == "patients.csv"
    assert stats.as_source("data/visits.parquet", "age > 3").where == "age > 3"
    assert stats.as_source("Patient?gender=female").fhir == "Patient?gender=female"
    assert stats.as_source("Observation").fhir == "Observation"
    combined = stats.as_source(stats.Source(key="a.csv", where="age > 3"), "sex == 'f'")
    assert combined.where == "(age > 3) and (sex == 'f')"
    with pytest.raises(ConfigurationError, match="exactly one of"):
        stats.Source()
    with pytest.raises(ConfigurationError, match="not allowed"):
        stats.Source(key="a.csv", where="open('x')")


def test_a_source_renames_then_filters() -> None:
    source = stats.Source(fhir="Observation", columns={"value": "valueQuantity.value"}, where="value > 1")
    frame = pd.DataFrame({"valueQuantity.value": [0.5, 2.0, 3.0]})
    assert source.prepare(frame)["value"].tolist() == [2.0, 3.0]


def test_a_statistic_is_a_ready_analysis_that_flame_run_takes_as_it_is() -> None:
    analysis = stats.describe(["age", "bmi"], "patients.csv", where="age >= 18", quorum=2)
    assert isinstance(analysis, flame.Analysis)
    assert analysis.options.quorum == 2 and analysis.options.output_type == "codec"
    assert analysis.name == "describe(age, bmi) on patients.csv where age >= 18"
    seen: list[flame.Analysis] = []
    token = set_run_hook(lambda a: seen.append(a) or "handed")
    try:
        assert flame.run(analysis) == "handed"
    finally:
        reset_run_hook(token)
    assert seen == [analysis]


def test_interpret_refuses_a_final_result_of_another_statistic() -> None:
    with pytest.raises(ConfigurationError, match="not a result of describe"):
        stats.describe("age", "p.csv").interpret({"result_of": "crosstab"})


def test_without_a_node_the_policy_is_the_library_default() -> None:
    assert node_policy(None) == DisclosurePolicy()


def test_plot_without_a_picture_says_so() -> None:
    result = stats.StatsResult("t", {"a": 1})
    with pytest.raises(ConfigurationError, match="no picture"):
        result.plot()


async def test_a_fhir_search_flattened_to_columns_is_a_source() -> None:
    data = Path(__file__).resolve().parent.parent / "examples" / "data"
    source = stats.Source(
        fhir="Observation?code=http://loinc.org|39156-5", columns={"bmi": "valueQuantity.value"}
    )
    analysis = stats.describe("bmi", source, where="bmi >= 25")
    stack = FlameStack.create(3, data_root=data, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        run = await run_federation(
            stack, analysis.analyzer, analysis.aggregator, analysis.options, timeout=120
        )
    assert run.ok, run.report()
    pooled = pd.concat([pd.read_csv(data / f"node-{i}" / "s3" / "patients.csv") for i in (1, 2, 3)])
    bmi = pooled.loc[pooled["bmi"] >= 25, "bmi"]
    row = analysis.interpret(run.result).to_frame().loc["bmi"]
    # the file the hub holds decodes to the same final result, which the same analysis interprets
    (hub_file,) = run.final_results.values()
    from_hub = analysis.interpret(codec.decode(hub_file))
    pd.testing.assert_frame_equal(from_hub.to_frame(), analysis.interpret(run.result).to_frame())
    assert row["n"] == len(bmi)
    assert row["mean"] == pytest.approx(bmi.mean(), rel=1e-12)
    assert row["sd"] == pytest.approx(bmi.std(), rel=1e-12)


class OwnAnalyzer(flame.Analyzer):
    """An author's analyzer that uses flame.stats' per-node steps for two statistics at once."""

    def analyze(self, data: flame.Data, aggregate: object, round: int) -> dict[str, object]:
        frame = data.dataframe("patients.csv")
        return {
            "describe": stats.describe_local(frame, ["age", "bmi"]),
            "welch": stats.group_summaries_local(frame, "bmi", "smoker", [1, 0]),
        }


class OwnAggregator(flame.Aggregator):
    def aggregate(
        self, updates: dict[str, dict[str, object]], round: int, previous: object
    ) -> dict[str, object]:
        part = {node: update["describe"] for node, update in updates.items()}
        welch = stats.welch_combine({node: update["welch"] for node, update in updates.items()}, [1, 0])
        return {"describe": stats.describe_combine(part)["columns"], "t": welch["t"], "p": welch["p"]}


async def test_the_per_node_and_combine_steps_compose_in_an_author_s_own_analysis() -> None:
    from scipy import stats as scipy_stats

    data = Path(__file__).resolve().parent.parent / "examples" / "data"
    stack = FlameStack.create(3, data_root=data, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        run = await run_federation(stack, OwnAnalyzer(), OwnAggregator(), timeout=120)
    assert run.ok, run.report()
    pooled = pd.concat([pd.read_csv(data / f"node-{i}" / "s3" / "patients.csv") for i in (1, 2, 3)])
    assert run.result["describe"]["bmi"]["mean"] == pytest.approx(pooled["bmi"].mean(), rel=1e-12)
    reference = scipy_stats.ttest_ind(
        pooled.loc[pooled["smoker"] == 1, "bmi"], pooled.loc[pooled["smoker"] == 0, "bmi"], equal_var=False
    )
    assert run.result["t"] == pytest.approx(reference.statistic, rel=1e-10)
    assert run.result["p"] == pytest.approx(reference.pvalue, rel=1e-9)

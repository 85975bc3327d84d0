"""flame.stats.glm: federated IRLS equals statsmodels' pooled GLM; the node refuses what it must."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from flame import stats
from flame.disclosure import DisclosurePolicy
from flame.errors import AggregationError, ConfigurationError, DisclosureRefusedError, FederationError
from flame.sim.synthetic import generate_study_patients
from flame.stats.glm import glm_combine, glm_fit, glm_local, local_levels, union_of_levels
from tests.stats_helpers import MID_FIT_DELAY, run_stats, run_stats_federation, split

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPLITS = {"3 nodes": [400, 400, 0], "5 uneven nodes": [60, 700, 90, 250, 0]}
FAMILIES = {
    "gaussian": sm.families.Gaussian(),
    "binomial": sm.families.Binomial(),
    "poisson": sm.families.Poisson(),
}


def study(n: int = 1500, seed: int = 3) -> pd.DataFrame:
    frame = generate_study_patients(n, seed, site="pooled", missing=0.05)
    rng = np.random.default_rng(seed)
    # a count outcome for the Poisson model: visits, more with age, diabetes and smoking
    rate = np.exp(-1.0 + 0.02 * (frame["age"] - 50) + 0.4 * frame["diabetes"] + 0.3 * frame["smoker"])
    frame["visits"] = rng.poisson(rate)
    return frame


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    return study()


def _key(term: str) -> str:
    """A term name both patsy and formulaic spell alike: factors sorted, C() dropped."""
    return ":".join(sorted(part.replace("C(", "").replace(")", "") for part in term.split(":")))


def assert_matches_statsmodels(table: pd.DataFrame, reference: object, rel: float = 1e-6) -> None:
    ref_params = reference.params.rename(_key)  # type: ignore[attr-defined]
    ref_bse = reference.bse.rename(_key)  # type: ignore[attr-defined]
    ref_p = reference.pvalues.rename(_key)  # type: ignore[attr-defined]
    ours = table.rename(index=_key)
    assert sorted(ours.index) == sorted(ref_params.index)
    for term in ours.index:
        assert ours.loc[term, "estimate"] == pytest.approx(ref_params[term], rel=rel, abs=1e-12), term
        assert ours.loc[term, "std_error"] == pytest.approx(ref_bse[term], rel=rel), term
        assert ours.loc[term, "p_value"] == pytest.approx(ref_p[term], rel=1e-4, abs=1e-300), term


def fit_in_process(parts: list[pd.DataFrame], formula: str, family: str) -> tuple[pd.DataFrame, int]:
    """The per-node and combine functions alone, as an author would use them in their own analysis."""
    levels = union_of_levels({f"node-{i}": local_levels(p, formula) for i, p in enumerate(parts)})
    state = None
    for _ in range(30):
        beta = None if state is None else state["beta"]
        updates = {f"node-{i}": glm_local(p, formula, family, beta, levels) for i, p in enumerate(parts)}
        state = glm_combine(updates, state)
        if state["converged"]:
            break
    assert state is not None and state["converged"]
    return glm_fit(state, formula, family).table(), int(state["iterations"])


@pytest.mark.parametrize(
    ("family", "formula"),
    [
        ("gaussian", "systolic_bp ~ age + bmi + C(stage) + gender"),
        ("binomial", "diabetes ~ age + bmi + group * stage + smoker"),
        ("poisson", "visits ~ age + C(diabetes) + smoker + age:gender"),
    ],
)
def test_local_and_combine_equal_the_pooled_statsmodels_fit(
    pooled: pd.DataFrame, family: str, formula: str
) -> None:
    parts = split(pooled, [300, 900, 0])
    table, iterations = fit_in_process(parts, formula, family)
    reference = smf.glm(formula, pooled, family=FAMILIES[family]).fit()
    assert_matches_statsmodels(table, reference)
    assert iterations <= 8


def test_a_node_without_a_level_codes_the_same_columns(pooled: pd.DataFrame) -> None:
    # node-0 holds no stage IV patient: with the agreed levels its model matrix has the column anyway
    parts = [pooled[pooled["stage"] != "IV"].head(500), pooled[pooled["stage"] == "IV"], pooled.iloc[500:]]
    assert "IV" not in local_levels(parts[0], "bmi ~ stage")["stage"]
    table, _ = fit_in_process(parts, "bmi ~ age + stage", "gaussian")
    reference = smf.glm("bmi ~ age + stage", pd.concat(parts), family=FAMILIES["gaussian"]).fit()
    assert_matches_statsmodels(table, reference)


@pytest.mark.parametrize("sizes", SPLITS.values(), ids=SPLITS.keys())
async def test_federated_glm_equals_statsmodels(pooled: pd.DataFrame, sizes: list[int]) -> None:
    # stage IV is too rare on the 60-record node for its guard: categories every node holds often
    formula = "diabetes ~ age + bmi + C(smoker) + group * gender"
    analysis = stats.glm(formula, source="patients.csv", family="binomial", where="age >= 30")
    result = await run_stats(analysis, split(pooled, sizes))
    selected = pooled[pooled["age"] >= 30]
    reference = smf.glm(formula, selected, family=FAMILIES["binomial"]).fit()
    assert_matches_statsmodels(result.to_frame(), reference)
    used = selected[["diabetes", "age", "bmi", "smoker", "group", "gender"]].dropna()
    assert result.n == len(used) and len(result.nodes) == len(sizes)
    assert result.rounds <= 8  # levels, then IRLS until the deviance settles
    text = result.summary()
    assert "glm(diabetes ~ age + bmi + C(smoker) + group * gender, family=binomial)" in text
    assert "converged" in text and f"{len(used)} in total" in text


async def test_federated_gaussian_with_declared_levels_reports_the_dispersion(pooled: pd.DataFrame) -> None:
    formula = "cholesterol ~ age + bmi + gender"
    analysis = stats.glm(formula, source="patients.csv", levels={"gender": ["female", "male"]})
    result = await run_stats(analysis, split(pooled, [500, 400, 0]))
    reference = smf.glm(formula, pooled, family=FAMILIES["gaussian"]).fit()
    assert_matches_statsmodels(result.to_frame(), reference)
    assert result.fit.scale == pytest.approx(reference.scale, rel=1e-9)
    assert result.rounds == 3  # no levels round: the start, the exact solution, its deviance confirmed


def test_ten_covariates_converge_within_eight_rounds() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    x = rng.normal(size=(n, 10))
    eta = -0.5 + x @ np.linspace(-0.4, 0.5, 10)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)])
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    formula = "y ~ " + " + ".join(f"x{i}" for i in range(10))
    table, iterations = fit_in_process(split(frame, [5000, 7000, 0]), formula, "binomial")
    assert iterations <= 8
    assert_matches_statsmodels(table, smf.glm(formula, frame, family=FAMILIES["binomial"]).fit())


def test_node_refuses_more_parameters_than_the_ratio_allows(pooled: pd.DataFrame) -> None:
    few = pooled.dropna().head(12)  # 4 parameters over 12 records > 0.33
    with pytest.raises(DisclosureRefusedError, match="parameter") as refused:
        glm_local(few, "bmi ~ age + cholesterol + smoker", "gaussian", None)
    assert refused.value.rule == "parameter-ratio"


def test_node_refuses_a_rare_level_and_a_rare_dummy(pooled: pd.DataFrame) -> None:
    rows = pd.concat([pooled[pooled["stage"] != "IV"].head(300), pooled[pooled["stage"] == "IV"].head(2)])
    with pytest.raises(DisclosureRefusedError, match="IV") as refused:
        local_levels(rows, "bmi ~ stage")
    assert refused.value.rule == "min-cell-count"
    levels = {"stage": ["I", "II", "III", "IV"]}
    with pytest.raises(DisclosureRefusedError, match=r"stage\[T.IV\].*2 record"):
        glm_local(rows, "bmi ~ stage", "gaussian", None, levels)
    # a looser node policy is refused; a tighter one refuses more
    with pytest.raises(DisclosureRefusedError):
        glm_local(
            pooled.head(300), "bmi ~ stage", "gaussian", None, levels, DisclosurePolicy(min_cell_count=100)
        )


async def test_federated_glm_is_refused_by_a_small_node(pooled: pd.DataFrame) -> None:
    parts = [pooled.head(600), pooled.iloc[600:620]]  # 20 records at node-2: 8 parameters exceed 0.33
    analysis = stats.glm(
        "diabetes ~ age + bmi + cholesterol + smoker + gender + group + systolic_bp",
        source="patients.csv",
        family="binomial",
    )
    with pytest.raises(FederationError, match="parameter"):
        await run_stats(analysis, parts)


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigurationError, match="family"):
        stats.glm("y ~ x", source="patients.csv", family="gamma")
    with pytest.raises(ConfigurationError, match="formula"):
        stats.glm("y + x", source="patients.csv")
    frame = pd.DataFrame({"y": [0.0, 2.0, 1.0] * 10, "x": np.arange(30.0)})
    with pytest.raises(ConfigurationError, match=r"outside 0\.\.1"):
        glm_local(frame, "y ~ x", "binomial", None)


def load_example(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_equals_its_pooled_check() -> None:
    folder = EXAMPLES / "stats_glm"
    example = load_example(folder / "analysis.py", "stats_glm_example")
    pooled_check = load_example(folder / "pooled.py", "stats_glm_pooled_check")
    files = sorted((EXAMPLES / "data").glob("node-*/s3/patients.csv"))
    result = await run_stats(example.ANALYSIS, [pd.read_csv(f) for f in files])
    reference = pooled_check.pooled_fit(EXAMPLES / "data")
    ours = result.to_frame().loc[reference.index]
    np.testing.assert_allclose(ours["estimate"], reference["estimate"], rtol=1e-6)
    np.testing.assert_allclose(ours["std_error"], reference["std_error"], rtol=1e-6)


def test_forest_plot_draws_every_coefficient_but_the_intercept(pooled: pd.DataFrame) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    table, _ = fit_in_process(split(pooled, [700, 0]), "bmi ~ age + gender", "gaussian")
    fit = stats.GLMResult("glm(bmi ~ age + gender)", {"a": 700, "b": 800}, 2, None)
    with pytest.raises(ConfigurationError):
        fit.to_frame()
    from flame.stats.glm import forest_plot

    ax = forest_plot(table, "bmi", drop=("Intercept",))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["age", "gender[T.male]"]


def test_a_boolean_response_is_an_outcome_not_a_category(pooled: pd.DataFrame) -> None:
    frame = pooled.assign(diabetic=pooled["diabetes"] == 1)
    assert local_levels(frame, "diabetic ~ age + gender") == {"gender": ["female", "male"]}
    table, _ = fit_in_process(split(frame, [700, 0]), "diabetic ~ age + gender", "binomial")
    reference = smf.glm("diabetes ~ age + gender", pooled, family=FAMILIES["binomial"]).fit()
    assert_matches_statsmodels(table.rename(index=str), reference)


async def test_a_fit_stopped_by_the_round_limit_says_so(pooled: pd.DataFrame) -> None:
    analysis = stats.glm("diabetes ~ age + bmi", source="patients.csv", family="binomial", max_iter=2)
    result = await run_stats(analysis, split(pooled, [700, 0]))
    assert not result.fit.converged and result.rounds == 2
    assert "NOT converged" in result.summary()


async def test_a_poisson_rate_with_an_offset_equals_statsmodels(pooled: pd.DataFrame) -> None:
    rng = np.random.default_rng(11)
    years = rng.uniform(0.5, 5.0, len(pooled))
    frame = pooled.assign(
        log_years=np.log(years), visits=rng.poisson(years * np.exp(-1 + 0.02 * (pooled["age"] - 50)))
    )
    formula = "visits ~ age + gender"
    analysis = stats.glm(formula, source="patients.csv", family="poisson", offset="log_years")
    result = await run_stats(analysis, split(frame, [400, 700, 0]))
    reference = smf.glm(formula, frame, family=FAMILIES["poisson"], offset=frame["log_years"]).fit()
    assert_matches_statsmodels(result.to_frame(), reference)
    assert "offset=log_years" in result.summary()


async def test_the_nodes_apply_their_own_policy_file(pooled: pd.DataFrame, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"max_parameter_ratio": 0.005}))  # 5 parameters need 1000 records
    analysis = stats.glm("bmi ~ age + cholesterol + smoker + diabetes", source="patients.csv")
    frames = split(pooled, [700, 0])
    assert (await run_stats(analysis, frames)).fit.converged  # the library's default allows it
    with pytest.raises(FederationError, match="parameter"):
        await run_stats(analysis, frames, policy=str(policy))


@pytest.mark.integration
@pytest.mark.parametrize("restarted", ["node-2", "aggregator"])
async def test_a_restart_in_the_middle_of_the_fit_gives_the_same_model(
    pooled: pd.DataFrame, restarted: str
) -> None:
    # the nodes keep no state but a cache; the aggregator's IRLS state travels in its aggregate
    analysis = stats.glm("diabetes ~ age + bmi + gender", source="patients.csv", family="binomial")
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


def test_collinear_terms_are_an_error_but_covariates_in_large_units_are_not(pooled: pd.DataFrame) -> None:
    frame = pooled.assign(age_days=pooled["age"] * 365.25 * 1e6, twice_bmi=2 * pooled["bmi"])
    table, _ = fit_in_process(split(frame, [700, 0]), "cholesterol ~ age_days + bmi", "gaussian")
    reference = smf.glm("cholesterol ~ age_days + bmi", frame, family=FAMILIES["gaussian"]).fit()
    assert_matches_statsmodels(table, reference)
    updates = {"node-1": glm_local(frame, "cholesterol ~ bmi + twice_bmi", "gaussian", None)}
    with pytest.raises(AggregationError, match="singular"):
        glm_combine(updates)

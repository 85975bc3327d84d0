"""Benchmark flame.stats on the emulated stack: every statistic next to its pooled reference computation.

Run ``python benchmarks/stats.py`` (``--records 10000`` for a quick run). For 3 and 10 analysis nodes
of ``--records`` synthetic patients each (``generate_study_patients``, one Parquet object per node)
it runs each case of :data:`CASES` as a local federation (in-process transport, one event loop,
analysis code in worker threads, checkpoints on) and prints per case:

- ``federated s``: the whole run, start-up of every node to the end (``run_federation``);
- ``rounds``: the rounds the aggregator ran;
- ``KB/node``: message bytes each analysis node sent (the broker's ``broker.sent`` sizes, averaged
  over the analysis nodes): what leaves a hospital;
- ``pooled s``: the reference computation (pandas, numpy, scipy.stats) on the concatenated rows,
  in the same process; it reads nothing and sends nothing, so it is a floor, not a rival;
- ``max diff``: the largest difference between the federated and the pooled figures
  (relative where the figure is far from 0); for quantiles the reported precision is in brackets.

A case is a :class:`Case`: a name, the analysis (given the object key), the pooled reference and the
comparison. Add rows by appending to :data:`CASES`. The script reports; it exits 0 unless a case fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flame import stats
from flame.sim import FlameStack, StackSettings
from flame.sim.federation import run_federation
from flame.sim.synthetic import generate_study_patients

KEY = "patients.parquet"
NUMERIC = ["age", "bmi", "systolic_bp", "cholesterol"]


def relative(a: Any, b: Any) -> float:
    """Largest elementwise difference, relative to the magnitude where it is above 1e-8."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.abs(y), 1e-8)
    return float(np.nanmax(np.abs(x - y) / np.where(np.abs(y) > 1e-8, scale, 1.0)))


@dataclass(frozen=True)
class Case:
    """One benchmark row: the analysis, the pooled reference and how far apart they are."""

    name: str
    analysis: Callable[[str], stats.StatsAnalysis]
    reference: Callable[[pd.DataFrame], Any]
    difference: Callable[[Any, Any], str]


def _describe_diff(result: Any, ref: pd.DataFrame) -> str:
    frame = result.to_frame()
    return f"{max(relative(frame['mean'], ref['mean']), relative(frame['sd'], ref['std'])):.1e}"


def _quantile_diff(result: Any, ref: dict[str, np.ndarray[Any, Any]]) -> str:
    frame = result.to_frame()
    worst = precision = 0.0
    for column, values in ref.items():
        estimates = frame.loc[column]
        worst = max(worst, float(np.max(np.abs(estimates["estimate"].to_numpy() - values))))
        precision = max(precision, float(estimates["precision"].max()))
    return f"{worst:.1e} (+-{precision:.1e})"


def _test_diff(result: Any, ref: Any) -> str:
    return f"{max(relative(result.statistic, ref.statistic), relative(result.p_value, ref.pvalue)):.1e}"


CASES: list[Case] = [
    Case(
        "describe (4 columns)",
        lambda key: stats.describe(NUMERIC, key),
        lambda frame: frame[NUMERIC].agg(["mean", "std"]).T,
        _describe_diff,
    ),
    Case(
        "crosstab stage x group",
        lambda key: stats.crosstab("stage", "group", source=key),
        lambda frame: pd.crosstab(frame["stage"], frame["group"]),
        lambda result, ref: f"{float(np.abs(result.to_frame().to_numpy() - ref.to_numpy()).max()):.0f}",
    ),
    Case(
        "corr (5 columns)",
        lambda key: stats.corr([*NUMERIC, "smoker"], key),
        lambda frame: frame[[*NUMERIC, "smoker"]].dropna().corr(),
        lambda result, ref: f"{float(np.abs(result.to_frame().to_numpy() - ref.to_numpy()).max()):.1e}",
    ),
    Case(
        "quantiles (3 columns x 3)",
        lambda key: stats.quantiles(["age", "bmi", "cholesterol"], [0.25, 0.5, 0.75], source=key),
        lambda frame: {
            c: np.quantile(frame[c].dropna(), [0.25, 0.5, 0.75]) for c in ("age", "bmi", "cholesterol")
        },
        _quantile_diff,
    ),
    Case(
        "ttest bmi by group",
        lambda key: stats.ttest("bmi", "group", source=key),
        lambda frame: scipy_stats.ttest_ind(
            frame.loc[frame["group"] == "A", "bmi"].dropna(),
            frame.loc[frame["group"] == "B", "bmi"].dropna(),
            equal_var=False,
        ),
        _test_diff,
    ),
    Case(
        "ttest_paired bp",
        lambda key: stats.ttest_paired("systolic_bp", "systolic_bp_followup", source=key),
        lambda frame: scipy_stats.ttest_rel(frame["systolic_bp"], frame["systolic_bp_followup"]),
        _test_diff,
    ),
    Case(
        "chi2_test stage x group",
        lambda key: stats.chi2_test("stage", "group", source=key),
        lambda frame: scipy_stats.chi2_contingency(pd.crosstab(frame["stage"], frame["group"]).to_numpy()),
        _test_diff,
    ),
    Case(
        "fisher_exact smoker x gender",
        lambda key: stats.fisher_exact("smoker", "gender", source=key),
        lambda frame: scipy_stats.fisher_exact(pd.crosstab(frame["smoker"], frame["gender"]).to_numpy()),
        _test_diff,
    ),
]

# -- models and survival (glm, kaplan_meier, logrank, cox): the pooled fits by statsmodels and lifelines --

#: ten covariates (stage has three dummies) besides the intercept
GLM_FORMULA = "diabetes ~ age + bmi + systolic_bp + cholesterol + smoker + gender + group + C(stage)"
COX_COVARIATES = "age + diabetes + group + stage"
#: quarter-years over five years (20 of 91 days): the public time grid of the survival statistics
SURVIVAL_GRID = stats.time_grid(91, 1820)


def _on_grid(frame: pd.DataFrame) -> pd.DataFrame:
    times, events = stats.quantise(frame["time"], frame["event"], SURVIVAL_GRID)
    return frame.assign(time=times, event=events)


def _glm_reference(frame: pd.DataFrame) -> Any:
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    # statsmodels' default tolerance leaves its standard errors ~1e-7 from converged (they use the
    # weights of its second-last iteration); a tight one compares the fits, not the stopping rules
    return smf.glm(GLM_FORMULA, frame, family=sm.families.Binomial()).fit(tol=1e-12)


def _glm_diff(result: Any, ref: Any) -> str:
    frame = result.to_frame()
    names = [c.replace("C(stage)", "stage") for c in frame.index]
    params = ref.params.rename(lambda c: c.replace("C(stage)", "stage"))[names]
    bse = ref.bse.rename(lambda c: c.replace("C(stage)", "stage"))[names]
    return f"{max(relative(frame['estimate'], params), relative(frame['std_error'], bse)):.1e}"


def _km_reference(frame: pd.DataFrame) -> dict[str, Any]:
    from lifelines import KaplanMeierFitter

    rows = _on_grid(frame)
    return {
        group: KaplanMeierFitter().fit(part["time"], part["event"]).survival_function_.iloc[:, 0]
        for group, part in rows.groupby("group")
    }


def _km_diff(result: Any, ref: dict[str, Any]) -> str:
    table = result.to_frame()
    worst = 0.0
    for group, curve in ref.items():
        ours = table[table["group"] == group].set_index("time")["survival"]
        times = [t for t in curve.index if t > 0]
        worst = max(worst, float(np.max(np.abs(ours.loc[times].to_numpy() - curve.loc[times].to_numpy()))))
    return f"{worst:.1e}"


def _logrank_reference(frame: pd.DataFrame) -> Any:
    from lifelines.statistics import multivariate_logrank_test

    rows = _on_grid(frame)
    return multivariate_logrank_test(rows["time"], rows["group"], rows["event"])


def _cox_reference(frame: pd.DataFrame) -> Any:
    from lifelines import CoxPHFitter

    rows = _on_grid(frame)[["time", "event", "age", "diabetes", "group", "stage"]].dropna()
    return CoxPHFitter().fit(rows, "time", "event", formula=COX_COVARIATES, fit_options={"precision": 1e-12})


def _cox_diff(result: Any, ref: Any) -> str:
    frame = result.to_frame().loc[ref.params_.index]
    return f"{max(relative(frame['estimate'], ref.params_), relative(frame['std_error'], ref.standard_errors_)):.1e}"


CASES += [
    Case(
        "glm binomial (10 covariates)",
        lambda key: stats.glm(GLM_FORMULA, source=key, family="binomial"),
        _glm_reference,
        _glm_diff,
    ),
    Case(
        "kaplan_meier by group",
        lambda key: stats.kaplan_meier("time", "event", source=key, grid=SURVIVAL_GRID, group="group"),
        _km_reference,
        _km_diff,
    ),
    Case(
        "logrank by group",
        lambda key: stats.logrank("time", "event", "group", source=key, grid=SURVIVAL_GRID),
        _logrank_reference,
        lambda result, ref: (
            f"{max(relative(result.statistic, ref.test_statistic), relative(result.p_value, ref.p_value)):.1e}"
        ),
    ),
    Case(
        "cox (6 covariates)",
        lambda key: stats.cox(COX_COVARIATES, time="time", event="event", source=key, grid=SURVIVAL_GRID),
        _cox_reference,
        _cox_diff,
    ),
]


def write_data(root: Path, nodes: int, records: int) -> pd.DataFrame:
    frames = []
    for i in range(1, nodes + 1):
        frame = generate_study_patients(records, 2026, site=f"node-{i}")
        folder = root / f"node-{i}" / "s3"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / KEY, index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


async def run_case(case: Case, root: Path, nodes: int, pooled: pd.DataFrame) -> dict[str, Any]:
    analysis = case.analysis(KEY)
    stack = FlameStack.create(nodes, data_root=root, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        started = time.perf_counter()
        run = await run_federation(
            stack, analysis.analyzer, analysis.aggregator, analysis.options, timeout=600
        )
        seconds = time.perf_counter() - started
        sent = [e for e in stack.events if e.kind == "broker.sent" and e.node != "aggregator"]
    if not run.ok:
        raise RuntimeError(f"{case.name} on {nodes} nodes failed: {run.report()}")
    result = analysis.interpret(run.result)
    started = time.perf_counter()
    reference = case.reference(pooled)
    pooled_seconds = time.perf_counter() - started
    per_node = sum(int(e.detail["size"]) for e in sent) / nodes
    return {
        "case": case.name,
        "nodes": nodes,
        "federated s": seconds,
        "rounds": len(run.rounds),
        "KB/node": per_node / 1000,
        "pooled s": pooled_seconds,
        "max diff": case.difference(result, reference),
    }


async def main(records: int, node_counts: list[int]) -> int:
    rows = []
    for nodes in node_counts:
        with tempfile.TemporaryDirectory(prefix="flame-stats-bench-") as tmp:
            root = Path(tmp) / "data"
            pooled = write_data(root, nodes, records)
            for case in CASES:
                row = await run_case(case, root, nodes, pooled)
                rows.append(row)
                print(
                    f"{row['case']:<32} {nodes:>3} nodes  {row['federated s']:7.2f} s  {row['rounds']:>2} rounds  "
                    f"{row['KB/node']:8.1f} KB/node  pooled {row['pooled s']:7.3f} s  diff {row['max diff']}",
                    flush=True,
                )
    table = pd.DataFrame(rows).set_index(["case", "nodes"])
    print(f"\n{records:,} records per node\n")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table.to_string())
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="patients per node (default 100000)")
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[3, 10], help="federation sizes (default 3 10)"
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.records, args.nodes)))

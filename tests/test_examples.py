"""The examples: each federated result equals the result on the pooled data."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flame.local.loading import load_analysis
from flame.sim import FlameStack, StackSettings
from flame.sim.federation import FederationRun, run_federation

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DATA = EXAMPLES / "data"


def load(name: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The example's analyzer, aggregator and options as ``flame sim`` loads them, and its module globals."""
    path = EXAMPLES / name / "analysis.py"
    loaded = load_analysis(path)
    return loaded.analyzer, loaded.aggregator, loaded.options, runpy.run_path(str(path))


def pooled() -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(DATA / f"node-{i}" / "s3" / "patients.csv") for i in (1, 2, 3)], ignore_index=True
    )


async def federate(name: str, mode: str = "inprocess") -> tuple[FederationRun, dict[str, Any]]:
    analyzer, aggregator, options, module = load(name)
    stack = FlameStack.create(3, data_root=DATA, settings=StackSettings.fast())
    async with stack:
        run = await run_federation(stack, analyzer, aggregator, options, mode=mode, timeout=120)  # type: ignore[arg-type]
    assert run.ok, run.report()
    return run, module


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_patient_count_equals_the_pooled_count(mode: str) -> None:
    run, _ = await federate("patient_count", mode)
    assert run.result == {"patients": len(pooled()), "hospitals": 3}


async def test_mean_and_std_equal_the_pooled_ones() -> None:
    run, module = await federate("mean_std")
    frame = pooled()
    for column in module["COLUMNS"]:
        assert run.result[column]["n"] == len(frame)
        assert run.result[column]["mean"] == pytest.approx(frame[column].mean(), rel=1e-12)
        assert run.result[column]["std"] == pytest.approx(frame[column].std(ddof=1), rel=1e-12)


async def test_logistic_regression_matches_a_pooled_fit_to_1e_6() -> None:
    run, module = await federate("logistic_regression")
    x, y = module["design"](pooled())
    beta = np.zeros(x.shape[1])
    for _ in range(50):
        gradient, hessian = module["gradient_hessian"](x, y, beta)
        step = np.linalg.solve(hessian, gradient)
        beta = beta - step
        if np.abs(step).max() < 1e-12:
            break
    federated = np.array(list(run.result["coefficients"].values()))
    np.testing.assert_allclose(federated, beta, rtol=0, atol=1e-6)
    assert 2 <= len(run.rounds) < 25  # converged before the round limit


@pytest.mark.process
def test_mean_example_runs_unchanged_with_one_process_per_node(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flame",
            "sim",
            str(EXAMPLES / "mean_std" / "analysis.py"),
            "--data",
            str(DATA),
            "--nodes",
            "3",
            "--processes",
            "--no-live",
            "--report",
            str(report),
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(report.read_text())["ok"] is True
    frame = pooled()
    assert f"{frame['age'].mean():.6f}"[:8] in done.stdout

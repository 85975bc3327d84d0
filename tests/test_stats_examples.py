"""The flame.stats examples: each federated result equals its pooled check on the examples' data."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import flame
from flame.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DATA = EXAMPLES / "data"


def pooled() -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(DATA / f"node-{i}" / "s3" / "patients.csv") for i in (1, 2, 3)], ignore_index=True
    )


async def federate(name: str) -> tuple[Any, dict[str, Any]]:
    """The example's typed result (run as ``flame sim`` runs it) and its module globals."""
    path = EXAMPLES / name / "analysis.py"
    result = await flame.simulate_async(path, data=DATA, timeout=120)
    assert result.ok, result.errors
    return result.result, runpy.run_path(str(path))


def test_flame_sim_prints_the_typed_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / "stats_describe" / "analysis.py"
    code = main(["sim", str(path), "--data", str(DATA), "--no-live", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    # the result as a statistician reads it, not the raw dict the nodes exchanged
    assert "describe(age, bmi, systolic_bp, cholesterol)" in out
    assert "result_of" not in out


async def test_stats_describe_example_equals_its_pooled_check() -> None:
    result, module = await federate("stats_describe")
    expected = module["pooled_check"](pooled())
    frame = result.to_frame()
    assert frame[["n", "missing"]].to_dict() == expected[["n", "missing"]].astype(int).to_dict()
    np.testing.assert_allclose(frame[["mean", "sd"]], expected[["mean", "sd"]], rtol=1e-12)
    assert "describe(age, bmi, systolic_bp, cholesterol)" in result.summary()


async def test_stats_quantiles_example_is_within_its_precision_of_its_pooled_check() -> None:
    result, module = await federate("stats_quantiles")
    expected = module["pooled_check"](pooled())
    frame = result.to_frame()
    for column, values in expected.items():
        for q, value in zip(module["PROBS"], values, strict=True):
            row = frame.loc[(column, q)]
            assert abs(row["estimate"] - value) <= row["precision"] + 1e-9
            assert row["precision"] <= 1.5  # about a step of the values (whole years, mm[Hg]) at most
    assert result.rounds <= 8


async def test_stats_tests_example_equals_scipy_on_the_pooled_rows() -> None:
    result, module = await federate("stats_tests")
    reference = module["pooled_check"](pooled())
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.df == pytest.approx(reference.df, rel=1e-10)

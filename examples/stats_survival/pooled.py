"""The pooled check of ``analysis.py``: lifelines on all patients, times on the same grid.

``python examples/stats_survival/pooled.py study.csv`` prints lifelines' Cox fit (Efron ties) and the
log-rank test by arm, to compare with the federated results.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from lifelines import CoxPHFitter
from lifelines.statistics import multivariate_logrank_test

from flame.stats import quantise


def _load_analysis() -> Any:
    """``analysis.py`` next to this file (by path: every example has an ``analysis`` module)."""
    spec = importlib.util.spec_from_file_location(
        "stats_survival_analysis", Path(__file__).with_name("analysis.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_analysis = _load_analysis()
COVARIATES, GRID = _analysis.COVARIATES, _analysis.GRID


def on_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its times and events as the federated statistics see them on ``GRID``."""
    times, events = quantise(frame["time"], frame["event"], GRID)
    return frame.assign(time=times, event=events)


def pooled_cox(frame: pd.DataFrame) -> CoxPHFitter:
    """lifelines' Cox fit of the complete rows, times on the grid."""
    rows = on_grid(frame)[["time", "event", "age", "diabetes", "group", "stage"]].dropna()
    return CoxPHFitter().fit(rows, "time", "event", formula=COVARIATES, fit_options={"precision": 1e-12})


if __name__ == "__main__":
    study = pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "study.csv")
    pooled_cox(study).print_summary()
    rows = on_grid(study)
    test = multivariate_logrank_test(rows["time"], rows["group"], rows["event"])
    print(f"log-rank by group: chi-square {test.test_statistic:.6g}, p = {test.p_value:.4g}")

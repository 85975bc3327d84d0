"""The pooled check of ``analysis.py``: the same model fitted by statsmodels on every hospital's rows.

``python examples/stats_glm/pooled.py DATA`` with ``DATA`` the folder ``flame sim --data`` reads
(``node-*/s3/patients.csv``); prints the coefficient table to compare with the federated one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf


def _load_analysis() -> Any:
    """``analysis.py`` next to this file (by path: every example has an ``analysis`` module)."""
    spec = importlib.util.spec_from_file_location(
        "stats_glm_analysis", Path(__file__).with_name("analysis.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FORMULA = _load_analysis().FORMULA


def pooled_fit(root: Path) -> pd.DataFrame:
    """estimate, std_error, z, p_value of the pooled statsmodels fit."""
    frame = pd.concat(
        [pd.read_csv(p) for p in sorted(root.glob("node-*/s3/patients.csv"))], ignore_index=True
    )
    fit = smf.glm(FORMULA, frame, family=sm.families.Binomial()).fit()
    return pd.DataFrame(
        {"estimate": fit.params, "std_error": fit.bse, "z": fit.tvalues, "p_value": fit.pvalues}
    )


if __name__ == "__main__":
    print(pooled_fit(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/data")).to_string())

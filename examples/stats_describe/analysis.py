"""Descriptive statistics of the adult patients of every hospital with one ready analysis (flame.stats).

``stats.describe`` returns the analysis: each hospital sends, per column, its count of values and of
missing values, mean and sum of squared deviations (never a patient's value); the aggregator pools
them with Chan's parallel algorithm. One round. The result prints like ``DataFrame.describe`` and equals
it on the pooled rows (``pooled_check``) to rounding. Run locally:
``flame sim examples/stats_describe/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

import pandas as pd

import flame
from flame import stats

COLUMNS = ["age", "bmi", "systolic_bp", "cholesterol"]
WHERE = "age >= 18 and age < 80"

ANALYSIS = stats.describe(COLUMNS, source="patients.csv", where=WHERE)


def pooled_check(frame: pd.DataFrame) -> pd.DataFrame:
    """The same figures on the pooled rows, with pandas."""
    rows = frame.query(WHERE)[COLUMNS]
    return pd.DataFrame(
        {"n": rows.count(), "missing": rows.isna().sum(), "mean": rows.mean(), "sd": rows.std()}
    )


if __name__ == "__main__":
    final = flame.run(ANALYSIS)
    if isinstance(final, dict) and "result_of" in final:  # on the aggregator: the final result
        print(ANALYSIS.interpret(final).summary())

"""Quartiles of age, BMI and blood pressure over every hospital, without any patient's value leaving one.

``stats.quantiles`` searches on counts: first each hospital sends count, mean and spread per column;
then, round by round, the aggregator proposes thresholds near each quartile and every hospital answers
with a histogram over the thresholds it is willing to answer (each of its bins holds none or at least
its policy's minimum cell count of patients). The aggregator narrows a bracket around each quartile
until it is narrower than the tolerance or cannot narrow further; the result states the precision
reached, which bounds the distance from ``np.quantile`` on the pooled rows (``pooled_check``). A few
rounds, whatever the number of patients. Run locally:
``flame sim examples/stats_quantiles/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import flame
from flame import stats

COLUMNS = ["age", "bmi", "systolic_bp"]
PROBS = [0.25, 0.5, 0.75]

ANALYSIS = stats.quantiles(COLUMNS, PROBS, source="patients.csv")


def pooled_check(frame: pd.DataFrame) -> dict[str, list[float]]:
    """numpy's quantiles (linear interpolation) of the pooled values."""
    return {c: [float(v) for v in np.quantile(frame[c].dropna(), PROBS)] for c in COLUMNS}


if __name__ == "__main__":
    final = flame.run(ANALYSIS)
    if isinstance(final, dict) and "result_of" in final:  # on the aggregator: the final result
        print(ANALYSIS.interpret(final).summary())

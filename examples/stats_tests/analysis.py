"""Do patients with diabetes have a higher BMI? Welch's t-test over every hospital (flame.stats).

``stats.ttest`` returns the analysis: each hospital sends, per group (with and without diabetes), the
count, mean and sum of squared deviations of BMI; the aggregator pools them and computes Welch's t,
its degrees of freedom, p-value and the confidence interval of the difference, exactly as
``scipy.stats.ttest_ind(..., equal_var=False)`` on the pooled rows (``pooled_check``). One round. The
same family: ``stats.ttest_paired``, ``stats.chi2_test``, ``stats.fisher_exact``. Run locally:
``flame sim examples/stats_tests/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

import flame
from flame import stats

ANALYSIS = stats.ttest("bmi", "diabetes", source="patients.csv", groups=[1, 0])


def pooled_check(frame: pd.DataFrame) -> Any:
    """SciPy's Welch test on the pooled rows (BMI with diabetes against without)."""
    from scipy import stats as scipy_stats

    return scipy_stats.ttest_ind(
        frame.loc[frame["diabetes"] == 1, "bmi"].dropna(),
        frame.loc[frame["diabetes"] == 0, "bmi"].dropna(),
        equal_var=False,
    )


if __name__ == "__main__":
    final = flame.run(ANALYSIS)
    if isinstance(final, dict) and "result_of" in final:  # on the aggregator: the final result
        print(ANALYSIS.interpret(final).summary())

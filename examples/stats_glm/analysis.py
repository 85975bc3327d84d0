"""Federated logistic regression with ``flame.stats.glm``: the risk of diabetes from age, BMI, blood
pressure, cholesterol, smoking and sex, over every hospital's patients, without pooling them.

Every round each hospital sends the IRLS sums of its patients at the current coefficients (X'WX, X'Wz,
deviance; sums, never a record); the aggregator solves for the next coefficients and stops when the
pooled deviance no longer changes. ``gender`` is categorical: the hospitals first agree on its levels
(each sends the levels it holds, only if each has at least the policy's minimum count). Run locally::

    flame sim examples/stats_glm/analysis.py --data examples/data --nodes 3

and compare with the pooled fit (statsmodels, from the test extra)::

    python examples/stats_glm/pooled.py examples/data
"""

from __future__ import annotations

import flame
from flame import stats

FORMULA = "diabetes ~ age + bmi + systolic_bp + cholesterol + smoker + gender"
ANALYSIS = stats.glm(FORMULA, source="patients.csv", family="binomial")

if __name__ == "__main__":
    flame.run(ANALYSIS)

"""Federated mean and standard deviation of CSV columns (an S3 data source on every hospital).

Non-iterative (one round). Each hospital sends, per column, only its count, mean and sum of squared
deviations (``summarise``); the aggregator combines them with Chan's parallel algorithm
(``pooled_mean_variance``), which gives the same mean and standard deviation as the pooled data,
without the cancellation of the textbook sum-of-squares formula. Run locally:
``flame sim examples/mean_std/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

from typing import Any

import flame
from flame.protocols.aggregation import pooled_mean_variance, summarise

COLUMNS = ["age", "bmi", "systolic_bp", "cholesterol"]


class LocalSummary(flame.Analyzer):
    """Count, mean and sum of squared deviations of each column of this hospital's patients."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        frame = data.dataframe("patients.csv")
        return {column: summarise(frame[column].to_numpy(dtype=float)) for column in COLUMNS}


class PooledMeanStd(flame.Aggregator):
    """Pooled mean and standard deviation (ddof=1) per column, and the number of patients."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for column in COLUMNS:
            pooled = pooled_mean_variance({node: update[column] for node, update in updates.items()})
            result[column] = {
                "n": int(pooled["n"]),
                "mean": float(pooled["mean"]),
                "std": float(pooled["std"]),
            }
        return result


if __name__ == "__main__":
    flame.run(LocalSummary(), PooledMeanStd(), max_rounds=1)

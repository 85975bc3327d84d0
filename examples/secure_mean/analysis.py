"""Federated mean and standard deviation in secure mode: the aggregator sees only sums.

Each hospital sends its count, the sums and the sums of squares of the columns, all three encrypted
under the analysis' threshold Paillier key (``secure=...``). The aggregator adds the ciphertexts without
decrypting them, a majority of the hospitals (each holding one key share) decrypt only the totals,
after checking them against what each hospital committed to, and the aggregator computes the pooled mean
and standard deviation from the totals. The result equals the plain ``mean_std`` example within the
fixed-point precision of the layout (2**-12 on every sum). Run locally:
``flame sim examples/secure_mean/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import flame
from flame.federated.secure import SecureAggregation, total
from flame.protocols.paillier import Layout

COLUMNS = ["age", "bmi", "systolic_bp", "cholesterol"]

#: Sums of squares of up to ~1000 patients per hospital stay below 2**28; resolution 2**-12.
#: A 2048-bit key (112-bit security) is dealt in seconds; the default 3072 bits takes a minute or more.
SECURE = SecureAggregation(
    fields=("n", "sum", "sumsq"),
    layout=Layout(frac_bits=12, bound=2**28, max_contributors=63),
    key_bits=2048,
)


class LocalSums(flame.Analyzer):
    """Count, sums and sums of squares of this hospital's columns (to be encrypted)."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        values = data.dataframe("patients.csv")[COLUMNS].to_numpy(dtype=float)
        return {"n": float(len(values)), "sum": values.sum(axis=0), "sumsq": (values**2).sum(axis=0)}


class PooledFromTotals(flame.Aggregator):
    """Mean and standard deviation (ddof=1) per column from the decrypted totals."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        n, sums, squares = (
            total(updates, "n"),
            np.asarray(total(updates, "sum")),
            np.asarray(total(updates, "sumsq")),
        )
        n = round_count(n)
        mean = sums / n
        variance = (squares - n * mean**2) / (n - 1)
        return {
            column: {"n": n, "mean": float(mean[i]), "std": math.sqrt(max(float(variance[i]), 0.0))}
            for i, column in enumerate(COLUMNS)
        }


def round_count(value: float) -> int:
    """Counts travel as fixed-point numbers; they come back within 2**-12 of a whole number."""
    return round(value)


if __name__ == "__main__":
    flame.run(LocalSums(), PooledFromTotals(), max_rounds=1, secure=SECURE)

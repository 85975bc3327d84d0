"""The logistic regression of ``logistic_regression/`` in secure mode: gradients and Hessians are
summed under Paillier encryption, so the aggregator never sees one hospital's terms.

The analyzer and aggregator are the plain example's; only the aggregation reads the totals through
:func:`flame.federated.secure.total` (which also works without encryption) and the run turns on
``secure=``. The coefficients equal the plain federated fit within the fixed-point precision (2**-24
on every summed term). Run locally:
``flame sim examples/secure_logistic_regression/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import flame
from flame.federated.secure import SecureAggregation, total
from flame.protocols.paillier import Layout

FEATURES = ["age", "bmi", "systolic_bp", "cholesterol", "smoker", "male"]
CENTRE = np.array([50.0, 27.0, 130.0, 200.0, 0.0, 0.0])
SCALE = np.array([10.0, 5.0, 20.0, 40.0, 1.0, 1.0])

#: Gradient and Hessian entries of up to ~1000 patients stay within ±2**14; resolution 2**-24.
#: A 2048-bit key (112-bit security) is dealt in seconds; the default 3072 bits takes a minute or more.
SECURE = SecureAggregation(
    fields=("gradient", "hessian"),
    layout=Layout(frac_bits=24, bound=2**14, max_contributors=63),
    key_bits=2048,
)


def design(frame: Any) -> tuple[np.ndarray, np.ndarray]:
    frame = frame.assign(male=(frame["gender"] == "male").astype(float))
    x = (frame[FEATURES].to_numpy(dtype=float) - CENTRE) / SCALE
    return np.column_stack([np.ones(len(frame)), x]), frame["diabetes"].to_numpy(dtype=float)


class LocalNewtonTerms(flame.Analyzer):
    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        x, y = design(data.dataframe("patients.csv"))
        beta = np.zeros(x.shape[1]) if aggregate is None else aggregate["beta"]
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        return {"gradient": x.T @ (y - p), "hessian": -(x.T * (p * (1.0 - p))) @ x}


class NewtonStep(flame.Aggregator):
    tolerance = 1e-9

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        gradient, hessian = np.asarray(total(updates, "gradient")), np.asarray(total(updates, "hessian"))
        beta = np.zeros(len(gradient)) if previous is None else previous["beta"]
        step = np.linalg.solve(hessian, gradient)
        return {"beta": beta - step, "step": float(np.abs(step).max())}

    def converged(self, aggregate: Any, previous: Any, round: int) -> bool:
        return bool(aggregate["step"] < self.tolerance)

    def final_result(self, aggregate: Any) -> dict[str, Any]:
        return {"coefficients": dict(zip(["intercept", *FEATURES], aggregate["beta"].tolist(), strict=True))}


if __name__ == "__main__":
    flame.run(LocalNewtonTerms(), NewtonStep(), max_rounds=25, secure=SECURE)

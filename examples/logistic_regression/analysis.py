"""Federated logistic regression by Newton steps: the risk of diabetes from age, BMI, blood pressure,
cholesterol, smoking and sex, fitted over all hospitals without pooling their patients.

Each round every hospital computes, at the current coefficients, the gradient and the Hessian of its
patients' log-likelihood; the aggregator adds them (the sums equal those over the pooled data) and takes
one Newton step. Newton converges quadratically: after a handful of rounds the coefficients equal a
pooled fit to 1e-6 and better. Run locally:
``flame sim examples/logistic_regression/analysis.py --data examples/data --nodes 3``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

import flame

FEATURES = ["age", "bmi", "systolic_bp", "cholesterol", "smoker", "male"]
OUTCOME = "diabetes"
#: Fixed feature scaling (known in advance, the same on every node): keeps the Hessian well conditioned.
CENTRE = np.array([50.0, 27.0, 130.0, 200.0, 0.0, 0.0])
SCALE = np.array([10.0, 5.0, 20.0, 40.0, 1.0, 1.0])


def design(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The design matrix (intercept first, scaled features) and the outcome vector."""
    frame = frame.assign(male=(frame["gender"] == "male").astype(float))
    x = (frame[FEATURES].to_numpy(dtype=float) - CENTRE) / SCALE
    return np.column_stack([np.ones(len(frame)), x]), frame[OUTCOME].to_numpy(dtype=float)


def gradient_hessian(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of the log-likelihood of a logistic model at ``beta``."""
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    return x.T @ (y - p), -(x.T * (p * (1.0 - p))) @ x


class LocalNewtonTerms(flame.Analyzer):
    """Gradient and Hessian of this hospital's patients at the current coefficients."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        x, y = design(data.dataframe("patients.csv"))
        beta = np.zeros(x.shape[1]) if aggregate is None else aggregate["beta"]
        gradient, hessian = gradient_hessian(x, y, beta)
        return {"gradient": gradient, "hessian": hessian, "n": len(y)}


class NewtonStep(flame.Aggregator):
    """Sums the hospitals' terms and takes one Newton step; converged when the step is tiny."""

    tolerance = 1e-10

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        gradient = sum(u["gradient"] for u in updates.values())
        hessian = sum(u["hessian"] for u in updates.values())
        beta = np.zeros(len(gradient)) if previous is None else previous["beta"]
        step = np.linalg.solve(hessian, gradient)
        return {
            "beta": beta - step,
            "step": float(np.abs(step).max()),
            "n": sum(u["n"] for u in updates.values()),
        }

    def converged(self, aggregate: Any, previous: Any, round: int) -> bool:
        return bool(aggregate["step"] < self.tolerance)

    def final_result(self, aggregate: Any) -> dict[str, Any]:
        names = ["intercept", *FEATURES]
        return {
            "coefficients": dict(zip(names, aggregate["beta"].tolist(), strict=True)),
            "n": aggregate["n"],
        }


if __name__ == "__main__":
    flame.run(LocalNewtonTerms(), NewtonStep(), max_rounds=25)

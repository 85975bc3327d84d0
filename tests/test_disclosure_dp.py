"""Central differential privacy: OpenDP's noise has the stated distribution and scale; the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flame.disclosure import dp
from flame.errors import PayloadError

DRAWS = 4000
#: Kolmogorov-Smirnov critical value for a false alarm of 1e-6 (c(alpha) = sqrt(-ln(alpha / 2) / 2)).
KS_CRITICAL = math.sqrt(-math.log(1e-6 / 2) / 2) / math.sqrt(DRAWS)


def laplace_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(x / scale), 1 - 0.5 * np.exp(-x / scale))


def normal_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    return np.array([0.5 * (1 + math.erf(v / (scale * math.sqrt(2)))) for v in x])


def ks_statistic(samples: np.ndarray, cdf: np.ndarray) -> float:
    n = samples.size
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    return float(max(np.max(ecdf_hi - cdf), np.max(cdf - ecdf_lo)))


def noise(request: dp.DPRequest, draws: int) -> tuple[np.ndarray, dp.Release]:
    """``draws`` independent noisy releases of the request's value, minus the value (one vector draw)."""
    vector = dp.DPRequest(
        [float(request.value)] * draws, request.mechanism, request.epsilon, request.sensitivity, request.delta
    )
    release = dp.apply(vector)
    return np.sort(np.asarray(release.value) - float(request.value)), release


def test_laplace_noise_has_the_stated_distribution_and_scale() -> None:
    request = dp.laplace(37.5, epsilon=0.5, sensitivity=2.0)
    samples, release = noise(request, DRAWS)
    assert release.scale == pytest.approx(4.0)
    assert release.epsilon == pytest.approx(0.5)
    assert ks_statistic(samples, laplace_cdf(samples, 4.0)) < KS_CRITICAL
    # a scale off by 20 % is told apart by the same test: it has power at this sample size
    assert (
        ks_statistic(samples, laplace_cdf(samples, 4.8)) > KS_CRITICAL
        or ks_statistic(samples, laplace_cdf(samples, 3.2)) > KS_CRITICAL
    )


def test_gaussian_noise_has_the_stated_distribution_and_scale() -> None:
    request = dp.gaussian(10.0, epsilon=1.0, delta=1e-6, sensitivity=1.0)
    samples, release = noise(request, DRAWS)
    assert release.scale == pytest.approx(dp.gaussian_scale(1.0, 1e-6, 1.0))
    assert 0 < release.epsilon <= 1.0 and release.delta == 1e-6
    assert ks_statistic(samples, normal_cdf(samples, release.scale)) < KS_CRITICAL


def test_single_values_and_sensitivity_from_typed_statistics() -> None:
    summary = {"n": 200, "mean": 51.0, "m2": 1.0}
    request = dp.laplace_mean(summary, epsilon=1.0, bounds=(0.0, 120.0))
    assert request.sensitivity == pytest.approx(0.6)
    release = dp.apply(request)
    assert isinstance(release.value, float) and release.epsilon == pytest.approx(1.0)
    assert dp.laplace_count(12, epsilon=0.1).sensitivity == 1.0
    assert dp.sum_sensitivity((-5.0, 3.0)) == 5.0
    with pytest.raises(PayloadError, match="n > 0"):
        dp.laplace_mean({"n": 0, "mean": 1.0}, epsilon=1.0, bounds=(0, 1))
    with pytest.raises(PayloadError, match="epsilon"):
        dp.laplace(1.0, epsilon=0, sensitivity=1)
    with pytest.raises(PayloadError, match="delta"):
        dp.gaussian(1.0, epsilon=1, delta=0, sensitivity=1)


def test_laplace_noise_for_local_dp_services() -> None:
    samples = np.sort(np.array([dp.laplace_noise(0.0, 2.0) for _ in range(1000)]))
    critical = math.sqrt(-math.log(1e-6 / 2) / 2) / math.sqrt(1000)
    assert ks_statistic(samples, laplace_cdf(samples, 2.0)) < critical
    assert dp.laplace_noise(5.0, 0.0) == 5.0


def test_budget_arithmetic() -> None:
    budget = dp.Budget(1.0, 1e-6, spent_epsilon=0.7)
    assert budget.allows(0.3, 0.0)
    assert not budget.allows(0.31, 0.0)
    assert not budget.allows(0.1, 2e-6)
    assert budget.remaining() == (pytest.approx(0.3), 1e-6)

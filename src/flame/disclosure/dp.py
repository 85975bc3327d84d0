"""Central differential privacy on released values, with OpenDP's mechanisms and a per-project budget.

An analysis marks a field of what it releases (typically the aggregator's final result) as a
:class:`DPRequest`::

    from flame.disclosure import dp

    def final_result(self, aggregate):
        return {"mean_age": dp.laplace_mean(aggregate, epsilon=0.5, bounds=(0, 120)),
                "patients": dp.laplace(aggregate["n"], epsilon=0.5, sensitivity=1)}

When the payload leaves the node, the node's guard replaces each request by the value plus noise drawn
by OpenDP (Laplace: ``make_laplace``, scale ``sensitivity / epsilon``; Gaussian: ``make_gaussian``,
calibrated in zero-concentrated DP and converted to (epsilon, delta) by OpenDP's privacy map), and
spends the epsilon and delta that OpenDP's privacy map reports from the project's budget in the node's
ledger (sequential composition: spends add up). A release that would exceed the budget is refused and
nothing is spent.

Sensitivity is either given (L1 for Laplace, L2 for Gaussian) or derived from a typed statistic with
declared bounds: a mean over ``n`` records of values in ``[lo, hi]`` changes by at most
``(hi - lo) / n`` when one record changes; a count by 1; a sum by ``max(|lo|, |hi|)``. The node cannot
see whether the analysis clamped its values to the declared bounds: the guarantee holds only if it did
(``numpy.clip`` before :func:`~flame.protocols.aggregation.summarise`).

OpenDP samples from the operating system's CSPRNG and has no seed; the statistical tests of the noise
therefore use many draws and a goodness-of-fit bound with a tiny false-alarm probability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from flame._lazy import on_first_use
from flame.errors import ConfigurationError, PayloadError

if TYPE_CHECKING:
    import numpy as np
else:  # NumPy loads when a noise request first needs it, not on ``import flame``
    np = on_first_use("numpy", globals(), "np")

Mechanism = Literal["laplace", "gaussian"]


@dataclass(frozen=True)
class DPRequest:
    """A value to release with differential privacy: the node adds the noise when it leaves."""

    value: Any
    mechanism: Mechanism
    epsilon: float
    sensitivity: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in ("laplace", "gaussian"):
            raise PayloadError(f"DP: mechanism must be 'laplace' or 'gaussian', got {self.mechanism!r}")
        _positive("epsilon", self.epsilon)
        if isinstance(self.sensitivity, bool) or not isinstance(self.sensitivity, int | float):
            raise PayloadError(f"DP: sensitivity must be a number, got {self.sensitivity!r}")
        if not (math.isfinite(self.sensitivity) and self.sensitivity > 0):
            raise PayloadError(f"DP: sensitivity must be finite and > 0, got {self.sensitivity!r}")
        if self.mechanism == "gaussian" and not 0 < self.delta < 1:
            raise PayloadError(f"DP: the Gaussian mechanism needs 0 < delta < 1, got {self.delta!r}")
        array = np.asarray(self.value, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise PayloadError("DP: the value must be finite")


def _positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise PayloadError(f"DP: {name} must be a finite number > 0, got {value!r}")


def laplace(value: Any, *, epsilon: float, sensitivity: float) -> DPRequest:
    """Release ``value`` (a number or array) with Laplace noise for ``epsilon``-DP (L1 ``sensitivity``)."""
    return DPRequest(value, "laplace", float(epsilon), float(sensitivity))


def gaussian(value: Any, *, epsilon: float, delta: float, sensitivity: float) -> DPRequest:
    """Release ``value`` with Gaussian noise for (``epsilon``, ``delta``)-DP (L2 ``sensitivity``)."""
    return DPRequest(value, "gaussian", float(epsilon), float(sensitivity), float(delta))


def mean_sensitivity(bounds: tuple[float, float], n: int) -> float:
    """How much a mean over ``n`` records of values in ``bounds`` moves when one record changes."""
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise PayloadError(f"DP: bounds must be finite with lo < hi, got {bounds!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise PayloadError(f"DP: a mean needs n > 0 records, got {n!r}")
    return (hi - lo) / int(n)


def sum_sensitivity(bounds: tuple[float, float]) -> float:
    """How much a sum of values in ``bounds`` moves when one record is added or removed."""
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise PayloadError(f"DP: bounds must be finite with lo < hi, got {bounds!r}")
    return max(abs(lo), abs(hi))


def laplace_mean(statistic: Mapping[str, Any], *, epsilon: float, bounds: tuple[float, float]) -> DPRequest:
    """The ``mean`` of a typed statistic (``{"n", "mean", ...}``, as from ``summarise`` or
    ``pooled_mean_variance``) with Laplace noise; sensitivity ``(hi - lo) / n`` from the declared bounds."""
    n, mean = _typed(statistic)
    return laplace(mean, epsilon=epsilon, sensitivity=mean_sensitivity(bounds, n))


def gaussian_mean(
    statistic: Mapping[str, Any], *, epsilon: float, delta: float, bounds: tuple[float, float]
) -> DPRequest:
    """Like :func:`laplace_mean` with the Gaussian mechanism (L2 sensitivity ``(hi - lo) / n``)."""
    n, mean = _typed(statistic)
    return gaussian(mean, epsilon=epsilon, delta=delta, sensitivity=mean_sensitivity(bounds, n))


def laplace_count(count: int, *, epsilon: float) -> DPRequest:
    """A count with Laplace noise (sensitivity 1)."""
    return laplace(count, epsilon=epsilon, sensitivity=1.0)


def _typed(statistic: Mapping[str, Any]) -> tuple[int, Any]:
    if not isinstance(statistic, Mapping) or "n" not in statistic or "mean" not in statistic:
        raise PayloadError(
            'DP: expected a typed statistic with "n" and "mean" (from summarise or pooled_mean_variance)'
        )
    return statistic["n"], statistic["mean"]


# -- OpenDP -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """A noisy value and the privacy it cost, as OpenDP's privacy map reports it."""

    value: Any
    epsilon: float
    delta: float
    scale: float


def _opendp() -> Any:
    try:
        import opendp.prelude as odp
    except ImportError:  # pragma: no cover - a dependency of the SDK
        raise ConfigurationError(
            "opendp", "is not installed", "the opendp package (pip install opendp)"
        ) from None
    odp.enable_features("contrib")
    return odp


def gaussian_scale(epsilon: float, delta: float, sensitivity: float) -> float:
    """The Gaussian scale whose zCDP ``rho`` converts to (``epsilon``, ``delta``)-DP.

    From rho-zCDP follows (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun and Steinke, 2016); solved for
    rho, and rho = sensitivity**2 / (2 scale**2).
    """
    log_term = math.log(1.0 / delta)
    root = math.sqrt(log_term + epsilon) - math.sqrt(log_term)
    rho = root * root
    return sensitivity / math.sqrt(2.0 * rho)


def measurement(request: DPRequest, shape: tuple[int, ...]) -> tuple[Any, float]:
    """OpenDP's measurement for ``request`` on values of ``shape``, and its noise scale."""
    odp = _opendp()
    vector = bool(shape)
    if vector:
        domain = odp.vector_domain(odp.atom_domain(T=float, nan=False))
        metric = odp.l1_distance(T=float) if request.mechanism == "laplace" else odp.l2_distance(T=float)
    else:
        domain = odp.atom_domain(T=float, nan=False)
        metric = odp.absolute_distance(T=float)
    if request.mechanism == "laplace":
        scale = request.sensitivity / request.epsilon
        return odp.m.make_laplace(domain, metric, scale=scale), scale
    scale = gaussian_scale(request.epsilon, request.delta, request.sensitivity)
    zcdp = odp.m.make_gaussian(domain, metric, scale=scale)
    return odp.c.make_zCDP_to_approxDP(zcdp), scale


def apply(request: DPRequest) -> Release:
    """Draw the noise with OpenDP; the cost is what OpenDP's privacy map gives for the sensitivity."""
    array = np.asarray(request.value, dtype=np.float64)
    meas, scale = measurement(request, array.shape)
    if array.ndim > 1:
        raise PayloadError(f"DP: values of at most one dimension, got shape {array.shape}")
    data: Any = [float(v) for v in array] if array.ndim else float(array)
    noisy = meas(data)
    cost = meas.map(request.sensitivity)
    if request.mechanism == "laplace":
        epsilon, delta = float(cost), 0.0
    else:
        epsilon, delta = float(cost.epsilon(request.delta)), request.delta
    value: Any = np.asarray(noisy, dtype=np.float64) if array.ndim else float(noisy)
    if isinstance(request.value, list | tuple):
        value = [float(v) for v in value]
    return Release(value, epsilon, delta, scale)


def laplace_noise(value: float, scale: float) -> float:
    """``value`` plus Laplace noise of ``scale`` drawn by OpenDP (for services that add local DP)."""
    odp = _opendp()
    if not (math.isfinite(scale) and scale >= 0):
        raise PayloadError(f"DP: the Laplace scale must be finite and >= 0, got {scale!r}")
    meas = odp.m.make_laplace(
        odp.atom_domain(T=float, nan=False), odp.absolute_distance(T=float), scale=scale
    )
    return float(meas(float(value)))


@dataclass(frozen=True)
class Budget:
    """A project's privacy budget on this node and what earlier releases spent of it."""

    epsilon: float
    delta: float
    spent_epsilon: float = 0.0
    spent_delta: float = 0.0

    def allows(self, epsilon: float, delta: float) -> bool:
        slack = 1e-12
        return (
            self.spent_epsilon + epsilon <= self.epsilon + slack
            and self.spent_delta + delta <= self.delta + slack * 1e-6
        )

    def remaining(self) -> tuple[float, float]:
        return max(0.0, self.epsilon - self.spent_epsilon), max(0.0, self.delta - self.spent_delta)


__all__ = [
    "Budget",
    "DPRequest",
    "Release",
    "apply",
    "gaussian",
    "gaussian_mean",
    "gaussian_scale",
    "laplace",
    "laplace_count",
    "laplace_mean",
    "laplace_noise",
    "mean_sensitivity",
    "sum_sensitivity",
]

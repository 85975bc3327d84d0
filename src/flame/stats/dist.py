"""The distribution functions behind the p-values and confidence intervals (SciPy's special functions)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special


def norm_cdf(x: float) -> float:
    return float(special.ndtr(x))


def norm_sf(x: float) -> float:
    return float(special.ndtr(-x))


def norm_ppf(q: float) -> float:
    return float(special.ndtri(q))


def t_sf(x: float, df: float) -> float:
    """P(T > x) for Student's t with ``df`` degrees of freedom (``df`` may be fractional: Welch)."""
    if math.isnan(x) or not df > 0:
        return math.nan
    return float(special.stdtr(df, -x))


def t_ppf(q: float, df: float) -> float:
    if not df > 0:
        return math.nan
    return float(special.stdtrit(df, q))


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for the chi-square distribution with ``df`` degrees of freedom."""
    if math.isnan(x) or not df > 0:
        return math.nan
    return float(special.chdtrc(df, x))


def log_comb(n: Any, k: Any) -> Any:
    """log of the binomial coefficient n over k (element-wise for arrays)."""
    return (
        special.gammaln(np.add(n, 1)) - special.gammaln(np.add(k, 1)) - special.gammaln(np.subtract(n, k) + 1)
    )


__all__ = ["chi2_sf", "log_comb", "norm_cdf", "norm_ppf", "norm_sf", "t_ppf", "t_sf"]

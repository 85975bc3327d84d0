"""flame: the SDK for federated analyses on FLAME nodes.

Write an :class:`Analyzer` (runs next to the data on every analysis node) and an :class:`Aggregator`
(combines what the nodes send), and call :func:`run`::

    import flame

    class Mean(flame.Analyzer):
        def analyze(self, data, aggregate, round):
            ages = data.dataframe("patients.csv")["age"]
            return {"n": len(ages), "sum": float(ages.sum())}

    class Pool(flame.Aggregator):
        def aggregate(self, updates, round, previous):
            n = sum(u["n"] for u in updates.values())
            return {"n": n, "mean": sum(u["sum"] for u in updates.values()) / n}

    if __name__ == "__main__":
        flame.run(Mean(), Pool())

The same file runs on FLAME nodes (``python analysis.py``) and locally (``flame sim analysis.py``); from
Python, a test or a notebook, ``flame.simulate(Mean(), Pool(), data="data")`` runs it on a local
federation and returns its result, per-round figures and run report.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flame.errors import FlameError

if TYPE_CHECKING:
    from flame.federated import Aggregator, Analysis, AnalysisClient, Analyzer, Data, FederationOptions
    from flame.local import SimulationResult, simulate, simulate_async
    from flame.runner import run

__version__ = "0.1.0"

# Imported on first use, so that ``import flame.codec`` or ``flame.protocols`` stays light.
_LAZY = {
    "Analysis": "flame.federated",
    "AnalysisClient": "flame.federated",
    "Aggregator": "flame.federated",
    "Analyzer": "flame.federated",
    "Data": "flame.federated",
    "FederationOptions": "flame.federated",
    "run": "flame.runner",
    "simulate": "flame.local",
    "simulate_async": "flame.local",
    "SimulationResult": "flame.local",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flame' has no attribute {name!r}")


__all__ = [
    "Aggregator",
    "Analysis",
    "AnalysisClient",
    "Analyzer",
    "Data",
    "FederationOptions",
    "FlameError",
    "SimulationResult",
    "__version__",
    "run",
    "simulate",
    "simulate_async",
]

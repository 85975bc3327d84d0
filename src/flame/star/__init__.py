"""PrivateAIM's pattern library (``flame.star``) on this SDK: analyses written for it run unchanged.

::

    from flame.star import StarModel, StarAnalyzer, StarAggregator

    class MyAnalyzer(StarAnalyzer):
        def analysis_method(self, data, aggregator_results):
            return data[0]["Patient?_summary=count"]["total"]

    class MyAggregator(StarAggregator):
        def aggregation_method(self, analysis_results):
            return sum(analysis_results)

        def has_converged(self, result, last_result):
            return True

    if __name__ == "__main__":
        StarModel(MyAnalyzer, MyAggregator, "fhir", query="Patient?_summary=count")

``FlameCoreSDK`` (also importable as ``from flamesdk import FlameCoreSDK``) is PrivateAIM's core API on
this SDK's node runtime; it keeps the surface of PrivateAIM's SDK API and deliberately differs (bounded
waits, raised errors, pickle-free payloads unless a peer speaks pickle). ``StarModelTester`` (and
``StarRun``, ``run_star_nodes``, ``run_star_script``) run an analysis locally on the emulated node stack;
they live in :mod:`flame.local.star_tester` and are imported from there on first use, so the production
path never imports the emulator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flame.star.aggregator import StarAggregator
from flame.star.analyzer import StarAnalyzer
from flame.star.core_sdk import FlameCoreSDK
from flame.star.model import StarContactError, StarLocalDPModel, StarModel
from flame.star.node_base import Node, StarRole

if TYPE_CHECKING:
    from flame.local.star_tester import StarModelTester, StarRun, run_star_nodes, run_star_script

#: Local-run helpers, imported on first use (they import the emulated node stack).
_LOCAL = ("StarModelTester", "StarRun", "run_star_nodes", "run_star_script")


def __getattr__(name: str) -> Any:
    if name in _LOCAL:
        value = getattr(importlib.import_module("flame.local.star_tester"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flame.star' has no attribute {name!r}")


__all__ = [
    "FlameCoreSDK",
    "Node",
    "StarAggregator",
    "StarAnalyzer",
    "StarContactError",
    "StarLocalDPModel",
    "StarModel",
    "StarModelTester",
    "StarRole",
    "StarRun",
    "run_star_nodes",
    "run_star_script",
]

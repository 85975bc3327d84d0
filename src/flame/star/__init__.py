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
this SDK's node runtime; :class:`StarModelTester` runs an analysis locally on the emulated node stack.
It keeps the surface of PrivateAIM's SDK API and deliberately differs (bounded waits, raised errors,
pickle-free payloads unless a peer speaks pickle).
"""

from flame.star.aggregator import StarAggregator
from flame.star.analyzer import StarAnalyzer
from flame.star.core_sdk import FlameCoreSDK
from flame.star.model import StarContactError, StarLocalDPModel, StarModel
from flame.star.node_base import Node, StarRole
from flame.star.tester import StarModelTester, StarRun, run_star_nodes, run_star_script

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

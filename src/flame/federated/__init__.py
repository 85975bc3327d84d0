"""The federated protocol (star topology): rounds, quorum, timeouts, stragglers, checkpoints, resume.

The seed's names stay: :meth:`Aggregator.execute`, ``_await_parameters``, ``_aggregate_parameters``,
``_send_parameters``; :meth:`AnalysisClient.send_results`, :meth:`AnalysisClient.await_aggregation`.
"""

from flame.federated.aggregator import Aggregator
from flame.federated.analysis import Analysis
from flame.federated.analyzer import AnalysisClient, Analyzer
from flame.federated.data import Data
from flame.federated.options import FederationOptions
from flame.federated.run import run_node

__all__ = ["Aggregator", "Analysis", "AnalysisClient", "Analyzer", "Data", "FederationOptions", "run_node"]

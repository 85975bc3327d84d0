"""A ready analysis: analyzer, aggregator and options as one object.

``flame.stats`` functions return one; ``flame.run(analysis)`` runs it on a FLAME node and
``flame.simulate(analysis)`` on a local federation, unchanged. :meth:`Analysis.interpret` turns the
final result (the plain data that reaches the hub) into what the author works with, e.g. a typed
statistics result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from flame.errors import ConfigurationError
from flame.federated.aggregator import Aggregator
from flame.federated.analyzer import Analyzer
from flame.federated.options import FederationOptions


@dataclass(frozen=True)
class Analysis:
    """An analyzer, an aggregator and the options they run with.

    Subclasses (or a ``name``) say what the analysis computes; :meth:`interpret` converts the final
    result. The base class returns it unchanged.
    """

    #: An instance, or the class (instantiated once per node).
    analyzer: Analyzer | type[Analyzer]
    aggregator: Aggregator | type[Aggregator]
    options: FederationOptions = field(default_factory=FederationOptions)
    #: A short label for logs and reports, e.g. ``"glm(diabetes ~ age + bmi)"``.
    name: str = ""

    def __post_init__(self) -> None:
        _check_kind("analyzer", self.analyzer, Analyzer)
        _check_kind("aggregator", self.aggregator, Aggregator)

    def with_options(self, **changes: Any) -> Analysis:
        """The same analysis with some options changed (e.g. ``quorum=2``)."""
        return replace(self, options=self.options.with_changes(**changes))

    def interpret(self, final: Any) -> Any:
        """The author's view of the final result ``final`` (the aggregator's last aggregate)."""
        return final


def _check_kind(which: str, obj: Any, base: type) -> None:
    if isinstance(obj, base) or (isinstance(obj, type) and issubclass(obj, base)):
        return
    name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    raise ConfigurationError(
        which,
        f"must be a flame.{base.__name__} (an instance or the class), not {name}",
        "flame.run(MyAnalyzer(), MyAggregator()) or flame.run(ready_analysis)",
    )


__all__ = ["Analysis"]

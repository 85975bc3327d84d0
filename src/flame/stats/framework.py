"""The machinery every ``flame.stats`` function shares: a statistic's steps as a ready ``flame.Analysis``.

A statistic is a :class:`Step`: what each node computes from its rows (:meth:`Step.local`), how the
aggregator combines the nodes' updates (:meth:`Step.combine`), whether it is done
(:meth:`Step.converged`, for iterative statistics), what reaches the hub (:meth:`Step.final`) and the
typed result made of it (:meth:`Step.interpret`). :func:`build_analysis` wraps a step and a
:class:`~flame.stats.source.Source` into a :class:`StatsAnalysis`, which ``flame.run`` runs on FLAME
nodes and the local simulation runs unchanged.

What goes to the hub is plain data (``output_type="codec"``): ``{"result_of", "rounds", "nodes",
...}`` (``result_of`` the step's name), with ``nodes`` the records each analysis node contributed;
:meth:`StatsAnalysis.interpret` (or :func:`interpret`) turns it into the result object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flame.disclosure.guard import DisclosureGuard
from flame.disclosure.policy import DisclosurePolicy
from flame.errors import ConfigurationError, FlameError
from flame.federated.aggregator import Aggregator
from flame.federated.analysis import Analysis
from flame.federated.analyzer import Analyzer
from flame.federated.options import FederationOptions
from flame.stats.results import StatsResult
from flame.stats.source import Source

if TYPE_CHECKING:
    import pandas as pd

    from flame.federated.data import Data


#: Keys of the final result the framework sets (a step's :meth:`Step.final` must not use them).
RESERVED = frozenset({"result_of", "rounds"})


class Step:
    """One federated statistic: the per-node and the combining computation.

    Subclasses keep their parameters as plain attributes and no state of a run: the nodes of a local
    federation share one step object, so whatever a later round needs travels in the aggregate. A
    one-round statistic implements :meth:`local`, :meth:`combine`, :meth:`final` and
    :meth:`interpret`; an iterative one also :meth:`converged` and sets :attr:`max_rounds`.
    """

    #: Short name of the statistic, e.g. ``"describe"``.
    name: str = "statistic"
    #: Rounds at most (1: a one-round statistic).
    max_rounds: int = 1

    def local(self, frame: pd.DataFrame, aggregate: Any | None, round: int, policy: DisclosurePolicy) -> Any:
        """This node's update for ``round`` from its rows (``aggregate``: the previous round's)."""
        raise NotImplementedError

    def combine(self, updates: Mapping[str, Any], round: int, previous: Any | None) -> Any:
        """The aggregate of ``round`` from the nodes' updates (keyed by node id)."""
        raise NotImplementedError

    def converged(self, aggregate: Any, previous: Any | None, round: int) -> bool:
        """Whether the statistic is complete after ``round`` (a one-round statistic always is)."""
        return True

    def final(self, aggregate: Any) -> dict[str, Any]:
        """The plain data for the hub; must hold ``"nodes"`` (records per node), not :data:`RESERVED` keys."""
        raise NotImplementedError

    def interpret(self, final: Mapping[str, Any]) -> StatsResult:
        """The typed result of what :meth:`final` returned (plus ``"rounds"``)."""
        raise NotImplementedError

    @property
    def title(self) -> str:
        return self.name


def node_policy(data: Data | None) -> DisclosurePolicy:
    """The disclosure policy of the node ``data`` belongs to (the library default without one).

    A statistic that suppresses or coarsens what it sends (e.g. the counts of a quantile search)
    uses the node's own thresholds, so what it sends passes the node's guard.
    """
    try:
        observer = data.api.kong.observer if data is not None else None
    except FlameError:
        observer = None
    if isinstance(observer, DisclosureGuard):
        return observer.policy
    return DisclosurePolicy()


class StatsAnalyzer(Analyzer):
    """Runs a :class:`Step`'s :meth:`~Step.local` on the node's rows of a :class:`Source`."""

    def __init__(self, step: Step, source: Source) -> None:
        self.step = step
        self.source = source
        self._frame: pd.DataFrame | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> StatsAnalyzer:
        # the step and the source are immutable in use (shared); the rows are read again by each copy
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._frame = None
        return copy

    def frame(self, data: Data) -> pd.DataFrame:
        """This node's rows (read once per process)."""
        if self._frame is None:
            self._frame = self.source.load(data)
        return self._frame

    def analyze(self, data: Data, aggregate: Any, round: int) -> Any:
        previous = aggregate["value"] if isinstance(aggregate, Mapping) and "value" in aggregate else None
        return self.step.local(self.frame(data), previous, round, node_policy(data))


class StatsAggregator(Aggregator):
    """Combines the nodes' updates with a :class:`Step`; the aggregate carries its round."""

    def __init__(self, step: Step) -> None:
        self.step = step

    def __deepcopy__(self, memo: dict[int, Any]) -> StatsAggregator:
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)  # the step is shared: it keeps no state of a run
        return copy

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        before = previous["value"] if isinstance(previous, Mapping) else None
        return {"round": round, "value": self.step.combine(updates, round, before)}

    def converged(self, aggregate: Any, previous: Any | None, round: int) -> bool:
        before = previous["value"] if isinstance(previous, Mapping) else None
        return self.step.converged(aggregate["value"], before, round)

    def final_result(self, aggregate: Any) -> Any:
        final = dict(self.step.final(aggregate["value"]))
        if "nodes" not in final:
            raise FlameError(f"{self.step.name}: the final result names no records per node")
        reserved = sorted(RESERVED & set(final))
        if reserved:
            raise FlameError(f"{self.step.name}: the final result uses the reserved key(s) {reserved}")
        return {**final, "result_of": self.step.name, "rounds": int(aggregate["round"])}


@dataclass(frozen=True)
class StatsAnalysis(Analysis):
    """A ready federated statistic: run it with ``flame.run`` (or the local federation)."""

    step: Step | None = None
    source: Source | None = None

    def interpret(self, final: Any) -> Any:
        """The typed result (e.g. :class:`~flame.stats.describe.Description`) of the final result."""
        if self.step is None:
            return final
        return interpret(self.step, final)


def interpret(step: Step, final: Any) -> StatsResult:
    """``step``'s typed result of a final result (as the aggregator submitted it)."""
    if not isinstance(final, Mapping) or final.get("result_of") != step.name:
        raise ConfigurationError(
            "final result",
            f"is not a result of {step.name} ({type(final).__name__})",
            "the final result the aggregator of this statistic submitted",
        )
    return step.interpret(final)


def build_analysis(
    step: Step,
    source: Source,
    *,
    name: str | None = None,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> StatsAnalysis:
    """``step`` on ``source`` as a ready analysis.

    The options default to the step's round limit and ``output_type="codec"`` (the final result
    decodes back to plain data that :meth:`StatsAnalysis.interpret` reads); ``option_values``
    change them (``quorum=``, ``round_deadline=``, ...).
    """
    base = options or FederationOptions(max_rounds=step.max_rounds, output_type="codec")
    if option_values:
        base = base.with_changes(**option_values)
    return StatsAnalysis(
        analyzer=StatsAnalyzer(step, source),
        aggregator=StatsAggregator(step),
        options=base,
        name=name or f"{step.title} on {source.label}",
        step=step,
        source=source,
    )


def columns_of(columns: str | list[str] | tuple[str, ...], what: str = "columns") -> list[str]:
    """A list of column names from one name or several; refuses an empty or repeated list."""
    names = [columns] if isinstance(columns, str) else list(columns)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ConfigurationError(what, f"is {columns!r:.80}", "a column name or a list of column names")
    if len(set(names)) != len(names):
        raise ConfigurationError(what, f"names a column twice: {names}", "each column once")
    return names


def require_columns(frame: pd.DataFrame, names: list[str], statistic: str) -> None:
    """Raise a clear error on the node when its table lacks a column the statistic needs."""
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ConfigurationError(
            f"{statistic}: columns",
            f"{', '.join(map(repr, missing))} not in this node's table",
            f"some of {', '.join(map(str, list(frame.columns)[:30]))}",
        )


def records_by_node(updates: Mapping[str, Any], key: str = "records") -> dict[str, int]:
    """``{node: update[key]}``: the records each node's update reports."""
    return {node: int(update[key]) for node, update in sorted(updates.items())}


__all__ = [
    "StatsAggregator",
    "StatsAnalysis",
    "StatsAnalyzer",
    "Step",
    "build_analysis",
    "columns_of",
    "interpret",
    "node_policy",
    "records_by_node",
    "require_columns",
]

"""Options of a federated analysis, with their documented defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from flame.errors import ConfigurationError
from flame.node.results import OutputType


@dataclass(frozen=True)
class FederationOptions:
    """How a federated analysis runs.

    ``max_rounds=1`` is the non-iterative mode (analyse once, aggregate once); more rounds are the
    federated mode, ending early when the aggregator's ``converged`` says so.
    """

    #: Rounds at most; the last one is final whatever ``converged`` says. An aggregator that overrides
    #: ``converged`` and reaches ``max_rounds`` without it ever returning True logs a warning (and its
    #: run report lists it), or fails the analysis with ``require_convergence``.
    max_rounds: int = 1
    #: Fail the analysis, submitting nothing, when ``max_rounds`` ends an iterative analysis whose
    #: ``converged`` never returned True (default: a warning, and the last aggregate is the result).
    require_convergence: bool = False
    #: Least analysis nodes whose updates make a round: None = all of them; an int = that many; a float
    #: in (0, 1] = that fraction (rounded up). Below it the analysis fails on every node.
    quorum: int | float | None = None
    #: Seconds the aggregator waits for every analysis node in a round before going on with the quorum.
    round_deadline: float = 600.0
    #: Seconds an analysis node waits for an aggregate (None: twice the round deadline plus a minute).
    node_deadline: float | None = None
    #: Output type and file name of the final result (see :func:`flame.node.results.serialise`).
    output_type: OutputType = "str"
    filename: str | None = None
    #: Several files, one per element of a list/tuple final result.
    multiple_results: bool = False
    #: Local differential privacy of the final result, one finite number: ``{"epsilon": e,
    #: "sensitivity": s}`` has the storage service add Laplace noise of scale s/e before it reaches
    #: the hub (``PUT /final/localdp``). It is submitted at most once, also across restarts.
    local_dp: dict[str, float] | None = None
    #: The aggregator also analyses its own data each round (off: on FLAME it normally has none).
    aggregator_analyses: bool = False
    #: Secure aggregation (Paillier): which fields of the updates are summed encrypted. Next issue.
    secure: Any = None
    #: Seconds one protocol message may take to be acknowledged, all resends included.
    send_timeout: float = 120.0
    #: Encoded payloads up to this size travel inside the message (Base64); larger ones through storage.
    inline_limit: int = 256_000
    #: Save a checkpoint after every round, so a restarted node resumes (re-execution). Checkpoints are
    #: sealed so that no later analysis of the project can read them (:mod:`flame.federated.checkpoint`).
    #: Off, a restarted node starts over; the final result is still never submitted twice.
    checkpoints: bool = True

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ConfigurationError("max_rounds", f"{self.max_rounds} is below 1", "a whole number >= 1")
        if isinstance(self.quorum, float) and not 0.0 < self.quorum <= 1.0:
            raise ConfigurationError("quorum", f"{self.quorum} is not a fraction in (0, 1]", "e.g. 0.5 or 3")
        if isinstance(self.quorum, int) and self.quorum < 1:
            raise ConfigurationError(
                "quorum", f"{self.quorum} is below 1", "a whole number >= 1 or a fraction"
            )
        if self.round_deadline <= 0:
            raise ConfigurationError("round_deadline", "must be positive", "seconds, e.g. 600")
        if self.local_dp is not None:
            _check_local_dp(self.local_dp)
        if not 0 < self.inline_limit <= 400_000:
            raise ConfigurationError(
                "inline_limit", "must lie in (0, 400000] (messages carry at most ~700 KB)", "e.g. 256000"
            )

    def with_changes(self, **changes: Any) -> FederationOptions:
        return replace(self, **changes)

    def required(self, analysis_nodes: int) -> int:
        """How many updates make a round, for ``analysis_nodes`` contributors."""
        if self.quorum is None:
            return analysis_nodes
        if isinstance(self.quorum, float):
            return max(1, math.ceil(self.quorum * analysis_nodes))
        return min(self.quorum, analysis_nodes) if analysis_nodes else self.quorum

    @property
    def analysis_deadline(self) -> float:
        return self.node_deadline if self.node_deadline is not None else 2 * self.round_deadline + 60.0


def _check_local_dp(local_dp: Any) -> None:
    expected = '{"epsilon": <finite number > 0>, "sensitivity": <finite number > 0>}'
    if not isinstance(local_dp, dict) or set(local_dp) != {"epsilon", "sensitivity"}:
        raise ConfigurationError("local_dp", f"is {local_dp!r:.80}", expected)
    for name in ("epsilon", "sensitivity"):
        value = local_dp[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigurationError("local_dp", f"{name} is {value!r}", expected)

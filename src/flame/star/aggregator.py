"""``StarAggregator``: the part of a star analysis that runs on the aggregator node."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from flame.star.node_base import StarRole

if TYPE_CHECKING:
    from flame.star.core_sdk import FlameCoreSDK


class StarAggregator(StarRole):
    """Implement :meth:`aggregation_method` and :meth:`has_converged`.

    :meth:`aggregate` combines the analyzers' results (a list, in participant order). In a simple analysis
    the first aggregate is final; otherwise :meth:`has_converged` decides, never in the first iteration.
    ``delta_criteria`` holds what :meth:`has_converged` answered last (local DP applies only when it is
    true).
    """

    delta_criteria: Any = False

    def __init__(self, flame: FlameCoreSDK) -> None:
        super().__init__(flame)
        if self.role != "aggregator":
            raise ValueError(
                "Attempted to initialize aggregator node with mismatching configuration "
                f'(expected: node_role="aggregator", received="{self.role}").'
            )

    def aggregate(self, node_results: list[Any], simple_analysis: bool = True) -> tuple[Any, bool]:
        """``(result, converged)``: aggregate, ask :meth:`has_converged`, count the iteration."""
        try:
            result = self.aggregation_method(node_results)
            self.delta_criteria = self._converged(result)
        except Exception:
            self.flame.flame_log(
                "An error occurred in the given 'aggregation_method' or 'has_converged' "
                "(details at the executing node)",
                log_type="error",
            )
            raise
        converged = True if simple_analysis else bool(self.delta_criteria) and self.num_iterations != 0
        self.latest_result = result
        self.num_iterations += 1
        return self.latest_result, converged

    def _converged(self, result: Any) -> Any:
        # Older pattern versions passed num_iterations as a third argument; accept both forms.
        try:
            parameters = inspect.signature(self.has_converged).parameters.values()
        except (TypeError, ValueError):
            parameters = None
        if parameters is not None:
            positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters):
                return self.has_converged(result, self.latest_result, self.num_iterations)  # type: ignore[call-arg]
        return self.has_converged(result, self.latest_result)

    def aggregation_method(self, analysis_results: list[Any]) -> Any:
        """Combine the analyzers' results (participant order). Override it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement aggregation_method(analysis_results)"
        )

    def has_converged(self, result: Any, last_result: Any) -> bool:
        """Whether ``result`` is final, compared with ``last_result`` (None in the first iteration).

        Override it for iterative analyses. The default answers False, like PrivateAIM's empty template
        (so local DP does not apply unless it is overridden).
        """
        return False


__all__ = ["StarAggregator"]

"""``StarAnalyzer``: the part of a star analysis that runs on every ``default`` node, next to the data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flame.star.node_base import StarRole

if TYPE_CHECKING:
    from flame.star.core_sdk import FlameCoreSDK


class StarAnalyzer(StarRole):
    """Implement :meth:`analysis_method`; :meth:`analyze` calls it once per iteration.

    ``data`` is what ``get_fhir_data``/``get_s3_data`` return: one dict per data source of the node,
    ``{query: Bundle}`` for FHIR or ``{key: bytes}`` for S3. ``aggregator_results`` is None in the first
    iteration, then the aggregator's previous result.
    """

    def __init__(self, flame: FlameCoreSDK) -> None:
        super().__init__(flame)
        if self.role != "default":
            raise ValueError(
                "Attempted to initialize analyzer node with mismatching configuration "
                f'(expected: node_role="default", received="{self.role}").'
            )

    def analyze(self, data: Any) -> Any:
        """Run :meth:`analysis_method` on ``data`` with the latest aggregate; count the iteration."""
        try:
            result = self.analysis_method(data, self.latest_result)
        except Exception:
            self.flame.flame_log(
                "An error occurred in the given 'analysis_method' (details at the executing node)",
                log_type="error",
            )
            raise
        self.latest_result = result
        self.num_iterations += 1
        return self.latest_result

    def analysis_method(self, data: Any, aggregator_results: Any) -> Any:
        """Analyse this node's data; return what is sent to the aggregator. Override it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement analysis_method(data, aggregator_results)"
        )


__all__ = ["StarAnalyzer"]

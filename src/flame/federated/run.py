"""Run the matching side of the star protocol on a started node."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flame.errors import FlameError
from flame.federated.aggregator import Aggregator
from flame.federated.analyzer import AnalysisClient, Analyzer
from flame.federated.failures import describe_failure
from flame.federated.options import FederationOptions

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)


async def run_node(
    node: AsyncNode, analyzer: Analyzer, aggregator: Aggregator, options: FederationOptions
) -> Any:
    """The aggregator side on the aggregator node, the analysis side elsewhere; sets the final status.

    Returns the final result (aggregator) or the final aggregate (analysis node). On failure the node's
    status becomes ``failed`` and the error is raised.
    """
    node.set_status("executing")
    try:
        for side in (analyzer, aggregator):  # ``disclosure_policy = {...}``: tighten, never loosen
            settings = getattr(side, "disclosure_policy", None)
            if settings:
                node.disclosure.tighten(settings)
        if node.is_aggregator:
            return await aggregator.execute(node, options, analyzer=analyzer)
        return await AnalysisClient(node, analyzer, options).execute()
    except FlameError as exc:
        node.log(f"the analysis failed: {exc}", "error")
        node.set_status("failed")
        raise
    except Exception as exc:
        node.log(f"the analysis code raised {describe_failure(exc)}", "error")
        node.set_status("failed")
        raise


__all__ = ["run_node"]

"""Checkpoints for re-execution: what a node needs to resume after the pod orchestrator restarts it.

Kept in node-local storage (project-scoped) under a reserved tag made from the analysis id, so a
restarted pod of the same analysis finds them and another analysis of the project never does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flame.errors import FlameError

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)


def checkpoint_tag(analysis_id: str) -> str:
    """The reserved tag of an analysis' checkpoints: ``ck-`` and 29 hex digits of its id (tags hold 32)."""
    return "ck-" + analysis_id.replace("-", "").lower()[:29]


async def save_checkpoint(node: AsyncNode, state: dict[str, Any]) -> None:
    """Save ``state`` (codec-encodable) as this node's newest checkpoint of the analysis."""
    record = {"analysis_id": node.config.analysis_id, "node_id": node.node_id, **state}
    await node.results.save_local(record, tag=checkpoint_tag(node.config.analysis_id), filename="checkpoint")


async def load_checkpoint(node: AsyncNode) -> dict[str, Any] | None:
    """This node's newest checkpoint of the analysis, or None (a fresh start)."""
    tag = checkpoint_tag(node.config.analysis_id)
    try:
        if tag not in await node.results.tags():
            return None
        records = await node.results.load_tagged(tag, "last")
    except FlameError as exc:
        log.warning("could not read the checkpoint (%s); starting afresh", exc)
        return None
    for record in reversed(records):
        if (
            isinstance(record, dict)
            and record.get("analysis_id") == node.config.analysis_id
            and record.get("node_id") == node.node_id
        ):
            return record
    return None

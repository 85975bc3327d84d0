"""The role a star analysis gives one node (``StarAnalyzer`` or ``StarAggregator``): what both share.

PrivateAIM's pattern library calls this base ``Node``; ``flame.star.Node`` keeps that name for analyses
written for it. It is not a node runtime (that is :class:`flame.node.runtime.AsyncNode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flame.star.core_sdk import FlameCoreSDK


class StarRole:
    """The role of one node in a star analysis, bound to its :class:`~flame.star.core_sdk.FlameCoreSDK`.

    Attributes: ``flame``, ``id``, ``role``, ``finished``, ``latest_result``, ``partner_node_ids`` (the
    other participants' ids), ``num_iterations``.
    """

    id: str
    role: str
    finished: bool
    latest_result: Any
    partner_node_ids: list[str]
    num_iterations: int
    flame: FlameCoreSDK

    def __init__(self, flame: FlameCoreSDK) -> None:
        self.flame = flame
        self.id = flame.get_id()
        self.role = flame.get_role()
        self.finished = False
        self.latest_result = None
        self.partner_node_ids = flame.get_participant_ids()
        self.num_iterations = 0

    def node_finished(self) -> None:
        """Mark this node's loop as done."""
        self.finished = True

    def set_num_iterations(self, num_iterations: int) -> None:
        self.num_iterations = num_iterations

    def set_latest_result(self, latest_result: Any) -> None:
        self.latest_result = latest_result

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, role={self.role!r}, "
            f"num_iterations={self.num_iterations}, finished={self.finished})"
        )


#: PrivateAIM's name for :class:`StarRole` (``flame.star.Node``).
Node = StarRole

__all__ = ["Node", "StarRole"]

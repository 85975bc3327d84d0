"""The node runtime: event-loop thread, analysis REST API, inbox and reliable messaging, status and logs.

It knows nothing of rounds: the federated protocol is built on it in :mod:`flame.federated`.
"""

from flame.node.inbox import Inbox, Message
from flame.node.loop import LoopThread
from flame.node.runtime import AsyncNode, Node, Timeouts

__all__ = ["AsyncNode", "Inbox", "LoopThread", "Message", "Node", "Timeouts"]

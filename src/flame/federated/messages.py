"""The messages of the round protocol and how their payloads travel.

Every protocol message names the analysis and the round, so late, duplicate and foreign messages can
be told apart. Payloads are encoded with :mod:`flame.codec`; up to ``inline_limit`` bytes they ride in
the message (Base64), larger ones are stored once per receiver as intermediate data and the message
carries the ids (the platform's ``intermediate_data`` exchange).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flame import codec
from flame.errors import PayloadError, ProtocolError
from flame.node.inbox import Message

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

#: analysis node -> aggregator: the parameters of one round
UPDATE = "flame-update"
#: aggregator -> analysis nodes: the aggregate of one round (``final`` on the last)
AGGREGATE = "flame-aggregate"
#: aggregator -> analysis nodes: the analysis failed (quorum not reached, ...)
ABORT = "flame-abort"
#: aggregator -> analysis nodes, after the aggregator resumed: resend your update of ``round``
RESYNC = "flame-resync"
#: analysis node -> aggregator, after it resumed: send me your newest aggregate
REJOIN = "flame-rejoin"


async def pack(node: AsyncNode, receivers: Sequence[str], value: Any, inline_limit: int) -> dict[str, Any]:
    """The payload fields of a message carrying ``value`` to ``receivers``."""
    encoded = codec.encode(value)
    if len(encoded) <= inline_limit:
        return {"payload": base64.b64encode(encoded).decode("ascii")}  # judged in node.send_message
    # stored as intermediate data, it leaves here: the node's disclosure guard judges it first
    released = await node.disclosure.release(
        value, channel="intermediate", destination=receivers, path="payload"
    )
    if released is not value:
        encoded = codec.encode(released)
    ids = {}
    for receiver in receivers:
        ref = await node.storage.save_intermediate(encoded, receiver)
        ids[receiver] = ref.id
    return {"result_id": ids}


async def unpack(node: AsyncNode, message: Message) -> Any:
    """The value a protocol message carries for this node."""
    body = message.body
    if "payload" in body:
        try:
            raw = base64.b64decode(body["payload"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise PayloadError(
                f"message {message.id} from {message.sender} has a payload that is not Base64"
            ) from None
        return codec.decode(raw)
    return await node.read_intermediate_message(message)


def round_of(message: Message) -> int:
    """The round a protocol message is about; :class:`ProtocolError` if it names none."""
    value = message.body.get("round")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"message {message.id} from {message.sender} names no valid round")
    return value


def take(node: AsyncNode, category: str, senders: Sequence[str] | None = None) -> list[Message]:
    """Unread protocol messages of ``category`` (from ``senders``), oldest first, marked read."""
    found = node.inbox.unread(senders, category)
    messages = sorted((m for ms in found.values() for m in ms), key=lambda m: m.received_at)
    node.inbox.mark_read(messages)
    return messages


def has_unread(node: AsyncNode, categories: Sequence[str], senders: Sequence[str] | None = None) -> bool:
    return any(node.inbox.unread(senders, category) for category in categories)

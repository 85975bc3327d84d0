"""The message envelope of FLAME's SDK: the reserved ``meta`` object.

Every message body carries ``meta``; the user body must not use that key. Our nodes and nodes running
PrivateAIM's SDK read each other's envelopes, so the fields, their spelling and their formats are
exactly those of the platform.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flame.errors import PayloadError, ProtocolError

#: Categories the platform's patterns use.
READY_CHECK = "ready_check"
ANALYSIS_FINISHED = "analysis_finished"
INTERMEDIATE_DATA = "intermediate_data"

#: The largest message body sent through the broker (bytes of JSON); bulk data goes through storage.
MAX_MESSAGE_BYTES = 700_000
#: The deepest nesting of a message (``meta`` and the body count as levels 1 and up); deeper JSON is
#: refused when sending and when receiving.
MAX_DEPTH = 64

_META_FIELDS = ("type", "category", "id", "akn_id", "status", "sender", "created_at", "arrived_at", "number")


def local_time() -> str:
    """Local time as the platform writes it: ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def message_id(sender: str, number: int) -> str:
    """``{sender[:4]}-{number}-{4 hex}``: unique per message; resends reuse it."""
    return f"{sender[:4]}-{number}-{secrets.token_hex(2)}"


def outgoing(body: dict[str, Any], *, sender: str, category: str, number: int) -> dict[str, Any]:
    """A copy of ``body`` with the ``meta`` of a new outgoing message."""
    if not isinstance(body, dict):
        raise PayloadError(f"a message body must be a JSON object (dict), not {type(body).__name__}")
    if "meta" in body:
        raise PayloadError(
            "the key 'meta' is reserved for the message envelope; rename it in your message body"
        )
    if not isinstance(category, str) or not category:
        raise PayloadError("a message category must be a non-empty string")
    message = copy.deepcopy(body)
    message["meta"] = {
        "type": "outgoing",
        "category": category,
        "id": message_id(sender, number),
        "akn_id": None,
        "status": "unread",
        "sender": sender,
        "created_at": local_time(),
        "arrived_at": None,
        "number": number,
    }
    return message


def acknowledgement(message: dict[str, Any], receiver: str) -> dict[str, Any]:
    """The echo that acknowledges ``message``: the whole body, ``akn_id`` = the receiver's id."""
    ack = copy.deepcopy(message)
    ack["meta"]["type"] = "incoming"
    ack["meta"]["akn_id"] = receiver
    ack["meta"]["arrived_at"] = local_time()
    return ack


#: The top-level key of an acknowledgement that carries more acknowledgements by the same node (their
#: envelopes, a list). Our SDK sends it with every acknowledgement (empty when there is one): a node
#: that receives it knows the acknowledging node takes grouped acknowledgements too. Other SDKs read
#: an acknowledgement's ``meta`` only and ignore the key; they get one acknowledgement per message.
MORE_ACKS = "more_acks"


def acknowledgements(metas: list[dict[str, Any]], receiver: str) -> dict[str, Any]:
    """One acknowledgement body for the envelopes ``metas`` (one sender's): the first is the body's
    ``meta``, the rest are under :data:`MORE_ACKS`; each with ``akn_id`` = the receiver's id."""
    arrived = local_time()
    echoed = [{**meta, "type": "incoming", "akn_id": receiver, "arrived_at": arrived} for meta in metas]
    return {"meta": echoed[0], MORE_ACKS: echoed[1:]}


@dataclass(frozen=True)
class Meta:
    """The validated envelope fields of a received body."""

    id: str
    sender: str
    category: str
    akn_id: str | None

    @property
    def is_acknowledgement(self) -> bool:
        return self.akn_id is not None


def parse_meta(body: Any) -> Meta:
    """Validate a delivered body's envelope; :class:`ProtocolError` says what is wrong."""
    if not isinstance(body, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(body).__name__}")
    meta = body.get("meta")
    if not isinstance(meta, dict):
        raise ProtocolError("the message has no 'meta' envelope object")
    for name in ("id", "sender", "category"):
        if not isinstance(meta.get(name), str) or not meta[name]:
            raise ProtocolError(f"the message envelope has no valid meta.{name}")
    akn = meta.get("akn_id")
    if akn is not None and not isinstance(akn, str):
        raise ProtocolError("meta.akn_id must be null or a node id")
    return Meta(id=meta["id"], sender=meta["sender"], category=meta["category"], akn_id=akn)


def json_depth(value: Any, limit: int | None = None) -> int:
    """How deeply ``value`` nests lists and dicts (a scalar is 0, ``[]`` is 1); no recursion.

    Stops counting once past ``limit`` (the result is then ``limit + 1``), so a hostile value costs
    no more than it took to parse.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if limit is not None and deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def encoded_size(message: dict[str, Any]) -> int:
    """Bytes of the message as the broker carries it (compact JSON)."""
    import json

    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


__all__ = [
    "ANALYSIS_FINISHED",
    "INTERMEDIATE_DATA",
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MORE_ACKS",
    "READY_CHECK",
    "Meta",
    "acknowledgement",
    "acknowledgements",
    "encoded_size",
    "json_depth",
    "local_time",
    "message_id",
    "outgoing",
    "parse_meta",
]

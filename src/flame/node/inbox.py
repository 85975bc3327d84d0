"""The node's inbox: received messages, de-duplicated by ``meta.id``, and acknowledgements of sent ones.

All methods run on the runtime's event loop (the webhook handler and the awaiting code share it), so
each change is atomic; waiters wake on an :class:`asyncio.Condition`, never on a sleep loop.

Its memory is bounded per sender: the messenger lets only the analysis' participants' messages in,
each sender may have at most :data:`MAX_MESSAGES_PER_SENDER` messages stored at a time, its unread
messages may take at most :data:`MAX_UNREAD_BYTES_PER_SENDER` (estimated: the wire size times
:data:`MEMORY_FACTOR`, since parsed JSON such as ``[{}, {}, ...]`` takes many times its wire size), and
the ids remembered for de-duplication are the latest :data:`MAX_SEEN_PER_SENDER` of each sender. A
message over the budget is refused (:class:`InboxFullError`, a 429 to the broker) and not acknowledged,
so its sender resends it once the analysis has read what it holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from flame.errors import ProtocolError
from flame.waits import bounded

MessageStatus = Literal["unread", "read"]

#: Messages one sender may have stored at a time (read or not) before more are refused.
MAX_MESSAGES_PER_SENDER = 10_000
#: Message ids remembered per sender for de-duplication (the oldest are forgotten first).
MAX_SEEN_PER_SENDER = 100_000
#: Parsed size of a message per byte on the wire, as the inbox estimates it: above the worst case
#: (``[{},{},...]`` takes about 25 times its wire size; strings and numbers about 1 to 3).
MEMORY_FACTOR = 32
#: Estimated memory the unread messages of one sender may take (512 MiB: 16 MiB on the wire, 4
#: messages at the webhook's 4 MiB limit, about 23 at the SDK's 700 KB per message).
MAX_UNREAD_BYTES_PER_SENDER = 512 << 20


class InboxFullError(ProtocolError):
    """A sender has too many messages, or too many unread bytes, stored; nothing more is taken from it."""


@dataclass
class Message:
    """A message of the analysis: ``body`` is the dict including ``meta``; ``recipients`` its receivers."""

    body: dict[str, Any]
    recipients: list[str]
    received_at: float = field(default_factory=time.monotonic)
    #: its size on the wire (bytes); the inbox charges ``size * MEMORY_FACTOR`` while it is unread
    size: int = 0

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.body["meta"]
        return meta

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def sender(self) -> str:
        return str(self.meta["sender"])

    @property
    def category(self) -> str:
        return str(self.meta["category"])

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unread"))

    def content(self) -> dict[str, Any]:
        """The body without the envelope."""
        return {k: v for k, v in self.body.items() if k != "meta"}


class Inbox:
    """Received messages and acknowledgement bookkeeping of one node."""

    def __init__(
        self,
        *,
        max_per_sender: int = MAX_MESSAGES_PER_SENDER,
        max_seen_per_sender: int = MAX_SEEN_PER_SENDER,
        max_unread_bytes_per_sender: int = MAX_UNREAD_BYTES_PER_SENDER,
    ) -> None:
        self._messages: dict[str, Message] = {}
        #: ids stored so far, per sender, oldest first: a late duplicate of a deleted message is
        #: still recognised (within the latest ``max_seen_per_sender`` of its sender)
        self._seen: dict[str, dict[str, None]] = {}
        self._stored: dict[str, int] = {}
        #: estimated bytes of each sender's unread messages; ids of the messages charged
        self._unread_bytes: dict[str, int] = {}
        self._charged: set[str] = set()
        self.max_unread_bytes_per_sender = max_unread_bytes_per_sender
        self._acks: dict[str, set[str]] = {}
        #: the unread messages, category -> sender -> id -> message (oldest first): a waiter re-checks
        #: its condition on every change, so finding them must not cost a scan of everything stored
        self._unread: dict[str, dict[str, dict[str, Message]]] = {}
        self._changed = asyncio.Condition()
        self.max_per_sender = max_per_sender
        self.max_seen_per_sender = max_seen_per_sender
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._messages)

    async def add(self, message: Message) -> bool:
        """Store a received message; False (and nothing changes) if its id was seen before.

        Raises :class:`InboxFullError` when its sender already has ``max_per_sender`` messages stored.
        """
        sender = message.sender
        seen = self._seen.setdefault(sender, {})
        if message.id in seen or message.id in self._messages:
            self.duplicates += 1
            return False
        if self._stored.get(sender, 0) >= self.max_per_sender:
            raise InboxFullError(
                f"{self.max_per_sender} messages of {sender} are stored already; read and delete "
                "messages, or the sender is flooding this node"
            )
        cost = max(message.size, 0) * MEMORY_FACTOR
        unread = self._unread_bytes.get(sender, 0)
        if unread + cost > self.max_unread_bytes_per_sender:
            raise InboxFullError(
                f"the unread messages of {sender} take about {unread} bytes already and this one about "
                f"{cost} more (limit {self.max_unread_bytes_per_sender}); it is taken once the analysis "
                "has read what it holds (the sender resends it)"
            )
        seen[message.id] = None
        if len(seen) > self.max_seen_per_sender:
            del seen[next(iter(seen))]
        self._stored[sender] = self._stored.get(sender, 0) + 1
        message.meta["type"] = "incoming"
        message.meta.setdefault("status", "unread")
        if message.meta["status"] not in ("unread", "read"):
            message.meta["status"] = "unread"
        if message.status == "unread":
            self._unread_bytes[sender] = unread + cost
            self._charged.add(message.id)
            self._unread.setdefault(message.category, {}).setdefault(sender, {})[message.id] = message
        self._messages[message.id] = message
        await self._notify()
        return True

    async def acknowledged(self, message_id: str, node_id: str) -> None:
        """Record that ``node_id`` acknowledged our message ``message_id``."""
        self._acks.setdefault(message_id, set()).add(node_id)
        await self._notify()

    async def acknowledged_all(self, acks: list[tuple[str, str]]) -> None:
        """Record several ``(message_id, node_id)`` acknowledgements; waiters wake once."""
        for message_id, node_id in acks:
            self._acks.setdefault(message_id, set()).add(node_id)
        await self._notify()

    def forget_acks(self, message_id: str) -> None:
        """Drop what is known of ``message_id``'s acknowledgements (the sender no longer tracks it)."""
        self._acks.pop(message_id, None)

    def acks(self, message_id: str) -> set[str]:
        return set(self._acks.get(message_id, ()))

    async def changed(self) -> None:
        """Wake every waiter to re-check its condition (state outside the inbox that it reads changed)."""
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every change); False when ``timeout`` ran out."""
        async with self._changed:
            try:
                await bounded(self._changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                return predicate()
        return True

    def unread(
        self, senders: Iterable[str] | None, category: str, message_id: str | None = None
    ) -> dict[str, list[Message]]:
        """Unread messages of ``category`` per sender (all senders when None), oldest first.

        Costs in proportion to the unread messages of ``category`` (or the senders asked for, if
        fewer), not to everything the inbox holds.
        """
        by_sender = self._unread.get(category)
        if not by_sender:
            return {}
        if senders is None:
            candidates: Iterable[str] = by_sender
        else:
            wanted = senders if isinstance(senders, set | frozenset | dict) else set(senders)
            candidates = (
                [s for s in by_sender if s in wanted]
                if len(by_sender) <= len(wanted)
                else [s for s in wanted if s in by_sender]
            )
        found: dict[str, list[Message]] = {}
        for sender in candidates:
            bucket = by_sender[sender]
            if message_id is not None:
                one = bucket.get(message_id)
                messages = [one] if one is not None and one.status == "unread" else []
            else:
                # status is re-checked: a caller holding a message may have marked it read in its meta
                messages = [m for m in bucket.values() if m.status == "unread"]
            if messages:
                found[sender] = messages
        return found

    def mark_read(self, messages: Iterable[Message]) -> None:
        for message in messages:
            message.meta["status"] = "read"
            self._uncharge(message)
            self._unindex(message)

    def _unindex(self, message: Message) -> None:
        """Take ``message`` out of the unread index (if it is the one stored under its id)."""
        by_sender = self._unread.get(message.category)
        bucket = by_sender.get(message.sender) if by_sender is not None else None
        if bucket is None or bucket.get(message.id) is not message:
            return
        del bucket[message.id]
        if not bucket:
            del by_sender[message.sender]  # type: ignore[union-attr]
            if not by_sender:
                del self._unread[message.category]

    def _uncharge(self, message: Message) -> None:
        """Release what ``message`` costs against its sender's unread budget (once)."""
        if message.id in self._charged and self._messages.get(message.id) is message:
            self._charged.discard(message.id)
            sender = message.sender
            left = self._unread_bytes.get(sender, 0) - max(message.size, 0) * MEMORY_FACTOR
            if left > 0:
                self._unread_bytes[sender] = left
            else:
                self._unread_bytes.pop(sender, None)

    def unread_bytes(self, sender: str) -> int:
        """The estimated bytes of ``sender``'s unread messages."""
        return self._unread_bytes.get(sender, 0)

    def messages(self, status: MessageStatus | Literal["all"] = "unread") -> list[Message]:
        return [m for m in self._messages.values() if status == "all" or m.status == status]

    def delete(self, message_ids: Iterable[str]) -> int:
        """Delete messages by id; returns how many were there."""
        count = 0
        for message_id in message_ids:
            message = self._messages.get(message_id)
            if message is not None:
                self._uncharge(message)
                self._unindex(message)
                del self._messages[message_id]
                count += 1
                self._stored[message.sender] -= 1
        return count

    def clear(self, status: MessageStatus | Literal["all"] = "read", min_age: float | None = None) -> int:
        """Delete messages of a status, optionally only those older than ``min_age`` seconds."""
        now = time.monotonic()
        doomed = [
            m.id
            for m in self._messages.values()
            if (status == "all" or m.status == status) and (min_age is None or now - m.received_at >= min_age)
        ]
        return self.delete(doomed)

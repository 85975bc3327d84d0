"""The node's inbox: received messages, de-duplicated by ``meta.id``, and acknowledgements of sent ones.

All methods run on the runtime's event loop (the webhook handler and the awaiting code share it), so
each change is atomic; waiters wake on an :class:`asyncio.Condition`, never on a sleep loop.

Its memory is bounded per sender: the messenger lets only the analysis' participants' messages in,
each sender may have at most :data:`MAX_MESSAGES_PER_SENDER` messages stored at a time, and the ids
remembered for de-duplication are the latest :data:`MAX_SEEN_PER_SENDER` of each sender.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from flame.errors import ProtocolError

MessageStatus = Literal["unread", "read"]

#: Messages one sender may have stored at a time (read or not) before more are refused.
MAX_MESSAGES_PER_SENDER = 10_000
#: Message ids remembered per sender for de-duplication (the oldest are forgotten first).
MAX_SEEN_PER_SENDER = 100_000


class InboxFullError(ProtocolError):
    """A sender has :data:`MAX_MESSAGES_PER_SENDER` messages stored; nothing more is taken from it."""


@dataclass
class Message:
    """A message of the analysis: ``body`` is the dict including ``meta``; ``recipients`` its receivers."""

    body: dict[str, Any]
    recipients: list[str]
    received_at: float = field(default_factory=time.monotonic)

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
    ) -> None:
        self._messages: dict[str, Message] = {}
        #: ids stored so far, per sender, oldest first: a late duplicate of a deleted message is
        #: still recognised (within the latest ``max_seen_per_sender`` of its sender)
        self._seen: dict[str, dict[str, None]] = {}
        self._stored: dict[str, int] = {}
        self._acks: dict[str, set[str]] = {}
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
        seen[message.id] = None
        if len(seen) > self.max_seen_per_sender:
            del seen[next(iter(seen))]
        self._stored[sender] = self._stored.get(sender, 0) + 1
        message.meta["type"] = "incoming"
        message.meta.setdefault("status", "unread")
        if message.meta["status"] not in ("unread", "read"):
            message.meta["status"] = "unread"
        self._messages[message.id] = message
        await self._notify()
        return True

    async def acknowledged(self, message_id: str, node_id: str) -> None:
        """Record that ``node_id`` acknowledged our message ``message_id``."""
        self._acks.setdefault(message_id, set()).add(node_id)
        await self._notify()

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
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                return predicate()
        return True

    def unread(
        self, senders: Iterable[str] | None, category: str, message_id: str | None = None
    ) -> dict[str, list[Message]]:
        """Unread messages of ``category`` per sender (all senders when None), oldest first."""
        wanted = None if senders is None else set(senders)
        found: dict[str, list[Message]] = {}
        for message in self._messages.values():
            if message.status != "unread" or message.category != category:
                continue
            if wanted is not None and message.sender not in wanted:
                continue
            if message_id is not None and message.id != message_id:
                continue
            found.setdefault(message.sender, []).append(message)
        return found

    @staticmethod
    def mark_read(messages: Iterable[Message]) -> None:
        for message in messages:
            message.meta["status"] = "read"

    def messages(self, status: MessageStatus | Literal["all"] = "unread") -> list[Message]:
        return [m for m in self._messages.values() if status == "all" or m.status == status]

    def delete(self, message_ids: Iterable[str]) -> int:
        """Delete messages by id; returns how many were there."""
        count = 0
        for message_id in message_ids:
            message = self._messages.pop(message_id, None)
            if message is not None:
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

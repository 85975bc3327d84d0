"""Reliable messaging over the broker, interoperable with PrivateAIM's SDK.

The broker delivers at most once per attempt, drops on errors and persists nothing. On top of it:
every message carries the ``meta`` envelope; a receiver stores a message once (de-duplicated by
``meta.id``) and acknowledges every delivery by echoing the body with ``akn_id`` set to its own id; a
sender resends the same body (same id) to the recipients that have not acknowledged, attempt after
attempt, until all did or its timeout ran out, and returns ``(acknowledged, not_acknowledged)``.
Waiting for messages or acknowledgements wakes on arrival.

Who may deliver what. The webhook is reached only through the node's sidecar, and only the node's
message broker (and the pod orchestrator) may call it. The broker takes from the hub only messages of
this analysis that it can decrypt with the sending node's public key, so a delivery comes from a node
taking part in the analysis; but the broker does not tell the webhook which node that was, and it
forwards the body verbatim: ``meta.sender`` is whatever the sending analysis wrote. The SDK therefore
checks what it can, and refuses the rest with a :class:`ProtocolError` (the webhook answers 400 and
the broker drops the delivery):

- a message's ``meta.sender`` must be a participant (from the broker's list at start-up) and not this
  node itself; before that list is known, deliveries are refused with :class:`NotReadyError` (503:
  the broker retries them);
- an acknowledgement must echo a message this node sent (its id is in the table of sent messages,
  ``meta.sender`` is this node) and ``akn_id`` must be one of that message's recipients; a grouped
  acknowledgement (below) is taken only if every one it carries is, all by the same node;
- memory is bounded per sender (see :mod:`flame.node.inbox`) and the table of sent messages keeps the
  latest :data:`MAX_SENT_REMEMBERED`.

What the SDK cannot tell is one participant writing another participant's id as ``meta.sender``:
only the broker knows the real sender, and it does not pass it on.

Grouped acknowledgements. Every acknowledgement this SDK sends carries the key
:data:`~flame.node.envelope.MORE_ACKS` (the envelopes of further acknowledgements; empty for one). A
node that received it from a partner knows the partner takes groups: acknowledgements due to that
partner while one to it is on its way then go together in the next broker message. Partners that never
sent the key (PrivateAIM's SDK) get one acknowledgement per message, each sent at once, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flame.clients.message_broker import MessageBrokerClient
from flame.errors import FlameTimeoutError, PayloadError, ProtocolError, ServiceError
from flame.node import envelope
from flame.node.envelope import Meta
from flame.node.inbox import Inbox, Message
from flame.node.tasks import BackgroundTasks

log = logging.getLogger(__name__)

#: Default bound of one send (all attempts) and of one attempt's wait for acknowledgements (seconds).
DEFAULT_SEND_TIMEOUT = 60.0
DEFAULT_ATTEMPT_TIMEOUT = 10.0
#: Default bound of waiting for messages (seconds).
DEFAULT_AWAIT_TIMEOUT = 600.0
#: Sent messages whose acknowledgements are still accepted (the oldest are forgotten first).
MAX_SENT_REMEMBERED = 100_000
#: acknowledgements being sent at once (broker requests); further ones wait for a free slot
MAX_ACKS_IN_FLIGHT = 256
#: acknowledgements sent or waiting to be; a delivery past this is not acknowledged now (its sender
#: resends it, and the duplicate is acknowledged then): memory stays bounded under a flood
MAX_ACKS_PENDING = 8192
#: the envelope fields an acknowledgement echoes (a sender may add others; they are not copied)
_ACK_FIELDS = ("type", "category", "id", "akn_id", "status", "sender", "created_at", "arrived_at", "number")
#: acknowledgements at most in one broker message (a grouped acknowledgement)
MAX_ACKS_PER_MESSAGE = 256


class NotReadyError(ProtocolError):
    """A delivery came before the node knows the participants; the broker should deliver it again."""


class Messenger:
    """Sends, receives and acknowledges the messages of one node."""

    def __init__(self, broker: MessageBrokerClient, node_id: str, inbox: Inbox | None = None) -> None:
        self.broker = broker
        self.node_id = node_id
        self.inbox = inbox if inbox is not None else Inbox()
        self._numbers = itertools.count(1)
        self._background = BackgroundTasks()
        #: ids of the messages whose acknowledgement is being sent or waits for a slot (at most
        #: MAX_ACKS_PENDING); MAX_ACKS_IN_FLIGHT of them at once
        self._acking: set[str] = set()
        self._ack_slots = asyncio.Semaphore(MAX_ACKS_IN_FLIGHT)
        self.acks_skipped = 0
        #: set by :meth:`aclose`: a delivery after it is stored, but no acknowledgement starts (the
        #: node's HTTP client is about to close, and its sender resends to whoever answers next)
        self._closing = False
        self.finished = asyncio.Event()
        self.sent = 0
        self.resent = 0
        #: node ids of the analysis' participants (this node included); None until known
        self.participants: frozenset[str] | None = None
        #: message id -> recipients, of every message this node sent (the latest MAX_SENT_REMEMBERED)
        self._sent_to: dict[str, frozenset[str]] = {}
        #: partners known to take grouped acknowledgements (they sent one: see the module's description)
        self.groups_acks: set[str] = set()
        #: partner -> envelopes to acknowledge once the acknowledgement on its way to it is out
        self._ack_queues: dict[str, list[dict[str, Any]]] = {}
        #: broker messages that carried acknowledgements
        self.ack_messages = 0

    # -- sending ------------------------------------------------------------------------------------

    def envelope(self, body: dict[str, Any], category: str) -> dict[str, Any]:
        """A new outgoing message: a copy of ``body`` with a fresh ``meta``; checked for size."""
        message = envelope.outgoing(body, sender=self.node_id, category=category, number=next(self._numbers))
        if envelope.json_depth(message, envelope.MAX_DEPTH) > envelope.MAX_DEPTH:
            raise PayloadError(
                f"the message nests more than {envelope.MAX_DEPTH} levels deep, which receivers refuse; "
                "flatten it, or send it as intermediate data through storage (send_intermediate_data)"
            )
        size = envelope.encoded_size(message)
        if size > envelope.MAX_MESSAGE_BYTES:
            raise PayloadError(
                f"the message is {size} bytes; the broker carries at most about {envelope.MAX_MESSAGE_BYTES} "
                "(the hub relay's 1 MB limit after encryption and Base64). Send bulk data as intermediate data "
                "through storage (send_intermediate_data) and message only its id."
            )
        return message

    def check_outgoing(
        self, recipients: Sequence[str], category: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Raise what :meth:`send` would raise for this message before sending anything; returns the
        enveloped message (for :meth:`send_prepared`)."""
        self._check_recipients(recipients)
        return self.envelope(body, category)

    def _check_recipients(self, recipients: Sequence[str]) -> None:
        if self.node_id in recipients:
            raise ProtocolError("a node cannot send a message to itself; the broker accepts only partners")

    async def send(
        self,
        recipients: Sequence[str],
        category: str,
        body: dict[str, Any],
        *,
        timeout: float | None = DEFAULT_SEND_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        max_attempts: int | None = None,
    ) -> tuple[list[str], list[str]]:
        """Send ``body`` to ``recipients`` until each acknowledged, the attempts or the timeout ran out.

        Returns ``(acknowledged, not_acknowledged)`` node ids. Each attempt posts the same message
        (same ``meta.id``) to the recipients still missing and waits up to ``attempt_timeout`` for their
        acknowledgements. ``max_attempts=None`` resends until ``timeout``.
        """
        message = self.envelope(body, category)
        return await self.send_prepared(
            message, recipients, timeout=timeout, attempt_timeout=attempt_timeout, max_attempts=max_attempts
        )

    async def send_prepared(
        self,
        message: dict[str, Any],
        recipients: Sequence[str],
        *,
        timeout: float | None = DEFAULT_SEND_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        max_attempts: int | None = None,
        ended: Callable[[str], bool] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Send an enveloped message (see :meth:`send`).

        ``ended(node)`` true means the node has ended (the pod orchestrator reported a final status):
        it gets no more attempts and is not waited for; it counts as not acknowledged.
        """
        targets = list(dict.fromkeys(recipients))
        if not targets:
            return [], []
        self._check_recipients(targets)
        message_id = message["meta"]["id"]
        self._remember_sent(message_id, targets)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        attempts = 0
        while True:
            acked_now = self.inbox.acks(message_id)
            missing = [t for t in targets if t not in acked_now and not (ended is not None and ended(t))]
            if not missing:
                break
            if max_attempts is not None and attempts >= max_attempts:
                break
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            attempts += 1
            if attempts > 1:
                self.resent += 1
                log.info(
                    "resending %s (%s) to %d node(s) without acknowledgement",
                    message_id,
                    message["meta"]["category"],
                    len(missing),
                )
            try:
                await self.broker.send(missing, message)
                self.sent += 1
            except ServiceError as exc:
                log.warning("sending %s failed: %s", message_id, exc)
            wait = attempt_timeout if remaining is None else min(attempt_timeout, max(remaining, 0.0))
            await self.inbox.wait_until(self._all_acked(message_id, missing, ended), wait)
        acked = self.inbox.acks(message_id)
        return [t for t in targets if t in acked], [t for t in targets if t not in acked]

    def _remember_sent(self, message_id: str, recipients: Iterable[str]) -> None:
        self._sent_to[message_id] = self._sent_to.get(message_id, frozenset()) | frozenset(recipients)
        if len(self._sent_to) > MAX_SENT_REMEMBERED:
            oldest = next(iter(self._sent_to))
            del self._sent_to[oldest]
            self.inbox.forget_acks(oldest)  # an acknowledgement of it is refused from now on

    def _all_acked(
        self, message_id: str, nodes: list[str], ended: Callable[[str], bool] | None = None
    ) -> Callable[[], bool]:
        def done(node: str) -> bool:
            return node in self.inbox.acks(message_id) or (ended is not None and ended(node))

        return lambda: all(done(node) for node in nodes)

    # -- receiving ----------------------------------------------------------------------------------

    async def receive(self, body: Any, *, size: int | None = None) -> bool:
        """Handle one webhook delivery. Returns True when it was a new message for the analysis.

        ``size`` is the delivery's size on the wire (bytes), what the inbox charges against the
        sender's unread budget; without it the compact JSON is measured. Raises
        :class:`ProtocolError` for a body without a valid envelope, from a sender that is not a
        participant, or acknowledging what this node did not send (nothing changes then);
        :class:`~flame.node.inbox.InboxFullError` (a ProtocolError) when the sender's stored messages
        are over budget; :class:`NotReadyError` while the participants are not known yet.
        """
        meta = envelope.parse_meta(body)
        participants = self.participants
        if participants is None:
            raise NotReadyError("this node does not know the analysis' participants yet; deliver it again")
        if meta.is_acknowledgement:
            assert meta.akn_id is not None
            acks = [meta, *self._more_acks(body, meta.akn_id)]
            for ack in acks:  # all are checked before any counts: a forged one refuses the delivery
                recipients = self._sent_to.get(ack.id)
                if recipients is None or ack.sender != self.node_id:
                    raise ProtocolError(f"an acknowledgement of {ack.id!r}, which this node did not send")
                if meta.akn_id not in recipients:
                    raise ProtocolError(
                        f"an acknowledgement of {ack.id!r} by {meta.akn_id!r}, which it was not sent to"
                    )
            if envelope.MORE_ACKS in body:
                self.groups_acks.add(meta.akn_id)
            await self.inbox.acknowledged_all([(ack.id, meta.akn_id) for ack in acks])
            return False
        if meta.sender == self.node_id:
            raise ProtocolError(f"message {meta.id!r} claims to come from this node itself")
        if meta.sender not in participants:
            raise ProtocolError(
                f"the sender {meta.sender!r} of {meta.id!r} is not a participant of the analysis"
            )
        if meta.category == envelope.ANALYSIS_FINISHED:
            self.finished.set()  # before the inbox wakes its waiters, so they see it
        if size is None:
            size = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace"))
        is_new = await self.inbox.add(Message(body=body, recipients=[self.node_id], size=size))
        # one acknowledgement per id at a time, a bounded number in all; it echoes the envelope only
        if self._closing:
            log.debug("not acknowledging %s: the node is stopping", meta.id)
        elif meta.id in self._acking:
            pass  # a resend while its acknowledgement is under way: that one answers both
        elif len(self._acking) >= MAX_ACKS_PENDING:
            self.acks_skipped += 1
            log.warning(
                "not acknowledging %s now: %d acknowledgements are pending (its sender resends it)",
                meta.id,
                len(self._acking),
            )
        else:
            self._acking.add(meta.id)
            echo = {k: body["meta"].get(k) for k in _ACK_FIELDS}
            if meta.sender not in self.groups_acks:
                self._background.spawn(self._acknowledge(meta.sender, [echo]))
            elif meta.sender in self._ack_queues:
                self._ack_queues[meta.sender].append(echo)  # goes with the next acknowledgement to it
            else:
                self._ack_queues[meta.sender] = []
                self._background.spawn(self._acknowledge_grouped(meta.sender, echo))
        return is_new

    @staticmethod
    def _more_acks(body: dict[str, Any], acker: str) -> list[Meta]:
        """The further acknowledgements of a grouped one (:class:`ProtocolError` for a malformed one)."""
        more = body.get(envelope.MORE_ACKS)
        if more is None:
            return []
        if not isinstance(more, list) or len(more) >= MAX_ACKS_PER_MESSAGE:
            raise ProtocolError(
                f"{envelope.MORE_ACKS} must be a list of fewer than {MAX_ACKS_PER_MESSAGE} acknowledgements"
            )
        acks = [envelope.parse_meta({"meta": item}) for item in more]
        if any(ack.akn_id != acker for ack in acks):
            raise ProtocolError("a grouped acknowledgement must hold acknowledgements by one node only")
        return acks

    async def _acknowledge_grouped(self, sender: str, first: dict[str, Any]) -> None:
        """Acknowledge to ``sender``, then what was queued for it meanwhile, a group at a time."""
        group = [first]
        try:
            while group:
                await self._acknowledge(sender, group)
                queue = self._ack_queues[sender]
                group = queue[:MAX_ACKS_PER_MESSAGE]
                del queue[: len(group)]
        finally:
            for echo in self._ack_queues.pop(sender, []):  # left when cancelled: its sender resends
                self._acking.discard(echo["id"])

    async def _acknowledge(self, sender: str, metas: list[dict[str, Any]]) -> None:
        try:
            async with self._ack_slots:
                await self.broker.send([sender], envelope.acknowledgements(metas, self.node_id))
            self.ack_messages += 1
        except ServiceError as exc:
            # the sender resends until acknowledged, and the duplicate is acknowledged again
            log.warning("acknowledging %s failed: %s", ", ".join(str(m["id"]) for m in metas), exc)
        finally:
            for meta in metas:
                self._acking.discard(meta["id"])

    async def drain(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until acknowledgements still being sent are out; True if all are."""
        return await self._background.wait(timeout)

    async def aclose(self, grace: float = 5.0) -> None:
        """Let acknowledgements still being sent finish (up to ``grace`` seconds), then stop."""
        self._closing = True
        await self._background.aclose(grace=grace)

    # -- awaiting -----------------------------------------------------------------------------------

    async def await_messages(
        self,
        senders: Iterable[str],
        category: str,
        *,
        message_id: str | None = None,
        timeout: float | None = DEFAULT_AWAIT_TIMEOUT,
        raise_on_timeout: bool = True,
    ) -> dict[str, list[Message] | None]:
        """Wait until every sender has an unread message of ``category``; take and mark them read.

        On timeout raises :class:`FlameTimeoutError` naming the senders still missing, or, with
        ``raise_on_timeout=False``, returns None for them.
        """
        wanted = list(dict.fromkeys(senders))

        def complete() -> bool:
            return set(self.inbox.unread(wanted, category, message_id)) >= set(wanted)

        done = await self.inbox.wait_until(complete, timeout)
        found = self.inbox.unread(wanted, category, message_id)
        if not done and raise_on_timeout:
            missing = [s for s in wanted if s not in found]
            raise FlameTimeoutError(f"{category!r} messages", timeout or 0.0, missing)
        for messages in found.values():
            self.inbox.mark_read(messages)
        return {sender: found.get(sender) for sender in wanted}

    async def ready_check(
        self,
        nodes: Sequence[str],
        *,
        timeout: float | None = DEFAULT_SEND_TIMEOUT,
        attempt_timeout: float = 30.0,
    ) -> dict[str, bool]:
        """Which nodes answer: a ``ready_check`` (body ``{}``) is answered by its acknowledgement."""
        acked, _ = await self.send(
            list(nodes), envelope.READY_CHECK, {}, timeout=timeout, attempt_timeout=attempt_timeout
        )
        return {node: node in acked for node in nodes}

    async def analysis_finished(
        self,
        partners: Sequence[str],
        *,
        attempts: int = 5,
        attempt_timeout: float = 30.0,
        ended: Callable[[str], bool] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Tell the partners that the analysis is over (``analysis_finished``, body ``{}``).

        A partner that has ended already (``ended``) cannot acknowledge and is not waited for.
        """
        return await self.send_prepared(
            self.envelope({}, envelope.ANALYSIS_FINISHED),
            list(partners),
            timeout=None,
            attempt_timeout=attempt_timeout,
            max_attempts=attempts,
            ended=ended,
        )

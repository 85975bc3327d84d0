"""Reliable messaging between node runtimes over the emulated broker.

Exactly-once delivery to the application under dropped, duplicated, delayed and reordered webhook
deliveries; webhook 5xx retries; bounded waits; ready checks; ``analysis_finished``; payload limits.
Every test that takes the ``mode`` fixture runs in-process and served (uvicorn on loopback).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from flame.clients.base import RetryPolicy
from flame.errors import FlameTimeoutError, PayloadError, ProtocolError
from flame.node import AsyncNode, Message, Timeouts
from flame.node.envelope import ANALYSIS_FINISHED, MAX_MESSAGE_BYTES
from flame.sim.faults import DeliveryFault, FaultPlan, NodeOffline
from flame.sim.launch import Mode, start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.servers import ServedApp, serve_asgi

FAST = Timeouts(startup=5.0, request=5.0, send=10.0, attempt=0.5, await_messages=5.0, shutdown=2.0)
QUICK_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


class Federation:
    """A started emulated stack plus the node runtimes started on it (stopped in teardown)."""

    def __init__(self, stack: FlameStack, mode: Mode) -> None:
        self.stack = stack
        self.mode = mode
        self.nodes: dict[str, AsyncNode] = {}
        self.servers: list[ServedApp] = []

    async def start(self, name: str, **kwargs: Any) -> AsyncNode:
        kwargs.setdefault("timeouts", FAST)
        kwargs.setdefault("retry", QUICK_RETRY)
        node = await start_node(self.stack, name, self.mode, **kwargs)
        self.nodes[name] = node
        return node

    async def start_all(self, **kwargs: Any) -> list[AsyncNode]:
        return list(await asyncio.gather(*(self.start(name, **kwargs) for name in self.stack.nodes)))

    async def attach(self, name: str, app: ASGIApp) -> None:
        """Put ``app`` in place of node ``name``'s analysis API (served mode: on its own loopback port)."""
        if self.mode == "inprocess":
            self.stack.attach_analysis(name, app)
        else:
            server = await serve_asgi(app)
            self.servers.append(server)
            self.stack.attach_analysis(name, server.url)

    async def aclose(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes.values()))
        for server in self.servers:
            await server.aclose()
        await self.stack.aclose()


MakeFederation = Callable[..., Awaitable[Federation]]

#: For tests whose subject does not depend on how the node reaches its services.
inprocess_only = pytest.mark.parametrize("mode", ["inprocess"])


@pytest.fixture
async def federation(mode: Mode) -> AsyncIterator[MakeFederation]:
    """``await federation(analysis_nodes=2, faults=..., **settings)``: a started stack in ``mode``."""
    made: list[Federation] = []

    async def make(analysis_nodes: int = 2, faults: FaultPlan | None = None, **settings: Any) -> Federation:
        settings.setdefault("po_enabled", False)
        # a webhook POST may take up to 1 s (scaled) before the broker drops it as timed out, not 0.1 s:
        # on a loaded machine a served delivery can take longer than that, and it did arrive
        settings.setdefault("delivery_timeout", 100.0)
        stack = FlameStack.create(
            analysis_nodes, settings=StackSettings.fast(**settings), faults=faults, seed=5
        )
        await stack.start()
        if mode == "served":
            await stack.serve()
        fed = Federation(stack, mode)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        await fed.aclose()


def contents(messages: list[Message] | None) -> list[dict[str, Any]]:
    return [m.content() for m in messages or []]


# -- exactly once under faults ----------------------------------------------------------------------------


async def test_messages_arrive_exactly_once_under_drops_duplicates_and_reordering(
    federation: MakeFederation,
) -> None:
    plan = FaultPlan(
        [
            DeliveryFault("drop", probability=0.3),
            DeliveryFault("duplicate", probability=0.3),
            DeliveryFault("reorder", probability=0.5, seconds=0.02),
        ],
        seed=11,
    )
    fed = await federation(analysis_nodes=2, faults=plan)
    stack = fed.stack
    nodes = await fed.start_all()
    per_pair = 5  # 3 nodes x 2 receivers x 5 = 30 messages
    attempt = 0.15 if fed.mode == "inprocess" else 0.5

    async def send(sender: AsyncNode, receiver: AsyncNode, n: int) -> tuple[list[str], list[str]]:
        return await sender.send_message(
            [receiver.node_id], "round", {"from": sender.node_id, "n": n}, attempt_timeout=attempt, timeout=10
        )

    jobs = [(a, b, n) for a, b in itertools.permutations(nodes, 2) for n in range(per_pair)]
    results = await asyncio.gather(*(send(a, b, n) for a, b, n in jobs))
    assert len(results) == 30
    assert results == [([b.node_id], []) for _, b, _ in jobs]

    for receiver in nodes:
        senders = [n.node_id for n in nodes if n is not receiver]
        found = await receiver.await_messages(senders, "round", timeout=5)
        for sender in senders:
            got = contents(found[sender])
            assert sorted(m["n"] for m in got) == list(range(per_pair)), (sender, got)
            assert all(m["from"] == sender for m in got)
            ids = [m.id for m in found[sender] or []]
            assert len(set(ids)) == len(ids)
        # nothing more arrives: the duplicates were acknowledged but not stored again
        again = await receiver.await_messages(senders, "round", timeout=0.05, raise_on_timeout=False)
        assert all(v is None for v in again.values())
        assert len(receiver.inbox.messages("all")) == 2 * per_pair

    faults = Counter(reason for e in stack.events.select("fault.delivery") for reason in e.detail["reasons"])
    assert faults["drop"] > 0 and faults["duplicate"] > 0 and faults["reorder"] > 0
    assert stack.events.select("delivery.dropped", reason="fault")
    assert sum(n.inbox.duplicates for n in nodes) > 0
    assert sum(n.messenger.resent for n in nodes) > 0


async def test_duplicate_delivery_is_acknowledged_again_but_stored_once(federation: MakeFederation) -> None:
    plan = FaultPlan([DeliveryFault("duplicate", probability=1.0, limit=1)], seed=1)
    fed = await federation(analysis_nodes=1, faults=plan)
    aggregator, node_1 = await fed.start_all()
    # one attempt as long as the send: a resend after FAST's 0.5 s (a slow acknowledgement on a loaded
    # machine) would be one more duplicate than the fault made
    sent = await aggregator.send_message([node_1.node_id], "c", {"v": 1}, timeout=60.0, attempt_timeout=60.0)
    assert sent == ([node_1.node_id], [])
    # 2 copies + 1 or 2 acks: a duplicate arriving while the first ack is still being sent is
    # answered by that one (the receiver starts no second acknowledgement for an id in flight)
    await fed.stack.events.wait_for("delivery.ok", count=3, timeout=5)
    await fed.stack.broker.quiesce(5)
    assert node_1.inbox.duplicates == 1 and len(node_1.inbox) == 1
    found = await node_1.await_messages([aggregator.node_id], "c", timeout=1)
    assert contents(found[aggregator.node_id]) == [{"v": 1}]
    meta = (found[aggregator.node_id] or [])[0].meta
    assert meta["type"] == "incoming" and meta["status"] == "read" and meta["akn_id"] is None


# -- webhook 5xx retries ----------------------------------------------------------------------------------


class FlakyWebhook:
    """An ASGI wrapper answering 503 to the first ``failures`` POST /webhook, then passing through."""

    def __init__(self, app: ASGIApp, failures: int = 2) -> None:
        self.app = app
        self.failures = failures
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/webhook")
            and self.rejected < self.failures
        ):
            self.rejected += 1
            await PlainTextResponse("busy", status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def test_webhook_5xx_is_retried_by_the_broker_and_the_message_arrives_once(
    federation: MakeFederation,
) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    aggregator, node_1 = await fed.start_all()
    flaky = FlakyWebhook(node_1.api_app, failures=2)
    await fed.attach("node-1", flaky)
    # the broker's retries (two delays of at most ~0.05 s) must end within one attempt of the sender, or
    # it resends and the test below sees the sender's resend instead of the broker's retries: the attempt
    # is as long as the whole send, a bound that only a hang reaches, however loaded the machine
    acked = await aggregator.send_message([node_1.node_id], "c", {"v": 1}, timeout=60.0, attempt_timeout=60.0)
    assert acked == ([node_1.node_id], [])
    assert aggregator.messenger.resent == 0
    # acknowledged, so stored: no waiting needed; the bound is a safety net
    found = await node_1.await_messages([aggregator.node_id], "c", timeout=60)
    assert contents(found[aggregator.node_id]) == [{"v": 1}]
    assert flaky.rejected == 2
    retries = stack.events.select("delivery.retry", node="node-1")
    assert [e.detail["status"] for e in retries] == [503, 503]
    assert node_1.inbox.duplicates == 0 and len(node_1.inbox) == 1


# -- bounded waits ----------------------------------------------------------------------------------------


@inprocess_only
async def test_await_messages_times_out_naming_the_missing_senders(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=2)
    aggregator, node_1, node_2 = await fed.start_all()
    await node_1.send_message([aggregator.node_id], "result", {"v": 1})
    began = time.monotonic()
    with pytest.raises(FlameTimeoutError) as caught:
        await aggregator.await_messages([node_1.node_id, node_2.node_id], "result", timeout=0.3)
    elapsed = time.monotonic() - began
    # its own 0.3 s, not the default bound (600 s); the room above it is for a loaded machine
    assert 0.3 <= elapsed < 10.0
    assert caught.value.missing == [node_2.node_id]
    assert node_2.node_id in str(caught.value) and "'result'" in str(caught.value)
    # the message that did arrive is still unread, and is handed over once the wait is lenient
    found = await aggregator.await_messages(
        [node_1.node_id, node_2.node_id], "result", timeout=0.05, raise_on_timeout=False
    )
    assert contents(found[node_1.node_id]) == [{"v": 1}] and found[node_2.node_id] is None


@inprocess_only
async def test_await_wakes_on_arrival_without_polling(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    waiting = asyncio.ensure_future(node_1.await_messages([aggregator.node_id], "late", timeout=60))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    await aggregator.send_message([node_1.node_id], "late", {"v": 2})
    # acknowledged, so stored: the waiter was woken then and returns within a few turns of the event
    # loop, however slow the machine (a poll would need time to pass)
    for _ in range(20):
        if waiting.done():
            break
        await asyncio.sleep(0)
    assert waiting.done()
    found = waiting.result()
    assert contents(found[aggregator.node_id]) == [{"v": 2}]


async def test_send_to_a_node_whose_webhook_drops_everything_returns_not_acknowledged(
    federation: MakeFederation,
) -> None:
    plan = FaultPlan([DeliveryFault("drop", probability=1.0, receiver="node-1")], seed=2)
    fed = await federation(analysis_nodes=2, faults=plan)
    aggregator, node_1, node_2 = await fed.start_all()
    began = time.monotonic()
    acked, missing = await aggregator.send_message(
        [node_1.node_id, node_2.node_id], "c", {"v": 1}, timeout=0.5, attempt_timeout=0.1
    )
    elapsed = time.monotonic() - began
    assert (acked, missing) == ([node_2.node_id], [node_1.node_id])
    assert elapsed >= 0.5  # it kept trying for its whole timeout
    # attempts of 0.1 s within 0.5 s: five, one more at most when the last began just before the end
    assert 1 <= aggregator.messenger.resent <= 5
    assert aggregator.messenger.sent == aggregator.messenger.resent + 1
    events = list(fed.stack.events)
    sent = [e for e in events if e.kind == "broker.sent" and e.node == "aggregator"]
    # the first attempt goes to both; once node-2's acknowledgement was delivered, resends go only to
    # node-1 (one resend may have been on its way already). Ordered by events, not by the clock: on
    # a loaded machine the acknowledgement may take longer than one attempt.
    assert sorted(sent[0].detail["recipients"]) == ["node-1", "node-2"]
    ack = next(
        e.seq
        for e in events
        if e.kind == "delivery.ok" and e.node == "aggregator" and e.detail["sender"] == "node-2"
    )
    after_ack = [e.detail["recipients"] for e in sent if e.seq > ack]
    assert all(r == ["node-1"] for r in after_ack[1:])
    assert len(node_1.inbox) == 0 and len(node_2.inbox) == 1


@inprocess_only
async def test_send_with_max_attempts_stops_after_them(federation: MakeFederation) -> None:
    plan = FaultPlan([DeliveryFault("drop", probability=1.0, receiver="node-1")], seed=2)
    fed = await federation(analysis_nodes=1, faults=plan)
    aggregator, node_1 = await fed.start_all()
    acked, missing = await aggregator.send_message(
        [node_1.node_id], "c", {"v": 1}, max_attempts=2, attempt_timeout=0.05, timeout=5
    )
    assert (acked, missing) == ([], [node_1.node_id])
    assert aggregator.messenger.sent == 2 and aggregator.messenger.resent == 1


# -- ready check and analysis_finished ------------------------------------------------------------------


async def test_ready_check_reports_each_partner(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=2)
    stack = fed.stack
    aggregator, node_1, node_2 = await fed.start_all()
    nodes = [node_1.node_id, node_2.node_id]
    assert await aggregator.ready_check(timeout=2) == {node_1.node_id: True, node_2.node_id: True}
    assert await node_1.ready_check([aggregator.node_id], timeout=2) == {aggregator.node_id: True}
    # the ready check leaves the caller's list alone, and sends no message to the application
    assert nodes == [node_1.node_id, node_2.node_id]
    assert len(node_1.inbox.messages("unread")) == 1  # stored, but of category ready_check

    offline = NodeOffline("node-2", start=0.0, end=float("inf"))
    stack.faults.add(offline)
    began = time.monotonic()
    # node-1 must answer within the timeout (~10 ms on a quiet machine; 0.4 s left a loaded one little
    # room, served: two real HTTP hops each way), and node-2's silence takes all of it
    assert await aggregator.ready_check(timeout=2.0) == {node_1.node_id: True, node_2.node_id: False}
    assert 2.0 <= time.monotonic() - began < 10.0  # its timeout, not the 30 s of an attempt
    stack.faults.rules.remove(offline)


async def test_analysis_finished_reaches_every_partner(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=2)
    aggregator, node_1, node_2 = await fed.start_all()
    assert await aggregator.analysis_finished() is True
    assert aggregator.status == "executed" and aggregator.finished.is_set()
    for node in (node_1, node_2):
        assert node.messenger.finished.is_set()
        found = await node.await_messages([aggregator.node_id], ANALYSIS_FINISHED, timeout=1)
        assert contents(found[aggregator.node_id]) == [{}]
    assert fed.stack.events.select("broker.sent", node="aggregator")


# -- payload rules --------------------------------------------------------------------------------------


@inprocess_only
async def test_oversized_and_reserved_bodies_are_refused_before_sending(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    stack = fed.stack
    before = len(stack.events.select("broker.sent"))
    with pytest.raises(PayloadError) as caught:
        await aggregator.send_message([node_1.node_id], "c", {"blob": "x" * (MAX_MESSAGE_BYTES + 1)})
    assert "intermediate data" in str(caught.value) and "send_intermediate_data" in str(caught.value)
    with pytest.raises(PayloadError, match="meta"):
        await aggregator.send_message([node_1.node_id], "c", {"meta": {"mine": True}})
    with pytest.raises(PayloadError):
        await aggregator.send_message([node_1.node_id], "c", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="itself"):
        await aggregator.send_message([aggregator.node_id], "c", {"v": 1})
    assert len(stack.events.select("broker.sent")) == before
    # just under the limit goes through
    body = {"blob": "x" * (MAX_MESSAGE_BYTES - 1000)}
    assert await aggregator.send_message([node_1.node_id], "c", body) == ([node_1.node_id], [])


@inprocess_only
async def test_webhook_on_the_raw_asgi_app_acknowledges_to_the_sender(federation: MakeFederation) -> None:
    """A delivery POSTed straight at the API app (no sidecar): stored once, acknowledged via the broker."""
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    message = aggregator.messenger.envelope({"v": 3}, "direct")
    # sent out of band: the aggregator takes acknowledgements only of messages it sent, as send() records
    aggregator.messenger._remember_sent(message["meta"]["id"], [node_1.node_id])
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        for _ in range(2):
            answer = await client.post("/webhook", json=message)
            assert answer.status_code == 200
    await aggregator.inbox.wait_until(
        lambda: node_1.node_id in aggregator.inbox.acks(message["meta"]["id"]), 5
    )
    assert aggregator.inbox.acks(message["meta"]["id"]) == {node_1.node_id}
    assert len(node_1.inbox) == 1 and node_1.inbox.duplicates == 1


@inprocess_only
async def test_a_delivery_after_stop_starts_no_acknowledgement(
    federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    assert await aggregator.send_message([node_1.node_id], "c", {"v": 1}) == ([node_1.node_id], [])
    [delivered] = (await node_1.await_messages([aggregator.node_id], "c", timeout=5))[
        aggregator.node_id
    ] or []
    await node_1.stop()
    # a late delivery (the API answers until its server closes): stored, but no acknowledgement is sent
    # on the HTTP client that stop() closed ("client has been closed" in a task nobody awaits)
    late = {**delivered.body, "meta": {**delivered.body["meta"], "id": "late-1"}}
    sent_before = len(fed.stack.events.select("broker.sent"))
    with caplog.at_level("ERROR"):
        assert await node_1.messenger.receive(late) is True
        await asyncio.sleep(0)  # a spawned acknowledgement would have started here
    assert len(node_1.messenger._background) == 0
    assert len(fed.stack.events.select("broker.sent")) == sent_before
    assert "never retrieved" not in caplog.text


@inprocess_only
async def test_acknowledgements_are_forgotten_with_the_sent_ids(
    federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run keeps no acknowledgement of ids it no longer tracks, and refuses late ones for them."""
    from flame.node import messaging

    monkeypatch.setattr(messaging, "MAX_SENT_REMEMBERED", 3)
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    ids = []
    for i in range(8):
        sent = await aggregator.send_message([node_1.node_id], "c", {"i": i})
        assert sent == ([node_1.node_id], [])
        ids.append(list(aggregator.messenger._sent_to)[-1])
    assert all(not aggregator.inbox.acks(old) for old in ids[:-3])
    assert all(aggregator.inbox.acks(kept) == {node_1.node_id} for kept in ids[-3:])
    assert len(aggregator.inbox._acks) <= 3
    late = {"meta": {"id": ids[0], "sender": aggregator.node_id, "akn_id": node_1.node_id, "category": "c"}}
    with pytest.raises(ProtocolError, match="did not send"):
        await aggregator.messenger.receive(late)

"""Grouped acknowledgements: fewer broker messages between our nodes, none to others, forgeries refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flame.node import AsyncNode
from flame.node.envelope import MORE_ACKS, acknowledgements
from flame.node.messaging import MAX_ACKS_PER_MESSAGE
from flame.sim import FlameStack, StackSettings
from flame.sim.launch import start_node


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[AsyncNode, AsyncNode, AsyncNode]]:
    """The aggregator, node-1 and node-2, started in-process."""
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        started = [await start_node(stack, name) for name in ("aggregator", "node-1", "node-2")]
        try:
            yield started[0], started[1], started[2]
        finally:
            for node in started:
                await node.stop()


async def _flood(sender: AsyncNode, receiver: AsyncNode, count: int) -> None:
    results = await asyncio.gather(
        *(sender.send_message([receiver.node_id], "flood", {"i": i}) for i in range(count))
    )
    assert all(result == ([receiver.node_id], []) for result in results)


async def test_acks_to_a_partner_that_groups_go_together(nodes: tuple[AsyncNode, ...]) -> None:
    aggregator, node_1, _ = nodes
    # node-1 has not acknowledged anything yet: the aggregator acknowledges each message on its own
    await _flood(node_1, aggregator, 10)
    assert aggregator.messenger.ack_messages == 10
    # node-1 acknowledges one of the aggregator's messages, with the key that says it takes groups
    assert await aggregator.send_message([node_1.node_id], "hello", {}) == ([node_1.node_id], [])
    assert node_1.node_id in aggregator.messenger.groups_acks
    before = aggregator.messenger.ack_messages
    await _flood(node_1, aggregator, 40)
    assert 1 <= aggregator.messenger.ack_messages - before < 40
    assert aggregator.messenger._acking == set() and aggregator.messenger._ack_queues == {}
    found = await aggregator.await_messages([node_1.node_id], "flood", timeout=5)
    assert sorted(m.body["i"] for m in found[node_1.node_id] or []) == sorted([*range(10), *range(40)])


async def test_grouped_acks_with_one_forgery_are_refused_whole(nodes: tuple[AsyncNode, ...]) -> None:
    aggregator, node_1, node_2 = nodes
    messages = [node_1.messenger.envelope({"v": i}, "c") for i in range(3)]
    for message in messages:
        node_1.messenger._remember_sent(message["meta"]["id"], [aggregator.node_id])
    metas = [m["meta"] for m in messages]
    never_sent = {**metas[0], "id": "node-99-beef"}
    genuine = acknowledgements(metas, aggregator.node_id)
    forgeries: list[Any] = [
        acknowledgements([*metas, never_sent], aggregator.node_id),  # one of them was never sent
        {**genuine, MORE_ACKS: [{**genuine[MORE_ACKS][0], "akn_id": node_2.node_id}]},  # another acker
        {**genuine, MORE_ACKS: [{**genuine[MORE_ACKS][0], "akn_id": None}]},  # not an acknowledgement
        {**genuine, MORE_ACKS: "all of them"},
        {**genuine, MORE_ACKS: [genuine[MORE_ACKS][0]] * MAX_ACKS_PER_MESSAGE},  # too many
        {**genuine, MORE_ACKS: [{"id": metas[1]["id"]}]},  # no valid envelope
        acknowledgements(metas, node_2.node_id),  # by a node they were not sent to
    ]
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        for body in forgeries:
            answer = await client.post("/webhook", json=body)
            assert answer.status_code == 400, (answer.text, body)
        assert all(node_1.inbox.acks(m["id"]) == set() for m in metas)
        assert node_1.messenger.groups_acks == set()
        answer = await client.post("/webhook", json=genuine)
        assert answer.status_code == 200, answer.text
    assert all(node_1.inbox.acks(m["id"]) == {aggregator.node_id} for m in metas)
    assert node_1.messenger.groups_acks == {aggregator.node_id}


async def test_a_single_acknowledgement_without_the_key_still_counts(nodes: tuple[AsyncNode, ...]) -> None:
    """What PrivateAIM's SDK sends: the body echoed with ``akn_id`` set, nothing more."""
    aggregator, node_1, _ = nodes
    message = node_1.messenger.envelope({"v": 1}, "c")
    node_1.messenger._remember_sent(message["meta"]["id"], [aggregator.node_id])
    echo = {**message, "meta": {**message["meta"], "akn_id": aggregator.node_id, "type": "incoming"}}
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        assert (await client.post("/webhook", json=echo)).status_code == 200
    assert node_1.inbox.acks(message["meta"]["id"]) == {aggregator.node_id}
    assert aggregator.node_id not in node_1.messenger.groups_acks  # it did not say it takes groups


async def test_acks_past_the_in_flight_bound_wait_for_a_slot_instead_of_a_resend(
    nodes: tuple[AsyncNode, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More deliveries at once than acknowledgements may be in flight: each is acknowledged, none resent."""
    from flame.node import messaging

    aggregator, node_1, node_2 = nodes
    monkeypatch.setattr(aggregator.messenger, "_ack_slots", asyncio.Semaphore(2))
    in_flight = peak = 0
    send = aggregator.messenger.broker.send

    async def counting_send(recipients: list[str], message: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)  # an acknowledgement that takes a while on the wire
            await send(recipients, message)
        finally:
            in_flight -= 1

    monkeypatch.setattr(aggregator.messenger.broker, "send", counting_send)
    await asyncio.gather(_flood(node_1, aggregator, 12), _flood(node_2, aggregator, 12))
    assert peak == 2
    assert aggregator.messenger.acks_skipped == 0
    assert node_1.messenger.resent == 0 and node_2.messenger.resent == 0
    assert messaging.MAX_ACKS_PENDING > messaging.MAX_ACKS_IN_FLIGHT


async def test_acks_past_the_pending_bound_are_skipped_and_come_with_the_resend(
    nodes: tuple[AsyncNode, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood beyond what may wait is not acknowledged at once (memory stays bounded); resends are."""
    from flame.node import messaging

    aggregator, node_1, _ = nodes
    monkeypatch.setattr(messaging, "MAX_ACKS_PENDING", 3)
    release = asyncio.Event()
    send = aggregator.messenger.broker.send

    async def held_send(recipients: list[str], message: Any) -> None:
        await release.wait()
        await send(recipients, message)

    monkeypatch.setattr(aggregator.messenger.broker, "send", held_send)
    flood = asyncio.ensure_future(
        asyncio.gather(
            *(
                node_1.send_message([aggregator.node_id], "flood", {"i": i}, attempt_timeout=0.3)
                for i in range(6)
            )
        )
    )
    await aggregator.inbox.wait_until(lambda: len(aggregator.inbox) == 6, timeout=10)
    assert aggregator.messenger.acks_skipped == 3 and len(aggregator.messenger._acking) == 3
    release.set()
    results = await asyncio.wait_for(flood, 20)
    assert all(result == ([aggregator.node_id], []) for result in results)
    assert node_1.messenger.resent >= 3

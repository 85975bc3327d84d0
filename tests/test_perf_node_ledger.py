"""The disclosure ledger's group commit: fewer uploads, the same guarantees, every record readable."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import httpx
import pytest

from flame.clients.base import RetryPolicy
from flame.disclosure import LEDGER_TAG
from flame.disclosure.audit import BATCH_KEY, Ledger, ReleaseRecord, ledger_entries
from flame.errors import ServiceError
from flame.sim import FlameStack, StackSettings
from flame.sim.faults import ServiceOutage
from flame.sim.launch import start_node


@pytest.fixture
async def stack() -> AsyncIterator[FlameStack]:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        yield stack


def _record(i: int, epsilon: float = 0.0) -> ReleaseRecord:
    return ReleaseRecord(
        node="n", analysis="a", channel="message:c", destination=["b"], outcome="released",
        digest=f"sha256:{i:064x}", statistics=[{"path": "x", "kind": "mean", "n": 100 + i}], epsilon=epsilon,
    )  # fmt: skip


def test_ledger_entries_reads_single_entries_batches_and_skips_junk() -> None:
    entry, other = _record(1).as_dict(), _record(2).as_dict()
    assert ledger_entries(json.dumps(entry).encode()) == [entry]
    batch = {BATCH_KEY: [entry, 7, "x", other], "version": 1}
    assert ledger_entries(json.dumps(batch).encode()) == [entry, other]
    assert ledger_entries(b"not json") == []
    assert ledger_entries(b"[1, 2]") == []
    assert ledger_entries(b"\xff\xfe") == []
    # an entry that carries an outcome is an entry, whatever else it holds
    odd = {"outcome": "released", BATCH_KEY: [entry]}
    assert ledger_entries(json.dumps(odd).encode()) == [odd]


async def test_concurrent_releases_share_uploads_and_every_record_reads_back(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    try:
        receiver = node.aggregator_id or ""
        count = 24
        released = await asyncio.gather(
            *(
                node.disclosure.release_message({"i": i}, category="c", receivers=[receiver])
                for i in range(count)
            )
        )
        assert [r["i"] for r in released] == list(range(count))
        ledger = node.disclosure.ledger
        assert 1 <= ledger.uploads < count
        raws = await node.storage.read_tagged(LEDGER_TAG)
        assert len(raws) == ledger.uploads
        assert any(BATCH_KEY in json.loads(raw) for raw in raws)
        stored = [entry for raw in raws for entry in ledger_entries(raw)]
        mine = [record.digest for record in node.disclosure.records]
        assert sorted(e["digest"] for e in stored) == sorted(mine) and len(mine) == count
        # a new analysis of the project reads them all, in staging order
        again = await Ledger(node.storage).entries()
        assert [e["digest"] for e in again] == mine
        assert [e["digest"] for e in await ledger.entries(refresh=True)] == mine
    finally:
        await node.stop()


async def test_a_spend_of_privacy_is_stored_alone_so_older_readers_count_it(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    try:
        ledger = Ledger(node.storage)
        await ledger.entries()
        records = [_record(0), _record(1), _record(2, epsilon=0.5), _record(3), _record(4)]
        await asyncio.gather(*(ledger.stage(r) for r in records))
        raws = [json.loads(raw) for raw in await node.storage.read_tagged(LEDGER_TAG)]
        shapes = [len(raw[BATCH_KEY]) if BATCH_KEY in raw else raw["epsilon"] for raw in raws]
        assert shapes == [2, 0.5, 2]  # staged before the first upload: three uploads
        assert ledger.uploads == 3
        assert [e["digest"] for e in await ledger.entries(refresh=True)] == [r.digest for r in records]
    finally:
        await node.stop()


async def test_a_failed_ledger_upload_fails_each_release_of_its_group_and_nothing_is_sent(
    stack: FlameStack,
) -> None:
    aggregator = await start_node(stack, "aggregator")
    node = await start_node(stack, "node-1", retry=RetryPolicy(attempts=1))
    try:
        receiver = aggregator.node_id
        await node.disclosure.ledger.entries()  # read before the outage
        sent = len(stack.events.select("broker.sent"))
        rule = ServiceOutage("storage", start=0.0, end=math.inf, node="node-1", status=500)
        stack.faults.add(rule)
        results = await asyncio.gather(
            *(node.send_message([receiver], "c", {"i": i}, max_attempts=1) for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ServiceError) and r.service == "storage" for r in results), results
        assert len(stack.events.select("broker.sent")) == sent  # no byte of them left
        assert await node.disclosure.ledger.entries() == []  # not recorded as released either
        assert len(node.disclosure.records) == 5  # but logged, as before
        stack.faults.rules.remove(rule)
        acked, missing = await node.send_message([receiver], "c", {"i": 5})
        assert (acked, missing) == ([receiver], [])
        stored = [e for raw in await node.storage.read_tagged(LEDGER_TAG) for e in ledger_entries(raw)]
        assert [e["digest"] for e in stored] == [node.disclosure.records[-1].digest]
    finally:
        await node.stop()
        await aggregator.stop()


async def test_the_first_release_reads_the_ledger_with_one_listing_request(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    paths: list[str] = []

    async def note(request: httpx.Request) -> None:
        if request.method == "GET":
            paths.append(request.url.path)

    node.http.event_hooks["request"].append(note)
    try:
        await node.disclosure.release_message({"i": 1}, category="c", receivers=[node.aggregator_id or ""])
        # the tag's listing only (an unknown tag is listed as empty): no listing of every tag first
        assert [p for p in paths if "/local/tags" in p] == [f"/storage/local/tags/{LEDGER_TAG}"]
        second = Ledger(node.storage)
        assert len(await second.entries()) == 1  # what the first release stored is read back
    finally:
        await node.stop()

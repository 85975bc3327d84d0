"""The inbox's unread index: the same answers as a scan of every stored message, at a cost that does not
grow with the messages already read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flame.node.inbox import Inbox, Message

SENDERS = ("a", "b", "c")
CATEGORIES = ("update", "aggregate")


def message(number: int, sender: str, category: str, status: str | None = None) -> Message:
    meta: dict[str, Any] = {"id": f"m{number}", "sender": sender, "category": category}
    if status is not None:
        meta["status"] = status
    return Message({"meta": meta, "x": number}, ["me"], size=10)


def scan(
    inbox: Inbox, senders: list[str] | None, category: str, message_id: str | None
) -> dict[str, list[str]]:
    """The reference: every stored message, filtered (what ``unread`` did before the index)."""
    found: dict[str, list[str]] = {}
    for m in inbox.messages("all"):
        if m.status != "unread" or m.category != category:
            continue
        if senders is not None and m.sender not in senders:
            continue
        if message_id is not None and m.id != message_id:
            continue
        found.setdefault(m.sender, []).append(m.id)
    return found


operation = st.one_of(
    st.tuples(
        st.just("add"),
        st.integers(0, 30),
        st.sampled_from(SENDERS),
        st.sampled_from(CATEGORIES),
        st.sampled_from([None, "unread", "read", "bogus"]),
    ),
    st.tuples(st.just("read"), st.integers(0, 30)),
    st.tuples(st.just("read-in-meta"), st.integers(0, 30)),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("clear"), st.sampled_from(["read", "unread", "all"])),
)
query = st.tuples(
    st.one_of(st.none(), st.lists(st.sampled_from([*SENDERS, "stranger"]), max_size=4)),
    st.sampled_from(CATEGORIES),
    st.one_of(st.none(), st.integers(0, 30).map(lambda n: f"m{n}")),
)


@settings(max_examples=300, deadline=None)
@given(operations=st.lists(operation, max_size=40), queries=st.lists(query, min_size=1, max_size=6))
def test_unread_answers_as_a_scan_of_every_message(
    operations: list[tuple[Any, ...]], queries: list[Any]
) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        for op in operations:
            if op[0] == "add":
                await inbox.add(message(op[1], op[2], op[3], op[4]))
            elif op[0] == "read":
                inbox.mark_read([m for m in inbox.messages("all") if m.id == f"m{op[1]}"])
            elif op[0] == "read-in-meta":  # a compat caller holding the message changes its status
                for m in inbox.messages("all"):
                    if m.id == f"m{op[1]}":
                        m.meta["status"] = "read"
            elif op[0] == "delete":
                inbox.delete([f"m{op[1]}"])
            else:
                inbox.clear(op[1])
            for senders, category, message_id in queries:
                got = {s: [m.id for m in ms] for s, ms in inbox.unread(senders, category, message_id).items()}
                assert got == scan(inbox, senders, category, message_id)

    asyncio.run(scenario())


def test_waking_on_one_new_message_does_not_scan_the_messages_read_before() -> None:
    async def scenario() -> float:
        inbox = Inbox()
        for i in range(20_000):
            await inbox.add(message(i, f"node-{i % 1000}", "update"))
        inbox.mark_read(inbox.messages("unread"))
        await inbox.add(message(20_000, "node-7", "update"))
        senders = [f"node-{i}" for i in range(1000)]
        began = time.perf_counter()
        for _ in range(5_000):
            assert list(inbox.unread(None, "update")) == ["node-7"]
            assert list(inbox.unread(senders, "update")) == ["node-7"]
            assert inbox.unread(senders, "aggregate") == {}
        return time.perf_counter() - began

    # a scan of 20,000 messages per call took minutes for these 15,000 calls
    elapsed = asyncio.run(scenario())
    assert elapsed < 5.0, f"15,000 look-ups took {elapsed:.1f} s"

"""The log stream to the pod orchestrator: lines logged one per message share requests, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from flame.node import AsyncNode
from flame.sim import FlameStack, StackSettings
from flame.sim.launch import start_node


@pytest.fixture
async def node() -> AsyncIterator[AsyncNode]:
    stack = FlameStack.create(1, settings=StackSettings.fast())
    async with stack:
        node = await start_node(stack, "node-1")
        node.stack = stack  # type: ignore[attr-defined]
        try:
            yield node
        finally:
            await node.stop()


def _lines(node: AsyncNode, since: int) -> tuple[int, list[str]]:
    entries = node.stack.po.record("node-1").logs[since:]  # type: ignore[attr-defined]
    return len(entries), [line for entry in entries for line in entry["log"].split("\n")]


async def test_lines_logged_one_at_a_time_share_requests_in_order(node: AsyncNode) -> None:
    reporter = node.reporter
    assert reporter is not None
    reporter.linger = 2.0  # generous, so that a slow machine still groups them
    assert await reporter.flush(5)
    before = len(node.stack.po.record("node-1").logs)  # type: ignore[attr-defined]
    for i in range(20):
        node.log(f"line {i}")
        await asyncio.sleep(0.002)  # as if a message went out between the lines
    assert await reporter.flush(5)
    requests, lines = _lines(node, before)
    assert lines == [f"line {i}" for i in range(20)]
    assert requests < 5, requests
    assert reporter.sent >= 20 and reporter.dropped == 0


async def test_flush_and_close_do_not_wait_for_the_linger(node: AsyncNode) -> None:
    reporter = node.reporter
    assert reporter is not None
    assert await reporter.flush(5)
    reporter.linger = 60.0
    before = len(node.stack.po.record("node-1").logs)  # type: ignore[attr-defined]
    node.log("flushed")
    await asyncio.sleep(0.01)  # the sending task is lingering now
    began = time.perf_counter()
    assert await reporter.flush(5)
    node.log("closed")
    await asyncio.sleep(0.01)
    await reporter.aclose(5)
    assert time.perf_counter() - began < 2.0
    assert _lines(node, before)[1] == ["flushed", "closed"]

"""Bounded waits of a local run: stopping tasks, awaiting with a bound, and the watchdog.

Nothing waits without bound after a cancellation: before Python 3.12 ``asyncio.wait_for`` can swallow
one, so stopping never relies on a single cancel being delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from flame.federated import FederationOptions
from flame.local.config import CANCEL_GRACE
from flame.sim.federation import cannot_finish
from flame.sim.stack import FlameStack

T = TypeVar("T")


async def stop_tasks(
    tasks: set[asyncio.Task[Any]], grace: float, *, every: float = 1.0
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait, at most ``grace`` seconds, until they ended; returns those left running.

    The cancellation is repeated every ``every`` seconds: before Python 3.12 ``asyncio.wait_for`` swallows
    a cancellation that arrives as what it waits for completes, so one request can get lost. A task
    that is cleaning up after the first one (a node leaving its services) gets ``every`` seconds first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(every, remaining))
    return pending


async def within(coro: Coroutine[Any, Any, T], seconds: float, default: T) -> T:
    """``await coro``, but at most ``seconds``; ``default`` (the coroutine cancelled) when it takes longer."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    finally:
        if not task.done():
            await stop_tasks({task}, CANCEL_GRACE)
    if task in done:
        return task.result()
    return default


def remaining(deadline: float) -> float:
    return max(deadline - asyncio.get_running_loop().time(), 0.0)


class Watchdog:
    """Waits until the federation cannot succeed any more; woken by pod-orchestrator events."""

    def __init__(self, stack: FlameStack, options: FederationOptions) -> None:
        self.stack = stack
        self.options = options
        self.wake = asyncio.Event()
        self.extra_failed: set[str] = set()

    def failed(self) -> set[str]:
        po = {name for name, record in self.stack.po.records.items() if record.status == "failed"}
        return po | self.extra_failed

    async def run(self) -> str:
        seen = 0
        while True:
            reason = cannot_finish(self.stack, self.options, self.failed())
            if reason is not None:
                return reason
            self.wake.clear()
            events = asyncio.ensure_future(self.stack.events.wait_for("po", seen + 1, timeout=3600.0))
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait({events, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await stop_tasks({events, woken}, CANCEL_GRACE)
            if events.done() and not events.cancelled() and events.exception() is None:
                seen = len(events.result())

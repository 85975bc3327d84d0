"""The status reporter's shutdown is bounded, whatever the pod orchestrator and the event loop do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from flame.clients.po import PodOrchestratorClient
from flame.node.status import CANCEL_GRACE, StatusReporter

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


@pytest.fixture
async def make_reporter() -> AsyncIterator[Callable[[Handler], StatusReporter]]:
    """A reporter whose pod orchestrator is ``handler`` (an httpx transport standing in for the PO)."""
    clients: list[httpx.AsyncClient] = []

    def make(handler: Handler) -> StatusReporter:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(http)
        po = PodOrchestratorClient(http, "http://po.test", analysis_id="a-1")
        reporter = StatusReporter(po, asyncio.get_running_loop())
        reporter.start()
        return reporter

    yield make
    for http in clients:
        await http.aclose()


async def test_lines_reach_the_po_and_close_sends_what_is_queued(
    make_reporter: Callable[[Handler], StatusReporter],
) -> None:
    received: list[str] = []

    async def po(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content)["log"])
        return httpx.Response(200, json={})

    reporter = make_reporter(po)
    reporter.log("one")
    assert await reporter.flush(5)
    reporter.log("two")
    reporter.log("three")
    await reporter.aclose(5)
    assert "\n".join(received).split("\n") == ["one", "two", "three"]
    assert reporter.sent == 3 and reporter.dropped == 0


async def test_close_is_bounded_when_the_po_never_answers_and_ignores_cancellation(
    make_reporter: Callable[[Handler], StatusReporter],
) -> None:
    """A send that does not end when cancelled must not hold the node's shutdown forever."""
    release = asyncio.Event()

    async def stuck_po(request: httpx.Request) -> httpx.Response:
        while not release.is_set():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                continue  # as a lost cancellation: the request goes on
        return httpx.Response(200, json={})

    reporter = make_reporter(stuck_po)
    reporter.log("never answered")
    reporter.log("still queued", "warn")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    try:
        await asyncio.wait_for(reporter.aclose(0.2), 0.2 + CANCEL_GRACE + 2.0)
    finally:
        release.set()
    assert time.monotonic() - started < 0.2 + CANCEL_GRACE + 1.5
    assert reporter.dropped >= 1  # the line still queued was dropped, not sent after the close


async def test_a_lost_cancellation_still_ends_the_sending_task(
    make_reporter: Callable[[Handler], StatusReporter],
) -> None:
    """A cancellation lost under the request (a library catches it, the request completes) must still
    end the sending task, not leave it waiting for a next line that never comes."""
    entered = asyncio.Event()

    async def po(request: httpx.Request) -> httpx.Response:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost here: the request answers anyway
            await asyncio.Event().wait()
        return httpx.Response(200, json={})

    reporter = make_reporter(po)
    task = reporter._task
    assert task is not None
    reporter.log("in flight")
    await asyncio.wait_for(entered.wait(), 5)
    assert not task.done()
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
    assert task.done()
    await reporter.aclose(1.0)


# -- the rest of a node's shutdown: background tasks -------------------------------------------------------------------


async def test_background_tasks_close_is_bounded_for_a_task_that_ignores_cancellation() -> None:
    from flame.node.tasks import BackgroundTasks

    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    tasks = BackgroundTasks()
    task = tasks.spawn(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    closing = asyncio.ensure_future(tasks.aclose(grace=0.1))
    try:
        await asyncio.wait({closing}, timeout=3.0)  # not wait_for: it would wait for the cancel too
        assert closing.done(), "closing the background tasks did not end"
        assert time.monotonic() - started < 0.1 + CANCEL_GRACE + 1.5
    finally:
        release.set()
        await asyncio.wait({task, closing}, timeout=1.0)

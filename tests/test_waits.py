"""Bounded waits (flame.waits) and the sync-to-async bridge (flame.node.loop): bounds, aborts, and
cancellations that are never lost, on the real event loop and threads."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from flame.errors import FlameError, FlameTimeoutError
from flame.node.inbox import Inbox, Message
from flame.node.loop import CallScope, LoopThread, call_in_loop
from flame.waits import bounded, bounded_in_task

Bound = Callable[[Awaitable[Any], float], Awaitable[Any]]
BOUNDS: list[Bound] = [bounded, bounded_in_task]
SRC = Path(__file__).resolve().parents[1] / "src" / "flame"


@pytest.mark.parametrize("bound", BOUNDS)
async def test_bounded_returns_the_result_and_raises_what_the_awaitable_raises(bound: Bound) -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    assert await bound(answer(), 5.0) == 42
    with pytest.raises(ValueError, match="boom"):
        await bound(fail(), 5.0)


@pytest.mark.parametrize("bound", BOUNDS)
async def test_bounded_times_out_and_cancels_what_it_waited_for(bound: Bound) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(asyncio.TimeoutError):
        await bound(forever(), 0.05)
    assert started.is_set() and cancelled.is_set()


@pytest.mark.parametrize("bound", BOUNDS)
async def test_a_cancellation_that_coincides_with_the_result_is_not_lost(bound: Bound) -> None:
    """The result and the caller's cancellation arrive in the same loop step: the caller is cancelled.

    ``asyncio.wait_for`` returns the result here before Python 3.12, and the cancelled waiter goes on.
    """
    result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(bound(result, 10.0))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()
    result.set_result(1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_cancelled_inbox_wait_stops_even_when_the_message_arrives_at_once() -> None:
    """However the wake-up and the cancellation interleave, a wait cancelled before it ended raises."""
    for steps in range(8):
        inbox = Inbox()
        body = {"meta": {"id": f"m{steps}", "sender": "n1", "category": "c"}}
        waiter = asyncio.ensure_future(inbox.wait_until(lambda inbox=inbox: len(inbox) > 0, 10.0))
        for _ in range(4):  # the waiter is asleep on the inbox's condition
            await asyncio.sleep(0)
        assert not waiter.done()
        await inbox.add(Message(body, ["me"]))
        for _ in range(steps):
            await asyncio.sleep(0)
        if waiter.done():
            assert waiter.result() is True
            continue
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


def test_no_module_uses_asyncio_wait_for() -> None:
    """Every bounded wait in the package goes through flame.waits.bounded (see its docstring)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "wait_for"
                and isinstance(node.value, ast.Name)
                and node.value.id == "asyncio"
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == [], f"use flame.waits.bounded instead of asyncio.wait_for: {offenders}"


# -- the sync-to-async bridge ------------------------------------------------------------------------------


@pytest.fixture
def lt() -> Any:
    loop = LoopThread("test-bridge")
    yield loop
    loop.stop()


def _forever(started: threading.Event, cancelled: threading.Event) -> Any:
    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return forever()


def test_the_bridge_returns_results_and_times_out_with_the_coroutine_cancelled(lt: LoopThread) -> None:
    async def answer() -> int:
        return 7

    assert lt.run(answer(), 5.0, "an answer") == 7
    started, cancelled = threading.Event(), threading.Event()
    with pytest.raises(FlameTimeoutError, match="the silent thing") as info:
        lt.run(_forever(started, cancelled), 0.05, "the silent thing")
    assert info.value.timeout == 0.05
    assert cancelled.wait(5.0), "the coroutine went on after the caller's wait ran out"


def test_the_coroutines_own_timeout_error_reaches_the_caller_unchanged(lt: LoopThread) -> None:
    """A FlameTimeoutError is a TimeoutError: the bridge must not take it for its own bound running out."""
    own = FlameTimeoutError("messages from the partners", 3.0, ["node-2"])

    async def times_out() -> None:
        raise own

    with pytest.raises(FlameTimeoutError) as info:
        lt.run(times_out(), 60.0, "the bridge's wait")
    assert info.value is own
    # the analyzer's data handle (federated.data) goes through the same bridge
    from flame.federated.data import Data

    with pytest.raises(FlameTimeoutError) as info:
        Data(None, lt.loop, timeout=60.0)._run(times_out(), "a FHIR query")
    assert info.value is own and info.value.missing == ["node-2"]


def test_an_interrupted_caller_cancels_the_coroutine(lt: LoopThread) -> None:
    """Ctrl-C while a sync call waits (a notebook's interrupt): the coroutine does not go on."""
    assert threading.current_thread() is threading.main_thread()
    started, cancelled = threading.Event(), threading.Event()

    def interrupt() -> None:
        if started.wait(5.0):  # a real SIGINT to the main thread, as the terminal sends it
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        lt.run(_forever(started, cancelled), 30.0, "a wait the user interrupts")
    assert cancelled.wait(5.0)


def test_aborting_a_scope_cancels_its_calls_in_flight_and_refuses_later_ones(lt: LoopThread) -> None:
    scope, other = CallScope(lt), CallScope(lt)
    started, cancelled = threading.Event(), threading.Event()
    caught: list[BaseException] = []

    def node_thread() -> None:
        try:
            scope.run(_forever(started, cancelled), 30.0, "awaiting the partners")
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=node_thread)
    thread.start()
    assert started.wait(5.0)
    scope.abort("node-2 failed")
    thread.join(5.0)
    assert not thread.is_alive()
    assert len(caught) == 1 and type(caught[0]) is FlameError
    assert "awaiting the partners was cancelled: node-2 failed" in str(caught[0])
    assert cancelled.wait(5.0)

    async def answer() -> int:
        return 1

    with pytest.raises(FlameError, match=r"this node was stopped \(node-2 failed\)"):
        scope.run(answer(), 5.0, "the next call")
    assert other.run(answer(), 5.0, "another node's call") == 1  # other scopes are untouched


def test_the_bridge_refuses_calls_from_its_own_loop_and_to_a_closed_loop(lt: LoopThread) -> None:
    async def nested() -> None:
        async def inner() -> None:
            return None

        lt.run(inner(), 5.0, "a nested call")

    with pytest.raises(FlameError, match="own event loop"):
        lt.run(nested(), 5.0, "the outer call")
    closed = asyncio.new_event_loop()
    closed.close()

    async def nothing() -> None:
        return None

    with pytest.raises(FlameError, match="closed"):
        call_in_loop(closed, nothing(), 5.0, "a call")
    lt.stop()
    with pytest.raises(FlameError, match="stopped"):
        lt.run(nothing(), 5.0, "a call after stop")


def test_a_pending_call_fails_clearly_when_the_loop_stops(lt: LoopThread) -> None:
    started, cancelled = threading.Event(), threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pending = pool.submit(lt.run, _forever(started, cancelled), 30.0, "a long wait")
        assert started.wait(5.0)
        lt.stop()
        with pytest.raises(FlameError, match="a long wait was cancelled: the node runtime stopped"):
            pending.result(10.0)
    finally:
        pool.shutdown()


async def test_the_event_log_wakes_on_a_record_from_any_thread_and_times_out() -> None:
    from flame.sim.events import EventLog

    log = EventLog()
    waiter = asyncio.ensure_future(log.wait_for("node.restart", node="node-2", timeout=3600.0))
    for _ in range(3):
        await asyncio.sleep(0)
    log.record("node.restart", "node-1")  # another node: still waiting
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()
    recorder = threading.Thread(target=log.record, args=("node.restart", "node-2"))
    recorder.start()
    done, _ = await asyncio.wait([waiter], timeout=60)
    recorder.join()
    assert waiter in done and [e.node for e in waiter.result()] == ["node-2"]
    with pytest.raises(TimeoutError, match="saw 0"):
        await log.wait_for("never", timeout=0.01)

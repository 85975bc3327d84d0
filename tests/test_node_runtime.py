"""The node runtime against the emulated stack: start-up, tokens, storage, the analysis REST API, status
and logs to the pod orchestrator, and the sync face :class:`~flame.node.Node` inside running loops.

Every test that takes the ``mode`` fixture runs in-process and served (uvicorn on loopback).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest

from flame.clients.base import RetryPolicy
from flame.errors import FlameError, FlameTimeoutError, ServiceError
from flame.node import AsyncNode, LoopThread, Node, Timeouts
from flame.sim.faults import FaultPlan, NodeOffline, ServiceOutage
from flame.sim.launch import Mode, node_config, start_node
from flame.sim.proxy import SidecarTransport
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

#: Short bounds for every node of these tests.
FAST = Timeouts(startup=5.0, request=5.0, send=5.0, attempt=0.5, await_messages=5.0, shutdown=2.0)
#: Quick retries, so that failing requests fail within a test's time.
QUICK_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, token_wait=0.3)


class Federation:
    """A started emulated stack plus the node runtimes started on it (stopped in teardown)."""

    def __init__(self, stack: FlameStack, mode: Mode) -> None:
        self.stack = stack
        self.mode = mode
        self.nodes: dict[str, AsyncNode] = {}

    async def start(self, name: str, **kwargs: Any) -> AsyncNode:
        kwargs.setdefault("timeouts", FAST)
        kwargs.setdefault("retry", QUICK_RETRY)
        node = await start_node(self.stack, name, self.mode, **kwargs)
        self.nodes[name] = node
        return node

    async def start_all(self, **kwargs: Any) -> list[AsyncNode]:
        return list(await asyncio.gather(*(self.start(name, **kwargs) for name in self.stack.nodes)))

    def client(self, name: str) -> httpx.AsyncClient:
        """A client inside node ``name``'s cluster (base URL: its sidecar), as the PO or broker call."""
        return self.stack.client(name, timeout=5.0)

    async def aclose(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes.values()))
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


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, re-checking on every turn of the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.005)


# -- start-up -----------------------------------------------------------------------------------------


async def test_start_detects_identity_role_partners_and_subscribes(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=2)
    stack = fed.stack
    aggregator, node_1, node_2 = await fed.start_all()
    ids = {name: stack.node(name).node_id for name in stack.nodes}
    for name, node in fed.nodes.items():
        assert node.node_id == ids[name]
        assert node.role == stack.node(name).role
        assert node.status == "started"
        assert node.inbox is node.messenger.inbox
        assert sorted(node.partners) == sorted(i for n, i in ids.items() if n != name)
        assert {p["nodeId"] for p in node.participants} == set(ids.values())
        subscriptions = list(stack.node(name).subscriptions.values())
        assert [s["webhookUrl"] for s in subscriptions] == [node.config.urls.webhook]
    assert aggregator.is_aggregator and aggregator.aggregator_id is None
    assert node_1.aggregator_id == node_2.aggregator_id == ids["aggregator"]
    assert not node_1.is_aggregator
    # the aggregator has no data access; analysis nodes listed their data sources
    assert aggregator.data is None and node_1.data is not None

    await node_1.stop()
    assert stack.node("node-1").subscriptions == {}
    assert stack.events.select("broker.unsubscribed", node="node-1")
    assert len(stack.node("node-2").subscriptions) == 1


async def test_start_times_out_when_the_sidecar_is_offline(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    stack.faults.add(NodeOffline("node-1", start=0.0, end=math.inf))
    timeouts = dataclasses.replace(FAST, startup=0.5, shutdown=0.5)
    config = node_config(stack, "node-1", fed.mode)
    transport = SidecarTransport(stack.app, stack.resolver("node-1")) if fed.mode == "inprocess" else None
    node = AsyncNode(config, transport=transport, serve_api=False, timeouts=timeouts, retry=QUICK_RETRY)
    began = time.monotonic()
    try:
        with pytest.raises(FlameTimeoutError) as caught:
            await node.start()
        elapsed = time.monotonic() - began
    finally:
        await node.stop()
    assert 0.3 <= elapsed < 10.0  # the start-up bound given (0.5 s), not the default 120 s
    assert caught.value.timeout == 0.5
    assert "sidecar" in str(caught.value) and "DEPLOYMENT_NAME" in str(caught.value)
    assert stack.node("node-1").subscriptions == {}


@inprocess_only
async def test_start_fails_naming_the_broker_when_participants_self_is_404(
    federation: MakeFederation,
) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    # a container configured for another analysis: this node does not take part in it
    config = node_config(stack, "node-1", fed.mode).with_overrides(analysis_id=str(uuid.uuid4()))
    transport = SidecarTransport(stack.app, stack.resolver("node-1")) if fed.mode == "inprocess" else None
    node = AsyncNode(config, transport=transport, serve_api=False, timeouts=FAST, retry=QUICK_RETRY)
    try:
        with pytest.raises(ServiceError) as caught:
            await node.start()
    finally:
        await node.stop()
    error = caught.value
    assert error.service == "message-broker" and error.status == 404
    assert "participants/self" in str(error) and "ANALYSIS_ID" in str(error)
    assert stack.node("node-1").subscriptions == {}


async def test_failed_start_leaves_nothing_running(federation: MakeFederation) -> None:
    """A failed start releases what it set up (log task; in served mode the API server): no task is left."""
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    before = set(asyncio.all_tasks())
    stack.faults.add(NodeOffline("node-1", start=0.0, end=math.inf))
    with pytest.raises(FlameTimeoutError):
        await start_node(
            stack,
            "node-1",
            fed.mode,
            timeouts=dataclasses.replace(FAST, startup=0.3, shutdown=0.5),
            retry=QUICK_RETRY,
        )
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == [], leftover


# -- tokens -------------------------------------------------------------------------------------------


async def test_token_pushed_mid_run_is_used_for_the_next_requests(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1, token_lifetime=600)
    stack = fed.stack
    node_1 = await fed.start("node-1")
    await fed.start("aggregator")
    async with fed.client("node-1") as client:
        health = (await client.get("/analysis/healthz")).json()
    assert 590 <= health["token_remaining_time"] <= 600

    stack.node("node-1").issuer.expire_all()
    # no PO runs here: nobody pushes a new token, so the requests fail after waiting for one
    with pytest.raises(ServiceError) as broker_error:
        await node_1.broker.participants()
    assert broker_error.value.status == 401
    with pytest.raises(ServiceError) as storage_error:
        await node_1.storage.tags()
    assert storage_error.value.status == 403
    # and the node reports its refused token as expired, so that a PO would push a new one
    async with fed.client("node-1") as client:
        assert (await client.get("/analysis/healthz")).json()["token_remaining_time"] == 0

    # the PO pushes a token of another lifetime, so /healthz shows which one is in use
    stack.settings = dataclasses.replace(stack.settings, token_lifetime=300)
    await stack.po.refresh_token(stack.node("node-1"))
    assert stack.events.select("po.token_refresh", node="node-1", status=200)
    assert node_1.tokens.get() == stack.node("node-1").token

    assert len(await node_1.broker.participants()) == 2
    assert await node_1.storage.tags() == []
    acked, missing = await node_1.send_intermediate_data([node_1.aggregator_id or ""], {"x": 1})
    assert (acked, missing) == ([node_1.aggregator_id], [])
    async with fed.client("node-1") as client:
        health = (await client.get("/analysis/healthz")).json()
    claims = jwt.decode(stack.node("node-1").token, options={"verify_signature": False})
    assert 290 <= health["token_remaining_time"] <= 300
    assert abs(health["token_remaining_time"] - (claims["exp"] - time.time())) <= 2


# -- storage ------------------------------------------------------------------------------------------


async def test_intermediate_data_survives_a_storage_outage_window(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    node_1 = await fed.start("node-1", retry=RetryPolicy(base_delay=0.05))
    aggregator = await fed.start("aggregator")
    now = stack.now()
    stack.faults.add(ServiceOutage("storage", start=now, end=now + 0.3, node="node-1"))
    data = {"mean": 4.5, "counts": [1, 2, 3]}
    acked, missing = await node_1.send_intermediate_data([aggregator.node_id], data)
    assert (acked, missing) == ([aggregator.node_id], [])
    assert stack.events.select("fault.outage", node="node-1", service="storage")
    assert await aggregator.await_intermediate_data([node_1.node_id], timeout=5) == {node_1.node_id: data}


@inprocess_only
async def test_intermediate_data_is_read_once(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    node_1 = await fed.start("node-1")
    aggregator = await fed.start("aggregator")
    await node_1.send_intermediate_data([aggregator.node_id], [1, 2, 3])
    assert await aggregator.await_intermediate_data([node_1.node_id]) == {node_1.node_id: [1, 2, 3]}
    message = aggregator.inbox.messages("read")[-1]
    with pytest.raises(ServiceError) as caught:
        await aggregator.read_intermediate_message(message)
    assert caught.value.service == "storage" and caught.value.status == 404
    assert "already read" in str(caught.value) and "once" in str(caught.value)


# -- the analysis REST API --------------------------------------------------------------------------------


async def test_webhook_rejects_malformed_bodies_and_changes_nothing(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    node_1 = await fed.start("node-1")
    aggregator = await fed.start("aggregator")
    # one attempt for as long as the whole send: the acknowledgement can take longer than FAST's 0.5 s
    # on a loaded machine (served: two real HTTP hops each way), and a resend would be counted as a
    # duplicate below although no malformed body caused it
    acked = await aggregator.send_message(
        [node_1.node_id], "c", {"valid": True}, timeout=60.0, attempt_timeout=60.0
    )
    assert acked == ([node_1.node_id], [])
    assert [m.content() for m in node_1.inbox.messages()] == [{"valid": True}]
    json_header = {"Content-Type": "application/json"}
    async with fed.client("node-1") as client:
        for body in (
            b"not json {",
            b'{"value": 1}',
            b'{"value": 1, "meta": {"sender": "x", "category": "c"}}',
            b'{"meta": "not an object"}',
            b"[1, 2]",
        ):
            answer = await client.post("/analysis/webhook", content=body, headers=json_header)
            assert answer.status_code == 400, body
            assert answer.json()["detail"]
    assert len(node_1.inbox) == 1 and node_1.inbox.duplicates == 0
    assert node_1.messenger.sent == 0


async def test_token_refresh_and_partner_status_reject_bad_bodies(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    node_1 = await fed.start("node-1")
    await fed.start("aggregator")
    old = node_1.tokens.get()
    async with fed.client("node-1") as client:
        for body in ({}, {"token": ""}, {"token": 42}, {"other": "x"}):
            answer = await client.post("/analysis/token_refresh", json=body)
            assert answer.status_code == 400, body
        answer = await client.post("/analysis/token_refresh", json={"token": "garbage.not.ajwt"})
        assert answer.status_code == 400
        assert "garbage" not in answer.text
        answer = await client.post("/analysis/token_refresh", content=b"{{", headers={"Content-Type": "x"})
        assert answer.status_code == 400
        assert node_1.tokens.get() == old

        malformed: list[dict[str, Any]] = [{}, {"partner_status": ["executed"]}, {"partner_status": {"a": 1}}]
        for status_body in malformed:
            answer = await client.post("/analysis/partner_status", json=status_body)
            assert answer.status_code == 422, status_body
        assert node_1.status == "started"


async def test_healthz_shape_and_speed_while_user_code_blocks(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    node_1 = await fed.start("node-1")
    await fed.start("aggregator")
    async with fed.client("node-1") as client:
        await client.get("/analysis/healthz")  # warm the connection
        # a sync user function that blocks a worker thread until the health check has its answer
        entered, release = threading.Event(), threading.Event()

        def user_code() -> None:
            entered.set()
            release.wait(60)

        blocking = asyncio.ensure_future(asyncio.to_thread(user_code))
        assert await asyncio.to_thread(entered.wait, 60)
        try:
            answer = await client.get("/analysis/healthz")
            assert not blocking.done()  # answered while the user code still blocks
        finally:
            release.set()
            await blocking
    assert answer.status_code == 200
    health = answer.json()
    assert set(health) == {"status", "token_remaining_time"}
    assert health["status"] == node_1.status == "started"
    assert isinstance(health["token_remaining_time"], int) and health["token_remaining_time"] > 0


async def test_partner_status_executed_of_the_aggregator_is_adopted(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=2)
    stack = fed.stack
    aggregator, node_1, node_2 = await fed.start_all()
    # another analysis node's final status is not adopted, nor is a non-final status of the aggregator
    async with fed.client("node-1") as client:
        answer = await client.post(
            "/analysis/partner_status",
            json={"partner_status": {node_2.node_id: "failed", aggregator.node_id: "executing"}},
        )
    assert answer.json() == {"status": "started"}
    assert not node_1.finished.is_set()

    aggregator.set_status("executed")
    await aggregator.reporter.flush(5)  # type: ignore[union-attr]
    assert stack.po.status("aggregator") == "executed"
    # one round of the emulated PO's checks pushes the partner statuses to node-1
    await stack.po.check(stack.node("node-1"))
    await asyncio.wait_for(node_1.finished.wait(), 5)
    assert node_1.status == "executed"
    assert node_1.partner_statuses[aggregator.node_id] == "executed"
    await node_1.reporter.flush(5)  # type: ignore[union-attr]
    assert stack.po.status("node-1") == "executed"
    assert node_2.status == "started"


# -- status, progress and logs to the pod orchestrator ----------------------------------------------------


@inprocess_only
async def test_status_progress_and_logs_reach_the_po(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    node_1 = await fed.start("node-1")
    reporter = node_1.reporter
    assert reporter is not None
    await reporter.flush(5)
    record = stack.po.record("node-1")
    assert record.status == "started"
    assert any("started as default" in entry["log"] for entry in record.logs)

    node_1.set_status("executing")
    assert node_1.set_progress(40) == 40
    assert node_1.set_progress(25.5) == 40  # never decreases
    assert node_1.set_progress(150) == 100
    node_1.log("half-way there", "notice")
    await reporter.flush(5)
    assert record.status == "executing" and record.progress == 100
    assert record.logs[-1]["log"] == "half-way there" and record.logs[-1]["log_type"] == "notice"
    assert not stack.events.select("po.progress_decreased")
    assert [e["progress"] for e in record.logs] == sorted(e["progress"] for e in record.logs)


@inprocess_only
async def test_logs_are_batched(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    node_1 = await fed.start("node-1")
    reporter = node_1.reporter
    assert reporter is not None
    await reporter.flush(5)
    record = stack.po.record("node-1")
    before = len(record.logs)
    for i in range(200):
        node_1.log(f"line {i}")
    await reporter.flush(5)
    entries = record.logs[before:]
    assert 1 <= len(entries) < 10
    lines = [line for entry in entries for line in entry["log"].split("\n")]
    assert lines == [f"line {i}" for i in range(200)]


@inprocess_only
async def test_nothing_blocks_when_the_po_is_down(
    federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await federation(analysis_nodes=1)
    stack = fed.stack
    node_1 = await fed.start("node-1")
    await fed.start("aggregator")
    reporter = node_1.reporter
    assert reporter is not None
    await reporter.flush(5)
    stack.faults.add(ServiceOutage("po", start=0.0, end=math.inf))
    logged = len(stack.po.record("node-1").logs)
    caplog.set_level(logging.WARNING, logger="flame.node.status")
    began = time.perf_counter()
    for i in range(50):
        node_1.log(f"while the PO is down {i}")
    assert time.perf_counter() - began < 0.2  # 50 lines, no request made
    # messaging goes on while the PO is unreachable
    acked, _ = await node_1.send_message([node_1.aggregator_id or ""], "c", {"x": 1})
    assert acked == [node_1.aggregator_id]
    assert await reporter.flush(5)
    assert reporter.dropped >= 50
    assert len(stack.po.record("node-1").logs) == logged
    assert stack.events.select("fault.outage", node="node-1", service="po")
    assert any("dropped" in r.getMessage() for r in caplog.records if r.name == "flame.node.status")


# -- the sync face ---------------------------------------------------------------------------------------


async def test_sync_node_from_worker_threads_while_the_test_loop_serves_the_stack() -> None:
    """Served mode: the stack runs on this test's loop; the sync :class:`Node` runs its own loop thread."""
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    await stack.serve()
    aggregator = await start_node(stack, "aggregator", "served", timeouts=FAST, retry=QUICK_RETRY)
    node = Node(node_config(stack, "node-1", "served"), serve_api=False, timeouts=FAST, retry=QUICK_RETRY)
    try:
        url = node._call(node.core.serve_api(host="127.0.0.1", port=0), 5, "serving the API")
        stack.attach_analysis("node-1", url)
        await asyncio.to_thread(node.start)
        assert node.node_id == stack.node("node-1").node_id and node.role == "default"
        assert node.aggregator_id == aggregator.node_id and node.partners == [aggregator.node_id]
        # non-blocking calls work directly on this running loop
        assert node.status == "started"
        node.log("hello from a running loop")
        acked = await asyncio.to_thread(node.send_message, [aggregator.node_id], "ping", {"n": 1})
        assert acked == ([aggregator.node_id], [])
        found = await aggregator.await_messages([node.node_id], "ping", timeout=5)
        assert [m.content() for m in found[node.node_id] or []] == [{"n": 1}]
        await aggregator.send_message([node.node_id], "pong", {"n": 2})
        got = await asyncio.to_thread(node.await_messages, [aggregator.node_id], "pong", timeout=5)
        assert [m.content() for m in got[aggregator.node_id] or []] == [{"n": 2}]
    finally:
        await asyncio.to_thread(node.stop)
        await aggregator.stop()
        await stack.aclose()
    assert stack.node("node-1").subscriptions == {}


async def test_sync_node_called_directly_inside_a_running_loop_like_jupyter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Jupyter cell: this loop is running and the user calls the sync API directly.

    The stack lives elsewhere (here: its own loop thread, served on loopback), as it does for a real
    notebook. Nothing may call ``asyncio.run`` or need this loop.
    """

    def no_asyncio_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("asyncio.run called")

    stack_loop = LoopThread("test-stack")

    async def make_stack() -> tuple[FlameStack, AsyncNode]:
        stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
        await stack.serve()
        aggregator = await start_node(stack, "aggregator", "served", timeouts=FAST, retry=QUICK_RETRY)
        return stack, aggregator

    stack, aggregator = stack_loop.run(make_stack(), 10)

    async def echo() -> None:
        found = await aggregator.await_messages(
            [stack.node("node-1").node_id], "ping", timeout=10, raise_on_timeout=False
        )
        for sender, messages in found.items():
            if messages:
                await aggregator.send_message([sender], "pong", {"echo": messages[0].content()["n"]})

    async def attach(url: str) -> None:
        stack.attach_analysis("node-1", url)

    monkeypatch.setattr(asyncio, "run", no_asyncio_run)
    node = Node(node_config(stack, "node-1", "served"), serve_api=False, timeouts=FAST, retry=QUICK_RETRY)
    try:
        asyncio.get_running_loop()  # this test body runs inside a running loop
        url = node._call(node.core.serve_api(host="127.0.0.1", port=0), 5, "serving the API")
        stack_loop.run(attach(url), 5)
        echoed = stack_loop.submit(echo())
        assert node.start() is node
        assert node.status == "started"
        node.log("a log line from a notebook cell")
        assert node.set_progress(10) == 10
        assert node.set_progress(5) == 10
        with pytest.raises(ValueError, match="unknown status"):
            node.set_status("done")  # type: ignore[arg-type]
        assert node.send_message([aggregator.node_id], "ping", {"n": 7}) == ([aggregator.node_id], [])
        got = node.await_messages([aggregator.node_id], "pong", timeout=5)
        assert [m.content() for m in got[aggregator.node_id] or []] == [{"echo": 7}]
        echoed.result(5)
        # a bounded wait raises the runtime's own timeout error, with what is missing
        with pytest.raises(FlameTimeoutError) as caught:
            node.await_messages([aggregator.node_id], "never", timeout=0.2)
        assert caught.value.missing == [aggregator.node_id] and caught.value.timeout == 0.2
        # a sync call from the runtime's own loop thread would deadlock: it raises at once instead
        with pytest.raises(FlameError, match="own event loop"):
            node._call(_call_sync_from_inside(node), 5, "a nested call")
    finally:
        node.stop()
        stack_loop.run(aggregator.stop(), 10)
        stack_loop.run(stack.aclose(), 10)
        stack_loop.stop()
    assert not node._loop.is_running


async def _call_sync_from_inside(node: Node) -> Any:
    return node.ready_check()


def test_interrupting_a_sync_call_cancels_it_on_the_runtime_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in a notebook while a sync call waits: the coroutine must not go on running in the back."""
    loop_thread = LoopThread("test-interrupt")
    started = threading.Event()
    cancelled = threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        assert started.wait(5)
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent.futures, "wait", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop_thread.run(waits(), 10, "a long wait")
        assert cancelled.wait(5)
    finally:
        loop_thread.stop()


async def test_analysis_finished_does_not_wait_for_partners_that_already_ended(
    federation: MakeFederation,
) -> None:
    """An analysis node ends on the final aggregate; once the PO reports it executed, the aggregator's
    ``analysis_finished`` stops waiting for an acknowledgement that can no longer come."""
    fed = await federation(analysis_nodes=2)
    aggregator, node_1, node_2 = await fed.start_all()
    await node_1.stop("executed")  # gone: no webhook subscription, nobody acknowledges
    loop = asyncio.get_running_loop()
    started = loop.time()
    finishing = asyncio.create_task(aggregator.analysis_finished(attempts=3, attempt_timeout=20))
    await asyncio.sleep(0.3)
    assert not finishing.done()  # node-1 has not acknowledged and is not known to have ended
    async with fed.client("aggregator") as client:
        answer = await client.post(
            "/analysis/partner_status", json={"partner_status": {node_1.node_id: "executed"}}
        )
    assert answer.status_code == 200
    assert await asyncio.wait_for(finishing, 10) is True  # node-2 acknowledged, node-1 ended
    assert loop.time() - started < 10  # not 3 attempts x 20 s
    assert aggregator.status == "executed"
    assert node_2.messenger.finished.is_set()

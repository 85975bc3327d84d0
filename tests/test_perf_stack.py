"""The stack's direct hops: what a request looks like on the other side, and how failures come back.

The sidecar hands requests to an analysis API in the same process without an HTTP client, and a
broker delivers webhooks into a sidecar the same way; these tests pin what the apps behind see and
what the caller gets, in both modes where the mode matters.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from flame.sim import FlameStack, StackSettings
from flame.sim.backends import LocalFolderBackend
from flame.sim.faults import NodeOffline
from tests.conftest import StackHarness


class Recorder:
    """An ASGI analysis API that records each request and answers as told."""

    def __init__(self, status: int = 200, fail: str | None = None) -> None:
        self.status = status
        self.fail = fail  # "before": raise before answering; "during": raise after the first chunk
        self.seen: list[dict[str, Any]] = []
        self.got = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.seen.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"],
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": body,
            }
        )
        self.got.set()
        if self.fail == "before":
            raise RuntimeError("the analysis API failed")
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"close"), (b"x-kept", b"yes")],
            }
        )
        await send({"type": "http.response.body", "body": b"part one,", "more_body": True})
        if self.fail == "during":
            raise RuntimeError("the analysis API failed half-way")
        await send({"type": "http.response.body", "body": b" part two"})


async def test_a_request_reaches_an_in_process_analysis_as_sent(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    app = Recorder(status=201)
    await harness.attach("node-1", app)
    answer = await harness.client("node-1").post(
        "/analysis/webhook?x=1&y=%20", content=b'{"a": 1}', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 201
    assert answer.text == "part one, part two"
    assert answer.headers["x-kept"] == "yes"
    assert "close" not in answer.headers.get("connection", "")  # hop-by-hop: not passed on
    seen = app.seen[-1]
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/webhook", b'{"a": 1}')
    assert seen["query"] == b"x=1&y=%20"
    assert seen["headers"]["content-type"] == "application/json"
    if harness.mode == "inprocess":
        assert seen["headers"]["host"] == "analysis"
        assert seen["headers"]["content-length"] == "8"


async def test_an_analysis_that_fails_before_answering_gives_500(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    await harness.attach("node-1", Recorder(fail="before"))
    answer = await harness.client("node-1").get("/analysis/healthz")
    assert answer.status_code == 500
    if harness.mode == "inprocess":  # served: the analysis' own server answers its 500
        assert answer.content == b""


async def test_an_analysis_that_fails_half_way_ends_the_answer_where_it_stopped() -> None:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        stack.attach_analysis("node-1", Recorder(fail="during"))
        async with stack.client("node-1") as client:
            answer = await client.get("/analysis/healthz")
        assert (answer.status_code, answer.content) == (200, b"part one,")


async def _deliver_to(stack: FlameStack, app: Recorder, receiver: str = "node-1") -> None:
    """Subscribe ``app`` at ``receiver`` and send it one message from node-2 through the broker."""
    stack.attach_analysis(receiver, app)
    prefix = f"/message-broker/analyses/{stack.analysis_id}/messages"
    node = stack.node(receiver)
    async with stack.client(receiver) as client:
        answer = await client.post(
            f"{prefix}/subscriptions",
            json={"webhookUrl": f"http://{node.host}/analysis/webhook?via=broker"},
            headers={"Authorization": f"Bearer {node.token}"},
        )
        assert answer.status_code == 201
    sender = stack.node("node-2")
    async with stack.client("node-2") as client:
        answer = await client.post(
            prefix,
            json={"recipients": [node.node_id], "message": {"meta": {"id": "m1"}, "n": "é"}},
            headers={"Authorization": f"Bearer {sender.token}"},
        )
        assert answer.status_code == 202
    await stack.broker.quiesce(10)


async def test_a_webhook_delivery_reaches_the_analysis_with_the_brokers_headers() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        app = Recorder()
        await _deliver_to(stack, app)
        seen = app.seen[-1]
        assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/webhook", b"via=broker")
        assert json.loads(seen["body"]) == {"meta": {"id": "m1"}, "n": "é"}
        assert seen["headers"]["content-type"] == "application/json"
        assert seen["headers"]["accept"] == "application/json"
        assert seen["headers"]["content-length"] == str(len(seen["body"]))
        ok = [e for e in stack.events.to_list() if e["kind"] == "delivery.ok"]
        assert [(e["status"], e["message_id"]) for e in ok] == [(200, "m1")]


@pytest.mark.parametrize(
    ("status", "kind", "reason"), [(404, "delivery.dropped", "4xx"), (302, "delivery.ok", None)]
)
async def test_a_webhook_answer_decides_the_delivery(status: int, kind: str, reason: str | None) -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        await _deliver_to(stack, Recorder(status=status))
        events = [e for e in stack.events.to_list() if e["kind"].startswith("delivery.")]
        assert [(e["kind"], e["status"], e.get("reason")) for e in events] == [(kind, status, reason)]


async def test_a_webhook_of_a_failing_analysis_is_dropped_as_a_5xx() -> None:
    settings = StackSettings.fast(po_enabled=False, delivery_max_retries=1)
    stack = FlameStack.create(2, settings=settings)
    async with stack:
        app = Recorder(fail="before")
        await _deliver_to(stack, app)
        events = [e for e in stack.events.to_list() if e["kind"].startswith("delivery.")]
        assert [(e["kind"], e["status"]) for e in events] == [
            ("delivery.retry", 500),
            ("delivery.dropped", 500),
        ]
        assert events[-1]["reason"] == "5xx-exhausted"
        assert len(app.seen) == 2


async def test_a_webhook_to_an_offline_pod_fails_to_connect() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        app = Recorder()
        stack.attach_analysis("node-1", app)
        node = stack.node("node-1")
        prefix = f"/message-broker/analyses/{stack.analysis_id}/messages"
        async with stack.client("node-1") as client:
            await client.post(
                f"{prefix}/subscriptions",
                json={"webhookUrl": f"http://{node.host}/analysis/webhook"},
                headers={"Authorization": f"Bearer {node.token}"},
            )
        stack.faults.add(NodeOffline("node-1", start=0, end=math.inf))
        stack.broker.accept(stack.node("node-2"), [node], {"n": 1})
        await stack.broker.quiesce(10)
        dropped = [e for e in stack.events.to_list() if e["kind"] == "delivery.dropped"]
        assert [(e["reason"], e["error"]) for e in dropped] == [
            ("connection", f"ConnectError: cannot resolve or reach {node.host}")
        ]
        assert app.seen == []


async def test_a_webhook_outside_the_cluster_goes_over_the_network() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        node = stack.node("node-1")
        with node.lock:
            node.subscriptions["s"] = {
                "subscriptionId": "s",
                "analysisId": stack.analysis_id,
                "webhookUrl": "http://127.0.0.1:9/webhook",  # discard port: nothing listens
            }
        stack.broker.accept(stack.node("node-2"), [node], {"n": 1})
        await stack.broker.quiesce(10)
        dropped = [e for e in stack.events.to_list() if e["kind"] == "delivery.dropped"]
        assert [e["reason"] for e in dropped] == ["connection"]
        assert dropped[0]["error"].startswith("ConnectError")


async def test_local_folder_puts_survive_folders_removed_between_them(tmp_path: Path) -> None:
    backend = LocalFolderBackend(tmp_path / "store")
    await backend.put("a/b/one", io.BytesIO(b"1"), 1)
    shutil.rmtree(tmp_path / "store")  # folders it knew of, and its temporary folder, are gone
    await backend.put("a/b/two", io.BytesIO(b"22"), 2)
    await backend.put("a/b/one", io.BytesIO(b"3"), 1)
    assert await backend.list("a/") == ["a/b/one", "a/b/two"]
    assert (await backend.get("a/b/one"), await backend.get("a/b/two")) == (b"3", b"22")
    with pytest.raises(OSError):
        await backend.put("a/b/short", io.BytesIO(b"x"), 5)
    assert not await backend.exists("a/b/short")
    assert list((tmp_path / "store" / ".partial").iterdir()) == []


async def test_local_folder_backends_sharing_a_root_never_share_a_temporary_file(tmp_path: Path) -> None:
    first, second = LocalFolderBackend(tmp_path), LocalFolderBackend(tmp_path)
    await asyncio.gather(
        *(
            b.put(f"k/{i}-{n}", io.BytesIO(bytes([i]) * 1000), 1000)
            for i in range(20)
            for n, b in enumerate((first, second))
        )
    )
    for i in range(20):
        for n in range(2):
            assert await first.get(f"k/{i}-{n}") == bytes([i]) * 1000

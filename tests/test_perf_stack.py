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
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flame.sim import FlameStack, StackSettings
from flame.sim.backends import LocalFolderBackend
from flame.sim.events import EventLog
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


# -- the plain handlers of the hot endpoints answer as the FastAPI routes do ------------------------------


def _pair() -> tuple[FlameStack, FlameStack]:
    """Two stacks alike (same seed, same ids); the second serves every request from its FastAPI apps."""
    fast, slow = (
        FlameStack.create(2, settings=StackSettings.fast(po_enabled=False), seed=5) for _ in range(2)
    )
    _all_through_fastapi(slow)
    return fast, slow


def _all_through_fastapi(stack: FlameStack) -> None:
    stack.app._fast.clear()
    stack.app._fast_by_parent.clear()
    stack.app._fast_by_service.clear()


def _comparable(answer: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in answer.headers.items() if k not in ("date", "server")}
    try:
        body: Any = answer.json()
    except ValueError:
        return answer.status_code, headers, answer.content
    if isinstance(body, dict):  # Spring's error JSON: a time and a random request id
        body.pop("timestamp", None)
        body.pop("requestId", None)
        if "object_id" in body:  # a new id per upload
            body["url"] = body["url"].replace(body.pop("object_id"), "ID")
    return answer.status_code, headers, body


async def _both(
    fast: FlameStack,
    slow: FlameStack,
    node: str,
    send: Callable[[FlameStack, httpx.AsyncClient], Awaitable[httpx.Response]],
) -> tuple[Any, Any]:
    answers = []
    for stack in (fast, slow):
        async with stack.client(node) as client:
            answers.append(_comparable(await send(stack, client)))
    return answers[0], answers[1]


def _auth(stack: FlameStack, node: str, token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or stack.node(node).token}"}


def _raw(stack: FlameStack, body: bytes, content_type: str) -> dict[str, Any]:
    """A request spec of node-1 with ``body`` as it is, sent as ``content_type``."""
    return {"content": body, "headers": {**_auth(stack, "node-1"), "Content-Type": content_type}}


def _foreign(stack: FlameStack, node: str) -> str:
    """A valid token of ``node``'s Keycloak, for another analysis."""
    return stack.node(node).issuer.mint("00000000-0000-4000-8000-000000000000")


BROKER_CASES: list[tuple[str, Callable[[FlameStack], dict[str, Any]]]] = [
    ("send", lambda s: {"json": {"recipients": [s.node("aggregator").node_id], "message": {"a": [1, "é"]}}}),
    ("broadcast", lambda s: {"json": {"message": 1}, "path": "/broadcast"}),
    ("two recipients", lambda s: {"json": {"recipients": [s.node("node-2").node_id] * 2, "message": None}}),
    ("no token", lambda s: {"json": {"message": 1}, "headers": {}}),
    ("bad token", lambda s: {"json": {"message": 1}, "headers": {"Authorization": "Bearer x.y.z"}}),
    ("basic auth", lambda s: {"json": {"message": 1}, "headers": {"Authorization": "Basic abc"}}),
    (
        "other analysis",
        lambda s: {"json": {"message": 1}, "headers": _auth(s, "node-1", _foreign(s, "node-1"))},
    ),
    (
        "not json",
        lambda s: _raw(s, b"{}", "text/plain"),
    ),
    (
        "empty",
        lambda s: _raw(s, b" ", "application/json"),
    ),
    (
        "NaN",
        lambda s: _raw(s, b'{"message": NaN}', "application/json"),
    ),
    (
        "broken",
        lambda s: _raw(s, b'{"message": ', "application/json"),
    ),
    ("no message", lambda s: {"json": {"recipients": [s.node("node-2").node_id]}}),
    ("no recipients", lambda s: {"json": {"message": 1}}),
    ("empty recipients", lambda s: {"json": {"recipients": [], "message": 1}}),
    ("self", lambda s: {"json": {"recipients": [s.node("node-1").node_id], "message": 1}}),
    ("unknown", lambda s: {"json": {"recipients": ["nobody"], "message": 1}}),
    ("not a list", lambda s: {"json": {"recipients": "x", "message": 1}}),
    ("a number", lambda s: {"json": {"recipients": [1], "message": 1}}),
    ("a list", lambda s: {"json": [1]}),
    (
        "vendor json",
        lambda s: _raw(s, b'{"message": 2}', "application/vnd.x+json; charset=utf-8"),
    ),
]


@pytest.mark.parametrize("case", [c[0] for c in BROKER_CASES])
async def test_message_sends_answer_as_the_broker_route(case: str) -> None:
    fast, slow = _pair()
    build = dict(BROKER_CASES)[case]
    async with fast, slow:

        async def send(stack: FlameStack, client: httpx.AsyncClient) -> httpx.Response:
            spec = build(stack)
            path = f"/message-broker/analyses/{stack.analysis_id}/messages" + spec.pop("path", "")
            headers = spec.pop("headers", _auth(stack, "node-1"))
            return await client.post(path, headers=headers, **spec)

        mine, theirs = await _both(fast, slow, "node-1", send)
        assert mine == theirs
        sent = [
            [
                (e["sender"], e["recipients"], e["size"])
                for e in s.events.to_list()
                if e["kind"] == "broker.sent"
            ]
            for s in (fast, slow)
        ]
        assert sent[0] == sent[1]


PO_CASES: list[tuple[str, Callable[[FlameStack], dict[str, Any]]]] = [
    (
        "log",
        lambda s: {
            "json": {
                "log": "hi",
                "log_type": "info",
                "analysis_id": s.analysis_id,
                "status": "executing",
                "progress": 7,
            }
        },
    ),
    (
        "bad progress",
        lambda s: {
            "json": {
                "log": "hi",
                "log_type": "info",
                "analysis_id": s.analysis_id,
                "status": "x",
                "progress": 101,
            }
        },
    ),
    (
        "bad type",
        lambda s: {
            "json": {
                "log": "hi",
                "log_type": "loud",
                "analysis_id": s.analysis_id,
                "status": "x",
                "progress": 1,
            }
        },
    ),
    (
        "other analysis",
        lambda s: {
            "json": {"log": "hi", "log_type": "info", "analysis_id": "a", "status": "x", "progress": 1}
        },
    ),
    (
        "progress as text",
        lambda s: {
            "json": {
                "log": "hi",
                "log_type": "info",
                "analysis_id": s.analysis_id,
                "status": "x",
                "progress": "5",
            }
        },
    ),
    ("no token", lambda s: {"json": {}, "headers": {}}),
    ("foreign token", lambda s: {"json": {}, "headers": _auth(s, "node-1", _foreign(s, "node-1"))}),
    (
        "not json",
        lambda s: _raw(s, b"{}", "text/plain"),
    ),
    (
        "broken",
        lambda s: _raw(s, b"{", "application/json"),
    ),
]


LOG = {"log": "hi", "log_type": "info", "status": "executing", "progress": 7}
MORE_PO_CASES: list[tuple[str, Callable[[FlameStack], dict[str, Any]]]] = [
    ("progress true", lambda s: {"json": {**LOG, "analysis_id": s.analysis_id, "progress": True}}),
    ("progress 7.0", lambda s: {"json": {**LOG, "analysis_id": s.analysis_id, "progress": 7.0}}),
    ("no status", lambda s: {"json": {**{k: v for k, v in LOG.items() if k != "status"}, "analysis_id": 1}}),
    ("extra field", lambda s: {"json": {**LOG, "analysis_id": s.analysis_id, "extra": [1]}}),
    ("log a number", lambda s: {"json": {**LOG, "analysis_id": s.analysis_id, "log": 5}}),
]


@pytest.mark.parametrize("case", [c[0] for c in PO_CASES + MORE_PO_CASES])
async def test_log_lines_answer_as_the_po_route(case: str) -> None:
    fast, slow = _pair()
    build = dict(PO_CASES + MORE_PO_CASES)[case]
    async with fast, slow:

        async def send(stack: FlameStack, client: httpx.AsyncClient) -> httpx.Response:
            spec = build(stack)
            return await client.post(
                "/po/stream_logs", headers=spec.pop("headers", _auth(stack, "node-1")), **spec
            )

        mine, theirs = await _both(fast, slow, "node-1", send)
        assert mine == theirs
        logs = [s.po.record("node-1").logs for s in (fast, slow)]
        assert logs[0] == logs[1]


#: one multipart part of a file, without the closing boundary
_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="q.csv"\r\n\r\nxy'
STORAGE_CASES: list[tuple[str, Callable[[FlameStack], dict[str, Any]]]] = [
    ("upload", lambda s: {"files": {"file": ("r.bin", b"\x00\x01" * 10)}}),
    ("tagged", lambda s: {"files": {"file": ("r.csv", b"a,b")}, "data": {"tag": "round-1"}}),
    ("trailing slash", lambda s: {"files": {"file": ("r.csv", b"a,b")}, "path": "/storage/local/"}),
    ("no name", lambda s: {"files": {"file": ("", b"x")}}),
    ("empty tag", lambda s: {"files": {"file": ("r.csv", b"x")}, "data": {"tag": ""}}),
    ("bad tag", lambda s: {"files": {"file": ("r.csv", b"x")}, "data": {"tag": "Not Valid"}}),
    ("bad name", lambda s: {"files": {"file": ("../r.csv", b"x")}}),
    ("no file", lambda s: {"data": {"file": "text"}, "files": {"other": ("r.csv", b"x")}}),
    ("no form", lambda s: {"content": b"abc"}),
    ("odd name", lambda s: {"files": {"file": ('a "b" é%.csv', b"x")}}),
    ("dashes in data", lambda s: {"files": {"file": ("r.bin", b"\r\n--\r\n" * 100)}}),
    ("empty file", lambda s: {"files": {"file": ("r.bin", b"")}, "data": {"tag": "t1"}}),
    ("two files", lambda s: {"files": [("file", ("a.csv", b"1")), ("file", ("b.csv", b"22"))]}),
    (
        "quoted boundary",
        lambda s: _raw(s, _PART + b"\r\n--b--\r\n", 'multipart/form-data; boundary="b"'),
    ),
    (
        "plain boundary",
        lambda s: _raw(s, _PART + b"\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ),
    (
        "cut off",
        lambda s: _raw(s, _PART, "multipart/form-data; boundary=b"),
    ),
    ("no token", lambda s: {"files": {"file": ("r.csv", b"x")}, "headers": {}}),
    ("bad token", lambda s: {"files": {"file": ("r.csv", b"x")}, "headers": {"Authorization": "Bearer x"}}),
    (
        "foreign token",
        lambda s: {"files": {"file": ("r.csv", b"x")}, "headers": _auth(s, "node-1", _foreign(s, "node-1"))},
    ),
]


@pytest.mark.parametrize("case", [c[0] for c in STORAGE_CASES])
async def test_local_uploads_answer_as_the_storage_route(case: str) -> None:
    fast, slow = _pair()
    build = dict(STORAGE_CASES)[case]
    async with fast, slow:

        async def send(stack: FlameStack, client: httpx.AsyncClient) -> httpx.Response:
            spec = build(stack)
            path = spec.pop("path", "/storage/local")
            return await client.put(path, headers=spec.pop("headers", _auth(stack, "node-1")), **spec)

        mine, theirs = await _both(fast, slow, "node-1", send)
        assert mine == theirs
        stored = []
        for stack in (fast, slow):
            uploads = [(e["size"], e["tag"]) for e in stack.events.to_list() if e["kind"] == "storage.upload"]
            async with stack.client("node-1") as client:
                tags = (await client.get("/storage/local/tags", headers=_auth(stack, "node-1"))).json()
                names = [
                    [
                        r["filename"]
                        for r in (
                            await client.get(
                                f"/storage/local/tags/{t['name']}", headers=_auth(stack, "node-1")
                            )
                        ).json()["results"]
                    ]
                    for t in tags["tags"]
                ]
            stored.append((uploads, [t["name"] for t in tags["tags"]], names))
        assert stored[0] == stored[1]


# -- the requests of a run's start-up and end answer as the FastAPI routes do ------------------------------

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
Case = Callable[[FlameStack], dict[str, Any]]


def _broker(path: str) -> Callable[[FlameStack], str]:
    return lambda s: f"/message-broker/analyses/{s.analysis_id}{path}"


def _json_in(s: FlameStack, content: bytes, media: str = "application/json") -> dict[str, Any]:
    return {"content": content, "headers": {**_auth(s, "node-1"), "Content-Type": media}}


SETUP_CASES: list[tuple[str, str, Callable[[FlameStack], str], Case]] = [
    ("participants", "GET", _broker("/participants"), lambda s: {}),
    ("participants, no token", "GET", _broker("/participants"), lambda s: {"headers": {}}),
    (
        "participants, bad token",
        "GET",
        _broker("/participants"),
        lambda s: {"headers": _auth(s, "node-1", "x")},
    ),
    (
        "participants, other analysis",
        "GET",
        _broker("/participants"),
        lambda s: {"headers": _auth(s, "node-1", _foreign(s, "node-1"))},
    ),
    ("self", "GET", _broker("/participants/self"), lambda s: {}),
    ("self, no token", "GET", _broker("/participants/self"), lambda s: {"headers": {}}),
    ("self, POST", "POST", _broker("/participants/self"), lambda s: {}),
    (
        "subscribe",
        "POST",
        _broker("/messages/subscriptions"),
        lambda s: {"json": {"webhookUrl": "http://a:1/w"}},
    ),
    (
        "subscribe, host",
        "POST",
        _broker("/messages/subscriptions"),
        lambda s: {"json": {"webhookUrl": "https://a/w"}, "headers": {**_auth(s, "node-1"), "Host": "x:81"}},
    ),
    ("subscribe, no url", "POST", _broker("/messages/subscriptions"), lambda s: {"json": {}}),
    (
        "subscribe, ftp",
        "POST",
        _broker("/messages/subscriptions"),
        lambda s: {"json": {"webhookUrl": "ftp://a"}},
    ),
    (
        "subscribe, bad port",
        "POST",
        _broker("/messages/subscriptions"),
        lambda s: {"json": {"webhookUrl": "http://a:x"}},
    ),
    ("subscribe, a list", "POST", _broker("/messages/subscriptions"), lambda s: {"json": ["http://a"]}),
    (
        "subscribe, text",
        "POST",
        _broker("/messages/subscriptions"),
        lambda s: _json_in(s, b"{}", "text/plain"),
    ),
    ("subscribe, broken", "POST", _broker("/messages/subscriptions"), lambda s: _json_in(s, b"{")),
    (
        "subscribe, no token",
        "POST",
        _broker("/messages/subscriptions"),
        lambda s: {"json": {}, "headers": {}},
    ),
    ("unsubscribe", "DELETE", _broker(f"/messages/subscriptions/{UUID}"), lambda s: {}),
    ("unsubscribe, upper", "DELETE", _broker(f"/messages/subscriptions/{UUID.upper()}"), lambda s: {}),
    ("unsubscribe, not a uuid", "DELETE", _broker("/messages/subscriptions/x"), lambda s: {}),
    (
        "unsubscribe, no token",
        "DELETE",
        _broker(f"/messages/subscriptions/{UUID}"),
        lambda s: {"headers": {}},
    ),
    ("tags", "GET", lambda s: "/storage/local/tags", lambda s: {}),
    ("tags, no token", "GET", lambda s: "/storage/local/tags", lambda s: {"headers": {}}),
    (
        "tags, empty bearer",
        "GET",
        lambda s: "/storage/local/tags",
        lambda s: {"headers": {"Authorization": "Bearer "}},
    ),
    (
        "tags, bad token",
        "GET",
        lambda s: "/storage/local/tags",
        lambda s: {"headers": _auth(s, "node-1", "x")},
    ),
    ("tagged", "GET", lambda s: "/storage/local/tags/t1", lambda s: {}),
    ("tagged, invalid tag", "GET", lambda s: "/storage/local/tags/a%20b", lambda s: {}),
    ("tagged, empty tag", "GET", lambda s: "/storage/local/tags/", lambda s: {}),
    ("tagged, deeper", "GET", lambda s: "/storage/local/tags/t1/x", lambda s: {}),
    ("tagged, no token", "GET", lambda s: "/storage/local/tags/t1", lambda s: {"headers": {}}),
    (
        "tagged, bad token",
        "GET",
        lambda s: "/storage/local/tags/t1",
        lambda s: {"headers": _auth(s, "node-1", "x")},
    ),
    ("final", "PUT", lambda s: "/storage/final", lambda s: {"files": {"file": ("r.txt", b"42")}}),
    ("final/", "PUT", lambda s: "/storage/final/", lambda s: {"files": {"file": ("r.txt", b"42")}}),
    ("final, no name", "PUT", lambda s: "/storage/final", lambda s: {"files": {"file": ("", b"4")}}),
    ("final, bad name", "PUT", lambda s: "/storage/final", lambda s: {"files": {"file": ("..", b"4")}}),
    ("final, no file", "PUT", lambda s: "/storage/final", lambda s: {"data": {"file": "x"}}),
    (
        "final, no token",
        "PUT",
        lambda s: "/storage/final",
        lambda s: {"files": {"file": ("r", b"4")}, "headers": {}},
    ),
    (
        "final, foreign token",
        "PUT",
        lambda s: "/storage/final",
        lambda s: {"files": {"file": ("r", b"4")}, "headers": _auth(s, "node-1", _foreign(s, "node-1"))},
    ),
    ("stores", "GET", lambda s: f"/hub-adapter/kong/datastore/{s.project_id}", lambda s: {}),
    (
        "stores, detailed",
        "GET",
        lambda s: f"/hub-adapter/kong/datastore/{s.project_id}?detailed=true",
        lambda s: {},
    ),
    (
        "stores, detailed=1",
        "GET",
        lambda s: f"/hub-adapter/kong/datastore/{s.project_id}?detailed=1",
        lambda s: {},
    ),
    (
        "stores, detailed=x",
        "GET",
        lambda s: f"/hub-adapter/kong/datastore/{s.project_id}?detailed=x",
        lambda s: {},
    ),
    (
        "stores, no token",
        "GET",
        lambda s: f"/hub-adapter/kong/datastore/{s.project_id}",
        lambda s: {"headers": {}},
    ),
    ("stores, POST", "POST", lambda s: f"/hub-adapter/kong/datastore/{s.project_id}", lambda s: {}),
    ("s3 object", "GET", lambda s: "/kong/node-1-s3/s3/patients.csv", lambda s: {"headers": _key(s)}),
    ("s3 list", "GET", lambda s: "/kong/node-1-s3/s3/?list-type=2", lambda s: {"headers": _key(s)}),
    ("s3 missing", "GET", lambda s: "/kong/node-1-s3/s3/nothing.csv", lambda s: {"headers": _key(s)}),
    ("s3 no key", "GET", lambda s: "/kong/node-1-s3/s3/patients.csv", lambda s: {}),
    ("s3 HEAD", "HEAD", lambda s: "/kong/node-1-s3/s3/patients.csv", lambda s: {"headers": _key(s)}),
    ("s3 PUT", "PUT", lambda s: "/kong/node-1-s3/s3/patients.csv", lambda s: {"headers": _key(s)}),
    ("kong TRACE", "TRACE", lambda s: "/kong/node-1-s3/s3/patients.csv", lambda s: {"headers": _key(s)}),
    ("kong unknown", "GET", lambda s: "/kong/nothing/s3/x", lambda s: {"headers": _key(s)}),
    (
        "fhir search",
        "GET",
        lambda s: "/kong/node-1-fhir/fhir/Patient?_count=2",
        lambda s: {"headers": _key(s)},
    ),
]


def _key(stack: FlameStack) -> dict[str, str]:
    return {"apikey": stack.node("node-1").data_key}


def _setup_pair() -> tuple[FlameStack, FlameStack]:
    fast, slow = (
        FlameStack.create(2, data_root=DATA, settings=StackSettings.fast(po_enabled=False), seed=5)
        for _ in range(2)
    )
    _all_through_fastapi(slow)
    return fast, slow


def _without_random_ids(answer: tuple[int, dict[str, str], Any]) -> tuple[int, dict[str, str], Any]:
    status, headers, body = answer
    headers = {k: v for k, v in headers.items() if k not in ("x-kong-request-id", "x-amz-request-id")}
    if "location" in headers:
        headers["location"] = headers["location"].rpartition("/")[0]
    if isinstance(body, (dict, list)):
        body = _scrub(body)
    elif isinstance(body, bytes):
        body = re.sub(rb"<RequestId>[^<]*</RequestId>", b"", body)
    return status, headers, body


#: what differs between two stacks alike anyway: random ids (of subscriptions, requests, data sources,
#: FHIR bundles) and the seconds the stacks were made in
_RANDOM = frozenset(("subscriptionId", "request_id", "id", "meta", "created_at", "updated_at"))


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in _RANDOM}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


@pytest.mark.parametrize("case", [c[0] for c in SETUP_CASES])
async def test_start_up_requests_answer_as_the_routes(case: str) -> None:
    _, method, path, build = next(c for c in SETUP_CASES if c[0] == case)
    fast, slow = _setup_pair()
    async with fast, slow:

        async def send(stack: FlameStack, client: httpx.AsyncClient) -> httpx.Response:
            spec = build(stack)
            headers = spec.pop("headers", _auth(stack, "node-1"))
            return await client.request(method, path(stack), headers=headers, **spec)

        mine, theirs = await _both(fast, slow, "node-1", send)
        assert _without_random_ids(mine) == _without_random_ids(theirs)
        effects = [
            [
                (
                    e["kind"],
                    e.get("node"),
                    e.get("filename"),
                    e.get("size"),
                    e.get("status"),
                    e.get("webhook"),
                )
                for e in stack.events.to_list()
                if e["kind"].split(".")[0] in ("broker", "storage", "data")
            ]
            for stack in (fast, slow)
        ]
        assert effects[0] == effects[1]
        assert await fast.final_results() == await slow.final_results()
        subscriptions = [
            [(s["analysisId"], s["webhookUrl"]) for s in stack.node("node-1").subscriptions.values()]
            for stack in (fast, slow)
        ]
        assert subscriptions[0] == subscriptions[1]


async def test_a_subscription_ends_as_through_the_route() -> None:
    fast, slow = _pair()
    async with fast, slow:
        for stack in (fast, slow):
            async with stack.client("node-1") as client:
                path = f"/message-broker/analyses/{stack.analysis_id}/messages/subscriptions"
                made = await client.post(
                    path, json={"webhookUrl": "http://a/w"}, headers=_auth(stack, "node-1")
                )
                sid = made.json()["subscriptionId"]
                assert made.headers["location"].endswith(
                    f"/analyses/{stack.analysis_id}/messages/subscriptions/{sid}"
                )
                gone = await client.delete(f"{path}/{sid.upper()}", headers=_auth(stack, "node-1"))
                assert (gone.status_code, gone.headers.get("content-length"), gone.content) == (
                    204,
                    None,
                    b"",
                )
            assert stack.node("node-1").subscriptions == {}
            assert [
                e["subscription_ids"] for e in stack.events.to_list() if e["kind"] == "broker.unsubscribed"
            ] == [[sid]]


async def test_the_participant_list_is_encoded_once_until_the_nodes_change() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    first = stack.broker.participants_body()
    assert stack.broker.participants_body() is first
    assert json.loads(first) == [n.participant() for n in stack.nodes.values()]
    stack.nodes.pop("node-2")
    assert json.loads(stack.broker.participants_body()) == [n.participant() for n in stack.nodes.values()]


#: run in a fresh interpreter: ``flame sim`` of the demo and a 3-node ``flame.simulate`` (no FastAPI,
#: no pydantic), then one refused request on a fast stack and on a stack served only by FastAPI
_NO_WEB_FRAMEWORK = """
import asyncio, json, sys, tempfile
import flame
from flame.cli import main
from flame.sim import FlameStack, StackSettings

report = tempfile.mkdtemp() + "/report.json"
assert main(["sim", "examples/mean_std/analysis.py", "--data", "examples/data", "--report", report]) == 0
flame.simulate("examples/mean_std/analysis.py", data="examples/data", nodes=3)
before = sorted(m for m in ("fastapi", "pydantic") if m in sys.modules)

async def refused(through_fastapi):
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False), seed=3)
    if through_fastapi:
        stack.app._fast.clear()
        stack.app._fast_by_parent.clear()
        stack.app._fast_by_service.clear()
    async with stack, stack.client("node-1") as client:
        answers = []
        for method, path, headers in (
            ("GET", f"/message-broker/analyses/{stack.analysis_id}/participants", {}),
            ("GET", "/storage/local/tags", {"Authorization": "Bearer x"}),
            ("POST", "/po/stream_logs", {"Authorization": f"Bearer {stack.node('node-1').token}"}),
        ):
            answer = await client.request(method, path, headers=headers, json={"log": 1})
            answers.append([answer.status_code, sorted(answer.headers.items()), answer.text])
        return answers

fast = asyncio.run(refused(False))
after = sorted(m for m in ("fastapi", "pydantic") if m in sys.modules)
print(json.dumps({"before": before, "after": after, "fast": fast, "route": asyncio.run(refused(True))}))
"""


@pytest.mark.integration
def test_a_run_never_imports_fastapi_and_a_refusal_still_gets_the_routes_answer() -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _NO_WEB_FRAMEWORK], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == []
    assert seen["after"] == ["fastapi", "pydantic"]
    assert [a[0] for a in seen["fast"]] == [401, 403, 422]
    assert seen["fast"] == seen["route"]


async def test_the_hot_requests_never_reach_the_fastapi_apps() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    reached: list[str] = []

    def refusing(service: str) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            reached.append(f"{service} {scope['method']} {scope['path']}")
            raise AssertionError("a hot request reached the FastAPI app")

        return app

    async with stack:
        for service in ("message-broker", "storage", "po"):
            stack.service_apps[service] = refusing(service)
        auth = _auth(stack, "node-1")
        async with stack.client("node-1") as client:
            messages = f"/message-broker/analyses/{stack.analysis_id}/messages"
            aggregator = stack.node("aggregator").node_id
            assert (
                await client.post(messages, json={"recipients": [aggregator], "message": 1}, headers=auth)
            ).status_code == 202
            assert (
                await client.post(messages + "/broadcast", json={"message": 1}, headers=auth)
            ).status_code == 202
            log = {
                "log": "x",
                "log_type": "info",
                "analysis_id": stack.analysis_id,
                "status": "executing",
                "progress": 1,
            }
            assert (await client.post("/po/stream_logs", json=log, headers=auth)).status_code == 200
            for path in ("/storage/local", "/storage/local/"):
                answer = await client.put(
                    path, files={"file": ("a.csv", b"1")}, data={"tag": "t1"}, headers=auth
                )
                assert answer.status_code == 200
            tagged = await client.get("/storage/local/tags/t1", headers=auth)
            assert tagged.status_code == 200
            assert [r["filename"] for r in tagged.json()["results"]] == ["a.csv", "a.csv"]
        assert reached == []


async def test_a_webhook_reaches_the_analysis_in_either_mode(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    app = Recorder()
    webhook = await harness.attach("node-1", app)
    node = stack.node("node-1")
    with node.lock:
        node.subscriptions["s"] = {
            "subscriptionId": "s",
            "analysisId": stack.analysis_id,
            "webhookUrl": webhook,
        }
    stack.broker.accept(stack.node("node-2"), [node], {"n": "é"})
    await stack.broker.quiesce(10)
    assert [json.loads(seen["body"]) for seen in app.seen] == [{"n": "é"}]
    assert app.seen[0]["headers"]["content-type"] == "application/json"
    ok = [e for e in stack.events.to_list() if e["kind"] == "delivery.ok"]
    assert [e["status"] for e in ok] == [200]
    # an offline pod: refused at its sidecar (served: its port answers 502, retried; in-process: no route)
    stack.faults.add(NodeOffline("node-1", start=0, end=math.inf))
    stack.broker.accept(stack.node("node-2"), [node], {"n": 2})
    await stack.broker.quiesce(10)
    dropped = [e for e in stack.events.to_list() if e["kind"] == "delivery.dropped"]
    expected = "connection" if harness.mode == "inprocess" else "5xx-exhausted"
    assert [e["reason"] for e in dropped] == [expected]
    assert len(app.seen) == 1


async def test_a_large_request_streams_through_the_sidecar(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    app = Recorder()
    await harness.attach("node-1", app)
    body = bytes(range(256)) * 8192  # 2 MiB: streamed, not read whole

    async def chunks() -> Any:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    answer = await harness.client("node-1").post("/analysis/webhook", content=chunks())
    assert answer.status_code == 200
    assert app.seen[-1]["body"] == body
    assert answer.content == b"part one, part two"


async def test_events_wake_their_waiters_from_the_loop_and_from_threads() -> None:
    log = EventLog()
    on_loop = asyncio.ensure_future(log.wait_for("a.b", timeout=5))
    await asyncio.sleep(0)
    log.record("a.b", "n1", x=1)
    assert [e.detail for e in await on_loop] == [{"x": 1}]
    from_thread = asyncio.ensure_future(log.wait_for("c", count=2, timeout=5))
    await asyncio.sleep(0)
    await asyncio.to_thread(lambda: [log.record("c.d"), log.record("c.e")])
    assert [e.kind for e in await from_thread] == ["c.d", "c.e"]


@pytest.mark.parametrize("data", [b"", b"plain", b"\r\n--\r\n\r\n" * 50, bytes(range(256)) * 64])
async def test_a_local_upload_reads_back_byte_for_byte(data: bytes) -> None:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    async with stack, stack.client("node-1") as client:
        auth = _auth(stack, "node-1")
        answer = await client.put(
            "/storage/local", files={"file": ("r.bin", data)}, data={"tag": "x1"}, headers=auth
        )
        assert answer.status_code == 200
        back = await client.get(f"/storage/local/{answer.json()['object_id']}", headers=auth)
        assert back.content == data
        tagged = (await client.get("/storage/local/tags/x1", headers=auth)).json()["results"]
        assert [r["filename"] for r in tagged] == ["r.bin"]


EXPIRING_CASES: list[tuple[str, str, str, bytes, str]] = [
    ("send", "POST", "/messages", b'{"recipients": [], "message": 1}', "application/json"),
    ("broadcast", "POST", "/messages/broadcast", b'{"message": 1}', "application/json"),
    (
        "subscribe",
        "POST",
        "/messages/subscriptions",
        b'{"webhookUrl": "http://x.example/w"}',
        "application/json",
    ),
    ("log", "POST", "/po/stream_logs", b"", "application/json"),
    ("local", "PUT", "/storage/local", _PART + b"\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ("final", "PUT", "/storage/final", _PART + b"\r\n--b--\r\n", "multipart/form-data; boundary=b"),
]


@pytest.mark.parametrize("case", [c[0] for c in EXPIRING_CASES])
async def test_a_token_that_expires_while_the_body_arrives_is_refused_as_the_route_refuses_it(
    case: str,
) -> None:
    _, method, path, body, content_type = next(c for c in EXPIRING_CASES if c[0] == case)
    fast, slow = _pair()
    async with fast, slow:

        async def send(stack: FlameStack, client: httpx.AsyncClient) -> httpx.Response:
            data = body
            if case == "send":
                data = json.dumps({"recipients": [stack.node("aggregator").node_id], "message": 1}).encode()
            elif case == "log":
                data = json.dumps({**LOG, "analysis_id": stack.analysis_id}).encode()
            url = (
                path
                if path.startswith(("/po", "/storage"))
                else (f"/message-broker/analyses/{stack.analysis_id}" + path)
            )

            async def chunks() -> AsyncIterator[bytes]:
                yield data[:5]
                stack.node("node-1").issuer.expire_all()  # while the handler waits for the rest
                yield data[5:]

            headers = {
                **_auth(stack, "node-1"),
                "Content-Type": content_type,
                "Content-Length": str(len(data)),
            }
            return await client.request(method, url, headers=headers, content=chunks())

        mine, theirs = await _both(fast, slow, "node-1", send)
        assert mine[0] == theirs[0], (mine, theirs)
        if path.startswith(("/po", "/storage")):  # FastAPI services: the token is checked after the body
            assert mine == theirs
            assert mine[0] in (401, 403), mine
            assert [e for e in fast.events.to_list() if e["kind"] in ("storage.upload", "po.log")] == []
        else:  # the broker checks it first (Spring Security's filter), so it took the request (a new id)
            assert 200 <= mine[0] < 300, mine

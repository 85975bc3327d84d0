"""Every emulated service checks that the Bearer token was issued for the analysis it serves.

A token of analysis B, validly signed by the same node Keycloak, sent through the sidecar of analysis A
is refused (401 or 403) by the broker, the storage service, the hub adapter and the pod orchestrator,
and changes nothing. Result file names the store cannot hold get a 4xx, never a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from flame.sim.stack import FlameStack
from flame.sim.storage import check_filename, register_analysis, unregister_analysis
from tests.conftest import StackHarness

MakeStack = Callable[..., Any]


def _other_analysis_token(stack: FlameStack, node: str) -> tuple[str, dict[str, str]]:
    """A valid RS256 token of the same node Keycloak, issued for another analysis (registered, with buckets)."""
    other = str(uuid.uuid4())
    token = stack.node(node).issuer.mint(other)
    return other, {"Authorization": f"Bearer {token}"}


def _upload(name: str, data: bytes) -> dict[str, Any]:
    return {"file": (name, data, "application/octet-stream")}


async def test_token_of_another_analysis_is_refused_everywhere(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=2)
    stack = h.stack
    other, auth = _other_analysis_token(stack, "node-1")
    # the other analysis has buckets in the shared store: only the binding can refuse it
    register_analysis(other, stack.project_id)
    try:
        client = h.client("node-1")
        a = stack.analysis_id
        agg = stack.node("aggregator").node_id
        requests: list[tuple[str, str, dict[str, Any]]] = [
            (
                "POST",
                f"/message-broker/analyses/{a}/messages/subscriptions",
                {"json": {"webhookUrl": "http://example.invalid/hook"}},
            ),
            ("GET", f"/message-broker/analyses/{a}/messages/subscriptions", {}),
            ("DELETE", f"/message-broker/analyses/{a}/messages/subscriptions", {}),
            (
                "POST",
                f"/message-broker/analyses/{a}/messages",
                {"json": {"recipients": [agg], "message": {}}},
            ),
            ("POST", f"/message-broker/analyses/{a}/messages/broadcast", {"json": {"message": {}}}),
            ("GET", f"/message-broker/analyses/{a}/participants", {}),
            ("GET", f"/message-broker/analyses/{a}/participants/self", {}),
            ("PUT", "/storage/final", {"files": _upload("r.txt", b"x")}),
            (
                "PUT",
                "/storage/final/localdp",
                {"files": _upload("r.txt", b"1"), "data": {"epsilon": 1, "sensitivity": 1}},
            ),
            ("PUT", "/storage/intermediate", {"files": _upload("i", b"x"), "data": {"remote_node_id": agg}}),
            ("PUT", "/storage/local", {"files": _upload("l.bin", b"x"), "data": {"tag": "t"}}),
            ("GET", "/storage/local/tags", {}),
            ("GET", f"/hub-adapter/kong/datastore/{stack.project_id}", {}),
            (
                "POST",
                "/po/stream_logs",
                {
                    "json": {
                        "log": "x",
                        "log_type": "info",
                        "analysis_id": a,
                        "status": "failed",
                        "progress": 1,
                    }
                },
            ),
            (
                "POST",
                "/po/stream_logs",
                {
                    "json": {
                        "log": "x",
                        "log_type": "info",
                        "analysis_id": other,
                        "status": "failed",
                        "progress": 1,
                    }
                },
            ),
        ]
        before = len(stack.events.select())
        for method, path, kwargs in requests:
            r = await client.request(method, path, headers=auth, **kwargs)
            assert r.status_code in (401, 403), (method, path, r.status_code, r.text)
            reason = r.text + r.headers.get("www-authenticate", "")
            assert f"issued for analysis {other}" in reason, (path, reason)
        # nothing changed: no subscription, message, upload, log or status
        assert stack.node("node-1").subscriptions == {}
        assert await stack.final_results(other) == {}
        assert await stack.final_results() == {}
        assert await stack.storage_backend.list("nodes/") == []
        assert await stack.storage_backend.list("hub/") == []
        assert stack.po.records["node-1"].logs == []
        assert stack.po.status("node-1") == "starting"
        kinds = {e.kind for e in stack.events.select()[before:]}
        assert not kinds & {"broker.subscribed", "broker.sent", "storage.upload", "po.log", "data.list"}, (
            kinds
        )
        # the node's own token still works on the same paths
        r = await client.get(f"/message-broker/analyses/{a}/participants", headers=h.auth("node-1"))
        assert r.status_code == 200
        r = await client.get(f"/hub-adapter/kong/datastore/{stack.project_id}", headers=h.auth("node-1"))
        assert r.status_code == 200
    finally:
        unregister_analysis(other)


async def test_po_refuses_a_log_for_another_analysis_in_the_body(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    body = {
        "log": "x",
        "log_type": "info",
        "analysis_id": str(uuid.uuid4()),
        "status": "failed",
        "progress": 1,
    }
    r = await h.client("node-1").post("/po/stream_logs", headers=h.auth("node-1"), json=body)
    assert r.status_code == 403, r.text
    assert h.stack.po.records["node-1"].logs == []
    assert h.stack.po.status("node-1") == "starting"


@pytest.mark.parametrize(
    "name",
    [
        "r" * 300,
        "r" * 10_000,
        "é" * 200,  # 200 characters, 400 bytes
        "../../evil.txt",
        "..",
        "a/b.txt",
        "a\\b.txt",
    ],
    ids=["300", "10000", "multibyte", "traversal", "dotdot", "slash", "backslash"],
)
async def test_bad_result_file_names_are_4xx(make_stack: MakeStack, name: str) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    client = h.client("aggregator")
    auth = h.auth("aggregator")
    for path, extra in (("/storage/final", {}), ("/storage/final/localdp", {"epsilon": 1, "sensitivity": 1})):
        r = await client.put(path, headers=auth, files=_upload(name, b"1"), data=extra)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        # a 10,000-character header already stops the multipart parser (400 "Invalid multipart data")
        assert "file name" in r.json()["detail"] or "multipart" in r.json()["detail"], r.text
    r = await client.put("/storage/local", headers=auth, files=_upload(name, b"1"), data={"tag": "t"})
    assert 400 <= r.status_code < 500, r.text
    assert await h.stack.final_results() == {}
    assert await h.stack.storage_backend.list("nodes/") == []


@pytest.mark.parametrize("name", ["bad\x00name", "line\nbreak", "tab\there", "del\x7f", "\udc80"])
def test_control_characters_in_file_names(name: str) -> None:
    # httpx percent-encodes these in a multipart header, so they are checked without HTTP
    with pytest.raises(HTTPException) as caught:
        check_filename(name)
    assert caught.value.status_code == 400


async def test_longest_allowed_result_file_name(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    name = "r" * 251 + ".txt"
    r = await h.client("aggregator").put(
        "/storage/final", headers=h.auth("aggregator"), files=_upload(name, b"1")
    )
    assert r.status_code == 204, r.text
    assert await h.stack.final_results() == {name: b"1"}

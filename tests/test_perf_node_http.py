"""The node's HTTP client: kept-alive connections reused in steady state, no cookie jar."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import httpx
import pytest
import uvicorn

from flame.clients.base import NODE_CONNECTIONS, NodeHTTPClient, ServiceClient


async def test_many_requests_at_once_reuse_the_kept_alive_connections() -> None:
    """Real HTTP on loopback to a server that holds each request a moment: more requests at once than
    the pool has connections wait for one, and no connection is closed and opened again."""
    connections: set[tuple[str, int]] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        connections.add(tuple(scope["client"]))
        await asyncio.sleep(0.02)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with NodeHTTPClient() as http:
            client = ServiceClient(http, f"http://127.0.0.1:{sock.getsockname()[1]}")
            for _ in range(3):
                await asyncio.gather(*(client.request("GET", "/x") for _ in range(3 * NODE_CONNECTIONS)))
            assert 1 <= len(connections) <= NODE_CONNECTIONS, len(connections)
    finally:
        server.should_exit = True
        await serving


async def test_the_node_client_keeps_and_sends_no_cookies() -> None:
    cookies_seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        cookies_seen.append(headers.get(b"cookie", b"").decode() or None)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"set-cookie", b"session=abc; Path=/")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async with NodeHTTPClient(transport=httpx.ASGITransport(app=app)) as client:
        for _ in range(2):
            assert (await client.get("http://sidecar/po/x")).status_code == 200
        assert len(client.cookies) == 0
        with pytest.raises(ValueError, match="no cookies"):
            client.cookies = {"a": "b"}
        with pytest.raises(ValueError, match="no cookies"):
            client.cookies.set("a", "b")
    assert cookies_seen == [None, None]

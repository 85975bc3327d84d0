"""The node's HTTP client: kept-alive connections reused in steady state, no cookie jar."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import httpcore
import httpx
import pytest
import uvicorn

from flame.clients.base import NODE_CONNECTIONS, NodeHTTPClient, ServiceClient, _PooledStream


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


class _Inner(httpcore.AsyncNetworkStream):
    """A stand-in connection stream over a real socket that records what it is asked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.asked: list[str] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.sock.recv(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.sock.sendall(buffer)

    async def aclose(self) -> None:
        self.sock.close()

    def get_extra_info(self, info: str) -> Any:
        self.asked.append(info)
        return self.sock if info == "socket" else None


def test_a_pooled_connection_checks_its_liveness_with_one_poll_of_its_socket() -> None:
    mine, peer = socket.socketpair()
    inner = _Inner(mine)
    stream = _PooledStream(inner)
    try:
        assert stream.get_extra_info("is_readable") is False  # idle, nothing waiting: reusable
        peer.sendall(b"x")
        assert stream.get_extra_info("is_readable") is True
        mine.recv(1)
        peer.close()
        assert stream.get_extra_info("is_readable") is True  # the other side closed it: not reusable
        assert inner.asked == ["socket"]  # asked once, when wrapped; never per check
        assert stream.get_extra_info("server_addr") is None and inner.asked[-1] == "server_addr"
    finally:
        mine.close()
        peer.close()


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    """A server that closes every connection after its answer: each request gets a fresh one."""
    closed = asyncio.Event()
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # no "connection: close"
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with NodeHTTPClient() as client:
            for _ in range(3):
                closed.clear()
                answer = await client.get(f"http://127.0.0.1:{port}/")
                assert answer.text == "ok"
                await asyncio.wait_for(closed.wait(), 5)
        assert connections == 3
    finally:
        server.close()
        await server.wait_closed()

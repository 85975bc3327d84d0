"""Real servers on loopback for tests: an ASGI app under uvicorn on an ephemeral port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn


class ServedApp:
    """An ASGI app served by uvicorn on 127.0.0.1; ``url`` is its base URL."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[Any], url: str) -> None:
        self.server = server
        self.task = task
        self.url = url

    async def aclose(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5.0)


async def serve_asgi(app: Any) -> ServedApp:
    """Serve ``app`` on 127.0.0.1 with an ephemeral port; the socket listens before this returns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    host, port = sock.getsockname()
    return ServedApp(server, task, f"http://{host}:{port}")

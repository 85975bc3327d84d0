"""Serving an ASGI app with uvicorn on the current event loop, on a socket bound before it runs.

uvicorn is imported when the first server starts, not with this module: a node that never serves its
API over a socket (in-process local runs) does not load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from flame.waits import bounded


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (0: a free port) and listening.

    Created with ``IPPROTO_TCP`` so that asyncio sets ``TCP_NODELAY`` on accepted connections (it does
    not for protocol 0): without it every keep-alive request waits ~40 ms on Nagle's algorithm.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HTTPServer:
    """One uvicorn server for ``app``; the port is bound (and connections queue) when this returns."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = listening_socket(host, port)
        bound_host, self.port = self._sock.getsockname()[:2]
        self.host = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        self.url = f"http://{self.host}:{self.port}"
        import uvicorn

        config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        # the embedding program owns the signal handlers (Ctrl-C), not this server
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (bounded), close the socket."""
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await bounded(self._task, timeout)
        if not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close()

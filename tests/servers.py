"""Real servers on loopback for tests: an ASGI app under uvicorn on an ephemeral port."""

from __future__ import annotations

from typing import Any

from flame.node.serving import HTTPServer


async def serve_asgi(app: Any) -> HTTPServer:
    """Serve ``app`` on 127.0.0.1 with an ephemeral port; the socket listens before this returns."""
    return HTTPServer(app, "127.0.0.1", 0)


#: The served app's type, for annotations in tests.
ServedApp = HTTPServer

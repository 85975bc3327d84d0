"""HTTP plumbing of the emulated stack: the transport that resolves sidecar host names, and forwarding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

#: Hop-by-hop headers a proxy must not forward (RFC 9110 section 7.6.1), plus the ones httpx sets.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class SidecarTransport(httpx.AsyncBaseTransport):
    """Sends requests for ``http://nginx-*`` hosts into the stack app, everything else to the network.

    This stands in for the cluster DNS: inside a FLAME node ``nginx-{DEPLOYMENT_NAME}`` resolves to
    the analysis' sidecar. A host the stack does not know (an old deployment after a restart, a node
    that is offline) fails like an unresolvable host: :class:`httpx.ConnectError`.
    """

    def __init__(self, app: Any, is_reachable: Callable[[str], bool]) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._network = httpx.AsyncHTTPTransport()
        self._is_reachable = is_reachable

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host.startswith("nginx-"):
            if not self._is_reachable(host):
                raise httpx.ConnectError(f"cannot resolve or reach {host}", request=request)
            return await self._inner.handle_async_request(request)
        return await self._network.handle_async_request(request)

    async def aclose(self) -> None:
        await self._network.aclose()


async def forward(
    request: Request, client: httpx.AsyncClient, url: str, *, timeout: float | None = None
) -> Response:
    """Forward ``request`` to ``url`` and stream the answer back, as a reverse proxy does."""
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    upstream = client.build_request(
        request.method,
        url,
        headers=headers,
        content=request.stream(),
        timeout=timeout if timeout is not None else client.timeout,
    )
    try:
        answer = await client.send(upstream, stream=True)
    except httpx.TimeoutException:
        return Response("upstream timed out", status_code=504, media_type="text/plain")
    except httpx.HTTPError:
        return Response("bad gateway", status_code=502, media_type="text/plain")
    out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
    return StreamingResponse(
        answer.aiter_raw(),
        status_code=answer.status_code,
        headers=out_headers,
        background=BackgroundTask(answer.aclose),
    )

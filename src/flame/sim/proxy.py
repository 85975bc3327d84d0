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

    This stands in for the cluster DNS of one node: inside a FLAME node ``nginx-{DEPLOYMENT_NAME}``
    resolves to the analysis' sidecar. Every node of an analysis has the same deployment name, so
    the transport is bound to the node whose cluster it stands in (``resolve`` maps a host name to
    that node's name, or None). A host the node does not know (an old deployment after a restart, a
    pod that is offline) fails like an unresolvable host: :class:`httpx.ConnectError`.
    """

    def __init__(self, app: Any, resolve: Callable[[str], str | None]) -> None:
        self._app = app
        self._resolve = resolve
        # made on first use: building one loads the CA bundle (~40 ms), and most never leave the stack
        self._network: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if not host.startswith("nginx-"):
            if self._network is None:
                self._network = httpx.AsyncHTTPTransport()
            return await self._network.handle_async_request(request)
        node = self._resolve(host)
        if node is None:
            raise httpx.ConnectError(f"cannot resolve or reach {host}", request=request)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await self._app({**scope, "flame.via": node}, receive, send)

        return await httpx.ASGITransport(app=app).handle_async_request(request)

    async def aclose(self) -> None:
        if self._network is not None:
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

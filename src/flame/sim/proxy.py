"""HTTP plumbing of the emulated stack: the transport that resolves sidecar host names, and forwarding.

Two ways to forward a request to an app behind the sidecar: :func:`forward` sends it over an httpx
client (an analysis API listening on a URL), :func:`forward_asgi` hands it to an ASGI app in this
process directly, as plain ASGI messages: the request body and the answer stream through unchanged,
with no client, URL or response object built per request (every webhook delivery of a local run
takes this hop). :func:`call_asgi` is the same for a request the stack makes itself (a broker's
webhook delivery into a sidecar).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
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
#: The same names as bytes, as ASGI carries header names (lower case).
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in _HOP_BY_HOP)
#: What :func:`forward_asgi` drops: the body passes through unchanged, so its length stays valid.
_DROPPED_BYTES = _HOP_BY_HOP_BYTES - {b"content-length"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


async def forward_http(
    client: httpx.AsyncClient, scope: Scope, receive: Receive, send: Send, *, timeout: float | None = None
) -> None:
    """Forward the request of ``scope`` over ``client`` (its base URL) and stream the answer back.

    What :func:`forward` does, at the ASGI level: a small announced body is read and sent whole (the
    upstream sees its length), a larger one streams; the answer's chunks go out as they arrive, without
    a response object or background task per request. 504 if the upstream times out, 502 if it
    cannot be reached or breaks off before answering.
    """
    headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP_BYTES]
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    content: Any
    if length is not None and length.isdigit() and int(length) <= _WHOLE_BODY_LIMIT:
        content = await _read_whole(receive)
    else:
        content = _body_stream(receive)
    query = scope.get("query_string") or b""
    url = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    upstream = client.build_request(
        scope["method"],
        url,
        headers=headers,
        content=content,
        timeout=timeout if timeout is not None else client.timeout,
    )
    try:
        answer = await client.send(upstream, stream=True)
    except httpx.TimeoutException:
        await _text(send, 504, b"upstream timed out")
        return
    except httpx.HTTPError:
        await _text(send, 502, b"bad gateway")
        return
    try:
        out = [(k, v) for k, v in answer.headers.raw if k.lower() not in _DROPPED_BYTES]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
        async for chunk in answer.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await answer.aclose()


#: Largest announced request body :func:`forward_http` reads whole before sending it on (bytes).
_WHOLE_BODY_LIMIT = 1024 * 1024


async def _read_whole(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise httpx.ReadError("the client went away before the request body ended")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _body_stream(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise httpx.ReadError("the client went away before the request body ended")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _text(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-length", str(len(text)).encode()), (b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


async def forward_asgi(app: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Forward the request of ``scope`` to the ASGI ``app`` in this process, as a reverse proxy does.

    The app sees host ``analysis`` and the request's headers without hop-by-hop ones; body chunks and
    answer pass through as they come. An app that fails before it answers gives 500 with an empty body
    (after it started, the answer ends where it stopped), as a proxy in front of a crashed upstream.
    """
    headers = [(k, v) for k, v in scope["headers"] if k not in _DROPPED_BYTES]
    headers.append((b"host", b"analysis"))
    inner = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": scope["method"],
        "scheme": "http",
        "path": scope["path"],
        "raw_path": scope.get("raw_path") or scope["path"].encode(),
        "query_string": scope.get("query_string", b""),
        "root_path": "",
        "headers": headers,
        "client": scope.get("client") or ("127.0.0.1", 0),
        "server": ("analysis", 80),
        "extensions": {},
    }
    started = finished = False

    async def relay(message: Message) -> None:
        nonlocal started, finished
        kind = message["type"]
        if kind == "http.response.start":
            started = True
            raw = message.get("headers") or ()
            if any(k.lower() in _DROPPED_BYTES for k, _ in raw):
                message = {**message, "headers": [(k, v) for k, v in raw if k.lower() not in _DROPPED_BYTES]}
        elif kind == "http.response.body" and not message.get("more_body", False):
            finished = True
        await send(message)

    try:
        await app(inner, receive, relay)
    except Exception:
        # a failed upstream: end the answer (the caller may be gone too, then there is nothing to end)
        with contextlib.suppress(Exception):
            if not started:
                await send(
                    {"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]}
                )
                await send({"type": "http.response.body", "body": b""})
            elif not finished:
                await send({"type": "http.response.body", "body": b""})


async def call_asgi(app: Any, scope: Scope, body: bytes) -> int:
    """Send one request with ``body`` to the ASGI ``app`` and return the status it answered.

    The answer's body is read and dropped. After the body the app's ``receive`` waits for the answer to
    end and then reports a disconnect, as a client that hung up once it had the answer. An exception
    of the app propagates.
    """
    body_sent = False
    status: int | None = None
    complete: asyncio.Event | None = None
    done = False

    async def receive() -> Message:
        nonlocal body_sent, complete
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not done:
            if complete is None:
                complete = asyncio.Event()
            await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, done
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
        elif kind == "http.response.body" and not message.get("more_body", False):
            done = True
            if complete is not None:
                complete.set()

    await app(scope, receive, send)
    if status is None:
        raise RuntimeError("the app ended without an answer")
    return status

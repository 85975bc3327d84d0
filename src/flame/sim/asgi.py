"""Plain ASGI plumbing for the stack's hot endpoints.

The emulated services are FastAPI apps, whose routing, middleware and parameter validation cost more
per request than the work of a message send, a local result upload or a log line, and whose import
and route building cost more than a small federation's whole run. The sidecar serves every request a
run makes from plain handlers (:data:`FastHandler`) instead, for the requests they can answer in
full: a valid token, a well-formed body, nothing refused. Any other request goes to the service's
FastAPI app with the body read so far handed on unchanged (:func:`replay`), so every refusal keeps the
status, body and headers of the FastAPI route; FastAPI is imported when the first such request comes.

A handler gets one :class:`FastCall`: the request, its node, and the way to pass it on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from flame.sim.auth import analysis_mismatch
from flame.sim.issuer import InvalidToken

if TYPE_CHECKING:
    from flame.sim.node import SimNode
    from flame.sim.stack import FlameStack

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: ``await handler(call)``: answers the request of ``call``, or hands it on (:meth:`FastCall.pass_on`)
FastHandler = Callable[["FastCall"], Awaitable[None]]

#: Largest body a plain handler reads (bytes); larger or unannounced bodies go to the FastAPI app as
#: they come (a large upload is spooled to disk there, never held in memory).
FAST_BODY_LIMIT = 1024 * 1024

_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastCall:
    """One request for a plain handler: the ASGI triple, the node it came to, and its service's app.

    What :meth:`read_body` reads is kept, so :meth:`pass_on` hands the app the whole request whatever
    the handler read of it before deciding.
    """

    __slots__ = ("_body", "_complete", "_fallback", "_pending", "node", "receive", "scope", "send", "stack")

    def __init__(
        self,
        stack: FlameStack,
        node: SimNode,
        scope: Scope,
        receive: Receive,
        send: Send,
        fallback: Callable[[], ASGIApp],
    ) -> None:
        self.stack = stack
        self.node = node
        self.scope = scope
        self.receive = receive
        self.send = send
        self._fallback = fallback
        self._body = b""
        self._complete = False
        self._pending: Message | None = None

    def has_token(self) -> bool:
        """Whether the request carries a bearer token at all (valid or not)."""
        return bearer(self.scope) is not None

    def claims(self) -> dict[str, Any] | None:
        """The claims of the request's bearer token if the node's issuer signed it for the node's
        analysis; None for no token, a bad or expired one, or one of another analysis.

        When to ask is the service's: a FastAPI service (storage, PO) checks the token once the body
        is in, since FastAPI reads the body before it runs the dependencies, while the broker (Spring
        Security's filter) checks it before the body. A token that expires while the body arrives is
        then refused, or not, as the route does.
        """
        token = bearer(self.scope)
        if token is None:
            return None
        try:
            claims = self.node.issuer.verify(token)
        except InvalidToken:
            return None
        return claims if analysis_mismatch(claims, self.node.analysis_id) is None else None

    async def read_body(self, *, json: bool = False) -> bytes | None:
        """The whole body if its ``Content-Length`` is within :data:`FAST_BODY_LIMIT` (and, with
        ``json``, its media type is JSON); None otherwise, or if it did not come whole."""
        if (json and not is_json(self.scope)) or announced_length(self.scope) is None:
            return None
        self._body, self._complete, self._pending = await read_body(self.receive)
        return self._body if self._complete else None

    async def read_json(self) -> Any:
        """The parsed JSON body (see :meth:`read_body` and :func:`parse_json`); None if there is none
        or it does not parse (a JSON ``null`` is None too: no handler takes it)."""
        body = await self.read_body(json=True)
        if body is None:
            return None
        try:
            return parse_json(body)
        except ValueError:
            return None

    async def pass_on(self) -> None:
        """Hand the request to its service's app, with what was read of the body replayed first."""
        receive = replay(self.receive, self._body, self._complete, self._pending)
        await self._fallback()(self.scope, receive, self.send)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def bearer(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None if there is none or it is malformed."""
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def announced_length(scope: Scope) -> int | None:
    """The ``Content-Length`` if it is a plain number within :data:`FAST_BODY_LIMIT`; else None."""
    value = header(scope, b"content-length")
    if value is None or not value.isdigit():
        return None
    length = int(value)
    return length if length <= FAST_BODY_LIMIT else None


def is_json(scope: Scope) -> bool:
    """Whether the request's media type is JSON (``application/json`` or ``application/*+json``)."""
    value = header(scope, b"content-type")
    if value is None:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


async def read_body(receive: Receive, limit: int = FAST_BODY_LIMIT) -> tuple[bytes, bool, Message | None]:
    """The request body, read until it ends or passes ``limit``.

    Returns the bytes read, whether the body ended, and the message that ended the reading if it was
    not a body part (a disconnect): :func:`replay` hands all of it on.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False, message
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True, None
        if size > limit:
            return b"".join(chunks), False, None


def replay(receive: Receive, body: bytes, complete: bool, pending: Message | None = None) -> Receive:
    """A ``receive`` that yields ``body`` (what was read), then whatever ``receive`` still has.

    Nothing read (an empty ``body``, not ``complete``, nothing ``pending``): ``receive`` itself.
    """
    if not body and not complete and pending is None:
        return receive
    first = True

    async def again() -> Message:
        nonlocal first, pending
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": not complete}
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return again


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body`` as the services read it (no NaN or Infinity); ValueError otherwise."""
    if not body.strip():
        raise ValueError("no body")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def send_empty(send: Send, status: int) -> None:
    """An answer without a body, with the headers Starlette's ``Response`` gives one.

    ``Content-Length: 0``, except for the statuses that never have a body (1xx, 204, 304): none.
    """
    headers = [] if status < 200 or status in (204, 304) else [(b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def send_json(
    send: Send, value: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON answer encoded as Starlette's ``JSONResponse`` does (``headers`` first, as it puts them)."""
    body = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    await send_encoded_json(send, body, status, headers)


async def send_encoded_json(
    send: Send, body: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """An answer of JSON already encoded, with the headers of :func:`send_json`."""
    head = [*(headers or ()), (b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})

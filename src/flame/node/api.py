"""The analysis' own REST API: webhook, health, token refresh, partner status.

Served by uvicorn on port 8000 on a FLAME node and mounted in-process in local runs. It runs on the
runtime's event loop, not in the user's thread, so ``/healthz`` answers at once even while the
analysis computes. Malformed bodies get a 4xx and change nothing.

Only the node's message broker and pod orchestrator can reach this API (through the sidecar), but it
still treats every body as hostile input, with bounds a security review can check:

- a body is read as a stream and refused with 413 as soon as it passes the endpoint's limit (a
  ``Content-Length`` over it is refused before reading anything): :attr:`ApiLimits.webhook_bytes`
  for deliveries, :attr:`ApiLimits.control_bytes` for the orchestrator's calls;
- JSON nested deeper than :attr:`ApiLimits.max_depth` is refused with 400, whether the parser itself
  gives up or the parsed value is too deep (nothing recursive ever sees it);
- a delivery whose sender's unread messages are over the inbox's byte budget is refused with 429
  (the sender resends it until it is acknowledged; see :mod:`flame.node.inbox`);
- every refusal is logged (without the body).

The schema of the four endpoints is published at ``/openapi.json``. The app is plain ASGI (see
:class:`AnalysisApi`), so that importing and creating it costs next to nothing; FastAPI is imported
only to build that schema, the first time it is asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flame.errors import FlameError, ProtocolError, TokenError
from flame.node import envelope
from flame.node.inbox import InboxFullError
from flame.node.messaging import NotReadyError

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Default limit of a webhook body (bytes). The SDK sends messages of at most
#: :data:`flame.node.envelope.MAX_MESSAGE_BYTES` (700 KB of compact UTF-8 JSON; the hub relays nothing
#: over 1 MB); re-encoded with ASCII escapes such a message grows to at most about 2.1 MB. Kept at
#: 4 MiB (not lowered to the hub's 1 MB): a broker that re-escapes must not lose honest messages, and
#: what a sender may hold in memory is bounded by the inbox's per-sender byte budget, not by this.
DEFAULT_WEBHOOK_BYTES = 4 * 1024 * 1024
#: Default limit of a token refresh or partner status body (bytes): a token is 1 to 2 KB, the
#: statuses of 1,000 partners about 60 KB.
DEFAULT_CONTROL_BYTES = 256 * 1024


@dataclass(frozen=True)
class ApiLimits:
    """Bounds of the analysis API's request bodies."""

    #: largest ``POST /webhook`` body (bytes)
    webhook_bytes: int = DEFAULT_WEBHOOK_BYTES
    #: largest ``POST /token_refresh`` and ``POST /partner_status`` body (bytes)
    control_bytes: int = DEFAULT_CONTROL_BYTES
    #: deepest JSON nesting accepted (the SDK sends nothing deeper either)
    max_depth: int = envelope.MAX_DEPTH

    def __post_init__(self) -> None:
        if min(self.webhook_bytes, self.control_bytes, self.max_depth) < 1:
            raise ValueError("ApiLimits: every limit must be positive")


# -- the app -----------------------------------------------------------------------------------------------


class _Answer:
    """A JSON answer: status, body, extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: Any, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.body = body
        self.status = status
        self.headers = headers


class _Refusal(Exception):
    """A request body refused before it reached a handler (too large, not JSON, too deep, cut off)."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.body.get("detail", ""))
        self.answer = answer


class AnalysisApi:
    """The ASGI app of one node's analysis API: four endpoints and ``/openapi.json``.

    A plain ASGI app rather than a web framework's: it is created for every node (1,000 of them in
    one process in a large local federation) and answers every message delivery, so both cost
    microseconds. Unknown paths get 404 and known paths other methods 405 with ``Allow``, with a JSON
    ``detail`` as elsewhere; the published schema comes from :mod:`flame.node.api_schema`.
    """

    def __init__(self, node: AsyncNode, limits: ApiLimits | None = None) -> None:
        self.node = node
        self.limits = limits or ApiLimits()
        self._routes: dict[str, dict[str, Callable[[Scope, Receive], Awaitable[_Answer]]]] = {
            "/webhook": {"POST": self._webhook},
            "/healthz": {"GET": self._healthz, "HEAD": self._healthz},
            "/token_refresh": {"POST": self._token_refresh},
            "/partner_status": {"POST": self._partner_status},
            "/openapi.json": {"GET": self._openapi, "HEAD": self._openapi},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":  # a websocket: refused
            await send({"type": "websocket.close", "code": 1000})
            return
        methods = self._routes.get(scope["path"])
        if methods is None:
            answer = _Answer({"detail": "Not Found"}, 404)
        elif (handler := methods.get(scope["method"])) is None:
            allow = ", ".join(methods).encode()
            answer = _Answer({"detail": "Method Not Allowed"}, 405, ((b"allow", allow),))
        else:
            try:
                answer = await handler(scope, receive)
            except _Refusal as refusal:
                answer = refusal.answer
            except Exception:
                log.exception("the analysis API failed on %s %s", scope["method"], scope["path"])
                await _send(send, _Answer({"detail": "Internal Server Error"}, 500), head=False)
                raise
        await _send(send, answer, head=scope["method"] == "HEAD")

    # -- the endpoints --------------------------------------------------------------------------------

    async def _webhook(self, scope: Scope, receive: Receive) -> _Answer:
        body, size = await _read_json(scope, receive, self.limits.webhook_bytes, self.limits.max_depth)
        try:
            await self.node.messenger.receive(body, size=size)
        except NotReadyError as exc:
            return _Answer({"detail": str(exc)}, 503)
        except InboxFullError as exc:
            # a 4xx: the broker drops it, and the sender resends it until it is acknowledged
            log.warning("refused a webhook delivery, the inbox is full for its sender: %s", exc)
            return _Answer({"detail": str(exc)}, 429)
        except ProtocolError as exc:
            log.warning("rejected a webhook delivery: %s", exc)
            return _Answer({"detail": str(exc)}, 400)
        return _Answer({"status": "received"})

    async def _healthz(self, scope: Scope, receive: Receive) -> _Answer:
        node = self.node
        return _Answer({"status": node.status, "token_remaining_time": node.token_remaining_time()})

    async def _token_refresh(self, scope: Scope, receive: Receive) -> _Answer:
        body, _ = await _read_json(scope, receive, self.limits.control_bytes, self.limits.max_depth)
        token = body.get("token") if isinstance(body, dict) else None
        token = token.strip() if isinstance(token, str) else ""
        if not token:
            return _Answer({"detail": 'no token in the body; send {"token": "<JWT>"}'}, 400)
        try:
            await self.node.refresh_token(token)
        except TokenError as exc:
            log.warning("refused a token pushed to /token_refresh: %s", exc)
            return _Answer({"detail": f"token refused, the current one stays: {exc}"}, 400)
        except FlameError as exc:  # ServiceError, or any other check that could not run now
            log.warning("cannot verify a token pushed to /token_refresh now: %s", exc)
            return _Answer(
                {"detail": f"cannot verify the token now, the current one stays; push it again: {exc}"}, 503
            )
        log.info("token refreshed by the pod orchestrator")
        return _Answer({"message": "Token refreshed successfully"})

    async def _partner_status(self, scope: Scope, receive: Receive) -> _Answer:
        body, _ = await _read_json(scope, receive, self.limits.control_bytes, self.limits.max_depth)
        statuses = body.get("partner_status") if isinstance(body, dict) else None
        if not isinstance(statuses, dict) or not all(isinstance(v, str) for v in statuses.values()):
            return _Answer({"detail": 'expected {"partner_status": {"<node id>": "<status>"}}'}, 422)
        await self.node.adopt_partner_status(statuses)
        return _Answer({"status": self.node.status})

    async def _openapi(self, scope: Scope, receive: Receive) -> _Answer:
        from flame.node.api_schema import openapi_schema  # FastAPI and pydantic: only when asked

        return _Answer(openapi_schema())


def create_api(node: AsyncNode, limits: ApiLimits | None = None) -> AnalysisApi:
    """The ASGI app of one node's analysis API."""
    return AnalysisApi(node, limits)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send(send: Send, answer: _Answer, *, head: bool) -> None:
    body = json.dumps(answer.body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *answer.headers,
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _read_json(scope: Scope, receive: Receive, limit: int, max_depth: int) -> tuple[Any, int]:
    """The body as JSON and its size in bytes, read in chunks, never more than ``limit`` bytes kept.

    Raises :class:`_Refusal` with the 4xx answer otherwise.
    """
    where = scope["path"]
    declared = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        log.warning(
            "refused a %s body of %s bytes (limit %d): too large", where, declared.strip().decode(), limit
        )
        raise _Refusal(_too_large(limit))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise _Refusal(_Answer({"detail": "the client went away before the body was complete"}, 400))
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                log.warning("refused a %s body of more than %d bytes: too large", where, limit)
                raise _Refusal(_too_large(limit))
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _Refusal(_too_deep(where, max_depth)) from None
    except ValueError:  # includes UnicodeDecodeError and over-long integers
        raise _Refusal(_Answer({"detail": "the body is not JSON (UTF-8)"}, 400)) from None
    if envelope.json_depth(value, max_depth) > max_depth:
        raise _Refusal(_too_deep(where, max_depth))
    return value, size


def _too_large(limit: int) -> _Answer:
    return _Answer({"detail": f"the body is larger than {limit} bytes; send bulk data through storage"}, 413)


def _too_deep(where: str, max_depth: int) -> _Answer:
    log.warning("refused a %s body nested deeper than %d levels", where, max_depth)
    return _Answer({"detail": f"the JSON is nested too deep (more than {max_depth} levels)"}, 400)


__all__ = ["DEFAULT_CONTROL_BYTES", "DEFAULT_WEBHOOK_BYTES", "AnalysisApi", "ApiLimits", "create_api"]

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

The schema of the four endpoints is published at ``/openapi.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect

from flame.errors import FlameError, ProtocolError, TokenError
from flame.node import envelope
from flame.node.inbox import InboxFullError
from flame.node.messaging import NotReadyError

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)

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


# -- the schema (what /openapi.json publishes; the handlers check the same) --------------------------------


class MessageMeta(BaseModel):
    """The envelope every message carries under ``meta``."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, description="unique per message; resends reuse it")
    sender: str = Field(min_length=1, description="node id of the sender (a participant)")
    category: str = Field(min_length=1)
    akn_id: str | None = Field(None, description="set by the receiver: marks an acknowledgement")
    type: str | None = None
    status: str | None = None
    created_at: str | None = None
    arrived_at: str | None = None
    number: int | None = None


class WebhookMessage(BaseModel):
    """A message of the analysis as the broker delivers it: the sender's body plus ``meta``."""

    model_config = ConfigDict(extra="allow")

    meta: MessageMeta


class Received(BaseModel):
    status: Literal["received"]


class Health(BaseModel):
    status: str = Field(description="the node's status: starting, started, executing, executed, ...")
    token_remaining_time: int = Field(ge=0, description="seconds the current token is still good for")


class TokenRefresh(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    token: str = Field(min_length=1, description="the new Keycloak token (an RS256 JWT)")


class TokenRefreshed(BaseModel):
    message: str


class PartnerStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    partner_status: dict[str, str] = Field(description="node id -> status")


class OwnStatus(BaseModel):
    status: str


class Problem(BaseModel):
    detail: str = Field(description="what was wrong and what to do")


_MODELS: tuple[type[BaseModel], ...] = (WebhookMessage, TokenRefresh, PartnerStatus, Problem)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meanings = {
        400: "not JSON, nested too deep, or not what the endpoint takes",
        413: "the body is larger than the endpoint's limit",
        422: "valid JSON of the wrong shape",
        429: "the sender's stored unread messages are over this node's budget; it resends later",
        503: "cannot be handled now; send it again later",
    }
    return {status: {"model": Problem, "description": meanings[status]} for status in statuses}


# -- the app -----------------------------------------------------------------------------------------------


def create_api(node: AsyncNode, limits: ApiLimits | None = None) -> FastAPI:
    """The FastAPI app of one node's analysis API."""
    bounds = limits or ApiLimits()
    app = FastAPI(
        title="FLAME analysis",
        summary="The REST API an analysis serves to its node's message broker and pod orchestrator.",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.post(
        "/webhook",
        response_model=Received,
        responses=_problems(400, 413, 429, 503),
        openapi_extra=_body(WebhookMessage),
    )
    async def webhook(request: Request) -> JSONResponse:
        sized = await _read_json_sized(request, bounds.webhook_bytes, bounds.max_depth)
        if isinstance(sized, JSONResponse):
            return sized
        body, size = sized
        try:
            await node.messenger.receive(body, size=size)
        except NotReadyError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except InboxFullError as exc:
            # a 4xx: the broker drops it, and the sender resends it until it is acknowledged
            log.warning("refused a webhook delivery, the inbox is full for its sender: %s", exc)
            return JSONResponse({"detail": str(exc)}, status_code=429)
        except ProtocolError as exc:
            log.warning("rejected a webhook delivery: %s", exc)
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse({"status": "received"})

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, Any]:
        return {"status": node.status, "token_remaining_time": node.token_remaining_time()}

    @app.post(
        "/token_refresh",
        response_model=TokenRefreshed,
        responses=_problems(400, 413, 503),
        openapi_extra=_body(TokenRefresh),
    )
    async def token_refresh(request: Request) -> JSONResponse:
        body = await _read_json(request, bounds.control_bytes, bounds.max_depth)
        if isinstance(body, JSONResponse):
            return body
        try:
            token = TokenRefresh.model_validate(body).token.strip()
        except ValidationError:
            token = ""
        if not token:
            return JSONResponse({"detail": 'no token in the body; send {"token": "<JWT>"}'}, status_code=400)
        try:
            await node.refresh_token(token)
        except TokenError as exc:
            log.warning("refused a token pushed to /token_refresh: %s", exc)
            return JSONResponse({"detail": f"token refused, the current one stays: {exc}"}, status_code=400)
        except FlameError as exc:  # ServiceError, or any other check that could not run now
            log.warning("cannot verify a token pushed to /token_refresh now: %s", exc)
            return JSONResponse(
                {"detail": f"cannot verify the token now, the current one stays; push it again: {exc}"},
                status_code=503,
            )
        log.info("token refreshed by the pod orchestrator")
        return JSONResponse({"message": "Token refreshed successfully"})

    @app.post(
        "/partner_status",
        response_model=OwnStatus,
        responses=_problems(400, 413, 422),
        openapi_extra=_body(PartnerStatus),
    )
    async def partner_status(request: Request) -> JSONResponse:
        body = await _read_json(request, bounds.control_bytes, bounds.max_depth)
        if isinstance(body, JSONResponse):
            return body
        try:
            statuses = PartnerStatus.model_validate(body).partner_status
        except ValidationError:
            return JSONResponse(
                {"detail": 'expected {"partner_status": {"<node id>": "<status>"}}'}, status_code=422
            )
        await node.adopt_partner_status(statuses)
        return JSONResponse({"status": node.status})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            _, definitions = models_json_schema(
                [(model, "validation") for model in _MODELS], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _read_json(request: Request, limit: int, max_depth: int) -> Any:
    """The body as JSON, or the 4xx answer: read in chunks, never more than ``limit`` bytes kept."""
    sized = await _read_json_sized(request, limit, max_depth)
    return sized if isinstance(sized, JSONResponse) else sized[0]


async def _read_json_sized(request: Request, limit: int, max_depth: int) -> tuple[Any, int] | JSONResponse:
    """Like :func:`_read_json`, with the body's size in bytes."""
    where = request.url.path
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        log.warning("refused a %s body of %s bytes (limit %d): too large", where, declared.strip(), limit)
        return _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                log.warning("refused a %s body of more than %d bytes: too large", where, limit)
                return _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        return JSONResponse({"detail": "the client went away before the body was complete"}, status_code=400)
    raw = b"".join(chunks)
    try:
        value = json.loads(raw)
    except RecursionError:
        return _too_deep(where, max_depth)
    except ValueError:  # includes UnicodeDecodeError and over-long integers
        return JSONResponse({"detail": "the body is not JSON (UTF-8)"}, status_code=400)
    if envelope.json_depth(value, max_depth) > max_depth:
        return _too_deep(where, max_depth)
    return value, size


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the body is larger than {limit} bytes; send bulk data through storage"}, status_code=413
    )


def _too_deep(where: str, max_depth: int) -> JSONResponse:
    log.warning("refused a %s body nested deeper than %d levels", where, max_depth)
    return JSONResponse(
        {"detail": f"the JSON is nested too deep (more than {max_depth} levels)"}, status_code=400
    )


__all__ = ["DEFAULT_CONTROL_BYTES", "DEFAULT_WEBHOOK_BYTES", "ApiLimits", "create_api"]

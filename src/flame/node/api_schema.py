"""The OpenAPI schema of the analysis API (:mod:`flame.node.api`), built on the first ``/openapi.json``.

Kept apart so that a node imports FastAPI and pydantic only when someone asks for the schema: the API
itself is a small ASGI app that checks the same shapes by hand. The schema does not depend on the node,
so it is built once per process.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema


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


@functools.cache
def openapi_schema() -> dict[str, Any]:
    """The schema of the four endpoints, as FastAPI publishes it for routes of these shapes."""
    app = FastAPI(
        title="FLAME analysis",
        summary="The REST API an analysis serves to its node's message broker and pod orchestrator.",
        version="1",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    async def unused() -> None:  # the routes exist for their schema; the real handlers are in api.py
        raise NotImplementedError

    app.post(
        "/webhook",
        response_model=Received,
        responses=_problems(400, 413, 429, 503),
        openapi_extra=_body(WebhookMessage),
        name="webhook",
    )(unused)
    app.get("/healthz", response_model=Health, name="healthz")(unused)
    app.post(
        "/token_refresh",
        response_model=TokenRefreshed,
        responses=_problems(400, 413, 503),
        openapi_extra=_body(TokenRefresh),
        name="token_refresh",
    )(unused)
    app.post(
        "/partner_status",
        response_model=OwnStatus,
        responses=_problems(400, 413, 422),
        openapi_extra=_body(PartnerStatus),
        name="partner_status",
    )(unused)
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    _, definitions = models_json_schema(
        [(model, "validation") for model in _MODELS], ref_template="#/components/schemas/{model}"
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
    return schema

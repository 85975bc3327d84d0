"""The analysis' own REST API (WIRE.md section 5): webhook, health, token refresh, partner status.

Served by uvicorn on port 8000 on a FLAME node and mounted in-process in local runs. It runs on the
runtime's event loop, not in the user's thread, so ``/healthz`` answers at once even while the
analysis computes. Malformed bodies get a 4xx and change nothing.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flame.errors import ProtocolError, ServiceError, TokenError
from flame.node.messaging import NotReadyError

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)


def create_api(node: AsyncNode) -> FastAPI:
    """The FastAPI app of one node's analysis API."""
    app = FastAPI(title="FLAME analysis", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            await node.messenger.receive(body)
        except NotReadyError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except ProtocolError as exc:
            log.warning("rejected a webhook delivery: %s", exc)
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse({"status": "received"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": node.status, "token_remaining_time": node.token_remaining_time()}

    @app.post("/token_refresh")
    async def token_refresh(request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            return JSONResponse({"detail": 'no token in the body; send {"token": "<JWT>"}'}, status_code=400)
        try:
            await node.refresh_token(token)
        except TokenError as exc:
            log.warning("refused a token pushed to /token_refresh: %s", exc)
            return JSONResponse({"detail": f"token refused, the current one stays: {exc}"}, status_code=400)
        except ServiceError as exc:
            log.warning("cannot verify a token pushed to /token_refresh now: %s", exc)
            return JSONResponse(
                {"detail": f"cannot verify the token now, the current one stays; push it again: {exc}"},
                status_code=503,
            )
        log.info("token refreshed by the pod orchestrator")
        return JSONResponse({"message": "Token refreshed successfully"})

    @app.post("/partner_status")
    async def partner_status(request: Request) -> JSONResponse:
        body = await _json(request)
        if isinstance(body, JSONResponse):
            return body
        statuses = body.get("partner_status") if isinstance(body, dict) else None
        if not isinstance(statuses, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in statuses.items()
        ):
            return JSONResponse(
                {"detail": 'expected {"partner_status": {"<node id>": "<status>"}}'}, status_code=422
            )
        node.adopt_partner_status(statuses)
        return JSONResponse({"status": node.status})

    return app


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return JSONResponse({"detail": "the body is not JSON"}, status_code=400)

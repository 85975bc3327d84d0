"""The pod orchestrator's FastAPI app, built on first use: the sidecar takes a well-formed log entry
itself (:func:`flame.sim.po.fast_stream_logs`); this app answers the rest, refusals included."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from flame.sim.auth import current_node, po_claims
from flame.sim.po import LogType

if TYPE_CHECKING:
    from flame.sim.stack import FlameStack


class LogEntry(BaseModel):
    """The body of ``POST /po/stream_logs``."""

    log: str
    log_type: LogType
    analysis_id: str
    status: str
    progress: int = Field(ge=0, le=100)


def create_app(stack: FlameStack) -> FastAPI:
    """The PO's API as the sidecar exposes it: ``POST /stream_logs`` (prefix ``/po`` stripped)."""
    app = FastAPI(title="emulated pod orchestrator", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/stream_logs")
    async def stream_logs(
        entry: LogEntry, request: Request, claims: dict[str, Any] = Depends(po_claims)
    ) -> dict[str, str]:
        node = current_node(request)
        if entry.analysis_id != node.analysis_id:
            detail = f"Forbidden: this sidecar serves analysis {node.analysis_id}, not {entry.analysis_id}"
            raise HTTPException(403, detail)
        await stack.po.receive_log(node, entry.model_dump())
        return {"status": "ok"}

    return app

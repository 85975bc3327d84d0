"""The emulated pod orchestrator (WIRE.md section 5).

It receives each node's streamed logs, status and progress (``POST /po/stream_logs``), and on every
period it calls each running analysis' ``/healthz``, pushes ``/partner_status`` with the other nodes'
statuses, and pushes ``/token_refresh`` with a fresh token when the reported
``token_remaining_time`` falls under the threshold. A node whose ``/healthz`` does not answer in time,
or answers ``stuck``, is restarted while it is starting (at most ``max_restarts`` times), as the real
PO does, and marked ``failed`` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from flame.sim.auth import current_node, po_claims

if TYPE_CHECKING:
    from flame.sim.node import SimNode
    from flame.sim.stack import FlameStack

LogType = Literal["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"]
STATUSES = ("starting", "started", "executing", "executed", "stuck", "stopping", "stopped", "failed")
FINAL_STATUSES = ("executed", "failed", "stopped")


class LogEntry(BaseModel):
    """The body of ``POST /po/stream_logs``."""

    log: str
    log_type: LogType
    analysis_id: str
    status: str
    progress: int = Field(ge=0, le=100)


@dataclass
class NodeRecord:
    """What the PO knows of one node's analysis."""

    status: str = "starting"
    progress: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    token_refreshes: int = 0
    last_health: dict[str, Any] | None = None


class PodOrchestrator:
    """The PO of every node in the stack; :meth:`run` is its periodic loop."""

    def __init__(self, stack: FlameStack, max_restarts: int = 10) -> None:
        self.stack = stack
        self.max_restarts = max_restarts
        self.records: dict[str, NodeRecord] = {name: NodeRecord() for name in stack.nodes}
        self._changed = asyncio.Condition()
        self._stopped = asyncio.Event()

    def record(self, name: str) -> NodeRecord:
        return self.records[name]

    def status(self, name: str) -> str:
        """The last status node ``name`` reported (``starting`` before any)."""
        return self.records[name].status

    def statuses(self) -> dict[str, str]:
        return {name: record.status for name, record in self.records.items()}

    async def wait_for_status(self, name: str, statuses: tuple[str, ...], timeout: float) -> str:
        """Wait until node ``name`` reports one of ``statuses``; TimeoutError otherwise."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self.records[name].status in statuses), timeout
            )
        return self.records[name].status

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def receive_log(self, node: SimNode, entry: LogEntry) -> None:
        record = self.records[node.name]
        record.logs.append(entry.model_dump())
        if entry.status in STATUSES:
            record.status = entry.status
        if entry.progress < record.progress:
            self.stack.events.record(
                "po.progress_decreased", node.name, was=record.progress, now=entry.progress
            )
        record.progress = max(record.progress, entry.progress)
        self.stack.events.record(
            "po.log", node.name, log_type=entry.log_type, status=entry.status, progress=entry.progress
        )
        await self._notify()

    async def run(self) -> None:
        """The periodic loop: health, partner status and token refresh for every running node."""
        settings = self.stack.settings
        period = settings.scaled(settings.po_period)
        while not self._stopped.is_set():
            # the real PO checks on a fixed schedule (every 10 s): wait out the period, or the stop
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), period)
            if self._stopped.is_set():
                return
            await asyncio.gather(*(self.check(node) for node in list(self.stack.nodes.values())))

    def stop(self) -> None:
        """End :meth:`run` at once (its next wake-up)."""
        self._stopped.set()

    async def check(self, node: SimNode) -> None:
        """One round of the PO's checks for one node."""
        record = self.records[node.name]
        if record.status in FINAL_STATUSES or self.stack.analysis_client(node.name) is None:
            return
        settings = self.stack.settings
        client = self.stack.node_http(node.name)
        base = f"http://{node.host}/analysis"
        timeout = settings.scaled(settings.po_healthz_timeout)
        try:
            # wait_for as well: httpx timeouts do not apply to in-process (ASGI) requests
            answer = await asyncio.wait_for(client.get(f"{base}/healthz", timeout=timeout), timeout)
            answer.raise_for_status()
            health = answer.json()
        except (httpx.HTTPError, ValueError, asyncio.TimeoutError) as exc:
            await self._unhealthy(node, f"healthz failed: {type(exc).__name__}")
            return
        record.last_health = health
        if health.get("status") == "stuck":
            await self._unhealthy(node, "reported stuck")
            return
        partners = {
            n.node_id: self.records[n.name].status for n in self.stack.nodes.values() if n is not node
        }
        with contextlib.suppress(httpx.HTTPError, asyncio.TimeoutError):
            await asyncio.wait_for(
                client.post(f"{base}/partner_status", json={"partner_status": partners}, timeout=timeout),
                timeout,
            )
        remaining = health.get("token_remaining_time")
        threshold = settings.scaled(settings.po_token_threshold)
        if isinstance(remaining, int | float) and remaining < max(threshold, 1.0):
            await self.refresh_token(node)

    async def refresh_token(self, node: SimNode) -> None:
        """Mint a new token for ``node`` and push it to its analysis."""
        token = node.issuer.mint(self.stack.analysis_id, self.stack.settings.token_lifetime)
        node.token = token
        self.records[node.name].token_refreshes += 1
        status: int | None = None
        try:
            answer = await self.stack.node_http(node.name).post(
                f"http://{node.host}/analysis/token_refresh", json={"token": token}
            )
            status = answer.status_code
        except httpx.HTTPError:
            status = None
        self.stack.events.record("po.token_refresh", node.name, status=status)

    async def _unhealthy(self, node: SimNode, reason: str) -> None:
        record = self.records[node.name]
        if record.status in ("starting", "stuck") and record.restarts < self.max_restarts:
            record.restarts += 1
            self.stack.events.record("po.restart", node.name, reason=reason)
            record.status = "starting"
            await self.stack.restart_node(node.name, reason=reason)
        else:
            record.status = "failed"
            self.stack.events.record("po.failed", node.name, reason=reason)
        await self._notify()


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
        await stack.po.receive_log(node, entry)
        return {"status": "ok"}

    return app

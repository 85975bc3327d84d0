"""Client of the pod orchestrator's log stream."""

from __future__ import annotations

from typing import Any, Literal

from flame.clients.base import ServiceClient

LogType = Literal["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"]
LOG_TYPES: tuple[LogType, ...] = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")


class PodOrchestratorClient(ServiceClient):
    """Streams logs, status and progress to the pod orchestrator, which forwards them to the hub."""

    service = "po"

    def __init__(self, *args: Any, analysis_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.analysis_id = analysis_id

    async def stream_log(self, log: str, log_type: LogType, status: str, progress: int) -> None:
        """One log line with the node's current status and progress (0 to 100)."""
        body = {
            "log": log,
            "log_type": log_type,
            "analysis_id": self.analysis_id,
            "status": status,
            "progress": max(0, min(100, int(progress))),
        }
        await self.request("POST", "/stream_logs", json=body, retry=True)

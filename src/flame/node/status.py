"""The node's status, progress and log stream to the pod orchestrator, never blocking the analysis.

User code (any thread) only puts entries on a bounded queue; a task on the runtime's loop sends them
to ``POST /po/stream_logs``, joining consecutive lines of the same level into one entry, with the
service client's retries. When the queue is full, or the PO cannot be reached after the retries, the
entry is dropped with a warning on the local log: the analysis goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Literal

from flame.clients.po import LOG_TYPES, LogType, PodOrchestratorClient
from flame.errors import FlameError
from flame.redact import redact

log = logging.getLogger(__name__)

Status = Literal["starting", "started", "executing", "executed", "stuck", "stopping", "stopped", "failed"]
STATUSES: tuple[Status, ...] = (
    "starting",
    "started",
    "executing",
    "executed",
    "stuck",
    "stopping",
    "stopped",
    "failed",
)
FINAL_STATUSES: tuple[Status, ...] = ("executed", "stopped", "failed")


@dataclass(frozen=True)
class LogEntry:
    text: str
    log_type: LogType


class StatusReporter:
    """Holds status and progress; streams logs to the PO from the runtime's loop."""

    def __init__(
        self,
        po: PodOrchestratorClient | None,
        loop: asyncio.AbstractEventLoop,
        *,
        max_queue: int = 10_000,
        max_batch_chars: int = 16_000,
    ) -> None:
        self._po = po
        self._loop = loop
        self._queue: asyncio.Queue[LogEntry | None] = asyncio.Queue(max_queue)
        self._max_batch_chars = max_batch_chars
        self._lock = threading.Lock()
        self._status: Status = "starting"
        self._progress = 0
        self.dropped = 0
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def status(self) -> Status:
        return self._status

    @property
    def progress(self) -> int:
        return self._progress

    def set_status(self, status: Status) -> None:
        """Change the status (reported with the next log entry; a line is queued for it)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        with self._lock:
            changed = status != self._status
            self._status = status
        if changed:
            self.log(f"status: {status}", "info")

    def set_progress(self, progress: float) -> int:
        """Set progress (0 to 100). It never decreases: a smaller value is ignored with a warning."""
        value = int(max(0.0, min(100.0, float(progress))))
        with self._lock:
            if value < self._progress:
                log.warning(
                    "progress %d is below the current %d and was ignored (progress never decreases)",
                    value,
                    self._progress,
                )
                return self._progress
            self._progress = value
        return value

    def log(self, text: str, log_type: LogType = "info") -> None:
        """Queue a line for the PO; safe from any thread, never blocks."""
        if log_type not in LOG_TYPES:
            raise ValueError(f"unknown log type {log_type!r}; one of {', '.join(LOG_TYPES)}")
        entry = LogEntry(redact(text), log_type)
        if self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._put(entry)
        else:
            self._loop.call_soon_threadsafe(self._put, entry)

    def _put(self, entry: LogEntry) -> None:
        try:
            self._queue.put_nowait(entry)
            self._idle.clear()
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("log queue full: a line for the pod orchestrator was dropped")

    def start(self) -> None:
        if self._task is None and self._po is not None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            entry = await self._queue.get()
            if entry is None:
                return
            batch = [entry]
            size = len(entry.text)
            while not self._queue.empty():
                following = self._queue.get_nowait()
                if following is None:
                    await self._send(batch)
                    return
                if following.log_type != entry.log_type or size + len(following.text) > self._max_batch_chars:
                    await self._send(batch)
                    batch, entry, size = [following], following, 0
                else:
                    batch.append(following)
                size += len(following.text)
            await self._send(batch)
            if self._queue.empty():
                self._idle.set()

    async def _send(self, batch: list[LogEntry]) -> None:
        assert self._po is not None
        text = "\n".join(e.text for e in batch)
        try:
            await self._po.stream_log(text, batch[0].log_type, self._status, self._progress)
            self.sent += len(batch)
        except FlameError as exc:
            self.dropped += len(batch)
            log.warning("%d log line(s) for the pod orchestrator were dropped: %s", len(batch), exc)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued line was sent or dropped; False if ``timeout`` ran out first."""
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        if self._task is None:
            return
        await self.flush(timeout)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

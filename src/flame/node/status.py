"""The node's status, progress and log stream to the pod orchestrator, never blocking the analysis.

User code (any thread) only puts entries on a bounded queue; a task on the runtime's loop sends them
to ``POST /po/stream_logs``, joining consecutive lines of the same level into one entry, with the
service client's retries. When the queue is full, or the PO cannot be reached after the retries, the
entry is dropped with a warning on the local log: the analysis goes on.

Shutdown is bounded and does not rely on cancellation: :meth:`StatusReporter.aclose` tells the sending
task to stop (it sends what is queued and returns), waits for it up to the shutdown timeout, and only
then abandons what is left and cancels it, waiting at most :data:`CANCEL_GRACE` more. A cancellation
alone is not enough: before Python 3.12 ``asyncio.wait_for`` swallows a cancellation that arrives just
as what it waits for completes (this package's own waits use :func:`flame.waits.bounded`, which does
not, but libraries under an HTTP request may), and a task waiting for the next line after that would
never end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

from flame.clients.po import LOG_TYPES, LogType, PodOrchestratorClient
from flame.errors import FlameError
from flame.redact import redact
from flame.waits import bounded

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

#: How long :meth:`StatusReporter.aclose` waits for the sending task after cancelling it (seconds).
CANCEL_GRACE = 1.0


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
        self._entries: deque[LogEntry] = deque()
        self._max_queue = max_queue
        self._max_batch_chars = max_batch_chars
        self._lock = threading.Lock()
        self._status: Status = "starting"
        self._progress = 0
        self.dropped = 0
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        #: set when an entry is queued or the reporter is closing: what the sending task waits on
        self._wake = asyncio.Event()
        #: set while nothing is queued and no batch is being sent
        self._idle = asyncio.Event()
        self._idle.set()
        #: close: send what is queued, then end; abandon: end after the batch in flight
        self._closing = False
        self._abandon = False

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
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._put, entry)

    def _put(self, entry: LogEntry) -> None:
        if len(self._entries) >= self._max_queue:
            self.dropped += 1
            log.warning("log queue full: a line for the pod orchestrator was dropped")
            return
        self._entries.append(entry)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None and self._po is not None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        me = asyncio.current_task()
        while True:
            if self._abandon or _cancel_requested(me):
                self._drop_queued()
                self._idle.set()
                return
            if not self._entries:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._send(self._next_batch())

    def _next_batch(self) -> list[LogEntry]:
        """Consecutive queued entries of one log type, up to the batch size."""
        first = self._entries.popleft()
        batch, size = [first], len(first.text)
        while self._entries:
            following = self._entries[0]
            if following.log_type != first.log_type or size + len(following.text) > self._max_batch_chars:
                break
            batch.append(self._entries.popleft())
            size += len(following.text)
        return batch

    def _drop_queued(self) -> None:
        if self._entries:
            count = len(self._entries)
            self._entries.clear()
            self.dropped += count
            log.warning("%d log line(s) for the pod orchestrator were dropped at shutdown", count)

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
        return await _wait_event(self._idle, timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then stop; returns within ``timeout + CANCEL_GRACE``."""
        task = self._task
        if task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait({task}, timeout=max(timeout, 0.0))
        finally:
            if not task.done():
                # out of time (or this close was cancelled): drop the rest, end the batch in flight
                self._abandon = True
                self._wake.set()
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_GRACE)
                if not task.done():
                    log.warning("the log stream to the pod orchestrator did not stop; left behind")
            self._task = None
        self._drop_queued()


def _cancel_requested(task: asyncio.Task[None] | None) -> bool:
    """Whether ``task`` was asked to cancel and the request got lost (Python 3.11+ can tell)."""
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; never swallows a cancellation."""
    if event.is_set():
        return True
    with contextlib.suppress(asyncio.TimeoutError):
        await bounded(event.wait(), max(timeout, 0.0))
    return event.is_set()

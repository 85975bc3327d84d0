"""Background tasks owned by a component, cancelled (after an optional grace period) when it closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: How long closing waits for cancelled tasks to end (seconds).
CANCEL_GRACE = 1.0


class BackgroundTasks:
    """A set of fire-and-forget tasks that keeps references (so they are not collected) and can close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the running tasks to finish; True if none is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        return not self._tasks

    async def aclose(self, grace: float = 0.0) -> None:
        """Let running tasks finish for up to ``grace`` seconds, then cancel the rest and wait for them.

        The wait after the cancel is bounded too (:data:`CANCEL_GRACE`): before Python 3.12 a
        cancellation can be swallowed by ``asyncio.wait_for``, and a task that goes on must not hold the
        node's shutdown; it is left behind with a warning.
        """
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CANCEL_GRACE)
            for task in pending:
                task.cancel()  # once more: the first request may have been lost
            if pending:
                log.warning("%d background task(s) did not end when cancelled; left behind", len(pending))
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: ended with an error while closing is no news

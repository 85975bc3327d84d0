"""Bounded waits in async code that never lose a cancellation.

Before Python 3.12, ``asyncio.wait_for`` runs the awaitable in a task of its own and, when a
cancellation of the caller arrives just as that task completes, returns the result and drops the
cancellation: a node being stopped then goes on waiting for the next message. :func:`bounded` is the
one way this package bounds a wait. On Python 3.11+ it uses ``asyncio.timeout``, which runs the
awaitable in the caller's own task and counts cancellations; on 3.10 it waits for a task of its own
with ``asyncio.wait``, which re-raises a pending cancellation of the caller in every case.

Both raise ``asyncio.TimeoutError`` when the bound runs out (the builtin ``TimeoutError`` on 3.11+),
as ``asyncio.wait_for`` does, after cancelling what they waited for.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def bounded(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds (None: unbounded).

    Raises ``asyncio.TimeoutError`` (after cancelling ``awaitable``) when the time runs out; a
    cancellation of the caller always propagates, also when it coincides with the result.
    """
    if timeout is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await awaitable
    return await bounded_in_task(awaitable, timeout)  # pragma: no cover - Python 3.10


async def bounded_in_task(awaitable: Awaitable[T], timeout: float) -> T:
    """:func:`bounded` for Python 3.10 (no ``asyncio.timeout``): ``awaitable`` runs in a task of its own.

    Public so that tests run it on every Python version.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait([task], timeout=max(timeout, 0.0))
    except BaseException:
        # our caller was cancelled (or interrupted): the work goes with it
        task.cancel()
        await asyncio.wait([task])
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the cancellation is the news, not what the task raised
        raise
    if not done:
        task.cancel()
        await asyncio.wait([task])
        if task.cancelled():
            raise asyncio.TimeoutError
        # it completed (or failed) while being cancelled: what it produced is the answer
    return task.result()


__all__ = ["bounded", "bounded_in_task"]

"""The node runtime's event loop, on a background thread, and the bridge from sync code to it.

The runtime owns one event loop that runs the HTTP clients, the analysis REST API and the timers.
Synchronous callers (an analysis script, a Jupyter cell whose own loop is busy) submit coroutines to it
with :meth:`LoopThread.run`, which waits for the result on a concurrent future, with a timeout. No
``asyncio.run`` per call: the loop lives as long as the runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from flame.errors import FlameError, FlameTimeoutError

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self, name: str = "flame-node") -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self._loop is not None and not self._loop.is_closed()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a concurrent future."""
        if not self.is_running:
            coro.close()
            raise FlameError("the node runtime is stopped; start a new one")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(
        self, coro: Coroutine[Any, Any, T], timeout: float | None = None, what: str = "an operation"
    ) -> T:
        """Run ``coro`` on the loop and wait for its result from a sync caller.

        Raises :class:`FlameTimeoutError` (and cancels the coroutine) after ``timeout`` seconds.
        Calling it from the loop's own thread would deadlock, so that raises at once.
        """
        if self.in_loop_thread():
            coro.close()
            raise FlameError(
                "a sync method of the node runtime was called from its own event loop; use the async one"
            )
        future = self.submit(coro)
        # Wait first, then take the result: since Python 3.11 concurrent.futures.TimeoutError is the
        # builtin TimeoutError, so catching it around result() would also swallow the coroutine's own
        # FlameTimeoutError (and its ``missing`` list).
        try:
            done, _ = concurrent.futures.wait([future], timeout)
        except BaseException:
            # KeyboardInterrupt (a notebook's interrupt): do not leave the call running on the loop,
            # where it would, say, still consume the messages a repeated call waits for.
            future.cancel()
            raise
        if not done:
            future.cancel()
            raise FlameTimeoutError(what, timeout or 0.0)
        return future.result()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending tasks are cancelled) and join the thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)

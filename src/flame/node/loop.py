"""The node runtime's event loop, on a background thread, and the one bridge from sync code to it.

The runtime owns one event loop that runs the HTTP clients, the analysis REST API and the timers.
Synchronous callers (an analysis script, a Jupyter cell whose own loop is busy, a node thread of a local
federation) submit coroutines to it with :meth:`LoopThread.run`; no ``asyncio.run`` per call, the loop
lives as long as the runtime. Every call through the bridge

- waits at most ``timeout`` seconds (None only where the coroutine bounds itself, e.g. an analysis run
  whose every wait has its own timeout), then cancels the coroutine and raises
  :class:`~flame.errors.FlameTimeoutError` naming what it waited for;
- cancels the coroutine when the caller is interrupted (``KeyboardInterrupt`` in a notebook), so a
  repeated call does not race the abandoned one;
- raises the coroutine's own errors unchanged, its own ``FlameTimeoutError`` (with its ``missing``
  list) included;
- can belong to a :class:`CallScope`, whose :meth:`~CallScope.abort` cancels every call in flight and
  refuses later ones (a local runner stops one node's analysis thread this way).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from flame.errors import FlameError, FlameTimeoutError

T = TypeVar("T")


class CallScope:
    """The calls of one caller (say, one node's analysis thread) through a :class:`LoopThread`.

    :meth:`abort` cancels the calls in flight and makes later ones raise :class:`FlameError`.
    """

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self._aborted: str | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    @property
    def aborted(self) -> str | None:
        """Why this scope was aborted, or None."""
        return self._aborted

    def abort(self, reason: str) -> None:
        """Cancel the calls in flight and refuse later ones, saying ``reason``."""
        with self._lock:
            self._aborted = reason
            pending = list(self._pending)
        for future in pending:
            _cancel(future)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        """:meth:`LoopThread.run` as part of this scope."""
        return self.loop.run(coro, timeout, what, scope=self)

    def _enter(self, future: concurrent.futures.Future[Any]) -> str | None:
        with self._lock:
            if self._aborted is None:
                self._pending.add(future)
            return self._aborted

    def _leave(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)


_IN_LOOP = (
    "{what}: a synchronous call of the node runtime was made from its own event loop, where it would "
    "wait for itself; use the async API there, or call it from another thread"
)


def call_in_loop(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    what: str,
    *,
    scope: CallScope | None = None,
) -> T:
    """Run ``coro`` on ``loop`` (running in another thread) and wait for its result; see the module doc.

    Raises :class:`FlameTimeoutError` (and cancels the coroutine) after ``timeout`` seconds; None
    leaves the bound to the coroutine. Raises :class:`FlameError` when ``scope`` was aborted, the loop
    stopped before the coroutine ended, or the caller runs on ``loop`` itself (that would deadlock).
    """
    if scope is not None and scope.aborted is not None:
        coro.close()
        raise FlameError(f"{what}: this node was stopped ({scope.aborted})")
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise FlameError(_IN_LOOP.format(what=what))
    if loop.is_closed():
        coro.close()
        raise FlameError(f"{what}: the node runtime's event loop is closed; start a new runtime")
    # The future exists before the coroutine is scheduled, so an interrupt at any point from here on
    # finds it and cancels the call (run_coroutine_threadsafe returns it only after scheduling).
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        try:
            loop.call_soon_threadsafe(_start, loop, coro, future)
        except RuntimeError:  # the loop closed since the check above
            coro.close()
            raise FlameError(
                f"{what}: the node runtime's event loop is closed; start a new runtime"
            ) from None
        if scope is not None and scope._enter(future) is not None:
            _cancel(future)  # aborted between the check above and now
        # Wait first, then take the result: since Python 3.11 concurrent.futures.TimeoutError is the
        # builtin TimeoutError, so catching it around result() would also swallow the coroutine's own
        # FlameTimeoutError (and its ``missing`` list).
        done, _ = concurrent.futures.wait([future], timeout)
    except BaseException:
        # KeyboardInterrupt (a notebook's interrupt): do not leave the call running on the loop, where
        # it would, say, still consume the messages a repeated call waits for.
        _cancel(future)
        raise
    finally:
        if scope is not None:
            scope._leave(future)
    if not done:
        _cancel(future)
        raise FlameTimeoutError(what, timeout or 0.0)
    if future.cancelled():
        reason = scope.aborted if scope is not None else None
        raise FlameError(f"{what} was cancelled: {reason or 'the node runtime stopped'}")
    return future.result(timeout=0)


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    """Cancel ``future`` and wake its ``concurrent.futures.wait`` callers now.

    ``Future.cancel`` alone wakes only ``result()`` callers; ``wait`` learns of it from
    ``set_running_or_notify_cancel``, which may run once (from any thread).
    """
    if future.cancel():
        with contextlib.suppress(RuntimeError):  # another thread notified them already
            future.set_running_or_notify_cancel()


def _start(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], future: concurrent.futures.Future[T]
) -> None:
    """On the loop: run ``coro`` as a task whose outcome ``future`` reports, and which its cancel stops."""
    if future.cancelled():  # the caller gave up before the coroutine started
        coro.close()
        return
    task = loop.create_task(coro)

    def report(done: asyncio.Task[T]) -> None:
        if done.cancelled():
            _cancel(future)
            return
        try:
            if not future.set_running_or_notify_cancel():
                return  # the caller cancelled it meanwhile
        except RuntimeError:
            return  # cancelled, and its waiters told already
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())

    def cancel(_: concurrent.futures.Future[T]) -> None:
        if future.cancelled() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    task.add_done_callback(report)
    future.add_done_callback(cancel)


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


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
            _cancel_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            _cancel_tasks(loop)  # calls that were queued as the loop stopped started meanwhile
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
        self,
        coro: Coroutine[Any, Any, T],
        timeout: float | None,
        what: str = "an operation",
        *,
        scope: CallScope | None = None,
    ) -> T:
        """Run ``coro`` on the loop and wait for its result from a sync caller.

        Raises :class:`FlameTimeoutError` (and cancels the coroutine) after ``timeout`` seconds; None
        leaves the bound to the coroutine. Cancels the coroutine when the wait is interrupted. Raises
        :class:`FlameError` when ``scope`` was aborted or the loop stopped before the coroutine ended,
        and at once when called from the loop's own thread (that would deadlock).
        """
        if self.in_loop_thread():
            coro.close()
            raise FlameError(_IN_LOOP.format(what=what))
        if not self.is_running:
            coro.close()
            raise FlameError(f"{what}: the node runtime is stopped; start a new one")
        return call_in_loop(self.loop, coro, timeout, what, scope=scope)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending tasks are cancelled) and join the thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)

"""A record of everything the emulated node stack did, for tests and run reports."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flame.waits import bounded


@dataclass(frozen=True)
class Event:
    """One thing the stack did.

    ``kind`` is a dotted name such as ``delivery.ok``, ``delivery.retry``, ``delivery.dropped``,
    ``broker.sent``, ``storage.upload``, ``po.log``, ``po.token_refresh``, ``node.restart``,
    ``fault.outage``. ``node`` is the node name it concerns (if any); ``detail`` holds the rest.
    """

    seq: int
    t: float
    kind: str
    node: str | None
    detail: dict[str, Any] = field(default_factory=dict)


class EventLog:
    """Thread-safe, append-only list of :class:`Event`; awaitable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def record(self, kind: str, node: str | None = None, **detail: Any) -> Event:
        """Append an event and wake whoever awaits one."""
        with self._lock:
            event = Event(len(self._events), self._clock() - self._start, kind, node, detail)
            self._events.append(event)
            waiters = list(self._waiters)
        if waiters:
            try:
                here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            for loop, flag in waiters:
                if loop is here:
                    flag.set()  # on its own loop: no wake-up through the loop's self-pipe
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(flag.set)
        return event

    def select(self, kind: str | None = None, node: str | None = None, **detail: Any) -> list[Event]:
        """Events whose kind equals ``kind`` or starts with ``kind + '.'``, filtered by node and detail."""
        with self._lock:
            events = list(self._events)
        return [e for e in events if _matches(e, kind, node, detail)]

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            return iter(list(self._events))

    def __len__(self) -> int:
        return len(self._events)

    async def wait_for(
        self, kind: str, count: int = 1, *, timeout: float = 10.0, node: str | None = None, **detail: Any
    ) -> list[Event]:
        """Wait until at least ``count`` matching events exist; raise TimeoutError otherwise."""
        loop = asyncio.get_running_loop()
        flag = asyncio.Event()
        entry = (loop, flag)
        with self._lock:
            self._waiters.append(entry)
        deadline = loop.time() + timeout
        try:
            while True:
                flag.clear()
                found = self.select(kind, node, **detail)
                if len(found) >= count:
                    return found
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"waited {timeout} s for {count} event(s) {kind!r}, saw {len(found)}")
                # bounded, not asyncio.wait_for: a cancellation that arrives as the flag is set is kept
                with contextlib.suppress(asyncio.TimeoutError):
                    await bounded(flag.wait(), remaining)
        finally:
            with self._lock:
                self._waiters.remove(entry)

    def to_list(self) -> list[dict[str, Any]]:
        """The events as JSON-ready dicts, for run reports."""
        return [{"seq": e.seq, "t": round(e.t, 6), "kind": e.kind, "node": e.node, **e.detail} for e in self]


def _matches(event: Event, kind: str | None, node: str | None, detail: dict[str, Any]) -> bool:
    if kind is not None and event.kind != kind and not event.kind.startswith(kind + "."):
        return False
    if node is not None and event.node != node:
        return False
    return all(event.detail.get(k) == v for k, v in detail.items())

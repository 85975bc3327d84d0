"""Every process-wide hook this package installs, in one place.

=========================  ========================================  ==================================
hook                       installed by                              for
=========================  ========================================  ==================================
logging record factory     :func:`flame.redact.install_redaction`    tokens redacted from every record
                                                                     of the ``flame`` loggers
``sys.excepthook``         ``FlameCoreSDK`` on a FLAME node          an uncaught exception ends the node
                                                                     as ``failed`` (:func:`crashed`)
``atexit``                 ``FlameCoreSDK`` on a FLAME node          the node ends as the analysis left
                                                                     it when the script returns
context variables          :class:`ContextHook` instances:           a local runner hands ``flame.run``
                           ``flame.run``'s run hook,                 or ``FlameCoreSDK()`` its node
                           ``FlameCoreSDK``'s node factory           instead of the environment's
=========================  ========================================  ==================================

Installing is idempotent and each install has its removal. A removed hook that something else wrapped
meanwhile (so it cannot be taken out of the chain) stays in place, inert: it only calls the one it
wrapped.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_lock = threading.RLock()


class _Chain(Generic[F]):
    """A global callable slot (``sys.excepthook``, the record factory) that ours wraps, removably."""

    def __init__(self, get: Callable[[], F], put: Callable[[F], None]) -> None:
        self._get, self._put = get, put
        self._ours: F | None = None
        self._previous: F | None = None
        self._active: list[bool] = [False]

    @property
    def installed(self) -> bool:
        return self._ours is not None

    def install(self, make: Callable[[F], F]) -> bool:
        """Put ``make(previous)`` in the slot (it calls ``previous`` itself); False if installed already."""
        with _lock:
            if self._ours is not None:
                return False
            previous = self._get()
            hook = make(previous)
            active = [True]

            def ours(*args: Any, **kwargs: Any) -> Any:
                return (hook if active[0] else previous)(*args, **kwargs)

            self._ours, self._previous, self._active = ours, previous, active  # type: ignore[assignment]
            self._put(ours)  # type: ignore[arg-type]
            return True

    def remove(self) -> bool:
        """Take ours out (inert if something wrapped it since); False if it was not installed."""
        with _lock:
            if self._ours is None:
                return False
            self._active[0] = False
            if self._get() is self._ours:
                assert self._previous is not None
                self._put(self._previous)
            self._ours = self._previous = None
            return True


# -- the logging record factory ------------------------------------------------------------------------

RecordFactory = Callable[..., logging.LogRecord]
_record_factory: _Chain[RecordFactory] = _Chain(logging.getLogRecordFactory, logging.setLogRecordFactory)


def install_record_factory(make: Callable[[RecordFactory], RecordFactory]) -> bool:
    """Wrap the logging record factory with ``make(previous)``; False (nothing changes) if done before."""
    return _record_factory.install(make)


def remove_record_factory() -> bool:
    """Undo :func:`install_record_factory`; False if it was not installed."""
    return _record_factory.remove()


# -- sys.excepthook: crash detection --------------------------------------------------------------------

ExceptHook = Callable[..., Any]
_excepthook: _Chain[ExceptHook] = _Chain(
    lambda: sys.excepthook, lambda hook: setattr(sys, "excepthook", hook)
)
_crashed = threading.Event()


def watch_crashes() -> threading.Event:
    """Record an uncaught exception of the main thread (``sys.excepthook``); the event it sets.

    The hook in place before still runs (it prints the traceback). Idempotent.
    """

    def make(previous: ExceptHook) -> ExceptHook:
        def hook(*args: Any) -> Any:
            _crashed.set()
            return previous(*args)

        return hook

    _excepthook.install(make)
    return _crashed


def crashed() -> bool:
    """Whether an uncaught exception reached ``sys.excepthook`` since :func:`watch_crashes`."""
    return _crashed.is_set()


def unwatch_crashes() -> bool:
    """Undo :func:`watch_crashes` and forget a crash seen; False if it was not installed."""
    with _lock:
        _crashed.clear()
        return _excepthook.remove()


# -- atexit -----------------------------------------------------------------------------------------------

_at_exit: list[Callable[[], object]] = []


def at_exit(callback: Callable[[], object]) -> bool:
    """Call ``callback`` at interpreter exit (once, however often registered); False if registered."""
    with _lock:
        if any(c == callback for c in _at_exit):
            return False
        _at_exit.append(callback)
        atexit.register(callback)
        return True


def cancel_at_exit(callback: Callable[[], object]) -> bool:
    """Undo :func:`at_exit`; False if ``callback`` was not registered."""
    with _lock:
        for i, registered in enumerate(_at_exit):
            if registered == callback:
                del _at_exit[i]
                atexit.unregister(callback)
                return True
        return False


# -- context variables ------------------------------------------------------------------------------------


class ContextHook(Generic[T]):
    """A context variable through which a local runner replaces what code would take from the environment.

    Unset (None) on a FLAME node. Set it for the code of one node (a thread, a task) with :meth:`using`
    or :meth:`set` / :meth:`reset`; threads and tasks started there inherit it.
    """

    registry: ClassVar[dict[str, ContextHook[Any]]] = {}

    def __init__(self, name: str, doc: str) -> None:
        if name in ContextHook.registry:
            raise ValueError(f"a context hook named {name!r} exists already")
        self.name = name
        self.__doc__ = doc
        self._var: contextvars.ContextVar[T | None] = contextvars.ContextVar(name, default=None)
        ContextHook.registry[name] = self

    def get(self) -> T | None:
        return self._var.get()

    def set(self, value: T | None) -> contextvars.Token[T | None]:
        return self._var.set(value)

    def reset(self, token: contextvars.Token[T | None]) -> None:
        self._var.reset(token)

    @contextlib.contextmanager
    def using(self, value: T | None) -> Iterator[None]:
        """Set the hook for the code inside the ``with`` block."""
        token = self._var.set(value)
        try:
            yield
        finally:
            self._var.reset(token)

    def __repr__(self) -> str:
        return f"ContextHook({self.name!r}, value={self.get()!r})"


__all__ = [
    "ContextHook",
    "at_exit",
    "cancel_at_exit",
    "crashed",
    "install_record_factory",
    "remove_record_factory",
    "unwatch_crashes",
    "watch_crashes",
]

"""Keeping the cycle collector's full collections short while a node runs.

Python's cycle collector now and then runs a full collection, which visits every container object
the process holds. After start-up a node process holds some 70,000 of them (httpx, uvicorn, numpy and
the SDK's own modules, the node's clients), and a full collection then stops the event loop for
40 to 80 ms: the slowest of a node's message round trips were exactly these pauses, in the sender,
the receiver or the stack.

So while nodes run, what existed when each of them had started is exempt from collections
(``gc.freeze``: the collector's permanent generation, which no collection visits); objects made
afterwards (an analysis' data, messages) are collected as before. When the last node of the process
stops, everything is handed back to the collector (``gc.unfreeze``): cyclic garbage that was frozen
meanwhile is reclaimed then, and a process that runs one federation after another (a notebook) keeps
nothing of the earlier ones. A process that disabled the collector, or froze objects itself, is left
alone.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
#: nodes of this process that are running (started, not yet stopped)
_running = 0
#: whether this module froze the objects now frozen (and so unfreezes them)
_froze = False


def node_started() -> None:
    """A node started: the objects alive now are exempt from collections until the last node stops."""
    global _running, _froze
    with _lock:
        _running += 1
        if _running == 1 and gc.isenabled() and gc.get_freeze_count() == 0:
            gc.collect(1)  # the young generations first: what survives them is long-lived
            gc.freeze()
            _froze = True
        elif _froze:
            gc.freeze()  # a further node of the process (a local federation): its start-up state too


def node_stopped() -> None:
    """A node stopped; after the last one the collector visits every object again."""
    global _running, _froze
    with _lock:
        _running = max(_running - 1, 0)
        if _running == 0 and _froze:
            gc.unfreeze()
            _froze = False


def running_nodes() -> int:
    """How many nodes of this process are running (for tests and diagnostics)."""
    return _running


__all__ = ["node_started", "node_stopped", "running_nodes"]

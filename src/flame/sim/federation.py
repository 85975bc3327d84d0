"""A whole federation on one machine: every node's runtime and analysis against the emulated stack.

All nodes share the caller's event loop (fast: in-process transport; served: real HTTP on loopback);
the author's analyze/aggregate code runs in worker threads. A node restarted by the stack (fault
injection or the pod orchestrator) loses its runtime and its analyzer/aggregator objects, exactly as
a pod does, and starts afresh from the same analysis file: it resumes from its checkpoint.

Incarnations: every start of a node is one incarnation, reported to the pod orchestrator
(:meth:`~flame.sim.po.PodOrchestrator.incarnation_started` / ``incarnation_ended``). A restart stops
the old incarnation (cancelled, its clean-up bounded) before it starts the next, under the node's
incarnation lock, so a node never runs twice; a restart before the node was launched changes only
the environment it is launched with.

The run ends when its outcome is decided, which :meth:`Federation.run` learns from the orchestrator's
change events, not from timeouts: every node's incarnation ended, or a node failed (a start-up
error, an analysis error, the orchestrator's verdict) in a way the protocol cannot recover from (the
aggregator, or more analysis nodes than the quorum spares). The other nodes then get
:data:`SETTLE_SECONDS` to end on their own (an aggregator that failed tells them), and are stopped.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flame.errors import FlameError, FlameTimeoutError
from flame.federated import Aggregator, Analyzer, FederationOptions, run_node
from flame.federated.failures import describe_failure
from flame.node.runtime import AsyncNode
from flame.sim.launch import Mode, start_node
from flame.sim.node import SimNode
from flame.sim.stack import FlameStack
from flame.waits import bounded

#: Once a failure decided the run: how long the other nodes get to end on their own (seconds).
SETTLE_SECONDS = 2.0
#: How long a restart waits for the old incarnation to stop before it gives the node up (seconds).
STOP_TIMEOUT = 10.0
#: Shutdown timeout (log flush, unsubscribe) of an incarnation whose pod was stopped (seconds).
STOPPED_SHUTDOWN = 0.1


def cannot_finish(stack: FlameStack, options: FederationOptions, failed: Iterable[str]) -> str | None:
    """Why the federation can no longer succeed with the ``failed`` nodes, or None while it still can."""
    lost_nodes = set(failed)
    if not lost_nodes:
        return None
    aggregator = next(name for name, node in stack.nodes.items() if node.role == "aggregator")
    if aggregator in lost_nodes:
        return f"the aggregator ({aggregator}) failed"
    contributors = [
        name
        for name, node in stack.nodes.items()
        if node.role == "default" or (node.role == "aggregator" and options.aggregator_analyses)
    ]
    required = options.required(len(contributors))
    lost = sorted(lost_nodes & set(contributors))
    if len(contributors) - len(lost) < required:
        return (
            f"{len(lost)} analysis node(s) failed ({', '.join(lost)}): {required} of {len(contributors)} "
            "are needed for the quorum"
        )
    return None


@dataclass
class NodeOutcome:
    """How one node's analysis ended."""

    name: str
    role: str
    status: str = "starting"
    result: Any = None
    error: str | None = None
    incarnations: int = 0


@dataclass
class FederationRun:
    """The outcome of a local federation."""

    outcomes: dict[str, NodeOutcome]
    final_results: dict[str, bytes]
    seconds: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    #: why the run stopped the nodes still running, when a failure decided it (None: every node ended)
    stopped: str | None = None
    #: the aggregator's warnings (``max_rounds`` reached without convergence, ...)
    warnings: list[str] = field(default_factory=list)
    #: how the aggregator's rounds ended: "not-iterative", "running", "converged" or "max-rounds"
    convergence: str | None = None

    @property
    def ok(self) -> bool:
        """True when every node ended ``executed`` and a final result reached the hub."""
        return bool(self.final_results) and all(o.status == "executed" for o in self.outcomes.values())

    @property
    def result(self) -> Any:
        """The aggregator's final result (as returned by its ``final_result``)."""
        return next((o.result for o in self.outcomes.values() if o.role == "aggregator"), None)

    def report(self) -> dict[str, Any]:
        """A JSON-ready run report: timings, statuses, rounds, messages, retries, faults."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "nodes": {
                name: {"role": o.role, "status": o.status, "error": o.error, "incarnations": o.incarnations}
                for name, o in self.outcomes.items()
            },
            "rounds": self.rounds,
            "final_results": {name: len(data) for name, data in self.final_results.items()},
            "events": self.events,
            "warnings": self.warnings,
            "convergence": self.convergence,
            **({"stopped": self.stopped} if self.stopped is not None else {}),
        }


class Federation:
    """Runs one analysis (an analyzer and an aggregator) on every node of a stack."""

    def __init__(
        self,
        stack: FlameStack,
        analyzer: Analyzer | type[Analyzer],
        aggregator: Aggregator | type[Aggregator],
        options: FederationOptions | None = None,
        *,
        mode: Mode = "inprocess",
        node_kwargs: dict[str, Any] | None = None,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self.stack = stack
        self._analyzer = analyzer
        self._aggregator = aggregator
        self.options = options or FederationOptions()
        self.mode = mode
        self.node_kwargs = node_kwargs or {}
        self.settle = settle
        self.outcomes = {name: NodeOutcome(name, node.role) for name, node in stack.nodes.items()}
        self.runtimes: dict[str, AsyncNode] = {}
        self.aggregators: list[Aggregator] = []
        #: why the run stopped the nodes still running (None: it ended by itself)
        self.stopped: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: incarnations being stopped by a restart or by the end of the run, and the reason
        self._stopping: dict[asyncio.Task[None], str] = {}
        #: incarnations in their clean-up (not cancelled again), and nodes in the middle of a restart
        self._cleaning: set[asyncio.Task[None]] = set()
        self._restarting: set[str] = set()
        #: set once the run is ending: a restart then starts no new incarnation
        self._closing = False
        self._changed = asyncio.Event()
        stack.on_restart(self._restarted)
        stack.on_stop(self._pod_stopped)

    def _fresh(self, obj: Any) -> Any:
        return obj() if isinstance(obj, type) else copy.deepcopy(obj)

    async def run(self, timeout: float | None = None) -> FederationRun:
        """Start every node, wait until the outcome is decided (bounded by ``timeout``), return it."""
        started = time.monotonic()
        await self.stack.start()
        # no await between the launches: a restart (even one timed at 0) finds every node launched
        for name in self.stack.nodes:
            if name not in self._tasks:
                self._launch(name)
        try:
            reason = await bounded(self._until_decided(), timeout)
        except asyncio.CancelledError:
            self._closing = True  # whoever cancelled the run stops its nodes; no restart starts one
            raise
        except asyncio.TimeoutError:
            self._closing = True
            waiting = [n for n, t in self._tasks.items() if not t.done()]
            await self._stop_all(f"the federation did not finish within {timeout or 0.0:g} s")
            raise FlameTimeoutError("the federation to finish", timeout or 0.0, waiting) from None
        self._closing = True
        if reason is not None:
            self.stopped = reason
            pending = [t for t in self._tasks.values() if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.settle)
            await self._stop_all(reason)
        self._adopt_verdicts()
        return FederationRun(
            outcomes=self.outcomes,
            final_results=await self.stack.final_results(),
            seconds=time.monotonic() - started,
            rounds=self._rounds(),
            events=dict(sorted(Counter(e.kind for e in self.stack.events).items())),
            stopped=self.stopped,
            warnings=[w for a in self.aggregators for w in getattr(a, "warnings", [])],
            convergence=getattr(self.aggregators[-1], "convergence", None) if self.aggregators else None,
        )

    def _rounds(self) -> list[dict[str, Any]]:
        """The rounds of every aggregator incarnation (a restarted one reports only its own), in order.

        A round an incarnation redid after a restart replaces the earlier entry; an incarnation that
        never started its protocol has no rounds.
        """
        by_round: dict[int, dict[str, Any]] = {}
        for aggregator in self.aggregators:
            for entry in getattr(aggregator, "rounds", []):
                by_round[entry["round"]] = entry
        return [by_round[r] for r in sorted(by_round)]

    async def _until_decided(self) -> str | None:
        """Until the outcome is decided: None when every node's incarnation ended, else the failure.

        Wakes only when an incarnation ends or starts (``_changed``) or the set of failed nodes
        changes: not on every log line, and without waiting on every node's task each time (at 1,000
        nodes that was a fifth of the loop's time).
        """
        po = self.stack.po
        while True:
            self._changed.clear()
            seen = po.failures
            reason = cannot_finish(self.stack, self.options, po.failed())
            if reason is not None:
                return reason
            if not self._restarting and all(t.done() for t in self._tasks.values()):
                return None
            changed = asyncio.ensure_future(self._changed.wait())
            po_changed = asyncio.ensure_future(po.wait_failures_changed(seen))
            try:
                await asyncio.wait([changed, po_changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (changed, po_changed):
                    waiter.cancel()
                await asyncio.gather(changed, po_changed, return_exceptions=True)

    def _adopt_verdicts(self) -> None:
        """Nodes the orchestrator marked failed end ``failed`` with its reason."""
        for name, why in self.stack.po.failed().items():
            outcome = self.outcomes[name]
            if outcome.status != "executed":
                outcome.status = "failed"
                outcome.error = outcome.error or why

    def _launch(self, name: str) -> None:
        task = self._tasks[name] = asyncio.ensure_future(self._run_node(name))
        task.add_done_callback(lambda _: self._changed.set())
        self._changed.set()

    def _stop(self, task: asyncio.Task[None], reason: str) -> None:
        """Begin to stop an incarnation (its pod is gone): shorten its clean-up, cancel it."""
        self._stopping.setdefault(task, reason)
        for name, current in self._tasks.items():
            runtime = self.runtimes.get(name)
            if current is task and runtime is not None:
                runtime.timeouts = dataclasses.replace(
                    runtime.timeouts, shutdown=min(runtime.timeouts.shutdown, STOPPED_SHUTDOWN)
                )
        if task not in self._cleaning:
            task.cancel()

    async def _stop_and_wait(self, task: asyncio.Task[None], reason: str, timeout: float) -> bool:
        """Stop an incarnation and wait until it ended (at most ``timeout``); whether it did.

        Cancelling once is not enough: a cancellation that arrives just as an ``asyncio.wait_for`` in
        code the runtime awaits (a library's; the runtime's own waits use :func:`flame.waits.bounded`)
        completes is lost (Python < 3.12), so it is repeated each second until the incarnation is in
        its clean-up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stop(task, reason)
        while not task.done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait([task], timeout=min(1.0, left))
            if not task.done() and task not in self._cleaning:
                task.cancel()
        return True

    async def _stop_all(self, reason: str) -> None:
        pending = [t for t in self._tasks.values() if not t.done()]
        await asyncio.gather(*(self._stop_and_wait(t, reason, STOP_TIMEOUT) for t in pending))

    async def _run_node(self, name: str) -> None:
        me = asyncio.current_task()
        assert me is not None
        po = self.stack.po
        outcome = self.outcomes[name]
        outcome.incarnations += 1
        outcome.status, outcome.error, outcome.result = "starting", None, None
        incarnation = po.incarnation_started(name)
        try:
            # the author's objects are made as the container starts: an error here is a start-up error
            analyzer, aggregator = self._fresh(self._analyzer), self._fresh(self._aggregator)
            if outcome.role == "aggregator":
                self.aggregators.append(aggregator)
            node = await start_node(self.stack, name, self.mode, **self.node_kwargs)
        except asyncio.CancelledError:
            # stopped by a restart or by this run (which says why); cancelled from outside, the caller does
            reason = self._stopping.get(me)
            if reason is not None:
                outcome.status, outcome.error = "stopped", f"stopped at start-up: {reason}"
            po.incarnation_ended(name, incarnation, status="stopped", stopped=True)
            raise
        except Exception as exc:  # FlameError, or anything else: not lost, the outcome says it
            text = str(exc) if isinstance(exc, FlameError) else f"{type(exc).__name__}: {exc}"
            outcome.status, outcome.error = "failed", f"start-up: {text}"
            po.incarnation_ended(
                name, incarnation, status="failed", error=outcome.error, stopped=me in self._stopping
            )
            return
        self.runtimes[name] = node
        result: Any = None
        error: str | None = None
        cancelled = False
        try:
            result = await run_node(node, analyzer, aggregator, self.options)
        except FlameError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            cancelled = True
            reason = self._stopping.get(me)
            error = f"stopped: {reason}" if reason is not None else None
            raise
        except Exception as exc:
            error = f"the analysis code raised {describe_failure(exc)}"
        finally:
            self._cleaning.add(me)
            if me in self._stopping:
                # the pod was killed: no flushing logs through its dead sidecar for the full timeout
                node.timeouts = dataclasses.replace(
                    node.timeouts, shutdown=min(node.timeouts.shutdown, STOPPED_SHUTDOWN)
                )
            outcome.result, outcome.error, outcome.status = result, error, node.status
            try:
                await node.stop()
            finally:
                self._cleaning.discard(me)
                if self.runtimes.get(name) is node:
                    del self.runtimes[name]
                po.incarnation_ended(
                    name,
                    incarnation,
                    status=node.status,
                    error=error,
                    stopped=cancelled or me in self._stopping,
                )

    async def _pod_stopped(self, node: SimNode, reason: str) -> None:
        """The orchestrator stopped the node's pod: its incarnation ends (bounded), none follows."""
        task = self._tasks.get(node.name)
        if task is not None and not task.done():
            await self._stop_and_wait(task, reason, STOP_TIMEOUT)

    async def _restarted(self, node: SimNode, env: dict[str, str]) -> None:
        """The pod was restarted (under the node's incarnation lock): stop the old incarnation, start anew.

        As on FLAME, the old pod is gone before the new one starts; its clean-up is bounded (it
        does not wait out its shutdown timeout to flush logs through its dead sidecar). A node not
        launched yet is launched later with the new environment.
        """
        name = node.name
        task = self._tasks.get(name)
        if task is None or self._closing:
            return
        self._restarting.add(name)
        try:
            reason = f"pod restarted ({node.deployment_name})"
            if not task.done() and not await self._stop_and_wait(task, reason, STOP_TIMEOUT):
                outcome = self.outcomes[name]
                outcome.status = "failed"
                outcome.error = f"the previous incarnation did not stop within {STOP_TIMEOUT:g} s"
                self.stack.po.incarnation_ended(
                    name, self.stack.po.record(name).incarnation, status="failed", error=outcome.error
                )
                return
            if not self._closing:
                self._launch(name)
        finally:
            self._restarting.discard(name)
            self._changed.set()


async def run_federation(
    stack: FlameStack,
    analyzer: Analyzer | type[Analyzer],
    aggregator: Aggregator | type[Aggregator],
    options: FederationOptions | None = None,
    *,
    mode: Mode = "inprocess",
    timeout: float | None = None,
    **node_kwargs: Any,
) -> FederationRun:
    """Run the analysis on every node of ``stack`` and wait for the end (see :class:`Federation`)."""
    if mode == "served" and stack.base_url is None:
        await stack.serve()
    return await Federation(stack, analyzer, aggregator, options, mode=mode, node_kwargs=node_kwargs).run(
        timeout
    )

"""A whole federation on one machine: every node's runtime and analysis against the emulated stack.

All nodes share the caller's event loop (fast: in-process transport; served: real HTTP on loopback);
the author's analyze/aggregate code runs in worker threads. A node restarted by the stack (fault
injection or the pod orchestrator) loses its runtime and its analyzer/aggregator objects, exactly as
a pod does, and starts afresh from the same analysis file: it resumes from its checkpoint.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flame.errors import FlameError, FlameTimeoutError
from flame.federated import Aggregator, Analyzer, FederationOptions, run_node
from flame.node.runtime import AsyncNode
from flame.sim.launch import Mode, start_node
from flame.sim.node import SimNode
from flame.sim.stack import FlameStack


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
    ) -> None:
        self.stack = stack
        self._analyzer = analyzer
        self._aggregator = aggregator
        self.options = options or FederationOptions()
        self.mode = mode
        self.node_kwargs = node_kwargs or {}
        self.outcomes = {name: NodeOutcome(name, node.role) for name, node in stack.nodes.items()}
        self.runtimes: dict[str, AsyncNode] = {}
        self.aggregators: list[Aggregator] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: incarnations replaced by a restart (until they ended), and the tasks that end them
        self._replaced: set[asyncio.Task[None]] = set()
        self._cleaning: set[asyncio.Task[None]] = set()
        self._reapers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        stack.on_restart(self._restarted)

    def _fresh(self, obj: Any) -> Any:
        return obj() if isinstance(obj, type) else copy.deepcopy(obj)

    async def run(self, timeout: float | None = None) -> FederationRun:
        """Start every node, wait until all ended (bounded by ``timeout``), return the outcome."""
        started = time.monotonic()
        await self.stack.start()
        for name in self.stack.nodes:
            self._launch(name)
        try:
            await asyncio.wait_for(self._wait_all(), timeout)
        except asyncio.TimeoutError:
            waiting = [n for n, t in self._tasks.items() if not t.done()]
            tasks = [*self._tasks.values(), *self._replaced, *self._reapers]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise FlameTimeoutError("the federation to finish", timeout or 0.0, waiting) from None
        # replaced incarnations end within their (shortened) shutdown timeout
        await asyncio.gather(*self._reapers, return_exceptions=True)
        return FederationRun(
            outcomes=self.outcomes,
            final_results=await self.stack.final_results(),
            seconds=time.monotonic() - started,
            rounds=self._rounds(),
            events=dict(sorted(Counter(e.kind for e in self.stack.events).items())),
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

    async def _wait_all(self) -> None:
        """Until the current incarnation of every node ended (a restart replaces what to wait for)."""
        while True:
            self._changed.clear()
            current = [t for t in self._tasks.values() if not t.done()]
            if not current:
                return
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait([*current, changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()

    def _launch(self, name: str) -> None:
        self._tasks[name] = asyncio.ensure_future(self._run_node(name))
        self._changed.set()

    async def _run_node(self, name: str) -> None:
        me = asyncio.current_task()
        outcome = self.outcomes[name]
        outcome.incarnations += 1
        outcome.status, outcome.error = "starting", None
        analyzer, aggregator = self._fresh(self._analyzer), self._fresh(self._aggregator)
        if outcome.role == "aggregator":
            self.aggregators.append(aggregator)
        try:
            node = await start_node(self.stack, name, self.mode, **self.node_kwargs)
        except Exception as exc:  # FlameError, or anything else: not lost, the outcome says it
            if me not in self._replaced:
                text = str(exc) if isinstance(exc, FlameError) else f"{type(exc).__name__}: {exc}"
                outcome.status, outcome.error = "failed", f"start-up: {text}"
            return
        if me not in self._replaced:
            self.runtimes[name] = node
        result: Any = None
        error: str | None = None
        try:
            result = await run_node(node, analyzer, aggregator, self.options)
        except FlameError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            error = f"the analysis code raised {type(exc).__name__}: {exc}"
        finally:
            if me is not None:
                self._cleaning.add(me)
            if me not in self._replaced:
                outcome.result, outcome.error, outcome.status = result, error, node.status
            else:
                # a replaced incarnation no longer speaks for the node; its pod was killed, so it does
                # not spend the shutdown timeout flushing logs through its dead sidecar
                node.timeouts = dataclasses.replace(node.timeouts, shutdown=min(node.timeouts.shutdown, 0.1))
            await node.stop()
            if me is not None:
                self._cleaning.discard(me)

    async def _restarted(self, node: SimNode, env: dict[str, str]) -> None:
        # The pod is gone: the new one starts now, as on FLAME, not after the old runtime's clean-up
        # (which waits up to its shutdown timeout to flush logs through the old, dead sidecar).
        task = self._tasks.get(node.name)
        if task is not None and not task.done():
            self._replaced.add(task)
            task.add_done_callback(self._replaced.discard)
            reaper = asyncio.ensure_future(self._reap(task))
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
        self._launch(node.name)

    async def _reap(self, task: asyncio.Task[None]) -> None:
        """End a replaced incarnation: cancel it, again each second until it is cleaning up.

        Cancelling once is not enough: a cancellation that arrives just as an ``asyncio.wait_for``
        inside the runtime completes is lost (Python < 3.12), and the old incarnation would go on
        as a zombie, with the node's identity, until its own deadlines ran out.
        """
        while not task.done():
            if task not in self._cleaning:
                task.cancel()
            await asyncio.wait([task], timeout=1.0)


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

"""Analyses written for PrivateAIM's SDK on the emulated FLAME node stack: one thread per node.

:func:`run_star_nodes` runs one piece of code per node of a :class:`~flame.sim.stack.FlameStack`, each in
its own thread, with ``FlameCoreSDK()`` in that thread bound to that node's runtime (instead of the
environment). All node runtimes and the stack share one event loop on a
:class:`~flame.node.loop.LoopThread`, so the messages, acknowledgements, storage uploads and data reads
travel the same HTTP paths as on FLAME. :func:`run_star_script` runs an analysis script (``StarModel(...)``
at module level or in its ``if __name__ == "__main__":`` block) on every node, as each container would
run it; :func:`run_star_federation` is that run inside :func:`flame.simulate` (``flame sim`` of such a
script, and :class:`~flame.local.star_tester.StarModelTester`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import runpy
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flame.errors import FederationError, FlameError, FlameTimeoutError
from flame.node.loop import LoopThread
from flame.node.runtime import AsyncNode, Timeouts
from flame.node.status import FINAL_STATUSES
from flame.star.core_sdk import CompatRuntime, reset_node_factory, set_node_factory

if TYPE_CHECKING:
    from flame.local.loading import LoadedAnalysis
    from flame.sim.federation import FederationRun
    from flame.sim.node import NodeSpec
    from flame.sim.settings import StackSettings
    from flame.sim.stack import FlameStack

log = logging.getLogger(__name__)

Mode = Literal["inprocess", "served"]
#: Default bound of a whole local run (seconds); every wait inside is bounded on its own as well.
DEFAULT_RUN_TIMEOUT = 900.0
#: Seconds given to node threads to return once their run was aborted.
ABORT_GRACE = 10.0


@dataclass
class NodeOutcome:
    """How one node of a local run ended: its status, the error its code raised, what it returned."""

    name: str
    role: str
    node_id: str
    status: str = "starting"
    error: BaseException | None = None
    result: Any = None


@dataclass
class StarRun:
    """The outcome of a local run: per node, the final results at the hub, the stack's event counts."""

    outcomes: dict[str, NodeOutcome]
    final_results: dict[str, bytes]
    seconds: float
    events: dict[str, int] = field(default_factory=dict)
    #: the node whose code failed first (the others were stopped because of it)
    failed_first: str | None = None
    #: the run's bound ran out (the nodes still running were aborted)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Every node ended ``executed`` without an error, and a final result reached the hub."""
        return bool(self.final_results) and all(
            o.error is None and o.status == "executed" for o in self.outcomes.values()
        )

    @property
    def errors(self) -> dict[str, BaseException]:
        return {name: o.error for name, o in self.outcomes.items() if o.error is not None}

    def check(self) -> StarRun:
        """Raise the error of the node that failed first (the others were stopped because of it)."""
        errors = self.errors
        if errors:
            name = self.failed_first if self.failed_first in errors else next(iter(errors))
            error = errors[name]
            if len(errors) > 1:
                log.warning("other nodes failed as well: %s", ", ".join(n for n in errors if n != name))
            raise error
        if not self.final_results:
            raise FederationError("the analysis ended without a final result at the hub")
        return self

    def report(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "nodes": {
                name: {
                    "role": o.role,
                    "status": o.status,
                    "error": None if o.error is None else repr(o.error),
                }
                for name, o in self.outcomes.items()
            },
            "final_results": {name: len(data) for name, data in self.final_results.items()},
            "events": self.events,
        }


def run_star_nodes(
    stack: FlameStack,
    target: Callable[[str], Any],
    *,
    nodes: Sequence[str] | None = None,
    mode: Mode = "inprocess",
    loop: LoopThread | None = None,
    timeout: float = DEFAULT_RUN_TIMEOUT,
    timeouts: Timeouts | None = None,
    payload: str | None = None,
    data: Mapping[str, Mapping[str, Any]] | None = None,
) -> StarRun:
    """Run ``target(node_name)`` for every node (or those in ``nodes``) in its own thread.

    Every node's runtime is started on ``stack`` first (so no message is sent before every webhook is
    subscribed), then the threads run; in each, ``FlameCoreSDK()`` gets that node's runtime. ``data``
    maps node names to ``{"fhir": ...}``/``{"s3": ...}`` handed out verbatim by ``get_fhir_data``/
    ``get_s3_data``; ``payload`` is the payload mode of every node (``FLAME_COMPAT_PAYLOAD``).

    When a node's code raises, the other nodes are stopped at once (their pending calls raise) and the
    run ends; a node whose code returned without a final status waits (bounded) for the end of the
    analysis, then ends ``executed``. Without ``loop`` the stack is started on a new
    :class:`~flame.node.loop.LoopThread` and closed at the end; with ``loop`` (on which the stack runs)
    both are left running. Raises :class:`~flame.errors.FlameTimeoutError` only if the stack cannot be
    started; nodes still running after ``timeout`` are aborted and reported in the outcome.
    """
    from flame.sim.launch import start_node

    own_loop = loop is None
    lt = loop if loop is not None else LoopThread("flame-star-sim")
    started = time.monotonic()
    names = list(nodes) if nodes is not None else list(stack.nodes)
    outcomes = {n: NodeOutcome(n, stack.node(n).role, stack.node(n).node_id, "starting") for n in names}
    runtimes: dict[str, CompatRuntime] = {}
    node_kwargs: dict[str, Any] = {"timeouts": timeouts} if timeouts is not None else {}

    def restarted(sim_node: Any, env: dict[str, str]) -> None:
        runtime = runtimes.get(sim_node.name)
        if runtime is not None:
            reason = (
                f"node {sim_node.name} was restarted by the pod orchestrator; analyses written for "
                "PrivateAIM's SDK cannot resume after a restart"
            )
            for other in runtimes.values():
                other.abort(reason)

    try:
        lt.run(_prepare(stack, mode), 60.0, "starting the emulated node stack")
        stack.on_restart(restarted)

        async def start_all() -> list[AsyncNode]:
            return list(await asyncio.gather(*(start_node(stack, n, mode, **node_kwargs) for n in names)))

        started_nodes = lt.run(start_all(), 180.0, "starting the nodes")
        for name, node in zip(names, started_nodes, strict=True):
            runtimes[name] = CompatRuntime(
                node=node,
                loop=lt,
                owned=False,
                data=dict((data or {}).get(name, {})),
                payload=payload,
                label=f"{name}",
            )
        failed_first = _run_threads(names, runtimes, outcomes, target, lt, started + timeout)
        for name, runtime in runtimes.items():
            outcomes[name].status = runtime.node.status
        lt.run(_stop_all(list(runtimes.values())), 60.0, "stopping the nodes")
        final = _upload_order(stack, lt.run(stack.final_results(), 30.0, "reading the final results"))
        events = dict(sorted(Counter(e.kind for e in stack.events).items()))
        return StarRun(outcomes, final, time.monotonic() - started, events, failed_first)
    finally:
        if own_loop:
            try:
                if lt.is_running:
                    lt.run(_stop_all(list(runtimes.values())), 60.0, "stopping the nodes")
                    lt.run(stack.aclose(), 60.0, "closing the emulated node stack")
            finally:
                lt.stop()


def _upload_order(stack: FlameStack, final: dict[str, bytes]) -> dict[str, bytes]:
    """The final results in the order they were uploaded (default file names are random)."""
    order = [e.detail.get("filename") for e in stack.events.select("storage.final")]
    rank = {name: i for i, name in enumerate(order) if isinstance(name, str)}
    return dict(sorted(final.items(), key=lambda item: rank.get(item[0], len(rank))))


async def _prepare(stack: FlameStack, mode: Mode) -> None:
    await stack.start()
    if mode == "served" and stack.base_url is None:
        await stack.serve()


async def _stop_all(runtimes: list[CompatRuntime]) -> None:
    async def stop(node: AsyncNode) -> None:
        try:
            await node.stop()
        except Exception as exc:  # a node that cannot leave cleanly must not hide the run's outcome
            log.warning("stopping node %s failed: %s", node.node_id, exc)

    await asyncio.gather(*(stop(r.node) for r in runtimes))


def _run_threads(
    names: list[str],
    runtimes: dict[str, CompatRuntime],
    outcomes: dict[str, NodeOutcome],
    target: Callable[[str], Any],
    lt: LoopThread,
    deadline: float,
) -> str | None:
    """Run the node threads; returns the name of the node that failed first, if one did."""
    done: queue.Queue[str] = queue.Queue()

    def main(name: str) -> None:
        runtime = runtimes[name]

        def factory(aggregator_requires_data: bool, status_sync: tuple[str, ...]) -> CompatRuntime:
            runtime.node.status_sync = status_sync
            return runtime

        token = set_node_factory(factory)
        try:
            outcomes[name].result = target(name)
        except BaseException as exc:
            outcomes[name].error = exc
        finally:
            reset_node_factory(token)
            done.put(name)

    threads = [threading.Thread(target=main, args=(n,), name=f"flame-star-{n}", daemon=True) for n in names]
    for thread in threads:
        thread.start()
    pending = set(names)
    failed: str | None = None
    while pending:
        remaining = deadline - time.monotonic()
        if failed is not None:
            remaining = min(remaining, ABORT_GRACE)
        if remaining <= 0:
            break
        try:
            name = done.get(timeout=remaining)
        except queue.Empty:
            break
        pending.discard(name)
        runtime = runtimes[name]
        error = outcomes[name].error
        if error is not None:
            _end_node(lt, runtime, "failed", 0.0)
            if failed is None:
                failed = name
                log.error("node %s failed (%s: %s); stopping the others", name, type(error).__name__, error)
                for other in pending:
                    runtimes[other].abort(f"node {name} failed: {type(error).__name__}: {error}")
        elif failed is None:
            _end_node(lt, runtime, "executed", max(0.0, deadline - time.monotonic()))
    if pending:
        reason = "the local run timed out" if failed is None else f"node {failed} failed"
        for name in pending:
            runtimes[name].abort(reason)
            if outcomes[name].error is None and failed is None:
                outcomes[name].error = FlameTimeoutError(f"node {name} to finish", 0.0)
        for thread in threads:
            thread.join(ABORT_GRACE if thread.is_alive() else 0)
        for name in pending:
            _end_node(lt, runtimes[name], "failed", 0.0)
    return failed


def _end_node(
    lt: LoopThread, runtime: CompatRuntime, status: Literal["executed", "failed"], wait: float
) -> None:
    """Give a node a final status: ``failed``, or ``executed`` once the analysis ended (bounded wait)."""
    node = runtime.node

    async def end() -> None:
        if node.status in FINAL_STATUSES:
            return
        if status == "executed":
            bound = min(wait, node.timeouts.await_messages)
            ended = [
                asyncio.ensure_future(node.finished.wait()),
                asyncio.ensure_future(node.messenger.finished.wait()),
            ]
            try:
                await asyncio.wait(ended, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in ended:
                    task.cancel()
        node.set_status(status)

    if lt.is_running:
        try:
            lt.run(end(), wait + 30.0, f"ending node {node.node_id}")
        except FlameError as exc:
            log.warning("could not end node %s: %s", node.node_id, exc)


def run_star_script(
    path: str | Path,
    stack: FlameStack,
    *,
    nodes: Sequence[str] | None = None,
    mode: Mode = "inprocess",
    loop: LoopThread | None = None,
    timeout: float = DEFAULT_RUN_TIMEOUT,
    timeouts: Timeouts | None = None,
    payload: str | None = None,
    data: Mapping[str, Mapping[str, Any]] | None = None,
) -> StarRun:
    """Run an analysis script as ``__main__`` on every node of ``stack`` (see :func:`run_star_nodes`).

    The script is the container's entry point, unchanged: its ``if __name__ == "__main__":`` block
    constructs ``StarModel(...)`` (or uses ``FlameCoreSDK`` directly), which runs that node's side.
    """
    script = Path(path).resolve()
    if not script.is_file():
        raise FileNotFoundError(f"no analysis script at {script}")
    folder = str(script.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)

    def target(name: str) -> Any:
        return runpy.run_path(str(script), run_name="__main__")

    return run_star_nodes(
        stack,
        target,
        nodes=nodes,
        mode=mode,
        loop=loop,
        timeout=timeout,
        timeouts=timeouts,
        payload=payload,
        data=data,
    )


@dataclass(frozen=True)
class StarJob:
    """What PrivateAIM's tester hands to :func:`flame.simulate`: its nodes and the code each runs.

    ``target(node_name)`` runs in that node's thread with ``FlameCoreSDK()`` bound to the node (see
    :func:`run_star_nodes`); ``nodes`` are the stack's node specs, ``settings`` its timing.
    """

    target: Callable[[str], Any]
    nodes: Sequence[NodeSpec]
    settings: StackSettings | None = None
    name: str = "StarModelTester"


async def run_star_federation(
    stack: FlameStack, loaded: LoadedAnalysis, mode: Mode, timeout: float
) -> tuple[FederationRun, StarRun]:
    """A PrivateAIM-style run on every node of ``stack``: the tester's job, or the script of ``loaded``.

    Runs on a loop thread of its own, which starts and closes ``stack``; returns the run in the form of
    a ``flame.run`` federation (what the run report reads) and as the :class:`StarRun` itself.
    """
    job: StarJob | None = loaded.job
    if job is not None:
        star_run = await asyncio.to_thread(run_star_nodes, stack, job.target, mode=mode, timeout=timeout)
    else:
        assert loaded.path is not None
        star_run = await asyncio.to_thread(run_star_script, loaded.path, stack, mode=mode, timeout=timeout)
    star_run.timed_out = star_run.seconds >= timeout
    return federation_run(star_run), star_run


def federation_run(star_run: StarRun) -> FederationRun:
    """A :class:`StarRun` as the :class:`~flame.sim.federation.FederationRun` the run report reads."""
    from flame.sim.federation import FederationRun
    from flame.sim.federation import NodeOutcome as FederationOutcome

    outcomes = {
        name: FederationOutcome(
            name,
            outcome.role,
            status=outcome.status,
            error=None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}",
            incarnations=1,
        )
        for name, outcome in star_run.outcomes.items()
    }
    return FederationRun(
        outcomes=outcomes,
        final_results=star_run.final_results,
        seconds=star_run.seconds,
        events=star_run.events,
        stopped=None if star_run.failed_first is None else f"node {star_run.failed_first} failed",
    )


__all__ = [
    "NodeOutcome",
    "StarJob",
    "StarRun",
    "federation_run",
    "run_star_federation",
    "run_star_nodes",
    "run_star_script",
]

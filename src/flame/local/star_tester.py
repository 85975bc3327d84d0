"""Run analyses written for PrivateAIM's SDK locally, through the emulated FLAME node stack.

:func:`run_star_nodes` runs one piece of code per node of a :class:`~flame.sim.stack.FlameStack`, each in
its own thread, with ``FlameCoreSDK()`` in that thread bound to that node's runtime (instead of the
environment). All node runtimes and the stack share one event loop on a
:class:`~flame.node.loop.LoopThread`, so the messages, acknowledgements, storage uploads and data reads
travel the same HTTP paths as on FLAME. :func:`run_star_script` runs an analysis script (its
``if __name__ == "__main__":`` block constructs ``StarModel(...)``) on every node, as each container would
run it. :class:`StarModelTester` is PrivateAIM's tester on top: one analyzer per data split, one
aggregator, the splits handed to the analyzers verbatim.

The emulator (:mod:`flame.sim`) is imported only when one of these runs, never by the production path
(``StarModel`` on a FLAME node).
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

from flame import codec
from flame.errors import FederationError, FlameError, FlameTimeoutError
from flame.node.loop import LoopThread
from flame.node.runtime import AsyncNode, Timeouts
from flame.node.status import FINAL_STATUSES
from flame.star.aggregator import StarAggregator
from flame.star.analyzer import StarAnalyzer
from flame.star.core_sdk import NodeRuntime, reset_node_factory, set_node_factory
from flame.star.model import StarLocalDPModel, StarModel

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
    runtimes: dict[str, NodeRuntime] = {}
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
            runtimes[name] = NodeRuntime(
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


async def _stop_all(runtimes: list[NodeRuntime]) -> None:
    async def stop(node: AsyncNode) -> None:
        try:
            await node.stop()
        except Exception as exc:  # a node that cannot leave cleanly must not hide the run's outcome
            log.warning("stopping node %s failed: %s", node.node_id, exc)

    await asyncio.gather(*(stop(r.node) for r in runtimes))


def _run_threads(
    names: list[str],
    runtimes: dict[str, NodeRuntime],
    outcomes: dict[str, NodeOutcome],
    target: Callable[[str], Any],
    lt: LoopThread,
    deadline: float,
) -> str | None:
    """Run the node threads; returns the name of the node that failed first, if one did."""
    done: queue.Queue[str] = queue.Queue()

    def main(name: str) -> None:
        runtime = runtimes[name]

        def factory(aggregator_requires_data: bool, status_sync: tuple[str, ...]) -> NodeRuntime:
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
    lt: LoopThread, runtime: NodeRuntime, status: Literal["executed", "failed"], wait: float
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


class StarModelTester:
    """PrivateAIM's ``StarModelTester``: one analyzer per data split and one aggregator, run locally.

    Every node runs through the emulated node stack (messages, acknowledgements, storage, the final
    upload), while each analyzer receives its split **verbatim** as ``data``. ``node_roles`` optionally
    gives each split a role (``'default'`` or, for at most one split, ``'aggregator'``: that node
    aggregates, and no extra aggregator is added). With ``epsilon`` and ``sensitivity`` the local-DP
    model runs (the storage service adds the noise). The final result, as the hub received it, is
    written to ``result_filepath`` (files of ``multiple_results`` get ``_1``, ``_2``, ... before the
    extension) or printed. Returns when done; raises the first node's error if the analysis failed.

    After the run: ``latest_result`` (the aggregator's final result object), ``num_iterations``,
    ``converged``, ``final_results`` (file name -> bytes at the hub) and ``run``
    (:class:`StarRun`).
    """

    #: Bound of the whole local run (seconds).
    timeout: float = DEFAULT_RUN_TIMEOUT
    latest_result: Any = None
    num_iterations: int = 0
    converged: bool = False

    def __init__(
        self,
        data_splits: list[Any],
        analyzer: type[StarAnalyzer],
        aggregator: type[StarAggregator],
        data_type: Literal["fhir", "s3"],
        node_roles: list[str] | None = None,
        query: str | list[str] | None = None,
        simple_analysis: bool = True,
        output_type: Literal["str", "bytes", "pickle"] = "str",
        multiple_results: bool = False,
        analyzer_kwargs: dict[str, Any] | None = None,
        aggregator_kwargs: dict[str, Any] | None = None,
        epsilon: float | None = None,
        sensitivity: float | None = None,
        result_filepath: str | list[str] | None = None,
    ) -> None:
        from flame.sim.node import NodeSpec
        from flame.sim.settings import StackSettings

        if data_type not in ("fhir", "s3"):
            raise ValueError(f"data_type must be 'fhir' or 's3', got {data_type!r}")
        if not isinstance(data_splits, list | tuple) or not data_splits:
            raise ValueError("data_splits must be a non-empty list: one split per analysis node")
        roles = _roles(len(data_splits), node_roles)
        specs: list[NodeSpec] = []
        splits: dict[str, Any] = {}
        aggregator_name = "aggregator"
        for index, (split, role) in enumerate(zip(data_splits, roles, strict=True), start=1):
            name = f"node-{index}"
            if role == "aggregator":
                aggregator_name = name
            specs.append(NodeSpec(name, role="aggregator" if role == "aggregator" else "default"))
            splits[name] = split
        if "aggregator" not in roles:
            specs.insert(0, NodeSpec(aggregator_name, role="aggregator"))
        local_dp = epsilon is not None and sensitivity is not None

        def target(name: str) -> StarModel:
            test_kwargs: dict[str, Any] = {"node_name": name}
            if name in splits:
                test_kwargs[f"{data_type}_data"] = splits[name]
            if local_dp:
                return StarLocalDPModel(
                    analyzer,
                    aggregator,
                    data_type,
                    query,
                    simple_analysis,
                    output_type,
                    multiple_results,
                    analyzer_kwargs,
                    aggregator_kwargs,
                    epsilon,
                    sensitivity,
                    test_mode=True,
                    test_kwargs=test_kwargs,
                )
            return StarModel(
                analyzer,
                aggregator,
                data_type,
                query,
                simple_analysis,
                output_type,
                multiple_results,
                analyzer_kwargs,
                aggregator_kwargs,
                test_mode=True,
                test_kwargs=test_kwargs,
            )

        from flame.local.api import simulate

        job = StarJob(target, specs, StackSettings.fast(po_enabled=False))
        outcome = simulate(job, timeout=self.timeout)
        star_run: StarRun | None = outcome.outcome.star_run
        if star_run is None:  # the run was abandoned before its nodes reported
            raise FederationError("the local run did not finish: " + "; ".join(outcome.errors))
        self.run = star_run.check()
        self.final_results = self.run.final_results
        model = self.run.outcomes[aggregator_name].result
        node = model.node if isinstance(model, StarModel) else None
        if node is not None:
            self.latest_result = node.latest_result
            self.num_iterations = node.num_iterations
        self.converged = True
        self.result = self._hub_result(output_type)
        self.write_result(self.result, output_type, result_filepath, multiple_results)

    def _hub_result(self, output_type: str) -> Any:
        """The final result as the analyst downloads it (one value, or a list for several files)."""
        values: list[Any] = []
        for data in self.final_results.values():
            if output_type == "str":
                values.append(data.decode("utf-8", errors="replace"))
            elif output_type == "pickle":
                try:
                    values.append(codec.decode(data, allow_pickle=True))
                except FlameError:
                    values.append(self.latest_result)
            else:
                values.append(data)
        return values[0] if len(values) == 1 else values

    def write_result(
        self,
        result: Any,
        output_type: str,
        result_filepath: str | list[str] | None = None,
        multiple_results: bool = False,
    ) -> None:
        """Print the result, or write the hub's files to ``result_filepath``, as PrivateAIM's tester does.

        With ``multiple_results`` and several results, each gets its own line (``Final result_1: ...``)
        or file: ``result_filepath`` is then a list with one path per result, or one path that gets
        ``_1``, ``_2``, ... before its extension. A list of paths that does not match the number of
        results, or ``multiple_results`` with a single result, is warned about and written as one.
        """
        several = False
        if multiple_results:
            if not isinstance(result, list | tuple):
                print(
                    f"Warning: multiple_results=True, but the result is a {type(result).__name__}, not a "
                    "list or tuple; it is written as one result.",
                    flush=True,
                )
            elif isinstance(result_filepath, list) and len(result_filepath) != len(result):
                print(
                    f"Warning: {len(result_filepath)} result_filepath(s) for {len(result)} results; "
                    "multiple_results is ignored.",
                    flush=True,
                )
            else:
                several = True
        items = list(result) if several else [result]
        if result_filepath is None:
            for index, item in enumerate(items, 1):
                print(f"Final result_{index}: {item}" if several else f"Final result: {item}", flush=True)
            return
        if isinstance(result_filepath, list):
            paths = [Path(path) for path in result_filepath] if several else [Path(result_filepath[0])]
        elif several:
            paths = [_numbered(result_filepath, index) for index in range(1, len(items) + 1)]
        else:
            paths = [Path(result_filepath)]
        files = list(self.final_results.values())
        for index, (path, item) in enumerate(zip(paths, items, strict=False), 1):
            if len(files) == len(items):
                content = files[index - 1]  # the hub's file, as the analyst downloads it
            elif isinstance(item, bytes | bytearray):
                content = bytes(item)
            else:  # several files written as one: the aggregator's result object, as text
                whole = self.latest_result if self.latest_result is not None else item
                content = str(whole).encode("utf-8")
            path.write_bytes(content)
            label = f"Final result_{index}" if several else "Final result"
            print(f"{label} written to {path}", flush=True)


def _numbered(path: str, index: int) -> Path:
    """``result.txt`` -> ``result_1.txt`` (``result`` -> ``result_1``): one file per result."""
    stem, dot, extension = path.rpartition(".")
    if not dot or "/" in extension:
        return Path(f"{path}_{index}")
    return Path(f"{stem}_{index}.{extension}")


def _roles(count: int, node_roles: list[str] | None) -> list[str]:
    if node_roles is None:
        return ["default"] * count
    roles = list(node_roles)
    if len(roles) != count:
        raise ValueError(
            f"node_roles has {len(roles)} entries for {count} data splits; give one role per split"
        )
    unknown = [r for r in roles if r not in ("default", "aggregator")]
    if unknown:
        raise ValueError(f"node_roles: unknown role(s) {unknown}; use 'default' or 'aggregator'")
    if roles.count("aggregator") > 1:
        raise ValueError("node_roles: at most one split can be the aggregator")
    if roles.count("default") == 0:
        raise ValueError("node_roles: at least one split must be an analysis node ('default')")
    return roles


__all__ = [
    "NodeOutcome",
    "StarJob",
    "StarModelTester",
    "StarRun",
    "federation_run",
    "run_star_federation",
    "run_star_nodes",
    "run_star_script",
]

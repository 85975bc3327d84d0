"""One local run from its :class:`~flame.local.config.SimConfig`: stack, federation, bounds, outcome.

A federation that can no longer succeed (the aggregator failed, or too many analysis nodes failed for
the quorum) is stopped at once instead of waiting for the round deadline. ``config.timeout`` is a hard
limit of the whole run: at the deadline the nodes are stopped (tasks cancelled, processes terminated,
then killed), each shutdown step with a bound of its own, and the run ends with its outcome
(``"status": "timeout"``), a few seconds later at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from flame.disclosure.policy import policy_files
from flame.errors import ConfigurationError
from flame.federated import FederationOptions
from flame.local.config import CANCEL_GRACE, SHUTDOWN_GRACE, SimConfig, stack_settings, timeout_reason
from flame.local.inprocess import federation_rounds, mark_stopped, run_federation
from flame.local.loading import LoadedAnalysis
from flame.local.processes import (
    ProcessFederation,
    ProcessRecord,
    round_traffic,
    rounds_from_logs,
    run_processes,
)
from flame.local.report import SimOutcome, all_events, notable_events, run_errors, stack_info
from flame.local.splitting import count_node_folders, split_into
from flame.local.waiting import remaining, stop_tasks, within
from flame.sim.display import LinePrinter, LiveDisplay
from flame.sim.faults import FaultPlan, FaultSpecError, parse_faults
from flame.sim.federation import Federation, FederationRun, NodeOutcome
from flame.sim.stack import FlameStack


@dataclass(frozen=True)
class _About:
    """What a run is: its options, the analysis, the fault plan, when it started."""

    config: SimConfig
    loaded: LoadedAnalysis
    faults: FaultPlan
    started_at: str


@dataclass
class Progress:
    """What a run has set up so far: enough to stop it and report on it if it must be abandoned."""

    stack: FlameStack | None = None
    federation: Federation | None = None
    processes: ProcessFederation | None = None
    started: float = field(default_factory=time.monotonic)


async def execute(
    config: SimConfig,
    loaded: LoadedAnalysis,
    *,
    console: Console | None = None,
    live: bool = False,
) -> SimOutcome:
    """Run ``loaded`` as ``config`` says on a fresh emulated stack; shows progress on ``console`` if given.

    The one run behind :func:`flame.local.api.simulate_async` (and so ``flame sim``, ``flame demo``
    and the project template's test).

    ``config.timeout`` bounds the whole run, set-up included: at the deadline the federation is stopped
    (status ``timeout``); stopping its nodes and closing the stack get :data:`SHUTDOWN_GRACE` seconds
    more, and a run still not ended then is abandoned (its tasks cancelled, its processes killed) and
    reported as it stands. So this returns within ``timeout + SHUTDOWN_GRACE + 2 * CANCEL_GRACE``.
    Raises :class:`~flame.errors.ConfigurationError` for a fault plan naming a node the run does not
    have, before anything starts.
    """
    config.check()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    clock = time.monotonic()
    changes = dict(config.option_changes)
    if config.max_rounds is not None:
        changes["max_rounds"] = config.max_rounds
    loaded = loaded.with_options(**changes)
    timings = {"load": time.monotonic() - clock}
    faults = parse_faults(config.faults, seed=config.seed) if config.faults else FaultPlan(seed=config.seed)
    progress = Progress()
    tmp: str | None = None
    body: asyncio.Task[SimOutcome] | None = None
    try:
        clock = time.monotonic()
        data_root = config.data
        nodes = config.nodes
        if data_root is not None and nodes is None:
            nodes = count_node_folders(data_root) or 3
        nodes = nodes or 3
        if config.split is not None:
            tmp = tempfile.mkdtemp(prefix="flame-sim-data-")
            data_root = Path(tmp)
            sizes = split_into(data_root, config.split, nodes, config.seed)
            if console is not None:
                console.print(
                    f"split {config.split} across {nodes} nodes: {', '.join(map(str, sizes))}",
                    highlight=False,
                )
        if loaded.job is not None:  # PrivateAIM's tester: its own nodes, one per data split
            stack = FlameStack(
                loaded.job.nodes, seed=config.seed, faults=faults, settings=loaded.job.settings
            )
        else:
            stack = FlameStack.create(
                nodes, data_root=data_root, seed=config.seed, faults=faults, settings=stack_settings(config)
            )
        try:
            faults.validate(stack.nodes)
            stack.disclosure_policies.update(policy_files(config.policies, stack.nodes))
        except (FaultSpecError, ConfigurationError):
            await within(stack.aclose(), CANCEL_GRACE, None)
            raise
        progress.stack = stack
        timings["setup"] = time.monotonic() - clock
        about = _About(config, loaded, faults, started_at)
        body = asyncio.ensure_future(_simulate(stack, progress, deadline, timings, about, console, live))
        done, _ = await asyncio.wait({body}, timeout=remaining(deadline) + SHUTDOWN_GRACE)
        if body in done:
            return body.result()
        # the run did not end after its deadline and the grace to stop: abandon it as it stands
        await stop_tasks({body}, CANCEL_GRACE)
        if progress.processes is not None:
            progress.processes.kill_all()
        await within(stack.aclose(), CANCEL_GRACE, None)
        timings["run"] = time.monotonic() - clock - timings["setup"]
        timings["total"] = sum(timings.values())
        return _abandoned(progress, stack, timings, about)
    finally:
        if body is not None and not body.done():  # this run itself was cancelled (Ctrl-C)
            await stop_tasks({body}, CANCEL_GRACE)
            if progress.processes is not None:
                progress.processes.kill_all()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


async def _simulate(
    stack: FlameStack,
    progress: Progress,
    deadline: float,
    timings: dict[str, float],
    about: _About,
    console: Console | None,
    live: bool,
) -> SimOutcome:
    """The run of :func:`execute` on ``stack``, which it closes (bounded) at the end."""
    config, loaded = about.config, about.loaded
    clock = time.monotonic()
    records: dict[str, list[ProcessRecord]] = {}
    star_run: Any = None
    options = loaded.options
    # a PrivateAIM-style script in process: its runner starts and closes the stack on a loop of its own
    star = loaded.kind == "star" and config.mode != "processes"
    try:
        if not star:
            await stack.start()
        async with _display(stack, console, live, loaded, config, options) as printer:
            if config.mode == "processes":
                run, reason, records = await run_processes(stack, loaded, options, config, progress, deadline)
            elif star:
                from flame.local.star_runs import run_star_federation

                mode: Literal["inprocess", "served"] = "served" if config.mode == "served" else "inprocess"
                run, star_run = await run_star_federation(stack, loaded, mode, remaining(deadline))
                reason = timeout_reason(config) if star_run.timed_out else None
            else:
                run, reason = await run_federation(stack, loaded, options, config, progress, deadline)
            if printer is not None:
                printer.flush()
        info = stack_info(stack)
        notable = notable_events(stack)
        events = all_events(stack)
        traffic = round_traffic(stack)
        for entry in run.rounds:
            entry.setdefault("bytes", traffic.get(int(entry.get("round", 0))))
    finally:
        if not star:
            await within(stack.aclose(), SHUTDOWN_GRACE, None)
    timings["run"] = time.monotonic() - clock
    timings["total"] = sum(timings.values())
    return SimOutcome(
        config=config,
        loaded=loaded,
        run=run,
        stack_info=info,
        errors=run_errors(run, reason, stack),
        timings=timings,
        faults=about.faults,
        started_at=about.started_at,
        processes=records,
        notable_events=notable,
        events=events,
        stopped_reason=reason,
        timed_out=reason == timeout_reason(config),
        star_run=star_run,
    )


def _abandoned(
    progress: Progress,
    stack: FlameStack,
    timings: dict[str, float],
    about: _About,
) -> SimOutcome:
    """The outcome of a run that did not end by its deadline and was abandoned: what is known of it."""
    config = about.config
    reason = f"the run did not end within {config.timeout:g} s (--timeout) and was abandoned"
    rounds: list[dict[str, Any]] = []
    if progress.processes is not None:
        outcomes = progress.processes.outcomes(reason)
        rounds = rounds_from_logs(stack)
    elif progress.federation is not None:
        outcomes = progress.federation.outcomes
        rounds = federation_rounds(progress.federation)
    else:
        outcomes = {name: NodeOutcome(name, node.role) for name, node in stack.nodes.items()}
    mark_stopped(outcomes, reason)
    run = FederationRun(
        outcomes=outcomes,
        final_results={},
        seconds=time.monotonic() - progress.started,
        rounds=rounds,
        events=dict(sorted(Counter(e.kind for e in stack.events).items())),
    )
    return SimOutcome(
        config=config,
        loaded=about.loaded,
        run=run,
        stack_info=stack_info(stack),
        errors=run_errors(run, reason, stack),
        timings=timings,
        faults=about.faults,
        started_at=about.started_at,
        processes=progress.processes.records if progress.processes is not None else {},
        notable_events=notable_events(stack),
        events=all_events(stack),
        stopped_reason=reason,
        timed_out=True,
    )


@contextlib.asynccontextmanager
async def _display(
    stack: FlameStack,
    console: Console | None,
    live: bool,
    loaded: LoadedAnalysis,
    config: SimConfig,
    options: FederationOptions,
) -> AsyncIterator[LinePrinter | None]:
    if console is None:
        yield None
        return
    analysis_nodes = sum(node.role == "default" for node in stack.nodes.values())
    mode = {"inprocess": "in-process", "served": "served on loopback", "processes": "one process per node"}
    title = f"flame sim {loaded.label}: {analysis_nodes} nodes + aggregator, {mode[config.mode]}"
    if live:
        with LiveDisplay(stack, console, title=title, max_rounds=options.max_rounds):
            yield None
        return
    console.print(title, style="bold", highlight=False)
    printer = LinePrinter(stack, console)
    task = asyncio.ensure_future(printer.run())
    try:
        yield printer
    finally:
        printer.stop()
        _, pending = await asyncio.wait({task}, timeout=CANCEL_GRACE)
        await stop_tasks(pending, CANCEL_GRACE)


__all__ = ["Progress", "execute"]

"""In-process and served mode: every node's runtime on the caller's event loop, against the stack."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from flame.federated import FederationOptions
from flame.local.config import CANCEL_GRACE, SHUTDOWN_GRACE, SimConfig, node_kwargs, timeout_reason
from flame.local.loading import LoadedAnalysis
from flame.local.waiting import Watchdog, remaining, stop_tasks, within
from flame.node.status import FINAL_STATUSES
from flame.sim.federation import Federation, FederationRun, NodeOutcome
from flame.sim.stack import FlameStack

if TYPE_CHECKING:
    from flame.local.execution import Progress


def federation_rounds(federation: Federation) -> list[dict[str, Any]]:
    """Every aggregator incarnation's rounds, a redone round replacing the earlier entry (an incarnation
    stopped before its first round has no ``rounds`` yet)."""
    by_round = {
        entry["round"]: entry for agg in federation.aggregators for entry in getattr(agg, "rounds", [])
    }
    return [by_round[number] for number in sorted(by_round)]


def mark_stopped(outcomes: dict[str, NodeOutcome], reason: str) -> None:
    for outcome in outcomes.values():
        if outcome.status not in FINAL_STATUSES:
            outcome.error = outcome.error or f"stopped by the local run: {reason}"


async def run_federation(
    stack: FlameStack,
    loaded: LoadedAnalysis,
    options: FederationOptions,
    config: SimConfig,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> tuple[FederationRun, str | None]:
    """In-process or served mode; returns the run and why it was stopped early (None: it ended).

    A stopped run's nodes (every task the federation started) are cancelled and waited for at most
    :data:`SHUTDOWN_GRACE` seconds.
    """
    loop = asyncio.get_running_loop()
    if deadline is None:
        deadline = loop.time() + config.timeout
    mode: Literal["inprocess", "served"] = "served" if config.mode == "served" else "inprocess"
    if mode == "served":
        await stack.serve()
    before = asyncio.all_tasks()
    federation = Federation(
        stack, loaded.analyzer, loaded.aggregator, options, mode=mode, node_kwargs=node_kwargs(config)
    )
    if progress is not None:
        progress.federation = federation
    watchdog = Watchdog(stack, options)
    started = time.monotonic()
    run_task = asyncio.ensure_future(federation.run(None))
    watch_task = asyncio.ensure_future(watchdog.run())
    reason: str | None = None
    try:
        done, _ = await asyncio.wait(
            {run_task, watch_task}, timeout=remaining(deadline), return_when=asyncio.FIRST_COMPLETED
        )
        if run_task in done:
            return run_task.result(), None
        reason = watch_task.result() if watch_task in done else timeout_reason(config)
    finally:
        await stop_tasks({run_task, watch_task}, CANCEL_GRACE)
        ended = run_task.done() and not run_task.cancelled() and run_task.exception() is None
        if not ended:
            # the nodes: every task started since the federation began (runtimes, their analyses,
            # restarted incarnations); a node leaving its services gets a moment before a second cancel
            current = asyncio.current_task()
            started_tasks = {task for task in asyncio.all_tasks() - before if task is not current}
            await stop_tasks(started_tasks, SHUTDOWN_GRACE)
    mark_stopped(federation.outcomes, reason)
    return (
        FederationRun(
            outcomes=federation.outcomes,
            final_results=await within(stack.final_results(), CANCEL_GRACE, {}),
            seconds=time.monotonic() - started,
            rounds=federation_rounds(federation),
            events=dict(sorted(Counter(e.kind for e in stack.events).items())),
        ),
        reason,
    )

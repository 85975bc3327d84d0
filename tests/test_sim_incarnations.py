"""The orchestrator as the one place that knows every node's state: incarnations, start-up failures,
health checks with the real PO's rule.

- A node that fails at start-up is marked failed at once and the run ends within seconds when the
  protocol cannot go on without it (not at its timeout), with that node's error.
- An offline window shorter than the health-check window is bridged; a node that stays offline while
  executing is marked failed by the orchestrator, cleanly.
- A restart stops the old incarnation before it starts the next: never two incarnations of a node at
  once, also for a restart timed before the launch.

Uses the deterministic sum analysis of ``tests/test_federation.py``.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from flame.federated import FederationOptions
from flame.sim.events import Event
from flame.sim.faults import FaultPlan, NodeOffline, NodeRestart, ServiceOutage
from flame.sim.federation import run_federation
from flame.sim.launch import Mode
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.test_federation import (
    ALL3,
    FAST_TIMEOUTS,
    SLOW_ROUNDS,
    SumAggregator,
    SumAnalyzer,
    assert_all_executed,
    expected_total,
    final_value,
    new_stack,
    subclass,
)
from tests.test_federation import data_root as _data_root
from tests.test_federation import stacks as _stacks

data_root = _data_root  # the fixtures, by their names
stacks = _stacks


def _print_processes(processes: Any, stack: FlameStack) -> None:
    """What a hung process-mode run looked like (pytest shows it with the failure)."""
    for name, records in processes.records.items():
        for record in records:
            print(name, record.to_json())
            print("    " + "\n    ".join(record.tail))
    for event in stack.events:
        print(event)


def assert_one_incarnation_at_a_time(stack: FlameStack) -> dict[str, int]:
    """From the orchestrator's start/stop events: no node ever ran two incarnations; count them."""
    running: dict[str, int | None] = dict.fromkeys(stack.nodes)
    counts = dict.fromkeys(stack.nodes, 0)
    events: list[Event] = stack.events.select("po.incarnation")
    assert events, "no incarnation events"
    for event in events:
        assert event.kind != "po.incarnation.overlap", event
        name = event.node
        assert name is not None
        if event.kind == "po.incarnation.start":
            assert running[name] is None, (
                f"{name}: incarnation {event.detail} started while {running[name]} ran"
            )
            running[name] = event.detail["incarnation"]
            counts[name] += 1
        elif event.kind == "po.incarnation.stop":
            assert running[name] == event.detail["incarnation"], (name, event.detail, running[name])
            running[name] = None
    assert all(value is None for value in running.values()), running
    return counts


# -- start-up failures -------------------------------------------------------------------------------


async def test_aggregator_start_up_failure_ends_the_run_at_once(
    stacks: list[FlameStack], data_root: Path
) -> None:
    # the aggregator's broker answers 503 for longer than its start-up retries: without the
    # aggregator nothing can finish, and the analysis nodes would wait 2 * 5 + 60 s for an aggregate
    faults = FaultPlan([ServiceOutage("message-broker", 0.0, math.inf, node="aggregator")])
    stack = new_stack(stacks, data_root, faults=faults)
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=60, timeouts=FAST_TIMEOUTS)
    assert not run.ok
    # start-up gives up after 3 s (FAST_TIMEOUTS), then the others get 2 s to end by themselves: ~5 s;
    # not ended at once, the analysis nodes would wait 70 s (the run's timeout of 60 s would end it).
    # The bound lies far from both, so that a loaded machine does not reach it
    assert run.seconds < 3.0 + 2.0 + 15.0, run.report()
    aggregator = run.outcomes["aggregator"]
    assert aggregator.status == "failed"
    assert aggregator.error is not None and aggregator.error.startswith("start-up:"), aggregator.error
    assert stack.po.status("aggregator") == "failed"
    assert stack.po.record("aggregator").error == aggregator.error
    for name in ALL3:
        assert run.outcomes[name].status != "executed"
        assert "the aggregator (aggregator) failed" in (run.outcomes[name].error or ""), run.report()
    assert await stack.final_results() == {}
    assert run.stopped == "the aggregator (aggregator) failed" == run.report()["stopped"]
    assert_one_incarnation_at_a_time(stack)


async def test_analysis_node_start_up_failure_within_the_quorum_goes_on(
    stacks: list[FlameStack], data_root: Path
) -> None:
    faults = FaultPlan([ServiceOutage("message-broker", 0.0, math.inf, node="node-3")])
    stack = new_stack(stacks, data_root, faults=faults)
    options = FederationOptions(max_rounds=2, quorum=2, round_deadline=4.0, send_timeout=5.0)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=60, timeouts=FAST_TIMEOUTS)
    assert run.outcomes["node-3"].status == "failed"
    assert (run.outcomes["node-3"].error or "").startswith("start-up:")
    for name in ("aggregator", "node-1", "node-2"):
        assert run.outcomes[name].status == "executed", run.report()
    assert run.result == expected_total([["node-1", "node-2"]] * 2) == await final_value(stack)


class BrokenAnalyzer(SumAnalyzer):
    def __init__(self) -> None:
        raise RuntimeError("the analysis cannot load its model")


async def test_analysis_that_raises_when_made_ends_the_run_at_once(
    stacks: list[FlameStack], data_root: Path
) -> None:
    # every analysis node's analysis raises as it is created (as a file that raises at import)
    stack = new_stack(stacks, data_root)
    options = FederationOptions(max_rounds=2, round_deadline=30.0, send_timeout=5.0)
    run = await run_federation(
        stack, BrokenAnalyzer, SumAggregator, options, timeout=60, timeouts=FAST_TIMEOUTS
    )
    assert not run.ok
    assert run.seconds < 10.0, run.report()  # the aggregator alone would wait 30 s for round 1
    for name in ALL3:
        assert run.outcomes[name].status == "failed"
        assert "cannot load its model" in (run.outcomes[name].error or ""), run.report()
        assert "cannot load its model" in (stack.po.record(name).error or "")


# -- offline windows and the orchestrator's health rule ----------------------------------------------


def _offline_at_round(stack: FlameStack, node: str, round_: int, seconds: float) -> type:
    """An analyzer whose ``node`` goes offline for ``seconds`` as it computes round ``round_``."""
    loop_box: list[asyncio.AbstractEventLoop] = []

    def go_offline() -> None:
        now = stack.now()
        stack.faults.add(NodeOffline(node, now, now + seconds))
        stack.events.record("test.offline", node, start=now, end=now + seconds)

    del loop_box
    return subclass(SumAnalyzer, hooks={(node, round_): go_offline}, delays=SLOW_ROUNDS)


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_short_offline_window_is_bridged(stacks: list[FlameStack], data_root: Path, mode: Mode) -> None:
    # health checks every 0.1 s; one check asks /healthz for up to 3 s: a 1.5 s outage is bridged
    settings = StackSettings.fast(po_healthz_timeout=300.0)
    stack = new_stack(stacks, data_root, settings=settings)
    analyzer = _offline_at_round(stack, "node-1", 2, 1.5)
    options = FederationOptions(max_rounds=3, round_deadline=10.0, send_timeout=10.0)
    run = await run_federation(
        stack, analyzer, SumAggregator, options, mode=mode, timeout=60, timeouts=FAST_TIMEOUTS
    )
    assert stack.events.select("test.offline")
    assert_all_executed(run)
    assert run.result == expected_total([ALL3] * 3) == await final_value(stack)
    assert not stack.events.select("po.failed") and not stack.events.select("po.restart")
    # the orchestrator did check node-1 while it was offline
    (offline,) = stack.events.select("test.offline")
    assert run.events.get("po.log", 0) > 0
    assert offline.detail["end"] - offline.detail["start"] == pytest.approx(1.5)


async def test_node_offline_while_executing_is_failed_by_the_orchestrator(
    stacks: list[FlameStack], data_root: Path
) -> None:
    # one check asks /healthz for 1 s; node-1 stays offline from its round 2 on
    settings = StackSettings.fast(po_healthz_timeout=100.0)
    stack = new_stack(stacks, data_root, settings=settings)
    analyzer = _offline_at_round(stack, "node-1", 2, math.inf)
    options = FederationOptions(max_rounds=3, round_deadline=30.0, send_timeout=10.0)
    run = await run_federation(stack, analyzer, SumAggregator, options, timeout=60, timeouts=FAST_TIMEOUTS)
    assert not run.ok
    assert run.seconds < 15.0, run.report()  # not the round deadline of 30 s
    assert stack.po.status("node-1") == "failed"
    error = run.outcomes["node-1"].error or ""
    assert "no answer to /healthz" in (stack.po.record("node-1").error or ""), stack.po.record("node-1")
    assert run.outcomes["node-1"].status == "failed", error
    # executing: marked failed and stopped, not restarted (the real PO's rule)
    assert not stack.events.select("po.restart")
    assert (
        "quorum" in (run.outcomes["aggregator"].error or "")
        or run.outcomes["aggregator"].status != "executed"
    )
    assert await stack.final_results() == {}
    assert stack.events.select("node.stop", node="node-1")  # its pod was stopped
    assert_one_incarnation_at_a_time(stack)


async def test_node_failed_by_the_orchestrator_is_stopped_and_the_quorum_goes_on(
    stacks: list[FlameStack], data_root: Path
) -> None:
    settings = StackSettings.fast(po_healthz_timeout=100.0)
    stack = new_stack(stacks, data_root, settings=settings)
    analyzer = _offline_at_round(stack, "node-1", 2, math.inf)
    options = FederationOptions(max_rounds=3, quorum=2, round_deadline=3.0, send_timeout=10.0)
    run = await run_federation(stack, analyzer, SumAggregator, options, timeout=60, timeouts=FAST_TIMEOUTS)
    # node-1's incarnation was ended by the orchestrator's stop, not left waiting for aggregates
    assert run.seconds < 20.0, run.report()
    assert run.outcomes["node-1"].status == "failed"
    assert "pod orchestrator stopped the analysis" in (run.outcomes["node-1"].error or ""), run.report()
    for name in ("aggregator", "node-2", "node-3"):
        assert run.outcomes[name].status == "executed", run.report()
    assert run.result == await final_value(stack)
    assert_one_incarnation_at_a_time(stack)
    (stop,) = stack.events.select("po.incarnation.stop", node="node-1")
    assert stop.detail["stopped"] is True


async def test_restart_limit_then_failure() -> None:
    # a node whose /healthz never answers while it starts is restarted, at most po_max_restarts times
    settings = StackSettings.fast(po_healthz_timeout=10.0, po_max_restarts=2)
    stack = FlameStack.create(1, settings=settings, faults=FaultPlan([NodeOffline("node-1", 0.0, math.inf)]))
    async with stack:
        stack.attach_analysis("node-1", _healthy_app())
        # each new pod serves its analysis API again (here: no runtime, just its /healthz)
        stack.on_restart(lambda node, env: stack.attach_analysis(node.name, _healthy_app()))
        await stack.po.wait_for_status("node-1", ("failed",), timeout=10)
        assert stack.node("node-1").restart_counter == 2
        assert len(stack.events.select("po.restart", node="node-1")) == 2
        assert "not restarted again after 2 restart(s)" in (stack.po.record("node-1").error or "")


async def test_stuck_node_is_restarted_even_while_executing() -> None:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        stack.attach_analysis("node-1", _healthy_app(status="stuck"))
        stack.po.record("node-1").executing = True
        await stack.po.check(stack.node("node-1"))
        assert stack.node("node-1").restart_counter == 1
        assert stack.po.status("node-1") == "starting"


def _healthy_app(status: str = "executing") -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": status, "token_remaining_time": 1000}

    @app.post("/partner_status")
    async def partner_status() -> dict[str, str]:
        return {"status": "ok"}

    return app


# -- one incarnation at a time -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_restart_before_launch_runs_one_incarnation(
    stacks: list[FlameStack], data_root: Path, mode: Mode
) -> None:
    faults = FaultPlan([NodeRestart("node-1", at=0.0)])
    stack = new_stack(stacks, data_root, faults=faults)
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0)
    run = await run_federation(
        stack, SumAnalyzer, SumAggregator, options, mode=mode, timeout=40, timeouts=FAST_TIMEOUTS
    )
    assert_all_executed(run)
    assert run.result == expected_total([ALL3] * 2) == await final_value(stack)
    counts = assert_one_incarnation_at_a_time(stack)
    assert counts["node-1"] in (1, 2) and run.outcomes["node-1"].incarnations == counts["node-1"]
    assert stack.node("node-1").restart_counter == 1
    # whatever ran of node-1 ran as the new deployment at the end
    last = stack.events.select("po.incarnation.start", node="node-1")[-1]
    assert last.detail["deployment"].endswith("-1")


async def test_restarts_in_quick_succession_never_overlap(stacks: list[FlameStack], data_root: Path) -> None:
    faults = FaultPlan([NodeRestart("node-2", at=t) for t in (0.3, 0.31, 0.32, 0.9)])
    stack = new_stack(stacks, data_root, faults=faults)
    analyzer = subclass(SumAnalyzer, delays=SLOW_ROUNDS)
    options = FederationOptions(max_rounds=4, round_deadline=10.0, send_timeout=10.0)
    run = await run_federation(stack, analyzer, SumAggregator, options, timeout=60, timeouts=FAST_TIMEOUTS)
    assert_all_executed(run)
    assert run.result == expected_total([ALL3] * 4) == await final_value(stack)
    counts = assert_one_incarnation_at_a_time(stack)
    # a pod replaced before its runtime ran never counts as an incarnation
    assert 2 <= counts["node-2"] <= 5 and counts["node-2"] == run.outcomes["node-2"].incarnations
    assert stack.node("node-2").restart_counter == 4


# -- the same through flame sim, in-process and one process per node ---------------------------------

SUM_FILE = """
import flame

class Count(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        return {"rows": len(data.dataframe("values.csv"))}

class Total(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(u["rows"] for u in updates.values())

if __name__ == "__main__":
    flame.run(Count(), Total(), max_rounds=1)
"""

RAISES_AT_IMPORT = """
import os
import flame

if os.environ.get("DATA_SOURCE_TOKEN", "none_needed") != "none_needed":
    raise RuntimeError("this node's analysis cannot load its model")

class Count(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        return 1

class Total(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(updates.values())

if __name__ == "__main__":
    flame.run(Count(), Total(), max_rounds=1)
"""


def _sim_data(root: Path) -> Path:
    for name, rows in {"node-1": 3, "node-2": 2}.items():
        folder = root / name / "s3"
        folder.mkdir(parents=True)
        (folder / "values.csv").write_text("value\n" + "".join(f"{i}\n" for i in range(rows)))
    return root


async def _simulate(tmp_path: Path, text: str, mode: str, faults: str = "", timeout: float = 120.0) -> Any:
    from flame.local.api import simulate_async

    analysis = tmp_path / "analysis.py"
    analysis.write_text(text)
    result = await simulate_async(
        analysis,
        nodes=2,
        data=_sim_data(tmp_path / "data"),
        faults=faults,
        mode=mode,  # type: ignore[arg-type]
        timeout=timeout,
    )
    return result.outcome


@pytest.mark.process
@pytest.mark.parametrize("mode", ["inprocess", "processes"])
async def test_flame_sim_restart_before_launch(tmp_path: Path, mode: str) -> None:
    outcome = await _simulate(tmp_path, SUM_FILE, mode, faults="restart=node-1@0")
    assert outcome.ok, (outcome.errors, outcome.run.report())
    assert (await_final := outcome.run.final_results) and list(await_final.values()) == [b"5"]
    assert outcome.stack_info["nodes"]["node-1"]["restarts"] == 1
    if mode == "processes":
        # exactly one process ran node-1, with the new deployment (the restart replaced the launch)
        records = outcome.processes["node-1"]
        assert [(r.exit_code, r.killed) for r in records] == [(0, False)], records
        assert records[0].deployment.endswith("-1")


@pytest.mark.process
async def test_flame_sim_node_process_that_raises_at_import_ends_the_run_at_once(tmp_path: Path) -> None:
    clock = asyncio.get_running_loop().time()
    outcome = await _simulate(tmp_path, RAISES_AT_IMPORT, "processes", timeout=120.0)
    seconds = asyncio.get_running_loop().time() - clock
    assert not outcome.ok
    assert seconds < 30.0, seconds  # not the 120 s timeout
    failed = {name: o.error for name, o in outcome.run.outcomes.items() if o.status == "failed"}
    assert any("cannot load its model" in (error or "") for error in failed.values()), failed
    # the orchestrator knew it first: the node's record is failed with the process' output
    records = [r for r in outcome.stack_info["nodes"].values() if r["po_status"] == "failed"]
    assert records, outcome.stack_info


@pytest.mark.process
async def test_process_mode_restarts_never_overlap(tmp_path: Path) -> None:
    from flame.local.processes import ProcessFederation

    analysis = tmp_path / "analysis.py"
    analysis.write_text(SUM_FILE)
    faults = FaultPlan(
        [NodeRestart("node-1", at=0.0), NodeRestart("node-2", at=1.0), NodeRestart("node-2", at=1.01)]
    )
    stack = FlameStack.create(2, data_root=_sim_data(tmp_path / "data"), faults=faults)
    processes = ProcessFederation(stack, analysis)
    try:
        await processes.start()
        try:
            await asyncio.wait_for(processes.wait(), 90)
        except TimeoutError:
            _print_processes(processes, stack)
            raise
    finally:
        await processes.stop()
        results = await stack.final_results()
        counts = assert_one_incarnation_at_a_time(stack)
        await stack.aclose()
    assert list(results.values()) == [b"5"], results
    assert counts["aggregator"] == 1
    # node-1: its launch was replaced by the restart at 0 (one process, the new deployment)
    assert [(r.exit_code, r.killed, r.deployment[-2:]) for r in processes.records["node-1"]] == [
        (0, False, "-1")
    ]
    assert counts["node-1"] == 1
    # node-2: each restart killed the running process before the next one started
    assert counts["node-2"] == len(processes.records["node-2"])
    for earlier, later in zip(processes.records["node-2"], processes.records["node-2"][1:], strict=False):
        assert earlier.ended is not None and earlier.ended <= later.started

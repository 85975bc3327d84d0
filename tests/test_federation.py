"""The star protocol end to end on the emulated stack: rounds, quorum, stragglers, restarts, faults.

Every test runs a whole local federation (:func:`flame.sim.federation.run_federation`) with a small
deterministic analysis whose final result is an exact function of the nodes' data and of which nodes
contributed to which round, so "the same result" is checked exactly, not approximately.

The analysis: node ``n`` holds a CSV ``values.csv`` whose ``value`` column sums to ``s_n``. In round
``r`` every node sends ``s_n * r + T(r-1)``; the aggregator sums what arrived: ``T(r) = sum over the
round's contributors of (s_n * r + T(r-1))`` with ``T(0) = 0``. The final result is ``T(R)``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import pandas  # noqa: F401  (imported here, not by the first analysis round: rounds keep their timing)
import pytest

from flame import codec
from flame.federated import Aggregator, Analyzer, Data, FederationOptions, messages
from flame.node.runtime import Timeouts
from flame.sim import backends
from flame.sim.faults import DeliveryFault, FaultPlan, NodeOffline, NodeRestart
from flame.sim.federation import Federation, FederationRun, run_federation
from flame.sim.launch import Mode
from flame.sim.node import NodeSpec
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

#: what each node's ``values.csv`` sums to (each of another order of magnitude: any mix-up shows)
SUMS = {"node-1": 6, "node-2": 30, "node-3": 400, "aggregator": 5000}
_ROWS = {"node-1": [1, 2, 3], "node-2": [10, 20], "node-3": [100, 300], "aggregator": [5000]}

#: runtime bounds for tests: resend unacknowledged messages after 0.15 s, start-up fails after 3 s,
#: clean-up (log flush, unsubscribe) through a dead sidecar gives up after 1 s
FAST_TIMEOUTS = Timeouts(startup=3.0, attempt=0.15, shutdown=1.0)


# -- the analysis ----------------------------------------------------------------------------------


class SumAnalyzer(Analyzer):
    """Round r: ``s_n * r + T(r-1)``; optional per-(node, round) delays and hooks."""

    #: (node name, round) -> seconds the analysis takes
    delays: ClassVar[dict[tuple[str, int], float]] = {}
    #: (node name, round) -> called (in the worker thread) before the result is returned
    hooks: ClassVar[dict[tuple[str, int], Callable[[], None]]] = {}

    def analyze(self, data: Data, aggregate: Any | None, round: int) -> Any:
        frame = data.dataframe("values.csv")
        name = str(frame["node"].iloc[0])
        hook = self.hooks.get((name, round))
        if hook is not None:
            hook()
        delay = self.delays.get((name, round), 0.0)
        if delay:
            time.sleep(delay)
        previous = aggregate["total"] if aggregate is not None else 0
        return {"node": name, "value": int(frame["value"].sum()) * round + previous}


def _wait_restarted(stack: Any, loop: asyncio.AbstractEventLoop, name: str) -> None:
    """From a node's worker thread: block until the stack has replaced ``name``'s pod (its event)."""
    waited = stack.events.wait_for("node.restart", node=name, timeout=30.0)
    asyncio.run_coroutine_threadsafe(waited, loop).result(35.0)


class SumAggregator(Aggregator):
    """Sums the updates; converges when ``converge_at`` is reached; optional per-round hooks."""

    converge_at: ClassVar[int | None] = None
    hooks: ClassVar[dict[int, Callable[[], None]]] = {}

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        hook = self.hooks.get(round)
        if hook is not None:
            hook()
        return {
            "total": sum(u["value"] for u in updates.values()),
            "round": round,
            "nodes": sorted(u["node"] for u in updates.values()),
        }

    def converged(self, aggregate: Any, previous: Any | None, round: int) -> bool:
        return self.converge_at is not None and round >= self.converge_at

    def final_result(self, aggregate: Any) -> Any:
        return aggregate["total"]


def expected_total(contributors: Iterable[Iterable[str]]) -> int:
    """``T(R)`` for the given contributors (node names) of rounds 1..R."""
    total = 0
    for index, names in enumerate(contributors, start=1):
        total = sum(SUMS[name] * index + total for name in names)
    return total


ALL3 = ["node-1", "node-2", "node-3"]
#: every analysis round takes 0.25 s on every node (for restarts at a time)
SLOW_ROUNDS = {(name, r): 0.25 for name in ALL3 for r in range(1, 9)}


# -- helpers ---------------------------------------------------------------------------------------


def write_sum_data(tmp_path: Path) -> Path:
    """``node-1``..``node-3`` and ``aggregator`` folders, each with an S3 ``values.csv`` of its own."""
    root = tmp_path / "data"
    for name, rows in _ROWS.items():
        folder = root / name / "s3"
        folder.mkdir(parents=True)
        lines = ["node,value", *(f"{name},{value}" for value in rows)]
        (folder / "values.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return write_sum_data(tmp_path)


@pytest.fixture
async def stacks() -> AsyncIterator[list[FlameStack]]:
    """Stacks a test creates (append them); all are closed afterwards."""
    created: list[FlameStack] = []
    yield created
    for stack in created:
        await stack.aclose()


def new_stack(
    stacks: list[FlameStack], data_root: Path, analysis_nodes: int = 3, **kwargs: Any
) -> FlameStack:
    kwargs.setdefault("settings", StackSettings.fast(po_enabled=False))
    stack = FlameStack.create(analysis_nodes, data_root=data_root, **kwargs)
    stacks.append(stack)
    return stack


def names(stack: FlameStack, node_ids: Iterable[str]) -> list[str]:
    """Node names of node ids, sorted."""
    found = [stack.node_by_id(i) for i in node_ids]
    return sorted(n.name for n in found if n is not None)


def round_contributors(stack: FlameStack, run: FederationRun) -> list[list[str]]:
    return [names(stack, r["contributors"]) for r in run.rounds]


async def final_value(stack: FlameStack) -> int:
    results = await stack.final_results()
    assert len(results) == 1, results
    return int(next(iter(results.values())).decode())


def subclass(base: type, **attributes: Any) -> type:
    """A fresh subclass with class attributes: the federation instantiates it anew per incarnation."""
    return type(base.__name__ + "Variant", (base,), attributes)


def on_loop(loop: asyncio.AbstractEventLoop, make: Callable[[], Any], timeout: float = 10.0) -> Any:
    """From a worker thread: run the coroutine ``make()`` on the federation's loop and wait for it."""
    return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout)


def restarted_before_the_end(stack: FlameStack) -> bool:
    """Whether the (one) injected restart came before the final result was submitted."""
    (restart,) = stack.events.select("fault.restart")
    (final,) = stack.events.select("storage.final")
    return restart.t < final.t


def assert_all_executed(run: FederationRun) -> None:
    assert run.ok, run.report()
    assert {name: o.status for name, o in run.outcomes.items()} == dict.fromkeys(run.outcomes, "executed")


# -- 1. multi-round success, non-iterative, convergence ---------------------------------------------


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_multi_round_success(stacks: list[FlameStack], data_root: Path, mode: Mode) -> None:
    # the pod orchestrator's periodic checks run too (health, partner status), with a lenient timeout
    stack = new_stack(stacks, data_root, settings=StackSettings.fast(po_healthz_timeout=500.0))
    options = FederationOptions(max_rounds=4, round_deadline=5.0, send_timeout=10.0)
    run = await run_federation(
        stack, SumAnalyzer, SumAggregator, options, mode=mode, timeout=30, timeouts=FAST_TIMEOUTS
    )
    assert_all_executed(run)
    expected = expected_total([ALL3] * 4)
    assert run.result == expected == await final_value(stack)
    assert [r["round"] for r in run.rounds] == [1, 2, 3, 4]
    assert round_contributors(stack, run) == [ALL3] * 4
    for name in stack.nodes:
        assert stack.po.record(name).progress == 100, name
        assert stack.po.status(name) == "executed", name
    # every analysis node ends with the final aggregate of round 4
    for name in ALL3:
        assert run.outcomes[name].result["round"] == 4
        assert run.outcomes[name].result["total"] == expected
    # progress was reported as the rounds advanced, never decreasing
    progress = [e["progress"] for e in stack.po.record("aggregator").logs]
    assert progress == sorted(progress)
    assert {25, 50, 75, 100} <= set(progress)
    assert run.events.get("po.progress_decreased", 0) == 0
    report = run.report()
    assert report["ok"] and len(report["rounds"]) == 4


async def test_non_iterative_single_round(stacks: list[FlameStack], data_root: Path) -> None:
    stack = new_stack(stacks, data_root)
    options = FederationOptions(max_rounds=1, round_deadline=5.0)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS)
    assert_all_executed(run)
    assert run.result == sum(SUMS[n] for n in ALL3) == await final_value(stack)
    assert [r["round"] for r in run.rounds] == [1]
    assert all(stack.po.record(n).progress == 100 for n in stack.nodes)
    for name in ALL3:
        assert run.outcomes[name].result == {"total": run.result, "round": 1, "nodes": ALL3}


async def test_converges_before_max_rounds(stacks: list[FlameStack], data_root: Path) -> None:
    stack = new_stack(stacks, data_root)
    options = FederationOptions(max_rounds=5, round_deadline=5.0)
    aggregator = subclass(SumAggregator, converge_at=2)
    run = await run_federation(stack, SumAnalyzer, aggregator, options, timeout=20, timeouts=FAST_TIMEOUTS)
    assert_all_executed(run)
    assert [r["round"] for r in run.rounds] == [1, 2]
    assert run.result == expected_total([ALL3] * 2) == await final_value(stack)
    # converged: progress jumps to 100 when the analysis ends
    assert all(stack.po.record(n).progress == 100 for n in stack.nodes)
    for name in ALL3:
        assert run.outcomes[name].result["round"] == 2


# -- 4. a node that never answers --------------------------------------------------------------------


async def test_silent_node_quorum_reached(stacks: list[FlameStack], data_root: Path) -> None:
    faults = FaultPlan([NodeOffline("node-3", 0.0, float("inf"))])
    stack = new_stack(stacks, data_root, faults=faults)
    # node-3 never answers, so every round lasts its deadline; the deadline is also what node-1 and
    # node-2 must answer within, which takes ~0.1 s on a quiet machine: 1.5 s leaves room for a loaded
    # one (at 0.5 s, a round under load closed with none of them and the analysis failed)
    deadline = 1.5
    # a send timeout far above the deadline: the aggregate to the dead node must not hold rounds back
    # (it did: every round took the deadline plus the 10 s, and 2 rounds exceeded the run's timeout)
    options = FederationOptions(max_rounds=2, quorum=2, round_deadline=deadline, send_timeout=10.0)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS)
    # the aggregator and the answering nodes finish; node-3's pod never came up
    assert {n: run.outcomes[n].status for n in ("aggregator", "node-1", "node-2")} == dict.fromkeys(
        ("aggregator", "node-1", "node-2"), "executed"
    ), run.report()
    assert run.outcomes["node-3"].status == "failed"
    assert "start-up" in (run.outcomes["node-3"].error or "")
    assert round_contributors(stack, run) == [["node-1", "node-2"]] * 2
    assert run.result == expected_total([["node-1", "node-2"]] * 2) == await final_value(stack)
    # each round waited for node-3 until the deadline, and not for the aggregate's acknowledgement
    # (that would take the send timeout: the upper bound is that, not a guess at the machine's speed)
    for entry in run.rounds:
        assert deadline <= entry["seconds"] < options.send_timeout, run.rounds


async def test_silent_node_quorum_not_reached(
    stacks: list[FlameStack], data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    faults = FaultPlan([NodeOffline("node-3", 0.0, float("inf"))])
    stack = new_stack(stacks, data_root, faults=faults)
    options = FederationOptions(max_rounds=3, round_deadline=0.5, send_timeout=1.0)  # quorum: all
    node3 = stack.node("node-3").node_id
    with caplog.at_level(logging.INFO):
        # bounded: no node may hang (the analysis nodes' own deadline would be 2 * 0.5 + 60 s)
        run = await run_federation(
            stack, SumAnalyzer, SumAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS
        )
    assert not run.ok
    assert await stack.final_results() == {}
    aggregator = run.outcomes["aggregator"]
    assert aggregator.status == "failed"
    assert aggregator.error is not None and aggregator.error.startswith("FederationError")
    assert "quorum" in aggregator.error and node3 in aggregator.error
    # every started analysis node was told (ABORT) and failed too
    for name in ("node-1", "node-2"):
        outcome = run.outcomes[name]
        assert outcome.status == "failed", run.report()
        assert "aborted" in (outcome.error or "") and "quorum" in (outcome.error or "")
        assert stack.po.status(name) == "failed"
    # offline from the start: failed by the orchestrator once its health checks ran out, or stopped by the
    # run's end if the aggregator's quorum failure came first (which one depends on the machine's load)
    assert run.outcomes["node-3"].status in ("failed", "stopped")
    assert stack.po.status("aggregator") == "failed"
    assert run.rounds == []


async def test_aggregator_failure_ends_every_node(stacks: list[FlameStack], data_root: Path) -> None:
    stack = new_stack(stacks, data_root)

    def fail() -> None:
        raise ValueError("bad aggregate")

    aggregator = subclass(SumAggregator, hooks={2: fail})
    # the analysis nodes would wait 2 * 5 + 60 s for an aggregate if nobody told them: the run's
    # timeout (20 s) fails the test then
    options = FederationOptions(max_rounds=3, round_deadline=5.0, send_timeout=5.0)
    run = await run_federation(stack, SumAnalyzer, aggregator, options, timeout=20, timeouts=FAST_TIMEOUTS)
    assert {name: o.status for name, o in run.outcomes.items()} == dict.fromkeys(run.outcomes, "failed")
    assert "ValueError: bad aggregate" in (run.outcomes["aggregator"].error or "")
    for name in ALL3:
        assert "the aggregator failed: ValueError: bad aggregate" in (run.outcomes[name].error or "")
    assert await stack.final_results() == {}
    assert [r["round"] for r in run.rounds] == [1]


# -- 5./6. restarts mid-analysis ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_analysis_node_restart_mid_analysis(
    stacks: list[FlameStack], data_root: Path, caplog: pytest.LogCaptureFixture, mode: Mode
) -> None:
    stack = new_stack(stacks, data_root)
    loop = asyncio.get_running_loop()
    restarted = threading.Event()
    restarts: list[asyncio.Task[Any]] = []

    def restart_node2() -> None:
        # node-2's pod dies while it analyses round 2: the orchestrator starts a new one
        if not restarted.is_set():
            restarted.set()
            loop.call_soon_threadsafe(
                lambda: restarts.append(asyncio.ensure_future(stack.restart_node("node-2", "test")))
            )
            _wait_restarted(stack, loop, "node-2")  # the old pod is gone before it could send anything

    analyzer = subclass(SumAnalyzer, hooks={("node-2", 2): restart_node2})
    options = FederationOptions(max_rounds=4, round_deadline=5.0, send_timeout=5.0)
    with caplog.at_level(logging.INFO):
        run = await run_federation(
            stack, analyzer, SumAggregator, options, mode=mode, timeout=30, timeouts=FAST_TIMEOUTS
        )
    await asyncio.gather(*restarts)
    assert "resumed from the checkpoint at round 2" in caplog.messages
    assert restarted.is_set()
    assert_all_executed(run)
    assert run.outcomes["node-2"].incarnations == 2
    assert run.outcomes["node-1"].incarnations == run.outcomes["aggregator"].incarnations == 1
    assert run.result == expected_total([ALL3] * 4) == await final_value(stack)
    assert round_contributors(stack, run) == [ALL3] * 4
    assert run.events["node.restart"] == 1


async def test_analysis_node_restart_by_fault_served(stacks: list[FlameStack], data_root: Path) -> None:
    # the pod orchestrator restarts node-1 at 1 s: while the rounds run (8 rounds of >= 0.25 s after a
    # start-up of ~0.4 s), or, on a loaded machine, while the nodes start; the result is the same
    faults = FaultPlan([NodeRestart("node-1", at=1.0)])
    stack = new_stack(stacks, data_root, faults=faults)
    analyzer = subclass(SumAnalyzer, delays=SLOW_ROUNDS)
    options = FederationOptions(max_rounds=8, round_deadline=5.0, send_timeout=5.0)
    run = await run_federation(
        stack, analyzer, SumAggregator, options, mode="served", timeout=40, timeouts=FAST_TIMEOUTS
    )
    assert_all_executed(run)
    assert run.events.get("fault.restart") == 1
    assert run.outcomes["node-1"].incarnations == 2
    assert run.result == expected_total([ALL3] * 8) == await final_value(stack)
    assert restarted_before_the_end(stack)


@pytest.mark.parametrize(("mode", "at_round"), [("inprocess", 1), ("inprocess", 3), ("served", 3)])
async def test_aggregator_restart_mid_analysis(
    stacks: list[FlameStack], data_root: Path, caplog: pytest.LogCaptureFixture, mode: Mode, at_round: int
) -> None:
    stack = new_stack(stacks, data_root)
    loop = asyncio.get_running_loop()
    restarted = threading.Event()
    restarts: list[asyncio.Task[Any]] = []

    def restart_aggregator() -> None:
        # the aggregator's pod dies while it aggregates a round: round 3 (rounds 1 and 2 are
        # checkpointed), or round 1 (no checkpoint yet; the updates went to the old pod)
        if not restarted.is_set():
            restarted.set()
            loop.call_soon_threadsafe(
                lambda: restarts.append(asyncio.ensure_future(stack.restart_node("aggregator", "test")))
            )
            _wait_restarted(stack, loop, "aggregator")

    aggregator = subclass(SumAggregator, hooks={at_round: restart_aggregator})
    options = FederationOptions(max_rounds=4, round_deadline=5.0, send_timeout=5.0)
    with caplog.at_level(logging.INFO):
        run = await run_federation(
            stack, SumAnalyzer, aggregator, options, mode=mode, timeout=30, timeouts=FAST_TIMEOUTS
        )
    await asyncio.gather(*restarts)
    if at_round > 1:
        assert f"resumed from the checkpoint after round {at_round - 1}" in caplog.messages
    # the new pod asked for the open round's updates again, and the nodes resent them
    assert any(f"resending the parameters of round {at_round}" in m for m in caplog.messages)
    assert restarted.is_set()
    assert_all_executed(run)
    assert run.outcomes["aggregator"].incarnations == 2
    assert run.result == expected_total([ALL3] * 4) == await final_value(stack)
    # rounds are reported across both incarnations, each once
    assert [r["round"] for r in run.rounds] == [1, 2, 3, 4]
    assert round_contributors(stack, run) == [ALL3] * 4


async def test_aggregator_restart_by_fault_served(stacks: list[FlameStack], data_root: Path) -> None:
    faults = FaultPlan([NodeRestart("aggregator", at=1.0)])
    stack = new_stack(stacks, data_root, faults=faults)
    analyzer = subclass(SumAnalyzer, delays=SLOW_ROUNDS)
    options = FederationOptions(max_rounds=8, round_deadline=5.0, send_timeout=5.0)
    run = await run_federation(
        stack, analyzer, SumAggregator, options, mode="served", timeout=40, timeouts=FAST_TIMEOUTS
    )
    assert_all_executed(run)
    assert run.outcomes["aggregator"].incarnations == 2
    assert run.result == expected_total([ALL3] * 8) == await final_value(stack)
    assert restarted_before_the_end(stack)
    assert [r["round"] for r in run.rounds] == list(range(1, 9))


# -- 7. message faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_message_faults_multi_round(stacks: list[FlameStack], data_root: Path, seed: int) -> None:
    faults = FaultPlan(
        [
            DeliveryFault("drop", probability=0.2),
            DeliveryFault("duplicate", probability=0.2),
            DeliveryFault("reorder", probability=0.5, seconds=0.05),
        ],
        seed=seed,
    )
    stack = new_stack(stacks, data_root, faults=faults, seed=seed)
    options = FederationOptions(max_rounds=4, round_deadline=3.0, send_timeout=5.0)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS)
    assert_all_executed(run)
    assert run.result == expected_total([ALL3] * 4) == await final_value(stack)
    assert round_contributors(stack, run) == [ALL3] * 4
    faulted = [e.detail for e in stack.events.select("fault.delivery")]
    assert any(d["drop"] for d in faulted), run.events
    assert any(d["copies"] > 1 for d in faulted), run.events
    assert any("reorder" in d["reasons"] for d in faulted), run.events
    assert run.events["delivery.dropped"] > 0


async def test_lost_acknowledgement_does_not_hold_a_node_back(
    stacks: list[FlameStack], data_root: Path
) -> None:
    # the first delivery from the aggregator to node-1 is the acknowledgement of node-1's round-1
    # update: it is lost, and node-1 would resend only after 30 s (one attempt lasts longer than its
    # send timeout of 20 s); the aggregate makes that moot
    faults = FaultPlan([DeliveryFault("drop", sender="aggregator", receiver="node-1", limit=1)])
    stack = new_stack(stacks, data_root, faults=faults)
    options = FederationOptions(max_rounds=3, round_deadline=10.0, send_timeout=20.0)
    run = await run_federation(
        stack, SumAnalyzer, SumAggregator, options, timeout=40, timeouts=Timeouts(startup=3.0, attempt=30.0)
    )
    assert_all_executed(run)
    assert run.events["delivery.dropped"] == 1
    assert run.result == expected_total([ALL3] * 3) == await final_value(stack)
    # held back, node-1 would wait out its send timeout (20 s); not held back, the run takes ~1 s: the
    # bound lies between, far from both, so that a loaded machine does not reach it
    assert run.seconds < options.send_timeout / 2, run.report()


# -- 8. late, duplicate and foreign updates ----------------------------------------------------------


async def test_late_duplicate_and_foreign_updates_are_ignored(
    stacks: list[FlameStack], data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = new_stack(stacks, data_root)
    loop = asyncio.get_running_loop()
    options = FederationOptions(max_rounds=3, round_deadline=5.0, send_timeout=5.0)
    federation: Federation | None = None
    aggregator_id = stack.node("aggregator").node_id
    node1_id = stack.node("node-1").node_id
    bogus = {"node": "node-1", "value": 10**9}

    def body(analysis_id: str, round: int) -> dict[str, Any]:
        payload = base64.b64encode(codec.encode(bogus)).decode("ascii")
        return {"analysis_id": analysis_id, "round": round, "payload": payload}

    async def inject() -> None:
        assert federation is not None
        aggregator, node1 = federation.runtimes["aggregator"], federation.runtimes["node-1"]

        def has_real_round2() -> bool:
            return any(
                m.sender == node1_id and m.category == messages.UPDATE and m.body.get("round") == 2
                for m in aggregator.inbox.messages("all")
            )

        # node-1's genuine update of round 2 is in; the round is still open (node-2 is slow)
        assert await aggregator.inbox.wait_until(has_real_round2, 5.0)
        other_analysis = "00000000-0000-4000-8000-000000000001"
        for message in (
            body(stack.analysis_id, 2),  # a duplicate of round 2 with another value
            body(stack.analysis_id, 1),  # a late update of round 1
            body(other_analysis, 2),  # an update of another analysis
            {**body(stack.analysis_id, 2), "round": -1},  # no valid round
            {**body(stack.analysis_id, 3), "payload": "not base64!"},  # an unreadable payload
        ):
            acked, _ = await node1.send_message([aggregator_id], messages.UPDATE, message, timeout=5.0)
            assert acked == [aggregator_id]

    def inject_from_thread() -> None:
        on_loop(loop, inject)

    analyzer = subclass(SumAnalyzer, hooks={("node-2", 2): inject_from_thread})
    with caplog.at_level(logging.DEBUG):
        federation = Federation(
            stack, analyzer, SumAggregator, options, node_kwargs={"timeouts": FAST_TIMEOUTS}
        )
        run = await federation.run(timeout=30)
    assert_all_executed(run)
    assert run.result == expected_total([ALL3] * 3) == await final_value(stack)
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"ignoring a duplicate update of round 2 from {node1_id}" in t for t in logged), logged
    assert any(f"ignoring a late update of round 1 from {node1_id}" in t for t in logged), logged
    assert any("ignoring a foreign update" in t and node1_id in t for t in logged), logged
    assert any("ignoring an update without a valid round" in t for t in logged), logged
    assert any("ignoring an unreadable update of round 3" in t for t in logged), logged


# -- 9. a straggler rejoins ---------------------------------------------------------------------------


async def test_straggler_rejoins_with_newest_aggregate(
    stacks: list[FlameStack], data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = new_stack(stacks, data_root)
    loop = asyncio.get_running_loop()
    federation: Federation | None = None

    def has_aggregate_of_round_2() -> bool:
        assert federation is not None
        return any(
            m.category == messages.AGGREGATE and m.body.get("round") == 2
            for m in federation.runtimes["node-3"].inbox.messages("all")
        )

    async def until_aggregate_of_round_2() -> None:
        assert federation is not None
        assert await federation.runtimes["node-3"].inbox.wait_until(has_aggregate_of_round_2, 30.0)

    def straggle() -> None:  # node-3, round 1, in its worker thread
        on_loop(loop, until_aggregate_of_round_2, timeout=35.0)

    # node-3's analysis of round 1 ends only once the aggregate of round 2 has reached it (an event, not
    # a delay that the machine's speed would race): the aggregator closed rounds 1 and 2 without it;
    # the 1.5 s deadline is only a bound for node-1 and node-2 (~0.1 s a round on a quiet machine)
    analyzer = subclass(SumAnalyzer, hooks={("node-3", 1): straggle})
    options = FederationOptions(max_rounds=5, quorum=2, round_deadline=1.5, send_timeout=5.0)
    with caplog.at_level(logging.DEBUG):
        federation = Federation(
            stack, analyzer, SumAggregator, options, node_kwargs={"timeouts": FAST_TIMEOUTS}
        )
        run = await federation.run(timeout=30)
    assert_all_executed(run)
    contributors = round_contributors(stack, run)
    assert contributors[:2] == [["node-1", "node-2"]] * 2
    assert contributors[-2:] == [ALL3] * 2
    assert len(contributors) == 5
    assert run.result == expected_total(contributors) == await final_value(stack)
    # node-3 found the aggregates of rounds 1 and 2 and went on from the newest (its update of round 1,
    # made moot, is no longer sent, or is ignored as late if it went out before)
    logged = [r.getMessage() for r in caplog.records]
    assert any("rejoining at round 2 with the newest aggregate" in t for t in logged), logged


async def test_straggler_with_delayed_messages(
    stacks: list[FlameStack], data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # node-3 straggles in round 1 and its update is delayed on the way as well: round 1 closes without
    # it, node-3 still gets the aggregate and takes part from round 2 on, and its update of round 1,
    # which reaches the aggregator once round 1 is closed, is ignored as late.
    # The order is made by events, not by timing: node-3 analyses round 1 only once the aggregator
    # aggregates round 1 (the round is closed), and the aggregator goes on (sends the aggregate, opens
    # round 2) only once node-3's delayed update of round 1 is in its inbox; it takes that update in
    # round 2. The round deadline is then only a bound for the answering nodes.
    loop = asyncio.get_running_loop()
    faults = FaultPlan([DeliveryFault("delay", sender="node-3", receiver="aggregator", seconds=0.3, limit=1)])
    stack = new_stack(stacks, data_root, faults=faults)
    node3_id = stack.node("node-3").node_id
    round1_closed = threading.Event()
    federation: Federation | None = None

    def straggle() -> None:  # node-3, round 1, in its worker thread
        assert round1_closed.wait(30.0), "the aggregator did not close round 1"

    def has_late_update() -> bool:
        assert federation is not None
        return any(
            m.sender == node3_id and m.category == messages.UPDATE and m.body.get("round") == 1
            for m in federation.runtimes["aggregator"].inbox.messages("all")
        )

    async def until_late_update() -> None:
        assert federation is not None
        assert await federation.runtimes["aggregator"].inbox.wait_until(has_late_update, 30.0)

    def close_round1() -> None:  # the aggregator, aggregating round 1, in its worker thread
        round1_closed.set()
        on_loop(loop, until_late_update, timeout=35.0)

    analyzer = subclass(SumAnalyzer, hooks={("node-3", 1): straggle})
    aggregator = subclass(SumAggregator, hooks={1: close_round1})
    # attempts of 3 s: node-3 does not resend while its update is held back 0.3 s (a resend would
    # change nothing but the count of deliveries); deadline 2 s: node-1 and node-2 answer in ~0.1 s
    options = FederationOptions(max_rounds=5, quorum=2, round_deadline=2.0, send_timeout=10.0)
    with caplog.at_level(logging.DEBUG):
        federation = Federation(
            stack, analyzer, aggregator, options, node_kwargs={"timeouts": Timeouts(startup=3.0, attempt=3.0)}
        )
        run = await federation.run(timeout=30)
    assert_all_executed(run)
    contributors = round_contributors(stack, run)
    assert contributors == [["node-1", "node-2"]] + [ALL3] * 4
    assert run.result == expected_total(contributors) == await final_value(stack)
    delayed = [
        (e.detail["sender"], e.detail["receiver"], e.detail["delay"])
        for e in stack.events.select("fault.delivery")
    ]
    assert delayed == [("node-3", "aggregator", 0.3)]
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"ignoring a late update of round 1 from {node3_id}" in t for t in logged), logged


# -- 10. checkpoints of another analysis -----------------------------------------------------------


async def test_other_analysis_checkpoints_are_not_picked_up(
    stacks: list[FlameStack], data_root: Path, tmp_path: Path
) -> None:
    backend = backends.LocalFolderBackend(tmp_path / "storage")
    project = "11111111-2222-4333-8444-555555555555"
    options = FederationOptions(max_rounds=3, round_deadline=5.0)
    try:
        first = new_stack(stacks, data_root, project_id=project, storage_backend=backend, seed=1)
        run1 = await run_federation(
            first, SumAnalyzer, SumAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS
        )
        assert_all_executed(run1)

        # another analysis of the same project, same nodes, same storage: it starts from round 1
        second = new_stack(stacks, data_root, project_id=project, storage_backend=backend, seed=2)
        assert second.analysis_id != first.analysis_id
        run2 = await run_federation(
            second,
            SumAnalyzer,
            SumAggregator,
            options.with_changes(max_rounds=2),
            timeout=20,
            timeouts=FAST_TIMEOUTS,
        )
        assert_all_executed(run2)
        assert [r["round"] for r in run2.rounds] == [1, 2]
        assert run2.result == expected_total([ALL3] * 2) == await final_value(second)

        # control: a restarted pod of the first analysis does find its checkpoints (nothing to redo)
        again = new_stack(
            stacks, data_root, project_id=project, storage_backend=backend, analysis_id=first.analysis_id
        )
        run3 = await run_federation(
            again, SumAnalyzer, SumAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS
        )
        assert run3.rounds == []
        assert run3.result == run1.result
    finally:
        for stack in stacks:
            await stack.aclose()
        stacks.clear()
        await backend.aclose()


# -- 11. the aggregator analyses its own data --------------------------------------------------------


async def test_aggregator_analyses_its_own_data(
    stacks: list[FlameStack], data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = [NodeSpec("aggregator", role="aggregator", data_dir=data_root / "aggregator")]
    specs += [NodeSpec(name, data_dir=data_root / name) for name in ALL3]
    stack = FlameStack(specs, settings=StackSettings.fast(po_enabled=False))
    stacks.append(stack)
    if stack.env("aggregator")["DATA_SOURCE_TOKEN"] == "none_needed":
        # FlameStack.env gives the data key only to role "default" although an aggregator given data
        # (SimNode.has_data) has sources: hand its pod the key as the stack should (reported)
        original = stack.env

        def env(name: str, per_node_url: bool | None = None) -> dict[str, str]:
            values = original(name, per_node_url=per_node_url)
            if stack.node(name).has_data:
                values["DATA_SOURCE_TOKEN"] = stack.node(name).data_key
            return values

        monkeypatch.setattr(stack, "env", env)
    options = FederationOptions(max_rounds=3, round_deadline=5.0, aggregator_analyses=True)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS)
    assert_all_executed(run)
    everyone = sorted([*ALL3, "aggregator"])
    assert round_contributors(stack, run) == [everyone] * 3
    assert run.result == expected_total([everyone] * 3) == await final_value(stack)

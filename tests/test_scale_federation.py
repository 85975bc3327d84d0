"""The local federation's watcher: it looks again when a node's incarnation ends or the set of failed
nodes changes, not on every log line of every node (at 1,000 nodes, each look waited on every node's
task, and that cost a fifth of the run)."""

from __future__ import annotations

from typing import Any

import pytest

import flame.sim.federation as federation
from flame.federated import Aggregator, Analyzer, FederationOptions
from flame.sim import FlameStack, StackSettings


class One(Analyzer):
    def analyze(self, data: Any, aggregate: Any, round: int) -> Any:
        return {"n": 1}


class Sum(Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> Any:
        return {"n": sum(u["n"] for u in updates.values())}


def count_looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the watcher's looks (each one asks :func:`cannot_finish`)."""
    looks = [0]
    real = federation.cannot_finish

    def counted(*args: Any) -> Any:
        looks[0] += 1
        return real(*args)

    monkeypatch.setattr(federation, "cannot_finish", counted)
    return looks


async def test_log_lines_do_not_wake_the_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    looks = count_looks(monkeypatch)
    stack = FlameStack.create(3, settings=StackSettings.fast())
    async with stack:
        run = await federation.run_federation(stack, One, Sum, FederationOptions(max_rounds=4), timeout=60)
    assert run.ok, run.report()
    entries = sum(len(stack.po.record(name).logs) for name in stack.nodes)
    # the code before looked once per PO change: 32 looks for these 52 log entries
    assert entries > 40
    assert looks[0] <= len(stack.nodes) + 2, f"{looks[0]} looks for {len(stack.nodes)} nodes"


class Broken(Analyzer):
    def analyze(self, data: Any, aggregate: Any, round: int) -> Any:
        raise RuntimeError("this analysis fails on every node")


async def test_a_failed_node_still_decides_the_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    looks = count_looks(monkeypatch)
    stack = FlameStack.create(2, settings=StackSettings.fast(po_max_restarts=0))
    async with stack:
        options = FederationOptions(max_rounds=2, round_deadline=120.0)
        run = await federation.run_federation(stack, Broken, Sum, options, timeout=100)
    assert not run.ok
    # the nodes' failures decide the run when the orchestrator marks them, not the round deadline
    # (120 s) or the run's timeout (100 s)
    assert run.stopped is not None and "failed" in run.stopped, run.report()
    assert run.seconds < 60.0, run.report()
    assert looks[0] >= 2

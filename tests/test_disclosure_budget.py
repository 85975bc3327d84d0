"""The project's DP budget holds against poisoned ledger entries, invalid spends and concurrent analyses."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flame.disclosure import LEDGER_TAG, DisclosureGuard, DisclosurePolicy, dp
from flame.disclosure.audit import spent
from flame.errors import DisclosureRefusedError, PayloadError
from flame.sim import FlameStack, StackSettings
from flame.sim.launch import start_node

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


@pytest.fixture
async def stack() -> AsyncIterator[FlameStack]:
    stack = FlameStack.create(1, data_root=DATA, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        yield stack


def test_spent_ignores_entries_whose_epsilon_or_delta_is_not_finite_and_non_negative() -> None:
    entries = [
        {"outcome": "released", "epsilon": 0.5, "delta": 1e-7},
        {"outcome": "released", "epsilon": float("-inf"), "delta": float("-inf")},
        {"outcome": "released", "epsilon": -3.0, "delta": 0.0},
        {"outcome": "released", "epsilon": float("nan"), "delta": 0.0},
        {"outcome": "released", "epsilon": "lots", "delta": 0.0},
        {"outcome": "released", "epsilon": 0.25, "delta": -1.0},
        {"outcome": "warned", "epsilon": 0.25, "delta": 0.0},
    ]
    assert spent(entries) == (0.75, 1e-7)


async def test_a_poisoned_ledger_entry_does_not_reopen_the_budget() -> None:
    guard = DisclosureGuard(DisclosurePolicy(dp_epsilon_budget=1.0))
    await guard.release(
        {"m": dp.laplace(1.0, epsilon=0.9, sensitivity=1)}, channel="final", destination=["hub"]
    )
    # another analysis of the project wrote an entry with an impossible spend
    guard.ledger._entries.append({"outcome": "released", "epsilon": float("-inf"), "delta": float("-inf")})  # type: ignore[union-attr]
    with pytest.raises(DisclosureRefusedError) as refused:
        await guard.release(
            {"m": dp.laplace(1.0, epsilon=50, sensitivity=1)}, channel="final", destination=["hub"]
        )
    assert refused.value.rule == "dp-budget"


@pytest.mark.parametrize("spend", [float("-inf"), -1.0, float("nan"), float("inf")])
async def test_release_refuses_a_spend_that_is_not_finite_and_positive(spend: float) -> None:
    guard = DisclosureGuard(DisclosurePolicy(dp_epsilon_budget=1.0))
    with pytest.raises(PayloadError, match="epsilon"):
        await guard.release(3.0, channel="final/localdp", destination=["hub"], spend=spend)
    assert guard.records == []
    assert await guard.ledger.entries() == []


@pytest.mark.parametrize(
    "local_dp",
    [
        {"epsilon": float("-inf"), "sensitivity": 1.0},
        {"epsilon": -2.0, "sensitivity": 1.0},
        {"epsilon": 0.0, "sensitivity": 1.0},
        {"epsilon": 1.0, "sensitivity": float("nan")},
        {"epsilon": "one", "sensitivity": 1.0},
        {"sensitivity": 1.0},
    ],
)
async def test_invalid_local_dp_is_refused_before_the_guard_records_anything(
    stack: FlameStack, local_dp: dict[str, float]
) -> None:
    node = await start_node(stack, "aggregator")
    try:
        with pytest.raises(PayloadError, match="local_dp"):
            await node.results.submit_final(3.0, local_dp=local_dp, filename="a.txt")
        assert node.disclosure.records == []
        assert LEDGER_TAG not in await node.storage.tags()
        # the budget is still whole: a release of more than it is refused
        budget = node.disclosure.policy.dp_epsilon_budget
        with pytest.raises(DisclosureRefusedError, match="rule dp-budget"):
            await node.disclosure.release(
                {"m": dp.laplace(7.0, epsilon=budget * 2, sensitivity=1)},
                channel="final",
                destination=["hub"],
            )
        assert list(await stack.final_results()) == []
    finally:
        await node.stop()


async def test_a_concurrent_analysis_spend_is_seen_before_the_next_spend(stack: FlameStack) -> None:
    node = await start_node(stack, "aggregator")
    try:
        first = node.disclosure
        budget = first.policy.dp_epsilon_budget
        assert math.isfinite(budget)
        assert await first.ledger.entries() == []  # the ledger is read (and cached) before the other spends
        other = DisclosureGuard(first.policy, storage=node.storage, node_id="other", analysis_id="other")
        await other.release(
            {"m": dp.laplace(1.0, epsilon=budget * 0.6, sensitivity=1)}, channel="final", destination=["hub"]
        )
        with pytest.raises(DisclosureRefusedError, match="rule dp-budget"):
            await first.release(
                {"m": dp.laplace(1.0, epsilon=budget * 0.6, sensitivity=1)},
                channel="final",
                destination=["hub"],
            )
    finally:
        await node.stop()


async def test_of_two_analyses_spending_at_once_only_one_gets_the_budget(stack: FlameStack) -> None:
    node = await start_node(stack, "aggregator")
    try:
        policy = node.disclosure.policy
        budget = policy.dp_epsilon_budget
        guards = [
            DisclosureGuard(policy, storage=node.storage, node_id="aggregator", analysis_id=f"analysis-{i}")
            for i in range(2)
        ]
        for guard in guards:
            assert await guard.ledger.entries() == []
        outcomes = await asyncio.gather(
            *(
                g.release(
                    {"m": dp.laplace(1.0, epsilon=budget * 0.6, sensitivity=1)},
                    channel="final",
                    destination=["hub"],
                )
                for g in guards
            ),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, DisclosureRefusedError)]
        # never both: the one that re-reads the ledger second sees the other's spend (both refused is
        # possible, and on the side of caution)
        assert len(refused) >= 1, outcomes
        assert all(o.rule == "dp-budget" for o in refused), outcomes
        assert all(isinstance(o, dict | DisclosureRefusedError) for o in outcomes), outcomes
    finally:
        await node.stop()

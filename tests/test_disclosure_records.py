"""Records another analysis of the project can write under this analysis's tags do not stop a fresh
aggregator (node storage is project-scoped; the ``kind`` of a record is not authenticated)."""

from __future__ import annotations

from pathlib import Path

from flame.federated import FederationOptions, checkpoint
from flame.sim.federation import run_federation
from flame.sim.launch import start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.test_federation import (
    ALL3,
    FAST_TIMEOUTS,
    SumAggregator,
    SumAnalyzer,
    expected_total,
    write_sum_data,
)


async def test_a_forged_wrap_record_does_not_stop_a_first_aggregator_pod(tmp_path: Path) -> None:
    stack = FlameStack.create(
        3, data_root=write_sum_data(tmp_path), settings=StackSettings.fast(po_enabled=False)
    )
    try:
        aggregator = stack.node("aggregator")
        assert aggregator.restart_counter == 0
        node = await start_node(stack, "aggregator")
        try:
            forged = {
                "v": checkpoint.VERSION,
                "analysis_id": stack.analysis_id,
                "node_id": aggregator.node_id,
                "kind": "wrap",
                "holder": "somebody",
                "nonce": bytes(12),
                "sealed": bytes(48),
            }
            await node.results.save_local(forged, tag=checkpoint.checkpoint_tag(stack.analysis_id))
        finally:
            await node.stop()
        options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0)
        run = await run_federation(
            stack, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS
        )
        assert run.ok, run.report()
        assert run.result == expected_total([ALL3] * 2)
    finally:
        await stack.aclose()

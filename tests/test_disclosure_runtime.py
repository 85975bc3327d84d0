"""The guard in the node runtime: intermediate data, analysis-side tightening, local DP spending, and
analyses written for PrivateAIM's SDK (``StarModel``/``FlameCoreSDK``) under the same policy."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flame.disclosure import LEDGER_TAG
from flame.disclosure.audit import ledger_entries
from flame.errors import ConfigurationError, DisclosureRefusedError
from flame.protocols.aggregation import summarise
from flame.sim import FlameStack, StackSettings
from flame.sim.launch import start_node
from flame.star import run_star_script

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


@pytest.fixture
async def stack() -> AsyncIterator[FlameStack]:
    stack = FlameStack.create(1, data_root=DATA, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        yield stack


def uploads(stack: FlameStack, area: str) -> int:
    return sum(1 for e in stack.events.select("storage.upload") if e.detail.get("area") == area)


async def test_intermediate_data_is_judged_before_it_is_stored(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    try:
        assert node.data is not None
        frame = await node.data.kong.s3_dataframe((await node.data.s3_sources())[0].name, "patients.csv")
        assert node.disclosure.local.records == len(frame) == 200
        aggregator = stack.node("aggregator").node_id
        before = uploads(stack, "intermediate")
        with pytest.raises(DisclosureRefusedError) as refused:
            await node.send_intermediate_data([aggregator], frame[["age", "bmi"]])
        assert (refused.value.rule, refused.value.path) == ("row-level", "intermediate_data")
        with pytest.raises(DisclosureRefusedError, match="rule identifier-value at patient"):
            await node.send_message([aggregator], "note", {"patient": str(frame["patient_id"][0])})
        assert uploads(stack, "intermediate") == before  # nothing stored for the aggregator
        assert stack.events.select("broker.sent", "node-1") == []
    finally:
        await node.stop()


async def test_an_analysis_tightens_the_policy_but_cannot_loosen_it(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    try:
        aggregator = stack.node("aggregator").node_id
        node.disclosure.tighten(min_records=300)
        with pytest.raises(DisclosureRefusedError, match=r"rule min-records at age\.n"):
            await node.send_message([aggregator], "stats", {"age": summarise([float(a) for a in range(200)])})
        with pytest.raises(ConfigurationError, match="loosen"):
            node.disclosure.tighten(min_records=5)
    finally:
        await node.stop()


async def test_local_dp_spends_the_project_budget(stack: FlameStack) -> None:
    node = await start_node(stack, "aggregator")
    try:
        await node.results.submit_final(3.0, local_dp={"epsilon": 4.0, "sensitivity": 1.0}, filename="a.txt")
        with pytest.raises(DisclosureRefusedError, match="rule dp-budget"):
            await node.results.submit_final(
                3.0, local_dp={"epsilon": 7.0, "sensitivity": 1.0}, filename="b.txt"
            )
        assert list(await stack.final_results()) == ["a.txt"]
        ledger = [e for raw in await node.storage.read_tagged(LEDGER_TAG) for e in ledger_entries(raw)]
        assert [(e["channel"], e["outcome"], e["epsilon"]) for e in ledger] == [
            ("final/localdp", "released", 4.0),
            ("final/localdp", "refused", 0.0),
        ]
    finally:
        await node.stop()


LEAKY_STAR = """
from io import BytesIO

import pandas as pd

from flame.star import StarAggregator, StarAnalyzer, StarModel


class RowsAnalyzer(StarAnalyzer):
    def __init__(self, flame):
        super().__init__(flame)

    def analysis_method(self, data, aggregator_results):
        return pd.read_csv(BytesIO(data[0]["patients.csv"]))  # every patient row


class FirstAggregator(StarAggregator):
    def __init__(self, flame):
        super().__init__(flame)

    def aggregation_method(self, analysis_results):
        return analysis_results[0]

    def has_converged(self, result, last_result):
        return True


if __name__ == "__main__":
    StarModel(analyzer=RowsAnalyzer, aggregator=FirstAggregator, data_type="s3", query="patients.csv",
              simple_analysis=True, output_type="str")
"""


def test_star_model_rows_are_refused_like_native_ones(tmp_path: Path) -> None:
    script = tmp_path / "leaky_star.py"
    script.write_text(textwrap.dedent(LEAKY_STAR), encoding="utf-8")
    stack = FlameStack.create(1, data_root=DATA, settings=StackSettings.fast(po_enabled=False))
    run = run_star_script(script, stack, timeout=60)
    assert not run.ok and run.final_results == {}
    errors = {name: str(error) for name, error in run.errors.items()}
    assert any(isinstance(e, DisclosureRefusedError) for e in run.errors.values()), errors
    assert any("rule identifier-column" in text or "rule row-level" in text for text in errors.values())


async def test_a_message_is_enveloped_once_unless_the_guard_changed_it(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    aggregator_id = node.aggregator_id or ""
    aggregator = await start_node(stack, "aggregator")
    try:
        await node.send_message([aggregator_id], "plain", {"x": 1})
        await node.send_message([aggregator_id], "plain", {"x": 2})
        found = (await aggregator.await_messages([node.node_id], "plain", timeout=5))[node.node_id] or []
        # one envelope (one message number) per message released as it was
        assert [m.body["x"] for m in found] == [1, 2]
        assert found[1].meta["number"] == found[0].meta["number"] + 1
        # what the guard changed leaves as the guard released it, never the body as it was given
        release = node.disclosure.release_message

        async def changing(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            released = await release(body, **kwargs)
            return {**released, "x": [released["x"], "changed"]}

        node.disclosure.release_message = changing  # type: ignore[method-assign]
        await node.send_message([aggregator_id], "changed", {"x": 3})
        got = (await aggregator.await_messages([node.node_id], "changed", timeout=5))[node.node_id] or []
        assert [m.body["x"] for m in got] == [[3, "changed"]]
    finally:
        await node.stop()
        await aggregator.stop()

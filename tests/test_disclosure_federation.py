"""Leaky analyses on the emulated stack: each refused by the node, the rule and field named, nothing released.

Also: the honest examples pass unchanged, the release audit reaches the node's log stream and its
ledger, the differencing guard across two analyses of one project, the DP budget across analyses and
projects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

import flame
from flame.disclosure import LEDGER_TAG, dp
from flame.disclosure.audit import ledger_entries
from flame.federated import FederationOptions
from flame.protocols.aggregation import pooled_mean_variance, summarise
from flame.sim import FlameStack, StackSettings
from flame.sim.backends import LocalFolderBackend
from flame.sim.federation import FederationRun, run_federation
from flame.sim.launch import start_node

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
#: A refused node never sends its update; it fails, and its failure ends the run (not the round
#: deadline), so these bounds, far above a round on a loaded machine, cost no time.
FAST = FederationOptions(round_deadline=10.0, node_deadline=10.0, send_timeout=10.0, checkpoints=False)


class Analysis(flame.Analyzer):
    def __init__(self, make: Callable[[pd.DataFrame], Any]) -> None:
        self.make = make

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> Any:
        return self.make(data.dataframe("patients.csv"))


class Keep(flame.Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> Any:
        return {"nodes": len(updates)}


class Relay(flame.Aggregator):
    """Relays the first update as the final result (what the aggregator releases to the hub)."""

    def __init__(self, final: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.final = final

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> Any:
        return updates

    def final_result(self, aggregate: Any) -> Any:
        return self.final(aggregate) if self.final else aggregate


async def federate(
    make: Callable[[pd.DataFrame], Any],
    aggregator: flame.Aggregator | None = None,
    *,
    stack: FlameStack | None = None,
    nodes: int = 1,
) -> tuple[FederationRun, FlameStack]:
    stack = stack or FlameStack.create(nodes, data_root=DATA, settings=StackSettings.fast())
    async with stack:
        run = await run_federation(stack, Analysis(make), aggregator or Keep(), FAST, timeout=60)
    return run, stack


def refused(result: tuple[FederationRun, FlameStack], node: str = "node-1") -> str:
    """The refused node's error; asserts that nothing was released (no final result; an analysis
    node's update never reached the broker)."""
    run, stack = result
    outcome = run.outcomes[node]
    assert outcome.status == "failed", run.report()
    assert outcome.error is not None and "DisclosureRefusedError" in outcome.error, outcome.error
    assert run.final_results == {}, "a refused analysis must release nothing to the hub"
    if node != "aggregator":
        assert sent_by(stack, node) == 0, "the refused update must not reach the broker"
    return outcome.error


def sent_by(stack: FlameStack, node: str) -> int:
    """Messages node ``node`` sent through the broker."""
    return len(stack.events.select("broker.sent", node))


# -- leaky analyses ---------------------------------------------------------------------------------------


async def test_raw_rows_are_refused_on_the_node() -> None:
    result = await federate(lambda df: df)
    error = refused(result)
    assert "rule identifier-column" in error or "rule row-level" in error
    result = await federate(lambda df: df.drop(columns=["patient_id", "birthdate"]))
    assert "rule row-level at payload" in refused(result)


async def test_identifier_column_is_refused() -> None:
    result = await federate(lambda df: {"oldest": df.nlargest(3, "age")[["patient_id", "age"]]})
    assert "rule identifier-column at payload.oldest['patient_id']" in refused(result)


async def test_identifier_value_is_refused() -> None:
    result = await federate(lambda df: {"oldest": str(df.loc[df["age"].idxmax(), "patient_id"])})
    assert "rule identifier-value at payload.oldest" in refused(result)


async def test_crosstab_with_a_cell_of_two_is_refused() -> None:
    def table(df: pd.DataFrame) -> Any:
        df = df.assign(rare=0)
        df.loc[df.index[:2], "rare"] = 1
        return {"table": pd.crosstab(df["gender"], df["rare"])}

    result = await federate(table)
    assert "rule min-cell-count at payload.table[" in refused(result)


async def test_summary_of_one_record_is_refused() -> None:
    result = await federate(lambda df: {"age": summarise([42.0])})
    assert "rule min-records at payload.age.n" in refused(result)


async def test_logistic_regression_with_too_many_parameters_is_refused() -> None:
    def overfit(df: pd.DataFrame) -> Any:
        p = len(df) // 3 + 1  # one parameter more than a third of the records
        return {"gradient": np.zeros(p), "hessian": np.zeros((p, p)), "n": len(df)}

    result = await federate(overfit)
    assert "rule parameter-ratio at payload.gradient" in refused(result)


async def test_final_result_is_checked_on_the_aggregator() -> None:
    # the analysis nodes send a fine summary; the aggregator leaks one node's n=1 summary to the hub
    result = await federate(
        lambda df: {"age": summarise(df["age"].to_numpy(dtype=float))},
        Relay(lambda updates: {"one": summarise([61.0])}),
    )
    error = refused(result, "aggregator")
    assert "rule min-records at result.one.n" in error and "final to hub" in error


async def test_differencing_pair_is_refused_the_second_time(tmp_path: Path) -> None:
    backend = LocalFolderBackend(tmp_path)
    project = "5b1f4c6e-0000-4000-8000-000000000001"

    def stack() -> FlameStack:
        return FlameStack.create(
            1,
            data_root=DATA,
            settings=StackSettings.fast(),
            project_id=project,
            storage_backend=backend,
            analysis_id=str(uuid.uuid4()),
        )

    result = await federate(lambda df: {"age": summarise(df["age"].to_numpy(dtype=float))}, stack=stack())
    assert result[0].ok, result[0].report()
    result = await federate(
        lambda df: {"age": summarise(df["age"].to_numpy(dtype=float)[1:])}, stack=stack()
    )  # the same statistic without one patient
    error = refused(result)
    assert "rule differencing at payload.age" in error
    # a third analysis, of another project, is not compared with the first
    other = FlameStack.create(
        1,
        data_root=DATA,
        settings=StackSettings.fast(),
        storage_backend=backend,
        analysis_id=str(uuid.uuid4()),
    )
    result = await federate(lambda df: {"age": summarise(df["age"].to_numpy(dtype=float)[1:])}, stack=other)
    assert result[0].ok, result[0].report()


class DPMean(flame.Aggregator):
    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> Any:
        return pooled_mean_variance({node: u["age"] for node, u in updates.items()})

    def final_result(self, aggregate: Any) -> Any:
        return {"mean_age": dp.laplace_mean(aggregate, epsilon=self.epsilon, bounds=(0.0, 120.0))}


async def test_dp_budget_persists_across_analyses_and_is_separate_per_project(tmp_path: Path) -> None:
    backend = LocalFolderBackend(tmp_path)

    def stack(project: str) -> FlameStack:
        return FlameStack.create(
            2,
            data_root=DATA,
            settings=StackSettings.fast(),
            project_id=project,
            storage_backend=backend,
            analysis_id=str(uuid.uuid4()),
        )

    def honest(df: pd.DataFrame) -> Any:
        return {"age": summarise(df["age"].to_numpy(dtype=float))}

    first = "5b1f4c6e-0000-4000-8000-00000000000a"
    result = await federate(honest, DPMean(6.0), stack=stack(first))
    assert result[0].ok, result[0].report()
    [raw] = result[0].final_results.values()
    noisy = float(raw.decode().split(":")[1].strip(" }"))
    assert 0 < noisy < 120 or abs(noisy - 50) < 200  # a noisy mean, not the exact one
    result = await federate(honest, DPMean(6.0), stack=stack(first))  # 12 > the default budget of 10
    assert "rule dp-budget at result.mean_age" in refused(result, "aggregator")
    result = await federate(honest, DPMean(6.0), stack=stack("5b1f4c6e-0000-4000-8000-00000000000b"))
    assert result[0].ok, result[0].report()


# -- honest analyses and the audit ---------------------------------------------------------------------


class Pool(flame.Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> Any:
        return pooled_mean_variance({node: u["age"] for node, u in updates.items()})


async def test_honest_analysis_is_released_and_audited_in_log_stream_and_ledger() -> None:
    stack = FlameStack.create(2, data_root=DATA, settings=StackSettings.fast())
    async with stack:
        honest = Analysis(lambda df: {"age": summarise(df["age"].to_numpy(dtype=float))})
        run = await run_federation(stack, honest, Pool(), FAST, timeout=60)
        assert run.ok, run.report()
        logs = stack.po.record("node-1").logs  # an entry may carry several lines (the reporter batches)
        lines = [line for e in logs for line in str(e.get("log")).splitlines() if "disclosure audit" in line]
        assert lines, "each release is in the node's log stream"
        audit = json.loads(lines[0].split("disclosure audit ", 1)[1])
        assert audit["outcome"] == "released" and audit["destination"] == [stack.node("aggregator").node_id]
        assert {"path": "payload.age", "kind": "summary", "n": 200} in audit["statistics"]
        assert audit["digest"].startswith("sha256:")
        node = await start_node(stack, "node-1", "inprocess")
        try:
            ledger = [e for raw in await node.storage.read_tagged(LEDGER_TAG) for e in ledger_entries(raw)]
        finally:
            await node.stop()
        assert [e["digest"] for e in ledger] == [
            json.loads(line.split(" ", 2)[2])["digest"] for line in lines
        ]
        assert all("mean" not in json.dumps(e["statistics"]) for e in ledger)  # no released values


class StrictAnalysis(Analysis):
    #: the analysis tightens the node's policy for itself (it could not loosen it)
    disclosure_policy: ClassVar[dict[str, int]] = {"min_records": 300}


async def test_an_analysis_tightens_the_policy_with_a_class_attribute() -> None:
    result = await federate_with(
        StrictAnalysis(lambda df: {"age": summarise(df["age"].to_numpy(dtype=float))})
    )
    assert "rule min-records at payload.age.n" in refused(result)  # node-1 holds 200 patients


class LooseAnalysis(Analysis):
    disclosure_policy: ClassVar[dict[str, int]] = {"min_records": 2}


async def test_an_analysis_that_loosens_the_policy_fails_before_it_sends() -> None:
    run, stack = await federate_with(
        LooseAnalysis(lambda df: {"age": summarise(df["age"].to_numpy(dtype=float))})
    )
    assert run.outcomes["node-1"].status == "failed"
    assert "min_records" in (run.outcomes["node-1"].error or "") and "loosen" in (
        run.outcomes["node-1"].error or ""
    )
    assert sent_by(stack, "node-1") == 0 and run.final_results == {}


async def federate_with(analysis: flame.Analyzer) -> tuple[FederationRun, FlameStack]:
    stack = FlameStack.create(1, data_root=DATA, settings=StackSettings.fast())
    async with stack:
        run = await run_federation(stack, analysis, Keep(), FAST, timeout=60)
    return run, stack

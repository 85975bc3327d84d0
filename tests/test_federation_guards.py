"""Guards of a federation: max_rounds without convergence, and the author's line in a failure reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

import flame
from flame.federated import Aggregator, FederationOptions
from flame.federated.failures import author_location, describe_failure
from flame.sim.federation import Federation
from flame.sim.stack import FlameStack
from tests.test_federation import (
    ALL3,
    FAST_TIMEOUTS,
    SumAggregator,
    SumAnalyzer,
    assert_all_executed,
    data_root,  # noqa: F401  (fixture)
    new_stack,
    stacks,  # noqa: F401  (fixture)
    subclass,
)

HERE = Path(__file__).name
EXAMPLES_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


def logs(stack: FlameStack, name: str) -> list[str]:
    return [str(entry.get("log")) for entry in stack.po.record(name).logs]


async def federate(
    stack: FlameStack, aggregator: Any, options: FederationOptions, analyzer: Any = SumAnalyzer
) -> tuple[Federation, Any]:
    federation = Federation(stack, analyzer, aggregator, options, node_kwargs={"timeouts": FAST_TIMEOUTS})
    run = await federation.run(timeout=20)
    return federation, run


async def test_max_rounds_without_convergence_warns_in_log_and_run(
    stacks: list[FlameStack],  # noqa: F811
    data_root: Path,  # noqa: F811
) -> None:
    stack = new_stack(stacks, data_root)
    federation, run = await federate(
        stack, SumAggregator, FederationOptions(max_rounds=2, round_deadline=5.0)
    )
    assert_all_executed(run)
    [aggregator] = federation.aggregators
    assert aggregator.convergence == "max-rounds"
    [warning] = aggregator.warnings
    assert "max_rounds=2 reached after round 2 but converged() never returned True" in warning
    assert any(line.startswith("warning: max_rounds=2") for line in logs(stack, "aggregator"))
    # and in the run's report
    assert run.report()["warnings"] == [warning] and run.report()["convergence"] == "max-rounds"


async def test_require_convergence_fails_the_analysis_and_submits_nothing(
    stacks: list[FlameStack],  # noqa: F811
    data_root: Path,  # noqa: F811
) -> None:
    stack = new_stack(stacks, data_root)
    options = FederationOptions(max_rounds=1, round_deadline=5.0, send_timeout=5.0, require_convergence=True)
    _, run = await federate(stack, SumAggregator, options)
    assert {name: o.status for name, o in run.outcomes.items()} == dict.fromkeys(run.outcomes, "failed")
    assert "require_convergence=True" in (run.outcomes["aggregator"].error or "")
    for name in ALL3:
        assert "converged() never returned True" in (run.outcomes[name].error or "")
    assert await stack.final_results() == {}


async def test_no_warning_when_converged_or_not_iterative(
    stacks: list[FlameStack],  # noqa: F811
    data_root: Path,  # noqa: F811
) -> None:
    class Once(Aggregator):  # keeps the default converged(): max_rounds rounds by design
        def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
            return {"total": sum(u["value"] for u in updates.values()), "round": round}

    options = FederationOptions(max_rounds=1, round_deadline=5.0, require_convergence=True)
    federation, run = await federate(new_stack(stacks, data_root), Once, options)
    assert_all_executed(run)
    assert federation.aggregators[0].convergence == "not-iterative"
    assert federation.aggregators[0].warnings == []
    options = FederationOptions(max_rounds=3, round_deadline=5.0, require_convergence=True)
    federation, run = await federate(
        new_stack(stacks, data_root), subclass(SumAggregator, converge_at=2), options
    )
    assert_all_executed(run)
    assert federation.aggregators[0].convergence == "converged"
    assert federation.aggregators[0].warnings == []


class FailingAggregator(SumAggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        values = [u["value"] for u in updates.values()]
        return {"total": values[len(values) + 1]}  # the author's bug


class FailingAnalyzer(SumAnalyzer):
    def analyze(self, data: Any, aggregate: Any | None, round: int) -> Any:
        frame = data.dataframe("values.csv")
        return {"value": int(frame["no such column"].sum())}  # raised inside pandas


def _line_of(cls: type, text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, line in enumerate(lines) if text in line)


async def test_an_error_in_aggregate_reports_the_authors_file_and_line(
    stacks: list[FlameStack],  # noqa: F811
    data_root: Path,  # noqa: F811
) -> None:
    stack = new_stack(stacks, data_root)
    options = FederationOptions(max_rounds=1, round_deadline=5.0, send_timeout=5.0)
    _, run = await federate(stack, FailingAggregator, options)
    where = f"{HERE}:{_line_of(FailingAggregator, 'the author')}, in aggregate"
    assert any(
        "IndexError: list index out of range (at " in line and where in line
        for line in logs(stack, "aggregator")
    )
    for name in ALL3:  # the analysis nodes' reason: the aggregator's abort names the line too
        assert where in (run.outcomes[name].error or ""), run.outcomes[name].error


async def test_an_error_in_analyze_raised_inside_pandas_names_the_authors_line(
    stacks: list[FlameStack],  # noqa: F811
    data_root: Path,  # noqa: F811
) -> None:
    stack = new_stack(stacks, data_root)
    options = FederationOptions(max_rounds=1, round_deadline=5.0, send_timeout=5.0)
    _, run = await federate(stack, SumAggregator, options, analyzer=FailingAnalyzer)
    assert all(run.outcomes[name].status == "failed" for name in ALL3)
    where = f"{HERE}:{_line_of(FailingAnalyzer, 'inside pandas')}, in analyze"
    for name in ALL3:
        assert any("KeyError" in line and where in line for line in logs(stack, name)), logs(stack, name)


def test_describe_failure_names_the_calling_line_not_the_library() -> None:
    try:
        int("x")  # the error arises in the builtin; the author's line is this one
    except ValueError as exc:
        line = exc.__traceback__.tb_lineno if exc.__traceback__ is not None else 0
        location = author_location(exc)
        text = describe_failure(exc)
    assert location is not None and location.endswith(
        f"{HERE}:{line}, in test_describe_failure_names_the_calling_line_not_the_library"
    )
    assert text == f"ValueError: invalid literal for int() with base 10: 'x' (at {location})"
    assert describe_failure(RuntimeError("no traceback")) == "RuntimeError: no traceback"


def test_an_analysis_installed_as_a_package_is_still_located() -> None:
    import os
    import sysconfig

    filename = os.path.join(sysconfig.get_paths()["purelib"], "hospital_analysis", "core.py")
    namespace: dict[str, Any] = {}
    exec(compile("def analyze():\n    return {}['age']\n", filename, "exec"), namespace)
    try:
        namespace["analyze"]()
    except KeyError as exc:
        assert exc.__traceback__ is not None
        only_installed = exc.with_traceback(exc.__traceback__.tb_next)  # without this test's own frame
        location = author_location(only_installed)
    assert location is not None and location.endswith("hospital_analysis/core.py:2, in analyze")


NEVER_CONVERGES = """
import flame


class Count(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        return {"n": len(data.dataframe("patients.csv"))}


class Never(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(u["n"] for u in updates.values())

    def converged(self, aggregate, previous, round):
        return False


if __name__ == "__main__":
    flame.run(Count(), Never(), max_rounds=2)
"""


@pytest.mark.parametrize("mode", ["inprocess", pytest.param("processes", marks=pytest.mark.process)])
def test_a_local_run_reports_the_convergence_warning(
    tmp_path: Path, mode: Literal["inprocess", "processes"]
) -> None:
    analysis = tmp_path / "never.py"
    analysis.write_text(NEVER_CONVERGES)
    result = flame.simulate(analysis, data=EXAMPLES_DATA, mode=mode, timeout=120)
    assert result.ok, result.errors
    [warning] = result.report["run"]["warnings"]
    assert warning.startswith("max_rounds=2 reached after round 2 but converged() never returned True")

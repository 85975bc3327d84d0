"""``flame.star``: the examples in PrivateAIM's documentation style, unchanged, in both local harnesses.

Harness 1 runs each example script as every node's entry point against the emulated node stack, with
the sample data of ``examples/data`` behind each node's FHIR and S3 sources (:func:`run_star_script`).
Harness 2 is ``StarModelTester`` with data splits made from the same files.
"""

from __future__ import annotations

import io
import json
import runpy
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flame.sim import FlameStack, StackSettings
from flame.star import StarAggregator, StarAnalyzer, StarModelTester, StarRun, run_star_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COMPAT = EXAMPLES / "compat"
DATA = EXAMPLES / "data"
NODES = ("node-1", "node-2", "node-3")
BMI_QUERY = "Observation?code=http://loinc.org|39156-5"


def pooled() -> pd.DataFrame:
    return pd.concat([pd.read_csv(DATA / n / "s3" / "patients.csv") for n in NODES], ignore_index=True)


def example(name: str) -> dict[str, Any]:
    """The example's module namespace (its classes), without running its main block."""
    return runpy.run_path(str(COMPAT / f"{name}.py"), run_name=f"compat_{name}")


def on_stack(name: str, mode: str = "inprocess") -> StarRun:
    stack = FlameStack.create(3, data_root=DATA, settings=StackSettings.fast(po_enabled=False))
    run = run_star_script(COMPAT / f"{name}.py", stack, mode=mode, timeout=60)  # type: ignore[arg-type]
    assert run.ok, run.report()
    return run


def hub_text(run: StarRun) -> str:
    (content,) = run.final_results.values()
    return content.decode()


def literal(text: str) -> Any:
    import ast

    return ast.literal_eval(text)


# -- data splits as get_fhir_data / get_s3_data hand them over ---------------------------------------------


def patient_bundle(node: str) -> dict[str, Any]:
    return json.loads((DATA / node / "fhir" / "patients.json").read_text())


def count_split(node: str) -> list[dict[str, Any]]:
    total = sum(1 for e in patient_bundle(node)["entry"] if e["resource"]["resourceType"] == "Patient")
    return [{"Patient?_summary=count": {"resourceType": "Bundle", "type": "searchset", "total": total}}]


def bmi_split(node: str) -> list[dict[str, Any]]:
    entries = [
        e
        for e in patient_bundle(node)["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "39156-5"
    ]
    return [
        {BMI_QUERY: {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}}
    ]


def csv_split(node: str) -> list[dict[str, bytes]]:
    return [{"patients.csv": (DATA / node / "s3" / "patients.csv").read_bytes()}]


# -- the four examples, harness 1: the scripts as node entry points ----------------------------------------


@pytest.mark.parametrize("mode", ["inprocess", "served"])
def test_patient_count_script_on_the_stack(mode: str) -> None:
    run = on_stack("patient_count", mode)
    assert float(hub_text(run)) == len(pooled())


def test_iterative_median_script_on_the_stack() -> None:
    run = on_stack("iterative_median")
    result = literal(hub_text(run))
    values = pooled()["bmi"].sort_values().to_numpy()
    lower_median = values[(len(values) + 1) // 2 - 1]
    assert result["low"] < lower_median <= result["high"] and result["high"] - result["low"] < 0.01
    assert run.events["storage.upload"] > 3 * 5  # several rounds, each through storage


def test_s3_csv_script_on_the_stack() -> None:
    result = literal(hub_text(on_stack("s3_csv_means")))
    frame = pooled()
    assert result["patients"] == len(frame)
    assert result["mean_age"] == pytest.approx(frame["age"].mean(), rel=1e-12)
    assert result["mean_bmi"] == pytest.approx(frame["bmi"].mean(), rel=1e-12)


def test_local_dp_script_on_the_stack() -> None:
    run = on_stack("local_dp_count")
    noisy = float(hub_text(run))
    true = int(pooled()["diabetes"].sum())
    assert noisy != true and abs(noisy - true) < 25  # Laplace(1): beyond 25 has probability e^-25
    assert run.events["storage.final"] == 1


# -- harness 2: StarModelTester ----------------------------------------------------------------------------


def test_patient_count_under_the_tester(capsys: pytest.CaptureFixture[str]) -> None:
    ns = example("patient_count")
    tester = StarModelTester(
        [count_split(n) for n in NODES],
        ns["MyAnalyzer"],
        ns["MyAggregator"],
        "fhir",
        query="Patient?_summary=count",
    )
    assert tester.latest_result == len(pooled()) and tester.converged and tester.num_iterations == 1
    assert f"Final result: {float(len(pooled()))}" in capsys.readouterr().out


def test_iterative_median_under_the_tester(tmp_path: Path) -> None:
    ns = example("iterative_median")
    target = tmp_path / "median.txt"
    tester = StarModelTester(
        [bmi_split(n) for n in NODES],
        ns["MedianAnalyzer"],
        ns["MedianAggregator"],
        "fhir",
        query=BMI_QUERY,
        simple_analysis=False,
        result_filepath=str(target),
    )
    values = pooled()["bmi"].sort_values().to_numpy()
    assert literal(target.read_text())["median"] == pytest.approx(
        values[(len(values) + 1) // 2 - 1], abs=0.01
    )
    assert tester.num_iterations > 5


def test_s3_csv_under_the_tester() -> None:
    ns = example("s3_csv_means")
    tester = StarModelTester(
        [csv_split(n) for n in NODES], ns["MyAnalyzer"], ns["MyAggregator"], "s3", query="patients.csv"
    )
    assert tester.latest_result["patients"] == len(pooled())
    assert literal(tester.result) == tester.latest_result  # the hub got str(result)


def test_local_dp_under_the_tester() -> None:
    ns = example("local_dp_count")
    tester = StarModelTester(
        [csv_split(n) for n in NODES],
        ns["DiabetesCounter"],
        ns["TotalCounter"],
        "s3",
        query="patients.csv",
        epsilon=ns["EPSILON"],
        sensitivity=ns["SENSITIVITY"],
    )
    true = int(pooled()["diabetes"].sum())
    assert tester.latest_result == true  # the aggregate; the hub holds the noisy release
    assert float(tester.result) != true and abs(float(tester.result) - true) < 25


def test_the_documented_tester_script_prints_and_returns(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(COMPAT / "test_patient_count_locally.py"), run_name="__main__")
    assert f"Final result: {float(len(pooled()))}" in capsys.readouterr().out


# -- the tester's contract ---------------------------------------------------------------------------------

SEEN: dict[str, Any] = {}


class Recorder(StarAnalyzer):
    def analysis_method(self, data: Any, aggregator_results: Any) -> Any:
        SEEN[self.id] = data
        return int(data["value"].sum())


class Sum(StarAggregator):
    def aggregation_method(self, analysis_results: list[Any]) -> Any:
        return sum(analysis_results)

    def has_converged(self, result: Any, last_result: Any) -> bool:
        return True


def test_the_tester_hands_each_split_over_verbatim() -> None:
    SEEN.clear()
    splits = [pd.DataFrame({"value": [1, 2]}), pd.DataFrame({"value": [10]}), pd.DataFrame({"value": [100]})]
    tester = StarModelTester(splits, Recorder, Sum, "s3")
    assert tester.latest_result == 113
    assert sorted(map(id, SEEN.values())) == sorted(map(id, splits))  # the very objects, not copies


def test_node_roles_choose_the_aggregator_split(tmp_path: Path) -> None:
    SEEN.clear()
    splits = [pd.DataFrame({"value": [1]}), pd.DataFrame({"value": [50]}), pd.DataFrame({"value": [7]})]
    tester = StarModelTester(splits, Recorder, Sum, "fhir", node_roles=["default", "aggregator", "default"])
    assert tester.latest_result == 8 and len(SEEN) == 2
    with pytest.raises(ValueError, match="one role per split"):
        StarModelTester(splits, Recorder, Sum, "fhir", node_roles=["default"])


def test_multiple_results_are_written_as_separate_files(tmp_path: Path) -> None:
    class Parts(Sum):
        def aggregation_method(self, analysis_results: list[Any]) -> Any:
            return [min(analysis_results), max(analysis_results)]

    target = tmp_path / "result.txt"
    splits = [pd.DataFrame({"value": [1]}), pd.DataFrame({"value": [2]})]
    StarModelTester(splits, Recorder, Parts, "s3", multiple_results=True, result_filepath=str(target))
    assert (tmp_path / "result_1.txt").read_text() == "1" and (tmp_path / "result_2.txt").read_text() == "2"


class Failing(StarAnalyzer):
    def analysis_method(self, data: Any, aggregator_results: Any) -> Any:
        if data == "bad":
            raise ZeroDivisionError("bad split")
        return 1


def test_a_failing_analyzer_ends_the_test_at_once_with_its_error() -> None:
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError, match="bad split"):
        StarModelTester(["good", "bad"], Failing, Sum, "fhir")
    assert time.monotonic() - started < 15


async def test_the_tester_works_inside_a_running_event_loop() -> None:
    tester = StarModelTester([io.BytesIO(b"x")] * 2, _Len, Sum, "s3")  # a Jupyter cell calls it like this
    assert tester.latest_result == 2


class _Len(StarAnalyzer):
    def analysis_method(self, data: Any, aggregator_results: Any) -> Any:
        return len(data.getvalue())


# -- the production path: one OS process per node, configured by its environment only ----------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_example_runs_as_flame_containers_would() -> None:
    """Each node runs ``python patient_count.py`` with a container's environment; FlameCoreSDK reads it,
    serves the analysis API on its port, and the process exits once its node finished."""
    import os
    import subprocess
    import sys

    from flame.node.loop import LoopThread

    # one analysis node and the aggregator: two OS processes (each imports the SDK, about 1 s)
    stack = FlameStack.create(1, data_root=DATA, settings=StackSettings.fast(po_enabled=False))
    loop = LoopThread("containers")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        loop.run(stack.serve(), 30)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "ANALYSIS_", "KEYCLOAK"))}
        for name in stack.nodes:
            port = _free_port()
            stack.attach_analysis(name, f"http://127.0.0.1:{port}")
            env = {
                **base,
                **stack.env(name, per_node_url=True),
                "FLAME_ANALYSIS_PORT": str(port),
                "FLAME_ANALYSIS_HOST": "127.0.0.1",
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(COMPAT / "patient_count.py")],
                    env=env,
                    cwd=COMPAT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        outputs = [p.communicate(timeout=60)[0].decode() for p in processes]
        assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
        final = loop.run(stack.final_results(), 10)
        node_1 = pd.read_csv(DATA / "node-1" / "s3" / "patients.csv")
        assert [float(v) for v in final.values()] == [float(len(node_1))]
        assert set(stack.po.statuses().values()) == {"executed"}
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        try:
            loop.run(stack.aclose(), 30)
        finally:
            loop.stop()

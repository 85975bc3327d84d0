"""``flame sim`` (and ``flame run``): analysis files on a local federation, through the command line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import flame
from flame.cli import main
from flame.local.api import busy_threads, simulate, simulate_async
from flame.local.config import EXIT_TIMEOUT
from flame.local.loading import AnalysisFileError, load_analysis
from flame.local.report import default_report_path
from flame.local.waiting import stop_tasks, within
from flame.sim.display import node_rows, node_table
from flame.sim.federation import cannot_finish
from flame.sim.stack import FlameStack

MEAN_ANALYSIS = '''
"""Federated mean of the column ``value`` of ``data.csv``."""
from typing import Any

import flame


class Mean(flame.Analyzer):
    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, float]:
        values = data.dataframe("data.csv")["value"]
        return {"n": len(values), "sum": float(values.sum())}


class Pool(flame.Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        n = sum(u["n"] for u in updates.values())
        return {"n": n, "mean": round_(sum(u["sum"] for u in updates.values()) / n)}


def round_(x: float) -> float:
    return float(f"{x:.10f}")


if __name__ == "__main__":
    flame.run(Mean(), Pool(), max_rounds=1)
'''


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def make_data(root: Path, nodes: int = 3, seed: int = 1) -> pd.DataFrame:
    """``root/node-i/s3/data.csv``; returns all rows pooled."""
    frames = []
    for i in range(1, nodes + 1):
        rng = np.random.default_rng([seed, i])
        frame = pd.DataFrame(
            {"patient_id": [f"p{i}-{j}" for j in range(20 + 5 * i)], "value": rng.normal(50, 10, 20 + 5 * i)}
        )
        path = root / f"node-{i}" / "s3" / "data.csv"
        path.parent.mkdir(parents=True)
        frame.to_csv(path, index=False)
        frames.append(pd.read_csv(path))
    return pd.concat(frames)


def expected_mean(pooled: pd.DataFrame) -> float:
    return float(f"{pooled['value'].sum() / len(pooled):.10f}")


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    """An analysis file, its data folder, and the pooled rows."""
    data = tmp_path / "data"
    pooled = make_data(data)
    return write(tmp_path / "analysis.py", MEAN_ANALYSIS), data, pooled


def sim(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["sim", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def read_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def final_texts(report: dict[str, Any]) -> list[str]:
    return [entry["text"] for entry in report["final_results"].values()]


def test_fast_mode_runs_the_file_and_writes_the_report(
    project: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis, data, pooled = project
    report_path = tmp_path / "out" / "report.json"
    code, out, _ = sim(capsys, analysis, "--data", data, "--nodes", "3", "--no-live", "--report", report_path)
    expected = {"n": len(pooled), "mean": expected_mean(pooled)}
    assert code == 0, out
    assert f"final result: {expected}" in out
    assert "round 1: aggregating 3 update(s)" in out  # the plain log lines
    assert "ok: every node executed" in out
    report = read_report(report_path)
    assert report["ok"] is True and report["mode"] == "inprocess"
    assert report["result"] == expected
    assert final_texts(report) == [str(expected)]
    assert set(report["run"]["nodes"]) == {"aggregator", "node-1", "node-2", "node-3"}
    assert all(node["status"] == "executed" for node in report["run"]["nodes"].values())
    assert [r["round"] for r in report["run"]["rounds"]] == [1]
    assert report["events"]["counts"]["broker.sent"] > 0
    assert report["federation_options"]["max_rounds"] == 1
    assert {"load", "setup", "run", "total"} <= set(report["timings"])
    assert report["errors"] == []


def test_node_count_defaults_to_the_data_folders(
    project: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    analysis, data, pooled = project
    run = simulate(analysis, data=data)
    assert run.ok
    assert len(run.outcome.run.outcomes) == 4
    assert run.result["n"] == len(pooled)


def test_split_of_one_csv_across_the_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    analysis = write(tmp_path / "analysis.py", MEAN_ANALYSIS)
    pooled = make_data(tmp_path / "src", nodes=1)
    whole = tmp_path / "data.csv"
    pooled.to_csv(whole, index=False)
    report_path = tmp_path / "report.json"
    code, out, _ = sim(
        capsys,
        analysis,
        "--split",
        whole,
        "--nodes",
        "4",
        "--seed",
        "3",
        "--no-live",
        "--report",
        report_path,
    )
    assert code == 0, out
    assert "split" in out and "across 4 nodes" in out
    report = read_report(report_path)
    assert report["result"] == {"n": len(pooled), "mean": expected_mean(pooled)}
    sources = report["stack"]["nodes"]["node-4"]["data_sources"]
    assert sources == [{"name": "node-4-s3", "kind": "s3"}]
    assert len(report["run"]["rounds"][0]["contributors"]) == 4


def test_split_of_a_fhir_bundle(tmp_path: Path) -> None:
    from flame.sim import synthetic

    patients = synthetic.generate_patients(23, seed=5, site="x")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(synthetic.dump_bundle(synthetic.to_fhir(patients)))
    analysis = write(
        tmp_path / "count.py",
        """
        import flame

        class Count(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                return data.fhir_count("Patient")

        class Total(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return sum(updates.values())

        if __name__ == "__main__":
            flame.run(Count, Total)
        """,
    )
    run = simulate(analysis, split=bundle, nodes=2, seed=1)
    assert run.ok and run.result == 23


@pytest.mark.parametrize("faults", ["drop=0.15", "duplicate=0.5", "drop=0.1;duplicate=0.3;reorder=0.3"])
def test_delivery_faults_still_give_the_result(
    project: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str], faults: str
) -> None:
    analysis, data, pooled = project
    report_path = tmp_path / "report.json"
    code, out, _ = sim(
        capsys,
        analysis,
        "--data",
        data,
        "--faults",
        faults,
        "--seed",
        "7",
        "--time-scale",
        "0.02",
        "--no-live",
        "--report",
        report_path,
    )
    assert code == 0, out
    report = read_report(report_path)
    assert report["result"] == {"n": len(pooled), "mean": expected_mean(pooled)}
    assert report["events"]["counts"].get("fault.delivery", 0) > 0
    assert report["faults"]["spec"] == faults and report["faults"]["rules"]


def test_a_failing_analyzer_exits_1_with_the_error(
    project: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data, _ = project
    analysis = write(
        tmp_path / "failing.py",
        """
        import flame

        class Broken(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                raise ValueError("the column is missing")

        class Sum(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return sum(updates.values())

        if __name__ == "__main__":
            flame.run(Broken(), Sum())
        """,
    )
    report_path = tmp_path / "report.json"
    code, out, _ = sim(capsys, analysis, "--data", data, "--no-live", "--report", report_path)
    assert code == 1
    assert "FAILED" in out
    assert "ValueError: the column is missing" in out
    assert "stopped:" in out and "quorum" in out  # not left waiting for the round deadline
    report = read_report(report_path)
    assert report["ok"] is False and report["errors"]
    assert report["run"]["nodes"]["node-1"]["status"] == "failed"


def test_one_failing_node_is_tolerated_with_a_quorum(tmp_path: Path) -> None:
    analysis = write(
        tmp_path / "quorum.py",
        """
        import flame

        class One(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                if data.sources()[0].name.startswith("node-2"):
                    raise RuntimeError("this hospital is down")
                return 1

        class Sum(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return sum(updates.values())

        if __name__ == "__main__":
            flame.run(One(), Sum(), quorum=2, round_deadline=1)
        """,
    )
    make_data(tmp_path / "data")
    run = simulate(analysis, data=tmp_path / "data", time_scale=0.02)
    assert run.result == 2  # the aggregator went on with the quorum
    assert run.outcome.run.outcomes["node-2"].status == "failed"
    assert not run.ok


def test_a_file_without_flame_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    analysis = write(
        tmp_path / "library.py",
        """
        import flame

        class Mean(flame.Analyzer):
            pass
        """,
    )
    code, _, err = sim(capsys, analysis, "--no-live", "--report", tmp_path / "r.json")
    assert code == 1
    assert "never called flame.run" in err and 'if __name__ == "__main__":' in err
    assert not (tmp_path / "r.json").exists()


def test_load_errors_name_the_file_and_line(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.py", "import flame\n\nx = 1 / 0\n")
    with pytest.raises(AnalysisFileError, match=r"ZeroDivisionError.*\n.*broken\.py, line 3: x = 1 / 0"):
        load_analysis(broken)
    with pytest.raises(AnalysisFileError, match="no such file"):
        load_analysis(tmp_path / "missing.py")
    wrong = write(tmp_path / "wrong.py", "import flame\nflame.run(object(), object())\n")
    with pytest.raises(AnalysisFileError, match=r"must be a flame\.Analyzer"):
        load_analysis(wrong)


def test_the_rest_of_the_file_after_flame_run_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    analysis = write(
        tmp_path / "a.py",
        f"""
        import flame

        class A(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                return 1

        class G(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return 1

        if __name__ == "__main__":
            result = flame.run(A(), G(), max_rounds=4, quorum=0.5)
            open({str(marker)!r}, "w").write(str(result["x"]))
        """,
    )
    loaded = load_analysis(analysis)
    assert (loaded.options.max_rounds, loaded.options.quorum) == (4, 0.5)
    assert not marker.exists()


def test_sibling_modules_are_imported_like_python_does(tmp_path: Path) -> None:
    for name, value in (("one", 1), ("two", 2)):
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "helpers.py", f"VALUE = {value}\n")
        write(
            folder / "analysis.py",
            """
            import flame
            from helpers import VALUE

            class A(flame.Analyzer):
                def analyze(self, data, aggregate, round):
                    return VALUE

            class G(flame.Aggregator):
                def aggregate(self, updates, round, previous):
                    return sum(updates.values())

            if __name__ == "__main__":
                flame.run(A(), G())
            """,
        )
    # each file gets its own helpers.py, though both have the same module name
    assert simulate(tmp_path / "one" / "analysis.py", nodes=2).result == 2
    assert simulate(tmp_path / "two" / "analysis.py", nodes=2).result == 4


def test_max_rounds_overrides_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    analysis = write(
        tmp_path / "iterative.py",
        """
        import flame

        class Step(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                return (aggregate or 0) + 1

        class Max(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return max(updates.values())

        if __name__ == "__main__":
            flame.run(Step(), Max(), max_rounds=2)
        """,
    )
    report_path = tmp_path / "report.json"
    code, out, _ = sim(
        capsys, analysis, "--nodes", "2", "--max-rounds", "3", "--no-live", "--report", report_path
    )
    assert code == 0, out
    report = read_report(report_path)
    assert report["result"] == 3
    assert [r["round"] for r in report["run"]["rounds"]] == [1, 2, 3]
    assert report["federation_options"]["max_rounds"] == 3
    assert "final result: 3" in out


def test_served_mode(project: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    analysis, data, pooled = project
    run = simulate(analysis, data=data, mode="served")
    assert run.ok and run.result == {"n": len(pooled), "mean": expected_mean(pooled)}


def test_a_pod_restart_resumes_the_node(tmp_path: Path) -> None:
    analysis = write(
        tmp_path / "slow.py",
        """
        import time
        import flame

        class Slow(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                time.sleep(0.2)
                return round

        class Sum(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return (previous or 0) + sum(updates.values())

        if __name__ == "__main__":
            flame.run(Slow(), Sum(), max_rounds=4)
        """,
    )
    run = simulate(analysis, nodes=2, faults="restart=node-1@0.5", time_scale=0.1, timeout=60)
    assert run.ok, run.errors
    assert run.result == 2 * (1 + 2 + 3 + 4)
    assert run.outcome.run.outcomes["node-1"].incarnations == 2
    assert [e["kind"] for e in run.events].count("node.restart") == 1


def test_timeout_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    analysis = write(
        tmp_path / "stuck.py",
        """
        import time
        import flame

        class Stuck(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                time.sleep(1.5)
                return 1

        class Sum(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return 1

        if __name__ == "__main__":
            flame.run(Stuck(), Sum())
        """,
    )
    code, out, _ = sim(
        capsys, analysis, "--nodes", "1", "--timeout", "0.3", "--no-live", "--report", tmp_path / "r.json"
    )
    assert code == EXIT_TIMEOUT == 124
    assert "did not finish within 0.3 s" in out
    report = read_report(tmp_path / "r.json")
    assert report["stopped"].startswith("the federation did not finish")
    assert report["status"] == "timeout" and report["ok"] is False


_STARTED, _RELEASE = threading.Event(), threading.Event()


class _Stuck(flame.Analyzer):
    def analyze(self, data: Any, aggregate: Any, round: int) -> int:
        _STARTED.set()
        _RELEASE.wait(30.0)  # author code that cannot be interrupted
        return 1


class _Sum(flame.Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> int:
        return sum(updates.values())


def test_simulate_does_not_wait_for_busy_author_threads() -> None:
    _STARTED.clear()
    _RELEASE.clear()
    try:
        started = time.monotonic()
        result = simulate(_Stuck(), _Sum(), nodes=1, timeout=3.0)
        assert result.status == "timeout" and result.exit_code == EXIT_TIMEOUT
        assert _STARTED.is_set()  # the analyzer ran, and is still blocked
        assert time.monotonic() - started < 20.0  # not the 30 s the analyzer blocks
        assert busy_threads()  # still running, and reported
    finally:
        _RELEASE.set()


def test_usage_errors(project: tuple[Path, Path, pd.DataFrame], capsys: pytest.CaptureFixture[str]) -> None:
    analysis, data, _ = project
    assert sim(capsys, analysis, "--processes", "--max-rounds", "2")[0] == 2
    assert sim(capsys, analysis, "--nodes", "0")[0] == 2
    assert sim(capsys, analysis, "--data", data / "nothing")[0] == 2
    code, out, _ = sim(capsys, analysis, "--faults", "explode=1")
    assert code == 2 and "unknown fault" in out
    with pytest.raises(SystemExit):
        main(["sim", str(analysis), "--data", str(data), "--split", str(analysis)])
    capsys.readouterr()


def test_default_report_folder(
    project: tuple[Path, Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = default_report_path(), default_report_path()
    assert first.name == "report.json" and first.parent.parent == tmp_path / "flame-runs"
    assert first.parent != second.parent  # a fresh folder for every run
    analysis, data, _ = project
    assert main(["sim", str(analysis), "--data", str(data), "--no-live"]) == 0
    assert len(list((tmp_path / "flame-runs").glob("*/report.json"))) == 1


async def test_live_display_shows_every_node(project: tuple[Path, Path, pd.DataFrame]) -> None:
    analysis, data, _ = project
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140)
    outcome = await simulate_async(analysis, data=data, console=console, live=True)
    assert outcome.ok
    text = out.getvalue()
    for name in ("aggregator", "node-1", "node-2", "node-3", "executed", "messages", "retries"):
        assert name in text


async def test_display_rows_and_table() -> None:
    stack = FlameStack.create(2)
    rows = node_rows(stack)
    assert [row.name for row in rows] == ["aggregator", "node-1", "node-2"]
    assert rows[0].status == "starting" and rows[0].round is None
    stack.po.records["node-1"].logs.append({"log": "status: started\nround 2: waiting for the aggregate"})
    row = node_rows(stack)[1]
    assert (row.round, row.last_log) == (2, "round 2: waiting for the aggregate")
    out = io.StringIO()
    Console(file=out, width=140).print(node_table(stack, max_rounds=3))
    assert "2/3" in out.getvalue() and "waiting for the aggregate" in out.getvalue()
    await stack.aclose()


def test_cannot_finish_follows_the_quorum() -> None:
    from flame.federated import FederationOptions

    stack = FlameStack.create(3)
    everyone = FederationOptions()
    assert cannot_finish(stack, everyone, set()) is None
    assert "quorum" in (cannot_finish(stack, everyone, {"node-1"}) or "")
    assert "aggregator" in (cannot_finish(stack, everyone, {"aggregator"}) or "")
    two = FederationOptions(quorum=2)
    assert cannot_finish(stack, two, {"node-1"}) is None
    assert cannot_finish(stack, two, {"node-1", "node-3"}) is not None


def test_flame_run_runs_the_file_like_python(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "helper.py", "WORD = 'hello'\n")
    script = write(tmp_path / "script.py", "import sys\nfrom helper import WORD\nprint(WORD, sys.argv[1:])\n")
    assert main(["run", str(script), "a", "b"]) == 0
    assert "hello ['a', 'b']" in capsys.readouterr().out
    failing = write(
        tmp_path / "fails.py",
        "from flame.errors import FederationError\nraise FederationError('quorum not reached')\n",
    )
    assert main(["run", str(failing)]) == 1
    assert "FederationError: quorum not reached" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.py")]) == 1


def test_flame_run_without_a_node_environment_says_what_is_missing(
    project: tuple[Path, Path, pd.DataFrame],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ANALYSIS_ID", "PROJECT_ID", "DEPLOYMENT_NAME", "KEYCLOAK_TOKEN", "DATA_SOURCE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    analysis, _, _ = project
    assert main(["run", str(analysis)]) == 2  # a usage error: not on a node
    err = capsys.readouterr().err
    assert "ConfigurationError: ANALYSIS_ID: is not set" in err and "flame sim" in err


@pytest.mark.process
def test_process_mode_gives_the_fast_mode_result(
    project: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis, data, pooled = project
    fast, processes = tmp_path / "fast.json", tmp_path / "processes.json"
    assert sim(capsys, analysis, "--data", data, "--no-live", "--report", fast)[0] == 0
    code, out, _ = sim(capsys, analysis, "--data", data, "--processes", "--no-live", "--report", processes)
    assert code == 0, out
    report = read_report(processes)
    assert report["ok"] is True and report["mode"] == "processes"
    assert final_texts(report) == final_texts(read_report(fast))
    assert final_texts(report) == [str({"n": len(pooled), "mean": expected_mean(pooled)})]
    assert f"final result: {final_texts(report)[0]}" in out
    for name, records in report["processes"].items():
        assert [(r["exit_code"], r["killed"]) for r in records] == [(0, False)], name
        assert records[0]["deployment"].startswith("analysis-")
    assert [(r["round"], r["updates"]) for r in report["run"]["rounds"]] == [(1, 3)]


@pytest.mark.process
def test_a_crashing_node_process_ends_the_run_with_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = write(
        tmp_path / "crash.py",
        """
        import os
        import flame

        class A(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                return 1

        class G(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return sum(updates.values())

        if __name__ == "__main__":
            if os.environ.get("DATA_SOURCE_TOKEN", "none_needed") != "none_needed":
                import a_module_no_node_has
            flame.run(A(), G())
        """,
    )
    report_path = tmp_path / "report.json"
    code, out, _ = sim(capsys, analysis, "--nodes", "2", "--processes", "--no-live", "--report", report_path)
    assert code == 1
    assert "process exited with code 1" in out
    assert "ModuleNotFoundError: No module named 'a_module_no_node_has'" in out
    report = read_report(report_path)
    assert report["stopped"] and "quorum" in report["stopped"]
    ends = {
        name: [(r["exit_code"], r["killed"]) for r in records]
        for name, records in report["processes"].items()
    }
    assert (1, False) in ends["node-1"] + ends["node-2"]  # the first to crash stopped the run
    assert ends["aggregator"] == [(-15, True)]  # stopped by flame sim, its exit recorded


ROUND_TWO_FAILS = """
import flame

class FailsInRoundTwo(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        if round >= 2:
            raise RuntimeError("every node fails in round 2")
        return 1

class Sum(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(updates.values())

if __name__ == "__main__":
    flame.run(FailsInRoundTwo(), Sum(), max_rounds=3)
"""


def run_bounded(argv: list[str], bound: float) -> int | None:
    """``flame`` with ``argv`` on a thread; its exit code, or None when it did not return within ``bound``."""
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    thread.start()
    thread.join(bound)
    return codes[0] if codes else None


def test_failing_nodes_never_hang_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every analysis node raises in round 2: each of 30 runs ends at once, failed, with a report."""
    analysis = write(tmp_path / "round_two.py", ROUND_TWO_FAILS)
    for attempt in range(30):
        report_path = tmp_path / f"report-{attempt}.json"
        argv = [
            "sim",
            str(analysis),
            "--nodes",
            "2",
            "--no-live",
            "--timeout",
            "20",
            "--report",
            str(report_path),
        ]
        code = run_bounded(argv, 8.0)
        out = capsys.readouterr().out
        assert code is not None, f"run {attempt} hung:\n{out[-3000:]}"
        assert code == 1, out
        report = read_report(report_path)
        assert report["ok"] is False and report["status"] == "failed"
        assert any("every node fails in round 2" in error for error in report["errors"])


BLOCKING = """
import time
import flame

class Blocks(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        import sim_test_gate  # the test's gate in-process; a node process sleeps instead
        sim_test_gate.wait(60)
        return 1

class Sum(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(updates.values())

if __name__ == "__main__":
    flame.run(Blocks(), Sum())
"""

PROCESS_GATE = "import time\n\ndef wait(seconds):\n    time.sleep(seconds)\n"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """``import sim_test_gate`` in an analysis: its ``wait`` blocks until the test ends."""
    import sys
    import types

    event = threading.Event()
    module = types.ModuleType("sim_test_gate")
    module.wait = event.wait  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sim_test_gate", module)
    yield event
    event.set()  # let the worker thread go


def test_a_run_that_exceeds_the_timeout_ends_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gate: threading.Event
) -> None:
    # 3 s: long enough for the nodes of a loaded machine to reach the blocking analyze call
    analysis = write(tmp_path / "blocks.py", BLOCKING)
    report_path = tmp_path / "report.json"
    started = time.monotonic()
    argv = ["sim", str(analysis), "--nodes", "2", "--timeout", "3", "--no-live", "--report", str(report_path)]
    code = run_bounded(argv, 3 + 8)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == EXIT_TIMEOUT, out
    assert elapsed < 3 + 8
    report = read_report(report_path)
    assert report["status"] == "timeout" and report["ok"] is False
    assert "(--timeout)" in report["stopped"]
    assert report["run"]["nodes"]["node-1"]["error"].startswith("stopped by the local run")
    assert "analysis code is still running" in out  # the blocked thread, reported, not waited for


@pytest.mark.process
def test_a_process_run_that_exceeds_the_timeout_ends_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "sim_test_gate.py", PROCESS_GATE)
    analysis = write(tmp_path / "blocks.py", BLOCKING)
    report_path = tmp_path / "report.json"
    timeout = 6.0
    started = time.monotonic()
    argv = ["sim", str(analysis), "--nodes", "2", "--processes", "--timeout", str(timeout), "--no-live"]
    code = run_bounded([*argv, "--report", str(report_path)], timeout + 8)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == EXIT_TIMEOUT, out
    assert elapsed < timeout + 8
    report = read_report(report_path)
    assert report["status"] == "timeout"
    for name, records in report["processes"].items():  # every process stopped by flame sim
        assert records[-1]["killed"] and records[-1]["exit_code"] is not None, name


async def test_stop_tasks_is_bounded_even_for_a_task_that_ignores_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await stop_tasks({task}, 0.3, every=0.1) == {task}
    assert time.monotonic() - started < 2.0  # bounded (0.3 s grace), with room for a loaded machine
    assert await within(asyncio.sleep(5, "late"), 0.05, "default") == "default"
    assert await within(asyncio.sleep(0, "soon"), 1.0, "default") == "soon"
    release.set()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()


def test_the_help_documents_exit_codes_and_fault_forms_that_parse(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from flame.sim.faults import parse_faults

    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    text = capsys.readouterr().out
    assert "124" in text and "--timeout ran out" in text
    examples = re.findall(r"^\s+([a-z]+=\S+)", text, re.MULTILINE)
    assert len(examples) == 8
    for spec in examples:
        parse_faults(spec).validate(["aggregator", "node-1", "node-2", "node-3"])


LEAKY = """
import logging
import os
from pathlib import Path

import flame

SEEN = Path({seen!r})
token = os.environ.get("KEYCLOAK_TOKEN")
if token:  # on a node (not while flame sim loads the file)
    key = os.environ["DATA_SOURCE_TOKEN"]
    SEEN.mkdir(exist_ok=True)
    (SEEN / os.environ["FLAME_ANALYSIS_PORT"]).write_text(token + "\\n" + key)
    print("my token is", token)
    print(f"curl -H 'Authorization: Bearer {{token}}' http://hub/", flush=True)
    print("data key:", key, flush=True)
    logging.getLogger("analysis").warning("calling the hub with %s", token)


class A(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        print("in round", round, "token", os.environ.get("KEYCLOAK_TOKEN"), flush=True)
        if os.environ.get("DATA_SOURCE_TOKEN", "none_needed") != "none_needed" and data.sources()[0].name.startswith("node-1"):
            raise SystemExit(3)  # the run fails: node-1's output is shown in the errors
        return 1


class G(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(updates.values())


if __name__ == "__main__":
    flame.run(A(), G())
"""


@pytest.mark.process
def test_tokens_a_node_process_prints_are_redacted_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen"
    analysis = write(tmp_path / "leaky.py", LEAKY.format(seen=str(seen)))
    make_data(tmp_path / "data", nodes=2)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    code, out, err = sim(capsys, analysis, "--data", tmp_path / "data", "--processes", "--no-live")
    assert code == 1, out
    secrets: set[str] = set()
    assert len(list(seen.iterdir())) >= 3  # every node process ran
    for file in seen.iterdir():
        token, key = file.read_text().split("\n")
        secrets.update(token.split("."))  # each part of the JWT: header, payload, signature
        if key != "none_needed":
            secrets.add(key)
    assert len(secrets) >= 2 * 3 + 2  # header, three payloads and signatures, two data keys
    texts = {"stdout": out, "stderr": err}
    for file in (workdir / "flame-runs").rglob("*"):
        if file.is_file():
            texts[str(file)] = file.read_text(encoding="utf-8", errors="replace")
    assert any(path.endswith("report.json") for path in texts)
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a token part leaked into {where}"
    report = json.loads(next(t for p, t in texts.items() if p.endswith("report.json")))
    tails = "\n".join(line for records in report["processes"].values() for r in records for line in r["tail"])
    assert "my token is [REDACTED]" in tails and "Bearer [REDACTED]" in tails
    assert "data key: [REDACTED]" in tails and "calling the hub with [REDACTED]" in tails
    assert "[REDACTED]" in out  # node-1's output, shown in the errors, redacted too


def test_an_error_quoting_a_token_is_redacted_in_process(
    project: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data, _ = project
    analysis = write(
        tmp_path / "quotes.py",
        """
        import flame

        class Quotes(flame.Analyzer):
            def analyze(self, data, aggregate, round):
                raise RuntimeError("hub refused Authorization: Bearer abc.def-ghi and eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")

        class Sum(flame.Aggregator):
            def aggregate(self, updates, round, previous):
                return sum(updates.values())

        if __name__ == "__main__":
            flame.run(Quotes(), Sum())
        """,
    )
    report_path = tmp_path / "report.json"
    code, out, _ = sim(capsys, analysis, "--data", data, "--no-live", "--report", report_path)
    assert code == 1
    text = report_path.read_text()
    for leaked in ("abc.def-ghi", "eyJhbGciOiJSUzI1NiJ9", "eyJzdWIiOiJ4In0"):
        assert leaked not in text and leaked not in out
    assert "Bearer [REDACTED]" in text

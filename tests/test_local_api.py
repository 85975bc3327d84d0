"""``flame.simulate``: the one entry point of local runs, from scripts, event loops and notebooks."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import flame
from flame.cli import main
from flame.local import SimUsageError
from flame.runner import _configure_logging


class Count(flame.Analyzer):
    """Each node's number of rows, and a per-site table."""

    def analyze(self, data: Any, aggregate: Any, round: int) -> dict[str, Any]:
        rows = len(data.dataframe("values.csv"))
        return {"n": rows, "round": round}


class Table(flame.Aggregator):
    """Every node's number of rows and its share as a DataFrame (one row per node, sorted)."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> pd.DataFrame:
        ns = sorted(u["n"] for u in updates.values())
        return pd.DataFrame({"n": ns, "share": [n / sum(ns) for n in ns]})

    def converged(self, aggregate: Any, previous: Any, round: int) -> bool:
        return False


class Labelled(flame.Analysis):
    """An analysis whose interpret turns the table into a dict (as flame.stats results do)."""

    def interpret(self, final: Any) -> Any:
        return {"total": int(final["n"].sum()), "sites": len(final)}


def write_data(root: Path, sizes: list[int]) -> Path:
    for i, size in enumerate(sizes, 1):
        folder = root / f"node-{i}" / "s3"
        folder.mkdir(parents=True)
        (folder / "values.csv").write_text("value\n" + "".join(f"{j}\n" for j in range(size)))
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_data(tmp_path / "data", [6, 9])


def test_simulate_returns_the_dataframe_result_rounds_report_and_events(data: Path) -> None:
    result = flame.simulate(Count(), Table(), data=data, max_rounds=2, timeout=60)
    assert result.ok and result.status == "ok" and result.errors == []
    assert isinstance(result.result, pd.DataFrame)
    assert result.result.to_dict("list") == {"n": [6, 9], "share": [0.4, 0.6]}
    rounds = result.rounds
    assert list(rounds.columns) == ["round", "contributors", "seconds", "bytes"]
    assert list(rounds["round"]) == [1, 2] and list(rounds["contributors"]) == [2, 2]
    assert (rounds["seconds"] > 0).all() and (rounds["bytes"] > 0).all()
    # the report is JSON and keeps the result as records, to be loaded back
    report = json.loads(json.dumps(result.report))
    assert report["status"] == "ok" and report["options"]["max_rounds"] == 2
    assert pd.DataFrame(report["result"]).equals(result.result)
    kinds = {event["kind"] for event in result.events}
    assert {"broker.sent", "storage.upload"} <= kinds


def test_a_ready_analysis_is_interpreted_and_its_options_changed(data: Path) -> None:
    analysis = Labelled(Count(), Table(), name="count")
    result = flame.simulate(analysis, data=data, max_rounds=1)
    assert result.ok, result.errors
    assert result.result == {"total": 15, "sites": 2}
    assert result.report["analysis"] == "count"


async def test_simulate_works_inside_a_running_event_loop(data: Path) -> None:
    asyncio.get_running_loop()  # as in a Jupyter cell: the caller's loop is running and busy
    result = flame.simulate(Count(), Table(), data=data, max_rounds=1)
    assert result.ok and result.result["n"].tolist() == [6, 9]
    twin = await flame.simulate_async(Count(), Table(), data=data, max_rounds=1)
    assert twin.ok and twin.result.equals(result.result)


def test_options_that_do_not_fit_are_refused_before_anything_runs(data: Path, tmp_path: Path) -> None:
    with pytest.raises(SimUsageError, match=r"unknown federation option.*rounds_max"):
        flame.simulate(Count(), Table(), data=data, rounds_max=2)
    with pytest.raises(SimUsageError, match="pass the analysis file's path"):
        flame.simulate(Count(), Table(), data=data, mode="processes")
    with pytest.raises(SimUsageError, match="--nodes 3 does not match the 2 node folder"):
        flame.simulate(Count(), Table(), data=data, nodes=3)
    with pytest.raises(SimUsageError, match="mode='fast'"):
        flame.simulate(Count(), Table(), mode="fast")  # type: ignore[arg-type]


def test_simulate_and_run_configure_only_the_flame_logger(data: Path) -> None:
    root = logging.getLogger()
    flame_logger = logging.getLogger("flame")
    saved = (root.handlers[:], root.level, flame_logger.handlers[:], flame_logger.level)
    try:
        root.handlers.clear()
        flame_logger.handlers.clear()
        root_level = root.level
        assert flame.simulate(Count(), Table(), data=data, max_rounds=1).ok
        _configure_logging()  # what flame.run does on a node
        assert root.handlers == [] and root.level == root_level
        assert len(flame_logger.handlers) == 1 and flame_logger.level == logging.INFO
    finally:
        root.handlers[:], flame_logger.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        flame_logger.setLevel(saved[3])


def test_the_production_star_path_does_not_import_the_emulator() -> None:
    code = textwrap.dedent(
        """
        import sys
        import flame.star
        assert "flame.sim" not in sys.modules and "flame.local" not in sys.modules, sorted(sys.modules)
        tester = flame.star.StarModelTester  # the lazy re-export still works
        from flame.local.star_tester import StarModelTester
        assert tester is StarModelTester and "flame.sim.stack" in sys.modules
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- flame sim: options ----------------------------------------------------------------------------------

TABLE_FILE = """
import pandas as pd
import flame


class Count(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        return len(data.dataframe("values.csv"))


class Table(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return pd.DataFrame({"n": sorted(updates.values())})


if __name__ == "__main__":
    flame.run(Count(), Table(), max_rounds=1)
"""


def test_sim_json_out_and_report_give_the_result_back(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = tmp_path / "table.py"
    analysis.write_text(TABLE_FILE)
    report, out = tmp_path / "r.json", tmp_path / "out"
    argv = ["sim", str(analysis), "--data", str(data), "--no-live", "--json", "--report", str(report)]
    code = main([*argv, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)  # nothing but the summary on stdout
    assert summary["ok"] is True and summary["status"] == "ok" and summary["exit_code"] == 0
    assert summary["result"] == [{"n": 6}, {"n": 9}]
    assert summary["rounds"][0]["round"] == 1 and summary["out"] == [str(out / "result.csv")]
    assert "final result" in captured.err
    assert pd.read_csv(out / "result.csv").to_dict("list") == {"n": [6, 9]}
    assert json.loads(report.read_text())["result"] == [{"n": 6}, {"n": 9}]


def test_sim_out_writes_json_for_plain_results(data: Path, tmp_path: Path) -> None:
    analysis = tmp_path / "plain.py"
    analysis.write_text(TABLE_FILE.replace('pd.DataFrame({"n": sorted(updates.values())})', "{'n': 15}"))
    out = tmp_path / "out"
    assert main(["sim", str(analysis), "--data", str(data), "--no-live", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text()) == {"n": 15}


def test_sim_nodes_not_matching_the_data_folders_is_a_usage_error(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = tmp_path / "table.py"
    analysis.write_text(TABLE_FILE)
    assert main(["sim", str(analysis), "--data", str(data), "--nodes", "4", "--no-live"]) == 2
    out = capsys.readouterr().out
    assert "--nodes 4" in out and "2 node folder" in out
    # with --json the summary still comes, and stdout holds nothing else
    assert main(["sim", str(analysis), "--data", str(data), "--nodes", "4", "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "usage" and summary["exit_code"] == 2 and "--nodes 4" in summary["errors"][0]
    (tmp_path / "empty.py").write_text("x = 1\n")
    assert main(["sim", str(tmp_path / "empty.py"), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "failed" and "never called flame.run" in summary["errors"][0]


def test_sim_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    text = capsys.readouterr().out
    for line in ("0    every node executed", "1    the federation failed", "2    usage error", "124"):
        assert line in text
    assert "--json" in text and "--out DIR" in text


# -- a real Jupyter kernel ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_simulate_in_a_notebook_on_a_real_kernel(data: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        "import asyncio, flame\nasyncio.get_running_loop()  # the kernel's loop runs this cell",
        textwrap.dedent(
            f"""
            class Count(flame.Analyzer):
                def analyze(self, data, aggregate, round):
                    return len(data.dataframe("values.csv"))

            class Sum(flame.Aggregator):
                def aggregate(self, updates, round, previous):
                    return sum(updates.values())

            result = flame.simulate(Count(), Sum(), data={str(data)!r}, timeout=60)
            assert result.ok, result.errors
            print("result", result.result, len(result.rounds))
            """
        ),
        "twin = await flame.simulate_async(Count(), Sum(), data="
        + repr(str(data))
        + ")\nprint('twin', twin.result)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3")
    client.execute()
    outputs = [o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", [])]
    assert "result 15 1\n" in outputs and "twin 15\n" in outputs, outputs


class Missing(flame.Analyzer):
    def analyze(self, data: Any, aggregate: Any, round: int) -> int:
        return len(data.dataframe("missing.csv"))


class Total(flame.Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> int:
        return sum(updates.values())


def test_a_missing_data_key_names_what_the_node_has_and_hints_at_data(data: Path) -> None:
    result = flame.simulate(Missing(), Total(), data=data, timeout=60)
    assert result.status == "failed"
    # Both nodes lack the key; whichever fails first stops the other, so look at the one that failed itself.
    own = [
        error
        for error in result.errors
        if error.startswith("node-") and "stopped by the local run" not in error
    ]
    assert own, result.errors
    assert "missing.csv" in own[0] and "s3 keys: values.csv" in own[0] and "--data DIR" in own[0]
    without = flame.simulate(Missing(), Total(), nodes=1, timeout=60)
    node = next(error for error in without.errors if error.startswith("node-1 "))
    assert "node-1 has no data sources" in node and "--data DIR" in node

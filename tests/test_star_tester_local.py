"""PrivateAIM-style analyses under ``flame sim`` and ``StarModelTester``'s output, as PrivateAIM's tester gives it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flame.cli import main
from flame.star import StarAggregator, StarAnalyzer, StarModelTester
from tests.test_compat_star import COMPAT, DATA, pooled

#: A PrivateAIM-style script with ``StarModel(...)`` at module level (no ``__main__`` block).
MODULE_LEVEL = """
from flame.star import StarAggregator, StarAnalyzer, StarModel


class Rows(StarAnalyzer):
    def analysis_method(self, data, aggregator_results):
        return data[0]["patients.csv"].count(b"\\n") - 1  # rows below the header


class Total(StarAggregator):
    def aggregation_method(self, analysis_results):
        return sum(analysis_results)

    def has_converged(self, result, last_result):
        return True


StarModel(Rows, Total, "s3", query="patients.csv", simple_analysis=True, output_type="str")
"""


def sim_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["sim", *argv, "--no-live", "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_flame_sim_runs_a_privateaim_script_unchanged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, summary = sim_json(
        capsys, str(COMPAT / "patient_count.py"), "--data", str(DATA), "--report", str(tmp_path / "r.json")
    )
    assert code == 0, summary["errors"]
    assert summary["result"] == str(float(len(pooled())))  # the hub's text, as PrivateAIM's hub has it
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["run"]["nodes"]) == {"aggregator", "node-1", "node-2", "node-3"}
    assert all(node["status"] == "executed" for node in report["run"]["nodes"].values())


def data_without_fhir(root: Path) -> Path:
    for node in ("node-1", "node-2", "node-3"):
        (root / node / "s3").mkdir(parents=True)
        pd.read_csv(DATA / node / "s3" / "patients.csv").to_csv(root / node / "s3" / "patients.csv")
    return root


def test_a_module_level_star_model_runs_in_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "rows.py"
    script.write_text(MODULE_LEVEL)
    data = data_without_fhir(tmp_path / "data")
    code, summary = sim_json(capsys, str(script), "--data", str(data), "--report", str(tmp_path / "r.json"))
    assert code == 0, summary["errors"]
    assert summary["result"] == str(len(pooled()))
    assert main(["sim", str(script), "--data", str(data), "--max-rounds", "2", "--no-live"]) == 2
    assert "sets its own options in StarModel" in capsys.readouterr().out


@pytest.mark.process
def test_a_module_level_star_model_runs_as_a_process_per_node(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "rows.py"
    script.write_text(MODULE_LEVEL)
    data = data_without_fhir(tmp_path / "data")
    code, summary = sim_json(
        capsys, str(script), "--data", str(data), "--processes", "--report", str(tmp_path / "r.json")
    )
    assert code == 0, summary["errors"]
    assert summary["result"] == str(len(pooled()))
    report = json.loads((tmp_path / "r.json").read_text())
    assert all(records[-1]["exit_code"] == 0 for records in report["processes"].values())


# -- StarModelTester's output lines ---------------------------------------------------------------------


class Value(StarAnalyzer):
    def analysis_method(self, data: Any, aggregator_results: Any) -> Any:
        return int(data["value"].sum())


class MinMax(StarAggregator):
    def aggregation_method(self, analysis_results: list[Any]) -> Any:
        return [min(analysis_results), max(analysis_results)]

    def has_converged(self, result: Any, last_result: Any) -> bool:
        return True


SPLITS = [pd.DataFrame({"value": [1]}), pd.DataFrame({"value": [2]})]


def test_multiple_results_print_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    StarModelTester(SPLITS, Value, MinMax, "s3", multiple_results=True)
    lines = capsys.readouterr().out.splitlines()
    assert "Final result_1: 1" in lines and "Final result_2: 2" in lines
    assert not any(line.startswith("Final result:") for line in lines)


def test_a_list_of_result_files_gets_one_result_each(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    paths = [str(tmp_path / "low.txt"), str(tmp_path / "high.txt")]
    StarModelTester(SPLITS, Value, MinMax, "s3", multiple_results=True, result_filepath=paths)
    assert (tmp_path / "low.txt").read_text() == "1" and (tmp_path / "high.txt").read_text() == "2"
    out = capsys.readouterr().out
    assert f"Final result_1 written to {paths[0]}" in out and f"Final result_2 written to {paths[1]}" in out


def test_a_list_of_result_files_that_does_not_match_is_warned_about(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    paths = [str(tmp_path / "only.txt")]
    StarModelTester(SPLITS, Value, MinMax, "s3", multiple_results=True, result_filepath=paths)
    out = capsys.readouterr().out
    assert "Warning" in out and f"Final result written to {paths[0]}" in out
    assert (tmp_path / "only.txt").read_text() == "[1, 2]"

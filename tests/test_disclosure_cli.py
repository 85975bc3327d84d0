"""``flame sim --policy``: a node's policy file tightens its checks; refusals show node, rule and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flame.cli import main
from flame.disclosure.policy import policy_files
from flame.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
MEAN_STD = ROOT / "examples" / "mean_std" / "analysis.py"
DATA = ROOT / "examples" / "data"


def sim(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = main(["sim", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out + err


def policy(tmp_path: Path, **settings: object) -> Path:
    path = tmp_path / f"policy-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(settings), encoding="utf-8")
    return path


def test_a_node_policy_refuses_what_the_defaults_allow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = policy(tmp_path, min_records=180)  # node-2 holds 150 patients, node-1 200, node-3 250
    report = tmp_path / "report.json"
    code, out = sim(
        capsys, MEAN_STD, "--data", DATA, "--no-live", "--report", report, "--policy", f"node-2={strict}"
    )
    assert code == 1, out
    assert "node-2 (default, failed): DisclosureRefusedError" in out
    assert "rule min-records at payload." in out and ".n (message:flame-update" in out
    assert "node-1 (default, failed)" not in out and "node-3 (default, failed)" not in out
    nodes = json.loads(report.read_text())["run"]["nodes"]
    assert nodes["node-2"]["status"] == "failed"


def test_an_honest_analysis_passes_a_tighter_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tighter = policy(tmp_path, min_records=10, min_cell_count=10)
    code, out = sim(
        capsys, MEAN_STD, "--data", DATA, "--no-live", "--report", tmp_path / "r.json", "--policy", tighter
    )
    assert code == 0, out
    # the audit records reach the display as one readable line each, not as JSON
    assert "disclosure: released message:flame-update to 1 receiver(s), 4 statistic(s) over n=150" in out
    assert "disclosure audit {" not in out


def test_policy_files_that_loosen_or_name_no_node_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loose = policy(tmp_path, min_cell_count=3)
    code, out = sim(capsys, MEAN_STD, "--data", DATA, "--no-live", "--policy", loose)
    assert code not in (0, 1) and "min_cell_count" in out and "loosen" in out
    with pytest.raises(ConfigurationError, match="names no node 'node-9'"):
        policy_files([f"node-9={policy(tmp_path)}"], ["aggregator", "node-1"])
    chosen = policy_files(
        [str(policy(tmp_path)), f"node-1={policy(tmp_path, min_records=6)}"], ["aggregator", "node-1"]
    )
    assert chosen["aggregator"] != chosen["node-1"]

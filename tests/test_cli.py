"""The ``flame`` command line, run as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flame.cli import main


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "node" in capsys.readouterr().out


@pytest.mark.process
def test_node_up_serves_the_stack_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "flame", "node", "up", "--nodes", "2", "--env-file", str(env_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # blocks until the stack printed its environments
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        output = "".join(lines)
        assert "emulated FLAME node stack on http://127.0.0.1:" in output
        environments = json.loads(env_file.read_text())
        assert set(environments) == {"aggregator", "node-1", "node-2"}
        node = environments["node-1"]
        assert f"export ANALYSIS_ID={node['ANALYSIS_ID']}" in output
        assert node["DATA_SOURCE_TOKEN"] != "none_needed"
        assert environments["aggregator"]["DATA_SOURCE_TOKEN"] == "none_needed"
        answer = httpx.get(node["FLAME_BASE_URL"] + "/healthz", timeout=5)
        assert (answer.status_code, answer.text) == (200, "healthy")
        answer = httpx.get(
            f"{node['FLAME_BASE_URL']}/message-broker/analyses/{node['ANALYSIS_ID']}/participants",
            headers={"Authorization": f"Bearer {node['KEYCLOAK_TOKEN']}"},
            timeout=5,
        )
        assert answer.status_code == 200 and len(answer.json()) == 3
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
        assert "stopped." in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_demo_selfcheck_passes_end_to_end() -> None:
    from io import StringIO

    from rich.console import Console

    from flame.demo import run_selfcheck

    out = StringIO()
    assert run_selfcheck(analysis_nodes=2, console=Console(file=out, width=120)) == 0
    text = out.getvalue()
    assert "RS256 verified" in text and "Self-check passed." in text
    for error in ("TokenExpiredError", "TokenAudienceError", "TokenSignatureError"):
        assert "rejected" in text and error in text
    assert "eyJ" not in text


def test_demo_runs_the_mean_example_and_matches_the_pooled_result() -> None:
    from io import StringIO

    from rich.console import Console

    from flame.demo import run_demo

    out = StringIO()
    assert run_demo(console=Console(file=out, width=140)) == 0
    text = out.getvalue()
    assert "every node executed" in text and "equals the pooled one" in text

"""The HTML run report: made from real run reports, escaped, and loaded in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import flame
from flame.errors import PayloadError
from flame.local.html_report import audit_records, render_html

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HOSTILE = '<script>document.body.setAttribute("data-pwned","1")</script>'
HOSTILE_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"


@pytest.fixture(scope="module")
def fault_report() -> dict[str, Any]:
    """The JSON report of a real run of examples/mean_std with a node restart and dropped deliveries."""
    result = flame.simulate(
        EXAMPLES / "mean_std" / "analysis.py",
        data=EXAMPLES / "data",
        faults="drop=0.1;restart=node-2@0.2",
        seed=3,
        time_scale=0.1,
        timeout=60,
    )
    assert result.status == "ok", result.errors
    # the file flame sim writes is this dict through JSON; the page is made from what a reader loads
    loaded: dict[str, Any] = json.loads(json.dumps(result.report, allow_nan=False))
    return loaded


@pytest.fixture(scope="module")
def timeline_run() -> flame.SimulationResult:
    """A real federation (dropped deliveries from node-1 to the aggregator) with its whole event log."""
    result = flame.simulate(
        EXAMPLES / "mean_std" / "analysis.py",
        data=EXAMPLES / "data",
        faults="drop=0.2@node-1>aggregator",
        seed=2,
        timeout=60,
    )
    assert result.ok, result.errors
    return result


@pytest.fixture(scope="module")
def timeline_report(timeline_run: flame.SimulationResult) -> dict[str, Any]:
    """The run's report with the stack's whole event log (``events.timeline``), as ``to_html`` uses it."""
    report = {**timeline_run.report}
    report["events"] = {**report["events"], "timeline": timeline_run.events}
    loaded_report: dict[str, Any] = json.loads(json.dumps(report, default=str))
    return loaded_report


def test_to_html_and_flame_sim_html_write_the_page(
    timeline_run: flame.SimulationResult, timeline_report: dict[str, Any], tmp_path: Path
) -> None:
    page = timeline_run.to_html()
    assert page == render_html(timeline_report)
    assert 'data-group="states"' in page and "no event log" not in page
    html_file = tmp_path / "run.html"
    report_file = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flame",
            "sim",
            str(EXAMPLES / "mean_std" / "analysis.py"),
            "--data",
            str(EXAMPLES / "data"),
            "--report",
            str(report_file),
            "--html",
            str(html_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["html"] == str(html_file)
    written = html_file.read_text(encoding="utf-8")
    assert written.startswith("<!DOCTYPE html>") and '<section id="timeline">' in written
    assert 'data-group="states"' in written


def test_event_log_gives_states_messages_and_the_audit(timeline_report: dict[str, Any]) -> None:
    page = render_html(timeline_report)
    timeline = page.split('<section id="timeline">')[1].split("</section>")[0]
    # each node's states over time, from what it reported to the pod orchestrator
    for name in ("aggregator", "node-1", "node-2", "node-3"):
        assert re.search(rf'data-group="states" data-info="{name}: executing from', timeline), name
    assert 'data-info="aggregator: executed from' in timeline
    # one line per delivered message, and the dropped ones from node-1 to the aggregator
    delivered = timeline_report["events"]["counts"]["delivery.ok"]
    assert timeline.count('data-group="delivery.ok"') == delivered
    assert timeline.count("<line ") >= delivered
    assert re.search(
        r'data-group="delivery.dropped" data-info="[^"]*delivery.dropped node-1 &gt; aggregator', timeline
    )
    assert "no event log" not in timeline
    # the notable events a flame sim report lists are in the event log too: drawn once
    restart = {"seq": 10_000, "t": 0.5, "kind": "node.restart", "node": "node-2", "reason": "fault"}
    both = {**timeline_report, "events": {**timeline_report["events"], "notable": [restart]}}
    both["events"]["timeline"] = [*timeline_report["events"]["timeline"], restart]
    assert render_html(both).count("s node-2 node.restart, reason=fault") == 2  # data-info and title
    # the disclosure audit, from the audit lines each node streamed to the pod orchestrator
    records = audit_records(timeline_report)
    names = {node["node_id"]: name for name, node in timeline_report["stack"]["nodes"].items()}
    assert {names[r["node"]] for r in records} == {"node-1", "node-2", "node-3", "aggregator"}
    audit = page.split('<section id="audit">')[1].split("</section>")[0]
    assert "message:flame-update" in audit and "<td>final</td>" in audit and "<td>node-2</td>" in audit
    assert audit.count("<tr>") == len(records) + 1


def audit_line(node: str, outcome: str = "released", **extra: Any) -> str:
    record = {
        "node": node,
        "analysis": "a-1",
        "channel": "message:flame-update",
        "destination": ["aggregator"],
        "outcome": outcome,
        "digest": f"sha256:{node}",
        "statistics": [{"path": "payload.age", "kind": "summary", "n": 200}],
        "checks": [{"rule": "min-records", "path": "payload.age", "outcome": "passed"}],
        "unjudged": 0,
        "epsilon": 0.0,
        "delta": 0.0,
        "time": "2026-01-01T00:00:00.000+00:00",
        **extra,
    }
    return "disclosure audit " + json.dumps(record)


def hostile_report() -> dict[str, Any]:
    """A report whose every string a reader sets could carry markup: node names, result, errors, audit."""
    evil = f"node-{HOSTILE}"
    return {
        "tool": "flame sim",
        "analysis": f"/tmp/{HOSTILE}/analysis.py",
        "status": "failed",
        "ok": False,
        "mode": HOSTILE_IMG,
        "timings": {"setup": 0.1, "run": 2.0, "total": 2.1},
        "faults": {"spec": HOSTILE, "rules": [{"type": HOSTILE_IMG, "node": evil, "at": 0.5}]},
        "run": {
            "ok": False,
            "seconds": 2.0,
            "nodes": {
                "aggregator": {"role": "aggregator", "status": "failed", "error": HOSTILE, "incarnations": 1},
                evil: {"role": "default", "status": HOSTILE_IMG, "error": None, "incarnations": 2},
            },
            "rounds": [{"round": HOSTILE, "contributors": [HOSTILE_IMG], "seconds": 0.5}],
        },
        "result": {HOSTILE: {"mean": HOSTILE_IMG, "n": 3}, "x": {"mean": 1.5, "n": 4}},
        "final_results": {HOSTILE: {"bytes": 3, "text": HOSTILE}},
        "events": {
            "counts": {"fault.restart": 1, HOSTILE: 2},
            "notable": [{"seq": 1, "t": 0.5, "kind": "node.restart", "node": evil, "reason": HOSTILE}],
            "timeline": [
                {"seq": 2, "t": 0.7, "kind": "delivery.dropped", "node": evil, "log": audit_line(evil)},
                {"seq": 3, "t": 0.8, "kind": HOSTILE, "node": "aggregator", "detail": HOSTILE_IMG},
            ],
        },
        "stack": {"nodes": {evil: {"node_id": HOSTILE_IMG, "role": "default", "data_sources": []}}},
        "processes": {evil: [{"incarnation": 1, "exit_code": 1, "tail": [HOSTILE, audit_line(HOSTILE)]}]},
        "stopped": HOSTILE,
        "errors": [HOSTILE, HOSTILE_IMG],
    }


# -- what the page holds --------------------------------------------------------------------------------


def test_real_run_report_has_every_section(fault_report: dict[str, Any]) -> None:
    page = render_html(fault_report)
    for section in ("timeline", "rounds", "faults", "nodes", "result", "audit"):
        assert f'<section id="{section}">' in page
    assert 'id="timeline-svg"' in page
    for name in ("aggregator", "node-1", "node-2", "node-3"):
        assert f'data-node="{name}"' in page
    # one row per round in the rounds table, with its contributors by name
    rounds = fault_report["run"]["rounds"]
    rounds_table = page.split('<section id="rounds">')[1].split("</section>")[0]
    assert rounds_table.count("<tr>") == len(rounds) + 1
    assert "node-1, node-2, node-3" in rounds_table
    # the restart is drawn on node-2's lane and listed with the fault plan
    assert fault_report["faults"]["spec"] in page
    assert re.search(r'data-info="[0-9.]+ s node-2 (fault|node)\.restart', page)
    # the final result as a table: one row per column of the data, n as a cell
    result_table = page.split('<section id="result">')[1].split("</section>")[0]
    for column in ("age", "bmi", "systolic_bp", "cholesterol"):
        assert f"<td>{column}</td>" in result_table
    n_total = fault_report["result"]["age"]["n"]
    assert f'<td class="num">{n_total}</td>' in result_table
    assert "Content-Security-Policy" in page and "https://" not in page and "http://" not in page


def test_a_stopped_run_shows_its_status_and_errors() -> None:
    result = flame.simulate(
        EXAMPLES / "logistic_regression" / "analysis.py",
        data=EXAMPLES / "data",
        faults="delay=1:5",  # every delivery 5 s late: the run cannot end within its 1 s
        timeout=1.0,
    )
    report = json.loads(json.dumps(result.report))
    assert report["status"] == "timeout"
    page = render_html(report)
    assert '<span class="badge timeout" id="status">timeout</span>' in page
    errors = page.split('<section id="errors">')[1].split("</section>")[0]
    assert "did not finish within 1 s (--timeout)" in errors
    assert "No final result" in page


def test_result_shapes_become_tables() -> None:
    records = {"result": [{"site": "a", "n": 10}, {"site": "b", "n": 12}]}
    page = render_html(records)
    assert "<th>site</th><th>n</th>" in page and '<td class="num">12</td>' in page
    nested = render_html({"result": {"coefficients": {"age": 0.5}, "n": 600}})
    assert "<td>coefficients.age</td>" in nested and '<td class="num">600</td>' in nested
    scalar = render_html({"result": 42.5})
    assert "<pre>42.5</pre>" in scalar
    empty = render_html({})
    assert "No final result" in empty and "No rounds in this report" in empty


def test_audit_records_come_from_log_lines_and_the_report() -> None:
    report = {
        "processes": {"node-1": [{"tail": ["round 1: sending", audit_line("node-1")]}]},
        "events": {"timeline": [{"t": 1.0, "kind": "po.log", "node": "node-2", "log": audit_line("node-2")}]},
        "disclosure": [
            json.loads(audit_line("node-3", "refused")[len("disclosure audit ") :]),
            json.loads(audit_line("node-1")[len("disclosure audit ") :]),  # the same release again
        ],
    }
    records = audit_records(report)
    assert sorted(r["node"] for r in records) == ["node-1", "node-2", "node-3"]
    page = render_html(report)
    audit = page.split('<section id="audit">')[1].split("</section>")[0]
    assert audit.count("<tr>") == 4
    assert "3 release record(s), 1 not released as sent" in audit
    assert "1 over n=200" in audit


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(PayloadError, match="JSON object"):
        render_html([1, 2])  # type: ignore[arg-type]


def test_everything_from_the_report_is_escaped() -> None:
    page = render_html(hostile_report())
    assert page.count("<script>") == 1  # the page's own
    assert "<img" not in page
    assert "onerror=" not in page.replace("onerror=&quot;", "").replace("onerror=\\", "")
    assert "&lt;script&gt;document.body" in page


# -- in a real browser ----------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium); "
    "the browser checks of the HTML report need it",
)


def load_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM headless Chromium built from ``page`` (after its scripts ran) and its console messages."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


@pytest.mark.integration
@needs_chromium
def test_console_errors_are_seen(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error shows up in the console lines."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, console = load_in_chromium(page, tmp_path / "profile")
    assert any("undefinedFunction" in line for line in console)


@pytest.mark.integration
@needs_chromium
def test_report_loads_in_chromium_without_console_errors(
    fault_report: dict[str, Any], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(fault_report), encoding="utf-8")
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    assert 'id="timeline-svg"' in dom
    # the page's own script ran (its hash matches the content security policy) and found the timeline
    assert re.search(r'<section id="timeline" data-ready="1"', dom)


@pytest.mark.integration
@needs_chromium
def test_event_log_report_loads_in_chromium(timeline_report: dict[str, Any], tmp_path: Path) -> None:
    page = tmp_path / "timeline.html"
    page.write_text(render_html(timeline_report), encoding="utf-8")
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    assert 'data-ready="1"' in dom and dom.count('data-group="states"') >= 4


@pytest.mark.integration
@needs_chromium
def test_markup_in_a_report_does_not_run_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "hostile.html"
    page.write_text(render_html(hostile_report()), encoding="utf-8")
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    assert not re.search(r"<body[^>]*data-pwned", dom)
    assert "<img" not in dom
    assert 'data-ready="1"' in dom

"""A run report to look at: one self-contained HTML file made from the JSON report of a local run.

:func:`render_html` takes the report ``flame sim --report FILE`` writes (as a dict) and returns one HTML
page with everything inline (CSS, a few lines of JavaScript, the timeline as SVG): it loads nothing from
the network and can be mailed or attached to a ticket as it is. The page shows

- a **timeline**: one lane per node from the start of the federation to its end, the rounds as bands
  across every lane, node restarts and failures as markers, and, when the report carries the stack's
  events (``events.timeline``, as :func:`flame.local.report.all_events` makes them), each node's states over time and
  a line per message from its sending to its delivery, drop or retry; without them each lane shows the
  node's final status;
- the **rounds**: duration, number of updates and the contributing nodes of each;
- **faults and retries**: the fault plan, its rules, the fault, retry and drop counts and the notable events;
- the **final result** as a table (a dict of dicts as rows and columns, records as rows, anything else as
  key paths and values) and the final result files as the hub received them;
- the **disclosure audit**: one row per release (node, channel, receivers, outcome, record counts, the checks
  that did not pass, privacy spent, digest), from ``disclosure`` (a list of audit records) and from the
  ``disclosure audit`` lines among the log text the report holds (node process output, logged events).

Every string from the report is escaped, in text and in attributes, and the page's content security policy
allows no network access and runs only its own script (pinned by its hash), so a node name or a result
that holds markup is shown as text. Sections whose data a report does not hold say so.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flame.errors import PayloadError

__all__ = ["audit_records", "render_html"]

#: Events drawn on the timeline at most; the rest are counted, not drawn.
MAX_TIMELINE_EVENTS = 4000
#: Rows of one table at most (the final result, the audit); the rest are counted.
MAX_TABLE_ROWS = 500
#: Characters of one shown value at most.
MAX_VALUE_CHARS = 2000

AUDIT_PREFIX = "disclosure audit "

#: Events that are not drawn as marks of their own (states and messages show them, or they are noise).
QUIET_EVENTS = ("po.log", "broker.", "storage.upload", "storage.read", "data.", "po.incarnation", "po.token")

#: Colours of final node statuses and event kinds on the timeline.
STATUS_COLOURS = {
    "starting": "#b0bec5",
    "started": "#90caf9",
    "executed": "#2e7d32",
    "finished": "#2e7d32",
    "failed": "#c62828",
    "stopped": "#757575",
    "executing": "#1565c0",
    "running": "#1565c0",
}
EVENT_COLOURS = {
    "delivery.ok": "#90a4ae",
    "delivery.retry": "#ef6c00",
    "delivery.dropped": "#c62828",
    "fault": "#6a1b9a",
    "node.restart": "#000000",
    "po": "#1565c0",
    "storage": "#00838f",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1c1c1c;background:#fafafa}
header{background:#263238;color:#fff;padding:16px 24px}
header h1{margin:0 0 4px;font-size:20px}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:16px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}
table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f5f5f5;padding:8px;overflow:auto;max-height:300px;white-space:pre-wrap;word-break:break-all}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600}
.ok{background:#2e7d32}.failed{background:#c62828}.timeout{background:#ef6c00}.unknown{background:#757575}
.muted{color:#666}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
#timeline-info{min-height:1.5em;font-family:ui-monospace,monospace;font-size:12px;color:#333}
svg text{font:12px system-ui,sans-serif}
"""

_SCRIPT = """
(function(){
  var info=document.getElementById('timeline-info');
  document.querySelectorAll('#timeline [data-info]').forEach(function(el){
    el.addEventListener('mouseenter',function(){info.textContent=el.getAttribute('data-info');});
  });
  document.querySelectorAll('#timeline-filter input[type=checkbox]').forEach(function(box){
    box.addEventListener('change',function(){
      document.querySelectorAll('#timeline [data-group]').forEach(function(el){
        if(el.getAttribute('data-group')===box.value){el.style.display=box.checked?'':'none';}
      });
    });
  });
  document.getElementById('timeline').setAttribute('data-ready','1');
})();
"""


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML page (no network access) that shows the run report ``report``.

    ``report`` is the JSON run report of a local run as a dict (``json.load`` of what
    ``flame sim --report FILE`` writes). Missing parts are tolerated and named on the page. Raises
    :class:`~flame.errors.PayloadError` when ``report`` is not a mapping.
    """
    if not isinstance(report, Mapping):
        raise PayloadError(
            f"a run report must be a JSON object (a dict), not {type(report).__name__}: "
            "pass json.load() of the file flame sim --report writes"
        )
    names = _node_names(report)
    title = f"flame run report: {_text(report.get('analysis', 'analysis'))}"
    body = "\n".join(
        [
            _header(report),
            "<main>",
            _timeline_section(report, names),
            _rounds_section(report, names),
            _faults_section(report),
            _nodes_section(report),
            _result_section(report),
            _audit_section(report),
            _errors_section(report),
            "</main>",
        ]
    )
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    policy = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_attr(policy)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_text(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def audit_records(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The disclosure audit records a run report holds.

    From its ``disclosure`` list (audit records as dicts) and from every ``disclosure audit {...}`` line in
    the log text it carries: node process output (``processes.*.tail``) and logged events
    (``events.timeline`` entries with a ``log`` text). Duplicates (the same digest, node and time) count once.
    """
    found: list[dict[str, Any]] = []
    direct = report.get("disclosure")
    if isinstance(direct, list):
        found.extend(dict(item) for item in direct if isinstance(item, Mapping))
    for line in _log_lines(report):
        start = line.find(AUDIT_PREFIX)
        if start < 0:
            continue
        try:
            record = json.loads(line[start + len(AUDIT_PREFIX) :])
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    unique: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for record in found:
        key = (
            str(record.get("digest")),
            str(record.get("node")),
            str(record.get("time")),
            str(record.get("channel")),
        )
        unique.setdefault(key, dict(record))
    return list(unique.values())


# -- sections -----------------------------------------------------------------------------------------


def _header(report: Mapping[str, Any]) -> str:
    status = str(report.get("status") or ("ok" if report.get("ok") else "unknown"))
    css = status if status in ("ok", "failed", "timeout") else "unknown"
    timings = _mapping(report.get("timings"))
    facts = [
        ("analysis", report.get("analysis")),
        ("started", report.get("started_at")),
        ("mode", report.get("mode")),
        ("flame", report.get("flame_version")),
        ("seconds", timings.get("total")),
    ]
    shown = " · ".join(f"{_text(k)} {_text(_short(v))}" for k, v in facts if v is not None)
    return (
        f'<header><h1>Run report <span class="badge {css}" id="status">{_text(status)}</span></h1>'
        f"<div>{shown}</div></header>"
    )


def _timeline_section(report: Mapping[str, Any], names: list[str]) -> str:
    run = _mapping(report.get("run"))
    timings = _mapping(report.get("timings"))
    events = _mapping(report.get("events"))
    notable = [e for e in _list(events.get("notable")) if isinstance(e, Mapping)]
    detailed = [e for e in _list(events.get("timeline")) if isinstance(e, Mapping)]
    logged = {e.get("seq") for e in detailed if e.get("seq") is not None}
    notable = [e for e in notable if e.get("seq") is None or e.get("seq") not in logged]  # once each
    timed = [e for e in [*notable, *detailed] if _number(e.get("t")) is not None]
    start = _number(timings.get("setup")) or 0.0
    run_seconds = _number(run.get("seconds")) or 0.0
    rounds = [r for r in _list(run.get("rounds")) if isinstance(r, Mapping)]
    bands = _round_bands(rounds, start, _round_starts(detailed))
    end = max(
        [start + run_seconds, *(_number(e.get("t")) or 0.0 for e in timed), *(b[2] for b in bands), 1e-3]
    )
    lanes = names or sorted({str(e.get("node")) for e in timed if e.get("node")})
    statuses = _node_statuses(report)
    left, width, lane_h, top = 120, 1000, 34, 28
    height = top + lane_h * max(len(lanes), 1) + 30

    def x(t: float) -> float:
        return left + width * max(0.0, min(t, end)) / end

    parts: list[str] = [
        f'<svg id="timeline-svg" role="img" aria-label="timeline of the nodes" '
        f'width="{left + width + 20}" height="{height}" viewBox="0 0 {left + width + 20} {height}">'
    ]
    for index, (number, begin, finish, row) in enumerate(bands):
        label = f"round {number}: {_seconds(finish - begin)}, {len(_contributors(row))} contributor(s)"
        parts.append(
            f'<g data-group="rounds" data-info="{_attr(label)}"><rect x="{x(begin):.1f}" y="{top - 6}" '
            f'width="{max(x(finish) - x(begin), 1.0):.1f}" height="{height - top - 18}" '
            f'fill="{"#e3f2fd" if index % 2 == 0 else "#fff8e1"}" stroke="#bbdefb"><title>{_text(label)}</title>'
            f"</rect>{_band_label(number, x(begin), x(finish) - x(begin), top - 10)}</g>"
        )
    lane_of = {name: i for i, name in enumerate(lanes)}
    for i, name in enumerate(lanes):
        y = top + i * lane_h
        status = statuses.get(name, "")
        colour = STATUS_COLOURS.get(status, "#9e9e9e")
        label = f"{name}: {status or 'status unknown'}"
        parts.append(
            f'<g class="lane" data-node="{_attr(name)}" data-info="{_attr(label)}">'
            f'<text x="4" y="{y + 17}">{_text(_short(name, 16))}</text>'
            f'<rect x="{x(start):.1f}" y="{y + 6}" width="{max(x(end) - x(start), 1.0):.1f}" height="14" '
            f'rx="3" fill="{colour}" fill-opacity="0.35"><title>{_text(label)}</title></rect></g>'
        )
    ordered = sorted(timed, key=lambda e: _number(e.get("t")) or 0.0)
    parts += _state_segments(ordered, lane_of, statuses, end, x, top, lane_h)
    lines, with_lines = _message_lines(ordered, lane_of, x, top, lane_h)
    parts += lines
    drawn = len(lines)
    left_out = 0
    for event in ordered:
        node = str(event.get("node"))
        kind = str(event.get("kind", ""))
        if node not in lane_of or id(event) in with_lines or kind.startswith(QUIET_EVENTS):
            continue
        if drawn >= MAX_TIMELINE_EVENTS:
            left_out += 1
            continue
        t = _number(event.get("t")) or 0.0
        group = _event_group(kind)
        colour = EVENT_COLOURS.get(kind, EVENT_COLOURS.get(group, "#546e7a"))
        y = top + lane_of[node] * lane_h
        info = f"{_seconds(t)} {node} {kind}" + _event_detail(event)
        if kind in ("node.restart", "po.restart", "fault.restart", "po.failed", "fault.token_expiry"):
            shape = (
                f'<path d="M{x(t):.1f} {y + 2} l5 8 l-5 8 l-5 -8 z" fill="{colour}" stroke="#fff"/>'
                if kind != "po.failed"
                else f'<circle cx="{x(t):.1f}" cy="{y + 13}" r="6" fill="{STATUS_COLOURS["failed"]}"/>'
            )
        else:
            shape = f'<rect x="{x(t) - 0.75:.1f}" y="{y + 3}" width="1.5" height="20" fill="{colour}"/>'
        parts.append(
            f'<g data-group="{_attr(group)}" data-info="{_attr(info)}">{shape}<title>{_text(info)}</title></g>'
        )
        drawn += 1
    ticks = _ticks(end)
    axis_y = top + lane_h * max(len(lanes), 1) + 4
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#9e9e9e"/>')
    for tick in ticks:
        parts.append(
            f'<text x="{x(tick):.1f}" y="{axis_y + 16}" text-anchor="middle">{_text(_seconds(tick))}</text>'
        )
    parts.append("</svg>")
    groups = sorted(set(re.findall(r'data-group="([^"]+)"', "".join(parts))))
    checkboxes = "".join(
        f'<label><input type="checkbox" value="{_attr(g)}" checked> {_text(g)}</label> ' for g in groups
    )
    notes = []
    if not detailed:
        notes.append(
            "This report holds no event log (events.timeline): each lane shows the node's final status, "
            "restarts and failures, not its states over time or its messages."
        )
    if bands and not any(_number(r.get("start")) is not None for r in rounds) and not _round_starts(detailed):
        notes.append(
            "The report holds each round's duration, not its start: rounds are laid end to end from the "
            "start of the federation."
        )
    if left_out:
        notes.append(f"{left_out} event(s) not drawn (the first {drawn} are).")
    legend = "".join(
        f'<span><i style="background:{c}"></i>{_text(k)}</span>' for k, c in STATUS_COLOURS.items()
    ) + "".join(
        f'<span><i style="background:{EVENT_COLOURS[k]};height:3px"></i>{_text(label)}</span>'
        for k, label in (
            ("delivery.ok", "message delivered"),
            ("delivery.retry", "retried"),
            ("delivery.dropped", "dropped"),
            ("fault", "fault"),
        )
    )
    return (
        '<section id="timeline"><h2>Timeline</h2>'
        f'<div class="legend">{legend}</div>'
        f'<div id="timeline-filter">{checkboxes}</div>'
        f'<div style="overflow-x:auto">{"".join(parts)}</div>'
        '<div id="timeline-info" aria-live="polite"></div>'
        + "".join(f'<p class="muted">{_text(n)}</p>' for n in notes)
        + "</section>"
    )


def _state_segments(
    events: Sequence[Mapping[str, Any]],
    lane_of: Mapping[str, int],
    final: Mapping[str, str],
    end: float,
    x: Callable[[float], float],
    top: int,
    lane_h: int,
) -> list[str]:
    """Each node's statuses over time, from the statuses it reported to the pod orchestrator."""
    changes: dict[str, list[tuple[float, str]]] = {}
    for event in events:
        node, status = str(event.get("node")), event.get("status")
        if event.get("kind") != "po.log" or node not in lane_of or not isinstance(status, str):
            continue
        history = changes.setdefault(node, [])
        if not history or history[-1][1] != status:
            history.append((_number(event.get("t")) or 0.0, status))
    # a final status the node did not stream itself (the run decided it): from its last event on
    last_seen = {str(e.get("node")): _number(e.get("t")) or 0.0 for e in events}
    for node, history in changes.items():
        status = final.get(node)
        if status and history[-1][1] != status:
            history.append((max(last_seen.get(node, history[-1][0]), history[-1][0]), status))
    parts = []
    for node, history in changes.items():
        y = top + lane_of[node] * lane_h
        for index, (begin, status) in enumerate(history):
            finish = history[index + 1][0] if index + 1 < len(history) else end
            label = f"{node}: {status} from {_seconds(begin)} to {_seconds(finish)}"
            parts.append(
                f'<g data-group="states" data-info="{_attr(label)}"><rect x="{x(begin):.1f}" y="{y + 6}" '
                f'width="{max(x(finish) - x(begin), 1.0):.1f}" height="14" '
                f'fill="{STATUS_COLOURS.get(status, "#9e9e9e")}" fill-opacity="0.8">'
                f"<title>{_text(label)}</title></rect></g>"
            )
    return parts


def _message_lines(
    events: Sequence[Mapping[str, Any]],
    lane_of: Mapping[str, int],
    x: Callable[[float], float],
    top: int,
    lane_h: int,
) -> tuple[list[str], set[int]]:
    """A line per delivery (or drop, or retry) of a message, from its sending to its delivery."""
    sent = {
        event.get("message_seq"): _number(event.get("t")) or 0.0
        for event in events
        if event.get("kind") == "broker.sent" and event.get("message_seq") is not None
    }
    parts: list[str] = []
    drawn: set[int] = set()
    for event in events:
        kind = str(event.get("kind", ""))
        sender, receiver = str(event.get("sender")), str(event.get("receiver"))
        start = sent.get(event.get("message_seq"))
        if (
            not kind.startswith("delivery.")
            or start is None
            or sender not in lane_of
            or receiver not in lane_of
        ):
            continue
        if len(parts) >= MAX_TIMELINE_EVENTS:
            break
        t = _number(event.get("t")) or start
        y1, y2 = top + lane_of[sender] * lane_h + 13, top + lane_of[receiver] * lane_h + 13
        info = f"{_seconds(start)} to {_seconds(t)}: {kind} {sender} > {receiver}" + _event_detail(event)
        dash = ' stroke-dasharray="3 2"' if kind != "delivery.ok" else ""
        parts.append(
            f'<g data-group="{_attr(_event_group(kind))}" data-info="{_attr(info)}"><line x1="{x(start):.1f}" '
            f'y1="{y1}" x2="{x(t):.1f}" y2="{y2}" stroke="{EVENT_COLOURS.get(kind, "#546e7a")}" '
            f'stroke-width="1.2"{dash}/><title>{_text(info)}</title></g>'
        )
        drawn.add(id(event))
    return parts, drawn


def _rounds_section(report: Mapping[str, Any], names: list[str]) -> str:
    run = _mapping(report.get("run"))
    rounds = [r for r in _list(run.get("rounds")) if isinstance(r, Mapping)]
    if not rounds:
        return '<section id="rounds"><h2>Rounds</h2><p class="muted">No rounds in this report.</p></section>'
    by_id = _names_by_id(report)
    rows = []
    for row in rounds:
        contributors = [by_id.get(str(c), str(c)) for c in _contributors(row)]
        updates = row.get("updates", len(contributors) if contributors else None)
        rows.append(
            [
                _cell(row.get("round"), numeric=True),
                _cell(_seconds(_number(row.get("seconds"))), numeric=True),
                _cell(updates, numeric=True),
                _cell(", ".join(contributors) if contributors else "not in this report"),
            ]
        )
    total = sum(_number(r.get("seconds")) or 0.0 for r in rounds)
    return (
        '<section id="rounds"><h2>Rounds</h2>'
        + _table(["round", "seconds", "updates", "contributors"], rows)
        + f'<p class="muted">{len(rounds)} round(s), {_text(_seconds(total))} in rounds; '
        f"{_text(_seconds(_number(run.get('seconds'))))} for the federation.</p></section>"
    )


def _faults_section(report: Mapping[str, Any]) -> str:
    faults = _mapping(report.get("faults"))
    events = _mapping(report.get("events"))
    counts = _mapping(events.get("counts")) or _mapping(_mapping(report.get("run")).get("events"))
    parts = ['<section id="faults"><h2>Faults and retries</h2>']
    spec = faults.get("spec")
    parts.append(f"<p>Fault plan: <code>{_text(spec)}</code></p>" if spec else "<p>No faults injected.</p>")
    rules = [r for r in _list(faults.get("rules")) if isinstance(r, Mapping)]
    if rules:
        columns = sorted({str(k) for r in rules for k in r} - {"type"})
        parts.append(
            _table(
                ["type", *columns],
                [[_cell(r.get("type")), *(_cell(r.get(c)) for c in columns)] for r in rules],
            )
        )
    interesting = {
        k: v
        for k, v in counts.items()
        if str(k).startswith(("fault.", "delivery.", "node.restart", "po.restart", "po.failed"))
    }
    if interesting:
        parts.append("<h3>Event counts</h3>")
        parts.append(
            _table(["event", "count"], [[_cell(k), _cell(v, numeric=True)] for k, v in interesting.items()])
        )
    notable = [e for e in _list(events.get("notable")) if isinstance(e, Mapping)]
    if notable:
        parts.append("<h3>Notable events</h3>")
        parts.append(
            _table(
                ["t", "node", "event", "detail"],
                [
                    [
                        _cell(_seconds(_number(e.get("t"))), numeric=True),
                        _cell(e.get("node")),
                        _cell(e.get("kind")),
                        _cell(_event_detail(e).strip(" ,")),
                    ]
                    for e in notable[:MAX_TABLE_ROWS]
                ],
            )
        )
    parts.append("</section>")
    return "".join(parts)


def _nodes_section(report: Mapping[str, Any]) -> str:
    run_nodes = _mapping(_mapping(report.get("run")).get("nodes"))
    stack_nodes = _mapping(_mapping(report.get("stack")).get("nodes"))
    names = list(dict.fromkeys([*run_nodes, *stack_nodes]))
    if not names:
        return '<section id="nodes"><h2>Nodes</h2><p class="muted">No nodes in this report.</p></section>'
    rows = []
    for name in names:
        outcome, info = _mapping(run_nodes.get(name)), _mapping(stack_nodes.get(name))
        sources = ", ".join(
            f"{_short(s.get('name'))} ({_short(s.get('kind'))})"
            for s in _list(info.get("data_sources"))
            if isinstance(s, Mapping)
        )
        rows.append(
            [
                _cell(name),
                _cell(outcome.get("role", info.get("role"))),
                _cell(outcome.get("status", info.get("po_status"))),
                _cell(outcome.get("incarnations"), numeric=True),
                _cell(info.get("restarts"), numeric=True),
                _cell(sources),
                _cell(outcome.get("error")),
            ]
        )
    processes = _mapping(report.get("processes"))
    extra = ""
    if processes:
        extra = "<h3>Node processes</h3>" + "".join(
            f"<details><summary>{_text(name)}: {len(_list(records))} incarnation(s)</summary>"
            + "".join(
                f"<p>incarnation {_text(r.get('incarnation'))}, exit code {_text(r.get('exit_code'))}, "
                f"{_text(_seconds(_number(r.get('seconds'))))}</p><pre>"
                + _text("\n".join(str(line) for line in _list(r.get("tail"))))
                + "</pre>"
                for r in _list(records)
                if isinstance(r, Mapping)
            )
            + "</details>"
            for name, records in processes.items()
        )
    return (
        '<section id="nodes"><h2>Nodes</h2>'
        + _table(["node", "role", "status", "incarnations", "restarts", "data sources", "error"], rows)
        + extra
        + "</section>"
    )


def _result_section(report: Mapping[str, Any]) -> str:
    parts = ['<section id="result"><h2>Final result</h2>']
    if "result" not in report or report.get("result") is None:
        parts.append('<p class="muted">No final result as a Python value in this report.</p>')
    else:
        parts.append(_value_table(report["result"]))
    files = _mapping(report.get("final_results"))
    if files:
        parts.append("<h3>As the hub received it</h3>")
        for name, entry in files.items():
            entry = _mapping(entry)
            parts.append(
                f"<p><code>{_text(name)}</code> ({_text(entry.get('bytes'))} bytes)</p>"
                f"<pre>{_text(_short(entry.get('text', ''), MAX_VALUE_CHARS * 2))}</pre>"
            )
    parts.append("</section>")
    return "".join(parts)


def _audit_section(report: Mapping[str, Any]) -> str:
    records = audit_records(report)
    parts = ['<section id="audit"><h2>Disclosure audit</h2>']
    if not records:
        parts.append(
            '<p class="muted">This report holds no disclosure audit records (neither a "disclosure" list nor '
            '"disclosure audit" log lines). Every release is also in each node\'s log stream.</p></section>'
        )
        return "".join(parts)
    by_id = _names_by_id(report)
    rows = []
    for record in records[:MAX_TABLE_ROWS]:
        statistics = [s for s in _list(record.get("statistics")) if isinstance(s, Mapping)]
        counts = sorted({str(s.get("n")) for s in statistics if s.get("n") is not None})
        flagged = [
            f"{c.get('rule')} at {c.get('path')}: {c.get('outcome')}"
            for c in _list(record.get("checks"))
            if isinstance(c, Mapping) and c.get("outcome") not in ("passed", "unjudged")
        ]
        spent = [f"ε {record.get('epsilon')}" if record.get("epsilon") else "", ""]
        if record.get("delta"):
            spent[1] = f"δ {record.get('delta')}"
        rows.append(
            [
                _cell(record.get("time")),
                _cell(by_id.get(str(record.get("node")), record.get("node"))),
                _cell(record.get("channel")),
                _cell(len(_list(record.get("destination"))), numeric=True),
                _cell(record.get("outcome")),
                _cell(f"{len(statistics)} over n={'/'.join(counts)}" if statistics else ""),
                _cell(record.get("unjudged"), numeric=True),
                _cell("; ".join(flagged) or "all passed"),
                _cell(" ".join(s for s in spent if s)),
                _cell(_short(record.get("digest"), 19)),
            ]
        )
    refused = sum(1 for r in records if str(r.get("outcome")) not in ("released", "passed"))
    parts.append(
        _table(
            [
                "time",
                "node",
                "channel",
                "receivers",
                "outcome",
                "statistics",
                "unjudged",
                "checks",
                "spent",
                "digest",
            ],
            rows,
        )
    )
    parts.append(
        f'<p class="muted">{len(records)} release record(s), {refused} not released as sent'
        + (f"; first {MAX_TABLE_ROWS} shown" if len(records) > MAX_TABLE_ROWS else "")
        + ".</p></section>"
    )
    return "".join(parts)


def _errors_section(report: Mapping[str, Any]) -> str:
    errors = [str(e) for e in _list(report.get("errors"))]
    stopped = report.get("stopped")
    if not errors and not stopped:
        return ""
    items = "".join(f"<li><pre>{_text(e)}</pre></li>" for e in errors)
    why = f"<p>Stopped: {_text(stopped)}</p>" if stopped else ""
    return f'<section id="errors"><h2>Errors</h2>{why}<ul>{items}</ul></section>'


# -- the final result as a table ------------------------------------------------------------------------


def _value_table(value: Any) -> str:
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        inner = list(dict.fromkeys(str(k) for v in value.values() for k in v))
        if all(not isinstance(x, (Mapping, list)) for v in value.values() for x in v.values()):
            rows = [
                [_cell(k), *(_cell(_mapping(v).get(c), numeric=True) for c in inner)]
                for k, v in value.items()
            ]
            return _table(["", *inner], rows[:MAX_TABLE_ROWS])
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        columns = list(dict.fromkeys(str(k) for v in value for k in v))
        rows = [[_cell(_mapping(v).get(c), numeric=True) for c in columns] for v in value[:MAX_TABLE_ROWS]]
        more = len(value) - len(rows)
        note = f'<p class="muted">{more} more row(s) not shown.</p>' if more > 0 else ""
        return _table(columns, rows) + note
    if isinstance(value, (Mapping, list)):
        flat = list(_flatten(value, ""))
        rows = [[_cell(path or "(value)"), _cell(v, numeric=True)] for path, v in flat[:MAX_TABLE_ROWS]]
        more = len(flat) - len(rows)
        note = f'<p class="muted">{more} more value(s) not shown.</p>' if more > 0 else ""
        return _table(["field", "value"], rows) + note
    return f"<pre>{_text(_short(value, MAX_VALUE_CHARS))}</pre>"


def _flatten(value: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


# -- helpers ------------------------------------------------------------------------------------------


def _node_names(report: Mapping[str, Any]) -> list[str]:
    names = list(
        dict.fromkeys(
            [
                *_mapping(_mapping(report.get("stack")).get("nodes")),
                *_mapping(_mapping(report.get("run")).get("nodes")),
            ]
        )
    )
    return sorted((str(n) for n in names), key=lambda n: (n != "aggregator", len(n), n))


def _node_statuses(report: Mapping[str, Any]) -> dict[str, str]:
    statuses = {
        str(k): str(_mapping(v).get("po_status", ""))
        for k, v in _mapping(_mapping(report.get("stack")).get("nodes")).items()
    }
    for name, outcome in _mapping(_mapping(report.get("run")).get("nodes")).items():
        if _mapping(outcome).get("status"):
            statuses[str(name)] = str(_mapping(outcome)["status"])
    return statuses


def _names_by_id(report: Mapping[str, Any]) -> dict[str, str]:
    nodes = _mapping(_mapping(report.get("stack")).get("nodes"))
    return {str(_mapping(v).get("node_id")): str(k) for k, v in nodes.items() if _mapping(v).get("node_id")}


def _contributors(row: Mapping[str, Any]) -> list[Any]:
    return _list(row.get("contributors"))


def _round_starts(events: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """When each round began: the aggregator's ``round N: waiting for parameters`` log lines."""
    starts: dict[int, float] = {}
    for event in events:
        text, t = event.get("log"), _number(event.get("t"))
        if event.get("kind") != "po.log" or not isinstance(text, str) or t is None:
            continue
        for line in text.splitlines():
            match = ROUND_START.match(line)
            if match:
                starts.setdefault(int(match.group(1)), t)
    return starts


ROUND_START = re.compile(r"^round (\d+): waiting for parameters")


def _round_bands(
    rounds: Sequence[Mapping[str, Any]], start: float, starts: Mapping[int, float] | None = None
) -> list[tuple[Any, float, float, Mapping[str, Any]]]:
    bands: list[tuple[Any, float, float, Mapping[str, Any]]] = []
    cursor = start
    for row in rounds:
        seconds = _number(row.get("seconds"))
        begin = _number(row.get("start"))
        number = row.get("round")
        if begin is None and starts and isinstance(number, int):
            begin = starts.get(number)
        if begin is None:
            begin = cursor
        if seconds is None:
            continue
        bands.append((row.get("round", len(bands) + 1), begin, begin + seconds, row))
        cursor = begin + seconds
    return bands


def _log_lines(report: Mapping[str, Any]) -> Iterable[str]:
    for records in _mapping(report.get("processes")).values():
        for record in _list(records):
            for line in _list(_mapping(record).get("tail")):
                yield str(line)
    for event in _list(_mapping(report.get("events")).get("timeline")):
        text = _mapping(event).get("log")
        if isinstance(text, str):
            yield from text.splitlines()


def _band_label(number: Any, left: float, width: float, y: int) -> str:
    if width < 8 * len(str(number)) + 4:
        return ""
    return f'<text x="{left + 2:.1f}" y="{y}">{_text(number)}</text>'


def _event_group(kind: str) -> str:
    if kind in EVENT_COLOURS and kind.startswith("delivery."):
        return kind
    if kind in ("node.restart", "po.restart"):
        return "restarts"
    return kind.split(".", 1)[0] if kind else "other"


def _event_detail(event: Mapping[str, Any]) -> str:
    skip = {"seq", "t", "kind", "node", "log"}
    items = [f"{k}={_short(v, 80)}" for k, v in event.items() if k not in skip]
    return (", " + ", ".join(items)) if items else ""


def _ticks(end: float) -> list[float]:
    step = 10 ** math.floor(math.log10(end / 5)) if end > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if end / (step * factor) <= 8:
            step *= factor
            break
    count = int(end / step)
    return [i * step for i in range(count + 1)]


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else ("" if value is None else _show(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (Mapping, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _text(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else _show(value), quote=True)


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, *, numeric: bool = False) -> str:
    css = ' class="num"' if numeric and _number(value) is not None else ""
    full = "" if value is None else (value if isinstance(value, str) else _show(value))
    title = f' title="{_attr(_short(repr(value), MAX_VALUE_CHARS))}"' if isinstance(value, float) else ""
    return f"<td{css}{title}>{_text(_short(full, MAX_VALUE_CHARS))}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

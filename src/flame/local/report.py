"""The outcome of a local run (:class:`SimOutcome`), its JSON run report and its printed summary."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flame import __version__, codec
from flame.errors import FlameError
from flame.local.config import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, SimConfig
from flame.local.loading import LoadedAnalysis
from flame.local.processes import ProcessRecord
from flame.redact import redact
from flame.sim.faults import FaultPlan
from flame.sim.federation import FederationRun
from flame.sim.stack import FlameStack


@dataclass
class SimOutcome:
    """A finished ``flame sim`` run."""

    config: SimConfig
    loaded: LoadedAnalysis
    run: FederationRun
    stack_info: dict[str, Any]
    errors: list[str]
    timings: dict[str, float]
    faults: FaultPlan
    started_at: str
    processes: dict[str, list[ProcessRecord]] = field(default_factory=dict)
    notable_events: list[dict[str, Any]] = field(default_factory=list)
    #: every event of the stack, JSON-ready, texts redacted
    events: list[dict[str, Any]] = field(default_factory=list)
    stopped_reason: str | None = None
    #: ``--timeout`` ran out (the federation was stopped, or the run abandoned, at its deadline)
    timed_out: bool = False
    #: a PrivateAIM-style run's own outcome (:class:`~flame.local.star_runs.StarRun`): each node's error
    #: and return value
    star_run: Any = None

    @property
    def ok(self) -> bool:
        return self.run.ok and not self.errors and not self.timed_out

    @property
    def status(self) -> Literal["ok", "failed", "timeout"]:
        """``ok``, ``failed``, or ``timeout`` (``--timeout`` ran out)."""
        if self.timed_out:
            return "timeout"
        return "ok" if self.ok else "failed"

    @property
    def exit_code(self) -> int:
        """What ``flame sim`` exits with: :data:`EXIT_OK`, :data:`EXIT_FAILED` or :data:`EXIT_TIMEOUT`."""
        return {"ok": EXIT_OK, "failed": EXIT_FAILED, "timeout": EXIT_TIMEOUT}[self.status]

    def report(self) -> dict[str, Any]:
        """The JSON run report: the federation's report, options, faults, events, timings, errors."""
        options = self.loaded.options
        report: dict[str, Any] = {
            "tool": "flame sim",
            "flame_version": __version__,
            "analysis": self.loaded.label if self.loaded.path is None else str(self.loaded.path.resolve()),
            "started_at": self.started_at,
            "ok": self.ok,
            "status": self.status,
            "mode": self.config.mode,
            "options": {
                "nodes": self.config.nodes,
                "data": None if self.config.data is None else str(self.config.data),
                "split": None if self.config.split is None else str(self.config.split),
                "seed": self.config.seed,
                "faults": self.config.faults,
                "max_rounds": self.config.max_rounds,
                "changed": self.config.option_changes,
                "timeout": self.config.timeout,
                "time_scale": self.config.time_scale,
            },
            "federation_options": dataclasses.asdict(options),
            "faults": {
                "spec": self.config.faults,
                "rules": [
                    {"type": type(rule).__name__, **dataclasses.asdict(rule)} for rule in self.faults.rules
                ],
            },
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
            "run": self.run.report(),
            "result": final_value(self),
            "final_results": {
                name: {"bytes": len(data), "text": decode_final(data, options.output_type, limit=4000)}
                for name, data in self.run.final_results.items()
            },
            "events": {"counts": self.run.events, "notable": self.notable_events},
            "stack": self.stack_info,
            "stopped": self.stopped_reason,
            "errors": self.errors,
        }
        if self.processes:
            report["processes"] = {
                name: [record.to_json() for record in records] for name, records in self.processes.items()
            }
        result: dict[str, Any] = jsonable(report)
        return result


def final_value(outcome: SimOutcome) -> Any:
    """The final result as the aggregator returned it: its object in process, else decoded from the hub.

    Read back from the hub's files: ``codec`` decoded, ``str`` as text, ``bytes`` as they are; a pickled
    result is never unpickled (None). Several files give a list.
    """
    run = outcome.run
    if run.result is not None:
        return run.result
    output_type = outcome.loaded.options.output_type
    values: list[Any] = []
    for data in run.final_results.values():
        if output_type == "codec":
            try:
                values.append(codec.decode(data))
            except FlameError:
                values.append(None)
        elif output_type == "str":
            values.append(data.decode("utf-8", "replace"))
        elif output_type == "bytes":
            values.append(data)
        else:
            values.append(None)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def decode_final(data: bytes, output_type: str, *, limit: int | None = None) -> str:
    """A final-result file as text: ``str`` and ``bytes`` decoded, ``codec`` decoded and shown, never unpickled."""
    if output_type == "pickle" or codec.is_pickle(data):
        text = f"<pickled result, {len(data)} bytes; not unpickled>"
    elif output_type == "codec":
        try:
            text = repr(codec.decode(data))
        except FlameError as exc:
            text = f"<codec result, {len(data)} bytes; does not decode: {exc}>"
    elif output_type == "parquet":
        try:
            import pandas as pd

            text = pd.read_parquet(io.BytesIO(data)).to_string()
        except Exception as exc:  # pyarrow missing or a file it cannot read: say so, show no bytes
            text = f"<parquet result, {len(data)} bytes; cannot be read here: {exc}>"
    else:  # str, json, csv and bytes that are text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = f"<{len(data)} bytes: {data[:32].hex()}...>"
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text


def stack_info(stack: FlameStack) -> dict[str, Any]:
    return {
        "analysis_id": stack.analysis_id,
        "project_id": stack.project_id,
        "nodes": {
            name: {
                "node_id": node.node_id,
                "role": node.role,
                "restarts": node.restart_counter,
                "po_status": stack.po.records[name].status,
                "progress": stack.po.records[name].progress,
                "data_sources": [{"name": s.name, "kind": s.kind} for s in node.sources],
            }
            for name, node in stack.nodes.items()
        },
    }


_NOTABLE_EVENTS = ("node.restart", "po.restart", "po.failed", "fault.restart", "fault.token_expiry")


def all_events(stack: FlameStack) -> list[dict[str, Any]]:
    """Every event of the stack, JSON-ready, their texts redacted; each ``po.log`` with its ``log`` text.

    The log text of a node is what its analysis streamed to the pod orchestrator (status lines, the
    ``disclosure audit`` records): the HTML report draws its timeline and audit from these events.
    """
    logs = {name: iter(record.logs) for name, record in stack.po.records.items()}
    events = []
    for event in stack.events.to_list():
        node = event.get("node")
        if event["kind"] == "po.log" and node in logs:
            entry = next(logs[node], None)
            if isinstance(entry, Mapping) and isinstance(entry.get("log"), str):
                event["log"] = entry["log"]
        events.append({k: redact(v) if isinstance(v, str) else v for k, v in event.items()})
    return events


def notable_events(stack: FlameStack, limit: int = 1000) -> list[dict[str, Any]]:
    """The stack's notable events for the report, their texts redacted (a reason can quote an error)."""
    events = [e for e in stack.events.to_list() if e["kind"] in _NOTABLE_EVENTS][:limit]
    return [{k: redact(v) if isinstance(v, str) else v for k, v in e.items()} for e in events]


def run_errors(run: FederationRun, reason: str | None, stack: FlameStack | None = None) -> list[str]:
    """The run's errors, redacted: an exception's message can quote a token (in-process mode too).

    A node that asked for data it does not have gets what it has appended (``stack`` given).
    """
    errors: list[str] = []
    if reason is not None:
        errors.append(f"stopped: {reason}")
    for outcome in run.outcomes.values():
        if outcome.error:
            outcome.error = redact(outcome.error)
            if stack is not None and outcome.name in stack.nodes and _missing_data(outcome.error):
                outcome.error += "; " + data_hint(stack, outcome.name)
            errors.append(f"{outcome.name} ({outcome.role}, {outcome.status}): {outcome.error}")
    if not run.final_results and not errors:
        errors.append("no final result reached the hub")
    return errors


#: What a node's error says when it asked for data its sources do not have.
_MISSING_DATA = ("NoSuchKey", "DataNotFoundError", "data source on this node", "answered 404")


def _missing_data(error: str) -> bool:
    return any(marker in error for marker in _MISSING_DATA) and ("s3" in error or "fhir" in error)


def data_hint(stack: FlameStack, name: str, limit: int = 12) -> str:
    """What data node ``name`` has (its sources, and the S3 keys of folder sources), and how to give it."""
    node = stack.node(name)
    parts = []
    for source in node.sources:
        if source.kind == "s3" and source.folder is not None and source.folder.is_dir():
            keys = sorted(str(p.relative_to(source.folder)) for p in source.folder.rglob("*") if p.is_file())
            shown = ", ".join(keys[:limit]) + (
                f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
            )
            parts.append(f"{source.name} (s3 keys: {shown or 'none'})")
        else:
            parts.append(f"{source.name} ({source.kind})")
    has = "; ".join(parts) if parts else "no data sources"
    return (
        f"{name} has {has}. Give each node its data with --data DIR (DIR/{name}/s3/<key> for S3 objects, "
        f"DIR/{name}/fhir/ for FHIR bundles) or --split FILE"
    )


def default_report_path(base: Path | None = None) -> Path:
    """``flame-runs/<timestamp>/report.json`` under ``base`` (the working folder); a fresh folder each run."""
    root = (base or Path.cwd()) / "flame-runs"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return folder / "report.json"
    raise FlameError(f"cannot make a run folder under {root}")


def print_summary(outcome: SimOutcome, console: Console) -> None:
    """The final result, the per-round figures, and the errors of a finished run."""
    run = outcome.run
    options = outcome.loaded.options
    console.print()
    if run.result is not None:
        summary = typed_summary(outcome)
        if summary is not None:
            console.print(Text("final result:", style="bold"))
            console.print(Text(summary), soft_wrap=True)
        else:
            console.print(
                Text("final result: ", style="bold").append(_show(run.result), style=""), soft_wrap=True
            )
    for name, data in run.final_results.items():
        text = decode_final(data, options.output_type, limit=2000)
        if run.result is None:
            console.print(Text("final result: ", style="bold").append(text), soft_wrap=True)
        console.print(f"  submitted to the hub as {name} ({len(data)} bytes)", highlight=False, markup=False)
    if run.rounds:
        table = Table(title="rounds", title_justify="left")
        table.add_column("round", justify="right")
        table.add_column("updates", justify="right")
        table.add_column("seconds", justify="right")
        for entry in run.rounds:
            updates = entry.get("updates", len(entry.get("contributors", [])))
            seconds = entry.get("seconds")
            table.add_row(
                str(entry.get("round")), str(updates), "" if seconds is None else f"{float(seconds):.3f}"
            )
        console.print(table)
    for warning in run.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    counts = run.events
    faults = sum(n for kind, n in counts.items() if kind.startswith("fault."))
    console.print(
        f"{len(run.outcomes)} nodes in {run.seconds:.2f} s; messages {counts.get('broker.sent', 0)}, "
        f"retries {counts.get('delivery.retry', 0)}, dropped {counts.get('delivery.dropped', 0)}, "
        f"faults {faults}, restarts {counts.get('node.restart', 0)}",
        highlight=False,
        markup=False,
    )
    if outcome.ok:
        console.print("ok: every node executed and the final result reached the hub", style="green")
        return
    console.print("FAILED", style="bold red")
    for error in outcome.errors:
        console.print(Text(f"  {error}", style="red"), soft_wrap=True)


def typed_summary(outcome: SimOutcome) -> str | None:
    """The ``summary()`` text of a final result its analysis interprets into a typed result (flame.stats)."""
    try:
        value = outcome.loaded.analysis.interpret(outcome.run.result)
    except Exception:  # the author's interpret failing on the result: show the raw result instead
        return None
    summary = getattr(value, "summary", None)
    if not callable(summary):
        return None
    try:
        text = summary()
    except Exception:  # a summary that cannot be made: the raw result is still shown
        return None
    return text if isinstance(text, str) else None


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 2000 else text[:2000] + f"... ({len(text) - 2000} more characters)"


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON: non-finite floats become None, unknown objects their ``repr``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | deque):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and hasattr(value, "columns"):  # a pandas DataFrame: its rows as records
        with contextlib.suppress(Exception):
            return jsonable(to_dict(orient="records"))
    if hasattr(value, "index") and callable(getattr(value, "tolist", None)) and hasattr(value, "dtype"):
        with contextlib.suppress(
            Exception
        ):  # a pandas Series: its values (not .item(): one value stays a list)
            return jsonable(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return jsonable(item())
    tolist = getattr(value, "tolist", None)  # NumPy arrays
    if callable(tolist):
        with contextlib.suppress(Exception):
            return jsonable(tolist())
    return repr(value)

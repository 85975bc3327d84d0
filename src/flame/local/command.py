"""``flame sim``: the handler of the parsed command line (the parser lives in :mod:`flame.cli`).

It is :func:`flame.local.api.simulate` with a display: the live table (or plain log lines) while
the run goes, then the final result, the per-round figures, the run report (``--report``, default
``flame-runs/<timestamp>/report.json``), the final result files (``--out DIR``) and, with ``--json``, a
machine-readable summary as the only thing on stdout (everything else goes to stderr then).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from flame.errors import ConfigurationError, FlameError
from flame.local.api import SimulationResult, busy_threads, simulate
from flame.local.config import EXIT_FAILED, EXIT_USAGE, SimMode, SimUsageError
from flame.local.loading import AnalysisFileError
from flame.local.report import default_report_path, final_value, jsonable, print_summary
from flame.sim.faults import FaultSpecError, parse_faults


def sim_command(args: Any) -> int:
    """``flame sim``: run the file, show and store the outcome; returns the exit code (see the epilog)."""
    as_json = bool(getattr(args, "json", False))
    console = Console(stderr=as_json)
    mode: SimMode = "processes" if args.processes else ("served" if args.served else "inprocess")
    # with --json, stdout carries the summary alone: what the analysis prints goes to stderr
    stdout = sys.stdout
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet:
        try:
            if args.faults:
                parse_faults(args.faults, seed=args.seed)
            result = simulate(
                args.analysis,
                data=args.data,
                nodes=args.nodes,
                split=args.split,
                faults=args.faults or "",
                seed=args.seed,
                mode=mode,
                policy=list(getattr(args, "policy", None) or ()),
                timeout=args.timeout,
                time_scale=args.time_scale,
                max_rounds=args.max_rounds,
                console=console,
                live=not args.no_live and console.is_terminal and not as_json,
            )
        except AnalysisFileError as exc:
            if not as_json:
                raise
            console.print(f"flame sim: {exc}", style="red", highlight=False, markup=False, soft_wrap=True)
            return _json_failure(stdout, EXIT_FAILED, "failed", exc)
        except (SimUsageError, FaultSpecError, ConfigurationError) as exc:
            # options, a node name the run does not have, a bad --policy file (known once the nodes are)
            code = _usage_error(console, exc)
            return _json_failure(stdout, code, "usage", exc) if as_json else code
    print_summary(result.outcome, console)
    report_path = args.report if args.report is not None else default_report_path()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result.report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    console.print(f"report: {report_path}", highlight=False, markup=False)
    html_path = getattr(args, "html", None)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(result.to_html(), encoding="utf-8")
        console.print(f"html report: {html_path}", highlight=False, markup=False)
    written: list[Path] = []
    out = getattr(args, "out", None)
    if out is not None:
        written = write_result_files(result, out)
        for path in written:
            console.print(f"result: {path}", highlight=False, markup=False)
    busy = busy_threads()
    if busy:
        console.print(
            f"note: the analysis code is still running in {len(busy)} thread(s) and cannot be interrupted; "
            "the process ends when it returns (Ctrl-C ends it now)",
            style="yellow",
            highlight=False,
            markup=False,
        )
    if as_json:
        summary = json_summary(result, report_path, written, html_path)
        sys.stdout.write(json.dumps(summary, allow_nan=False) + "\n")
        sys.stdout.flush()
    return result.exit_code


def json_summary(
    result: SimulationResult, report: Path, written: list[Path], html: Path | None = None
) -> dict[str, Any]:
    """What ``flame sim --json`` prints: the status, the final result as JSON, rounds, errors, files."""
    summary: dict[str, Any] = {
        "ok": result.ok,
        "status": result.status,
        "exit_code": result.exit_code,
        "result": final_value(result.outcome),
        "rounds": result.outcome.run.rounds,
        "seconds": round(result.outcome.run.seconds, 3),
        "errors": result.errors,
        "report": str(report),
        "html": None if html is None else str(html),
        "out": [str(path) for path in written],
    }
    converted: dict[str, Any] = jsonable(summary)
    return converted


def write_result_files(result: SimulationResult, folder: Path) -> list[Path]:
    """Write the final result into ``folder``: a DataFrame as CSV, bytes as they are, the rest as JSON.

    One file ``result.<ext>``; an aggregator that submitted several results gets ``result_1.<ext>``,
    ``result_2.<ext>``, ... Returns the files written (none without a final result).
    """
    value = final_value(result.outcome)
    if value is None:
        return []
    values = value if isinstance(value, list) and len(result.outcome.run.final_results) > 1 else [value]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, item in enumerate(values, 1):
        stem = "result" if len(values) == 1 else f"result_{index}"
        if hasattr(item, "to_csv") and hasattr(item, "columns"):
            path = folder / f"{stem}.csv"
            item.to_csv(path, index=False, lineterminator="\n")
        elif isinstance(item, bytes | bytearray):
            path = folder / f"{stem}.bin"
            path.write_bytes(bytes(item))
        else:
            path = folder / f"{stem}.json"
            path.write_text(json.dumps(jsonable(item), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _json_failure(stdout: TextIO, code: int, status: str, exc: FlameError) -> int:
    """``--json`` when no run took place: the summary still comes, with the reason as its error."""
    summary = {"ok": False, "status": status, "exit_code": code, "result": None, "errors": [str(exc)]}
    stdout.write(json.dumps(summary) + "\n")
    stdout.flush()
    return code


def _usage_error(console: Console, exc: FlameError) -> int:
    console.print(f"flame sim: {exc}", style="red", highlight=False, markup=False, soft_wrap=True)
    return EXIT_USAGE


__all__ = ["json_summary", "sim_command", "write_result_files"]

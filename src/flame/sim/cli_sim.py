"""``flame sim``: an analysis file on a whole local federation, on this machine.

``flame sim ANALYSIS.py --nodes N`` runs the file on the emulated FLAME node stack (one aggregator and
``N`` analysis nodes) and ends with the final result, the per-round figures and a JSON run report:

- The file is loaded as ``python ANALYSIS.py`` would run it (``runpy.run_path`` with ``__name__`` set to
  ``"__main__"``, its folder first on ``sys.path``) while :func:`flame.runner.set_run_hook` is set, so the
  file's ``flame.run(analyzer, aggregator, ...)`` hands the objects and options over instead of running on
  a node. The rest of the file after that call is not executed. A file that never calls ``flame.run`` is
  refused with :class:`AnalysisFileError`.
- Modes: in-process (default; every node on one event loop, HTTP through in-process transports),
  ``--served`` (the stack on loopback sockets, real HTTP), and ``--processes``: every node is
  ``python ANALYSIS.py`` in an OS process of its own with the environment of a FLAME container (the five
  variables, ``FLAME_BASE_URL`` = the node's sidecar on loopback, ``FLAME_ANALYSIS_PORT``/``_HOST`` for
  its REST API), so the run proves the file works unchanged on a node. A pod restart (fault or pod
  orchestrator) kills the node's process and starts a new one with the new environment.
- A federation that can no longer succeed (the aggregator failed, or too many analysis nodes failed for
  the quorum) is stopped at once instead of waiting for the round deadline.
- ``--timeout`` is a hard limit of the whole run: at the deadline the nodes are stopped (tasks cancelled,
  processes terminated, then killed), each shutdown step with a bound of its own, and the run ends with
  its report (``"status": "timeout"``) and exit code :data:`EXIT_TIMEOUT`, a few seconds later at most.
  Nothing waits without bound after a cancellation: before Python 3.12 ``asyncio.wait_for`` can swallow
  one, so stopping never relies on a single cancel being delivered.
- What a node process prints (stdout and stderr) is redacted as it is read, before anything shows or
  stores it: the node's own ``KEYCLOAK_TOKEN`` and ``DATA_SOURCE_TOKEN`` (every incarnation's), and any
  JWT-shaped or ``Bearer`` value. A run report is a file people share; a token in it is a leaked token.

:func:`simulate` is the same run as a function (no display, no report file): what a project's tests call.

(``flame run ANALYSIS.py``, the container entrypoint on a real node, lives in :mod:`flame.cli`: production
code does not import the emulator.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import re
import runpy
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flame import __version__, codec
from flame.config import NO_DATA_ACCESS
from flame.disclosure.policy import policy_files
from flame.errors import ConfigurationError, FlameError
from flame.federated import Aggregator, Analysis, Analyzer, FederationOptions
from flame.node.messaging import DEFAULT_ATTEMPT_TIMEOUT
from flame.node.runtime import Timeouts
from flame.node.status import FINAL_STATUSES
from flame.redact import MIN_SECRET_LENGTH, RedactTokensFilter, redact
from flame.runner import set_run_hook
from flame.sim.display import LinePrinter, LiveDisplay
from flame.sim.faults import FaultPlan, FaultSpecError, parse_faults
from flame.sim.federation import Federation, FederationRun, NodeOutcome, cannot_finish
from flame.sim.node import SimNode
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

SimMode = Literal["inprocess", "served", "processes"]
_log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default bound of one ``flame sim`` run (seconds).
DEFAULT_TIMEOUT = 600.0
#: How long a node process gets to exit after SIGTERM before it is killed (seconds).
KILL_GRACE = 5.0
#: Name prefix of the worker threads that run author code in in-process and served mode.
WORKER_PREFIX = "flame-sim-worker"
#: Lines of a node process' output kept for the report and error messages.
TAIL_LINES = 40
#: Variables a node process gets from this environment besides the container's: what an image provides.
PASSED_THROUGH = ("PATH", "HOME", "SYSTEMROOT", "PYTHONPATH")
#: A node's variables whose values are secrets, redacted from what its process prints.
SECRET_VARIABLES = ("KEYCLOAK_TOKEN", "DATA_SOURCE_TOKEN")
#: Least webhook-delivery and health-check timeout under ``--time-scale`` (real seconds).
MIN_TIMEOUT = 2.0
#: Least pod-orchestrator period and health-check timeout in process mode (real seconds): a Python
#: process needs a moment to start, and the orchestrator restarts a pod whose /healthz does not answer.
PROCESS_PO_PERIOD = 10.0
PROCESS_PO_HEALTHZ_TIMEOUT = 5.0
#: After the federation stopped (or ``--timeout`` ran out), how long stopping the nodes and closing the
#: stack may take before the run is abandoned (seconds).
SHUTDOWN_GRACE = 5.0
#: How long a cancelled task (or a killed process) gets to end before it is left behind (seconds).
CANCEL_GRACE = 1.0
#: Exit codes of ``flame sim``: every node executed / the run failed / bad usage / ``--timeout`` ran out.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 124


class AnalysisFileError(FlameError):
    """The analysis file cannot be run: missing, failing while loading, or never calling ``flame.run``."""


class SimUsageError(FlameError):
    """``flame sim`` was given options that do not fit together."""


class _HandedOver(BaseException):
    """Raised by the run hook to stop the analysis file at ``flame.run`` (not an ``Exception``)."""


# -- loading the analysis file -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedAnalysis:
    """What an analysis file handed to ``flame.run``."""

    path: Path
    analyzer: Analyzer | type[Analyzer]
    aggregator: Aggregator | type[Aggregator]
    options: FederationOptions
    #: All of it as one object (its :meth:`~flame.federated.analysis.Analysis.interpret` reads the result)
    analysis: Analysis


@contextlib.contextmanager
def script_context(path: Path, argv: Sequence[str] = (), *, forget_modules: bool = True) -> Iterator[None]:
    """Run code as ``python PATH ARGV...`` would: the file's folder first on ``sys.path``, ``sys.argv``.

    With ``forget_modules``, the file's sibling modules (and packages) imported meanwhile are removed from
    ``sys.modules`` afterwards, so a later file with a sibling module of the same name (``analyzer.py``)
    gets its own. Modules whose top-level package was imported before (``flame``) are never removed.
    """
    folder = str(path.resolve().parent)
    before = set(sys.modules)
    saved_argv = sys.argv
    sys.argv = [str(path), *argv]
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.argv = saved_argv
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        if forget_modules:
            for name in _local_modules(set(sys.modules) - before, before, Path(folder)):
                del sys.modules[name]


def _local_modules(new: set[str], before: set[str], folder: Path) -> list[str]:
    """The modules of ``new`` whose top-level module is new too and sits directly in ``folder``."""
    local = []
    for name in new:
        top = name.partition(".")[0]
        module = sys.modules.get(top)
        module_file = getattr(module, "__file__", None)
        if top in before or not module_file:
            continue
        location = Path(module_file).resolve()
        home = location.parent.parent if location.name == "__init__.py" else location.parent
        if home == folder:
            local.append(name)
    return local


def load_analysis(path: Path | str) -> LoadedAnalysis:
    """Run an analysis file up to its ``flame.run(...)`` call and return what it handed over.

    Raises :class:`AnalysisFileError` when the file does not exist, raises while loading, never calls
    ``flame.run``, or calls it with something other than an Analyzer and an Aggregator.
    """
    file = Path(path)
    if not file.is_file():
        raise AnalysisFileError(f"{file}: no such file; give the path of an analysis .py file")
    captured: list[Analysis] = []

    def hook(analysis: Analysis) -> Any:
        captured.append(analysis)
        raise _HandedOver

    token = set_run_hook(hook)
    try:
        with script_context(file):
            runpy.run_path(str(file), run_name="__main__")
    except _HandedOver:
        pass
    except SystemExit as exc:
        raise AnalysisFileError(
            f"{file} exited (sys.exit({exc.code!r})) before calling flame.run(...)"
        ) from None
    except ConfigurationError as exc:
        if exc.variable not in ("analyzer", "aggregator"):
            raise AnalysisFileError(
                f"{file} raised {type(exc).__name__} while loading: {exc}{_file_frames(exc, file)}"
            ) from exc
        which = "first" if exc.variable == "analyzer" else "second"
        raise AnalysisFileError(f"{file}: flame.run's {which} argument {exc.problem}") from None
    except Exception as exc:
        raise AnalysisFileError(
            f"{file} raised {type(exc).__name__} while loading: {exc}{_file_frames(exc, file)}"
        ) from exc
    finally:
        token.var.reset(token)
    if not captured:
        raise AnalysisFileError(
            f"{file} never called flame.run(...). End the file with\n\n"
            '    if __name__ == "__main__":\n'
            "        flame.run(MyAnalyzer(), MyAggregator())\n"
        )
    analysis = captured[0]
    return LoadedAnalysis(file, analysis.analyzer, analysis.aggregator, analysis.options, analysis)


def _file_frames(exc: BaseException, file: Path) -> str:
    """The traceback lines that point into ``file`` (where the author looks first)."""
    target = str(file.resolve())
    lines = [
        f"\n  {frame.filename}, line {frame.lineno}: {frame.line}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename and str(Path(frame.filename).resolve()) == target
    ]
    return "".join(lines[-3:])


# -- data -----------------------------------------------------------------------------------------------


def split_into(root: Path, source: Path, nodes: int, seed: int) -> list[int]:
    """Split one CSV or FHIR file across ``node-1`` ... ``node-N`` under ``root``; returns the part sizes.

    A CSV goes to ``node-i/s3/<name>.csv`` (a patient's rows together when it has a ``patient_id``
    column), a FHIR Bundle (``.json``) or NDJSON file to ``node-i/fhir/bundle.json``.
    """
    from flame.sim import synthetic

    if not source.is_file():
        raise SimUsageError(f"--split {source}: no such file")
    suffix = source.suffix.lower()
    sizes: list[int] = []
    if suffix == ".csv":
        for i, frame in enumerate(synthetic.split_csv(source, nodes, seed), 1):
            target = root / f"node-{i}" / "s3" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(target, index=False, lineterminator="\n")
            sizes.append(len(frame))
    elif suffix in (".json", ".ndjson"):
        for i, resources in enumerate(synthetic.split_fhir_bundle(source, nodes, seed), 1):
            target = root / f"node-{i}" / "fhir" / "bundle.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(synthetic.dump_bundle(resources), encoding="utf-8")
            sizes.append(len(resources))
    else:
        raise SimUsageError(f"--split {source}: give a .csv file, a FHIR Bundle (.json) or NDJSON (.ndjson)")
    return sizes


def count_node_folders(root: Path) -> int:
    """How many consecutive ``node-1``, ``node-2``, ... folders ``root`` has."""
    count = 0
    while (root / f"node-{count + 1}").is_dir():
        count += 1
    return count


# -- the run --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """The options of one ``flame sim`` run."""

    analysis: Path
    nodes: int | None = None
    data: Path | None = None
    split: Path | None = None
    seed: int = 0
    faults: str = ""
    mode: SimMode = "inprocess"
    max_rounds: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    time_scale: float = 1.0
    #: ``--policy`` values: ``FILE`` (every node) or ``NODE=FILE``
    policies: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise :class:`SimUsageError` for options that do not fit together."""
        if self.nodes is not None and self.nodes < 1:
            raise SimUsageError("--nodes must be at least 1")
        if self.data is not None and self.split is not None:
            raise SimUsageError("give either --data or --split, not both")
        if self.data is not None and not self.data.is_dir():
            raise SimUsageError(f"--data {self.data} is not a folder (expected node-1/, node-2/, ... in it)")
        if self.timeout <= 0:
            raise SimUsageError("--timeout must be positive")
        if not 0 < self.time_scale <= 1000:
            raise SimUsageError("--time-scale must lie in (0, 1000]")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise SimUsageError("--max-rounds must be at least 1")
        if self.mode == "processes" and self.max_rounds is not None:
            raise SimUsageError(
                "--max-rounds cannot reach node processes: each runs the file unchanged, as on a node. "
                "Set max_rounds in the file's flame.run(...)"
            )


@dataclass
class ProcessRecord:
    """One OS process of one node (one pod incarnation) in process mode."""

    node: str
    incarnation: int
    pid: int
    port: int
    deployment: str
    started: float
    exit_code: int | None = None
    ended: float | None = None
    #: stopped by flame sim (a pod restart, or the end of the run), not by itself
    killed: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def to_json(self) -> dict[str, Any]:
        return {
            "incarnation": self.incarnation,
            "pid": self.pid,
            "port": self.port,
            "deployment": self.deployment,
            "exit_code": self.exit_code,
            "killed": self.killed,
            "seconds": None if self.ended is None else round(self.ended - self.started, 3),
            "tail": list(self.tail),
        }


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
    stopped_reason: str | None = None
    #: ``--timeout`` ran out (the federation was stopped, or the run abandoned, at its deadline)
    timed_out: bool = False

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
            "analysis": str(self.loaded.path.resolve()),
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
            "result": self.run.result,
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
        result: dict[str, Any] = _jsonable(report)
        return result


def decode_final(data: bytes, output_type: str, *, limit: int | None = None) -> str:
    """A final-result file as text: ``str`` and ``bytes`` decoded, ``codec`` decoded and shown, never unpickled."""
    if output_type == "pickle" or codec.is_pickle(data):
        text = f"<pickled result, {len(data)} bytes; not unpickled>"
    elif output_type == "codec":
        try:
            text = repr(codec.decode(data))
        except FlameError as exc:
            text = f"<codec result, {len(data)} bytes; does not decode: {exc}>"
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = f"<{len(data)} bytes: {data[:32].hex()}...>"
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text


def _settings(config: SimConfig) -> StackSettings:
    """The platform's timing scaled by ``--time-scale``; its timeouts stay at least ``MIN_TIMEOUT``.

    Delays and periods shrink with the scale; a timeout shrunk below what a loaded machine needs would
    turn slow answers into drops and failed health checks the real platform would not see.
    """
    scale = config.time_scale
    base = StackSettings()
    settings = dataclasses.replace(
        base,
        time_scale=scale,
        delivery_timeout=max(base.delivery_timeout, MIN_TIMEOUT / scale),
        po_healthz_timeout=max(base.po_healthz_timeout, MIN_TIMEOUT / scale),
    )
    if config.mode == "processes":
        settings = dataclasses.replace(
            settings,
            po_period=max(settings.po_period, PROCESS_PO_PERIOD / scale),
            po_healthz_timeout=max(settings.po_healthz_timeout, PROCESS_PO_HEALTHZ_TIMEOUT / scale),
        )
    return settings


def _node_kwargs(config: SimConfig) -> dict[str, Any]:
    """Runtime settings of in-process/served nodes: message resends follow ``--time-scale`` too."""
    if config.time_scale >= 1.0:
        return {}
    return {"timeouts": Timeouts(attempt=max(0.25, DEFAULT_ATTEMPT_TIMEOUT * config.time_scale))}


async def stop_tasks(
    tasks: set[asyncio.Task[Any]], grace: float, *, every: float = 1.0
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait, at most ``grace`` seconds, until they ended; returns those left running.

    The cancellation is repeated every ``every`` seconds: before Python 3.12 ``asyncio.wait_for`` swallows
    a cancellation that arrives as what it waits for completes, so one request can get lost. A task
    that is cleaning up after the first one (a node leaving its services) gets ``every`` seconds first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(every, remaining))
    return pending


async def within(coro: Coroutine[Any, Any, T], seconds: float, default: T) -> T:
    """``await coro``, but at most ``seconds``; ``default`` (the coroutine cancelled) when it takes longer."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    finally:
        if not task.done():
            await stop_tasks({task}, CANCEL_GRACE)
    if task in done:
        return task.result()
    return default


def _remaining(deadline: float) -> float:
    return max(deadline - asyncio.get_running_loop().time(), 0.0)


class _Watchdog:
    """Waits until the federation cannot succeed any more; woken by pod-orchestrator events."""

    def __init__(self, stack: FlameStack, options: FederationOptions) -> None:
        self.stack = stack
        self.options = options
        self.wake = asyncio.Event()
        self.extra_failed: set[str] = set()

    def failed(self) -> set[str]:
        po = {name for name, record in self.stack.po.records.items() if record.status == "failed"}
        return po | self.extra_failed

    async def run(self) -> str:
        seen = 0
        while True:
            reason = cannot_finish(self.stack, self.options, self.failed())
            if reason is not None:
                return reason
            self.wake.clear()
            events = asyncio.ensure_future(self.stack.events.wait_for("po", seen + 1, timeout=3600.0))
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait({events, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await stop_tasks({events, woken}, CANCEL_GRACE)
            if events.done() and not events.cancelled() and events.exception() is None:
                seen = len(events.result())


@dataclass(frozen=True)
class _About:
    """What a run is: its options, the analysis, the fault plan, when it started."""

    config: SimConfig
    loaded: LoadedAnalysis
    faults: FaultPlan
    started_at: str


@dataclass
class _Progress:
    """What a run has set up so far: enough to stop it and report on it if it must be abandoned."""

    stack: FlameStack | None = None
    federation: Federation | None = None
    processes: ProcessFederation | None = None
    started: float = field(default_factory=time.monotonic)


def _timeout_reason(config: SimConfig) -> str:
    return f"the federation did not finish within {config.timeout:g} s (--timeout)"


def _federation_rounds(federation: Federation) -> list[dict[str, Any]]:
    """Every aggregator incarnation's rounds, a redone round replacing the earlier entry (an incarnation
    stopped before its first round has no ``rounds`` yet)."""
    by_round = {
        entry["round"]: entry for agg in federation.aggregators for entry in getattr(agg, "rounds", [])
    }
    return [by_round[number] for number in sorted(by_round)]


def _mark_stopped(outcomes: dict[str, NodeOutcome], reason: str) -> None:
    for outcome in outcomes.values():
        if outcome.status not in FINAL_STATUSES:
            outcome.error = outcome.error or f"stopped by flame sim: {reason}"


async def _run_federation(
    stack: FlameStack,
    loaded: LoadedAnalysis,
    options: FederationOptions,
    config: SimConfig,
    progress: _Progress | None = None,
    deadline: float | None = None,
) -> tuple[FederationRun, str | None]:
    """In-process or served mode; returns the run and why it was stopped early (None: it ended).

    A stopped run's nodes (every task the federation started) are cancelled and waited for at most
    :data:`SHUTDOWN_GRACE` seconds.
    """
    loop = asyncio.get_running_loop()
    if deadline is None:
        deadline = loop.time() + config.timeout
    mode: Literal["inprocess", "served"] = "served" if config.mode == "served" else "inprocess"
    if mode == "served":
        await stack.serve()
    before = asyncio.all_tasks()
    federation = Federation(
        stack, loaded.analyzer, loaded.aggregator, options, mode=mode, node_kwargs=_node_kwargs(config)
    )
    if progress is not None:
        progress.federation = federation
    watchdog = _Watchdog(stack, options)
    started = time.monotonic()
    run_task = asyncio.ensure_future(federation.run(None))
    watch_task = asyncio.ensure_future(watchdog.run())
    reason: str | None = None
    try:
        done, _ = await asyncio.wait(
            {run_task, watch_task}, timeout=_remaining(deadline), return_when=asyncio.FIRST_COMPLETED
        )
        if run_task in done:
            return run_task.result(), None
        reason = watch_task.result() if watch_task in done else _timeout_reason(config)
    finally:
        await stop_tasks({run_task, watch_task}, CANCEL_GRACE)
        ended = run_task.done() and not run_task.cancelled() and run_task.exception() is None
        if not ended:
            # the nodes: every task started since the federation began (runtimes, their analyses,
            # restarted incarnations); a node leaving its services gets a moment before a second cancel
            current = asyncio.current_task()
            started_tasks = {task for task in asyncio.all_tasks() - before if task is not current}
            await stop_tasks(started_tasks, SHUTDOWN_GRACE)
    _mark_stopped(federation.outcomes, reason)
    return (
        FederationRun(
            outcomes=federation.outcomes,
            final_results=await within(stack.final_results(), CANCEL_GRACE, {}),
            seconds=time.monotonic() - started,
            rounds=_federation_rounds(federation),
            events=dict(sorted(Counter(e.kind for e in stack.events).items())),
        ),
        reason,
    )


class ProcessFederation:
    """Process mode: every node is ``python ANALYSIS.py`` in an OS process, against the served stack."""

    def __init__(self, stack: FlameStack, path: Path, *, python: str = sys.executable) -> None:
        self.stack = stack
        self.path = path.resolve()
        self.python = python
        self.records: dict[str, list[ProcessRecord]] = {name: [] for name in stack.nodes}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self.exited = asyncio.Event()
        self.stopping = False
        #: redacts each node's own secrets (and any JWT or Bearer value) from what its process prints
        self.redactor = RedactTokensFilter()
        stack.on_restart(self._restarted)
        # the orchestrator stopped a failed node's pod: its process goes, no new one starts
        stack.on_stop(lambda node, reason: self._kill(node.name))

    def environment(self, env: dict[str, str], port: int) -> dict[str, str]:
        """A node process' environment: the container's variables, the API port, and what an image has."""
        base = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        base.update({"LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"})
        return {**base, **env, "FLAME_ANALYSIS_PORT": str(port), "FLAME_ANALYSIS_HOST": "127.0.0.1"}

    async def start(self) -> None:
        await self.stack.serve()
        for name in self.stack.nodes:
            # under the node's incarnation lock: a restart timed before the launch only changes the env
            async with self.stack.incarnation_lock(name):
                if not self.records[name]:
                    await self._spawn(name, self.stack.env(name))

    async def _spawn(self, name: str, env: dict[str, str]) -> None:
        for variable in SECRET_VARIABLES:
            value = env.get(variable, "")
            if len(value) >= MIN_SECRET_LENGTH and value != NO_DATA_ACCESS:
                self.redactor.register_secret(value)
        port = free_port()
        self.stack.attach_analysis(name, f"http://127.0.0.1:{port}")
        incarnation = self.stack.po.incarnation_started(name)
        process = await asyncio.create_subprocess_exec(
            self.python,
            str(self.path),
            cwd=str(self.path.parent),
            env=self.environment(env, port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        record = ProcessRecord(
            node=name,
            incarnation=incarnation,
            pid=process.pid,
            port=port,
            deployment=env["DEPLOYMENT_NAME"],
            started=time.monotonic(),
        )
        self.records[name].append(record)
        self._processes[name] = process
        self._tasks[name] = asyncio.ensure_future(self._watch(process, record))
        self._changed.set()

    async def _watch(self, process: asyncio.subprocess.Process, record: ProcessRecord) -> None:
        """Keep the process' output, line by line, redacted: where node output enters the run.

        Everything that shows or stores it (error messages, the display, the report) reads
        ``record.tail``, so a token the analysis prints or logs never gets further than here.
        """
        assert process.stdout is not None
        pending = b""
        while chunk := await process.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            record.tail.extend(self._line(line) for line in lines)
        if pending:
            record.tail.append(self._line(pending))
        record.exit_code = await process.wait()
        record.ended = time.monotonic()
        error = None
        if record.exit_code != 0:
            tail = "\n    ".join(list(record.tail)[-8:])
            error = f"process exited with code {record.exit_code}; its last output:\n    {tail}"
        # the orchestrator marks the node failed now when it died by itself (at start-up or later)
        self.stack.po.incarnation_ended(record.node, record.incarnation, error=error, stopped=record.killed)
        self.exited.set()

    def _line(self, raw: bytes) -> str:
        return self.redactor.redact(raw.decode("utf-8", "replace").rstrip())

    async def _restarted(self, node: SimNode, env: dict[str, str]) -> None:
        """The pod was restarted: its process goes, a new one starts with the new environment.

        Runs under the node's incarnation lock; a node not spawned yet is spawned by :meth:`start`.
        """
        if not self.records[node.name]:
            return
        await self._kill(node.name)
        watcher = self._tasks.get(node.name)
        if watcher is not None:  # its exit is recorded before the next incarnation starts
            await asyncio.wait([watcher], timeout=KILL_GRACE)
        if not self.stopping:
            await self._spawn(node.name, env)

    async def _kill(self, name: str) -> None:
        """SIGTERM, SIGKILL after :data:`KILL_GRACE` seconds; returns within ``KILL_GRACE + CANCEL_GRACE``."""
        process = self._processes.get(name)
        if process is None or process.returncode is not None:
            return
        self.records[name][-1].killed = True
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        if await within(process.wait(), KILL_GRACE, None) is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await within(process.wait(), CANCEL_GRACE, None)

    def kill_all(self) -> None:
        """SIGKILL every node process still running, at once (a run being abandoned)."""
        self.stopping = True
        for name, process in self._processes.items():
            if process.returncode is None:
                self.records[name][-1].killed = True
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    async def wait(self) -> None:
        """Until every node's current process has exited (restarted nodes included)."""
        while True:
            self._changed.clear()
            # asyncio.wait, not gather: cancelling this wait must not cancel the watchers (they record
            # each process' exit code and output while stop() ends the processes)
            await asyncio.wait(list(self._tasks.values()))
            if not self._changed.is_set() and all(t.done() for t in self._tasks.values()):
                return

    def failed(self) -> set[str]:
        """Nodes whose current process ended by itself with a non-zero exit code."""
        return {
            name
            for name, records in self.records.items()
            if records and records[-1].exit_code not in (None, 0) and not records[-1].killed
        }

    async def stop(self) -> None:
        """Stop every process still running (the end of the run) and wait for their output.

        Bounded: ``KILL_GRACE`` for the processes to exit, then ``CANCEL_GRACE`` for their output (a
        process' own child may hold its output pipe open after it died).
        """
        self.stopping = True
        await asyncio.gather(*(self._kill(name) for name in list(self._processes)))
        watchers = {task for task in self._tasks.values() if not task.done()}
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=CANCEL_GRACE)
            await stop_tasks(pending, CANCEL_GRACE)

    def outcomes(self, stopped: str | None = None) -> dict[str, NodeOutcome]:
        """Each node's end: the status it last reported to the pod orchestrator, and its exit code.

        ``stopped``: why flame sim stopped the nodes still running, if it did.
        """
        outcomes: dict[str, NodeOutcome] = {}
        for name, node in self.stack.nodes.items():
            record = self.stack.po.records[name]
            outcome = NodeOutcome(name, node.role, status=record.status, incarnations=len(self.records[name]))
            last = self.records[name][-1] if self.records[name] else None
            if last is not None and last.exit_code not in (None, 0) and not last.killed:
                tail = "\n    ".join(list(last.tail)[-8:])
                outcome.error = f"process exited with code {last.exit_code}; its last output:\n    {tail}"
                if outcome.status not in FINAL_STATUSES:
                    outcome.status = "failed"
            elif record.status != "executed":
                outcome.error = (
                    f"stopped by flame sim: {stopped}"
                    if stopped is not None and record.status not in FINAL_STATUSES
                    else f"ended with status {record.status!r}"
                )
                if record.logs:
                    outcome.error += f"; last log: {record.logs[-1].get('log')}"
            outcomes[name] = outcome
        return outcomes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rounds_from_logs(stack: FlameStack) -> list[dict[str, Any]]:
    """Per-round figures from the aggregator's log lines (process mode, where its object is elsewhere).

    A round lasts from its ``round N: waiting for parameters`` line to the next round's (or the final
    result's) line, timed by when the pod orchestrator received them.
    """
    aggregator = next(name for name, node in stack.nodes.items() if node.role == "aggregator")
    waiting = re.compile(r"^round (\d+): waiting for parameters")
    aggregating = re.compile(r"^round (\d+): aggregating (\d+) update")
    received = stack.events.select("po.log", node=aggregator)
    rounds: dict[int, dict[str, Any]] = {}
    starts: dict[int, float] = {}
    marks: list[float] = []
    for entry, event in zip(stack.po.records[aggregator].logs, received, strict=False):
        for line in str(entry.get("log", "")).splitlines():
            if match := waiting.match(line):
                starts[int(match.group(1))] = event.t
                marks.append(event.t)
            elif match := aggregating.match(line):
                number = int(match.group(1))
                rounds[number] = {"round": number, "updates": int(match.group(2))}
            elif line.startswith("final result submitted"):
                marks.append(event.t)
    for number, entry in rounds.items():
        start = starts.get(number)
        end = next((t for t in marks if start is not None and t > start), None)
        if start is not None and end is not None:
            entry["seconds"] = end - start
    return [rounds[key] for key in sorted(rounds)]


async def _run_processes(
    stack: FlameStack,
    loaded: LoadedAnalysis,
    options: FederationOptions,
    config: SimConfig,
    progress: _Progress | None = None,
    deadline: float | None = None,
) -> tuple[FederationRun, str | None, dict[str, list[ProcessRecord]]]:
    loop = asyncio.get_running_loop()
    if deadline is None:
        deadline = loop.time() + config.timeout
    processes = ProcessFederation(stack, loaded.path)
    if progress is not None:
        progress.processes = processes
    watchdog = _Watchdog(stack, options)
    started = time.monotonic()

    async def exits() -> None:
        while True:
            await processes.exited.wait()
            processes.exited.clear()
            watchdog.extra_failed = processes.failed()
            watchdog.wake.set()

    exit_task = asyncio.ensure_future(exits())
    reason: str | None = None
    try:
        await processes.start()
        wait_task = asyncio.ensure_future(processes.wait())
        watch_task = asyncio.ensure_future(watchdog.run())
        try:
            done, _ = await asyncio.wait(
                {wait_task, watch_task}, timeout=_remaining(deadline), return_when=asyncio.FIRST_COMPLETED
            )
            if wait_task not in done:
                reason = watch_task.result() if watch_task in done else _timeout_reason(config)
        finally:
            await stop_tasks({wait_task, watch_task}, CANCEL_GRACE)
    finally:
        await processes.stop()
        await stop_tasks({exit_task}, CANCEL_GRACE)
    outcomes = processes.outcomes(reason)
    run = FederationRun(
        outcomes=outcomes,
        final_results=await within(stack.final_results(), CANCEL_GRACE, {}),
        seconds=time.monotonic() - started,
        rounds=rounds_from_logs(stack),
        events=dict(sorted(Counter(e.kind for e in stack.events).items())),
    )
    return run, reason, processes.records


def _stack_info(stack: FlameStack) -> dict[str, Any]:
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


def _notable(stack: FlameStack, limit: int = 1000) -> list[dict[str, Any]]:
    """The stack's notable events for the report, their texts redacted (a reason can quote an error)."""
    events = [e for e in stack.events.to_list() if e["kind"] in _NOTABLE_EVENTS][:limit]
    return [{k: redact(v) if isinstance(v, str) else v for k, v in e.items()} for e in events]


async def run_simulation(
    config: SimConfig,
    loaded: LoadedAnalysis | None = None,
    *,
    console: Console | None = None,
    live: bool = False,
) -> SimOutcome:
    """Run ``config`` on a fresh emulated stack; shows progress on ``console`` when one is given.

    ``config.timeout`` bounds the whole run, set-up included: at the deadline the federation is stopped
    (status ``timeout``); stopping its nodes and closing the stack get :data:`SHUTDOWN_GRACE` seconds
    more, and a run still not ended then is abandoned (its tasks cancelled, its processes killed) and
    reported as it stands. So this returns within ``timeout + SHUTDOWN_GRACE + 2 * CANCEL_GRACE``.
    Raises :class:`~flame.errors.ConfigurationError` for a fault plan naming a node the run does not
    have, before anything starts.
    """
    config.check()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    clock = time.monotonic()
    if loaded is None:
        loaded = load_analysis(config.analysis)
    options = loaded.options
    if config.max_rounds is not None:
        options = options.with_changes(max_rounds=config.max_rounds)
    loaded = dataclasses.replace(loaded, options=options)
    timings = {"load": time.monotonic() - clock}
    faults = parse_faults(config.faults, seed=config.seed) if config.faults else FaultPlan(seed=config.seed)
    progress = _Progress()
    tmp: str | None = None
    body: asyncio.Task[SimOutcome] | None = None
    try:
        clock = time.monotonic()
        data_root = config.data
        nodes = config.nodes
        if data_root is not None and nodes is None:
            nodes = count_node_folders(data_root) or 3
        nodes = nodes or 3
        if config.split is not None:
            tmp = tempfile.mkdtemp(prefix="flame-sim-data-")
            data_root = Path(tmp)
            sizes = split_into(data_root, config.split, nodes, config.seed)
            if console is not None:
                console.print(
                    f"split {config.split} across {nodes} nodes: {', '.join(map(str, sizes))}",
                    highlight=False,
                )
        stack = FlameStack.create(
            nodes, data_root=data_root, seed=config.seed, faults=faults, settings=_settings(config)
        )
        try:
            faults.validate(stack.nodes)
            stack.disclosure_policies.update(policy_files(config.policies, stack.nodes))
        except (FaultSpecError, ConfigurationError):
            await within(stack.aclose(), CANCEL_GRACE, None)
            raise
        progress.stack = stack
        timings["setup"] = time.monotonic() - clock
        about = _About(config, loaded, faults, started_at)
        body = asyncio.ensure_future(_simulate(stack, progress, deadline, timings, about, console, live))
        done, _ = await asyncio.wait({body}, timeout=_remaining(deadline) + SHUTDOWN_GRACE)
        if body in done:
            return body.result()
        # the run did not end after its deadline and the grace to stop: abandon it as it stands
        await stop_tasks({body}, CANCEL_GRACE)
        if progress.processes is not None:
            progress.processes.kill_all()
        await within(stack.aclose(), CANCEL_GRACE, None)
        timings["run"] = time.monotonic() - clock - timings["setup"]
        timings["total"] = sum(timings.values())
        return _abandoned(progress, stack, timings, about)
    finally:
        if body is not None and not body.done():  # this run itself was cancelled (Ctrl-C)
            await stop_tasks({body}, CANCEL_GRACE)
            if progress.processes is not None:
                progress.processes.kill_all()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


async def _simulate(
    stack: FlameStack,
    progress: _Progress,
    deadline: float,
    timings: dict[str, float],
    about: _About,
    console: Console | None,
    live: bool,
) -> SimOutcome:
    """The run of :func:`run_simulation` on ``stack``, which it closes (bounded) at the end."""
    config, loaded = about.config, about.loaded
    clock = time.monotonic()
    records: dict[str, list[ProcessRecord]] = {}
    options = loaded.options
    try:
        await stack.start()
        async with _display(stack, console, live, loaded, config, options) as printer:
            if config.mode == "processes":
                run, reason, records = await _run_processes(
                    stack, loaded, options, config, progress, deadline
                )
            else:
                run, reason = await _run_federation(stack, loaded, options, config, progress, deadline)
            if printer is not None:
                printer.flush()
        info = _stack_info(stack)
        notable = _notable(stack)
    finally:
        await within(stack.aclose(), SHUTDOWN_GRACE, None)
    timings["run"] = time.monotonic() - clock
    timings["total"] = sum(timings.values())
    return SimOutcome(
        config=config,
        loaded=loaded,
        run=run,
        stack_info=info,
        errors=_errors(run, reason),
        timings=timings,
        faults=about.faults,
        started_at=about.started_at,
        processes=records,
        notable_events=notable,
        stopped_reason=reason,
        timed_out=reason == _timeout_reason(config),
    )


def _errors(run: FederationRun, reason: str | None) -> list[str]:
    """The run's errors, redacted: an exception's message can quote a token (in-process mode too)."""
    errors: list[str] = []
    if reason is not None:
        errors.append(f"stopped: {reason}")
    for outcome in run.outcomes.values():
        if outcome.error:
            outcome.error = redact(outcome.error)
            errors.append(f"{outcome.name} ({outcome.role}, {outcome.status}): {outcome.error}")
    if not run.final_results and not errors:
        errors.append("no final result reached the hub")
    return errors


def _abandoned(
    progress: _Progress,
    stack: FlameStack,
    timings: dict[str, float],
    about: _About,
) -> SimOutcome:
    """The outcome of a run that did not end by its deadline and was abandoned: what is known of it."""
    config = about.config
    reason = f"the run did not end within {config.timeout:g} s (--timeout) and was abandoned"
    rounds: list[dict[str, Any]] = []
    if progress.processes is not None:
        outcomes = progress.processes.outcomes(reason)
        rounds = rounds_from_logs(stack)
    elif progress.federation is not None:
        outcomes = progress.federation.outcomes
        rounds = _federation_rounds(progress.federation)
    else:
        outcomes = {name: NodeOutcome(name, node.role) for name, node in stack.nodes.items()}
    _mark_stopped(outcomes, reason)
    run = FederationRun(
        outcomes=outcomes,
        final_results={},
        seconds=time.monotonic() - progress.started,
        rounds=rounds,
        events=dict(sorted(Counter(e.kind for e in stack.events).items())),
    )
    return SimOutcome(
        config=config,
        loaded=about.loaded,
        run=run,
        stack_info=_stack_info(stack),
        errors=_errors(run, reason),
        timings=timings,
        faults=about.faults,
        started_at=about.started_at,
        processes=progress.processes.records if progress.processes is not None else {},
        notable_events=_notable(stack),
        stopped_reason=reason,
        timed_out=True,
    )


@contextlib.asynccontextmanager
async def _display(
    stack: FlameStack,
    console: Console | None,
    live: bool,
    loaded: LoadedAnalysis,
    config: SimConfig,
    options: FederationOptions,
) -> AsyncIterator[LinePrinter | None]:
    if console is None:
        yield None
        return
    analysis_nodes = sum(node.role == "default" for node in stack.nodes.values())
    mode = {"inprocess": "in-process", "served": "served on loopback", "processes": "one process per node"}
    title = f"flame sim {loaded.path.name}: {analysis_nodes} nodes + aggregator, {mode[config.mode]}"
    if live:
        with LiveDisplay(stack, console, title=title, max_rounds=options.max_rounds):
            yield None
        return
    console.print(title, style="bold", highlight=False)
    printer = LinePrinter(stack, console)
    task = asyncio.ensure_future(printer.run())
    try:
        yield printer
    finally:
        printer.stop()
        _, pending = await asyncio.wait({task}, timeout=CANCEL_GRACE)
        await stop_tasks(pending, CANCEL_GRACE)


def simulate(
    analysis: Path | str,
    *,
    nodes: int | None = None,
    data: Path | str | None = None,
    split: Path | str | None = None,
    seed: int = 0,
    faults: str = "",
    mode: SimMode = "inprocess",
    max_rounds: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    time_scale: float = 1.0,
) -> FederationRun:
    """Run an analysis file on a local federation, as ``flame sim`` does, and return the run.

    ``run.ok`` tells whether every node executed and a final result reached the hub; ``run.result`` is
    the aggregator's final result (None in process mode). Raises :class:`AnalysisFileError` for a file
    that cannot be loaded. For a project's tests::

        run = simulate("analysis.py", data="data")
        assert run.ok, run.report()
    """
    config = SimConfig(
        analysis=Path(analysis),
        nodes=nodes,
        data=None if data is None else Path(data),
        split=None if split is None else Path(split),
        seed=seed,
        faults=faults,
        mode=mode,
        max_rounds=max_rounds,
        timeout=timeout,
        time_scale=time_scale,
    )
    return run_async(run_simulation(config)).run


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` without waiting for the author's code, or anything else, without bound at the end.

    Author code runs in worker threads that cannot be interrupted; when a run was stopped (``--timeout``,
    a failed federation) one may still be busy. ``asyncio.run`` would wait for it without bound; here the
    threads are left to finish on their own (:func:`busy_threads` tells whether any is). Tasks still
    running when ``coro`` returned are cancelled and get :data:`CANCEL_GRACE` seconds to end; one that
    does not is left behind with a warning rather than waited for.
    """
    loop = asyncio.new_event_loop()
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix=WORKER_PREFIX)
    loop.set_default_executor(executor)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            if tasks:
                left = loop.run_until_complete(stop_tasks(tasks, CANCEL_GRACE, every=0.25))
                if left:
                    _log.warning("%d task(s) did not end when cancelled and were left behind", len(left))
            loop.run_until_complete(within(loop.shutdown_asyncgens(), CANCEL_GRACE, None))
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            asyncio.set_event_loop(None)
            loop.close()


def busy_threads() -> list[str]:
    """Worker threads of :func:`run_async` still running author code."""
    return [t.name for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX) and t.is_alive()]


# -- the command line -----------------------------------------------------------------------------------


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


def sim_command(args: Any) -> int:
    """``flame sim``: the handler of the parsed command line (see :func:`add_sim_arguments`)."""
    console = Console()
    mode: SimMode = "processes" if args.processes else ("served" if args.served else "inprocess")
    config = SimConfig(
        analysis=args.analysis,
        nodes=args.nodes,
        data=args.data,
        split=args.split,
        seed=args.seed,
        faults=args.faults or "",
        mode=mode,
        max_rounds=args.max_rounds,
        timeout=args.timeout,
        time_scale=args.time_scale,
        policies=tuple(getattr(args, "policy", None) or ()),
    )
    try:
        config.check()
        if config.faults:
            parse_faults(config.faults, seed=config.seed)
    except (SimUsageError, FaultSpecError) as exc:
        return _usage_error(console, exc)
    loaded = load_analysis(config.analysis)
    live = not args.no_live and console.is_terminal
    try:
        outcome = run_async(run_simulation(config, loaded, console=console, live=live))
    except (FaultSpecError, ConfigurationError) as exc:  # a node name the run does not have, a bad
        return _usage_error(console, exc)  # --policy file: known once the nodes are
    print_summary(outcome, console)
    report_path = args.report if args.report is not None else default_report_path()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(outcome.report(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    console.print(f"report: {report_path}", highlight=False, markup=False)
    busy = busy_threads()
    if busy:
        console.print(
            f"note: the analysis code is still running in {len(busy)} thread(s) and cannot be interrupted; "
            "the process ends when it returns (Ctrl-C ends it now)",
            style="yellow",
            highlight=False,
            markup=False,
        )
    return outcome.exit_code


def _usage_error(console: Console, exc: FlameError) -> int:
    console.print(f"flame sim: {exc}", style="red", highlight=False, markup=False, soft_wrap=True)
    return EXIT_USAGE


def print_summary(outcome: SimOutcome, console: Console) -> None:
    """The final result, the per-round figures, and the errors of a finished run."""
    run = outcome.run
    options = outcome.loaded.options
    console.print()
    if run.result is not None:
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


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 2000 else text[:2000] + f"... ({len(text) - 2000} more characters)"


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON: non-finite floats become None, unknown objects their ``repr``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | deque):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return _jsonable(item())
    tolist = getattr(value, "tolist", None)  # NumPy arrays
    if callable(tolist):
        with contextlib.suppress(Exception):
            return _jsonable(tolist())
    return repr(value)


__all__ = [
    "AnalysisFileError",
    "LoadedAnalysis",
    "ProcessFederation",
    "SimConfig",
    "SimOutcome",
    "SimUsageError",
    "load_analysis",
    "run_simulation",
    "simulate",
]

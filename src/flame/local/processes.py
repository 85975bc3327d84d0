"""Process mode: every node is ``python ANALYSIS.py`` in an OS process of its own.

Each process gets the environment of a FLAME container (the five variables, ``FLAME_BASE_URL`` = the
node's sidecar on loopback, ``FLAME_ANALYSIS_PORT``/``_HOST`` for its REST API), so the run proves the
file works unchanged on a node. A pod restart (fault or pod orchestrator) kills the node's process and
starts a new one with the new environment. What a node process prints is redacted as it is read, before
anything shows or stores it: the node's own ``KEYCLOAK_TOKEN`` and ``DATA_SOURCE_TOKEN`` (every
incarnation's), and any JWT-shaped or ``Bearer`` value.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import socket
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flame.config import NO_DATA_ACCESS
from flame.federated import FederationOptions
from flame.local.config import (
    CANCEL_GRACE,
    KILL_GRACE,
    PASSED_THROUGH,
    SECRET_VARIABLES,
    TAIL_LINES,
    SimConfig,
    timeout_reason,
)
from flame.local.loading import LoadedAnalysis
from flame.local.waiting import Watchdog, remaining, stop_tasks, within
from flame.node.status import FINAL_STATUSES
from flame.redact import MIN_SECRET_LENGTH, RedactTokensFilter
from flame.sim.federation import FederationRun, NodeOutcome
from flame.sim.node import SimNode
from flame.sim.stack import FlameStack

if TYPE_CHECKING:
    from flame.local.execution import Progress


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
                    f"stopped by the local run: {stopped}"
                    if stopped is not None and record.status not in FINAL_STATUSES
                    else f"ended with status {record.status!r}"
                )
                if record.logs:
                    outcome.error += f"; last log: {record.logs[-1].get('log')}"
                error_line = _last_error(last)
                if error_line is not None:
                    message = error_line.partition(": ")[2] or error_line  # without time and logger
                    if message not in outcome.error:
                        outcome.error += f"; its last error: {message}"
            outcomes[name] = outcome
        return outcomes


def _last_error(record: ProcessRecord | None) -> str | None:
    """The last line of a node process' output that logged an error (already redacted), if any."""
    if record is None:
        return None
    return next((line for line in reversed(record.tail) if " ERROR " in line or "Error:" in line), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def warnings_from_logs(stack: FlameStack) -> list[str]:
    """The aggregator's run warnings (``warning: ...`` lines of type warn; process mode)."""
    aggregator = next(name for name, node in stack.nodes.items() if node.role == "aggregator")
    return [
        str(entry["log"])[len("warning: ") :]
        for entry in stack.po.records[aggregator].logs
        if entry.get("log_type") == "warn" and str(entry.get("log", "")).startswith("warning: ")
    ]


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


def round_traffic(stack: FlameStack) -> dict[int, int]:
    """Bytes each round moved: message bodies the broker sent and objects uploaded to node storage.

    Round ``N`` is the time after round ``N - 1`` ended up to the aggregator's next log line after its
    ``round N: waiting for parameters`` line (the next round's, or the final result's), as the pod
    orchestrator received them; the first round starts with the stack.
    """
    aggregator = next((name for name, node in stack.nodes.items() if node.role == "aggregator"), None)
    if aggregator is None:
        return {}
    waiting = re.compile(r"^round (\d+): waiting for parameters")
    starts: dict[int, float] = {}
    marks: list[float] = []
    received = stack.events.select("po.log", node=aggregator)
    for entry, event in zip(stack.po.records[aggregator].logs, received, strict=False):
        for line in str(entry.get("log", "")).splitlines():
            if match := waiting.match(line):
                starts[int(match.group(1))] = event.t
                marks.append(event.t)
            elif line.startswith("final result submitted"):
                marks.append(event.t)
    ends = {
        number: next((t for t in marks if t > start), math.inf) for number, start in sorted(starts.items())
    }
    sizes = [
        (event.t, int(event.detail.get("size") or 0))
        for event in stack.events
        if event.kind in ("broker.sent", "storage.upload")
    ]
    traffic: dict[int, int] = {}
    previous = -math.inf
    for number, end in ends.items():
        traffic[number] = sum(size for t, size in sizes if previous < t <= end)
        previous = end
    return traffic


async def run_processes(
    stack: FlameStack,
    loaded: LoadedAnalysis,
    options: FederationOptions,
    config: SimConfig,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> tuple[FederationRun, str | None, dict[str, list[ProcessRecord]]]:
    loop = asyncio.get_running_loop()
    if deadline is None:
        deadline = loop.time() + config.timeout
    assert loaded.path is not None, "process mode runs an analysis file"
    processes = ProcessFederation(stack, loaded.path)
    if progress is not None:
        progress.processes = processes
    watchdog = Watchdog(stack, options)
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
                {wait_task, watch_task}, timeout=remaining(deadline), return_when=asyncio.FIRST_COMPLETED
            )
            if wait_task not in done:
                reason = watch_task.result() if watch_task in done else timeout_reason(config)
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
        warnings=warnings_from_logs(stack),
    )
    return run, reason, processes.records


__all__ = [
    "ProcessFederation",
    "ProcessRecord",
    "free_port",
    "round_traffic",
    "rounds_from_logs",
    "run_processes",
]

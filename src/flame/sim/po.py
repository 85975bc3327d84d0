"""The emulated pod orchestrator: every node's state, in one place.

It receives each node's streamed logs, status and progress (``POST /po/stream_logs``), and on every
period it calls each running analysis' ``/healthz``, pushes ``/partner_status`` with the other nodes'
statuses, and pushes ``/token_refresh`` with a fresh token when the reported
``token_remaining_time`` falls under the threshold.

Health rule, as PrivateAIM's node-pod-orchestration (``status/status.py``) has it:

- One check calls ``/healthz`` and, while it gets no answer (connection error, 5xx, timeout), calls
  again every ``po_healthz_retry`` (1 s) until ``po_healthz_timeout`` (10 s) has passed since the
  check began. Only then does the check count as failed: a pod unreachable for less than that is
  not noticed at all.
- The deployment is ``started`` until a check (or the analysis' own status) says ``executing``.
- A node that answers ``stuck``, or a ``started`` node whose check failed, is restarted: the pod
  goes, a new deployment (``analysis-{id}-{n+1}``) starts with a new token. After ``po_max_restarts``
  (10) restarts of one node it is marked ``failed`` instead.
- An ``executing`` node whose check failed is marked ``failed`` and its pod stopped
  (:meth:`FlameStack.stop_node`): it is not restarted. One that answers ``failed`` is marked
  ``failed`` and left to end by itself (the real PO stops it at its next check, 10 s later).

One deviation: an answer ``starting`` or ``started`` counts as "still starting" (no action), where the
real PO would count it as failed; the emulator runs the PO's period a hundred times faster than the
platform, shorter than a Python runtime needs to start.

The orchestrator also keeps each node's *incarnations* (one per pod): the runners (in-process and
process mode) report :meth:`PodOrchestrator.incarnation_started` and
:meth:`~PodOrchestrator.incarnation_ended`, recorded as ``po.incarnation.start`` / ``.stop`` events.
An incarnation that ends with an error before its node finished marks the node ``failed`` at once,
with that error, so whoever waits on :meth:`~PodOrchestrator.wait_changed` sees it without waiting for
a timeout. At most one incarnation of a node runs at a time: :meth:`FlameStack.restart_node` holds the
node's incarnation lock while the runner stops the old one and starts the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import httpx

from flame.sim import asgi
from flame.sim.asgi import FastCall
from flame.waits import bounded

if TYPE_CHECKING:
    from fastapi import FastAPI

    from flame.sim.node import SimNode
    from flame.sim.stack import FlameStack

LogType = Literal["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"]
STATUSES = ("starting", "started", "executing", "executed", "stuck", "stopping", "stopped", "failed")
FINAL_STATUSES = ("executed", "failed", "stopped")


#: the fields of a log entry (``POST /po/stream_logs``), in order: see :func:`plain_entry`
LOG_FIELDS = ("log", "log_type", "analysis_id", "status", "progress")
LOG_TYPES = frozenset(get_args(LogType))


def plain_entry(value: Any) -> dict[str, Any] | None:
    """The log entry of a parsed body when it is plainly valid; None when only the route can tell.

    Plainly valid: strings where the entry has strings, a known ``log_type``, an ``int`` progress
    within 0..100. Anything else (a number written as a string, a missing field) is the route's to
    judge with its model, which accepts some of it and refuses the rest with its own answer.
    """
    if not isinstance(value, dict):
        return None
    entry = {name: value.get(name) for name in LOG_FIELDS}
    progress = entry["progress"]
    if (
        not all(isinstance(entry[name], str) for name in LOG_FIELDS[:4])
        or entry["log_type"] not in LOG_TYPES
        or type(progress) is not int
        or not 0 <= progress <= 100
    ):
        return None
    return entry


@dataclass
class NodeRecord:
    """What the PO knows of one node's analysis."""

    #: the last status the node reported, or the PO's verdict (``failed``)
    status: str = "starting"
    progress: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    token_refreshes: int = 0
    last_health: dict[str, Any] | None = None
    #: why the node failed (the PO's verdict, or the error its incarnation ended with)
    error: str | None = None
    #: whether the current deployment was seen ``executing`` (the real PO's database status)
    executing: bool = False
    #: number of the newest incarnation (0: none started yet), and whether it runs now
    incarnation: int = 0
    running: bool = False


class PodOrchestrator:
    """The PO of every node in the stack; :meth:`run` is its periodic loop."""

    def __init__(self, stack: FlameStack, max_restarts: int | None = None) -> None:
        self.stack = stack
        self.max_restarts = stack.settings.po_max_restarts if max_restarts is None else max_restarts
        self.records: dict[str, NodeRecord] = {name: NodeRecord() for name in stack.nodes}
        self._version = 0
        self._failed: set[str] = set()
        self._failures = 0
        self._failures_event = asyncio.Event()
        self._event = asyncio.Event()
        self._stopped = asyncio.Event()

    def record(self, name: str) -> NodeRecord:
        return self.records[name]

    def status(self, name: str) -> str:
        """The last status node ``name`` reported (``starting`` before any)."""
        return self.records[name].status

    def statuses(self) -> dict[str, str]:
        return {name: record.status for name, record in self.records.items()}

    def failed(self) -> dict[str, str]:
        """Nodes marked ``failed``, with the reason (the last log line if the node said no more)."""
        out: dict[str, str] = {}
        for name, record in self.records.items():
            if record.status == "failed":
                last = record.logs[-1].get("log") if record.logs else None
                out[name] = record.error or (
                    f"reported failed; last log: {last}" if last else "reported failed"
                )
        return out

    async def wait_for_status(self, name: str, statuses: tuple[str, ...], timeout: float) -> str:
        """Wait until node ``name`` reports one of ``statuses``; TimeoutError otherwise."""

        async def reached() -> None:
            while self.records[name].status not in statuses:
                await self._event.wait()

        await bounded(reached(), timeout)
        return self.records[name].status

    @property
    def version(self) -> int:
        """Counts every change of any record (for :meth:`wait_changed`)."""
        return self._version

    async def wait_changed(self, seen: int, timeout: float | None = None) -> int:
        """Wait until :attr:`version` differs from ``seen`` (bounded by ``timeout``); the new version."""

        async def changed() -> None:
            while self._version == seen:
                await self._event.wait()

        await bounded(changed(), timeout)
        return self._version

    @property
    def failures(self) -> int:
        """Counts the changes of the set of failed nodes (for :meth:`wait_failures_changed`)."""
        return self._failures

    async def wait_failures_changed(self, seen: int) -> int:
        """Wait until :attr:`failures` differs from ``seen``; the new count. A waiter here is not woken
        by every log line of every node, only when a node fails or stops being failed."""
        while self._failures == seen:
            await self._failures_event.wait()
        return self._failures

    def _bump(self, name: str) -> None:
        """Node ``name``'s record changed (every change of a record goes through here): wake every waiter."""
        failed = self.records[name].status == "failed"
        if failed != (name in self._failed):
            if failed:
                self._failed.add(name)
            else:
                self._failed.discard(name)
            self._failures += 1
            event, self._failures_event = self._failures_event, asyncio.Event()
            event.set()
        self._version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    # -- incarnations ---------------------------------------------------------------------------------

    def incarnation_started(self, name: str) -> int:
        """A new incarnation (pod) of node ``name`` starts; returns its number (1, 2, ...)."""
        record = self.records[name]
        if record.running:
            # the runners stop the old incarnation first: this would be a bug, and the tests look for it
            self.stack.events.record("po.incarnation.overlap", name, running=record.incarnation)
        record.incarnation += 1
        record.running = True
        record.error = None
        record.executing = False
        record.status = "starting"
        node = self.stack.node(name)
        self.stack.events.record(
            "po.incarnation.start", name, incarnation=record.incarnation, deployment=node.deployment_name
        )
        self._bump(name)
        return record.incarnation

    def incarnation_ended(
        self,
        name: str,
        incarnation: int,
        *,
        status: str | None = None,
        error: str | None = None,
        stopped: bool = False,
    ) -> None:
        """Incarnation ``incarnation`` of node ``name`` ended, with its last status and its error if any.

        ``stopped``: the platform ended it (a restart, the end of the run), so it says nothing about
        the node. Otherwise, when the node's newest incarnation ended with an error (or a status other
        than ``executed``), the node is marked ``failed`` with that error, now.
        """
        record = self.records[name]
        current = incarnation == record.incarnation
        self.stack.events.record(
            "po.incarnation.stop",
            name,
            incarnation=incarnation,
            status=status,
            error=error,
            stopped=stopped,
            current=current,
        )
        if not current:
            return
        record.running = False
        if not stopped and record.status not in FINAL_STATUSES:
            if status == "executed" and error is None:
                record.status = "executed"
            else:
                record.status = "failed"
                record.error = error or (
                    "the analysis ended without reporting executed"
                    if status is None
                    else f"the analysis ended with status {status!r}"
                )
                self.stack.events.record("po.failed", name, reason=record.error)
        elif not stopped and record.status == "failed" and error is not None and record.error is None:
            record.error = error
        self._bump(name)

    # -- logs -----------------------------------------------------------------------------------------

    async def receive_log(self, node: SimNode, entry: dict[str, Any]) -> None:
        """Take a validated log entry of ``node`` (the fields of :data:`LOG_FIELDS`)."""
        record = self.records[node.name]
        record.logs.append(entry)
        status, progress = entry["status"], entry["progress"]
        if status in STATUSES and record.status not in FINAL_STATUSES:
            record.status = status
        if status == "executing":
            record.executing = True
        if progress < record.progress:
            self.stack.events.record("po.progress_decreased", node.name, was=record.progress, now=progress)
        record.progress = max(record.progress, progress)
        self.stack.events.record(
            "po.log", node.name, log_type=entry["log_type"], status=status, progress=progress
        )
        self._bump(node.name)

    # -- the periodic checks --------------------------------------------------------------------------

    async def run(self) -> None:
        """The periodic loop: health, partner status and token refresh for every running node."""
        settings = self.stack.settings
        period = settings.scaled(settings.po_period)
        while not self._stopped.is_set():
            # the real PO checks on a fixed schedule (every 10 s): wait out the period, or the stop
            with contextlib.suppress(asyncio.TimeoutError):
                await bounded(self._stopped.wait(), period)
            if self._stopped.is_set():
                return
            await asyncio.gather(*(self.check(node) for node in list(self.stack.nodes.values())))

    def stop(self) -> None:
        """End :meth:`run` at once (its next wake-up)."""
        self._stopped.set()

    def _gone(self, node: SimNode, deployment: str) -> bool:
        """Whether the pod a check began on was replaced, stopped or finished since."""
        return (
            node.deployment_name != deployment
            or self.records[node.name].status in FINAL_STATUSES
            or self.stack.analysis_client(node.name) is None
        )

    async def _healthz(self, node: SimNode) -> tuple[dict[str, Any] | None, str]:
        """``/healthz`` of ``node``, retried until the health timeout: (answer, "") or (None, why not)."""
        settings = self.stack.settings
        client = self.stack.node_http(node.name)
        url = f"http://{node.host}/analysis/healthz"
        window = settings.scaled(settings.po_healthz_timeout)
        retry = settings.scaled(settings.po_healthz_retry)
        deployment = node.deployment_name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        attempts = 0
        while True:
            attempts += 1
            left = max(deadline - loop.time(), 0.001)
            try:
                # bounded as well: httpx timeouts do not apply to in-process (ASGI) requests
                answer = await bounded(client.get(url, timeout=left), left)
                answer.raise_for_status()
                health = answer.json()
                if isinstance(health, dict):
                    return health, ""
                why = "healthz answered no JSON object"
            except (httpx.HTTPError, ValueError, asyncio.TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if loop.time() + retry >= deadline or self._stopped.is_set() or self._gone(node, deployment):
                return None, f"no answer to /healthz for {window:g} s ({attempts} attempts; last: {why})"
            # the real PO asks again every second: a remote poll, ended early by the stop
            with contextlib.suppress(asyncio.TimeoutError):
                await bounded(self._stopped.wait(), retry)

    async def check(self, node: SimNode) -> None:
        """One round of the PO's checks for one node (see the module docstring for the rule)."""
        record = self.records[node.name]
        if record.status in FINAL_STATUSES or self.stack.analysis_client(node.name) is None:
            return
        deployment = node.deployment_name
        health, why = await self._healthz(node)
        if self._gone(node, deployment):
            return  # restarted, stopped or ended meanwhile: this check is about a pod that is gone
        reported = health.get("status") if health is not None else None
        if health is not None:
            record.last_health = health
        if reported == "executing":
            record.executing = True
        if reported == "stuck":
            await self._restart_or_fail(node, "reported stuck")
            return
        if health is None or reported in ("failed", "stopped"):
            reason = why or f"healthz reported {reported}"
            if not record.executing:
                await self._restart_or_fail(node, reason)
            elif health is None:
                await self._fail(node, reason)
            else:
                # the analysis says itself that it is over: it ends on its own (an aggregator that
                # failed still tells its partners); the real PO's 10 s period leaves it that time
                record.status = "failed"
                record.error = record.error or f"the analysis reported {reported}"
                self.stack.events.record("po.failed", node.name, reason=reason)
                self._bump(node.name)
            return
        assert health is not None
        partners = {
            n.node_id: self.records[n.name].status for n in self.stack.nodes.values() if n is not node
        }
        settings = self.stack.settings
        timeout = settings.scaled(settings.po_healthz_timeout)
        client = self.stack.node_http(node.name)
        base = f"http://{node.host}/analysis"
        with contextlib.suppress(httpx.HTTPError, asyncio.TimeoutError):
            await bounded(
                client.post(f"{base}/partner_status", json={"partner_status": partners}, timeout=timeout),
                timeout,
            )
        remaining = health.get("token_remaining_time")
        threshold = settings.scaled(settings.po_token_threshold)
        if isinstance(remaining, int | float) and remaining < max(threshold, 1.0):
            await self.refresh_token(node)

    async def refresh_token(self, node: SimNode) -> None:
        """Mint a new token for ``node`` and push it to its analysis."""
        token = node.issuer.mint(self.stack.analysis_id, self.stack.settings.token_lifetime)
        node.token = token
        self.records[node.name].token_refreshes += 1
        status: int | None = None
        try:
            answer = await self.stack.node_http(node.name).post(
                f"http://{node.host}/analysis/token_refresh", json={"token": token}
            )
            status = answer.status_code
        except httpx.HTTPError:
            status = None
        self.stack.events.record("po.token_refresh", node.name, status=status)

    async def _restart_or_fail(self, node: SimNode, reason: str) -> None:
        record = self.records[node.name]
        if record.restarts >= self.max_restarts:
            await self._fail(node, f"{reason}; not restarted again after {record.restarts} restart(s)")
            return
        record.restarts += 1
        self.stack.events.record("po.restart", node.name, reason=reason, restarts=record.restarts)
        await self.stack.restart_node(node.name, reason=reason)
        self._bump(node.name)

    async def _fail(self, node: SimNode, reason: str) -> None:
        """Mark ``node`` failed and stop its pod (its analysis API is no longer reachable)."""
        record = self.records[node.name]
        record.status = "failed"
        record.error = f"the pod orchestrator stopped the analysis: {reason}"
        self.stack.events.record("po.failed", node.name, reason=reason)
        self._bump(node.name)
        await self.stack.stop_node(node.name, record.error)

    def deployment_restarted(self, name: str) -> None:
        """A new deployment of node ``name`` starts (called by the stack's restart): ``started`` again."""
        record = self.records[name]
        record.executing = False
        record.status = "starting"
        record.error = None
        self._bump(name)


async def fast_stream_logs(call: FastCall) -> None:
    """``POST /stream_logs`` as plain ASGI (see :mod:`flame.sim.asgi`): a valid entry is taken here,
    anything else goes to the PO app."""
    node = call.node
    entry = plain_entry(await call.read_json()) if call.has_token() else None
    if entry is None or entry["analysis_id"] != node.analysis_id or call.claims() is None:
        await call.pass_on()
        return
    await call.stack.po.receive_log(node, entry)
    await asgi.send_json(call.send, {"status": "ok"})


def create_app(stack: FlameStack) -> FastAPI:
    """The PO's API as a FastAPI app (see :mod:`flame.sim.po_app`)."""
    from flame.sim.po_app import create_app

    return create_app(stack)

"""``FlameCoreSDK``: PrivateAIM's core SDK API (``flamesdk`` 0.6.0) on this SDK's node runtime.

Analyses written for PrivateAIM's SDK run unchanged: every method of PrivateAIM's SDK API keeps its name,
parameters, defaults and return shape. Underneath, each call is a coroutine of the node runtime
(:class:`~flame.node.runtime.AsyncNode`) submitted to its event-loop thread
(:class:`~flame.node.loop.LoopThread`), so the API works from scripts, worker threads and inside a
running event loop (Jupyter) alike. Differences in behaviour, all on purpose:

- Errors raise (:class:`~flame.errors.FlameError` and subclasses, ``ValueError`` for bad arguments)
  instead of being logged while the pod sleeps.
- No wait is unbounded. Where PrivateAIM's SDK waits forever (``timeout=None``), ours waits up to the
  runtime's named default (``Timeouts.await_messages``, 600 s; ``FLAME_COMPAT_AWAIT_TIMEOUT`` changes it)
  and then raises :class:`~flame.errors.FlameTimeoutError` naming what is missing. With an explicit
  ``timeout`` the PrivateAIM result is returned (None for senders that did not answer).
- ``send_message`` with ``timeout=None``: PrivateAIM's SDK sends ``max_attempts`` times and waits forever
  on the last attempt. Ours resends the same message (same id, de-duplicated by receivers) every
  ``attempt_timeout`` until every receiver acknowledged, for at most
  ``max(Timeouts.send, max_attempts * attempt_timeout)`` seconds. With a ``timeout`` it makes at most
  ``max_attempts`` attempts of ``timeout / max_attempts`` seconds, as PrivateAIM's SDK does.
- ``ready_check`` sends one message and resends it to the silent nodes after 0.25 s, doubling up to
  ``attempt_interval`` (a partner that subscribes a moment later is found at once, not 30 s later).
- Intermediate data is encoded with :mod:`flame.codec`, not pickle, unless the peer speaks pickle (see
  :mod:`flame.star.payload` and ``FLAME_COMPAT_PAYLOAD``).
- ``silent`` only stops printing; log lines still reach the pod orchestrator (at or above
  ``stream_log_level``).

Local federations (``StarModelTester``, :func:`flame.local.star_runs.run_star_script`) run several nodes in one
process: each node's analysis code runs in its own thread, in which the runner sets
:data:`_node_factory`; ``FlameCoreSDK()`` then takes that node's runtime instead of reading
``os.environ``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from io import StringIO
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

import httpx

from flame import codec, hooks
from flame.clients.po import LOG_TYPES
from flame.clients.storage import check_tag, parse_intermediate_id
from flame.config import NodeConfig
from flame.errors import (
    ConfigurationError,
    FlameError,
    FlameTimeoutError,
    ProtocolError,
)
from flame.federated.checkpoint import Sealer, node_sealer
from flame.hooks import ContextHook
from flame.node import envelope
from flame.node.inbox import Message
from flame.node.loop import CallScope, LoopThread
from flame.node.runtime import AsyncNode, Timeouts
from flame.node.status import FINAL_STATUSES, Status
from flame.star.fhir_csv import fhir_to_csv as _fhir_to_csv
from flame.star.payload import PayloadPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Environment variable: the bound (seconds) of waits that PrivateAIM's SDK leaves unbounded.
AWAIT_TIMEOUT_ENV = "FLAME_COMPAT_AWAIT_TIMEOUT"
#: Attempts and per-attempt wait of ``analysis_finished`` (as PrivateAIM's SDK).
FINISHED_ATTEMPTS = 5
FINISHED_ATTEMPT_TIMEOUT = 30.0
#: First resend of an unanswered ready check (seconds); the wait doubles up to ``attempt_interval``.
READY_CHECK_FIRST_RESEND = 0.25
#: Seconds given to acknowledgements still being sent when a node shuts down.
ACK_DRAIN_TIMEOUT = 5.0
#: Python logging levels of the PO's log types (``stream_log_level`` compares against them).
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": 25,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "alert": 45,
    "crit": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}
_CHECKPOINT_TAG = re.compile(r"checkpoint-(\d+)")
_CHECKPOINT_KIND = "compat-checkpoint"


# -- the runtime a FlameCoreSDK works on ------------------------------------------------------------------


@dataclass(eq=False)
class CompatRuntime:
    """What a :class:`FlameCoreSDK` works on: a started node runtime and the loop thread it lives on.

    ``owned``: the SDK created it (on a FLAME node) and stops it when done; a local runner keeps
    ownership otherwise. ``data`` replaces the data API (``{"fhir": ...}`` / ``{"s3": ...}``, handed out
    verbatim by ``get_fhir_data`` / ``get_s3_data``). ``payload``: the payload mode for this node
    (``FLAME_COMPAT_PAYLOAD`` otherwise). :meth:`abort` makes every pending and later call raise.
    """

    node: AsyncNode
    loop: LoopThread
    owned: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    payload: str | None = None
    label: str | None = None
    calls: CallScope = field(init=False)

    def __post_init__(self) -> None:
        self.calls = CallScope(self.loop)

    @property
    def aborted(self) -> str | None:
        """Why :meth:`abort` stopped this node's calls, or None."""
        return self.calls.aborted

    def abort(self, reason: str) -> None:
        """Cancel the calls in flight and refuse later ones, saying ``reason``."""
        self.calls.abort(reason)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        """Run ``coro`` on the runtime's loop and wait for it (bounded by ``timeout`` if given)."""
        return self.calls.run(coro, timeout, what)


#: The former name of :class:`CompatRuntime` (it is not the node runtime, :class:`AsyncNode` is).


#: ``factory(aggregator_requires_data, status_sync) -> CompatRuntime``; set by local runners per node thread.
NodeFactory = Callable[[bool, tuple[str, ...]], CompatRuntime]
_node_factory: ContextHook[NodeFactory] = ContextHook(
    "flame_star_node_factory", "the runtime of the node whose thread calls FlameCoreSDK() (local runners)"
)


def set_node_factory(factory: NodeFactory | None) -> contextvars.Token[NodeFactory | None]:
    """Make ``FlameCoreSDK()`` in this context take its runtime from ``factory`` (local runners)."""
    return _node_factory.set(factory)


def reset_node_factory(token: contextvars.Token[NodeFactory | None]) -> None:
    _node_factory.reset(token)


def _start_own_runtime(aggregator_requires_data: bool, status_sync: tuple[str, ...]) -> CompatRuntime:
    """The runtime of a FLAME node's analysis container: config from the environment, API on port 8000."""
    config = NodeConfig.from_env()
    timeouts = Timeouts()
    raw = os.environ.get(AWAIT_TIMEOUT_ENV)
    if raw:
        try:
            bound = float(raw)
        except ValueError:
            bound = -1.0
        if not bound > 0:
            raise ConfigurationError(
                AWAIT_TIMEOUT_ENV, f"{raw!r} is not a positive number", "seconds, e.g. 3600"
            )
        timeouts = Timeouts(await_messages=bound)
    loop = LoopThread("flame-compat")

    async def make() -> AsyncNode:
        return AsyncNode(
            config,
            timeouts=timeouts,
            status_sync=status_sync,
            requires_data=True if aggregator_requires_data else None,
        )

    try:
        node = loop.run(make(), 30.0, "creating the node runtime")
        loop.run(node.start(), timeouts.startup + 30.0, "the node's start-up")
    except BaseException:
        loop.stop()
        raise
    return CompatRuntime(node=node, loop=loop, owned=True)


class CompatConfig:
    """``FlameCoreSDK.config``: the node's identity and whether it has finished (read live)."""

    def __init__(self, runtime: CompatRuntime) -> None:
        self._runtime = runtime

    @property
    def node_id(self) -> str:
        return self._runtime.node.node_id

    @property
    def node_role(self) -> str:
        return self._runtime.node.role

    @property
    def role(self) -> str:
        return self._runtime.node.role

    @property
    def analysis_id(self) -> str:
        return self._runtime.node.config.analysis_id

    @property
    def project_id(self) -> str:
        return self._runtime.node.config.project_id

    @property
    def nginx_name(self) -> str:
        return f"nginx-{self._runtime.node.config.deployment_name}"

    @property
    def finished(self) -> bool:
        """True once this node ended (a final status) or a partner announced ``analysis_finished``."""
        node = self._runtime.node
        return node.status in FINAL_STATUSES or node.messenger.finished.is_set()

    def __repr__(self) -> str:
        return (
            f"CompatConfig(node_id={self.node_id!r}, node_role={self.node_role!r}, finished={self.finished})"
        )


class FlameCoreSDK:
    """PrivateAIM's ``FlameCoreSDK`` (same API), on this SDK's node runtime.

    The constructor connects to the node's services (sidecar health, broker identity and webhook
    subscription, participants, pod orchestrator, storage, and the data API on ``default`` nodes or with
    ``aggregator_requires_data``), serves the analysis REST API and sets the status ``executing``.
    """

    def __init__(
        self,
        aggregator_requires_data: bool = False,
        stream_log_level: int = 20,
        silent: bool = False,
        status_sync: tuple[str, ...] = ("executed", "stopped", "failed"),
    ) -> None:
        self.silent = silent
        self.stream_log_level = stream_log_level
        self._held = ""
        self._closed = False
        self._checkpoints: list[int] | None = None
        self._print_lock = threading.Lock()
        sync = tuple(status_sync)
        factory = _node_factory.get()
        if factory is not None:
            self._runtime = factory(aggregator_requires_data, sync)
        else:
            self._runtime = _start_own_runtime(aggregator_requires_data, sync)
        try:
            node = self._runtime.node
            self._data_override: dict[str, Any] = dict(self._runtime.data)
            self._payload = PayloadPolicy(self._runtime.payload)
            self.config = CompatConfig(self._runtime)
            self._label = self._runtime.label or f"{node.role} {node.node_id[:8]}"
            self._set_status("executing")
        except BaseException:
            self._close()
            raise
        if self._runtime.owned:
            hooks.watch_crashes()
            hooks.at_exit(self._at_exit)
        self.flame_log(f"FlameCoreSDK ready ({node.role} node {node.node_id})", log_type="info")

    def __repr__(self) -> str:
        return (
            f"FlameCoreSDK(node_id={self.get_id()!r}, role={self.get_role()!r}, status={self._node.status!r})"
        )

    # -- plumbing -------------------------------------------------------------------------------------

    @property
    def _node(self) -> AsyncNode:
        return self._runtime.node

    def _call(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        return self._runtime.call(coro, timeout, what)

    @property
    def _await_bound(self) -> float:
        """The bound of waits that PrivateAIM's SDK leaves unbounded."""
        return self._node.timeouts.await_messages

    def _set_status(self, status: Status) -> None:
        async def apply() -> None:
            if self._node.status not in FINAL_STATUSES or status in FINAL_STATUSES:
                self._node.set_status(status)

        self._call(apply(), f"setting the status {status}")

    def _warn(self, text: str) -> None:
        """A warning for the analyst: printed, streamed to the PO and logged locally (by the runtime)."""
        if self._closed or LOG_LEVELS["warn"] < self.stream_log_level:
            log.warning("%s", text)
        self.flame_log(text, log_type="warn")

    # -- general --------------------------------------------------------------------------------------

    def get_aggregator_id(self) -> str | None:
        """Id of the partner whose ``nodeType`` is ``aggregator`` (None on the aggregator)."""
        return self._node.aggregator_id

    def get_participants(self) -> list[dict[str, str]]:
        """The partners (self excluded) as ``{"nodeId", "nodeType"}``."""
        return [
            {"nodeId": p["nodeId"], "nodeType": p["nodeType"]}
            for p in self._node.participants
            if p["nodeId"] != self._node.node_id
        ]

    def get_participant_ids(self) -> list[str]:
        """Ids of the partners (self excluded), in the broker's order."""
        return list(self._node.partners)

    def get_analysis_id(self) -> str:
        return self._node.config.analysis_id

    def get_project_id(self) -> str:
        return self._node.config.project_id

    def get_id(self) -> str:
        """This node's id."""
        return self._node.node_id

    def get_role(self) -> str:
        """``'default'`` (analysis node) or ``'aggregator'``."""
        return self._node.role

    def get_node_index(self, node_id: str) -> int:
        """Position of ``node_id`` in the sorted list of all participant ids (self included)."""
        ids = sorted(p["nodeId"] for p in self._node.participants)
        if node_id not in ids:
            raise ValueError(f"{node_id!r} is not a participant of this analysis")
        return ids.index(node_id)

    def get_self_node_index(self) -> int:
        return self.get_node_index(self._node.node_id)

    def analysis_finished(self) -> bool:
        """Send ``analysis_finished`` to all partners (5 attempts of 30 s), then end this node (``executed``)."""

        async def finish() -> bool:
            await self._node.analysis_finished(
                attempts=FINISHED_ATTEMPTS, attempt_timeout=FINISHED_ATTEMPT_TIMEOUT
            )
            return True

        self._call(finish(), "announcing the end of the analysis")
        return self.config.finished

    def ready_check(
        self, nodes: list[str] | str = "all", attempt_interval: int = 30, timeout: int | None = None
    ) -> dict[str, bool]:
        """Send ``ready_check`` messages until every node acknowledged or the timeout ended.

        ``timeout=None`` is bounded by the runtime's await default. The caller's list is not modified.
        """
        targets = self.get_participant_ids() if nodes == "all" else list(nodes)
        if not targets:
            return {}
        if not attempt_interval > 0:
            raise ValueError(f"attempt_interval must be > 0, got {attempt_interval!r}")
        bound = self._await_bound if timeout is None else float(timeout)
        return self._call(self._ready_check(targets, float(attempt_interval), bound), "the ready check")

    async def _ready_check(self, targets: list[str], interval: float, bound: float) -> dict[str, bool]:
        """One ``ready_check`` message (one id), resent to the silent nodes until all acknowledged.

        Partners start at different times and a message to a node not yet subscribed is lost, so the
        first resends come early (0.25 s, doubling) and only then every ``interval`` seconds.
        """
        messenger = self._node.messenger
        message = messenger.envelope({}, envelope.READY_CHECK)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        wait = min(READY_CHECK_FIRST_RESEND, interval)
        missing = list(targets)
        while missing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            step = min(wait, remaining)
            await messenger.send_prepared(
                message, missing, timeout=step, attempt_timeout=step, max_attempts=1
            )
            acked = self._node.inbox.acks(message["meta"]["id"])
            missing = [t for t in targets if t not in acked]
            wait = min(wait * 2, interval)
        return {t: t not in missing for t in targets}

    def flame_log(
        self,
        msg: str | bytes | Iterable[Any],
        sep: str = "",
        end: str = "",
        log_type: str = "info",
        append: bool = False,
        halt_submission: bool = False,
    ) -> None:
        """Print (unless ``silent``) and stream a log line to the pod orchestrator.

        ``log_type``: debug, info, notice, warn, alert, emerg, error or crit. ``halt_submission`` holds the
        line back; the next line with ``append=True`` is joined to it and both are streamed as one.
        Lines below ``stream_log_level`` are printed only.
        """
        if log_type not in LOG_TYPES:
            raise ValueError(f"unknown log_type {log_type!r}; one of {', '.join(LOG_TYPES)}")
        if isinstance(msg, bytes):
            text = msg.decode("utf-8", errors="replace")
        elif isinstance(msg, str):
            text = msg
        elif isinstance(msg, Iterable):
            text = sep.join(str(part) for part in msg)
        else:
            raise TypeError(f"flame_log takes a str, bytes or an iterable of parts, not {type(msg).__name__}")
        text += end
        if not self.silent:
            with self._print_lock:  # one write per line: lines of several nodes never interleave
                sys.stdout.write(f"[flame {self._label}] {text}\n")
                sys.stdout.flush()
        if halt_submission:
            self._held = text
            return
        if append:
            text, self._held = self._held + text, ""
        if LOG_LEVELS[log_type] >= self.stream_log_level and not self._closed:
            self._node.log(text, log_type)

    def get_progress(self) -> int:
        """The progress reported to the pod orchestrator (0 to 100)."""
        reporter = self._node.reporter
        return reporter.progress if reporter is not None else 0

    def set_progress(self, progress: int | float) -> None:
        """Set the progress (0 to 100); it never decreases (a smaller value is ignored with a warning)."""
        if isinstance(progress, bool) or not isinstance(progress, int | float) or not 0 <= progress <= 100:
            raise ValueError(f"progress must be a number from 0 to 100, got {progress!r}")
        current = self.get_progress()
        if int(progress) < current:
            self._warn(f"progress {int(progress)} is below the current {current}; progress never decreases")
            return
        self._node.set_progress(progress)

    def fhir_to_csv(
        self,
        fhir_data: dict[str, Any],
        col_key_seq: str,
        value_key_seq: str,
        input_resource: str,
        row_key_seq: str | None = None,
        row_id_filters: list[str] | None = None,
        col_id_filters: list[str] | None = None,
        row_col_name: str = "",
        separator: str = ",",
        output_type: Literal["file", "dict"] = "file",
    ) -> StringIO | dict[Any, dict[Any, Any]]:
        """Pivot a FHIR Bundle of Observations or QuestionnaireResponses into a table (see
        :mod:`flame.star.fhir_csv`), following ``next`` links through this node's data sources."""
        next_page = self._fetch_fhir_page if self._node.data is not None else None
        if next_page is None and any(
            isinstance(link, dict) and link.get("relation") == "next" for link in fhir_data.get("link") or []
        ):
            self._warn("fhir_to_csv: this node has no data access; the Bundle's next link is not followed")
        return _fhir_to_csv(
            fhir_data,
            col_key_seq,
            value_key_seq,
            input_resource,
            row_key_seq=row_key_seq,
            row_id_filters=row_id_filters,
            col_id_filters=col_id_filters,
            row_col_name=row_col_name,
            separator=separator,
            output_type=output_type,
            next_page=next_page,
        )

    def _fetch_fhir_page(self, tail: str) -> dict[str, Any]:
        """The rest of a FHIR search from ``tail`` on (all further pages merged), from the first FHIR
        source that answers it."""

        async def fetch() -> dict[str, Any]:
            data = self._node.data
            assert data is not None
            failure: FlameError | None = None
            for source in await data.fhir_sources():
                try:
                    return await data.kong.fhir_bundle(source.name, tail)
                except FlameError as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
            raise ProtocolError("fhir_to_csv: this node has no FHIR data source to follow the next link on")

        return self._call(fetch(), "fetching the next page of a FHIR search")

    # -- messaging ------------------------------------------------------------------------------------

    def _send_bounds(
        self, max_attempts: int, timeout: float | None, attempt_timeout: float
    ) -> tuple[float, float, int | None]:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
        if timeout is None:
            if not attempt_timeout > 0:
                raise ValueError(f"attempt_timeout must be > 0, got {attempt_timeout!r}")
            total = max(self._node.timeouts.send, max_attempts * float(attempt_timeout))
            return total, float(attempt_timeout), None
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout!r}")
        return float(timeout), float(timeout) / max_attempts, max_attempts

    def send_message(
        self,
        receivers: list[str],
        message_category: str,
        message: dict[str, Any],
        max_attempts: int = 1,
        timeout: int | None = None,
        attempt_timeout: int = 10,
    ) -> tuple[list[str], list[str]]:
        """Send ``message`` reliably; returns ``(acknowledged_ids, not_acknowledged_ids)``."""
        total, per_attempt, attempts = self._send_bounds(max_attempts, timeout, attempt_timeout)
        return self._call(
            self._node.send_message(
                list(receivers),
                message_category,
                message,
                timeout=total,
                attempt_timeout=per_attempt,
                max_attempts=attempts,
            ),
            f"sending a {message_category!r} message",
        )

    def await_messages(
        self,
        senders: list[str],
        message_category: str,
        message_id: str | None = None,
        timeout: int | None = None,
    ) -> dict[str, list[Message] | None]:
        """Unread messages of ``message_category`` from each sender (marked read); None for a sender
        without one when ``timeout`` ran out. ``timeout=None`` waits up to the runtime's await default and
        then raises :class:`~flame.errors.FlameTimeoutError`."""
        bound, strict = (self._await_bound, True) if timeout is None else (float(timeout), False)
        return self._call(
            self._node.await_messages(
                list(senders), message_category, message_id=message_id, timeout=bound, raise_on_timeout=strict
            ),
            f"awaiting {message_category!r} messages",
        )

    def get_messages(self, status: Literal["unread", "read"] = "unread") -> list[Message]:
        """Messages of this node's inbox with that status."""
        if status not in ("unread", "read"):
            raise ValueError(f"status must be 'unread' or 'read', got {status!r}")

        async def read() -> list[Message]:
            return self._node.inbox.messages(status)

        return self._call(read(), "reading the inbox")

    def delete_messages(self, message_ids: list[str]) -> int:
        """Delete messages of the local inbox by id; returns how many were deleted."""

        async def delete() -> int:
            return self._node.inbox.delete(list(message_ids))

        return self._call(delete(), "deleting messages")

    def clear_messages(
        self, status: Literal["read", "unread", "all"] = "read", min_age: int | None = None
    ) -> int:
        """Delete the local inbox's messages of a status (older than ``min_age`` seconds); returns how many."""
        if status not in ("read", "unread", "all"):
            raise ValueError(f"status must be 'read', 'unread' or 'all', got {status!r}")

        async def clear() -> int:
            return self._node.inbox.clear(status, None if min_age is None else float(min_age))

        return self._call(clear(), "clearing messages")

    def send_message_and_wait_for_responses(
        self,
        receivers: list[str],
        message_category: str,
        message: dict[str, Any],
        max_attempts: int = 1,
        timeout: int | None = None,
        attempt_timeout: int = 10,
    ) -> dict[str, list[Message] | None]:
        """Send, then await a message of the same category from every receiver (the rest of ``timeout``)."""
        total, per_attempt, attempts = self._send_bounds(max_attempts, timeout, attempt_timeout)

        async def exchange() -> dict[str, list[Message] | None]:
            loop = asyncio.get_running_loop()
            started = loop.time()
            targets = list(receivers)
            await self._node.send_message(
                targets,
                message_category,
                message,
                timeout=total,
                attempt_timeout=per_attempt,
                max_attempts=attempts,
            )
            if timeout is None:
                return await self._node.await_messages(targets, message_category, timeout=self._await_bound)
            remaining = max(float(timeout) - (loop.time() - started), 1.0)
            return await self._node.await_messages(
                targets, message_category, timeout=remaining, raise_on_timeout=False
            )

        return self._call(exchange(), f"exchanging {message_category!r} messages")

    # -- storage --------------------------------------------------------------------------------------

    def submit_final_result(
        self,
        result: Any,
        output_type: Literal["str", "bytes", "pickle"] = "str",
        multiple_results: bool = False,
        filename: str | None = None,
        local_dp: dict[str, float] | None = None,
    ) -> dict[str, str] | list[dict[str, str]]:
        """Upload the final result to the hub (``PUT /final``; ``/final/localdp`` with ``local_dp``).

        With ``multiple_results`` and a list or tuple, each element is one file and a list of responses
        is returned. File names default to ``result_<4 hex>_<yymmddHHMMSS>`` plus ``.txt``/``.bin``/``.pkl``.
        """
        if output_type not in ("str", "bytes", "pickle"):
            raise ValueError(f"output_type must be 'str', 'bytes' or 'pickle', got {output_type!r}")
        if local_dp is not None and (
            not isinstance(local_dp, dict) or not {"epsilon", "sensitivity"} <= set(local_dp)
        ):
            raise ValueError('local_dp must be {"epsilon": <number>, "sensitivity": <number>}')
        names = self._call(
            self._node.results.submit_final(
                result,
                output_type=output_type,
                multiple_results=multiple_results,
                filename=filename,
                local_dp=local_dp,
            ),
            "submitting the final result",
        )
        self.flame_log(f"final result submitted ({', '.join(names)})", log_type="info")
        if multiple_results and isinstance(result, list | tuple) and local_dp is None:
            return [{"status": "success"} for _ in names]
        return {"status": "success"}

    def save_intermediate_data(
        self,
        data: Any,
        location: Literal["local", "global"] = "local",
        remote_node_ids: list[str] | None = None,
        tag: str | None = None,
    ) -> dict[str, dict[str, str]] | dict[str, str]:
        """Store data for other nodes (``global``: one encrypted upload per receiver, returns
        ``{receiver: {"status", "url", "id"}}``) or in this node's storage (``local``, optionally tagged,
        returns ``{"status", "url", "id"}``)."""
        if location == "global":
            if not remote_node_ids:
                raise ValueError("location='global' needs remote_node_ids: the receivers of the data")
            if tag is not None:
                raise ValueError("tags apply to local data only (location='local')")
            receivers = list(dict.fromkeys(remote_node_ids))
            data = self._call(  # it leaves the node: the node's disclosure guard judges it first
                self._node.disclosure.release(data, channel="intermediate", destination=receivers),
                "checking intermediate data against the disclosure policy",
            )
            payloads = {r: self._payload.encode_for(r, data) for r in receivers}

            async def upload() -> dict[str, dict[str, str]]:
                refs = await asyncio.gather(
                    *(self._node.storage.save_intermediate(payloads[r], r) for r in receivers)
                )
                return {
                    r: {"status": "success", "url": ref.url, "id": ref.id}
                    for r, ref in zip(receivers, refs, strict=True)
                }

            return self._call(upload(), "saving intermediate data")
        if location == "local":
            if remote_node_ids:
                raise ValueError("remote_node_ids apply to global data only (location='global')")
            if tag is not None:
                check_tag(tag)
            payload = self._payload.encode_for(None, data)

            async def save() -> dict[str, str]:
                ref = await self._node.storage.save_local(payload, tag=tag)
                return {"status": "success", "url": ref.url, "id": ref.object_id}

            return self._call(save(), "saving local data")
        raise ValueError(f"location must be 'local' or 'global', got {location!r}")

    def get_intermediate_data(
        self,
        location: Literal["local", "global"],
        query: str | None = None,
        tag: str | None = None,
        tag_option: Literal["all", "last", "first"] = "all",
    ) -> Any:
        """Read intermediate data: ``global`` by id (``<uuid>?remote_node_id=<sender>``, readable once);
        ``local`` by object id, or by ``tag`` (a list: all, or only the first or last result)."""
        if location == "global":
            if tag is not None:
                raise ValueError("tags apply to local data only (location='local')")
            if not query:
                raise ValueError("location='global' needs query: the id the sender's message carries")
            _object_id, sender = parse_intermediate_id(query)
            raw = self._call(self._node.storage.read_intermediate(query), "reading intermediate data")
            return self._payload.decode_from(sender, raw)
        if location != "local":
            raise ValueError(f"location must be 'local' or 'global', got {location!r}")
        if tag is not None:
            if tag_option not in ("all", "last", "first"):
                raise ValueError(f"tag_option must be 'all', 'last' or 'first', got {tag_option!r}")
            raws = self._call(
                self._node.storage.read_tagged(tag, tag_option), f"reading local data tagged {tag}"
            )
            return [self._payload.decode_from(None, raw) for raw in raws]
        if not query:
            raise ValueError("location='local' needs query (an object id) or tag")
        raw = self._call(self._node.storage.read_local(query), "reading local data")
        return self._payload.decode_from(None, raw)

    def send_intermediate_data(
        self,
        receivers: list[str],
        data: Any,
        message_category: str = "intermediate_data",
        max_attempts: int = 1,
        timeout: int | None = None,
        attempt_timeout: int = 10,
    ) -> tuple[list[str], list[str]]:
        """Store ``data`` once per receiver, then message ``{"result_id": {receiver: id}}``; returns
        ``(acknowledged, not_acknowledged)``."""
        targets = list(dict.fromkeys(receivers))
        if not targets:
            return [], []
        saved = self.save_intermediate_data(data, "global", remote_node_ids=targets)
        ids = {r: cast(dict[str, str], saved[r])["id"] for r in targets}
        return self.send_message(
            targets, message_category, {"result_id": ids}, max_attempts, timeout, attempt_timeout
        )

    def await_intermediate_data(
        self,
        senders: list[str],
        message_category: str = "intermediate_data",
        timeout: int | None = None,
    ) -> dict[str, Any]:
        """Wait for each sender's intermediate data message; take the last one per sender and read this
        node's entry. None for a sender without one when ``timeout`` ran out (``timeout=None``: raises
        :class:`~flame.errors.FlameTimeoutError` after the runtime's await default)."""
        wanted = list(dict.fromkeys(senders))
        bound, strict = (self._await_bound, True) if timeout is None else (float(timeout), False)

        async def fetch() -> dict[str, tuple[str, bytes] | None]:
            found = await self._node.await_messages(
                wanted, message_category, timeout=bound, raise_on_timeout=strict
            )
            raws: dict[str, tuple[str, bytes] | None] = {}
            for sender in wanted:
                messages = found.get(sender)
                raws[sender] = await self._read_result_message(messages[-1]) if messages else None
            return raws

        raws = self._call(fetch(), f"awaiting {message_category!r} data")
        return {
            sender: None if item is None else self._payload.decode_from(item[0], item[1])
            for sender, item in raws.items()
        }

    async def _read_result_message(self, message: Message) -> tuple[str, bytes]:
        """``(sender, bytes)`` of the object an intermediate data message points this node to."""
        ids = message.body.get("result_id")
        ref = ids.get(self._node.node_id) if isinstance(ids, dict) else ids
        if not isinstance(ref, str) or not ref:
            raise ProtocolError(
                f"message {message.id} ({message.category}) from {message.sender} has no result_id for this node"
            )
        _object_id, sender = parse_intermediate_id(ref)
        return sender, await self._node.storage.read_intermediate(ref)

    def get_local_tags(self, filter: str | None = None) -> list[str]:
        """Tags of this project's local results (containing ``filter``, if given)."""
        tags = self._call(self._node.storage.tags(), "listing local tags")
        return [t for t in tags if filter is None or filter in t]

    # -- checkpoints ----------------------------------------------------------------------------------

    def set_checkpoint(self, checkpoint: dict[str, Any]) -> int:
        """Save ``checkpoint`` in node-local storage under the reserved tag ``checkpoint-<n>``; returns n.

        Checkpoints are numbered 0, 1, ... per analysis and node. Node storage is readable by every
        later analysis of the project, so the record is sealed (AES-256-GCM) under a key only pods of
        this analysis on this node can derive (:func:`flame.federated.checkpoint.node_sealer`); records
        of other analyses under the same tags do not open and are ignored. A node without data access
        (an aggregator) has no such key, and refuses to keep a checkpoint readable by others.
        """
        if not isinstance(checkpoint, dict):
            raise TypeError(f"a checkpoint is a dict, got {type(checkpoint).__name__}")
        sealer = self._checkpoint_sealer()
        if sealer is None:
            raise ConfigurationError(
                "DATA_SOURCE_TOKEN",
                "is none_needed, so set_checkpoint has no per-analysis key to seal the checkpoint with "
                "and later analyses of the project could read it",
                "checkpoints on nodes with data access, or state kept in memory on the aggregator",
            )
        known = self._own_checkpoints()
        index = (max(known) + 1) if known else 0
        record = sealer.seal(_CHECKPOINT_KIND, {"index": index, "checkpoint": checkpoint})
        payload = codec.encode(record)
        self._call(
            self._node.storage.save_local(payload, tag=f"checkpoint-{index}", filename=f"checkpoint-{index}"),
            "saving a checkpoint",
        )
        known.append(index)
        return index

    def load_checkpoint(self, index: int) -> dict[str, Any] | None:
        """The checkpoint saved as number ``index`` (negative: counted from the newest), or None."""
        known = self._own_checkpoints()
        if index < 0:
            if -index > len(known):
                return None
            index = sorted(known)[index]
        if index not in known:
            return None
        return self._checkpoint_record(index)

    def _checkpoint_sealer(self) -> Sealer | None:
        return node_sealer(self._node, _CHECKPOINT_KIND)

    def _checkpoint_record(self, index: int) -> dict[str, Any] | None:
        sealer = self._checkpoint_sealer()
        if sealer is None:
            return None
        raws = self._call(
            self._node.storage.read_tagged(f"checkpoint-{index}", "all"), f"reading checkpoint {index}"
        )
        for raw in reversed(raws):
            try:
                opened = sealer.open(codec.decode(raw), _CHECKPOINT_KIND)
            except FlameError:
                continue
            if (
                isinstance(opened, dict)
                and opened.get("index") == index
                and isinstance(opened.get("checkpoint"), dict)
            ):
                return cast(dict[str, Any], opened["checkpoint"])
        return None

    def _own_checkpoints(self) -> list[int]:
        if self._checkpoints is None:
            if self._checkpoint_sealer() is None:
                self._checkpoints = []
                return self._checkpoints
            tags = self._call(self._node.storage.tags(), "listing checkpoints")
            numbers = sorted(int(m[1]) for t in tags if (m := _CHECKPOINT_TAG.fullmatch(t)))
            self._checkpoints = [n for n in numbers if self._checkpoint_record(n) is not None]
        return self._checkpoints

    # -- data -----------------------------------------------------------------------------------------

    def _no_data(self, what: str) -> bool:
        if self._node.data is None:
            self._warn(f"{what}: this node ({self.get_role()}) has no data access; returning None")
            return True
        return False

    def node_has_data(self) -> bool:
        """Whether this node has data access with at least one data source."""
        if self._data_override:
            return True
        data = self._node.data
        if data is None:
            return False
        return bool(self._call(data.sources(), "listing data sources"))

    def get_data_sources(self) -> list[dict[str, Any]] | None:
        """The project's data sources on this node (Kong service objects); None without data access."""
        if self._no_data("get_data_sources"):
            return None
        data = self._node.data
        assert data is not None
        return [dict(s.raw) for s in self._call(data.sources(), "listing data sources")]

    def get_data_client(self, data_id: str) -> httpx.AsyncClient | None:
        """An httpx client for one data source (by id or name): base URL ``{kong}/{name}/fhir`` or
        ``.../s3``, with the node's Kong key. None without data access."""
        if self._no_data("get_data_client"):
            return None
        data = self._node.data
        assert data is not None
        for source in self._call(data.sources(), "listing data sources"):
            if data_id in (source.id, source.name):
                kind = source.kind if source.kind != "unknown" else "fhir"
                base = f"{self._node.config.urls.kong}/{quote(source.name, safe='')}/{kind}"
                key = self._node.config.data_source_token or ""
                return httpx.AsyncClient(base_url=base, headers={"apikey": key}, timeout=30.0)
        raise ValueError(f"no data source with id or name {data_id!r} on this node")

    def get_fhir_data(self, queries: list[str] | None = []) -> list[dict[str, Any]] | Any:  # noqa: B006
        """``[{query: Bundle} per FHIR source]`` (all pages of each search merged); None on a node
        without data access. Failing queries raise."""
        if "fhir" in self._data_override:
            return self._data_override["fhir"]
        if self._no_data("get_fhir_data"):
            return None
        data = self._node.data
        assert data is not None
        return self._call(data.get_fhir_data(list(queries or [])), "reading FHIR data")

    def get_s3_data(self, keys: list[str] | None = []) -> list[dict[str, bytes]] | Any:  # noqa: B006
        """``[{key: bytes} per S3 source]`` (no keys: every object); None on a node without data access."""
        if "s3" in self._data_override:
            return self._data_override["s3"]
        if self._no_data("get_s3_data"):
            return None
        data = self._node.data
        assert data is not None
        return self._call(data.get_s3_data(list(keys or [])), "reading S3 data")

    # -- used by flame.star's patterns ------------------------------------------------------------------

    def _set_data_override(self, data_type: str, data: Any) -> None:
        """Hand ``data`` out verbatim from ``get_fhir_data``/``get_s3_data`` (StarModelTester's splits)."""
        self._data_override[data_type] = data

    def _ended(self) -> bool:
        node = self._node
        return node.finished.is_set() or node.messenger.finished.is_set()

    async def _wait_ended_or(self, predicate: Callable[[], bool], bound: float) -> bool:
        """Wait until ``predicate()`` holds or the analysis ended; False when ``bound`` ran out first."""
        node = self._node

        def ready() -> bool:
            return predicate() or self._ended() or bool(node.inbox.unread(None, envelope.ANALYSIS_FINISHED))

        waiters = [
            asyncio.ensure_future(node.inbox.wait_until(ready, bound)),
            asyncio.ensure_future(node.finished.wait()),
            asyncio.ensure_future(node.messenger.finished.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return ready()

    def _await_data_or_end(
        self, sender: str, message_category: str = envelope.INTERMEDIATE_DATA
    ) -> tuple[bool, Any]:
        """Wait for ``sender``'s next intermediate data or the end of the analysis, whichever first.

        Returns ``(False, data)`` or ``(True, None)`` when the analysis ended (``analysis_finished`` or
        the aggregator's final status) without further data. Raises :class:`FlameTimeoutError` after
        the await bound.
        """
        bound = self._await_bound

        async def wait() -> tuple[str, bytes] | None:
            inbox = self._node.inbox

            def has_data() -> bool:
                return bool(inbox.unread([sender], message_category))

            if not await self._wait_ended_or(has_data, bound):
                raise FlameTimeoutError(
                    f"{message_category!r} data or the end of the analysis", bound, [sender]
                )
            messages = inbox.unread([sender], message_category).get(sender)
            if not messages:
                return None
            inbox.mark_read(messages)
            return await self._read_result_message(messages[-1])

        item = self._call(wait(), f"awaiting {message_category!r} data from {sender}")
        if item is None:
            return True, None
        return False, self._payload.decode_from(item[0], item[1])

    def _await_end(self) -> bool:
        """Wait (bounded) until the analysis ended; False when the bound ran out first."""
        return self._call(
            self._wait_ended_or(lambda: False, self._await_bound), "awaiting the end of the analysis"
        )

    def _finish(self, status: Status = "executed") -> None:
        """End this node with ``status`` (a final status is never replaced), after pending acknowledgements."""

        async def finish() -> None:
            node = self._node
            await node.messenger.drain(ACK_DRAIN_TIMEOUT)
            if node.status not in FINAL_STATUSES:
                node.set_status(status)

        if self._runtime.aborted is None and self._runtime.loop.is_running:
            self._call(finish(), f"ending the node ({status})")

    def _close(self) -> None:
        """Stop the runtime if this SDK created it (flush logs, leave the broker); idempotent."""
        if self._closed:
            return
        self._closed = True
        runtime = self._runtime
        if not runtime.owned:
            return
        try:
            hooks.cancel_at_exit(self._at_exit)
            if runtime.loop.is_running and not runtime.loop.in_loop_thread():
                runtime.call(runtime.node.stop(), runtime.node.timeouts.shutdown * 3, "the node's shutdown")
        finally:
            runtime.loop.stop()

    def _at_exit(self) -> None:
        """At process exit on a FLAME node: end the node as the analysis left it, then leave cleanly."""
        if self._closed:
            return
        try:
            if hooks.crashed():
                self._finish("failed")
            elif self._node.status not in FINAL_STATUSES:
                # PrivateAIM's pods stay alive until the analysis ends; ours waits for that, bounded
                if not self._await_end():
                    self._warn("the analysis did not end within the await bound; ending this node anyway")
                self._finish("executed")
        except Exception as exc:  # the interpreter is exiting: report, never raise
            log.warning("ending the node at exit failed: %s", exc)
        finally:
            self._close()


__all__ = [
    "AWAIT_TIMEOUT_ENV",
    "CompatConfig",
    "CompatRuntime",
    "FlameCoreSDK",
    "Message",
    "NodeFactory",
    "reset_node_factory",
    "set_node_factory",
]

"""The node runtime: start-up, the service clients, messaging, status and shutdown of one analysis node.

:class:`AsyncNode` is the async core; it lives on one event loop (a real node's, or the loop that a
local federation shares between all its nodes). :class:`Node` is the sync face: it runs an
:class:`AsyncNode` on a :class:`~flame.node.loop.LoopThread` and submits every call to it, so it works
from plain scripts, from worker threads and inside a caller's running event loop (Jupyter) alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from flame import codec
from flame.clients.base import NodeHTTPClient, RetryPolicy
from flame.clients.data_api import DataAPI, HubAdapterClient, KongClient
from flame.clients.message_broker import MessageBrokerClient, Participant
from flame.clients.po import LogType, PodOrchestratorClient
from flame.clients.storage import StorageClient
from flame.config import NodeConfig
from flame.disclosure.guard import DisclosureGuard
from flame.disclosure.policy import DisclosurePolicy, load_policy_file
from flame.errors import (
    FlameError,
    FlameTimeoutError,
    ProtocolError,
    ServiceError,
    ServiceUnavailableError,
    TokenAudienceError,
    TokenSignatureError,
)
from flame.node import envelope, heap
from flame.node.api import ApiLimits, create_api
from flame.node.inbox import Inbox, Message
from flame.node.loop import LoopThread
from flame.node.messaging import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_AWAIT_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    Messenger,
)
from flame.node.results import Results
from flame.node.serving import HTTPServer
from flame.node.status import FINAL_STATUSES, STATUSES, Status, StatusReporter
from flame.redact import install_redaction
from flame.tokens import DEFAULT_JWKS_TIMEOUT, TokenClaims, TokenStore, check_token
from flame.waits import bounded

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """The runtime's named default bounds (seconds); every one can be changed."""

    #: waiting for the sidecar's /healthz at start-up
    startup: float = 120.0
    #: one HTTP request to a node service (connect 10 s)
    request: float = 30.0
    #: one send, all attempts together
    send: float = DEFAULT_SEND_TIMEOUT
    #: one attempt's wait for acknowledgements
    attempt: float = DEFAULT_ATTEMPT_TIMEOUT
    #: waiting for messages or intermediate data
    await_messages: float = DEFAULT_AWAIT_TIMEOUT
    #: shutdown: flushing logs, removing the subscription
    shutdown: float = 10.0


def _same_values(released: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether the guard released ``body`` as it was: the same keys, each holding the same object."""
    return released.keys() == body.keys() and all(released[key] is body[key] for key in body)


class AsyncNode:
    """One analysis container's connection to its FLAME node (async API).

    ``transport`` replaces the network (a local federation passes the emulated stack's in-process
    transport); ``serve_api`` serves the analysis REST API with uvicorn (on a node: port 8000);
    ``api_limits`` bounds its request bodies (:class:`~flame.node.api.ApiLimits`).
    """

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        status_sync: Sequence[str] = ("executed", "stopped", "failed"),
        requires_data: bool | None = None,
        serve_api: bool = True,
        api_host: str | None = None,
        api_limits: ApiLimits | None = None,
    ) -> None:
        install_redaction()
        self.config = config or NodeConfig.from_env()
        self.timeouts = timeouts or Timeouts()
        self.tokens = TokenStore(self.config.keycloak_token)
        self.status_sync = tuple(status_sync)
        self.requires_data = requires_data
        host = api_host if api_host is not None else self.config.analysis_host
        self.serve_api_on = (host, self.config.analysis_port) if serve_api else None
        self._rng = random.Random()
        timeout = httpx.Timeout(self.timeouts.request, connect=min(10.0, self.timeouts.request))
        self.http: httpx.AsyncClient = NodeHTTPClient(transport=transport, timeout=timeout)
        urls = self.config.urls
        common: dict[str, Any] = {"tokens": self.tokens, "retry": retry, "timeout": timeout, "rng": self._rng}
        self.broker = MessageBrokerClient(
            self.http, urls.message_broker, analysis_id=self.config.analysis_id, **common
        )
        self.storage = StorageClient(self.http, urls.storage, **common)
        self.results = Results(self.storage)
        #: the node's disclosure guard: every payload leaving the node passes it (flame.disclosure)
        policy = self.config.disclosure_policy
        self.disclosure = DisclosureGuard(
            load_policy_file(policy) if policy else DisclosurePolicy(),
            storage=self.storage,
            log=self.log,
            analysis_id=self.config.analysis_id,
        )
        self.results.guard = self.disclosure
        self.po = PodOrchestratorClient(self.http, urls.po, analysis_id=self.config.analysis_id, **common)
        self.data: DataAPI | None = None
        if self.config.has_data_access:
            hub = HubAdapterClient(self.http, urls.hub_adapter, **common)
            kong = KongClient(
                self.http,
                urls.kong,
                data_key=self.config.data_source_token,
                retry=retry,
                timeout=timeout,
                rng=self._rng,
            )
            self.data = DataAPI(hub, kong, self.config.project_id)
            kong.observer = self.disclosure
        self.inbox = Inbox()
        self.messenger = Messenger(self.broker, self.config.node_id or "", self.inbox)
        self.api_app = create_api(self, api_limits)
        self.node_id: str = self.config.node_id or ""
        self.role: str = self.config.node_role or ""
        self.participants: list[Participant] = []
        self.partner_statuses: dict[str, str] = {}
        self.finished = asyncio.Event()
        self.reporter: StatusReporter | None = None
        self.api_url: str | None = None
        self._subscription: str | None = None
        self._server: HTTPServer | None = None
        self._started = False
        #: whether this node counts among the running nodes of :mod:`flame.node.heap`
        self._holds_heap = False

    def __repr__(self) -> str:
        return f"AsyncNode(node_id={self.node_id!r}, role={self.role!r}, status={self.status!r})"

    # -- identity -----------------------------------------------------------------------------------

    @property
    def partners(self) -> list[str]:
        """Ids of the other participants."""
        return [p["nodeId"] for p in self.participants if p["nodeId"] != self.node_id]

    @property
    def aggregator_id(self) -> str | None:
        """The aggregator's id, or None on the aggregator itself."""
        for p in self.participants:
            if p["nodeType"] == "aggregator" and p["nodeId"] != self.node_id:
                return p["nodeId"]
        return None

    @property
    def is_aggregator(self) -> bool:
        return self.role == "aggregator"

    @property
    def status(self) -> str:
        return self.reporter.status if self.reporter is not None else "starting"

    async def refresh_token(self, token: str) -> TokenClaims:
        """Check a token the pod orchestrator pushed and make it the current one.

        The checks of :func:`~flame.tokens.check_token`: an RS256 JWT, not expired, with an ``exp``,
        issued for this analysis. Its signature is checked against the node Keycloak's key set when
        ``FLAME_JWKS_URL`` is configured (the fetch runs off the event loop, bounded); otherwise, as on
        a FLAME node whose Keycloak the analysis cannot reach, by presenting it once to the node's
        message broker, which verifies it against that key set. Raises :class:`TokenError` for a
        token this node cannot use and :class:`ServiceError` when it cannot be verified now; either
        way the current token stays.
        """
        token = token.strip()
        jwks_url = self.config.jwks_url
        analysis_id = self.config.analysis_id
        if jwks_url is None:
            claims = check_token(token, analysis_id)
            try:
                me = await self.broker.self_participant(token=token, timeout=min(self.timeouts.request, 10.0))
            except ServiceError as exc:
                if exc.status in (401, 403):
                    raise TokenSignatureError(
                        f"the node's message broker refuses it ({exc.status}): not a valid token of "
                        "this node's Keycloak"
                    ) from None
                raise
            except (ProtocolError, ValueError) as exc:  # a reply that is not {nodeId, nodeType} JSON
                raise ServiceUnavailableError(
                    "message-broker",
                    "GET /participants/self",
                    None,
                    f"cannot verify the token: malformed answer ({type(exc).__name__})",
                ) from None
            if self.node_id and me["nodeId"] != self.node_id:
                raise TokenAudienceError(f"it belongs to node {me['nodeId']!r}, not to {self.node_id!r}")
        else:
            bound = 2 * DEFAULT_JWKS_TIMEOUT + 1.0
            try:
                claims = await bounded(
                    asyncio.to_thread(check_token, token, analysis_id, jwks_url=jwks_url), bound
                )
            except asyncio.TimeoutError:
                raise ServiceUnavailableError(
                    "keycloak", "GET (key set)", None, f"no key set within {bound:g} s"
                ) from None
        self.tokens.swap(token, newer_only=True)  # TokenError if refused before or older than the current
        return claims

    def token_remaining_time(self) -> int:
        """Seconds the current Keycloak token is still valid (0 without a token); what /healthz reports."""
        remaining = self.tokens.seconds_remaining()
        return max(0, remaining) if remaining is not None else 0

    # -- life cycle ---------------------------------------------------------------------------------

    async def serve_api(self, host: str | None = None, port: int | None = None) -> str:
        """Serve the analysis REST API with uvicorn; returns its URL (``http://127.0.0.1:{port}`` locally)."""
        if self.api_url is not None:
            return self.api_url
        bind_host = host or (self.serve_api_on[0] if self.serve_api_on else "127.0.0.1")
        bind_port = self.config.analysis_port if port is None else port
        self._server = HTTPServer(self.api_app, bind_host, bind_port)
        self.api_url = self._server.url
        return self.api_url

    async def start(self) -> AsyncNode:
        """Connect to the node: sidecar health, identity, webhook subscription, participants, data.

        Every step is bounded and fails with a typed error saying which step and what to check.
        """
        if self._started:
            return self
        if self.http.is_closed:
            raise FlameError("this node runtime was stopped; create a new one to start again")
        try:
            return await self._start()
        except BaseException as exc:
            # The caller gets no running node back: release what this attempt set up (the log task,
            # the served API, a webhook subscription) instead of leaving it running on the loop. A
            # start that failed (every request retried first) tells the pod orchestrator so.
            failed = isinstance(exc, Exception) and self.reporter is not None
            if failed:
                self.log(f"the node could not start: {exc}", "error")
            with contextlib.suppress(Exception):
                await self.stop("failed" if failed else None)
            raise

    async def _start(self) -> AsyncNode:
        loop = asyncio.get_running_loop()
        self.reporter = StatusReporter(self.po, loop)
        self.reporter.start()
        if self.serve_api_on is not None:
            await self.serve_api()
        await self._wait_for_sidecar()
        me = await self.broker.self_participant()
        if self.config.node_id and self.config.node_id != me["nodeId"]:
            log.warning(
                "FLAME_NODE_ID %s overrides the broker's node id %s", self.config.node_id, me["nodeId"]
            )
        self.node_id = self.config.node_id or me["nodeId"]
        self.role = self.config.node_role or me["nodeType"]
        self.messenger.node_id = self.node_id
        self.disclosure.node_id = self.node_id
        # the participants first: the webhook takes messages only from them, and deliveries start as
        # soon as the subscription exists
        self.participants = await self.broker.participants()
        if not any(p["nodeId"] == self.node_id for p in self.participants):
            raise ProtocolError(f"the broker's participants do not include this node ({self.node_id})")
        self.messenger.participants = frozenset(p["nodeId"] for p in self.participants)
        subscription = await self.broker.subscribe(self.config.urls.webhook)
        self._subscription = subscription["subscriptionId"]
        needs_data = self.requires_data if self.requires_data is not None else self.role != "aggregator"
        if needs_data and self.data is not None:
            await self.data.sources()
        self._started = True
        self.reporter.set_status("started")
        self.log(f"node {self.node_id} started as {self.role} with {len(self.partners)} partner(s)")
        # what start-up built lives as long as the node: full collections need not visit it meanwhile
        heap.node_started()
        self._holds_heap = True
        return self

    async def _wait_for_sidecar(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.startup
        delay = 0.05
        last = "no answer yet"
        while True:
            try:
                remaining = max(deadline - loop.time(), 0.01)
                answer = await self.http.get(self.config.urls.healthz, timeout=min(5.0, remaining))
                if answer.status_code == 200:
                    return
                last = f"answered {answer.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if loop.time() + delay > deadline:
                raise FlameTimeoutError(
                    f"the sidecar at {self.config.urls.healthz} ({last})",
                    self.timeouts.startup,
                    hint="is DEPLOYMENT_NAME right and the nginx sidecar running?",
                )
            # the sidecar has no way to announce itself: retry with backoff, bounded by the deadline
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def stop(self, status: Status | None = None) -> None:
        """Leave the node: final status, flush logs, remove the webhook subscription, close clients.

        Bounded: each step gets ``timeouts.shutdown`` seconds (plus a second for cancelling it), and
        a step that fails or hangs is logged and left behind, so the steps after it still run.
        """
        if self._holds_heap:
            self._holds_heap = False
            heap.node_stopped()
        if status is not None and self.reporter is not None:
            self.set_status(status)
        elif status in FINAL_STATUSES:
            self.finished.set()
        bound = self.timeouts.shutdown
        if self._subscription is not None:
            await _bounded(self.broker.unsubscribe(self._subscription), bound, "removing the subscription")
            self._subscription = None
        await _bounded(
            self.messenger.aclose(grace=min(5.0, bound)), bound, "sending the last acknowledgements"
        )
        if self.reporter is not None:
            await _bounded(self.reporter.aclose(bound), bound, "flushing logs to the pod orchestrator")
        if self._server is not None:
            await _bounded(self._server.aclose(bound), bound, "stopping the API server")
            self._server = None
            self.api_url = None
        await _bounded(self.http.aclose(), bound, "closing the connections")
        self._started = False

    async def __aenter__(self) -> AsyncNode:
        return await self.start()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.status not in FINAL_STATUSES:
            await self.stop("failed" if exc is not None else "executed")
        else:
            await self.stop()

    # -- status, progress, logs ----------------------------------------------------------------------

    def set_status(self, status: Status) -> None:
        assert self.reporter is not None, "start the node first"
        self.reporter.set_status(status)
        if status in FINAL_STATUSES:
            self.finished.set()

    def set_progress(self, progress: float) -> int:
        assert self.reporter is not None, "start the node first"
        return self.reporter.set_progress(progress)

    def log(self, text: str, log_type: LogType = "info") -> None:
        """Log locally and stream to the pod orchestrator (never blocks)."""
        log.log(_LEVELS.get(log_type, logging.INFO), "%s", text)
        if self.reporter is not None:
            self.reporter.log(text, log_type)

    def partner_ended(self, node: str) -> bool:
        """Whether the pod orchestrator last reported ``node`` in a final status."""
        return self.partner_statuses.get(node) in FINAL_STATUSES

    async def adopt_partner_status(self, statuses: dict[str, str]) -> None:
        """Record the partners' statuses (waking sends that wait on them) and take over the aggregator's
        final status (``status_sync``): how analysis nodes end after it."""
        self.partner_statuses.update(statuses)
        await self.inbox.changed()
        aggregator = self.aggregator_id
        if aggregator is None or self.reporter is None or self.status in FINAL_STATUSES:
            return
        theirs = statuses.get(aggregator)
        if theirs in self.status_sync and theirs in FINAL_STATUSES:
            self.log(f"the aggregator reports {theirs}; adopting it")
            self.set_status(theirs)  # type: ignore[arg-type]

    # -- messaging ----------------------------------------------------------------------------------

    async def send_message(
        self,
        receivers: Sequence[str],
        category: str,
        body: dict[str, Any],
        *,
        timeout: float | None = None,
        attempt_timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> tuple[list[str], list[str]]:
        """Send ``body`` reliably; returns ``(acknowledged, not_acknowledged)``.

        The body passes the node's disclosure guard first (:class:`~flame.errors.DisclosureRefusedError`
        and nothing sent if the policy refuses it).
        """
        self._require_started()
        # a body the messenger would refuse (shape, size, depth, recipients) is refused before the guard
        # records a release that never happens
        message = self.messenger.check_outgoing(receivers, category, body)
        released = await self.disclosure.release_message(body, category=category, receivers=receivers)
        if not _same_values(released, body):
            # the guard changed it (differential privacy): enveloped and checked again
            message = self.messenger.envelope(released, category)
        return await self.messenger.send_prepared(
            message,
            receivers,
            timeout=self.timeouts.send if timeout is None else timeout,
            attempt_timeout=self.timeouts.attempt if attempt_timeout is None else attempt_timeout,
            max_attempts=max_attempts,
        )

    async def await_messages(
        self,
        senders: Sequence[str],
        category: str,
        *,
        message_id: str | None = None,
        timeout: float | None = None,
        raise_on_timeout: bool = True,
    ) -> dict[str, list[Message] | None]:
        """Wait for an unread message of ``category`` from each sender (see :meth:`Messenger.await_messages`)."""
        return await self.messenger.await_messages(
            senders,
            category,
            message_id=message_id,
            timeout=self.timeouts.await_messages if timeout is None else timeout,
            raise_on_timeout=raise_on_timeout,
        )

    async def ready_check(
        self, nodes: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> dict[str, bool]:
        """Which of ``nodes`` (default: all partners) acknowledge a ``ready_check``."""
        self._require_started()
        return await self.messenger.ready_check(
            list(self.partners if nodes is None else nodes),
            timeout=self.timeouts.send if timeout is None else timeout,
        )

    async def analysis_finished(self, *, attempts: int = 5, attempt_timeout: float | None = None) -> bool:
        """Tell all partners the analysis is over, then end this node with status ``executed``.

        True when every partner still running acknowledged.
        """
        self._require_started()
        # a partner the pod orchestrator reports ended (an analysis node ends on the final aggregate)
        # has no webhook any more: waiting for its acknowledgement would only run out the attempts
        _acked, missing = await self.messenger.analysis_finished(
            self.partners,
            attempts=attempts,
            attempt_timeout=self.timeouts.attempt if attempt_timeout is None else attempt_timeout,
            ended=self.partner_ended,
        )
        gone = [node for node in missing if self.partner_ended(node)]
        if gone:
            self.log(f"analysis_finished not acknowledged by {', '.join(gone)}, which already ended")
        if unanswered := [node for node in missing if node not in gone]:
            self.log(f"analysis_finished was not acknowledged by {', '.join(unanswered)}", "warn")
        self.set_status("executed")
        return not unanswered

    # -- intermediate data -----------------------------------------------------------------------------

    async def send_intermediate_data(
        self,
        receivers: Sequence[str],
        data: Any,
        *,
        category: str = envelope.INTERMEDIATE_DATA,
        timeout: float | None = None,
        attempt_timeout: float | None = None,
        max_attempts: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Store ``data`` (encoded with :mod:`flame.codec`) once per receiver and message the ids."""
        self._require_started()
        data = await self.disclosure.release(
            data, channel="intermediate", destination=receivers, path=category
        )
        payload = codec.encode(data)
        refs = await asyncio.gather(
            *(self.storage.save_intermediate(payload, receiver) for receiver in receivers)
        )
        body: dict[str, Any] = {"result_id": {r: ref.id for r, ref in zip(receivers, refs, strict=True)}}
        if extra:
            body.update(extra)
        return await self.send_message(
            receivers,
            category,
            body,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            max_attempts=max_attempts,
        )

    async def await_intermediate_data(
        self,
        senders: Sequence[str],
        *,
        category: str = envelope.INTERMEDIATE_DATA,
        timeout: float | None = None,
        allow_pickle: bool = False,
    ) -> dict[str, Any]:
        """Wait for intermediate data from each sender; read each one's entry for this node (once)."""
        messages = await self.await_messages(senders, category, timeout=timeout)
        results: dict[str, Any] = {}
        for sender, found in messages.items():
            assert found
            results[sender] = await self.read_intermediate_message(found[-1], allow_pickle=allow_pickle)
        return results

    async def read_intermediate_message(self, message: Message, *, allow_pickle: bool = False) -> Any:
        """Fetch and decode the object an ``intermediate_data`` message points this node to."""
        ids = message.body.get("result_id")
        if not isinstance(ids, dict) or self.node_id not in ids:
            raise ProtocolError(
                f"message {message.id} from {message.sender} has no result_id entry for this node"
            )
        raw = await self.storage.read_intermediate(str(ids[self.node_id]))
        return codec.decode(raw, allow_pickle=allow_pickle)

    def _require_started(self) -> None:
        if not self._started:
            raise FlameError("the node is not started; call start() first")


async def _bounded(step: Coroutine[Any, Any, Any], seconds: float, what: str) -> None:
    """Run one shutdown step for at most ``seconds`` (+1 s to cancel it); log instead of raising."""
    task = asyncio.ensure_future(step)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
    if not done:
        log.warning("shutdown: %s did not finish within %g s; left behind", what, seconds)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: %s failed: %s", what, task.exception())


_LEVELS = {
    "emerg": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "notice": logging.INFO,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


class Node:
    """The sync face of :class:`AsyncNode`: every call runs on the runtime's own event-loop thread.

    Works from plain scripts and inside a running event loop (a Jupyter cell) alike, since it never
    calls ``asyncio.run``. Use ``with Node() as node:`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self, config: NodeConfig | None = None, *, loop: LoopThread | None = None, **kwargs: Any
    ) -> None:
        self._owns_loop = loop is None
        self._loop = loop or LoopThread()
        self._kwargs = kwargs
        self.config = config or NodeConfig.from_env()
        self.core: AsyncNode = self._call(self._make(), 30.0, "creating the node runtime")

    async def _make(self) -> AsyncNode:
        return AsyncNode(self.config, **self._kwargs)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        return self._loop.run(coro, timeout, what)

    def __repr__(self) -> str:
        return f"Node(node_id={self.core.node_id!r}, role={self.core.role!r})"

    @property
    def node_id(self) -> str:
        return self.core.node_id

    @property
    def role(self) -> str:
        return self.core.role

    @property
    def partners(self) -> list[str]:
        return self.core.partners

    @property
    def aggregator_id(self) -> str | None:
        return self.core.aggregator_id

    @property
    def status(self) -> str:
        return self.core.status

    def start(self) -> Node:
        """Connect to the node services (bounded by the start-up timeout)."""
        self._call(self.core.start(), self.core.timeouts.startup + 30.0, "the node's start-up")
        return self

    def stop(self, status: Status | None = None) -> None:
        """Leave the node and stop the runtime's loop (if this object created it)."""
        try:
            if self._loop.is_running:
                self._call(self.core.stop(status), self.core.timeouts.shutdown * 3, "the node's shutdown")
        finally:
            if self._owns_loop:
                self._loop.stop()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.core.status not in FINAL_STATUSES:
            self.stop("failed" if exc is not None else "executed")
        else:
            self.stop()

    def send_message(
        self, receivers: Sequence[str], category: str, body: dict[str, Any], **kwargs: Any
    ) -> tuple[list[str], list[str]]:
        """Send reliably; see :meth:`AsyncNode.send_message`."""
        return self._call(
            self.core.send_message(receivers, category, body, **kwargs), None, "sending a message"
        )

    def await_messages(
        self, senders: Sequence[str], category: str, **kwargs: Any
    ) -> dict[str, list[Message] | None]:
        """Wait for messages; see :meth:`AsyncNode.await_messages` (its timeout bounds the wait)."""
        return self._call(self.core.await_messages(senders, category, **kwargs), None, "awaiting messages")

    def ready_check(self, nodes: Sequence[str] | None = None, **kwargs: Any) -> dict[str, bool]:
        return self._call(self.core.ready_check(nodes, **kwargs), None, "the ready check")

    def analysis_finished(self) -> bool:
        return self._call(self.core.analysis_finished(), None, "announcing the end of the analysis")

    def send_intermediate_data(
        self, receivers: Sequence[str], data: Any, **kwargs: Any
    ) -> tuple[list[str], list[str]]:
        return self._call(
            self.core.send_intermediate_data(receivers, data, **kwargs), None, "sending intermediate data"
        )

    def await_intermediate_data(self, senders: Sequence[str], **kwargs: Any) -> dict[str, Any]:
        return self._call(
            self.core.await_intermediate_data(senders, **kwargs), None, "awaiting intermediate data"
        )

    def set_status(self, status: Status) -> None:
        # checked here: an error raised in the loop's callback would only be logged, never seen
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        self._loop.loop.call_soon_threadsafe(self.core.set_status, status)

    def set_progress(self, progress: float) -> int:
        """Set progress (0 to 100, never decreasing); returns the progress in effect."""
        # the reporter is thread-safe; calling it here lets a bad value raise in the caller
        return self.core.set_progress(progress)

    def log(self, text: str, log_type: LogType = "info") -> None:
        self.core.log(text, log_type)

    def wait_finished(self, timeout: float) -> bool:
        """Block until the node reached a final status; False when ``timeout`` ran out first."""

        async def wait() -> bool:
            try:
                await bounded(self.core.finished.wait(), timeout)
            except asyncio.TimeoutError:
                return False
            return True

        return self._call(wait(), timeout + 5.0, "the end of the analysis")


__all__ = ["AsyncNode", "Node", "ServiceError", "Timeouts"]

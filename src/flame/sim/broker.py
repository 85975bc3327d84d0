"""The emulated message broker of each node, and the hub relay between nodes.

:func:`create_app` is the broker's REST API as one node's sidecar reaches it (the router has already
stripped ``/message-broker`` and put the node in the request scope). :class:`Broker` is the delivery
side shared by every node of a stack: a message POSTed at one node is relayed (in memory, standing in
for the hub) to each recipient node, whose broker POSTs it verbatim to every webhook subscribed there.

Behaviour copied from PrivateAIM/node-message-broker, in the details its HTTP contract leaves open:

- ``Location`` of a new subscription is ``{scheme}://{Host}/analyses/{a}/messages/subscriptions/{id}``,
  built from the request as the broker sees it, so it lacks the sidecar's ``/message-broker`` prefix
  (clients must keep the path tail and re-base it).
- ``DELETE .../subscriptions/{id}`` answers 204 also for an unknown id (a repository ``deleteById``);
  ``DELETE .../subscriptions`` deletes every subscription of the analysis, 204.
- A request body that is not ``application/json`` gets 415; errors carry Spring Boot's error JSON
  (``timestamp``, ``path``, ``status``, ``error``, ``requestId``); a 401 has an empty body and a
  ``WWW-Authenticate`` header. The token is checked before the route, so unknown paths get 401 first.
- A recipient listed twice gets the message twice. A webhook answering 3xx counts as delivered (the
  broker's web client neither follows redirects nor treats them as errors).

Delivery policy, as the real broker's forwarder (a Spring ``WebClient`` with
``Accept: application/json``, no response timeout, ``Retry.backoff(5, 1 s).jitter(0.75)`` on 5xx only;
settings in :class:`~flame.sim.settings.StackSettings`), with at most :data:`MAX_DELIVERIES_IN_FLIGHT`
webhook POSTs under way at once: 2xx/3xx delivered; 5xx retried at most ``delivery_max_retries`` times,
the k-th retry (from 0) after ``d = scaled(delivery_base_delay) * 2**k`` moved by a uniform jitter of at
most ``delivery_jitter * d`` either way but never below the first delay; 4xx and connection failures
drop the message, and so does a response timeout if ``delivery_timeout`` sets one (the real broker has
none: a webhook may take as long as it needs). Nothing is persisted and order is not kept.
Every step is recorded in ``stack.events`` (``broker.*``, ``delivery.*``, ``fault.delivery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from flame.sim import asgi
from flame.sim.asgi import FastCall
from flame.sim.auth import broker_claims, current_node, current_stack
from flame.sim.faults import DeliveryDecision
from flame.sim.proxy import call_asgi
from flame.waits import bounded

if TYPE_CHECKING:
    from fastapi import FastAPI

    from flame.sim.node import SimNode
    from flame.sim.stack import FlameStack

#: Webhook POSTs the stack's brokers have under way at once; more wait for a slot. The delivery timeout
#: then measures the webhook's answer, not the queue of an emulator whose brokers all share one
#: event loop (a broadcast to 1,000 nodes started 1,000 POSTs at once, and on a busy machine those at
#: the back timed out before their request was even sent: deliveries a real broker would not lose).
MAX_DELIVERIES_IN_FLIGHT = 512

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Message:
    """One message accepted by a broker: what the hub relays to each recipient."""

    seq: int
    sender: SimNode
    recipients: tuple[SimNode, ...]
    body: bytes
    message_id: str | None
    broadcast: bool = False


@dataclass
class _Attempt:
    """Event detail shared by every event of one (message, webhook, copy) delivery."""

    message: Message
    receiver: SimNode
    subscription_id: str
    webhook: str
    copy: int

    def base(self) -> dict[str, Any]:
        return {
            "sender": self.message.sender.name,
            "receiver": self.receiver.name,
            "webhook": self.webhook,
            "subscription_id": self.subscription_id,
            "message_id": self.message.message_id,
            "message_seq": self.message.seq,
            "copy": self.copy,
        }


class Broker:
    """The delivery side of every node's broker plus the hub relay, for one :class:`FlameStack`.

    Each accepted message spawns one asyncio task per (recipient, webhook); :meth:`quiesce` waits for
    them all to finish and :meth:`aclose` cancels them.
    """

    def __init__(self, stack: FlameStack) -> None:
        self.stack = stack
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event | None = None
        #: webhook URLs parsed once: httpx parses a URL string on every request otherwise
        self._webhooks: dict[str, httpx.URL] = {}
        self._slots: asyncio.Semaphore | None = None  # made on the loop that delivers
        # Every node asks for the whole list at start-up: with n nodes, n lists of n entries. The
        # encoded list is kept while the stack's nodes are the same (a node's id and role never change).
        self._listed: tuple[tuple[SimNode, ...], bytes] | None = None

    def participants_body(self) -> bytes:
        """``GET .../participants``'s answer: every node of the stack as JSON, encoded once."""
        nodes = tuple(self.stack.nodes.values())
        listed = self._listed
        if listed is None or listed[0] != nodes:  # element by element, identity first
            body = json.dumps([n.participant() for n in nodes], separators=(",", ":")).encode()
            listed = self._listed = (nodes, body)
        return listed[1]

    def subscribe(self, node: SimNode, analysis_id: str, url: str) -> dict[str, str]:
        """Subscribe webhook ``url`` at ``node`` (already validated); the new subscription."""
        sid = str(uuid.uuid4())
        subscription = {"subscriptionId": sid, "analysisId": analysis_id, "webhookUrl": url}
        with node.lock:
            node.subscriptions[sid] = subscription
        self.stack.events.record(
            "broker.subscribed", node.name, subscription_id=sid, webhook=url, deployment=node.deployment_name
        )
        return subscription

    def unsubscribe(self, node: SimNode, sid: str) -> None:
        """Remove subscription ``sid`` (a canonical UUID) of ``node``, if there is one."""
        with node.lock:
            existed = node.subscriptions.pop(sid, None) is not None
        if existed:
            self.stack.events.record("broker.unsubscribed", node.name, subscription_ids=[sid])

    @property
    def pending(self) -> int:
        """How many delivery tasks are still running."""
        return len(self._tasks)

    def accept(
        self, sender: SimNode, recipients: list[SimNode], message: Any, *, broadcast: bool = False
    ) -> Message:
        """Take a validated message from ``sender`` and start delivering it to ``recipients``.

        The fault plan is consulted here, synchronously and in a fixed order (recipient, then
        subscription), so that the same seed yields the same decisions whatever the timing.
        """
        stack = self.stack
        self._seq += 1
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
        msg = Message(self._seq, sender, tuple(recipients), body, _message_id(message), broadcast)
        stack.events.record(
            "broker.sent",
            sender.name,
            sender=sender.name,
            recipients=[r.name for r in recipients],
            size=len(body),
            message_id=msg.message_id,
            message_seq=msg.seq,
            broadcast=broadcast,
        )
        for receiver in recipients:
            # The receiving broker lists its subscriptions when the hub hands it the message.
            with receiver.lock:
                subscriptions = [
                    (sid, sub["webhookUrl"])
                    for sid, sub in receiver.subscriptions.items()
                    if sub["analysisId"] == receiver.analysis_id
                ]
            if not subscriptions:
                stack.events.record(
                    "delivery.unsubscribed",
                    receiver.name,
                    sender=sender.name,
                    receiver=receiver.name,
                    message_id=msg.message_id,
                    message_seq=msg.seq,
                )
            for sid, url in subscriptions:
                decision = stack.faults.delivery(sender.name, receiver.name, stack.now())
                self._spawn(self._deliver(msg, receiver, sid, url, decision))
        return msg

    async def quiesce(self, timeout: float = 10.0) -> None:
        """Wait until no delivery task is pending; raise TimeoutError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            idle = self._idle_event()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._tasks)} delivery task(s) still pending after {timeout} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await bounded(idle.wait(), remaining)

    async def aclose(self) -> None:
        """Cancel every pending delivery and wait for the tasks to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------------

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
        if self._tasks:
            self._idle.clear()
        else:
            self._idle.set()
        return self._idle

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        if self._idle is not None:
            self._idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._idle is not None:
            self._idle.set()

    async def _deliver(
        self, msg: Message, receiver: SimNode, sid: str, url: str, decision: DeliveryDecision
    ) -> None:
        events = self.stack.events
        common = _Attempt(msg, receiver, sid, url, 0).base()
        if decision.reasons:
            events.record(
                "fault.delivery",
                receiver.name,
                reasons=list(decision.reasons),
                drop=decision.drop,
                copies=decision.copies,
                delay=decision.delay,
                **common,
            )
        if decision.drop:
            events.record("delivery.dropped", receiver.name, reason="fault", attempt=0, status=None, **common)
            return
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        for copy in range(decision.copies):
            try:
                await self._post_with_retries(_Attempt(msg, receiver, sid, url, copy))
            except Exception as exc:  # the emulator must not lose a task to an unexpected error
                events.record(
                    "delivery.dropped",
                    receiver.name,
                    reason="error",
                    error=f"{type(exc).__name__}: {exc}",
                    attempt=None,
                    status=None,
                    **_Attempt(msg, receiver, sid, url, copy).base(),
                )

    async def _post_with_retries(self, job: _Attempt) -> None:
        stack = self.stack
        settings = stack.settings
        events = stack.events
        node = job.receiver.name
        timeout = settings.delivery_response_timeout()
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            extra: dict[str, Any] = {}
            if self._slots is None:
                self._slots = asyncio.Semaphore(MAX_DELIVERIES_IN_FLIGHT)
            try:
                async with self._slots:
                    status = await self._post_once(job, timeout)
            except (httpx.TimeoutException, asyncio.TimeoutError):
                reason = "timeout"
            except httpx.HTTPError as exc:
                reason = "connection"
                extra["error"] = f"{type(exc).__name__}: {exc}"
            else:
                if status < 400:
                    events.record("delivery.ok", node, attempt=attempt, status=status, **job.base())
                    return
                if status < 500:
                    reason = "4xx"
                elif attempt > settings.delivery_max_retries:
                    reason = "5xx-exhausted"
                else:
                    delay = retry_delay(
                        attempt - 1,
                        settings.scaled(settings.delivery_base_delay),
                        settings.delivery_jitter,
                        stack.rng,
                    )
                    events.record(
                        "delivery.retry", node, attempt=attempt, status=status, delay=delay, **job.base()
                    )
                    await asyncio.sleep(delay)
                    continue
            events.record(
                "delivery.dropped", node, reason=reason, attempt=attempt, status=status, **extra, **job.base()
            )
            return

    async def _post_once(self, job: _Attempt, timeout: float | None) -> int:
        # The receiving node's broker posts from inside that node's cluster: ``http://nginx-...``
        # resolves to that node's sidecar (and fails to connect for a gone or offline pod).
        url = self._webhooks.get(job.webhook)
        if url is None:
            if len(self._webhooks) >= 4096:
                self._webhooks.clear()
            url = self._webhooks[job.webhook] = httpx.URL(job.webhook)
        if url.host.startswith("nginx-"):
            # the sidecar is the stack's own app: call it, without an HTTP client in between
            return await bounded(self._post_in_cluster(job, url), timeout)
        if url.host == "127.0.0.1" and url.port in self.stack._port_to_node:
            # a sidecar this stack serves (a node's own port): the same app, without the socket
            return await bounded(self._post_in_cluster(job, url, via=None), timeout)
        client = self.stack.node_http(job.receiver.name)
        request: Awaitable[httpx.Response] = client.post(
            url,
            content=job.message.body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            timeout=timeout,
        )
        # ASGI transports ignore httpx timeouts: bound the whole exchange here as well.
        response = await bounded(request, timeout)
        return response.status_code

    async def _post_in_cluster(self, job: _Attempt, url: httpx.URL, via: str | None = "receiver") -> int:
        """POST the message to ``url`` on the stack's own app: by the receiver's cluster DNS
        (``via="receiver"``), or (None) at a node's served port, where the port tells the node."""
        stack = self.stack
        name = job.receiver.name
        host = url.host
        if via is not None and not stack.reaches(name, host):
            raise httpx.ConnectError(f"cannot resolve or reach {host}")
        body = job.message.body
        netloc = url.netloc
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?", 1)[0],
            "query_string": url.query,
            "root_path": "",
            "headers": [
                (b"host", netloc),
                (b"accept", b"application/json"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 0),
            "server": (host, url.port or (443 if url.scheme == "https" else 80)),
            "extensions": {},
        }
        if via is not None:
            scope["flame.via"] = name
        return await call_asgi(stack.app, scope, body)


def retry_delay(k: int, first: float, jitter: float, rng: random.Random) -> float:
    """The delay before retry ``k`` (from 0), as Reactor's ``Retry.backoff(n, first).jitter(jitter)`` draws it.

    The nominal delay ``first * 2**k`` is moved by a uniform offset within ``jitter`` times itself either
    way, bounded below so that no delay is shorter than ``first``.
    """
    nominal = first * float(2**k)
    low = max(first - nominal, -jitter * nominal)
    high = jitter * nominal
    return nominal + rng.uniform(low, high)


def _message_id(message: Any) -> str | None:
    if isinstance(message, dict):
        meta = message.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("id"), str):
            return str(meta["id"])
    return None


# -- the REST API -------------------------------------------------------------------------------------


class _ClientError(Exception):
    def __init__(self, status: int = 400, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(stack: FlameStack) -> FastAPI:
    """The broker REST API of every node of ``stack`` (paths as the real node message broker sees them)."""
    from fastapi import Depends, FastAPI

    app = FastAPI(
        title="flame emulated message broker",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(broker_claims)],
    )
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(_ClientError, _client_error)  # type: ignore[arg-type]
    subscriptions = "/analyses/{analysis_id}/messages/subscriptions"

    @app.post(subscriptions, status_code=201)
    async def add_subscription(analysis_id: str, request: Request) -> Response:
        node = current_node(request)
        body = await _json_body(request)
        url = body.get("webhookUrl") if isinstance(body, dict) else None
        if not isinstance(url, str) or not _absolute_http_url(url):
            raise _ClientError(400, "webhookUrl must be an absolute http(s) URL")
        subscription = current_stack(request).broker.subscribe(node, analysis_id, url)
        sid = subscription["subscriptionId"]
        location = (
            f"{request.url.scheme}://{request.url.netloc}/analyses/{analysis_id}/messages/subscriptions/{sid}"
        )
        return JSONResponse(subscription, status_code=201, headers={"Location": location})

    @app.get(subscriptions)
    async def list_subscriptions(analysis_id: str, request: Request) -> list[dict[str, str]]:
        node = current_node(request)
        with node.lock:
            return [dict(s) for s in node.subscriptions.values() if s["analysisId"] == analysis_id]

    @app.delete(subscriptions, status_code=204)
    async def delete_all_subscriptions(analysis_id: str, request: Request) -> Response:
        node = current_node(request)
        with node.lock:
            gone = [sid for sid, s in node.subscriptions.items() if s["analysisId"] == analysis_id]
            for sid in gone:
                del node.subscriptions[sid]
        current_stack(request).events.record("broker.unsubscribed", node.name, subscription_ids=gone)
        return Response(status_code=204)

    @app.get(subscriptions + "/{subscription_id}")
    async def get_subscription(analysis_id: str, subscription_id: str, request: Request) -> dict[str, str]:
        node = current_node(request)
        sid = _subscription_id(subscription_id)
        with node.lock:
            found = node.subscriptions.get(sid)
        if found is None:
            # Spring's ResponseEntity.notFound(): 404 with an empty body.
            raise StarletteHTTPException(404, "")
        return dict(found)

    @app.delete(subscriptions + "/{subscription_id}", status_code=204)
    async def delete_subscription(analysis_id: str, subscription_id: str, request: Request) -> Response:
        node = current_node(request)
        current_stack(request).broker.unsubscribe(node, _subscription_id(subscription_id))
        return Response(status_code=204)

    @app.post("/analyses/{analysis_id}/messages", status_code=202)
    async def send_message(analysis_id: str, request: Request) -> Response:
        node, stack_ = current_node(request), current_stack(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or "message" not in body:
            raise _ClientError(400, "the body needs 'recipients' and 'message'")
        ids = body.get("recipients")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise _ClientError(400, "recipients must be a non-empty list of node ids")
        recipients: list[SimNode] = []
        for node_id in ids:
            partner = stack_.node_by_id(node_id)
            if partner is None or partner is node:
                raise _ClientError(
                    400, "list of recipients contains at least one recipient that is not part of the analysis"
                )
            recipients.append(partner)
        stack_.broker.accept(node, recipients, body["message"])
        return Response(status_code=202)

    @app.post("/analyses/{analysis_id}/messages/broadcast", status_code=202)
    async def broadcast(analysis_id: str, request: Request) -> Response:
        node, stack_ = current_node(request), current_stack(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or "message" not in body:
            raise _ClientError(400, "the body needs 'message'")
        partners = [n for n in stack_.nodes.values() if n is not node]
        stack_.broker.accept(node, partners, body["message"], broadcast=True)
        return Response(status_code=202)

    @app.get("/analyses/{analysis_id}/participants", response_model=list[dict[str, str]])
    async def participants(analysis_id: str, request: Request) -> Response:
        return Response(current_stack(request).broker.participants_body(), media_type="application/json")

    @app.get("/analyses/{analysis_id}/participants/self")
    async def participant_self(analysis_id: str, request: Request) -> dict[str, str]:
        return current_node(request).participant()

    routes = list(app.router.routes)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def unrouted(path: str, request: Request) -> Response:
        # Reached only with a valid token (the app-wide dependency ran first), as in Spring Security.
        allowed = sorted(
            {
                m
                for r in routes
                if r.matches(request.scope)[0] is Match.PARTIAL
                for m in getattr(r, "methods", ())
            }
        )
        if allowed:
            raise StarletteHTTPException(405, headers={"Allow": ", ".join(allowed)})
        raise StarletteHTTPException(404)

    return app


async def fast_send(call: FastCall) -> None:
    """``POST .../messages`` and ``.../messages/broadcast`` as plain ASGI (see :mod:`flame.sim.asgi`).

    Answers 202 for a request the route would accept; hands anything else to the broker app.
    """
    stack, node, path = call.stack, call.node, call.scope["path"]
    message: Any = None
    recipients: list[SimNode] | None = None
    # the broker checks the token before it reads the body (Spring Security's filter comes first)
    parsed = await call.read_json() if call.claims() is not None else None
    if isinstance(parsed, dict) and "message" in parsed:
        message = parsed["message"]
        if path.endswith("/broadcast"):
            recipients = [n for n in stack.nodes.values() if n is not node]
        else:
            recipients = _recipients(stack, node, parsed.get("recipients"))
    if recipients is None:
        await call.pass_on()
        return
    stack.broker.accept(node, recipients, message, broadcast=path.endswith("/broadcast"))
    await asgi.send_empty(call.send, 202)


async def fast_setup(call: FastCall) -> None:
    """What every node asks its broker at start-up and stop, as plain ASGI (see :mod:`flame.sim.asgi`).

    ``GET .../participants`` (the encoded list kept by :meth:`Broker.participants_body`),
    ``GET .../participants/self``, ``POST .../messages/subscriptions`` and
    ``DELETE .../messages/subscriptions/{id}``; anything the routes would refuse goes to the broker app.
    """
    stack, node, send = call.stack, call.node, call.send
    method, path = call.scope["method"], call.scope["path"]
    if call.claims() is None:  # before any body, as for a message
        await call.pass_on()
    elif method == "POST":
        await _fast_subscribe(call)
    elif method == "GET" and path.endswith("/participants"):
        await asgi.send_encoded_json(send, stack.broker.participants_body())
    elif method == "GET" and path.endswith("/participants/self"):
        await asgi.send_json(send, node.participant())
    elif method == "DELETE":
        sid = path.rpartition("/")[2]
        if not _UUID.match(sid):
            await call.pass_on()
            return
        stack.broker.unsubscribe(node, str(uuid.UUID(sid)))
        await asgi.send_empty(send, 204)


async def _fast_subscribe(call: FastCall) -> None:
    parsed = await call.read_json()
    url = parsed.get("webhookUrl") if isinstance(parsed, dict) else None
    if not isinstance(url, str) or not _absolute_http_url(url):
        await call.pass_on()
        return
    scope = call.scope
    subscription = call.stack.broker.subscribe(call.node, call.node.analysis_id, url)
    base = URL(scope=scope)
    location = f"{base.scheme}://{base.netloc}{scope['path']}/{subscription['subscriptionId']}"
    await asgi.send_json(call.send, subscription, 201, [(b"location", location.encode("latin-1"))])


def _recipients(stack: FlameStack, node: SimNode, ids: Any) -> list[SimNode] | None:
    """The recipients ``send_message`` accepts for ``ids``; None when it would refuse them."""
    if not isinstance(ids, list) or not ids:
        return None
    recipients: list[SimNode] = []
    for node_id in ids:
        partner = stack.node_by_id(node_id) if isinstance(node_id, str) else None
        if partner is None or partner is node:
            return None
        recipients.append(partner)
    return recipients


async def _json_body(request: Request) -> Any:
    """The parsed JSON body, as Jackson would read it: 415 for a non-JSON media type, 400 if unreadable."""
    media_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise _ClientError(415, f"Content type '{media_type}' not supported")
    raw = await request.body()
    if not raw.strip():
        raise _ClientError(400, "No request body")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _ClientError(400, "Failed to read HTTP message") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _absolute_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


def _subscription_id(text: str) -> str:
    if not _UUID.match(text):
        raise _ClientError(400, f"'{text}' is not a valid UUID")
    return str(uuid.UUID(text))


def _error_body(request: Request, status: int) -> dict[str, Any]:
    """Spring Boot's default error attributes (WebFlux)."""
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "path": request.url.path,
        "status": status,
        "error": HTTPStatus(status).phrase,
        "requestId": uuid.uuid4().hex[:8],
    }


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    headers = dict(exc.headers or {})
    if (exc.status_code in (401, 403) and "WWW-Authenticate" in headers) or (
        exc.status_code == 404 and exc.detail == ""
    ):
        # Spring Security's bearer entry point and access-denied handler, ResponseEntity.notFound(): no body.
        return Response(status_code=exc.status_code, headers=headers)
    return JSONResponse(_error_body(request, exc.status_code), status_code=exc.status_code, headers=headers)


async def _client_error(request: Request, exc: _ClientError) -> Response:
    return JSONResponse(_error_body(request, exc.status), status_code=exc.status)

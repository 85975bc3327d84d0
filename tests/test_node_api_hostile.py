"""The analysis REST API and the node runtime against hostile or broken input.

Forged, expired, foreign and unverifiable tokens pushed to ``/token_refresh``; webhook deliveries from
senders that are not participants and acknowledgements of messages never sent; oversized and deeply
nested bodies; a token the services stop accepting mid-run; a broker outage at start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from flame.clients.base import RetryPolicy
from flame.config import NodeConfig
from flame.errors import ServiceUnavailableError
from flame.federated import FederationOptions
from flame.node import AsyncNode, Timeouts
from flame.node.inbox import MEMORY_FACTOR
from flame.sim.faults import FaultPlan, ServiceOutage, parse_faults
from flame.sim.federation import run_federation
from flame.sim.launch import Mode, node_config
from flame.sim.proxy import SidecarTransport
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.helpers_tokens import (
    claims_for,
    mint,
    new_rsa_key,
    public_jwk,
    running_jwks_server,
    unsigned_token,
)
from tests.test_federation import (
    ALL3,
    SLOW_ROUNDS,
    SumAggregator,
    SumAnalyzer,
    expected_total,
    subclass,
    write_sum_data,
)
from tests.test_node_runtime import FAST, QUICK_RETRY, Federation

MakeFederation = Callable[..., Awaitable[Federation]]


@pytest.fixture
async def federation() -> AsyncIterator[MakeFederation]:
    """``await federation(analysis_nodes=1, faults=..., mode=..., **settings)``: a started stack."""
    made: list[Federation] = []

    async def make(
        analysis_nodes: int = 1, faults: FaultPlan | None = None, mode: Mode = "inprocess", **settings: Any
    ) -> Federation:
        settings.setdefault("po_enabled", False)
        stack = FlameStack.create(
            analysis_nodes, settings=StackSettings.fast(**settings), faults=faults, seed=7
        )
        await stack.start()
        if mode == "served":
            await stack.serve()
        fed = Federation(stack, mode)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        await fed.aclose()


def signed_by(stack: FlameStack, name: str, claims: dict[str, Any]) -> str:
    """A token with ``claims`` signed by node ``name``'s emulated Keycloak (as a genuine one is)."""
    issuer = stack.node(name).issuer
    return jwt.encode(claims, issuer._key, algorithm="RS256", headers={"kid": issuer.kid})


# -- finding 3: /token_refresh checks the token before it swaps it in ---------------------------------------


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_token_refresh_refuses_tokens_the_node_could_not_use(
    federation: MakeFederation, mode: Mode
) -> None:
    fed = await federation(mode=mode)
    stack = fed.stack
    node_1 = await fed.start("node-1")
    await fed.start("aggregator")
    issuer = stack.node("node-1").issuer
    old = node_1.tokens.get()
    now = int(time.time())
    genuine = claims_for(stack.analysis_id, lifetime=600, iss=issuer.issuer)
    no_exp = {k: v for k, v in genuine.items() if k != "exp"}
    forged = {
        "unsigned (alg none)": unsigned_token({"alg": "none", "typ": "JWT"}, genuine),
        "RS256 header, made-up signature": unsigned_token(
            {"alg": "RS256", "kid": issuer.kid}, genuine, signature=b"\x00" * 256
        ),
        "signed by another key": mint(new_rsa_key(), issuer.kid, genuine),
        "expired": signed_by(stack, "node-1", {**genuine, "exp": now - 3600, "iat": now - 7200}),
        "another analysis": issuer.mint("another-analysis", 600),
        "no exp": signed_by(stack, "node-1", no_exp),
        "another node's Keycloak": stack.node("aggregator").issuer.mint(stack.analysis_id, 600),
        # beyond float range: math.isfinite raised OverflowError, and the handler answered 500
        "exp 10**400": signed_by(stack, "node-1", {**genuine, "exp": 10**400}),
        "iat 10**400": signed_by(stack, "node-1", {**genuine, "iat": 10**400}),
        "unsigned, exp 10**400": unsigned_token(
            {"alg": "RS256", "kid": issuer.kid}, {**genuine, "exp": 10**400}
        ),
    }
    async with fed.client("node-1") as client:
        before = (await client.get("/analysis/healthz")).json()["token_remaining_time"]
        for what, token in forged.items():
            answer = await client.post("/analysis/token_refresh", json={"token": token})
            assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text)
            assert answer.json()["detail"], what
            assert token not in answer.text and token.split(".")[1] not in answer.text, what
            assert node_1.tokens.get() == old, what
        after = (await client.get("/analysis/healthz")).json()["token_remaining_time"]
    assert abs(after - before) <= 2
    # the node still talks to its broker with the token it had
    assert len(await node_1.broker.participants()) == 2
    # a genuine new token is still taken
    fresh = issuer.mint(stack.analysis_id, 300)
    async with fed.client("node-1") as client:
        answer = await client.post("/analysis/token_refresh", json={"token": fresh})
    assert answer.status_code == 200, answer.text
    assert node_1.tokens.get() == fresh
    # a token issued before the current one is not swapped back in (racing refreshes)
    earlier = issuer.mint(stack.analysis_id, 3600, issued_at=time.time() - 120)
    async with fed.client("node-1") as client:
        answer = await client.post("/analysis/token_refresh", json={"token": earlier})
    assert answer.status_code == 400, answer.text
    assert node_1.tokens.get() == fresh
    # a token a service refused cannot be pushed again
    assert node_1.tokens.mark_rejected(fresh)
    newer = issuer.mint(stack.analysis_id, 900)
    async with fed.client("node-1") as client:
        assert (await client.post("/analysis/token_refresh", json={"token": newer})).status_code == 200
        answer = await client.post("/analysis/token_refresh", json={"token": fresh})
    assert answer.status_code == 400 and "already refused" in answer.json()["detail"], answer.text
    assert node_1.tokens.get() == newer


def node_with_jwks(jwks_url: str, token: str, analysis_id: str) -> AsyncNode:
    """A node runtime (not started) whose configuration names a JWKS URL."""
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False), seed=3)
    env = stack.env("node-1")
    env.update(ANALYSIS_ID=analysis_id, KEYCLOAK_TOKEN=token, FLAME_JWKS_URL=jwks_url)
    return AsyncNode(NodeConfig.from_env(env), serve_api=False, timeouts=FAST, retry=QUICK_RETRY)


async def test_token_refresh_verifies_the_signature_against_a_configured_jwks() -> None:
    key, other = new_rsa_key(), new_rsa_key()
    analysis_id = "8a0ef1b6-6f5e-4b0e-9d8e-0d2c5b3f1a11"
    first = mint(key, "k1", claims_for(analysis_id, lifetime=600))
    good = mint(key, "k1", claims_for(analysis_id, lifetime=900))
    with running_jwks_server() as keycloak, running_jwks_server() as broken:
        keycloak.set_keys(public_jwk(key, "k1"))
        broken.status = 503
        for jwks, pushed, status in (
            (broken, good, 503),  # cannot be verified now: the PO pushes again later
            (keycloak, mint(other, "k1", claims_for(analysis_id, lifetime=600)), 400),
            (keycloak, good, 200),
        ):
            node = node_with_jwks(jwks.url, first, analysis_id)
            transport = httpx.ASGITransport(app=node.api_app)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
                    answer = await client.post("/token_refresh", json={"token": pushed})
            finally:
                await node.stop()
            assert answer.status_code == status, answer.text
            assert node.tokens.get() == (pushed if status == 200 else first)
        assert broken.requests == 1


# -- finding 7: a refused token is reported expired, and the run goes on with the pushed one ----------------


@pytest.mark.integration
async def test_tokens_expiring_mid_run_are_replaced_and_the_run_finishes(tmp_path: Path) -> None:
    root = write_sum_data(tmp_path)
    deadline = 20.0
    faults = parse_faults("expire=node-1@0.3")
    # the pod orchestrator runs (every 0.1 s here) and pushes new tokens as on FLAME
    stack = FlameStack.create(
        3, data_root=root, settings=StackSettings.fast(po_healthz_timeout=500.0), faults=faults
    )
    options = FederationOptions(max_rounds=3, round_deadline=deadline, send_timeout=10.0)
    began = time.monotonic()
    try:
        run = await run_federation(
            stack,
            subclass(SumAnalyzer, delays=SLOW_ROUNDS),
            SumAggregator,
            options,
            timeout=3 * deadline,
            timeouts=Timeouts(startup=3.0, attempt=0.15, shutdown=1.0),
        )
    finally:
        await stack.aclose()
    took = time.monotonic() - began
    assert stack.events.select("fault.token_expiry", node="node-1")
    assert run.ok, run.report()
    assert run.result == expected_total([ALL3] * 3)
    assert stack.po.record("node-1").token_refreshes >= 1
    assert took < deadline / 2, f"the run took {took:.1f} s"


# -- finding 4: only participants' messages reach the inbox; acknowledgements only of what was sent -------


def forged(sender: str, category: str = "c", *, number: int = 1, akn_id: str | None = None) -> dict[str, Any]:
    """A webhook body as a (possibly lying) peer would send it."""
    return {
        "value": number,
        "meta": {
            "type": "outgoing",
            "category": category,
            "id": f"{sender[:4]}-{number}-beef",
            "akn_id": akn_id,
            "status": "unread",
            "sender": sender,
            "created_at": "2026-01-01 00:00:00.000000",
            "arrived_at": None,
            "number": number,
        },
    }


async def test_webhook_refuses_senders_that_are_not_participants_and_forged_acks(
    federation: MakeFederation,
) -> None:
    fed = await federation(analysis_nodes=2)
    aggregator, node_1, node_2 = await fed.start_all()
    stranger = "0d7c51f4-3c43-4d2b-a1d5-6f0c3f0e9b77"
    sent_before = node_1.messenger.sent
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:

        async def post(body: dict[str, Any]) -> httpx.Response:
            return await client.post("/webhook", json=body)

        # a sender that is not a participant, and one claiming to be this node itself
        for body in (forged(stranger), forged(node_1.node_id)):
            answer = await post(body)
            assert answer.status_code == 400, answer.text
            assert "participant" in answer.json()["detail"] or "itself" in answer.json()["detail"]
        assert len(node_1.inbox) == 0 and node_1.messenger.sent == sent_before

        # acknowledgements: of a message node-1 never sent, from a stranger, from a node it was not sent to
        message = node_1.messenger.envelope({"v": 1}, "c")
        mid = message["meta"]["id"]
        task = asyncio.ensure_future(
            node_1.messenger.send_prepared(message, [aggregator.node_id], timeout=2.0, attempt_timeout=2.0)
        )
        never_sent = forged(node_1.node_id, number=99, akn_id=aggregator.node_id)
        wrong_acker = {**message, "meta": {**message["meta"], "akn_id": node_2.node_id}}
        stranger_ack = {**message, "meta": {**message["meta"], "akn_id": stranger}}
        for body in (never_sent, wrong_acker, stranger_ack):
            answer = await post(body)
            assert answer.status_code == 400, answer.text
        assert node_1.inbox.acks(never_sent["meta"]["id"]) == set()
        assert node_2.node_id not in node_1.inbox.acks(mid) and stranger not in node_1.inbox.acks(mid)
        # the genuine acknowledgement still counts
        assert await task == ([aggregator.node_id], [])

        # a participant's message is stored and acknowledged as before
        answer = await post(aggregator.messenger.envelope({"v": 2}, "c"))
        assert answer.status_code == 200 and len(node_1.inbox) == 1


async def test_webhook_state_stays_bounded_under_a_flood_of_forgeries(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    _aggregator, node_1 = await fed.start_all()
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        for n in range(2000):
            fake = f"{n:08d}-0000-4000-8000-000000000000"
            await client.post("/webhook", json=forged(fake, number=n))
            await client.post("/webhook", json=forged(node_1.node_id, number=n, akn_id=fake))
    inbox = node_1.inbox
    assert len(inbox) == 0
    assert sum(len(acked) for acked in inbox._acks.values()) == 0
    assert len(inbox._seen) == 0


async def test_webhook_before_the_participants_are_known_asks_the_broker_to_retry() -> None:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False), seed=3)
    node = AsyncNode(NodeConfig.from_env(stack.env("node-1")), serve_api=False, timeouts=FAST)
    transport = httpx.ASGITransport(app=node.api_app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
            answer = await client.post("/webhook", json=forged(stack.node("aggregator").node_id))
        # the broker retries a delivery answered with a 5xx, and drops one answered with a 4xx
        assert answer.status_code == 503, answer.text
        assert len(node.inbox) == 0
    finally:
        await node.stop()


# -- finding 5: request limits -------------------------------------------------------------------------------

POST_ENDPOINTS = ("/webhook", "/token_refresh", "/partner_status")


def nested(depth: int) -> bytes:
    """JSON arrays nested ``depth`` deep: ``[[[...]]]``."""
    return b"[" * depth + b"]" * depth


@pytest.fixture
async def lone_node() -> AsyncIterator[AsyncNode]:
    """A node runtime that is not started: its API app answers, nothing else runs."""
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False), seed=3)
    node = AsyncNode(NodeConfig.from_env(stack.env("node-1")), serve_api=False, timeouts=FAST)
    yield node
    await node.stop()


async def test_an_oversized_body_is_refused_with_413_before_it_is_read_whole(
    lone_node: AsyncNode, caplog: pytest.LogCaptureFixture
) -> None:
    chunk = b" " * 1_048_576
    pulled = 0

    async def hundred_megabytes() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"meta": {"id": "x", "sender": "y", "category": "z"}, "blob": "'
        for _ in range(100):
            pulled += 1
            yield chunk
        yield b'"}'

    transport = httpx.ASGITransport(app=lone_node.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        answer = await client.post("/webhook", content=hundred_megabytes())
        assert answer.status_code == 413, answer.text
        assert pulled <= 8, f"{pulled} MB were read before the refusal"
        # a declared length over the limit is refused without reading the body
        for path in POST_ENDPOINTS:
            answer = await client.post(path, content=b"{}", headers={"Content-Length": "104857600"})
            assert answer.status_code == 413, (path, answer.text)
    assert "413" in caplog.text or "too large" in caplog.text


@pytest.mark.parametrize("depth", [65, 900, 1000, 100_000])
async def test_deeply_nested_json_is_refused_with_400_on_every_endpoint(
    lone_node: AsyncNode, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    transport = httpx.ASGITransport(app=lone_node.api_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        for path in POST_ENDPOINTS:
            for body in (
                nested(depth),
                b'{"meta": ' + nested(depth) + b"}",
                b'{"token": ' + nested(depth) + b"}",
            ):
                answer = await client.post(path, content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == 400, (path, depth, answer.status_code)
                assert "deep" in answer.json()["detail"]
    assert "nested" in caplog.text or "deep" in caplog.text


async def test_the_api_publishes_its_openapi_schema(lone_node: AsyncNode) -> None:
    transport = httpx.ASGITransport(app=lone_node.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis") as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths) >= {"/webhook", "/healthz", "/token_refresh", "/partner_status"}
    for path in POST_ENDPOINTS:
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[-1]
        assert name in schema["components"]["schemas"], name
        assert {"200", "400", "413"} <= set(paths[path]["post"]["responses"])
    health = paths["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health["$ref"].endswith("/Health")


# -- finding 8, first half: start-up requests are retried ----------------------------------------------------

PATIENT = RetryPolicy(attempts=6, base_delay=0.05, max_delay=0.2, token_wait=0.3)


class LosingSubscriptions(httpx.AsyncBaseTransport):
    """The network between a node and its broker: the first ``lose`` subscription POSTs fail with 503.

    ``taken``: the broker made the subscription but its answer was lost on the way back (the worst
    case for a retry); otherwise the broker never saw the request.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, lose: int, *, taken: bool) -> None:
        self.inner = inner
        self.lose = lose
        self.taken = taken

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        subscribing = request.method == "POST" and request.url.path.endswith("/messages/subscriptions")
        if subscribing and self.lose > 0:
            self.lose -= 1
            if self.taken:
                answer = await self.inner.handle_async_request(request)
                await answer.aread()
            return httpx.Response(503, json={"error": "Service Unavailable"})
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("taken", [False, True])
async def test_start_retries_the_subscription_and_subscribes_once(
    federation: MakeFederation, taken: bool
) -> None:
    fed = await federation()
    stack = fed.stack
    aggregator = await fed.start("aggregator", retry=PATIENT)
    inner = SidecarTransport(stack.app, stack.resolver("node-1"))
    node_1 = AsyncNode(
        node_config(stack, "node-1", "inprocess"),
        transport=LosingSubscriptions(inner, 2, taken=taken),
        serve_api=False,
        timeouts=FAST,
        retry=PATIENT,
    )
    stack.attach_analysis("node-1", node_1.api_app)
    fed.nodes["node-1"] = node_1
    await node_1.start()
    assert node_1.status == "started"
    subscriptions = list(stack.node("node-1").subscriptions.values())
    assert [s["webhookUrl"] for s in subscriptions] == [node_1.config.urls.webhook]
    assert await aggregator.send_message([node_1.node_id], "c", {"v": 1}) == ([node_1.node_id], [])
    assert len(node_1.inbox) == 1


async def test_a_start_that_fails_after_the_retries_reports_failed(federation: MakeFederation) -> None:
    fed = await federation(faults=FaultPlan([ServiceOutage("message-broker", start=0.0, end=60.0)]))
    with pytest.raises(ServiceUnavailableError) as caught:
        await fed.start("node-1", retry=PATIENT)
    assert caught.value.service == "message-broker"
    await fed.stack.po.wait_for_status("node-1", ("failed",), 5.0)


# -- stopping is bounded ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inprocess", "served"])
async def test_stop_returns_in_bounded_time_when_the_services_hang(
    federation: MakeFederation, mode: Mode
) -> None:
    fed = await federation(mode=mode)
    node_1 = await fed.start("node-1", timeouts=dataclasses.replace(FAST, request=30.0, shutdown=0.5))
    await fed.start("aggregator")
    # a listening socket that never answers: the broker and the pod orchestrator hang from now on
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        node_1.broker.base_url = node_1.po.base_url = url
        node_1.log("a line the pod orchestrator will never get")
        began = time.monotonic()
        await node_1.stop("executed")
        took = time.monotonic() - began
    assert took < 5 * 0.5 + 3.0, f"stop took {took:.1f} s"
    assert node_1.http.is_closed


@pytest.mark.integration
async def test_a_run_starting_during_a_broker_outage_finishes(tmp_path: Path) -> None:
    stack = FlameStack.create(
        3,
        data_root=write_sum_data(tmp_path),
        settings=StackSettings.fast(po_healthz_timeout=500.0),
        faults=parse_faults("outage=message-broker@0-1"),
    )
    options = FederationOptions(max_rounds=2, round_deadline=20.0, send_timeout=10.0)
    try:
        run = await run_federation(
            stack,
            SumAnalyzer,
            SumAggregator,
            options,
            timeout=60.0,
            timeouts=Timeouts(startup=5.0, attempt=0.15, shutdown=1.0),
        )
    finally:
        await stack.aclose()
    assert stack.events.select("fault.outage", service="message-broker")
    assert run.ok, run.report()
    assert run.result == expected_total([ALL3] * 2)


# -- review: a broker answer that is not {nodeId, nodeType} makes /token_refresh answer 503, not 500 ---------


def _replying(reply: bytes) -> type[BaseHTTPRequestHandler]:
    """A request handler that answers every GET with 200 and ``reply`` as JSON."""

    class Reply(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Reply


@pytest.mark.parametrize("reply", [b"<html>not json</html>", b'{"nodeId": 1}'])
async def test_token_refresh_with_a_malformed_broker_answer_is_503(reply: bytes) -> None:
    handler = _replying(reply)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False), seed=3)
    env = {**stack.env("node-1"), "FLAME_MESSAGE_BROKER_URL": f"http://127.0.0.1:{server.server_port}"}
    env.pop("FLAME_JWKS_URL", None)
    node = AsyncNode(NodeConfig.from_env(env), serve_api=False, timeouts=FAST)
    try:
        old = node.tokens.get()
        token = unsigned_token(
            {"alg": "RS256", "kid": "k"}, claims_for(node.config.analysis_id, lifetime=600)
        )
        transport = httpx.ASGITransport(app=node.api_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://analysis", timeout=10) as client:
            answer = await client.post("/token_refresh", json={"token": token})
        assert answer.status_code == 503, answer.text
        assert node.tokens.get() == old
    finally:
        await asyncio.wait_for(node.stop(), 10)
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- review: the inbox bounds the bytes a sender may hold, and acknowledgements in flight ------------------


async def test_webhook_refuses_a_sender_over_its_unread_byte_budget(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    blob = "x" * 1_000_000
    budget = node_1.inbox.max_unread_bytes_per_sender // MEMORY_FACTOR  # bytes on the wire
    answers = []
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis", timeout=30) as client:
        for n in range(budget // len(blob) + 5):
            body = {**forged(aggregator.node_id, number=n), "blob": blob}
            answers.append((await client.post("/webhook", json=body)).status_code)
            if answers[-1] != 200:
                break
        assert answers[-1] == 429, answers
        assert len(answers) <= budget // len(blob) + 1
        stored = node_1.inbox.unread_bytes(aggregator.node_id)
        assert 0 < stored <= node_1.inbox.max_unread_bytes_per_sender
        # once the analysis has read them, the sender's resend is taken
        node_1.inbox.mark_read(node_1.inbox.messages())
        assert node_1.inbox.unread_bytes(aggregator.node_id) == 0
        body = {**forged(aggregator.node_id, number=len(answers) - 1), "blob": blob}
        assert (await client.post("/webhook", json=body)).status_code == 200
        # deleting read messages changes nothing; deleting an unread one gives its budget back
        node_1.inbox.clear("read")
        cost = node_1.inbox.unread_bytes(aggregator.node_id)
        assert cost > 0
        assert node_1.inbox.clear("all") == 1
        assert node_1.inbox.unread_bytes(aggregator.node_id) == 0


async def test_duplicate_deliveries_start_one_acknowledgement(federation: MakeFederation) -> None:
    fed = await federation(analysis_nodes=1)
    aggregator, node_1 = await fed.start_all()
    body = {**forged(aggregator.node_id, number=1), "blob": "y" * 100_000}
    transport = httpx.ASGITransport(app=node_1.api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://analysis", timeout=30) as client:
        answers = await asyncio.gather(*(client.post("/webhook", json=body) for _ in range(200)))
        in_flight = len(node_1.messenger._background)
    assert all(a.status_code == 200 for a in answers)
    assert in_flight <= 1, in_flight
    assert await node_1.messenger.drain(10)
    assert node_1.messenger._acking == set()
    assert len(node_1.inbox) == 1

"""The emulated stack as a whole: sidecar routing, environments, restarts, faults, the pod orchestrator."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI, Request

from flame.config import NodeConfig
from flame.sim import FlameStack, StackSettings
from flame.sim.faults import (
    DeliveryFault,
    FaultPlan,
    NodeOffline,
    NodeRestart,
    ServiceOutage,
    TokenExpiry,
    parse_faults,
)
from flame.sim.issuer import JWKS_PATH, InvalidToken
from tests.conftest import StackHarness


class FakeAnalysis:
    """A stand-in analysis REST API (the one the PO calls) that records what the PO sends it."""

    def __init__(self, remaining: int = 600, status: str = "executing", hang: float = 0.0) -> None:
        self.remaining = remaining
        self.status = status
        self.hang = hang
        self.tokens: list[str] = []
        self.partner_status: list[dict[str, str]] = []
        self.got_token = asyncio.Event()
        self.got_partner_status = asyncio.Event()
        self.app = FastAPI()

        @self.app.get("/healthz")
        async def healthz() -> dict[str, Any]:
            if self.hang:
                await asyncio.sleep(self.hang)
            return {"status": self.status, "token_remaining_time": self.remaining}

        @self.app.post("/token_refresh")
        async def token_refresh(request: Request) -> dict[str, str]:
            body = await request.json()
            self.tokens.append(body["token"])
            self.remaining = 600
            self.got_token.set()
            return {"message": "token refreshed"}

        @self.app.post("/partner_status")
        async def partner_status(request: Request) -> dict[str, str]:
            body = await request.json()
            self.partner_status.append(body["partner_status"])
            self.got_partner_status.set()
            return {"status": self.status}


# -- routing ------------------------------------------------------------------------------------------


async def test_healthz_and_unrouted_paths(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    client = harness.client("node-1")
    answer = await client.get("/healthz")
    assert (answer.status_code, answer.text) == (200, "healthy")
    other = "00000000-0000-4000-8000-000000000000"
    for path in (
        f"/message-broker/analyses/{other}/participants",
        "/message-broker/actuator/health",
        "/storage/docs",
        f"/hub-adapter/kong/datastore/{other}",
        "/po/other",
        "/nothing-here",
    ):
        answer = await client.get(path, headers=harness.auth("node-1"))
        assert answer.status_code == 404, path


async def test_served_stack_gives_each_node_its_own_sidecar_address() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    try:
        base = await stack.serve()
        node = stack.node("node-2")
        path = f"/message-broker/analyses/{stack.analysis_id}/participants/self"
        auth = {"Authorization": f"Bearer {node.token}"}
        async with httpx.AsyncClient() as client:
            for url in (stack.node_base_url("node-2") + path, f"{base}/node/node-2{path}"):
                answer = await client.get(url, headers=auth)
                assert answer.status_code == 200, url
                assert answer.json() == {"nodeId": node.node_id, "nodeType": "default"}
            # an unmodified FLAME client sends Host nginx-{DEPLOYMENT_NAME}
            answer = await client.get(
                stack.node_base_url("node-2") + path, headers={**auth, "Host": node.host}
            )
            assert answer.status_code == 200
            old = await client.get(
                stack.node_base_url("node-2") + "/healthz", headers={"Host": "nginx-analysis-x-0"}
            )
            assert old.status_code == 502
            assert (await client.get(f"{base}/node/nobody/healthz")).status_code == 404
            assert (await client.get(f"{base}/healthz")).status_code == 404
    finally:
        await stack.aclose()


async def test_environment_is_what_a_flame_container_gets(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    env = stack.env("node-1")
    assert set(env) - {"FLAME_BASE_URL"} == {
        "ANALYSIS_ID",
        "PROJECT_ID",
        "DEPLOYMENT_NAME",
        "KEYCLOAK_TOKEN",
        "DATA_SOURCE_TOKEN",
    }
    assert ("FLAME_BASE_URL" in env) == (harness.mode == "served")
    assert env["DEPLOYMENT_NAME"] == f"analysis-{stack.analysis_id}-0"
    assert stack.env("aggregator")["DATA_SOURCE_TOKEN"] == "none_needed"
    config = NodeConfig.from_env(env)
    assert config.analysis_id == stack.analysis_id and config.restart_counter == 0
    claims = jwt.decode(env["KEYCLOAK_TOKEN"], options={"verify_signature": False})
    assert claims["client_id"] == claims["azp"] == stack.analysis_id
    assert claims["iss"].endswith("/realms/flame") and claims["exp"] > claims["iat"]


async def test_jwks_served_at_keycloak_path_verifies_node_tokens() -> None:
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False))
    try:
        await stack.serve()
        url = stack.jwks_url("node-1")
        assert url.endswith(JWKS_PATH)
        async with httpx.AsyncClient() as client:
            keys = (await client.get(url)).json()
        key = jwt.PyJWKSet.from_dict(keys).keys[0]
        claims = jwt.decode(stack.node("node-1").token, key.key, algorithms=["RS256"], audience="account")
        assert claims["client_id"] == stack.analysis_id
        # a token of another node's Keycloak has another issuer: the services reject it
        with pytest.raises(InvalidToken):
            stack.node("node-1").issuer.verify(stack.node("node-2").token)
    finally:
        await stack.aclose()


async def test_analysis_api_is_reached_through_the_sidecar(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    fake = FakeAnalysis(remaining=123)
    await harness.attach("node-1", fake.app)
    answer = await harness.client("node-1").get("/analysis/healthz")
    assert answer.json() == {"status": "executing", "token_remaining_time": 123}
    not_running = await harness.client("node-2").get("/analysis/healthz")
    assert not_running.status_code == 502


# -- restarts and timed faults ---------------------------------------------------------------------------


async def test_restart_gives_new_deployment_and_token_and_old_host_stops_resolving(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    seen: list[dict[str, str]] = []
    stack.on_restart(lambda node, env: seen.append(env))
    old_host, old_token = stack.node("node-1").host, stack.node("node-1").token
    env = await stack.restart_node("node-1")
    assert env["DEPLOYMENT_NAME"].endswith("-1") and env["KEYCLOAK_TOKEN"] != old_token
    assert seen == [env]
    assert stack.events.select("node.restart", node="node-1")
    async with stack.client("node-1") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{old_host}/healthz")
        assert (await client.get(f"http://{stack.node('node-1').host}/healthz")).status_code == 200


async def test_timed_faults_restart_and_expire_tokens() -> None:
    plan = FaultPlan([TokenExpiry("node-1", at=0.02), NodeRestart("node-2", at=0.05)], seed=3)
    stack = FlameStack.create(2, settings=StackSettings.fast(po_enabled=False), faults=plan)
    async with stack:
        token = stack.node("node-1").token
        await stack.events.wait_for("node.restart", node="node-2", timeout=5)
        await stack.events.wait_for("fault.token_expiry", node="node-1", timeout=5)
        async with stack.client("node-1") as client:
            answer = await client.get(
                f"/message-broker/analyses/{stack.analysis_id}/participants/self",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 401
            answer = await client.get("/storage/local/tags", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 403


async def test_outage_window_answers_5xx_and_is_recorded(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    stack.faults.add(ServiceOutage("storage", start=0, end=math.inf, node="node-1", status=503))
    client = harness.client("node-1")
    answer = await client.get("/storage/local/tags", headers=harness.auth("node-1"))
    assert answer.status_code == 503
    other = await harness.client("node-2").get("/storage/local/tags", headers=harness.auth("node-2"))
    assert other.status_code == 200
    assert [e.detail["status"] for e in stack.events.select("fault.outage", node="node-1")] == [503]


async def test_offline_node_cannot_be_reached(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    stack.faults.add(NodeOffline("node-1", start=0, end=math.inf))
    if harness.mode == "inprocess":
        with pytest.raises(httpx.ConnectError):
            await harness.client("node-1").get("/healthz")
    else:
        assert (await harness.client("node-1").get("/healthz")).status_code == 502
    assert (await harness.client("node-2").get("/healthz")).status_code == 200


# -- fault plans -----------------------------------------------------------------------------------------


def test_parse_faults_reads_every_rule() -> None:
    plan = parse_faults(
        "drop=0.2@node-1>node-2; duplicate=0.1; reorder=0.5:0.2; delay=1:0.05; "
        "outage=storage@2-4@node-1; outage=message-broker@1; expire=node-1@3; restart=node-2@5; offline=node-3@2-6",
        seed=9,
    )
    assert plan.rules == [
        DeliveryFault("drop", 0.2, "node-1", "node-2"),
        DeliveryFault("duplicate", 0.1),
        DeliveryFault("reorder", 0.5, seconds=0.2),
        DeliveryFault("delay", 1.0, seconds=0.05),
        ServiceOutage("storage", 2.0, 4.0, "node-1"),
        ServiceOutage("message-broker", 1.0, math.inf),
        TokenExpiry("node-1", 3.0),
        NodeRestart("node-2", 5.0),
        NodeOffline("node-3", 2.0, 6.0),
    ]
    assert plan.seed == 9


@pytest.mark.parametrize("spec", ["explode=1", "drop=2", "drop=x", "outage=storage", "restart=node-1"])
def test_parse_faults_rejects_bad_rules_with_a_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="cannot read fault rule"):
        parse_faults(spec)


def test_fault_decisions_are_deterministic_under_a_seed() -> None:
    def decisions(seed: int) -> list[Any]:
        plan = parse_faults("drop=0.3; duplicate=0.3; reorder=0.5:0.1", seed=seed)
        return [plan.delivery("node-1", "node-2", 0.0) for _ in range(200)]

    assert decisions(7) == decisions(7)
    assert decisions(7) != decisions(8)
    drops = sum(d.drop for d in decisions(7))
    assert 30 < drops < 90


def test_pair_rules_apply_only_to_their_pair_and_limits_hold() -> None:
    plan = FaultPlan([DeliveryFault("drop", sender="a", receiver="b", limit=2)])
    assert not plan.delivery("b", "a", 0).drop
    assert [plan.delivery("a", "b", 0).drop for _ in range(4)] == [True, True, False, False]


# -- pod orchestrator ------------------------------------------------------------------------------------


async def test_stream_logs_validates_and_keeps_status_and_progress(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    client = harness.client("node-1")
    entry = {
        "log": "hi",
        "log_type": "info",
        "analysis_id": stack.analysis_id,
        "status": "executing",
        "progress": 40,
    }
    assert (await client.post("/po/stream_logs", json=entry)).status_code == 401
    assert (
        await client.post("/po/stream_logs", json=entry, headers=harness.auth("node-1"))
    ).status_code == 200
    for bad in ({**entry, "log_type": "loud"}, {**entry, "progress": 101}, {"log": "x"}):
        answer = await client.post("/po/stream_logs", json=bad, headers=harness.auth("node-1"))
        assert answer.status_code == 422
    lower = {**entry, "progress": 10, "status": "executed"}
    await client.post("/po/stream_logs", json=lower, headers=harness.auth("node-1"))
    record = stack.po.record("node-1")
    assert (record.status, record.progress, len(record.logs)) == ("executed", 40, 2)
    assert stack.events.select("po.progress_decreased", node="node-1")


async def test_po_refreshes_tokens_and_pushes_partner_status(make_stack: Any) -> None:
    harness: StackHarness = await make_stack()
    stack = harness.stack
    fake = FakeAnalysis(remaining=0)
    await harness.attach("node-1", fake.app)
    old = stack.node("node-1").token
    await stack.po.check(stack.node("node-1"))
    await asyncio.wait_for(fake.got_token.wait(), 5)
    assert fake.tokens == [stack.node("node-1").token] and fake.tokens[0] != old
    stack.node("node-1").issuer.verify(fake.tokens[0])
    assert fake.partner_status[0] == {
        stack.node("aggregator").node_id: "starting",
        stack.node("node-2").node_id: "starting",
    }
    assert stack.events.select("po.token_refresh", node="node-1", status=200)


async def test_po_loop_restarts_a_starting_node_whose_healthz_hangs() -> None:
    settings = StackSettings.fast(po_period=1.0, po_healthz_timeout=1.0)
    stack = FlameStack.create(1, settings=settings)
    async with stack:
        fake = FakeAnalysis(hang=1.0)
        stack.attach_analysis("node-1", fake.app)
        await stack.events.wait_for("po.restart", node="node-1", timeout=5)
        assert stack.node("node-1").restart_counter == 1


async def test_po_marks_an_executing_node_failed_when_healthz_fails() -> None:
    # the real PO's rule: an executing node whose /healthz does not answer within the check's window
    # is failed and stopped, not restarted; a node that answers "stuck" is restarted
    settings = StackSettings.fast(po_enabled=False, po_healthz_timeout=50.0)
    stack = FlameStack.create(1, settings=settings)
    async with stack:
        fake = FakeAnalysis(hang=5.0)
        stack.attach_analysis("node-1", fake.app)
        stack.po.record("node-1").status = "executing"
        stack.po.record("node-1").executing = True
        await stack.po.check(stack.node("node-1"))
        assert stack.po.status("node-1") == "failed"
        assert await stack.po.wait_for_status("node-1", ("failed",), timeout=1) == "failed"
        assert "no answer to /healthz for 0.5 s" in (stack.po.record("node-1").error or "")
        assert stack.node("node-1").restart_counter == 0
        assert stack.analysis_client("node-1") is None  # its pod was stopped

"""A node running PrivateAIM's SDK, played from the HTTP contract alone, in a ``flame.star`` federation.

The fake node speaks raw HTTP (httpx) to its sidecar on the emulated stack: its own webhook subscription,
the message envelope with exactly PrivateAIM's ``meta`` fields, acknowledgements (the body echoed to the
sender with ``akn_id`` set), and intermediate data the PrivateAIM way: ``pickle.dumps`` uploaded with
``PUT /storage/intermediate`` and announced as ``{"result_id": {receiver: "<uuid>?remote_node_id=<own id>"}}``,
read back with ``GET /storage/intermediate/...`` and ``pickle.loads``. It plays the analyzer once and the
aggregator once; the rest of the federation runs ``StarModel`` on our SDK.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import pickle
import re
import secrets
from datetime import datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flame.errors import PickleRefusedError
from flame.node.loop import LoopThread
from flame.sim import FlameStack, StackSettings
from flame.sim.node import NodeSpec
from flame.star import StarAggregator, StarAnalyzer, StarModel, run_star_nodes

META_FIELDS = {"type", "category", "id", "akn_id", "status", "sender", "created_at", "arrived_at", "number"}
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
WAIT = 20.0
#: the fake resends unacknowledged messages this often (a receiver may not be subscribed yet)
RESEND = 0.25


def now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


class PrivateAIMNode:
    """One analysis container running PrivateAIM's SDK, as it behaves over HTTP."""

    def __init__(self, stack: FlameStack, name: str) -> None:
        self.stack = stack
        self.name = name
        sim = stack.node(name)
        self.analysis = stack.analysis_id
        # raw httpx, through the node's sidecar (``http://nginx-{DEPLOYMENT_NAME}``)
        self.http = stack.client(name, headers={"Authorization": f"Bearer {sim.token}"}, timeout=10.0)
        self.host = sim.host
        self.node_id = ""
        self.role = ""
        self.partners: list[dict[str, str]] = []
        self.inbox: dict[str, dict[str, Any]] = {}
        self.acks: dict[str, set[str]] = {}
        self.received_meta: list[dict[str, Any]] = []
        self.numbers = itertools.count(1)
        self.tasks: set[asyncio.Future[None]] = set()
        self.changed = asyncio.Condition()
        self.app = Starlette(routes=[Route("/webhook", self.webhook, methods=["POST"])])

    # -- the analysis REST API: the broker delivers here ------------------------------------------------

    async def webhook(self, request: Request) -> JSONResponse:
        body = await request.json()
        meta = body["meta"]
        if meta["akn_id"] is None:
            self.received_meta.append(dict(meta))
            if meta["id"] not in self.inbox:
                stored = copy.deepcopy(body)
                stored["meta"]["type"] = "incoming"
                self.inbox[meta["id"]] = stored
            ack = copy.deepcopy(body)
            ack["meta"]["akn_id"] = self.node_id
            ack["meta"]["arrived_at"] = now()
            task = asyncio.ensure_future(self.post([meta["sender"]], ack))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.acks.setdefault(meta["id"], set()).add(meta["akn_id"])
        async with self.changed:
            self.changed.notify_all()
        return JSONResponse({"status": "received"})

    # -- start-up: nginx health, participants/self, subscription, participants -----------------------

    async def start(self) -> None:
        assert (await self.http.get("/healthz")).status_code == 200
        me = (await self.http.get(f"/message-broker/analyses/{self.analysis}/participants/self")).json()
        self.node_id, self.role = me["nodeId"], me["nodeType"]
        self.stack.attach_analysis(self.name, self.app)
        answer = await self.http.post(
            f"/message-broker/analyses/{self.analysis}/messages/subscriptions",
            json={"webhookUrl": f"http://{self.host}/analysis/webhook"},
        )
        assert answer.status_code == 201 and answer.headers["Location"]
        assert answer.json()["webhookUrl"] == f"http://{self.host}/analysis/webhook"
        everyone = (await self.http.get(f"/message-broker/analyses/{self.analysis}/participants")).json()
        self.partners = [p for p in everyone if p["nodeId"] != self.node_id]

    def partner(self, node_type: str) -> list[str]:
        return [p["nodeId"] for p in self.partners if p["nodeType"] == node_type]

    # -- messages ----------------------------------------------------------------------------------------

    async def post(self, recipients: list[str], message: dict[str, Any]) -> None:
        answer = await self.http.post(
            f"/message-broker/analyses/{self.analysis}/messages",
            json={"recipients": recipients, "message": message},
        )
        assert answer.status_code == 202, answer.text

    async def send(self, recipients: list[str], category: str, body: dict[str, Any]) -> None:
        """Send with PrivateAIM's envelope and resend to whoever has not acknowledged."""
        number = next(self.numbers)
        message = dict(body)
        message["meta"] = {
            "type": "outgoing",
            "category": category,
            "id": f"{self.node_id[:4]}-{number}-{secrets.token_hex(2)}",
            "akn_id": None,
            "status": "unread",
            "sender": self.node_id,
            "created_at": now(),
            "arrived_at": None,
            "number": number,
        }
        message_id = message["meta"]["id"]
        for _attempt in range(int(WAIT / RESEND)):
            missing = [r for r in recipients if r not in self.acks.get(message_id, set())]
            if not missing:
                return
            await self.post(missing, message)
            await self.wait(lambda: all(r in self.acks.get(message_id, set()) for r in recipients), RESEND)
        raise AssertionError(f"{category} not acknowledged by {missing}")

    async def wait(self, predicate: Any, timeout: float) -> bool:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def take(self, sender: str, category: str) -> dict[str, Any]:
        """The next unread message of ``category`` from ``sender`` (marked read)."""

        def unread() -> list[dict[str, Any]]:
            return [
                m
                for m in self.inbox.values()
                if m["meta"]["sender"] == sender
                and m["meta"]["category"] == category
                and m["meta"]["status"] == "unread"
            ]

        assert await self.wait(lambda: bool(unread()), WAIT), f"no {category} from {sender}"
        message = unread()[0]
        message["meta"]["status"] = "read"
        return message

    # -- intermediate data, pickled ---------------------------------------------------------------------

    async def send_data(self, receivers: list[str], data: Any) -> None:
        ids = {}
        for receiver in receivers:
            answer = await self.http.put(
                "/storage/intermediate",
                files={"file": ("result_ab12_250101000000", pickle.dumps(data))},
                data={"remote_node_id": receiver},
            )
            assert answer.status_code == 200, answer.text
            ids[receiver] = answer.json()["url"].split("/")[-1]  # "<uuid>?remote_node_id=<own id>"
            assert ids[receiver].endswith(f"?remote_node_id={self.node_id}")
        await self.send(receivers, "intermediate_data", {"result_id": ids})

    async def await_data(self, sender: str) -> Any:
        message = await self.take(sender, "intermediate_data")
        ref = message["result_id"][self.node_id]
        answer = await self.http.get(f"/storage/intermediate/{ref}")
        assert answer.status_code == 200, answer.text
        return pickle.loads(answer.content)  # what PrivateAIM's SDK does with every payload

    # -- PrivateAIM's StarModel, both roles ---------------------------------------------------------------

    async def run_analyzer(self, value: int) -> list[Any]:
        aggregator = self.partner("aggregator")[0]
        await self.send([aggregator], "ready_check", {})
        seen = []
        await self.send_data([aggregator], value)
        seen.append(await self.await_data(aggregator))  # iterative: the aggregate comes back, pickled
        await self.send_data([aggregator], value)
        await self.take(aggregator, "analysis_finished")
        return seen

    async def run_aggregator(self) -> dict[str, Any]:
        analyzers = self.partner("default")
        await self.send(analyzers, "ready_check", {})
        last = None
        for _round in range(10):
            values = [await self.await_data(a) for a in analyzers]
            result = {"total": sum(values), "round": _round}
            if last is not None and result["total"] == last["total"]:
                answer = await self.http.put(
                    "/storage/final", files={"file": ("result_cd34_250101000000.txt", str(result).encode())}
                )
                assert answer.status_code == 204, answer.text
                await self.send(analyzers, "analysis_finished", {})
                return result
            await self.send_data(analyzers, result)
            last = result
        raise AssertionError("no convergence")

    async def aclose(self) -> None:
        await self.http.aclose()


class ValueAnalyzer(StarAnalyzer):
    """Sends its one number; checks the aggregate it gets back."""

    def analysis_method(self, data: Any, aggregator_results: Any) -> Any:
        if aggregator_results is not None:
            assert aggregator_results["total"] > 0
        return data[0]


class SumAggregator(StarAggregator):
    def aggregation_method(self, analysis_results: list[Any]) -> Any:
        return {"total": sum(analysis_results), "round": self.num_iterations}

    def has_converged(self, result: Any, last_result: Any) -> bool:
        return last_result is not None and result["total"] == last_result["total"]


def federation(fake_name: str, fake_role: str, payload: str) -> tuple[Any, Any, PrivateAIMNode]:
    """Run ``StarModel`` on every node but ``fake_name``, which PrivateAIM's SDK plays."""
    specs = [NodeSpec("aggregator", "aggregator"), NodeSpec("node-1"), NodeSpec("node-2")]
    stack = FlameStack(specs, settings=StackSettings.fast(po_enabled=False))
    loop = LoopThread("interop")
    try:
        loop.run(stack.start(), 30)
        fake = PrivateAIMNode(stack, fake_name)
        loop.run(fake.start(), 30)
        assert fake.role == fake_role
        play = fake.run_analyzer(7) if fake_role == "default" else fake.run_aggregator()
        played = loop.submit(play)
        ours = [n for n in stack.nodes if n != fake_name]
        values = {"node-1": {"fhir": [5]}, "node-2": {"fhir": [7]}}

        def target(name: str) -> StarModel:
            return StarModel(ValueAnalyzer, SumAggregator, "fhir", simple_analysis=False)

        run = run_star_nodes(stack, target, nodes=ours, loop=loop, timeout=60, payload=payload, data=values)
        if run.errors:
            played.cancel()
            run.check()
        fake_result = played.result(WAIT)
        assert all(run.outcomes[n].status == "executed" for n in ours), run.report()
        return run, fake_result, fake
    finally:
        try:
            loop.run(stack.aclose(), 30)
        finally:
            loop.stop()


def check_envelopes(fake: PrivateAIMNode) -> None:
    """What our nodes sent the PrivateAIM node carries exactly PrivateAIM's envelope."""
    assert fake.received_meta
    for meta in fake.received_meta:
        assert set(meta) == META_FIELDS
        assert meta["type"] == "outgoing" and meta["akn_id"] is None and meta["arrived_at"] is None
        assert meta["status"] == "unread" and TIME.match(meta["created_at"])
        assert re.fullmatch(rf"{re.escape(meta['sender'][:4])}-{meta['number']}-[0-9a-f]{{4}}", meta["id"])
    assert {m["category"] for m in fake.received_meta} >= {"ready_check", "intermediate_data"}


def test_a_privateaim_analysis_node_in_a_flame_star_federation() -> None:
    # ours: the aggregator and node-1 (value 5); PrivateAIM's SDK: node-2 (value 7). Default payload mode:
    # our aggregator reads the pickles with the restricted unpickler and answers node-2 in pickle.
    run, seen, fake = federation("node-2", "default", payload="auto")
    (content,) = run.final_results.values()
    assert content.decode() == str({"total": 12, "round": 1})
    assert seen == [{"total": 12, "round": 0}]  # the aggregate reached PrivateAIM's node as a pickle
    check_envelopes(fake)
    assert "analysis_finished" in {m["category"] for m in fake.received_meta}


def test_a_privateaim_aggregator_in_a_flame_star_federation() -> None:
    # ours: node-1 (5) and node-2 (7); PrivateAIM's SDK aggregates. It unpickles whatever it reads, so
    # our nodes send pickle (FLAME_COMPAT_PAYLOAD=pickle), and read its pickled aggregate.
    run, result, fake = federation("aggregator", "aggregator", payload="pickle")
    assert result == {"total": 12, "round": 1}
    (content,) = run.final_results.values()
    assert content.decode() == str(result)
    check_envelopes(fake)


def test_codec_mode_refuses_a_privateaim_peer() -> None:
    with pytest.raises(PickleRefusedError, match="FLAME_COMPAT_PAYLOAD"):
        federation("node-2", "default", payload="codec")

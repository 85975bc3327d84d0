"""Fuzzing the analysis REST API: thousands of generated requests, not one answered with a 5xx.

The requests go in-process (httpx's ASGI transport) to the API app of a real, started node runtime on
the emulated stack, so valid deliveries are stored and acknowledged through the broker as on a node.
Bodies come from the published schema (messages with their envelope, token refreshes, partner
statuses), from mutations of it (wrong types, strangers and this node as senders, forged
acknowledgements) and from garbage: random bytes, invalid UTF-8, huge numbers, deep nesting, wrong
content types and methods, unknown paths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.node import AsyncNode, LoopThread, Timeouts
from flame.sim.launch import start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack

#: requests per example: each example is sent to every POST endpoint and as one odd request
PER_EXAMPLE = 4
EXAMPLES = 1300
PATHS = ("/webhook", "/token_refresh", "/partner_status")


@dataclass
class Target:
    """The started node whose API is fuzzed, on its own loop thread."""

    loop: LoopThread
    node: AsyncNode
    client: httpx.AsyncClient
    ids: dict[str, str]
    statuses: Counter[int]

    def send(self, requests: list[tuple[str, str, bytes, dict[str, str]]]) -> list[int]:
        """Send the requests concurrently; their statuses."""

        async def one(method: str, path: str, content: bytes, headers: dict[str, str]) -> int:
            answer = await self.client.request(method, path, content=content, headers=headers)
            return answer.status_code

        async def every() -> list[int]:
            return list(await asyncio.gather(*(one(*request) for request in requests)))

        statuses = self.loop.run(every(), 20.0, "fuzz requests")
        self.statuses.update(statuses)
        return statuses


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    loop = LoopThread(name="fuzz")
    settings_ = StackSettings.fast(po_enabled=False)
    timeouts = Timeouts(startup=5.0, request=5.0, send=2.0, attempt=0.5, shutdown=2.0)

    async def setup() -> tuple[FlameStack, AsyncNode, AsyncNode, httpx.AsyncClient]:
        stack = FlameStack.create(1, settings=settings_, seed=9)
        await stack.start()
        aggregator = await start_node(stack, "aggregator", timeouts=timeouts)
        node = await start_node(stack, "node-1", timeouts=timeouts)
        transport = httpx.ASGITransport(app=node.api_app)
        client = httpx.AsyncClient(transport=transport, base_url="http://analysis", timeout=10.0)
        return stack, aggregator, node, client

    stack, aggregator, node, client = loop.run(setup(), 30.0, "starting the fuzz target")
    # thousands of refusals, each logged as a warning: keep them out of the captured output
    quiet = [logging.getLogger(name) for name in ("flame.node.api", "flame.node.messaging")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    ids = {"self": node.node_id, "aggregator": aggregator.node_id}
    try:
        yield Target(loop, node, client, ids, Counter())
    finally:

        async def teardown() -> None:
            await client.aclose()
            await node.stop()
            await aggregator.stop()
            await stack.aclose()

        loop.run(teardown(), 30.0, "stopping the fuzz target")
        loop.stop()
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


# -- strategies ------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**310),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
node_ids = st.sampled_from(["self", "aggregator", "stranger", ""]) | st.text(max_size=40)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A webhook body shaped like the schema, with any field possibly wrong."""
    meta: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=20) | json_values),
        "sender": draw(node_ids),
        "category": draw(st.sampled_from(["ready_check", "intermediate_data", "c"]) | json_values),
        "akn_id": draw(st.none() | node_ids | json_values),
        "type": "outgoing",
        "status": draw(st.sampled_from(["unread", "read", "odd"])),
        "number": draw(st.integers()),
    }
    if draw(st.booleans()):
        del meta[draw(st.sampled_from(sorted(meta)))]
    body: dict[str, Any] = draw(
        st.dictionaries(st.text(max_size=8).filter(lambda k: k != "meta"), json_values, max_size=3)
    )
    body["meta"] = meta if draw(st.integers(0, 9)) else draw(json_values)
    return body


control_bodies = st.one_of(
    st.fixed_dictionaries({"token": st.text(max_size=60) | json_values}),
    st.fixed_dictionaries(
        {
            "partner_status": st.dictionaries(
                node_ids, st.sampled_from(["executed", "failed", "stopped"]) | json_values
            )
        }
    ),
    st.dictionaries(st.text(max_size=12), json_values, max_size=3),
)


def encode(value: Any, ids: dict[str, str]) -> bytes:
    text = json.dumps(value)
    for alias in ("self", "aggregator"):
        text = text.replace(f'"{alias}"', json.dumps(ids[alias]))
    return text.encode()


raw_garbage = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [b"\xff\xfe\x00{", b'{"token": "\xc3\x28"}', b"1" * 5000, b"-" + b"9" * 4400, b"NaN", b"[1e99999]"]
    ),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.integers(1, 300).map(lambda depth: b'{"meta":' * depth + b"{}" + b"}" * depth),
)
content_types = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "",
        "application/json; charset=latin-1",
    ]
)
odd_requests = st.tuples(
    st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"]),
    st.sampled_from([*PATHS, "/healthz", "/openapi.json", "/", "/webhook/", "/%00", "/docs"])
    | st.text(alphabet=string.ascii_letters + string.digits + "-._~%/?&=", max_size=10).map(
        lambda t: "/" + t
    ),
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[Any, bytes | None]:
    """Either a JSON value (encoded per request, with node ids filled in) or raw bytes."""
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        return draw(messages()), None
    if kind <= 7:
        return draw(control_bodies), None
    return None, draw(raw_garbage)


@pytest.mark.integration
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(body=bodies(), content_type=content_types, odd=odd_requests)
def test_no_request_gets_a_5xx(
    target: Target, body: tuple[Any, bytes | None], content_type: str, odd: tuple[str, str]
) -> None:
    value, raw = body
    content = raw if raw is not None else encode(value, target.ids)
    headers = {"Content-Type": content_type} if content_type else {}
    method, odd_path = odd
    requests = [("POST", path, content, headers) for path in PATHS]
    requests.append((method, odd_path, content if method in ("POST", "PUT", "PATCH") else b"", headers))
    statuses = target.send(requests)
    for (method, path, _, _), status in zip(requests, statuses, strict=True):
        assert status < 500, (method, path, content[:200], status)


@pytest.mark.integration
def test_the_fuzz_sent_enough_requests_and_saw_both_outcomes(target: Target) -> None:
    """Runs after the fuzz (same module-scoped target): at least 5,000 requests, some accepted."""
    total = sum(target.statuses.values())
    assert total >= EXAMPLES * PER_EXAMPLE >= 5000, target.statuses
    assert not [s for s in target.statuses if s >= 500], target.statuses
    assert target.statuses[200] > 0 and target.statuses[400] > 0, target.statuses

"""StorageClient against the emulated node stack, in both modes (in-process and served)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from flame.clients.base import RetryPolicy
from flame.clients.storage import (
    ALREADY_READ_HINT,
    IntermediateRef,
    StorageArgumentError,
    StorageClient,
    check_tag,
    default_filename,
    parse_intermediate_id,
)
from flame.codec import decode, encode
from flame.errors import FlameError, PayloadError, ProtocolError, ServiceError, ServiceUnavailableError
from flame.sim.faults import ServiceOutage
from flame.tokens import TokenStore
from tests.clients_helpers import node_clients
from tests.conftest import StackHarness

MakeStack = Callable[..., Any]


# -- final results ----------------------------------------------------------------------------------------


async def test_submit_final(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "aggregator")
    payload = encode({"mean": 4.5, "n": [1, 2, 3]})
    await c.storage.submit_final(payload, "result.bin")
    await c.storage.submit_final(b"plain text", "summary.txt")
    results = await h.stack.final_results()
    assert set(results) == {"result.bin", "summary.txt"}
    assert decode(results["result.bin"]) == {"mean": 4.5, "n": [1, 2, 3]}
    assert results["summary.txt"] == b"plain text"
    with pytest.raises(StorageArgumentError, match=r"flame\.codec\.encode"):
        await c.storage.submit_final("not bytes", "x.txt")  # type: ignore[arg-type]


async def test_submit_final_localdp(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "aggregator")
    await c.storage.submit_final_localdp(41.5, epsilon=0.5, sensitivity=2.0, filename="dp.txt")
    noisy = float((await h.stack.final_results())["dp.txt"])
    assert math.isfinite(noisy) and noisy != 41.5
    # A default file name as PrivateAIM's SDK makes them.
    await c.storage.submit_final_localdp(3, epsilon=1, sensitivity=1)
    assert any(name.startswith("result_") and name.endswith(".txt") for name in await h.stack.final_results())
    sent = c.transport.count("PUT", "/final/localdp")
    # Refused locally, before any request: a FlameError that is also a ValueError.
    for value, epsilon, sensitivity in (
        (math.nan, 1, 1),
        (math.inf, 1, 1),
        (1, 0, 1),
        (1, -1, 1),
        (1, math.inf, 1),
        (1, 1, -0.5),
        (1, 1, math.nan),
        (True, 1, 1),
    ):
        with pytest.raises(StorageArgumentError) as info:
            await c.storage.submit_final_localdp(value, epsilon, sensitivity)
        assert isinstance(info.value, PayloadError) and isinstance(info.value, ValueError)
    assert c.transport.count("PUT", "/final/localdp") == sent
    # Sensitivity 0 passes the local check; the service's 400 surfaces as a ServiceError.
    with pytest.raises(ServiceError) as err:
        await c.storage.submit_final_localdp(1.0, epsilon=1.0, sensitivity=0.0)
    assert err.value.status == 400 and err.value.service == "storage"
    assert "sensitivity" in str(err.value)
    assert not isinstance(err.value, ServiceUnavailableError)


# -- intermediate results ---------------------------------------------------------------------------------


async def test_intermediate_save_and_read_once(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=2)
    sender, receiver = node_clients(h, "node-1"), node_clients(h, "node-2")
    sender_id = h.stack.node("node-1").node_id
    receiver_id = h.stack.node("node-2").node_id
    payload = encode({"weights": [0.25, 0.5], "round": 3})
    ref = await sender.storage.save_intermediate(payload, receiver_id)
    assert isinstance(ref, IntermediateRef)
    assert str(uuid.UUID(ref.object_id)) == ref.object_id
    # The id exactly as PrivateAIM's save_intermediate_data returns it, the own id from the URL.
    assert ref.id == f"{ref.object_id}?remote_node_id={sender_id}"
    assert (ref.sender_id, ref.receiver_id) == (sender_id, receiver_id)
    # Re-based: under this client's base URL, /storage prefix included.
    assert ref.url == f"{sender.storage.base_url}/intermediate/{ref.id}"
    assert ref.url.startswith(sender.urls.storage + "/")
    assert parse_intermediate_id(ref.url) == (ref.object_id, sender_id)

    # The receiver reads it once, from the id a message would carry.
    assert decode(await receiver.storage.read_intermediate(ref.id)) == {"weights": [0.25, 0.5], "round": 3}
    with pytest.raises(ServiceError) as err:
        await receiver.storage.read_intermediate(ref.id)
    assert err.value.status == 404 and err.value.service == "storage"
    assert ALREADY_READ_HINT in str(err.value) and "already read" in str(err.value)
    assert err.value.request == f"GET /intermediate/{ref.object_id}"
    # Not retried: a 404 is final.
    assert receiver.transport.count("GET", "/intermediate/") == 2


async def test_intermediate_url_works_and_wrong_reader(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=2)
    n1, n2, agg = node_clients(h, "node-1"), node_clients(h, "node-2"), node_clients(h, "aggregator")
    agg_id = h.stack.node("aggregator").node_id
    ref = await n1.storage.save_intermediate(b"\x00\x01payload", agg_id)
    # Another node cannot decrypt it: 400 with a hint; the object stays for its receiver.
    with pytest.raises(ServiceError) as err:
        await n2.storage.read_intermediate(ref)
    assert err.value.status == 400 and "decrypt" in str(err.value)
    # The URL is re-based onto the sender's sidecar; its tail, re-based onto the receiver's own
    # sidecar (each node reaches only its own storage service), reads the object.
    assert ref.url.startswith(n1.urls.storage + "/intermediate/")
    url = agg.urls.storage + ref.url[len(n1.urls.storage) :]
    r = await agg.http.get(url, headers={"Authorization": f"Bearer {agg.tokens.get()}"})
    assert (r.status_code, r.content) == (200, b"\x00\x01payload")
    # A URL works as the reference too (read once: now gone).
    with pytest.raises(ServiceError, match="already read"):
        await agg.storage.read_intermediate(ref.url)


async def test_intermediate_errors(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "node-1")
    with pytest.raises(ServiceError) as err:
        await c.storage.save_intermediate(b"x", str(uuid.uuid4()))
    assert err.value.status == 404 and "receiver" in str(err.value)
    sent = len(c.transport.requests)
    for bad in ("not-a-uuid?remote_node_id=x", f"{uuid.uuid4()}", f"{uuid.uuid4()}?remote_node_id=", ""):
        with pytest.raises(ProtocolError, match="remote_node_id"):
            await c.storage.read_intermediate(bad)
    assert len(c.transport.requests) == sent


async def test_intermediate_read_retries_only_when_not_consumed(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    n1, agg = node_clients(h, "node-1"), node_clients(h, "aggregator")
    ref = await n1.storage.save_intermediate(b"abc", h.stack.node("aggregator").node_id)
    # A 503 answer has not consumed the object: retried until the window ends.
    h.stack.faults.add(ServiceOutage("storage", start=0, end=h.stack.now() + 0.3, node="aggregator"))
    slow = StorageClient(
        agg.http,
        agg.urls.storage,
        tokens=agg.tokens,
        retry=RetryPolicy(attempts=40, base_delay=0.02, max_delay=0.05, jitter=0.1),
    )
    assert await slow.read_intermediate(ref.id) == b"abc"
    assert h.stack.events.select("fault.outage", node="aggregator")
    assert agg.transport.count("GET", "/intermediate/") >= 2


class _BreakingTransport(httpx.AsyncBaseTransport):
    """Fails every request with ``exc``: as if sent and then the connection broke (ReadError), or
    never connected (ConnectError)."""

    def __init__(self, exc: type[httpx.TransportError]) -> None:
        self.exc = exc
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        raise self.exc("broken", request=request)


async def test_intermediate_read_not_retried_after_sending() -> None:
    oid = str(uuid.uuid4())
    for exc, expected_calls in ((httpx.ReadError, 1), (httpx.ConnectError, 3)):
        transport = _BreakingTransport(exc)
        async with httpx.AsyncClient(transport=transport) as http:
            client = StorageClient(
                http, "http://nginx-x/storage", retry=RetryPolicy(attempts=3, base_delay=0.001, jitter=0)
            )
            with pytest.raises(ServiceUnavailableError) as err:
                await client.read_intermediate(f"{oid}?remote_node_id=n")
        assert transport.calls == expected_calls, exc
        assert err.value.status is None
        if exc is httpx.ReadError:
            assert "consumed" in str(err.value)


# -- local results and tags -------------------------------------------------------------------------------


async def test_local_results_and_tags(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "node-1")
    plain = await c.storage.save_local(b"untagged", filename="u.bin")
    assert plain.url == f"{c.urls.storage}/local/{plain.object_id}" and plain.tag is None
    assert await c.storage.read_local(plain.object_id) == b"untagged"
    assert await c.storage.read_local(plain.url) == b"untagged"
    assert await c.storage.read_local(plain) == b"untagged"
    # The re-based URL works as it is.
    r = await c.http.get(plain.url, headers={"Authorization": f"Bearer {c.tokens.get()}"})
    assert (r.status_code, r.content) == (200, b"untagged")

    refs = [await c.storage.save_local(encode(i), tag="round-x", filename=f"r{i}.bin") for i in range(3)]
    other = await c.storage.save_local(b"o", tag="ab")
    assert {r.tag for r in refs} == {"round-x"}
    assert sorted(await c.storage.tags()) == ["ab", "round-x"]
    tagged = await c.storage.tagged("round-x")
    assert [t.object_id for t in tagged] == [r.object_id for r in refs]
    assert [t.filename for t in tagged] == ["r0.bin", "r1.bin", "r2.bin"]
    assert all(t.url == f"{c.urls.storage}/local/{t.object_id}" for t in tagged)
    assert [decode(b) for b in await c.storage.read_tagged("round-x")] == [0, 1, 2]
    assert [decode(b) for b in await c.storage.read_tagged("round-x", "first")] == [0]
    assert [decode(b) for b in await c.storage.read_tagged("round-x", "last")] == [2]
    assert await c.storage.read_tagged("nothing-here", "last") == []
    assert await c.storage.tagged("nothing-here") == []

    # Tag an existing result; tagging again is harmless.
    added = await c.storage.add_tag("keep", plain.object_id, "u.bin")
    assert added.object_id == plain.object_id and added.filename == "u.bin"
    assert added.url == plain.url
    assert await c.storage.add_tag("keep", plain.url) == added
    assert [t.object_id for t in await c.storage.tagged("keep")] == [plain.object_id]
    assert await c.storage.read_tagged("keep") == [b"untagged"]
    assert await c.storage.read_tagged("ab") == [b"o"] and other.tag == "ab"
    with pytest.raises(ServiceError) as err:
        await c.storage.add_tag("keep", str(uuid.uuid4()))
    assert err.value.status == 404
    with pytest.raises(ServiceError) as err:
        await c.storage.read_local(str(uuid.uuid4()))
    assert err.value.status == 404


async def test_tag_validation_before_any_request(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "node-1")
    for bad in ("", "UPPER", "-a", "a-", "a_b", "x" * 33, "ä", "a b"):
        for call in (
            c.storage.save_local(b"x", tag=bad),
            c.storage.tagged(bad),
            c.storage.read_tagged(bad),
            c.storage.add_tag(bad, str(uuid.uuid4())),
        ):
            with pytest.raises(StorageArgumentError, match="invalid tag"):
                await call
    with pytest.raises(StorageArgumentError, match="which"):
        await c.storage.read_tagged("ok", "middle")  # type: ignore[arg-type]
    with pytest.raises(StorageArgumentError, match="UUID"):
        await c.storage.read_local("not-an-id")
    assert c.transport.requests == []
    for good in ("a", "ab", "a-b", "x" * 32, "0-9"):
        assert check_tag(good) == good
    assert isinstance(StorageArgumentError("x"), FlameError)
    name = default_filename(".pkl")
    assert (
        name.startswith("result_")
        and name.endswith(".pkl")
        and len(name) == len("result_abcd_250101120000.pkl")
    )


# -- retries, outages, authentication ---------------------------------------------------------------------


async def test_outage_window_is_retried(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "node-1", retry=RetryPolicy(attempts=40, base_delay=0.02, max_delay=0.05, jitter=0.1))
    h.stack.faults.add(ServiceOutage("storage", start=0, end=h.stack.now() + 0.3, node="node-1"))
    ref = await c.storage.save_local(b"through the outage", tag="t1")
    assert await c.storage.read_local(ref) == b"through the outage"
    outages = h.stack.events.select("fault.outage", node="node-1")
    assert outages and all(e.detail["service"] == "storage" for e in outages)
    # Every attempt re-sent the same upload; exactly one succeeded.
    puts = [(m, s) for m, p, s in c.transport.requests if m == "PUT"]
    assert puts[-1] == ("PUT", 200) and all(s == 503 for _, s in puts[:-1]) and len(puts) >= 2
    assert len(await c.storage.tagged("t1")) == 1


async def test_permanent_outage_raises_service_unavailable(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "aggregator")
    h.stack.faults.add(ServiceOutage("storage", start=0, end=math.inf, node="aggregator"))
    with pytest.raises(ServiceUnavailableError) as err:
        await c.storage.submit_final(b"x", "r.txt")
    e = err.value
    assert (e.service, e.request, e.status) == ("storage", "PUT /final", 503)
    assert "storage" in str(e) and "PUT /final" in str(e) and "503" in str(e)
    assert c.transport.count("PUT", "/final") == 4  # FAST_RETRY: 4 attempts
    with pytest.raises(ServiceUnavailableError):
        await c.storage.read_intermediate(f"{uuid.uuid4()}?remote_node_id=x")
    assert c.transport.count("GET", "/intermediate/") == 4


async def test_auth_errors_are_not_retried(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    # No token: 401.
    c = node_clients(h, "node-1", tokens=TokenStore(None))
    with pytest.raises(ServiceError) as err:
        await c.storage.save_local(b"x")
    assert err.value.status == 401 and not isinstance(err.value, ServiceUnavailableError)
    assert c.transport.count() == 1
    # An expired (revoked) token: 403, once.
    c = node_clients(h, "node-1")
    h.stack.node("node-1").issuer.expire_all()
    with pytest.raises(ServiceError) as err:
        await c.storage.tags()
    assert err.value.status == 403
    token = c.tokens.get()
    assert token is not None and token not in str(err.value)
    assert c.transport.count() == 1


async def test_token_refresh_applies_on_next_request(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    c = node_clients(h, "node-1")
    ref = await c.storage.save_local(b"before", tag="tok")
    node = h.stack.node("node-1")
    node.issuer.expire_all()
    with pytest.raises(ServiceError) as err:
        await c.storage.read_local(ref)
    assert err.value.status == 403
    # The pod orchestrator pushes a new token: the same clients use it on their next request.
    c.tokens.swap(node.issuer.mint(h.stack.analysis_id, 300))
    assert await c.storage.read_local(ref) == b"before"
    assert await c.storage.read_tagged("tok") == [b"before"]

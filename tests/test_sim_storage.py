"""Conformance of the emulated storage service with the node storage service's HTTP contract, over raw HTTP.

Runs in both stack modes (in-process and served) and on two backends (a local folder and moto's S3);
the tests marked ``integration`` repeat the main flow on SeaweedFS, which checks SigV4 signatures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import math
import random
import statistics
import uuid
from collections.abc import Callable
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from minio.error import S3Error

from flame.sim import intermediate_crypto as ic
from flame.sim.backends import LocalFolderBackend, StorageBackend
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from flame.sim.storage import (
    TAG_PATTERN,
    intermediate_key,
    is_valid_tag,
    local_key,
    parse_single_number,
    register_analysis,
    sample_laplace,
    tag_marker_key,
    unregister_analysis,
)
from tests import s3servers
from tests.conftest import StackHarness
from tests.s3servers import MotoS3, SeaweedFS, unique_bucket

BackendFactory = Callable[[], StorageBackend]
MakeStack = Callable[..., Any]

# The session-wide S3 servers (pytest finds fixtures by their name in this module).
moto_s3 = s3servers.moto_s3
seaweedfs = s3servers.seaweedfs


@pytest.fixture(params=["local", "moto"])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> BackendFactory:
    """A factory of backend instances that all see the same storage (one folder, or one bucket)."""
    if request.param == "local":
        root = tmp_path / "store"
        return lambda: LocalFolderBackend(root)
    server: MotoS3 = request.getfixturevalue("moto_s3")
    bucket = unique_bucket()
    return lambda: server.backend(bucket)


# -- helpers -------------------------------------------------------------------------------------------


def host_of(h: StackHarness, node: str) -> str:
    """The Host header a plain client of this mode sends, hence the host of returned URLs."""
    if h.mode == "inprocess":
        return h.stack.node(node).host
    return urlsplit(h.stack.node_base_url(node)).netloc


def upload(name: str, data: bytes) -> dict[str, Any]:
    return {"file": (name, data, "application/octet-stream")}


async def put_intermediate(
    h: StackHarness, sender: str, receiver: str, data: bytes, name: str = "part.bin"
) -> dict[str, Any]:
    client = h.client(sender)
    r = await client.put(
        "/storage/intermediate",
        headers=h.auth(sender),
        files=upload(name, data),
        data={"remote_node_id": h.stack.node(receiver).node_id},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def put_local(
    h: StackHarness, node: str, data: bytes, name: str = "a.csv", tag: str | None = None
) -> str:
    form = {"tag": tag} if tag is not None else None
    r = await h.client(node).put("/storage/local", headers=h.auth(node), files=upload(name, data), data=form)
    assert r.status_code == 200, r.text
    return str(r.json()["object_id"])


def tail(url: str) -> str:
    """The path and query of an absolute URL the service returned (re-based on /storage by clients)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- authentication ------------------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("PUT", "/storage/final", {"files": upload("r.txt", b"1")}),
    (
        "PUT",
        "/storage/final/localdp",
        {"files": upload("r.txt", b"1"), "data": {"epsilon": 1, "sensitivity": 1}},
    ),
    ("PUT", "/storage/intermediate", {"files": upload("i.bin", b"1"), "data": {"remote_node_id": "x"}}),
    ("GET", f"/storage/intermediate/{uuid.uuid4()}?remote_node_id=x", {}),
    ("PUT", "/storage/local", {"files": upload("l.bin", b"1")}),
    ("GET", f"/storage/local/{uuid.uuid4()}", {}),
    ("GET", "/storage/local/tags", {}),
    ("GET", "/storage/local/tags/t", {}),
    ("POST", f"/storage/local/tags?tag_name=t&object_id={uuid.uuid4()}", {}),
]


async def test_auth_on_every_endpoint(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=2)
    client = h.client("node-1")
    other = h.stack.node("node-2").token
    for method, path, kwargs in ENDPOINTS:
        r = await client.request(method, path, **kwargs)
        assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"}), path
        for header in ("Bearer garbage", f"Bearer {other}", "Bearer", "Basic abc"):
            r = await client.request(method, path, headers={"Authorization": header}, **kwargs)
            assert r.status_code == 403, (path, header, r.text)
            assert set(r.json()) == {"detail"}
    h.stack.node("node-1").issuer.expire_all()
    for method, path, kwargs in ENDPOINTS:
        r = await client.request(method, path, headers=h.auth("node-1"), **kwargs)
        assert r.status_code == 403, (path, r.text)


async def test_token_of_another_analysis_opens_no_buckets(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    client = h.client("node-1")
    r = await client.put("/storage/final", headers=h.auth("node-1"), files=upload("r.txt", b"x"))
    assert r.status_code == 204
    assert await h.stack.final_results() == {"r.txt": b"x"}
    # A token of another analysis, even one with buckets, opens nothing through this sidecar.
    stranger = str(uuid.uuid4())
    register_analysis(stranger, h.stack.project_id)
    try:
        other = {"Authorization": f"Bearer {h.stack.node('node-1').issuer.mint(stranger)}"}
        r = await client.put("/storage/final", headers=other, files=upload("r.txt", b"y"))
        assert r.status_code == 403
        assert await h.stack.final_results(stranger) == {}
    finally:
        unregister_analysis(stranger)


# -- final results ------------------------------------------------------------------------------------


async def test_final_results(make_stack: MakeStack, storage: BackendFactory) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1, storage_backend=storage())
    client = h.client("aggregator")
    r = await client.put(
        "/storage/final", headers=h.auth("aggregator"), files=upload("result.json", b'{"a": 1}')
    )
    assert r.status_code == 204 and r.content == b""
    r = await client.put("/storage/final", headers=h.auth("aggregator"), files=upload("evil.txt", b"e"))
    assert r.status_code == 204
    r = await client.put("/storage/final", headers=h.auth("aggregator"), files=upload("../../evil.txt", b"x"))
    assert r.status_code == 400
    r = await client.put("/storage/final", headers=h.auth("aggregator"), data={"x": "1"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "file"]
    assert await h.stack.final_results() == {"result.json": b'{"a": 1}', "evil.txt": b"e"}
    events = h.stack.events.select("storage.final", node="aggregator")
    assert [e.detail["filename"] for e in events] == ["result.json", "evil.txt"]
    assert h.stack.events.select("storage.upload", area="final")[0].detail["size"] == 8
    # The emulator's admin API serves the same results.
    assert await h.stack.final_results("no-such-analysis") == {}


async def test_final_localdp(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    client = h.client("aggregator")
    auth = h.auth("aggregator")

    async def send(
        content: bytes, epsilon: Any = 1.0, sensitivity: Any = 1.0, name: str = "dp.txt"
    ) -> httpx.Response:
        form = {k: v for k, v in (("epsilon", epsilon), ("sensitivity", sensitivity)) if v is not None}
        return await client.put(
            "/storage/final/localdp", headers=auth, files=upload(name, content), data=form
        )

    r = await send(b"41.5\n", epsilon=0.5, sensitivity=2)
    assert r.status_code == 204 and r.content == b""
    noisy = float((await h.stack.final_results())["dp.txt"])
    assert math.isfinite(noisy) and noisy != 41.5
    for bad in (b"abc", b"1 2", b"nan", b"inf", b"", b"1,5", b"\xff\xfe", b"1" * 5000):
        r = await send(bad)
        assert (r.status_code, r.json()) == (
            400,
            {"detail": "Uploaded file must contain a single numerical value."},
        )
    for epsilon, sensitivity in ((0, 1), (-1, 1), (1, 0), (1, -2), ("inf", 1), (1, "nan")):
        assert (await send(b"1", epsilon, sensitivity)).status_code == 400, (epsilon, sensitivity)
    assert (await send(b"1", epsilon="abc")).status_code == 422
    assert (await send(b"1", epsilon=None)).status_code == 422
    assert (await send(b"1", sensitivity=None)).status_code == 422
    event = h.stack.events.select("storage.final", localdp=True)[0]
    assert event.detail["epsilon"] == 0.5 and "value" not in event.detail


def test_parse_single_number() -> None:
    assert parse_single_number(b" 3.25\n") == 3.25
    assert parse_single_number(b"-1e3") == -1000.0
    for bad in (b"", b"x", b"1 2", b"nan", b"-inf", b"1e999"):
        with pytest.raises(ValueError):
            parse_single_number(bad)


def test_laplace_sampler_distribution() -> None:
    scale = 2.0
    draws = [sample_laplace(0.0, scale) for _ in range(2000)]
    # Laplace(0, b): mean 0, E|X| = b, Var = 2 b^2; standard errors 0.063, 0.045 and ~0.5 here.
    assert abs(statistics.fmean(draws)) < 0.3
    assert abs(statistics.fmean(abs(x) for x in draws) - scale) < 0.25
    assert abs(statistics.pvariance(draws) - 2 * scale**2) < 2.5
    assert sum(x > 0 for x in draws) in range(900, 1101)
    # Shifted by the value; exact rational scales; scale 0 is the identity; seeded rngs reproduce.
    shifted = [sample_laplace(100.0, Fraction(1, 10)) for _ in range(500)]
    assert abs(statistics.fmean(shifted) - 100.0) < 0.05
    assert sample_laplace(7.25, 0) == 7.25
    assert sample_laplace(1.0, 1.0, rng=random.Random(3)) == sample_laplace(1.0, 1.0, rng=random.Random(3))
    # A coarser grid k: the output is value + an integer multiple of 2**k.
    coarse = sample_laplace(0.0, 4.0, k=-2)
    assert (coarse * 4).is_integer()
    with pytest.raises(ValueError):
        sample_laplace(math.nan, 1.0)
    with pytest.raises(ValueError):
        sample_laplace(0.0, -1.0)


# -- intermediate results -------------------------------------------------------------------------------


async def test_intermediate_read_once(make_stack: MakeStack, storage: BackendFactory) -> None:
    h: StackHarness = await make_stack(analysis_nodes=2, storage_backend=storage())
    stack = h.stack
    sender, receiver, third = stack.node("node-1"), stack.node("aggregator"), stack.node("node-2")
    plaintext = b"intermediate plaintext " * 100
    body = await put_intermediate(h, "node-1", "aggregator", plaintext)
    assert list(body) == ["url", "object_id"]
    oid = body["object_id"]
    assert str(uuid.UUID(oid)) == oid
    assert body["url"] == f"http://{host_of(h, 'node-1')}/intermediate/{oid}?remote_node_id={sender.node_id}"
    event = stack.events.select("storage.upload", node="node-1", area="intermediate")[0]
    assert event.detail["size"] == len(plaintext) and event.detail["object_id"] == oid

    # At rest: encrypted, one chunk: IV + ciphertext + tag.
    stored = await stack.storage_backend.get(intermediate_key(stack.analysis_id, oid))
    assert len(stored) == len(plaintext) + ic.IV_SIZE + ic.TAG_SIZE
    assert b"intermediate plaintext" not in stored
    keys = (receiver.storage_key, sender.storage_key.public_key())
    assert ic.decrypt_bytes(stored, *keys, context=oid.encode()) == plaintext

    path = tail(body["url"])
    wrong_sender = f"/storage/intermediate/{oid}?remote_node_id={third.node_id}"
    # Another node cannot decrypt it; the sender cannot read it back as the receiver either.
    r = await h.client("node-2").get("/storage" + path, headers=h.auth("node-2"))
    assert (r.status_code, r.json()) == (
        400,
        {"detail": f"Failed to decrypt file with ID {oid} which was encrypted by node {sender.node_id}."},
    )
    r = await h.client("node-1").get(
        f"/storage/intermediate/{oid}?remote_node_id={receiver.node_id}", headers=h.auth("node-1")
    )
    assert r.status_code == 400
    receiver_client = h.client("aggregator")
    auth = h.auth("aggregator")
    assert (await receiver_client.get(wrong_sender, headers=auth)).status_code == 400
    r = await receiver_client.get(f"/storage/intermediate/{oid}?remote_node_id={uuid.uuid4()}", headers=auth)
    assert r.status_code == 404
    r = await receiver_client.get(f"/storage/intermediate/{oid}", headers=auth)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "remote_node_id"]
    r = await receiver_client.get(
        f"/storage/intermediate/not-a-uuid?remote_node_id={sender.node_id}", headers=auth
    )
    assert r.status_code == 422
    # Failed reads did not consume it: the receiver reads it once.
    r = await receiver_client.get("/storage" + path, headers=auth)
    assert r.status_code == 200 and r.content == plaintext
    assert r.headers["content-type"] == "application/octet-stream"
    r = await receiver_client.get("/storage" + path, headers=auth)
    assert (r.status_code, r.json()) == (404, {"detail": f"Object with ID {oid} does not exist"})
    assert not await stack.storage_backend.exists(intermediate_key(stack.analysis_id, oid))
    assert stack.events.select("storage.delete", node="aggregator", object_id=oid)


async def test_intermediate_upload_errors(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    client = h.client("node-1")
    auth = h.auth("node-1")
    r = await client.put("/storage/intermediate", headers=auth, files=upload("i", b"x"))
    assert r.status_code == 422
    assert r.json() == {
        "detail": [
            {"type": "missing", "loc": ["body", "remote_node_id"], "msg": "Field required", "input": None}
        ]
    }
    unknown = str(uuid.uuid4())
    r = await client.put(
        "/storage/intermediate", headers=auth, files=upload("i", b"x"), data={"remote_node_id": unknown}
    )
    assert (r.status_code, r.json()) == (404, {"detail": f"Remote node with ID {unknown} does not exist."})
    aggregator = h.stack.node("aggregator")
    aggregator.storage_public_key_published = False
    r = await client.put(
        "/storage/intermediate",
        headers=auth,
        files=upload("i", b"x"),
        data={"remote_node_id": aggregator.node_id},
    )
    assert (r.status_code, r.json()) == (
        400,
        {"detail": f"Remote node with ID {aggregator.node_id} does not provide a public key"},
    )
    r = await h.client("aggregator").get(
        f"/storage/intermediate/{uuid.uuid4()}?remote_node_id=x", headers=h.auth("aggregator")
    )
    assert r.status_code == 404


async def test_intermediate_chunk_layout_and_concurrent_reads(
    make_stack: MakeStack, storage: BackendFactory
) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1, storage_backend=storage())
    stack = h.stack
    plaintext = random.Random(1).randbytes(2 * ic.CHUNK_SIZE + 12345)
    body = await put_intermediate(h, "node-1", "aggregator", plaintext)
    oid = body["object_id"]
    stored = await stack.storage_backend.get(intermediate_key(stack.analysis_id, oid))
    assert len(stored) == 3 * (12 + 16) + len(plaintext)
    receiver, sender = stack.node("aggregator"), stack.node("node-1")
    # Chunk by chunk: 12-byte IV, ciphertext, 16-byte tag; swapping two chunks breaks authentication.
    full = ic.ENCRYPTED_CHUNK_SIZE
    chunks = [stored[:full], stored[full : 2 * full], stored[2 * full :]]
    keys = (receiver.storage_key, sender.storage_key.public_key())
    with pytest.raises(ic.DecryptionError):
        ic.decrypt_bytes(chunks[1] + chunks[0] + chunks[2], *keys, context=oid.encode())
    with pytest.raises(ic.DecryptionError):
        ic.decrypt_bytes(chunks[0] + chunks[1], *keys, context=oid.encode())
    with pytest.raises(ic.DecryptionError):
        ic.decrypt_bytes(stored, *keys, context=b"another-object")
    # Two concurrent reads: exactly one gets the data.
    client = h.client("aggregator")
    path = "/storage" + tail(body["url"])
    first, second = await asyncio.gather(*(client.get(path, headers=h.auth("aggregator")) for _ in range(2)))
    assert sorted([first.status_code, second.status_code]) == [200, 404]
    winner = first if first.status_code == 200 else second
    assert hashlib.sha256(winner.content).digest() == hashlib.sha256(plaintext).digest()


async def test_intermediate_empty_object(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    body = await put_intermediate(h, "aggregator", "node-1", b"")
    stored = await h.stack.storage_backend.get(intermediate_key(h.stack.analysis_id, body["object_id"]))
    assert len(stored) == 28
    r = await h.client("node-1").get("/storage" + tail(body["url"]), headers=h.auth("node-1"))
    assert (r.status_code, r.content) == (200, b"")


async def test_reader_gone_before_the_answer_keeps_the_object() -> None:
    """A read that fails before any byte went out neither consumes nor locks the object."""
    stack = await FlameStack.create(1, settings=StackSettings.fast(po_enabled=False)).start()
    try:
        receiver, sender = stack.node("aggregator"), stack.node("node-1")
        async with stack.client("node-1") as client:
            r = await client.put(
                "/storage/intermediate",
                headers={"Authorization": f"Bearer {sender.token}"},
                files=upload("x", b"payload"),
                data={"remote_node_id": receiver.node_id},
            )
        oid = r.json()["object_id"]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/intermediate/{oid}",
            "raw_path": f"/intermediate/{oid}".encode(),
            "root_path": "",
            "query_string": f"remote_node_id={sender.node_id}".encode(),
            "headers": [(b"host", b"x"), (b"authorization", f"Bearer {receiver.token}".encode())],
            "server": ("x", 80),
            "client": ("127.0.0.1", 1),
            "flame.node": receiver,
            "flame.stack": stack,
        }

        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0)
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            raise OSError("the client went away")

        with pytest.raises(Exception):  # noqa: B017 - whatever the framework makes of it
            await stack.service_apps["storage"](scope, receive, send)
        async with stack.client("aggregator") as client:
            r = await client.get(
                f"/storage/intermediate/{oid}?remote_node_id={sender.node_id}",
                headers={"Authorization": f"Bearer {receiver.token}"},
            )
        assert (r.status_code, r.content) == (200, b"payload")
    finally:
        await stack.aclose()


async def test_privateaim_sdk_request_forms(make_stack: MakeStack) -> None:
    """PrivateAIM's SDK PUTs to ``/final/``, ``/local/``, ``/intermediate/`` (trailing slash, no filename)."""
    h: StackHarness = await make_stack(analysis_nodes=1)
    client = h.client("node-1")
    auth = h.auth("node-1")
    r = await client.put(
        "/storage/local/", headers=auth, files={"file": io.BytesIO(b"l")}, data={"tag": "sdk"}
    )
    assert r.status_code == 200 and r.json()["url"].split("/")[-1] == r.json()["object_id"]
    r = await client.get("/storage/local/tags/sdk", headers=auth)
    assert r.json()["results"][0]["filename"] == "upload"  # httpx's name for a nameless file
    receiver = h.stack.node("aggregator").node_id
    r = await client.put(
        "/storage/intermediate/",
        headers=auth,
        files={"file": io.BytesIO(b"i")},
        data={"remote_node_id": receiver},
    )
    assert r.status_code == 200
    r = await client.put("/storage/final/", headers=auth, files={"file": ("result_ab12", io.BytesIO(b"f"))})
    assert r.status_code == 204
    assert await h.stack.final_results() == {"result_ab12": b"f"}


# -- local results and tags ------------------------------------------------------------------------------


async def test_local_results_and_tags(make_stack: MakeStack, storage: BackendFactory) -> None:
    h: StackHarness = await make_stack(analysis_nodes=2, storage_backend=storage())
    stack = h.stack
    node = stack.node("node-1")
    client = h.client("node-1")
    auth = h.auth("node-1")
    base = f"http://{host_of(h, 'node-1')}"

    r = await client.put(
        "/storage/local", headers=auth, files=upload("a.csv", b"a,b\n1,2\n"), data={"tag": "round-1"}
    )
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["url", "object_id"]
    oid = body["object_id"]
    assert body["url"] == f"{base}/local/{oid}"
    assert await stack.storage_backend.exists(local_key(node.node_id, stack.project_id, oid))
    marker = json.loads(
        await stack.storage_backend.get(tag_marker_key(node.node_id, stack.project_id, "round-1", oid))
    )
    assert set(marker) == {"filename", "object_id", "created"} and marker["filename"] == "a.csv"
    untagged = await put_local(h, "node-1", b"no tag", name="u.bin")

    r = await client.get("/storage" + tail(body["url"]), headers=auth)
    assert (r.status_code, r.content) == (200, b"a,b\n1,2\n")
    r = await client.get(f"/storage/local/{untagged}", headers=auth)
    assert (r.status_code, r.content) == (200, b"no tag")
    missing = str(uuid.uuid4())
    r = await client.get(f"/storage/local/{missing}", headers=auth)
    assert (r.status_code, r.json()) == (404, {"detail": f"Object with ID {missing} does not exist"})
    assert (await client.get("/storage/local/not-a-uuid", headers=auth)).status_code == 422

    r = await client.get("/storage/local/tags", headers=auth)
    assert (r.status_code, r.json()) == (
        200,
        {"tags": [{"name": "round-1", "url": f"{base}/local/tags/round-1"}]},
    )
    r = await client.get("/storage/local/tags/round-1", headers=auth)
    assert r.json() == {"results": [{"filename": "a.csv", "url": f"{base}/local/{oid}"}]}
    for unknown in ("nothing", "Bad_Tag", "-x"):
        r = await client.get(f"/storage/local/tags/{unknown}", headers=auth)
        assert (r.status_code, r.json()) == (200, {"results": []})

    # Tagging an existing object.
    r = await client.post(
        f"/storage/local/tags?tag_name=round-1&object_id={untagged}&filename=u.bin", headers=auth
    )
    assert (r.status_code, r.json()) == (200, {"filename": "u.bin", "url": f"{base}/local/{untagged}"})
    r = await client.post(f"/storage/local/tags?tag_name=x2&object_id={oid}", headers=auth)
    assert r.json() == {"filename": "data.bin", "url": f"{base}/local/{oid}"}
    r = await client.post(f"/storage/local/tags?tag_name=round-1&object_id={oid}", headers=auth)
    assert r.json() == {"filename": "a.csv", "url": f"{base}/local/{oid}"}
    r = await client.get("/storage/local/tags/round-1", headers=auth)
    assert r.json() == {
        "results": [
            {"filename": "a.csv", "url": f"{base}/local/{oid}"},
            {"filename": "u.bin", "url": f"{base}/local/{untagged}"},
        ]
    }
    r = await client.get("/storage/local/tags", headers=auth)
    assert [t["name"] for t in r.json()["tags"]] == ["round-1", "x2"]
    r = await client.post(f"/storage/local/tags?tag_name=ok&object_id={missing}", headers=auth)
    assert (r.status_code, r.json()) == (404, {"detail": f"Object with ID {missing} does not exist"})
    r = await client.post(f"/storage/local/tags?tag_name=Bad_Tag&object_id={oid}", headers=auth)
    assert (r.status_code, r.json()) == (400, {"detail": "Invalid tag `Bad_Tag`"})
    assert (await client.post(f"/storage/local/tags?object_id={oid}", headers=auth)).status_code == 422
    assert (await client.post("/storage/local/tags?tag_name=t&object_id=x", headers=auth)).status_code == 422

    # A bad tag stores nothing.
    before = await stack.storage_backend.list("nodes/")
    r = await client.put("/storage/local", headers=auth, files=upload("b", b"b"), data={"tag": "-bad"})
    assert (r.status_code, r.json()) == (400, {"detail": "Invalid tag `-bad`"})
    assert await stack.storage_backend.list("nodes/") == before

    # Local results are per node: node-2 sees neither the objects nor the tags.
    other = h.client("node-2")
    assert (await other.get(f"/storage/local/{oid}", headers=h.auth("node-2"))).status_code == 404
    assert (await other.get("/storage/local/tags", headers=h.auth("node-2"))).json() == {"tags": []}
    uploads = stack.events.select("storage.upload", node="node-1", area="local")
    assert [e.detail["tag"] for e in uploads] == ["round-1", None]


TAGS = {
    "a": True,
    "ab": True,
    "a1": True,
    "0": True,
    "abc": True,
    "a-b": True,
    "a--b": True,
    "x" * 32: True,
    "a" + "-" * 30 + "b": True,
    "x" * 33: False,
    "": False,
    "-": False,
    "-a": False,
    "a-": False,
    "ab-": False,
    "A": False,
    "aB": False,
    "a_b": False,
    "a.b": False,
    "a b": False,
    "a/b": False,
    "ä": False,
    "a\n": False,
}


@pytest.mark.parametrize(("tag", "valid"), TAGS.items(), ids=[repr(t) for t in TAGS])
def test_tag_regex_table(tag: str, valid: bool) -> None:
    assert is_valid_tag(tag) is valid
    assert (TAG_PATTERN.fullmatch(tag) is not None) is valid


async def test_tag_validation_over_http(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    client = h.client("node-1")
    for tag, valid in TAGS.items():
        if "/" in tag or "\n" in tag:
            continue
        r = await client.put(
            "/storage/local", headers=h.auth("node-1"), files=upload("t", b"t"), data={"tag": tag}
        )
        if tag == "":
            assert r.status_code == 200  # an empty form field is no tag at all
        else:
            assert r.status_code == (200 if valid else 400), (tag, r.text)


async def test_tags_are_project_scoped_across_stacks(make_stack: MakeStack, storage: BackendFactory) -> None:
    first: StackHarness = await make_stack(analysis_nodes=1, storage_backend=storage(), seed=1)
    oid = await put_local(first, "node-1", b"old information", name="model.json", tag="shared")
    await put_local(first, "aggregator", b"aggregated", name="agg.json", tag="agg")

    # A later analysis of the same project, same node names, same storage: it sees everything.
    second: StackHarness = await make_stack(
        analysis_nodes=1, storage_backend=storage(), seed=2, project_id=first.stack.project_id
    )
    assert second.stack.analysis_id != first.stack.analysis_id
    client = second.client("node-1")
    auth = second.auth("node-1")
    base = f"http://{host_of(second, 'node-1')}"
    r = await client.get("/storage/local/tags", headers=auth)
    assert r.json() == {"tags": [{"name": "shared", "url": f"{base}/local/tags/shared"}]}
    r = await client.get("/storage/local/tags/shared", headers=auth)
    assert r.json() == {"results": [{"filename": "model.json", "url": f"{base}/local/{oid}"}]}
    r = await client.get("/storage" + tail(r.json()["results"][0]["url"]), headers=auth)
    assert (r.status_code, r.content) == (200, b"old information")
    r = await second.client("aggregator").get("/storage/local/tags/agg", headers=second.auth("aggregator"))
    assert [x["filename"] for x in r.json()["results"]] == ["agg.json"]

    # Another project on the same storage sees none of it.
    third: StackHarness = await make_stack(
        analysis_nodes=1, storage_backend=storage(), seed=3, project_id=str(uuid.uuid4())
    )
    client = third.client("node-1")
    auth = third.auth("node-1")
    assert (await client.get("/storage/local/tags", headers=auth)).json() == {"tags": []}
    assert (await client.get("/storage/local/tags/shared", headers=auth)).json() == {"results": []}
    assert (await client.get(f"/storage/local/{oid}", headers=auth)).status_code == 404


# -- URLs from the Host header, large uploads ------------------------------------------------------------


async def test_urls_follow_the_host_header(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    node = h.stack.node("node-1")
    client = h.client("node-1")
    prefix = "/storage"
    headers = {**h.auth("node-1"), "Host": "storage.example:8080"}
    r = await client.put(f"{prefix}/local", headers=headers, files=upload("a", b"a"), data={"tag": "t"})
    oid = r.json()["object_id"]
    assert r.json()["url"] == f"http://storage.example:8080/local/{oid}"
    r = await client.get(f"{prefix}/local/tags", headers=headers)
    assert r.json() == {"tags": [{"name": "t", "url": "http://storage.example:8080/local/tags/t"}]}
    r = await client.get(f"{prefix}/local/tags/t", headers=headers)
    assert r.json()["results"][0]["url"] == f"http://storage.example:8080/local/{oid}"
    r = await client.post(f"{prefix}/local/tags?tag_name=u&object_id={oid}", headers=headers)
    assert r.json()["url"] == f"http://storage.example:8080/local/{oid}"
    r = await client.put(
        f"{prefix}/intermediate",
        headers=headers,
        files=upload("i", b"i"),
        data={"remote_node_id": h.stack.node("aggregator").node_id},
    )
    oid = r.json()["object_id"]
    assert r.json()["url"] == f"http://storage.example:8080/intermediate/{oid}?remote_node_id={node.node_id}"


async def test_large_uploads_are_streamed(make_stack: MakeStack) -> None:
    h: StackHarness = await make_stack(analysis_nodes=1)
    data = random.Random(7).randbytes(20 * 1024 * 1024)
    oid = await put_local(h, "node-1", data, name="big.bin")
    r = await h.client("node-1").get(f"/storage/local/{oid}", headers=h.auth("node-1"))
    assert r.status_code == 200
    assert len(r.content) == len(data) and hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    assert h.stack.events.select("storage.upload", object_id=oid)[0].detail["size"] == len(data)
    # The same size through encryption: 20 full chunks.
    body = await put_intermediate(h, "node-1", "aggregator", data)
    stored = h.stack.events.select("storage.upload", object_id=body["object_id"])[0].detail["stored"]
    assert stored == len(data) + 20 * 28
    r = await h.client("aggregator").get("/storage" + tail(body["url"]), headers=h.auth("aggregator"))
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()


async def test_s3_backend_large_object(moto_s3: MotoS3) -> None:
    """20 MiB through S3: a multipart upload of 8 MiB parts, read back in 1 MiB chunks."""
    backend = moto_s3.backend(unique_bucket())
    data = random.Random(8).randbytes(20 * 1024 * 1024)
    try:
        await backend.put("big", io.BytesIO(data), len(data))
        digest = hashlib.sha256()
        async for chunk in backend.open("big"):
            assert len(chunk) <= 1024 * 1024
            digest.update(chunk)
        assert digest.digest() == hashlib.sha256(data).digest()
    finally:
        await backend.aclose()


# -- the backends themselves ------------------------------------------------------------------------------


async def test_backend_contract(storage: BackendFactory) -> None:
    backend = storage()
    try:
        await backend.put("a/b/one", io.BytesIO(b"1"), 1)
        await backend.put("a/bc/two", io.BytesIO(b"22"), 2)
        await backend.put("a/b/three", io.BytesIO(b"333 and more"), 3)
        assert await backend.get("a/b/three") == b"333"
        assert await backend.list("a/b") == ["a/b/one", "a/b/three", "a/bc/two"]
        assert await backend.list("a/b/") == ["a/b/one", "a/b/three"]
        assert await backend.list("zzz/") == []
        assert await backend.exists("a/b/one") and not await backend.exists("a/b")
        assert b"".join([c async for c in backend.open("a/bc/two")]) == b"22"
        with pytest.raises(KeyError):
            await backend.get("a/missing")
        with pytest.raises(KeyError):
            async for _ in backend.open("a/missing"):
                pass
        await backend.delete("a/b/one")
        await backend.delete("a/b/one")  # deleting twice is fine
        assert await backend.list("a/") == ["a/b/three", "a/bc/two"]
        big = random.Random(3).randbytes(3 * 1024 * 1024 + 5)
        await backend.put("big", io.BytesIO(big), len(big))
        pieces = [c async for c in backend.open("big")]
        assert b"".join(pieces) == big and max(len(p) for p in pieces) <= 1024 * 1024
        with pytest.raises(OSError):
            await backend.put("short", io.BytesIO(b"abc"), 10)
        assert not await backend.exists("short")
        for bad in ("", "/abs", "../up", "a/../b", "a//b", "a/./b", "a\\b", "a/.."):
            with pytest.raises(ValueError):
                await backend.put(bad, io.BytesIO(b""), 0)
            with pytest.raises(ValueError):
                await backend.get(bad)
    finally:
        await backend.aclose()


async def test_local_folder_backend_is_atomic(tmp_path: Any) -> None:
    backend = LocalFolderBackend(tmp_path)
    await backend.put("k", io.BytesIO(b"old"), 3)
    with pytest.raises(OSError):
        await backend.put("k", io.BytesIO(b"new but short"), 100)
    assert await backend.get("k") == b"old"
    assert not any((tmp_path / ".partial").iterdir())
    with pytest.raises(ValueError):
        await backend.put(".partial/x", io.BytesIO(b""), 0)
    assert await backend.list("") == ["k"]
    assert await backend.list(".partial/") == []


# -- SeaweedFS: the S3 server of current FLAME nodes ------------------------------------------------------


@pytest.mark.integration
async def test_conformance_flow_on_seaweedfs(make_stack: MakeStack, seaweedfs: SeaweedFS) -> None:
    bucket = unique_bucket()
    h: StackHarness = await make_stack(analysis_nodes=2, storage_backend=seaweedfs.backend(bucket), seed=11)
    stack = h.stack
    # Intermediate: encrypted at rest, read once by its receiver only.
    plaintext = random.Random(5).randbytes(ic.CHUNK_SIZE + 100)
    body = await put_intermediate(h, "node-1", "aggregator", plaintext)
    stored = await stack.storage_backend.get(intermediate_key(stack.analysis_id, body["object_id"]))
    assert len(stored) == len(plaintext) + 2 * 28 and plaintext[:64] not in stored
    path = "/storage" + tail(body["url"])
    assert (await h.client("node-2").get(path, headers=h.auth("node-2"))).status_code == 400
    r = await h.client("aggregator").get(path, headers=h.auth("aggregator"))
    assert r.status_code == 200 and r.content == plaintext
    assert (await h.client("aggregator").get(path, headers=h.auth("aggregator"))).status_code == 404
    # Local results and tags, seen by a later analysis of the same project.
    oid = await put_local(h, "node-1", b"weights", name="w.bin", tag="w")
    later: StackHarness = await make_stack(
        analysis_nodes=2, storage_backend=seaweedfs.backend(bucket), seed=12, project_id=stack.project_id
    )
    client = later.client("node-1")
    r = await client.get("/storage/local/tags/w", headers=later.auth("node-1"))
    assert r.json() == {
        "results": [{"filename": "w.bin", "url": f"http://{host_of(later, 'node-1')}/local/{oid}"}]
    }
    r = await client.get(f"/storage/local/{oid}", headers=later.auth("node-1"))
    assert (r.status_code, r.content) == (200, b"weights")
    # Final results.
    r = await h.client("aggregator").put(
        "/storage/final", headers=h.auth("aggregator"), files=upload("result.txt", b"42")
    )
    assert r.status_code == 204
    assert await stack.final_results() == {"result.txt": b"42"}


@pytest.mark.integration
async def test_seaweedfs_checks_signatures(seaweedfs: SeaweedFS) -> None:
    bucket = unique_bucket()
    good = seaweedfs.backend(bucket)
    bad = seaweedfs.backend(bucket, secret_key="not-the-secret")
    try:
        await good.put("k", io.BytesIO(b"v"), 1)
        with pytest.raises(S3Error) as info:
            await bad.get("k")
        assert info.value.code == "SignatureDoesNotMatch"
        with pytest.raises(S3Error):
            await bad.put("k2", io.BytesIO(b"v"), 1)
        assert not await good.exists("k2")
        assert await good.get("k") == b"v"
    finally:
        await good.aclose()
        await bad.aclose()


@pytest.mark.integration
async def test_backend_contract_on_seaweedfs(seaweedfs: SeaweedFS) -> None:
    bucket = unique_bucket()
    await test_backend_contract(lambda: seaweedfs.backend(bucket, prefix="contract"))


@pytest.mark.integration
async def test_s3_listing_is_paginated(seaweedfs: SeaweedFS) -> None:
    """More keys than one ListObjects page (1000) are all listed."""
    backend = seaweedfs.backend(unique_bucket(), prefix="emulator")
    try:
        await backend.ensure_bucket()

        def put(i: int) -> None:
            backend._client.put_object(
                bucket_name=backend.bucket, object_name=f"emulator/p/{i:05d}", data=io.BytesIO(b"x"), length=1
            )

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(1003)))
        keys = await backend.list("p/")
        assert len(keys) == 1003 and keys[0] == "p/00000" and keys[-1] == "p/01002"
    finally:
        await backend.aclose()

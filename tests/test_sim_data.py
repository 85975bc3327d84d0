"""Conformance of the emulated hub adapter and Kong with their HTTP contract, with raw HTTP in both modes.

Data: the FHIR fixture of tests/data/fhir (see tests/data/generate_fhir.py for its rules: 25 Patients,
55 Observations, 14 Conditions) and an S3 folder of 2500 generated objects plus the CSVs of
tests/data/s3. Upstream sources are proxied to a FHIR app served on loopback, to moto's S3 server and,
in the integration test, to a real sekmet FHIR server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flame.sim.data import FolderBucket, S3Error
from flame.sim.fhir_search import FHIR_JSON, FhirLoadError, FhirStore, date_range, split_values
from flame.sim.node import DataSource, NodeSpec
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.conftest import StackHarness
from tests.fhirserver import SekmetServer, sekmet_command
from tests.servers import serve_asgi

FIXTURE = Path(__file__).parent / "data"
FHIR_SRC = "node-1-fhir"
S3_SRC = "node-1-s3"
N_BULK = 2500
SECRET = "TOP SECRET: outside the data folder\n"
S3 = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}

#: The fixture's rules (tests/data/generate_fhir.py).
PATIENTS = {
    f"pat-{i:02d}": ("female" if i % 2 else "male", f"{1950 + i}-{(i % 9) + 1:02d}-15") for i in range(1, 26)
}
OBSERVATIONS = {
    f"obs-{i:02d}-{kind}": (f"pat-{i:02d}", code)
    for i in range(1, 26)
    for kind, code in (("h", "8302-2"), ("w", "29463-7"), ("g", "2339-0"))
    if kind != "g" or i % 5 == 0
}
CONDITIONS = {
    f"cond-{i:02d}-{suffix}": (f"pat-{i:02d}", code)
    for i in range(1, 26)
    for suffix, code, every in (("dm", "44054006", 3), ("htn", "38341003", 4))
    if i % every == 0
}
#: What Kong's Admin API returns for a service (the fields clients rely on, and more).
SERVICE_FIELDS = {
    "id", "name", "host", "port", "protocol", "path", "tags", "created_at", "updated_at", "retries",
    "connect_timeout", "read_timeout", "write_timeout", "enabled", "tls_verify", "client_certificate",
}  # fmt: skip
S3_KEYS = sorted([f"bulk/obj-{i:04d}.txt" for i in range(N_BULK)] + ["cohort.csv", "labs/glucose.csv"])


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``node-1`` with ``fhir/`` (the fixture) and ``s3/`` (CSVs + 2500 objects + a link leaving the folder)."""
    root = tmp_path_factory.mktemp("flame-data")
    node = root / "node-1"
    shutil.copytree(FIXTURE / "fhir", node / "fhir")
    shutil.copytree(FIXTURE / "s3", node / "s3")
    bulk = node / "s3" / "bulk"
    bulk.mkdir()
    for i in range(N_BULK):
        (bulk / f"obj-{i:04d}.txt").write_text(f"object {i}\n")
    (root / "secret.txt").write_text(SECRET)
    os.symlink(root / "secret.txt", node / "s3" / "link-out.txt")
    return root


@pytest.fixture
async def data_stack(make_stack: Callable[..., Any], data_root: Path) -> StackHarness:
    harness: StackHarness = await make_stack(analysis_nodes=2, data_root=data_root)
    return harness


@pytest.fixture
async def make_custom_stack(mode: str) -> AsyncIterator[Callable[..., Any]]:
    """``await make_custom_stack([NodeSpec, ...])``: a started stack of these nodes in ``mode``."""
    harnesses: list[StackHarness] = []

    async def factory(specs: Sequence[NodeSpec], **kwargs: Any) -> StackHarness:
        kwargs.setdefault("settings", StackSettings.fast(po_enabled=False))
        stack = FlameStack(specs, **kwargs)
        await stack.start()
        if mode == "served":
            await stack.serve()
        harness = StackHarness(stack, mode)
        harnesses.append(harness)
        return harness

    yield factory
    for harness in harnesses:
        await harness.aclose()
        await harness.stack.aclose()


# -- helpers -----------------------------------------------------------------------------------------------


def key_of(harness: StackHarness, node: str = "node-1") -> dict[str, str]:
    return {"apikey": harness.stack.node(node).data_key}


async def fhir_get(client: httpx.AsyncClient, key: dict[str, str], query: str, source: str = FHIR_SRC) -> Any:
    answer = await client.get(f"/kong/{source}/fhir/{query}", headers=key)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    return answer.json()


async def fhir_all(
    client: httpx.AsyncClient, key: dict[str, str], query: str, source: str = FHIR_SRC
) -> tuple[list[dict[str, Any]], int]:
    """Every resource of a search, following ``next`` links through Kong; (resources, pages)."""
    resources: list[dict[str, Any]] = []
    pages = 0
    next_query: str | None = query
    while next_query is not None:
        bundle = await fhir_get(client, key, next_query, source)
        pages += 1
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        resources += [entry["resource"] for entry in bundle.get("entry", [])]
        links = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        next_query = links[0].split("/fhir/", 1)[1] if links else None
        assert pages < 200, "next links do not end"
    return resources, pages


def ids(resources: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]


async def search_ids(client: httpx.AsyncClient, key: dict[str, str], query: str) -> set[str]:
    resources, _ = await fhir_all(client, key, query)
    found = ids(resources)
    assert len(found) == len(set(found))
    return set(found)


def listing(text: str) -> dict[str, Any]:
    root = ET.fromstring(text)
    assert root.tag == "{http://s3.amazonaws.com/doc/2006-03-01/}ListBucketResult"

    def field(name: str) -> str | None:
        return root.findtext(f"s3:{name}", namespaces=S3)

    return {
        "keys": [c.findtext("s3:Key", namespaces=S3) for c in root.findall("s3:Contents", S3)],
        "contents": root.findall("s3:Contents", S3),
        "prefixes": [p.findtext("s3:Prefix", namespaces=S3) for p in root.findall("s3:CommonPrefixes", S3)],
        "truncated": field("IsTruncated"),
        "field": field,
    }


async def s3_list(client: httpx.AsyncClient, key: dict[str, str], source: str = S3_SRC, **params: str) -> Any:
    answer = await client.get(f"/kong/{source}/s3", params=params, headers=key)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/xml")
    return listing(answer.text)


def s3_error(answer: httpx.Response) -> str | None:
    return ET.fromstring(answer.text).findtext("Code")


# -- hub adapter -------------------------------------------------------------------------------------------


async def check_hub_adapter_lists_the_nodes_sources(data_stack: StackHarness) -> None:
    stack = data_stack.stack
    client = data_stack.client("node-1")
    answer = await client.get(
        f"/hub-adapter/kong/datastore/{stack.project_id}", headers=data_stack.auth("node-1")
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"data", "next"} and body["next"] is None
    services = {s["name"]: s for s in body["data"]}
    assert set(services) == {FHIR_SRC, S3_SRC}
    for kind, service in (("fhir", services[FHIR_SRC]), ("s3", services[S3_SRC])):
        assert not SERVICE_FIELDS - set(service), SERVICE_FIELDS - set(service)
        # as the hub adapter tags a project's services: the project and "{project}-{kind}", no type: tag
        assert service["tags"] == [stack.project_id, f"{stack.project_id}-{kind}"]
        assert (
            service["protocol"] == "http" and isinstance(service["port"], int) and service["enabled"] is True
        )
        assert service["routes"] == []
    ids_ = {s.name: s.id for s in stack.node("node-1").sources}
    assert services[FHIR_SRC]["id"] == ids_[FHIR_SRC]

    detailed = await client.get(
        f"/hub-adapter/kong/datastore/{stack.project_id}?detailed=true", headers=data_stack.auth("node-1")
    )
    routes = {s["name"]: s["routes"] for s in detailed.json()["data"]}
    assert routes[FHIR_SRC][0]["paths"] == [f"/{FHIR_SRC}/fhir"] and routes[S3_SRC][0]["methods"] == ["GET"]

    for other in ("node-2", "aggregator"):  # node-2 has no folder, the aggregator no data
        answer = await data_stack.client(other).get(
            f"/hub-adapter/kong/datastore/{stack.project_id}", headers=data_stack.auth(other)
        )
        assert answer.status_code == 200 and answer.json()["data"] == []
    assert stack.events.select("data.list", node="node-1")


async def check_hub_adapter_auth(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    url = f"/hub-adapter/kong/datastore/{data_stack.stack.project_id}"
    missing = await client.get(url)
    assert missing.status_code == 401 and missing.json() == {"detail": "Not authenticated"}
    bad = await client.get(url, headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 403
    # Only /kong/datastore/{PROJECT_ID} is routed by the sidecar.
    other_project = await client.get("/hub-adapter/kong/datastore/other", headers=data_stack.auth("node-1"))
    assert other_project.status_code == 404


# -- Kong: routes and key-auth -------------------------------------------------------------------------------


async def check_kong_key_auth_and_routes(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    url = f"/kong/{FHIR_SRC}/fhir/Patient?_summary=count"

    missing = await client.get(url)
    assert missing.status_code == 401
    assert missing.json()["message"] == "No API key found in request"
    assert missing.headers["www-authenticate"] == 'Key realm="kong"'

    wrong = await client.get(url, headers={"apikey": "kong-wrong"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "Invalid authentication credentials"
    other_node = await client.get(url, headers=key_of(data_stack, "node-2"))
    assert other_node.status_code == 401
    duplicate = await client.get(url, headers=[("apikey", "a"), ("apikey", "b")])
    assert duplicate.status_code == 401 and duplicate.json()["message"] == "Duplicate API key found"
    in_query = await client.get(url + "&apikey=" + data_stack.stack.node("node-1").data_key)
    assert in_query.status_code == 401  # FLAME's key-auth reads the header only

    no_route = {"message": "no Route matched with those values"}
    for path in (
        "/kong/nope/fhir/Patient",
        f"/kong/{FHIR_SRC}/s3",
        f"/kong/{S3_SRC}/fhir/Patient",
        "/kong/x",
    ):
        for headers in ({}, key_of(data_stack)):
            answer = await client.get(path, headers=headers)
            assert answer.status_code == 404, path
            assert answer.json()["message"] == no_route["message"]
    post = await client.post(f"/kong/{FHIR_SRC}/fhir/Patient", headers=key_of(data_stack), json={})
    assert post.status_code == 404

    ok = await client.get(url, headers=key_of(data_stack))
    assert ok.status_code == 200 and ok.json()["total"] == 25


# -- Kong: folder FHIR ---------------------------------------------------------------------------------------


async def check_fhir_search_type_and_summary_count(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)

    bundle = await fhir_get(client, key, "Patient")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset" and bundle["total"] == 25
    assert sorted(ids([e["resource"] for e in bundle["entry"]])) == sorted(PATIENTS)
    entry = bundle["entry"][0]
    assert entry["search"] == {"mode": "match"}
    assert entry["fullUrl"].endswith(f"/kong/{FHIR_SRC}/fhir/Patient/{entry['resource']['id']}")
    relations = {link["relation"] for link in bundle["link"]}
    assert "self" in relations and "next" not in relations

    for query in ("Patient?_summary=count", "Patient?_count=0"):
        counted = await fhir_get(client, key, query)
        assert counted["total"] == 25 and "entry" not in counted and counted["type"] == "searchset"
    assert (await fhir_get(client, key, "Observation?_summary=count"))["total"] == len(OBSERVATIONS)
    assert (await fhir_get(client, key, "Condition?_summary=count"))["total"] == len(CONDITIONS)
    empty = await fhir_get(client, key, "Encounter")  # a valid type with no data
    assert empty["total"] == 0 and not empty.get("entry")


PAGING_CASES = [
    ("Patient", 7, set(PATIENTS)),
    ("Patient", 25, set(PATIENTS)),
    ("Observation", 10, set(OBSERVATIONS)),
    (
        "Observation?code=http://loinc.org|8302-2",
        4,
        {o for o, (_, c) in OBSERVATIONS.items() if c == "8302-2"},
    ),
]


async def check_fhir_paging_follows_next_links(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    for query, page, expected in PAGING_CASES:
        sep = "&" if "?" in query else "?"
        resources, pages = await fhir_all(client, key_of(data_stack), f"{query}{sep}_count={page}")
        found = ids(resources)
        assert len(found) == len(set(found)) == len(expected), query
        assert set(found) == expected, query
        assert pages == -(-len(expected) // page), query


async def check_fhir_page_links_are_absolute_kong_urls(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)
    first = await fhir_get(client, key, "Patient?gender=female&_count=5")
    links = {link["relation"]: link["url"] for link in first["link"]}
    base = str(client.base_url).rstrip("/")
    assert links["next"].startswith(f"{base}/kong/{FHIR_SRC}/fhir/Patient?")
    # The absolute URL works as is, too (the stack reconstructs the client's own base URL).
    second = await client.get(links["next"], headers=key)
    assert second.status_code == 200
    following = {link["relation"] for link in second.json()["link"]}
    assert {"self", "previous", "next"} <= following
    # The stack's path form {base}/node/{name}: links keep the prefix.
    transport = httpx.ASGITransport(app=data_stack.stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stack.sim/node/node-1") as path_form:
        bundle = await fhir_get(path_form, key, "Patient?_count=5")
        next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
        assert next_url.startswith(f"http://stack.sim/node/node-1/kong/{FHIR_SRC}/fhir/Patient?")
        assert (await path_form.get(next_url, headers=key)).status_code == 200
    capped = await fhir_get(client, key, "Observation?_count=5000")
    assert len(capped["entry"]) == len(OBSERVATIONS)  # at most 1000 a page; all fit


async def check_fhir_search_parameters(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)

    def patients(test: Callable[[str, str], bool]) -> set[str]:
        return {p for p, (g, b) in PATIENTS.items() if test(g, b)}

    assert await search_ids(client, key, "Patient?_id=pat-03") == {"pat-03"}
    assert await search_ids(client, key, "Patient?_id=pat-03,pat-07,nope") == {"pat-03", "pat-07"}
    assert await search_ids(client, key, "Patient?gender=male") == patients(lambda g, b: g == "male")
    assert await search_ids(client, key, "Patient?gender=male,female") == set(PATIENTS)
    assert await search_ids(client, key, "Patient?birthdate=1960-02-15") == {"pat-10"}
    assert await search_ids(client, key, "Patient?birthdate=1960") == {"pat-10"}
    assert await search_ids(client, key, "Patient?birthdate=ge1970-01-01") == patients(
        lambda g, b: b >= "1970"
    )
    assert await search_ids(client, key, "Patient?birthdate=lt1955") == patients(lambda g, b: b < "1955")
    between = patients(lambda g, b: "1960" <= b < "1965")
    assert await search_ids(client, key, "Patient?birthdate=ge1960&birthdate=lt1965") == between
    assert await search_ids(client, key, "Patient?gender=female&birthdate=ge1960&birthdate=lt1965") == {
        p for p in between if PATIENTS[p][0] == "female"
    }

    glucose = {o for o, (_, c) in OBSERVATIONS.items() if c == "2339-0"}
    assert await search_ids(client, key, "Observation?code=http://loinc.org|2339-0") == glucose
    assert await search_ids(client, key, "Observation?code=2339-0") == glucose
    assert await search_ids(client, key, "Observation?code=http://snomed.info/sct|2339-0") == set()
    assert await search_ids(client, key, "Observation?code=2339-0,29463-7") == {
        o for o, (_, c) in OBSERVATIONS.items() if c in ("2339-0", "29463-7")
    }
    # pat-02's Observations were loaded with urn:uuid references inside a transaction Bundle.
    of_02 = {o for o, (p, _) in OBSERVATIONS.items() if p == "pat-02"}
    assert await search_ids(client, key, "Observation?subject=Patient/pat-02") == of_02
    assert await search_ids(client, key, "Observation?subject=pat-02") == of_02
    assert await search_ids(client, key, "Observation?patient=pat-02") == of_02
    of_10 = {o for o, (p, _) in OBSERVATIONS.items() if p == "pat-10"}
    assert await search_ids(client, key, "Observation?subject=Patient/pat-10&code=2339-0") == of_10 & glucose
    assert await search_ids(client, key, "Observation?date=2020-01-10") == of_10
    diabetes = {c for c, (_, code) in CONDITIONS.items() if code == "44054006"}
    assert await search_ids(client, key, "Condition?code=http://snomed.info/sct|44054006") == diabetes
    assert await search_ids(client, key, "Condition?patient=Patient/pat-12") == {"cond-12-dm", "cond-12-htn"}


async def check_fhir_read_and_errors(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)

    patient = await fhir_get(client, key, "Patient/pat-07")
    assert patient["resourceType"] == "Patient" and patient["id"] == "pat-07"
    assert patient["gender"] == PATIENTS["pat-07"][0]

    async def outcome(query: str, status: int, code: str) -> str:
        answer = await client.get(f"/kong/{FHIR_SRC}/fhir/{query}", headers=key)
        assert answer.status_code == status, (query, answer.text)
        assert answer.headers["content-type"].startswith("application/fhir+json")
        body = answer.json()
        assert body["resourceType"] == "OperationOutcome"
        issue = body["issue"][0]
        assert issue["severity"] == "error" and issue["code"] == code and issue["diagnostics"]
        return str(issue["diagnostics"])

    assert "nope" in await outcome("Patient/nope", 404, "not-found")
    assert "foo" in await outcome("Patient?foo=bar", 400, "not-supported")
    assert "code" in await outcome("Patient?code=123", 400, "not-supported")
    assert "Foo" in await outcome("Foo", 404, "not-supported")
    assert "Foo" in await outcome("Foo/1", 404, "not-supported")
    await outcome("Patient?birthdate=yesterday", 400, "invalid")
    await outcome("Patient?_count=many", 400, "invalid")
    await outcome("Patient?gender:text=male", 400, "not-supported")
    await outcome("Patient?_include=Patient:organization", 400, "not-supported")
    metadata = await fhir_get(client, key, "metadata")
    assert metadata["resourceType"] == "CapabilityStatement" and metadata["fhirVersion"] == "4.0.1"


# -- Kong: folder S3 -----------------------------------------------------------------------------------------


async def check_s3_list_v1_pages_over_all_keys(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)
    collected: list[str] = []
    marker = ""
    pages = 0
    while True:
        page = await s3_list(client, key, marker=marker) if marker else await s3_list(client, key)
        pages += 1
        assert len(page["keys"]) <= 1000
        collected += page["keys"]
        assert page["field"]("MaxKeys") == "1000"
        if page["truncated"] != "true":
            break
        marker = page["field"]("NextMarker") or page["keys"][-1]
    assert pages == 3
    assert collected == S3_KEYS  # sorted, every key exactly once, the link out of the folder left out
    first = (await s3_list(client, key, prefix="cohort"))["contents"][0]
    content = (FIXTURE / "s3" / "cohort.csv").read_bytes()
    assert first.findtext("s3:Size", namespaces=S3) == str(len(content))
    assert first.findtext("s3:ETag", namespaces=S3) == f'"{hashlib.md5(content).hexdigest()}"'
    assert first.findtext("s3:StorageClass", namespaces=S3) == "STANDARD"
    assert first.findtext("s3:LastModified", namespaces=S3).endswith("Z")


async def check_s3_list_v2_pages_over_all_keys(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)
    collected: list[str] = []
    params = {"list-type": "2"}
    pages = 0
    while True:
        page = await s3_list(client, key, **params)
        pages += 1
        assert page["field"]("KeyCount") == str(len(page["keys"]))
        collected += page["keys"]
        if page["truncated"] != "true":
            assert page["field"]("NextContinuationToken") is None
            break
        params = {"list-type": "2", "continuation-token": page["field"]("NextContinuationToken")}
    assert pages == 3 and collected == S3_KEYS

    after = await s3_list(client, key, **{"list-type": "2", "start-after": "bulk/obj-2497.txt"})
    assert after["keys"] == ["bulk/obj-2498.txt", "bulk/obj-2499.txt", "cohort.csv", "labs/glucose.csv"]
    small: list[str] = []
    params = {"list-type": "2", "max-keys": "400", "prefix": "bulk/obj-1"}
    while True:
        page = await s3_list(client, key, **params)
        small += page["keys"]
        if page["truncated"] != "true":
            break
        params = {**params, "continuation-token": page["field"]("NextContinuationToken")}
    assert small == [k for k in S3_KEYS if k.startswith("bulk/obj-1")]


async def check_s3_prefix_max_keys_delimiter_and_errors(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)
    assert (await s3_list(client, key, prefix="labs/"))["keys"] == ["labs/glucose.csv"]
    seven = await s3_list(client, key, **{"max-keys": "7"})
    assert seven["keys"] == S3_KEYS[:7] and seven["truncated"] == "true"
    capped = await s3_list(client, key, **{"list-type": "2", "max-keys": "5000"})
    assert capped["field"]("MaxKeys") == "1000" and len(capped["keys"]) == 1000
    top = await s3_list(client, key, delimiter="/")
    assert top["keys"] == ["cohort.csv"] and top["prefixes"] == ["bulk/", "labs/"]
    none = await s3_list(client, key, prefix="nothing/")
    assert none["keys"] == [] and none["truncated"] == "false"

    for params in ({"max-keys": "-1"}, {"max-keys": "x"}, {"list-type": "2", "continuation-token": "bogus"}):
        answer = await client.get(f"/kong/{S3_SRC}/s3", params=params, headers=key)
        assert answer.status_code == 400 and s3_error(answer) == "InvalidArgument", params


async def check_s3_objects(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)
    csv = await client.get(f"/kong/{S3_SRC}/s3/cohort.csv", headers=key)
    content = (FIXTURE / "s3" / "cohort.csv").read_bytes()
    assert csv.status_code == 200 and csv.content == content
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["etag"] == f'"{hashlib.md5(content).hexdigest()}"'
    nested = await client.get(f"/kong/{S3_SRC}/s3/labs/glucose.csv", headers=key)
    assert nested.content == (FIXTURE / "s3" / "labs" / "glucose.csv").read_bytes()
    bulk = await client.get(f"/kong/{S3_SRC}/s3/bulk/obj-0042.txt", headers=key)
    assert bulk.content == b"object 42\n"
    assert (await client.get(f"/kong/{S3_SRC}/s3/cohort.csv")).status_code == 401

    missing = await client.get(f"/kong/{S3_SRC}/s3/nope.csv", headers=key)
    assert missing.status_code == 404 and s3_error(missing) == "NoSuchKey"
    assert missing.headers["content-type"].startswith("application/xml")
    assert (await client.get(f"/kong/{S3_SRC}/s3/labs", headers=key)).status_code == 404  # a folder
    link = await client.get(f"/kong/{S3_SRC}/s3/link-out.txt", headers=key)
    assert link.status_code == 404 and "SECRET" not in link.text
    for path in (
        "%2E%2E/%2E%2E/secret.txt",
        "labs/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "%2E%2E%2F%2E%2E%2Fsecret.txt",
    ):
        answer = await client.get(f"/kong/{S3_SRC}/s3/{path}", headers=key)
        assert answer.status_code == 400, path
        assert "SECRET" not in answer.text
    slash = await client.get(f"/kong/{S3_SRC}/s3/", headers=key)  # the bucket, like GET /bucket/
    assert slash.status_code == 200 and "<ListBucketResult" in slash.text


async def check_data_requests_are_recorded(data_stack: StackHarness) -> None:
    client = data_stack.client("node-1")
    key = key_of(data_stack)
    await client.get(f"/kong/{FHIR_SRC}/fhir/Patient?_summary=count", headers=key)
    await client.get(f"/kong/{FHIR_SRC}/fhir/Patient?foo=1", headers=key)
    await client.get(f"/kong/{S3_SRC}/s3/cohort.csv", headers=key)
    await client.get(f"/kong/{S3_SRC}/s3/cohort.csv")
    events = data_stack.stack.events
    ok = events.select("data.fhir", node="node-1", source=FHIR_SRC, query="Patient?_summary=count")
    assert [e.detail["status"] for e in ok] == [200]
    assert events.select("data.fhir", node="node-1", query="Patient?foo=1", status=400)
    assert [e.detail["status"] for e in events.select("data.s3", node="node-1", query="cohort.csv")] == [
        200,
        401,
    ]


# -- the tests over the folder data (one stack each, to keep the suite fast) ----------------------------------


async def test_hub_adapter(data_stack: StackHarness) -> None:
    await check_hub_adapter_lists_the_nodes_sources(data_stack)
    await check_hub_adapter_auth(data_stack)


async def test_kong_routes_key_auth_and_events(data_stack: StackHarness) -> None:
    await check_data_requests_are_recorded(data_stack)
    await check_kong_key_auth_and_routes(data_stack)


async def test_fhir_search_and_paging(data_stack: StackHarness) -> None:
    await check_fhir_search_type_and_summary_count(data_stack)
    await check_fhir_paging_follows_next_links(data_stack)
    await check_fhir_page_links_are_absolute_kong_urls(data_stack)


async def test_fhir_parameters_read_and_errors(data_stack: StackHarness) -> None:
    await check_fhir_search_parameters(data_stack)
    await check_fhir_read_and_errors(data_stack)


async def test_s3_listing(data_stack: StackHarness) -> None:
    await check_s3_list_v1_pages_over_all_keys(data_stack)
    await check_s3_list_v2_pages_over_all_keys(data_stack)
    await check_s3_prefix_max_keys_delimiter_and_errors(data_stack)


async def test_s3_objects(data_stack: StackHarness) -> None:
    await check_s3_objects(data_stack)


# -- Kong: upstream sources ------------------------------------------------------------------------------------


def fhir_upstream_app(store: FhirStore, seen: list[dict[str, str]]) -> FastAPI:
    """A FHIR server at ``/fhir`` answering from ``store``; its links use its own address."""
    app = FastAPI()

    @app.get("/fhir/{path:path}")
    async def fhir(request: Request, path: str) -> JSONResponse:
        seen.append(dict(request.headers))
        base = str(request.base_url).rstrip("/") + "/fhir"
        status, body = store.handle(path, parse_qsl(request.url.query, keep_blank_values=True), base)
        return JSONResponse(body, status_code=status, media_type=FHIR_JSON)

    return app


async def test_upstream_fhir_source_is_proxied(make_custom_stack: Callable[..., Any], tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []
    upstream = await serve_asgi(fhir_upstream_app(FhirStore.from_folder(FIXTURE / "fhir"), seen))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "patients.ndjson").write_text('{"resourceType": "Patient", "id": "a"}\n{not json\n')
    try:
        source = DataSource(name="hospital-fhir", kind="fhir", upstream=f"{upstream.url}/fhir")
        bad_folder = DataSource(name="broken-fhir", kind="fhir", folder=broken)
        down = DataSource(name="down-fhir", kind="fhir", upstream="http://127.0.0.1:1/fhir")
        harness: StackHarness = await make_custom_stack(
            [
                NodeSpec("aggregator", role="aggregator"),
                NodeSpec("node-1", sources=[source, bad_folder, down]),
            ]
        )
        client = harness.client("node-1")
        key = key_of(harness)
        listed = await client.get(
            f"/hub-adapter/kong/datastore/{harness.stack.project_id}", headers=harness.auth("node-1")
        )
        service = listed.json()["data"][0]
        port = int(upstream.url.rsplit(":", 1)[1])
        assert (service["host"], service["port"], service["path"]) == ("127.0.0.1", port, "/fhir")
        assert service["tags"][-1].endswith("-fhir") and not any(
            t.startswith("type:") for t in service["tags"]
        )

        first = await fhir_get(client, key, "Patient?_count=10", "hospital-fhir")
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        assert next_url.startswith(f"{upstream.url}/fhir/")  # Kong passes the upstream's links unchanged
        resources, pages = await fhir_all(client, key, "Patient?_count=10", "hospital-fhir")
        assert sorted(ids(resources)) == sorted(PATIENTS) and pages == 3
        assert all("apikey" not in headers for headers in seen)  # key-auth hide_credentials
        missing = await client.get("/kong/hospital-fhir/fhir/Patient/nope", headers=key)
        assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
        assert (await client.get("/kong/hospital-fhir/fhir/Patient")).status_code == 401
        assert len(harness.stack.events.select("data.fhir", source="hospital-fhir")) >= 5
        failing = await client.get("/kong/broken-fhir/fhir/Patient", headers=key)
        assert failing.status_code == 500 and failing.json()["resourceType"] == "OperationOutcome"
        assert "patients.ndjson" in failing.json()["issue"][0]["diagnostics"]
        unreachable = await client.get("/kong/down-fhir/fhir/Patient", headers=key)
        assert unreachable.status_code == 502
        assert unreachable.json()["message"] == "An invalid response was received from the upstream server"
    finally:
        await upstream.aclose()


async def test_upstream_s3_source_is_proxied(make_custom_stack: Callable[..., Any]) -> None:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )
        s3.create_bucket(Bucket="flame-data")
        objects = {f"part-{i}.csv": f"a,b\n{i},{i * i}\n".encode() for i in range(5)}
        for name, body in objects.items():
            s3.put_object(Bucket="flame-data", Key=name, Body=body, ACL="public-read")
        source = DataSource(name="hospital-s3", kind="s3", upstream=f"{endpoint}/flame-data")
        harness: StackHarness = await make_custom_stack(
            [NodeSpec("aggregator", role="aggregator"), NodeSpec("node-1", sources=[source])]
        )
        client = harness.client("node-1")
        key = key_of(harness)
        collected: list[str] = []
        params = {"list-type": "2", "max-keys": "2"}
        while True:
            page = await s3_list(client, key, "hospital-s3", **params)
            collected += page["keys"]
            if page["truncated"] != "true":
                break
            params = {**params, "continuation-token": page["field"]("NextContinuationToken")}
        assert collected == sorted(objects)
        got = await client.get("/kong/hospital-s3/s3/part-3.csv", headers=key)
        assert got.status_code == 200 and got.content == objects["part-3.csv"]
        missing = await client.get("/kong/hospital-s3/s3/nope.csv", headers=key)
        assert missing.status_code == 404 and s3_error(missing) == "NoSuchKey"
    finally:
        server.stop()


@pytest.mark.integration
async def test_upstream_sekmet_fhir_server(make_custom_stack: Callable[..., Any], tmp_path: Path) -> None:
    """A real FHIR server behind Kong: next links are the server's own, and are followed all the same."""
    if sekmet_command() is None:
        pytest.skip("sekmet is not installed: pip install sekmet-fhir==0.1.1")
    async with SekmetServer(tmp_path / "sekmet") as server:
        entries: list[dict[str, Any]] = []
        for i in range(23):
            urn = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
            patient = {
                "resourceType": "Patient",
                "gender": "female" if i % 2 else "male",
                "birthDate": "1970-01-01",
            }
            entries.append(
                {"fullUrl": urn, "resource": patient, "request": {"method": "POST", "url": "Patient"}}
            )
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": {"reference": urn},
                "valueQuantity": {"value": 150 + i, "unit": "cm"},
            }
            entries.append({"resource": observation, "request": {"method": "POST", "url": "Observation"}})
        async with httpx.AsyncClient(timeout=30) as direct:
            loaded = await direct.post(
                server.base_url,
                json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                headers={"Content-Type": "application/fhir+json"},
            )
        assert loaded.status_code == 200, loaded.text
        created = [e["response"]["location"] for e in loaded.json()["entry"]]
        patient_ids = {loc.split("/Patient/")[1].split("/")[0] for loc in created if "/Patient/" in loc}
        assert len(patient_ids) == 23

        source = DataSource(name="sekmet-fhir", kind="fhir", upstream=server.base_url)
        harness: StackHarness = await make_custom_stack(
            [NodeSpec("aggregator", role="aggregator"), NodeSpec("node-1", sources=[source])]
        )
        client = harness.client("node-1")
        key = key_of(harness)
        counted = await fhir_get(client, key, "Patient?_summary=count", "sekmet-fhir")
        assert counted["total"] == 23
        first = await fhir_get(client, key, "Patient?_count=5", "sekmet-fhir")
        assert any(link["url"].startswith(server.base_url + "/") for link in first["link"])
        resources, pages = await fhir_all(client, key, "Patient?_count=5", "sekmet-fhir")
        assert sorted(ids(resources)) == sorted(patient_ids) and pages == 5
        one = sorted(patient_ids)[0]
        observations, _ = await fhir_all(client, key, f"Observation?subject=Patient/{one}", "sekmet-fhir")
        assert [o["subject"]["reference"].split("/")[-1] for o in observations] == [one]
        read = await fhir_get(client, key, f"Patient/{one}", "sekmet-fhir")
        assert read["id"] == one


# -- the search engine on its own ------------------------------------------------------------------------------


def test_store_loading_assigns_ids_and_resolves_bundle_references(tmp_path: Path) -> None:
    folder = tmp_path / "fhir"
    folder.mkdir()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}}},
        ],
    }  # fmt: skip
    (folder / "b.json").write_text(json.dumps(bundle))
    (folder / ".hidden.json").write_text("not json")
    store = FhirStore.from_folder(folder)
    assert ids(store.resources("Patient")) == ["11111111-1111-4111-8111-111111111111"]
    observation = store.resources("Observation")[0]
    assert observation["subject"]["reference"] == "Patient/11111111-1111-4111-8111-111111111111"
    assert (
        FhirStore.from_folder(folder).resources("Observation")[0]["id"] == observation["id"]
    )  # deterministic
    (folder / "bad.ndjson").write_text('{"resourceType": "Patient"}\n{oops\n')
    with pytest.raises(FhirLoadError, match=r"bad\.ndjson"):
        FhirStore.from_folder(folder)


def test_date_ranges_and_value_splitting() -> None:
    year = date_range("2020")
    assert year is not None and year[0].isoformat() == "2020-01-01T00:00:00+00:00"
    assert year[1].isoformat() == "2021-01-01T00:00:00+00:00"
    day = date_range("2020-02-28")
    assert day is not None and day[1].isoformat() == "2020-02-29T00:00:00+00:00"
    instant = date_range("2020-01-01T10:00:00+02:00")
    assert instant is not None and instant[0].isoformat() == "2020-01-01T08:00:00+00:00"
    assert date_range("2020-13") is None and date_range("soon") is None
    assert split_values(r"a,b\,c,d\|e") == ["a", "b,c", "d|e"]
    store = FhirStore(
        [{"resourceType": "Patient", "id": "p", "birthDate": "1980-05"}],
    )
    base = "http://x/fhir"
    for query, hit in (
        ("1980", True),
        ("1980-05-03", False),
        ("ge1980-05-01", True),
        ("gt1980-05", False),
        ("lt1980-06", True),
        ("sa1980-04", True),
        ("eb1980-06", True),
        ("ne1980-05", False),
    ):
        status, bundle = store.handle("Patient", [("birthdate", query)], base)
        assert status == 200 and bundle["total"] == int(hit), query


def test_folder_bucket_delimiter_paging_and_url_encoding(tmp_path: Path) -> None:
    for key in ("a/1.txt", "a/2.txt", "b c.txt", "d/x/y.txt", "e.txt"):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(key)
    bucket = FolderBucket("bucket", tmp_path)
    items: list[str] = []
    params = {"list-type": "2", "delimiter": "/", "max-keys": "1"}
    pages = 0
    while True:
        page = listing(bucket.list_objects(params).decode())
        pages += 1
        items += page["keys"] + page["prefixes"]
        if page["truncated"] != "true":
            break
        params = {**params, "continuation-token": page["field"]("NextContinuationToken")}
    assert items == ["a/", "b c.txt", "d/", "e.txt"] and pages == 4
    marker_items: list[str] = []
    v1 = {"delimiter": "/", "max-keys": "3"}
    while True:
        page = listing(bucket.list_objects(v1).decode())
        marker_items += page["keys"] + page["prefixes"]
        if page["truncated"] != "true":
            break
        v1 = {**v1, "marker": page["field"]("NextMarker")}
    assert sorted(marker_items) == ["a/", "b c.txt", "d/", "e.txt"]
    encoded = listing(bucket.list_objects({"prefix": "b", "encoding-type": "url"}).decode())
    assert encoded["keys"] == ["b%20c.txt"] and encoded["field"]("EncodingType") == "url"
    assert listing(bucket.list_objects({"prefix": "d/", "delimiter": "/"}).decode())["prefixes"] == ["d/x/"]
    assert listing(bucket.list_objects({"max-keys": "0"}).decode())["truncated"] == "false"
    with pytest.raises(S3Error) as error:
        bucket.resolve("a/../../etc/passwd")
    assert error.value.status == 400


def test_store_string_modifiers_and_sort() -> None:
    store = FhirStore.from_folder(FIXTURE / "fhir")
    base = "http://x/fhir"

    def found(rtype: str, *params: tuple[str, str]) -> list[str]:
        status, bundle = store.handle(rtype, list(params), base)
        assert status == 200, bundle
        return [e["resource"]["id"] for e in bundle.get("entry", [])]

    assert found("Patient", ("family", "family07")) == ["pat-07"]  # starts-with, case-insensitive
    assert found("Patient", ("name", "Given1")) == [f"pat-{i}" for i in range(10, 20)]
    assert found("Patient", ("family:exact", "family07")) == []
    assert found("Patient", ("family:contains", "ly25")) == ["pat-25"]
    assert found("Patient", ("identifier", "urn:flame:test:mrn|MRN0003")) == ["pat-03"]
    assert len(found("Patient", ("gender:not", "male"))) == 13
    assert found("Observation", ("code:missing", "true")) == []
    assert found("Patient", ("_sort", "-birthdate"), ("_count", "2")) == ["pat-25", "pat-24"]
    assert found("Observation", ("subject:Patient", "pat-10"), ("_sort", "code")) == [
        "obs-10-g",
        "obs-10-w",
        "obs-10-h",
    ]
    status, outcome = store.handle("Patient/pat-01/_history", [], base)
    assert status == 400 and outcome["issue"][0]["code"] == "not-supported"
    status, outcome = store.handle("Patient", [("_count", "-1")], base)
    assert status == 400 and outcome["issue"][0]["code"] == "invalid"

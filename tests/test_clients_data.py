"""HubAdapterClient, KongClient and DataAPI against the emulated node stack, in both modes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from flame.clients.data_api import (
    DataAPI,
    DataNotFoundError,
    DataSourceInfo,
    HubAdapterClient,
    KongClient,
    fhir_dataframe,
    fhir_tail,
    merge_bundles,
    parse_list_objects,
    read_dataframe,
)
from flame.errors import ConfigurationError, PayloadError, ProtocolError, ServiceError
from flame.sim.node import DataSource, NodeSpec
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.clients_helpers import node_clients
from tests.conftest import StackHarness
from tests.s3servers import ACCESS_KEY, SECRET_KEY, MotoS3, moto_s3, unique_bucket  # noqa: F401 - fixture

MakeStack = Callable[..., Any]

PATIENTS = 120  # the emulator's FHIR page is 50: three pages
OBSERVATIONS = 7
S3_SMALL = 2500  # ListObjects pages hold 1000 keys: three pages
SPECIAL_KEY = "odd/a b+c&d=é.txt"


def _patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"p{i:04d}",
        "gender": "female" if i % 2 else "male",
        "birthDate": f"{1940 + i % 60}-01-{1 + i % 28:02d}",
        "name": [{"family": f"Fam{i}", "given": [f"Given{i}", "Middle"]}],
        "address": [{"city": "Tübingen", "postalCode": f"{72000 + i}"}],
    }


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "id": np.arange(40, dtype=np.int64),
            "age": rng.integers(18, 90, 40),
            "bmi": rng.normal(25, 4, 40).round(3),
            "site": [f"s{i % 3}" for i in range(40)],
        }
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fhir = root / "node-1" / "fhir"
    fhir.mkdir(parents=True)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _patient(i)} for i in range(PATIENTS)],
    }
    (fhir / "patients.json").write_text(json.dumps(bundle))
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "subject": {"reference": f"Patient/p{i:04d}"},
            "valueQuantity": {"value": 150 + i, "unit": "cm"},
        }
        for i in range(OBSERVATIONS)
    ]
    (fhir / "observations.json").write_text(json.dumps(observations))
    s3 = root / "node-1" / "s3"
    (s3 / "small").mkdir(parents=True)
    for i in range(S3_SMALL):
        (s3 / "small" / f"f{i:05d}.txt").write_bytes(f"object {i}".encode())
    table = _table()
    table.to_csv(s3 / "table.csv", index=False)
    table.to_parquet(s3 / "table.parquet", index=False)
    (s3 / "odd").mkdir()
    (s3 / SPECIAL_KEY).write_bytes(b"special")
    # node-2 has an S3 source only, aggregator no data.
    (root / "node-2" / "s3").mkdir(parents=True)
    (root / "node-2" / "s3" / "table.csv").write_bytes(b"a,b\n1,2\n")
    return root


async def _stack(make_stack: MakeStack, data_root: Path) -> StackHarness:
    h: StackHarness = await make_stack(analysis_nodes=2, data_root=data_root)
    return h


def _data(h: StackHarness, node: str = "node-1") -> tuple[DataAPI, KongClient, Any]:
    c = node_clients(h, node)
    assert c.data is not None and c.kong is not None
    return c.data, c.kong, c


# -- sources ----------------------------------------------------------------------------------------------


async def test_sources_by_type(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    data, _, c = _data(h)
    sources = await data.sources()
    assert sorted((s.name, s.kind) for s in sources) == [("node-1-fhir", "fhir"), ("node-1-s3", "s3")]
    assert all(isinstance(s, DataSourceInfo) and s.id and s.raw["name"] == s.name for s in sources)
    assert [s.name for s in await data.fhir_sources()] == ["node-1-fhir"]
    assert [s.name for s in await data.s3_sources()] == ["node-1-s3"]
    assert c.transport.count("GET", "/kong/datastore/") == 1  # cached
    await data.sources(refresh=True)
    assert c.transport.count("GET", "/kong/datastore/") == 2
    # node-2: S3 only. The aggregator has no sources, and no data key for Kong.
    data2, _, _ = _data(h, "node-2")
    assert [(s.name, s.kind) for s in await data2.sources()] == [("node-2-s3", "s3")]
    assert await data2.get_fhir_data(["Patient"]) == []
    agg = node_clients(h, "aggregator")
    assert agg.kong is None and await agg.hub.data_sources(h.stack.project_id) == []
    with pytest.raises(ConfigurationError, match="DATA_SOURCE_TOKEN"):
        KongClient(agg.http, agg.urls.kong, data_key="none_needed")
    # The sidecar routes only this analysis' project to the hub adapter.
    with pytest.raises(ServiceError) as err:
        await c.hub.data_sources("00000000-0000-4000-8000-000000000000")
    assert err.value.status == 404 and "PROJECT_ID" in str(err.value)


def test_source_kind_from_tags() -> None:
    def kind(tags: Any) -> str:
        return DataSourceInfo.from_service({"id": "i", "name": "n", "tags": tags}).kind

    assert kind(["p", "type:fhir"]) == "fhir"
    assert kind(["type:s3", "p"]) == "s3"
    assert kind(["p"]) == kind(None) == kind(["type:fhir", "type:s3"]) == kind(["type:sql"]) == "unknown"


# -- FHIR -------------------------------------------------------------------------------------------------


async def test_fhir_paging_to_the_end(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    _, kong, c = _data(h)
    pages = await kong.fhir_pages("node-1-fhir", "Patient")
    assert len(pages) == 3 and [len(p["entry"]) for p in pages] == [50, 50, 20]
    resources = await kong.fhir("node-1-fhir", "Patient")
    assert sorted(r["id"] for r in resources) == [f"p{i:04d}" for i in range(PATIENTS)]
    # Filters and _count survive the next links.
    women = await kong.fhir("node-1-fhir", "Patient?gender=female&_count=7")
    assert len(women) == PATIENTS // 2 and all(r["gender"] == "female" for r in women)
    # A read gives the one resource.
    assert await kong.fhir("node-1-fhir", "Patient/p0003") == [_patient(3) | {"id": "p0003"}]
    # One merged Bundle, total kept, no next link left.
    bundle = await kong.fhir_bundle("node-1-fhir", "Patient?_count=40")
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == PATIENTS
    assert len(bundle["entry"]) == PATIENTS
    assert [link["relation"] for link in bundle["link"]].count("next") == 0
    # Each page came through Kong, with the apikey and no Bearer.
    queries = [e.detail["query"] for e in h.stack.events.select("data.fhir", node="node-1")]
    assert queries[:3] == ["Patient", "Patient?_count=50&_offset=50", "Patient?_count=50&_offset=100"]
    assert c.transport.count("GET", "/kong/node-1-fhir/fhir/") == len(queries)


async def test_fhir_page_limit_count_and_get_fhir_data(
    make_stack: MakeStack, data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = await _stack(make_stack, data_root)
    data, kong, _ = _data(h)
    with caplog.at_level(logging.WARNING, logger="flame.clients.data_api"):
        cut = await kong.fhir("node-1-fhir", "Patient", page_limit=2)
    assert len(cut) == 100
    assert any("page_limit=2" in r.getMessage() for r in caplog.records)
    bundle = await kong.fhir_bundle("node-1-fhir", "Patient", page_limit=1)
    assert len(bundle["entry"]) == 50 and bundle["total"] == PATIENTS
    assert any(link["relation"] == "next" for link in bundle["link"])  # cut: the way on is kept
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flame.clients.data_api"):
        assert len(await kong.fhir("node-1-fhir", "Patient", page_limit=None)) == PATIENTS
        assert len(await kong.fhir("node-1-fhir", "Patient", page_limit=3)) == PATIENTS
    assert not caplog.records
    with pytest.raises(ValueError):
        await kong.fhir("node-1-fhir", "Patient", page_limit=0)

    assert await kong.fhir_count("node-1-fhir", "Patient") == PATIENTS
    assert await kong.fhir_count("node-1-fhir", "Observation") == OBSERVATIONS
    assert await kong.fhir_count("node-1-fhir", "Condition") == 0

    result = await data.get_fhir_data(["Patient?_count=30", "Observation"])
    assert len(result) == 1 and list(result[0]) == ["Patient?_count=30", "Observation"]
    assert len(result[0]["Patient?_count=30"]["entry"]) == PATIENTS
    assert result[0]["Observation"]["total"] == OBSERVATIONS


async def test_fhir_errors_raise_with_diagnostics(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    data, kong, c = _data(h)
    with pytest.raises(ServiceError) as err:
        await kong.fhir("node-1-fhir", "Patient?colour=blue")
    e = err.value
    assert (e.service, e.status) == ("kong", 400)
    assert "Unknown search parameter 'colour'" in e.detail and "OperationOutcome" in e.detail
    assert "{" not in e.detail  # the diagnostics text, not the JSON
    with pytest.raises(ServiceError) as err:
        await kong.fhir("node-1-fhir", "Patient/nobody")
    assert err.value.status == 404 and "Patient/nobody is not known" in err.value.detail
    with pytest.raises(ServiceError) as err:
        await kong.fhir_count("node-1-fhir", "Unicorn")
    assert err.value.status == 404 and "Unknown resource type 'Unicorn'" in str(err.value)
    # get_fhir_data raises too (PrivateAIM's SDK only warns).
    with pytest.raises(ServiceError, match="colour"):
        await data.get_fhir_data(["Patient", "Patient?colour=blue"])
    # An unknown source: Kong's own 404, with a hint.
    with pytest.raises(ServiceError) as err:
        await kong.fhir("no-such-source", "Patient")
    assert (
        err.value.status == 404 and "no Route matched" in str(err.value) and "source name" in str(err.value)
    )
    # An S3 source asked for FHIR is not routed either.
    with pytest.raises(ServiceError, match="no Route matched"):
        await kong.fhir("node-1-s3", "Patient")
    # 4xx are not retried.
    assert all(s != 503 for _, _, s in c.transport.requests)


async def test_wrong_apikey_is_401(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    c = node_clients(h, "node-1")
    wrong = c.kong_with_key("kong-not-the-key-at-all")
    before = c.transport.count()
    for call in (wrong.fhir("node-1-fhir", "Patient"), wrong.s3_keys("node-1-s3")):
        with pytest.raises(ServiceError) as err:
            await call
        assert err.value.status == 401 and err.value.service == "kong"
        assert "Invalid authentication credentials" in str(err.value) and "DATA_SOURCE_TOKEN" in str(
            err.value
        )
        assert "kong-not-the-key-at-all" not in str(err.value)
    assert c.transport.count() == before + 2  # not retried
    # Another node's key does not open this node's sources.
    other = c.kong_with_key(h.stack.node("node-2").data_key)
    with pytest.raises(ServiceError) as err:
        await other.s3_object("node-1-s3", "table.csv")
    assert err.value.status == 401


async def test_fhir_dataframe(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    _, kong, _ = _data(h)
    patients = await kong.fhir("node-1-fhir", "Patient?_count=100")
    frame = fhir_dataframe(patients)
    assert len(frame) == PATIENTS
    assert list(frame.columns[:4]) == ["resourceType", "id", "gender", "birthDate"]
    for column in (
        "name.0.family",
        "name.0.given.0",
        "name.0.given.1",
        "address.0.city",
        "address.0.postalCode",
    ):
        assert column in frame.columns
    row = frame.set_index("id").loc["p0005"]
    assert row["name.0.given.0"] == "Given5" and row["address.0.city"] == "Tübingen"
    observations = fhir_dataframe(await kong.fhir_bundle("node-1-fhir", "Observation"))
    assert len(observations) == OBSERVATIONS
    assert list(observations["valueQuantity.value"]) == [150 + i for i in range(OBSERVATIONS)]
    assert set(observations["code.coding.0.code"]) == {"8302-2"}


def test_fhir_dataframe_shapes() -> None:
    frame = fhir_dataframe(
        [
            {"resourceType": "Patient", "id": "a", "name": [{"given": ["x", "y"]}]},
            {"resourceType": "Patient", "id": "b", "deceasedBoolean": True, "meta": {"tag": []}},
        ]
    )
    assert list(frame.columns) == [
        "resourceType",
        "id",
        "name.0.given.0",
        "name.0.given.1",
        "deceasedBoolean",
    ]
    assert frame["name.0.given.1"].isna().tolist() == [False, True]
    assert fhir_dataframe([]).empty
    with pytest.raises(PayloadError):
        fhir_dataframe(["not a resource"])  # type: ignore[list-item]


def test_fhir_links_and_merging() -> None:
    base = "http://nginx-analysis-x-0/kong/fhir/fhir/Patient?_count=5&_offset=5"
    assert fhir_tail(base) == "Patient?_count=5&_offset=5"  # a source called "fhir"
    assert (
        fhir_tail("http://hapi:8080/fhir?_getpages=abc&_getpagesoffset=20")
        == "?_getpages=abc&_getpagesoffset=20"
    )
    assert fhir_tail("http://h/fhir/Observation?subject=http://x/fhir/Patient/1") == (
        "Observation?subject=http://x/fhir/Patient/1"
    )
    with pytest.raises(ProtocolError):
        fhir_tail("http://h/other/Patient")
    pages = [
        {
            "resourceType": "Bundle",
            "total": 3,
            "entry": [{"resource": {"id": "1"}}],
            "link": [{"relation": "next", "url": "u"}],
        },
        {
            "resourceType": "Bundle",
            "total": 3,
            "entry": [{"resource": {"id": "2"}}, {"resource": {"id": "3"}}],
        },
    ]
    merged = merge_bundles(pages)
    assert merged["total"] == 3 and [e["resource"]["id"] for e in merged["entry"]] == ["1", "2", "3"]
    assert merged["link"] == []


async def test_fhir_link_loop_is_refused() -> None:
    page = {
        "resourceType": "Bundle",
        "entry": [],
        "link": [{"relation": "next", "url": "http://x/kong/src/fhir/Patient?page=2"}],
    }
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json=page)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        kong = KongClient(http, "http://nginx-x/kong", data_key="kong-key-12345")
        with pytest.raises(ProtocolError, match="loop"):
            await kong.fhir("src", "Patient")
    assert calls == ["http://nginx-x/kong/src/fhir/Patient", "http://nginx-x/kong/src/fhir/Patient?page=2"]


# -- S3 ---------------------------------------------------------------------------------------------------


async def test_s3_listing_collects_every_key_once(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    _, kong, _ = _data(h)
    keys = await kong.s3_keys("node-1-s3")
    small = [f"small/f{i:05d}.txt" for i in range(S3_SMALL)]
    assert len(keys) == len(set(keys)) == S3_SMALL + 3
    assert sorted(keys) == sorted([*small, "table.csv", "table.parquet", SPECIAL_KEY])
    listings = [
        e for e in h.stack.events.select("data.s3", node="node-1") if "list-type" in e.detail["query"]
    ]
    assert len(listings) == 3 and all(e.detail["status"] == 200 for e in listings)
    assert await kong.s3_keys("node-1-s3", prefix="small/") == small
    assert await kong.s3_keys("node-1-s3", prefix="odd/") == [SPECIAL_KEY]
    assert await kong.s3_keys("node-1-s3", prefix="nothing/") == []


async def test_s3_objects_and_get_s3_data(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    data, kong, _ = _data(h)
    assert await kong.s3_object("node-1-s3", "small/f00042.txt") == b"object 42"
    assert await kong.s3_object("node-1-s3", SPECIAL_KEY) == b"special"
    wanted = ["small/f00007.txt", SPECIAL_KEY, "small/f02499.txt"]
    objects = await kong.s3_objects("node-1-s3", wanted)
    assert list(objects) == wanted
    assert objects == {
        "small/f00007.txt": b"object 7",
        SPECIAL_KEY: b"special",
        "small/f02499.txt": b"object 2499",
    }
    with pytest.raises(ServiceError) as err:
        await kong.s3_object("node-1-s3", "small/missing.txt")
    assert err.value.status == 404 and "NoSuchKey" in err.value.detail
    with pytest.raises(ServiceError, match="NoSuchKey"):
        await kong.s3_objects("node-1-s3", ["table.csv", "missing.csv"])

    result = await data.get_s3_data(["table.csv", "small/f00001.txt"])
    assert result == [
        {"table.csv": (data_root / "node-1/s3/table.csv").read_bytes(), "small/f00001.txt": b"object 1"}
    ]
    with pytest.raises(DataNotFoundError, match=r"missing\.csv"):
        await data.get_s3_data(["table.csv", "missing.csv"])
    data2, kong2, _ = _data(h, "node-2")
    assert await data2.get_s3_data() == [{"table.csv": b"a,b\n1,2\n"}]
    assert await kong2.s3_objects("node-2-s3") == {"table.csv": b"a,b\n1,2\n"}


async def test_s3_dataframes(make_stack: MakeStack, data_root: Path) -> None:
    h = await _stack(make_stack, data_root)
    _, kong, _ = _data(h)
    original = _table()
    pd.testing.assert_frame_equal(await kong.s3_dataframe("node-1-s3", "table.csv"), original)
    pd.testing.assert_frame_equal(await kong.s3_dataframe("node-1-s3", "table.parquet"), original)
    subset = await kong.s3_dataframe("node-1-s3", "table.csv", usecols=["id", "site"])
    assert list(subset.columns) == ["id", "site"]
    with pytest.raises(PayloadError, match="format"):
        await kong.s3_dataframe("node-1-s3", "small/f00001.txt")


def test_read_dataframe_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PayloadError, match=r"table\.parquet"):
        read_dataframe(b"not parquet", "table.parquet")
    import importlib

    real = importlib.import_module

    def no_pyarrow(name: str, *args: Any) -> Any:
        if name == "pyarrow":
            raise ImportError("no pyarrow")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_pyarrow)
    with pytest.raises(PayloadError, match="pip install pyarrow"):
        read_dataframe(b"PAR1", "x.parquet")


def _listing(keys: list[str], *, ns: bool = True, **fields: str) -> bytes:
    xmlns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if ns else ""
    parts = [f"<{k}>{v}</{k}>" for k, v in fields.items()]
    parts += [f"<Contents><Key>{k}</Key><Size>1</Size></Contents>" for k in keys]
    return f'<?xml version="1.0"?><ListBucketResult{xmlns}>{"".join(parts)}</ListBucketResult>'.encode()


async def _list_with(answer: Callable[[httpx.Request], httpx.Response]) -> list[str]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        kong = KongClient(http, "http://nginx-x/kong", data_key="kong-key-12345")
        return await kong.s3_keys("src")


async def test_s3_listing_falls_back_to_v1_markers() -> None:
    everything = [f"k{i:03d}" for i in range(25)]
    seen: list[dict[str, str]] = []

    def v1_only(request: httpx.Request) -> httpx.Response:
        # A server that ignores list-type=2: V1 pages of 10, IsTruncated but no NextMarker.
        params = dict(request.url.params)
        seen.append(params)
        marker = params.get("marker", "")
        rest = [k for k in everything if k > marker]
        page = rest[:10]
        return httpx.Response(200, content=_listing(page, IsTruncated=str(len(rest) > 10).lower()))

    assert await _list_with(v1_only) == everything
    assert "list-type" in seen[0] and [p.get("marker") for p in seen] == [None, "k009", "k019"]
    assert all("list-type" not in p for p in seen[1:])

    def no_truncation_flag(request: httpx.Request) -> httpx.Response:
        # No IsTruncated at all, no namespace: page on with markers until nothing new comes.
        marker = request.url.params.get("marker", "")
        return httpx.Response(200, content=_listing([k for k in everything if k > marker][:10], ns=False))

    assert await _list_with(no_truncation_flag) == everything

    def v2_url_encoded(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("continuation-token")
        if token is None:
            return httpx.Response(
                200,
                content=_listing(
                    ["a%20b", "c%2Bd"], EncodingType="url", IsTruncated="true", NextContinuationToken="t1"
                ),
            )
        assert token == "t1"
        return httpx.Response(200, content=_listing(["e%26f"], EncodingType="url", IsTruncated="false"))

    assert await _list_with(v2_url_encoded) == ["a b", "c+d", "e&f"]

    def stuck(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_listing(["a"], IsTruncated="true", NextContinuationToken="same"))

    with pytest.raises(ProtocolError, match="continuation token"):
        await _list_with(stuck)

    def not_xml(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{}")

    with pytest.raises(ProtocolError, match="not XML"):
        await _list_with(not_xml)


def test_parse_list_objects_page() -> None:
    page = parse_list_objects(_listing(["a", "b"], IsTruncated="true", NextMarker="b"))
    assert (page.keys, page.truncated, page.next_token, page.next_marker) == (["a", "b"], True, None, "b")


async def test_hub_adapter_protocol_error() -> None:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=[]))
    ) as http:
        hub = HubAdapterClient(http, "http://nginx-x/hub-adapter")
        with pytest.raises(ProtocolError, match="data"):
            await hub.data_sources("p")


@pytest.mark.integration
async def test_s3_listing_through_kong_to_a_real_s3(request: pytest.FixtureRequest) -> None:
    """An S3 source proxied by Kong to moto's S3: V2 pagination against a real implementation."""
    import boto3  # type: ignore[import-untyped]

    moto: MotoS3 = request.getfixturevalue("moto_s3")

    bucket = unique_bucket()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{moto.endpoint}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    keys = sorted([f"part/{i:03d}.bin" for i in range(23)] + [SPECIAL_KEY])
    for key in keys:
        # Kong forwards no S3 credentials; moto serves anonymous GetObject only for public objects.
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode(), ACL="public-read")
    source = DataSource("bucket", "s3", upstream=f"http://{moto.endpoint}/{bucket}")
    stack = FlameStack(
        [NodeSpec("aggregator", role="aggregator"), NodeSpec("node-1", sources=[source])],
        settings=StackSettings.fast(po_enabled=False),
    )
    await stack.start()
    h = StackHarness(stack, "inprocess")
    try:
        c = node_clients(h, "node-1")
        assert c.kong is not None
        assert await c.kong.s3_keys("bucket", max_keys=5) == keys
        assert c.transport.count("GET", "/kong/bucket/s3") == 5
        assert await c.kong.s3_keys("bucket", prefix="part/", max_keys=10) == [
            k for k in keys if k.startswith("part/")
        ]
        assert await c.kong.s3_object("bucket", SPECIAL_KEY) == SPECIAL_KEY.encode()
        with pytest.raises(ServiceError) as err:
            await c.kong.s3_object("bucket", "nope")
        assert err.value.status == 404 and "NoSuchKey" in err.value.detail
    finally:
        await h.aclose()
        await stack.aclose()


def test_source_kind_falls_back_to_the_real_hub_adapters_naming() -> None:
    from flame.clients.data_api import DataSourceInfo

    project = "0b9a3a1c-6d3e-4e37-9d52-3c1f0d8f5e21"
    fhir = DataSourceInfo.from_service(
        {"id": "1", "name": f"{project}-fhir", "tags": [project, f"{project}-fhir"]}
    )
    s3 = DataSourceInfo.from_service({"id": "2", "name": "minio", "tags": [project, f"{project}-s3"]})
    other = DataSourceInfo.from_service({"id": "3", "name": "x", "tags": [project]})
    assert (fhir.kind, s3.kind, other.kind) == ("fhir", "s3", "unknown")

"""Clients of the node's data sources: the hub adapter's listing and the Kong proxy.

- :class:`HubAdapterClient` lists the project's data sources (``GET /kong/datastore/{project_id}``,
  Bearer).
- :class:`KongClient` reads them through Kong with the ``apikey`` header (``DATA_SOURCE_TOKEN``): FHIR
  searches followed through every ``next`` link, S3 listings across every page, S3 objects, and
  DataFrames from CSV/Parquet objects and from FHIR resources.
- :class:`DataAPI` puts both together and maps PrivateAIM's ``get_fhir_data``/``get_s3_data``.

Failures raise (:class:`~flame.errors.ServiceError` with the FHIR OperationOutcome's diagnostics, the
Kong or S3 error message); nothing is only logged. The one deliberate exception is a FHIR search cut
at ``page_limit``: what was fetched is returned and a warning names the limit.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote, unquote, urlsplit

import httpx

from flame.clients.base import RETRY_STATUSES, ServiceClient
from flame.errors import (
    ConfigurationError,
    DataNotFoundError,
    PayloadError,
    ProtocolError,
    ServiceError,
)
from flame.redact import MIN_SECRET_LENGTH, redact, register_secret

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SourceKind = Literal["fhir", "s3", "unknown"]

#: Pages of a FHIR search followed by default before the search is cut (with a warning).
DEFAULT_PAGE_LIMIT = 100
#: S3 objects fetched at once by :meth:`KongClient.s3_objects`.
S3_CONCURRENCY = 8
#: Every status the base client does not retry: answered at once, so that error bodies can be read.
_ANSWERED = tuple(s for s in range(100, 600) if s not in RETRY_STATUSES)
_KEY_HINT = (
    "is DATA_SOURCE_TOKEN this node's Kong key? (aggregators get 'none_needed' and have no data access)"
)
_ROUTE_HINT = "is the data source name right, and is it of this kind (type:fhir or type:s3)?"


@dataclass(frozen=True)
class DataSourceInfo:
    """One data source of the project, as the hub adapter lists it (a Kong service).

    ``kind`` comes from the ``type:fhir``/``type:s3`` tag, or, as the real hub adapter tags services,
    from a ``-fhir``/``-s3`` suffix of the name or a tag; ``raw`` is the whole service object.
    """

    id: str
    name: str
    kind: SourceKind
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_service(cls, service: Mapping[str, Any]) -> DataSourceInfo:
        tags = service.get("tags") or []
        kinds = {str(t)[len("type:") :] for t in tags if isinstance(t, str) and t.startswith("type:")}
        if not kinds:
            # the real hub adapter names and tags services "{project}-{kind}", without a type: tag
            names = [str(service.get("name", "")), *(str(t) for t in tags)]
            kinds = {kind for kind in ("fhir", "s3") for name in names if name.endswith("-" + kind)}
        kind: SourceKind = "fhir" if kinds == {"fhir"} else "s3" if kinds == {"s3"} else "unknown"
        return cls(id=str(service.get("id", "")), name=str(service["name"]), kind=kind, raw=dict(service))


class HubAdapterClient(ServiceClient):
    """The hub adapter: which data sources the project has on this node."""

    service = "hub-adapter"
    #: FastAPI's HTTPBearer: 401 only without a header, 403 for a bad or expired token
    token_refused = frozenset({401, 403})

    async def data_sources(self, project_id: str) -> list[DataSourceInfo]:
        """The project's data sources on this node (none on an aggregator, as a rule)."""
        response = await self.request(
            "GET", f"/kong/datastore/{project_id}", hint="is PROJECT_ID the project of this analysis?"
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(isinstance(s, dict) and "name" in s for s in data):
            raise ProtocolError(
                f"hub-adapter: GET /kong/datastore/{project_id} is not {{'data': [service, ...]}}: "
                f"{response.text[:200]!r}"
            )
        return [DataSourceInfo.from_service(s) for s in data]


class DataObserver(Protocol):
    """Told of the data a node reads (the disclosure guard: record count and identifiers)."""

    def observe_s3(self, key: str, data: bytes) -> None: ...

    def observe_fhir(self, resources: Sequence[Mapping[str, Any]]) -> None: ...


class KongClient(ServiceClient):
    """Kong's data proxy: FHIR and S3 sources of this node, with ``apikey: DATA_SOURCE_TOKEN``."""

    service = "kong"

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, *, data_key: str | None, **kwargs: Any
    ) -> None:
        if kwargs.get("tokens") is not None:
            raise TypeError("Kong takes the data key (apikey), not the Keycloak token store")
        if not data_key or data_key == "none_needed":
            raise ConfigurationError(
                "DATA_SOURCE_TOKEN",
                "is not set or 'none_needed': this node has no data access",
                "the Kong API key the node gives analyses with data access",
            )
        super().__init__(http, base_url, **kwargs)
        self._data_key = data_key
        #: told of every table and FHIR search read (the node's disclosure guard learns its data)
        self.observer: DataObserver | None = None
        if len(data_key) >= MIN_SECRET_LENGTH:  # shorter strings cannot be redacted without garbling text
            register_secret(data_key)

    async def _get(self, path: str, *, hint: str = "", **kwargs: Any) -> httpx.Response:
        """GET with the apikey; any error status raises ServiceError with the body's own message."""
        headers = {**kwargs.pop("headers", {}), "apikey": self._data_key}
        response = await self.request("GET", path, expected=_ANSWERED, hint=hint, headers=headers, **kwargs)
        if response.status_code == 200:
            return response
        status = response.status_code
        if status == 401:
            hint = _KEY_HINT
        elif status == 404 and _kong_message(response) == "no Route matched with those values":
            hint = _ROUTE_HINT
        what = f"GET {urlsplit(path).path}"
        raise ServiceError(self.service, what, status, error_detail(response), hint=hint)

    # -- FHIR -----------------------------------------------------------------------------------------

    async def fhir_pages(
        self, source_name: str, query: str, *, page_limit: int | None = DEFAULT_PAGE_LIMIT
    ) -> list[dict[str, Any]]:
        """Every page of a FHIR query: the first answer, then each ``next`` link's answer in turn.

        ``query`` is what follows ``/fhir/``, e.g. ``Patient?gender=female`` or ``Patient/123``. Links
        are followed by taking the part of their URL after ``/fhir/`` (never the URL itself). At
        ``page_limit`` pages (None: no limit) the search stops and a warning names the limit.
        """
        if page_limit is not None and page_limit < 1:
            raise ValueError(f"page_limit must be at least 1 or None, got {page_limit}")
        tail = query.lstrip("/")
        pages: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            seen.add(tail)
            response = await self._get(_fhir_path(source_name, tail))
            try:
                page = response.json()
            except ValueError:
                page = None
            if not isinstance(page, dict):
                raise ProtocolError(
                    f"kong: {source_name}/fhir/{_short(tail)} did not answer a FHIR JSON resource: "
                    f"{response.text[:200]!r}"
                )
            pages.append(page)
            link = next_link(page)
            if link is None:
                return self._observed(pages)
            tail = fhir_tail(link)
            if tail in seen:
                raise ProtocolError(
                    f"kong: the FHIR server of {source_name} links back to a page already read "
                    f"({_short(tail)}); stopped to avoid a loop"
                )
            if page_limit is not None and len(pages) >= page_limit:
                log.warning(
                    "FHIR query %s on %s cut at page_limit=%d pages (%d resources read); raise page_limit "
                    "(or pass None) to read the rest",
                    _short(query),
                    source_name,
                    page_limit,
                    sum(len(p.get("entry") or []) for p in pages),
                )
                return self._observed(pages)

    def _observed(self, pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.observer is not None:
            self.observer.observe_fhir(bundle_resources(pages))
        return pages

    async def fhir(
        self, source_name: str, query: str, *, page_limit: int | None = DEFAULT_PAGE_LIMIT
    ) -> list[dict[str, Any]]:
        """The resources a FHIR query returns across all its pages (``entry[].resource``).

        A query that answers a single resource (``Patient/123``) gives ``[that resource]``.
        """
        return bundle_resources(await self.fhir_pages(source_name, query, page_limit=page_limit))

    async def fhir_bundle(
        self, source_name: str, query: str, *, page_limit: int | None = DEFAULT_PAGE_LIMIT
    ) -> dict[str, Any]:
        """One Bundle for a FHIR query: the first page with the entries of every page, ``total`` kept.

        The ``next`` link is dropped once the pages were merged (kept if the search was cut).
        """
        pages = await self.fhir_pages(source_name, query, page_limit=page_limit)
        return merge_bundles(pages)

    async def fhir_count(self, source_name: str, resource_type: str) -> int:
        """How many resources of a type the source holds (``Type?_summary=count``)."""
        response = await self._get(_fhir_path(source_name, f"{resource_type}?_summary=count"))
        try:
            body = response.json()
        except ValueError:
            body = None
        total = body.get("total") if isinstance(body, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            raise ProtocolError(
                f"kong: {source_name}/fhir/{resource_type}?_summary=count answered no total: "
                f"{response.text[:200]!r}"
            )
        return total

    # -- S3 -------------------------------------------------------------------------------------------

    async def s3_keys(self, source_name: str, prefix: str = "", *, max_keys: int | None = None) -> list[str]:
        """Every object key of an S3 source under ``prefix``, across all listing pages, in listing order.

        Uses ListObjectsV2 (``continuation-token``); a server that answers without a
        ``NextContinuationToken`` is paged on with V1 markers instead. ``max_keys`` asks for smaller
        pages than the server's default (at most 1000).
        """
        keys: list[str] = []
        seen: set[str] = set()
        params: dict[str, str] = {"list-type": "2", "encoding-type": "url"}
        if prefix:
            params["prefix"] = prefix
        if max_keys is not None:
            if max_keys < 1:
                raise ValueError(f"max_keys must be at least 1, got {max_keys}")
            params["max-keys"] = str(max_keys)
        path = f"/{quote(source_name, safe='')}/s3"
        while True:
            response = await self._get(path, params=params)
            page = parse_list_objects(response.content, f"{source_name}/s3")
            new = [k for k in page.keys if k not in seen]
            seen.update(new)
            keys.extend(new)
            # Without IsTruncated, page on with markers until a page brings nothing new.
            if page.truncated is False or (page.truncated is None and not new):
                return keys
            if page.next_token and "list-type" in params:
                if page.next_token == params.get("continuation-token"):
                    raise ProtocolError(
                        f"kong: the S3 listing of {source_name} repeats its continuation token"
                    )
                params = {**params, "continuation-token": page.next_token}
                continue
            # No NextContinuationToken: the server pages with V1 markers (NextMarker, else the last key).
            marker = page.next_marker or (page.keys[-1] if page.keys else None)
            if marker is None or marker == params.get("marker"):
                if page.truncated is None:
                    return keys
                raise ProtocolError(
                    f"kong: the S3 listing of {source_name} says it is truncated but gives no way on"
                )
            params = {k: v for k, v in params.items() if k not in ("list-type", "continuation-token")}
            params["marker"] = marker

    async def s3_object(self, source_name: str, key: str) -> bytes:
        """The bytes of one S3 object."""
        if not key:
            raise ValueError("an S3 key must not be empty")
        path = f"/{quote(source_name, safe='')}/s3/{quote(key, safe='/~')}"
        content = (await self._get(path)).content
        if self.observer is not None:
            self.observer.observe_s3(key, content)
        return content

    async def s3_objects(
        self, source_name: str, keys: Iterable[str] | None = None, *, concurrency: int = S3_CONCURRENCY
    ) -> dict[str, bytes]:
        """Objects of an S3 source by key (``None`` or empty: every object), in the order of ``keys``
        or of the listing. A missing key raises :class:`ServiceError` (404)."""
        wanted = list(dict.fromkeys(keys or []))
        if not wanted:
            wanted = await self.s3_keys(source_name)
        limit = asyncio.Semaphore(max(1, concurrency))

        async def fetch(key: str) -> bytes:
            async with limit:
                return await self.s3_object(source_name, key)

        contents = await asyncio.gather(*(fetch(k) for k in wanted))
        return dict(zip(wanted, contents, strict=True))

    async def s3_dataframe(self, source_name: str, key: str, **read_kwargs: Any) -> pd.DataFrame:
        """An S3 object read as a DataFrame: ``.csv``/``.tsv`` (optionally ``.gz``) with
        ``pandas.read_csv``, ``.parquet``/``.pq`` with ``pandas.read_parquet`` (needs pyarrow)."""
        return read_dataframe(await self.s3_object(source_name, key), key, **read_kwargs)


class DataAPI:
    """The data of this node for one project: its sources, FHIR queries and S3 objects.

    The source list is read once and cached (:meth:`sources` with ``refresh=True`` reads it again).
    """

    def __init__(self, hub: HubAdapterClient, kong: KongClient, project_id: str) -> None:
        self.hub = hub
        self.kong = kong
        self.project_id = project_id
        self._sources: list[DataSourceInfo] | None = None
        self._lock = asyncio.Lock()

    async def sources(self, *, refresh: bool = False) -> list[DataSourceInfo]:
        """Every data source of the project on this node."""
        async with self._lock:
            if self._sources is None or refresh:
                self._sources = await self.hub.data_sources(self.project_id)
            return list(self._sources)

    async def fhir_sources(self) -> list[DataSourceInfo]:
        return [s for s in await self.sources() if s.kind == "fhir"]

    async def s3_sources(self) -> list[DataSourceInfo]:
        return [s for s in await self.sources() if s.kind == "s3"]

    async def get_fhir_data(
        self, queries: Iterable[str], *, page_limit: int | None = DEFAULT_PAGE_LIMIT
    ) -> list[dict[str, dict[str, Any]]]:
        """PrivateAIM's ``get_fhir_data``: per FHIR source, ``{query: Bundle}`` with all pages merged.

        Unlike PrivateAIM's SDK a failing query raises instead of being skipped with a warning.
        """
        queries = list(queries)
        results: list[dict[str, dict[str, Any]]] = []
        for source in await self.fhir_sources():
            bundles = await asyncio.gather(
                *(self.kong.fhir_bundle(source.name, q, page_limit=page_limit) for q in queries)
            )
            results.append(dict(zip(queries, bundles, strict=True)))
        return results

    async def get_s3_data(self, keys: Iterable[str] | None = None) -> list[dict[str, bytes]]:
        """PrivateAIM's ``get_s3_data``: per S3 source, ``{key: bytes}`` of the requested keys it has
        (``None`` or empty: all its keys).

        A requested key that no S3 source has raises :class:`DataNotFoundError` (PrivateAIM's SDK
        silently leaves it out).
        """
        wanted = list(dict.fromkeys(keys or []))
        results: list[dict[str, bytes]] = []
        found: set[str] = set()
        for source in await self.s3_sources():
            listed = await self.kong.s3_keys(source.name)
            if wanted:
                present = set(listed)
                selected = [k for k in wanted if k in present]
            else:
                selected = listed
            found.update(selected)
            results.append(await self.kong.s3_objects(source.name, selected) if selected else {})
        missing = [k for k in wanted if k not in found]
        if missing:
            names = ", ".join(s.name for s in await self.s3_sources()) or "none"
            raise DataNotFoundError(
                f"S3 key(s) {', '.join(map(repr, missing[:10]))} are in none of this node's S3 sources "
                f"(sources: {names})"
            )
        return results

    @staticmethod
    def fhir_dataframe(resources: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> pd.DataFrame:
        return fhir_dataframe(resources)


# -- FHIR helpers ----------------------------------------------------------------------------------------


def _fhir_path(source_name: str, tail: str) -> str:
    base = f"/{quote(source_name, safe='')}/fhir"
    if not tail:
        return base
    return base + (tail if tail.startswith("?") else "/" + tail)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def next_link(page: Mapping[str, Any]) -> str | None:
    """The URL of a Bundle's ``next`` link, if it has one."""
    links = page.get("link") if page.get("resourceType", "Bundle") == "Bundle" else None
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def fhir_tail(url: str) -> str:
    """What to query again for a FHIR link: the part of its URL after ``/fhir/``, to send through Kong.

    The last ``/fhir/`` of the URL's path counts (a source may itself be called ``fhir``); a path that
    ends in ``/fhir`` (HAPI's ``?_getpages=`` links) gives just ``?`` and the query.
    """
    parts = urlsplit(url)
    path = parts.path
    cut = path.rfind("/fhir/")
    if cut >= 0:
        rest = path[cut + len("/fhir/") :]
    elif path.endswith("/fhir"):
        rest = ""
    else:
        raise ProtocolError(f"kong: a FHIR link without /fhir/ in its path: {_short(url)!r}")
    if parts.query:
        rest += "?" + parts.query
    return rest


def bundle_resources(pages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The resources of FHIR answers: ``entry[].resource`` of Bundles, other resources as they are."""
    resources: list[dict[str, Any]] = []
    for page in pages:
        if page.get("resourceType") == "Bundle":
            for entry in page.get("entry") or []:
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    resources.append(entry["resource"])
        else:
            resources.append(dict(page))
    return resources


def merge_bundles(pages: list[dict[str, Any]]) -> dict[str, Any]:
    """The first page, with every page's entries and (if the last page has one) the last ``next`` link."""
    if not pages:
        raise ValueError("no pages to merge")
    first = dict(pages[0])
    if first.get("resourceType") != "Bundle" or len(pages) == 1:
        return first
    entries: list[Any] = []
    for page in pages:
        entries.extend(page.get("entry") or [])
    first["entry"] = entries
    links = [dict(link) for link in first.get("link") or [] if isinstance(link, dict)]
    links = [link for link in links if link.get("relation") != "next"]
    last_next = next_link(pages[-1])
    if last_next is not None:
        links.append({"relation": "next", "url": last_next})
    first["link"] = links
    return first


def fhir_dataframe(resources: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> pd.DataFrame:
    """One row per FHIR resource, one column per leaf, named by its dotted path.

    Nested objects give ``a.b.c``, list items their index (``name.0.given.0``). Columns appear in the
    order they are first met. A Bundle (or a list of them) may be passed instead of resources.
    """
    pd = _pandas()
    if isinstance(resources, Mapping):
        resources = [resources]
    items: Sequence[Mapping[str, Any]] = list(resources)
    if any(isinstance(r, Mapping) and r.get("resourceType") == "Bundle" for r in items):
        items = bundle_resources(items)
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    for resource in items:
        if not isinstance(resource, Mapping):
            raise PayloadError(
                f"fhir_dataframe: a resource must be a JSON object, got {type(resource).__name__}"
            )
        row: dict[str, Any] = {}
        _flatten(resource, "", row)
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(columns))


def _flatten(value: Any, path: str, row: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), row)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(item, f"{path}.{index}" if path else str(index), row)
    else:
        row[path] = value


# -- S3 helpers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListPage:
    """What one ListObjects answer says: its keys and how to go on."""

    keys: list[str]
    #: ``IsTruncated``; None when the answer has no such element.
    truncated: bool | None
    next_token: str | None
    next_marker: str | None


def parse_list_objects(xml: bytes, where: str = "S3") -> ListPage:
    """Read a ``ListBucketResult`` (V1 or V2, with or without the S3 namespace)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ProtocolError(
            f"kong: {where} answered a listing that is not XML ({exc}): {xml[:200]!r}"
        ) from None
    if _local(root.tag) != "ListBucketResult":
        raise ProtocolError(f"kong: {where} answered <{_local(root.tag)}> instead of <ListBucketResult>")
    url_encoded = (_child_text(root, "EncodingType") or "").lower() == "url"

    def decode(text: str | None) -> str | None:
        return unquote(text) if text is not None and url_encoded else text

    keys: list[str] = []
    for contents in root:
        if _local(contents.tag) == "Contents":
            key = decode(_child_text(contents, "Key"))
            if key:
                keys.append(key)
    raw_truncated = _child_text(root, "IsTruncated")
    truncated = None if raw_truncated is None else raw_truncated.strip().lower() == "true"
    return ListPage(
        keys=keys,
        truncated=truncated,
        next_token=_child_text(root, "NextContinuationToken") or None,
        next_marker=decode(_child_text(root, "NextMarker")) or None,
    )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def read_dataframe(data: bytes, key: str, **read_kwargs: Any) -> pd.DataFrame:
    """Bytes of a CSV/TSV (optionally gzipped) or Parquet file as a DataFrame, by the key's suffix."""
    pd = _pandas()
    name = key.lower()
    compression: str | None = None
    if name.endswith(".gz"):
        compression, name = "gzip", name[: -len(".gz")]
    try:
        if name.endswith((".csv", ".tsv")):
            if name.endswith(".tsv"):
                read_kwargs.setdefault("sep", "\t")
            if compression is not None:
                read_kwargs.setdefault("compression", compression)
            return pd.read_csv(io.BytesIO(data), **read_kwargs)
        if name.endswith((".parquet", ".pq")) and compression is None:
            try:
                importlib.import_module("pyarrow")
            except ImportError:
                raise PayloadError(
                    f"reading the Parquet object {key!r} needs pyarrow: pip install pyarrow"
                ) from None
            return pd.read_parquet(io.BytesIO(data), **read_kwargs)
    except PayloadError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many kinds for a malformed file
        raise PayloadError(f"cannot read {key!r} as a table ({type(exc).__name__}: {exc})") from exc
    raise PayloadError(
        f"cannot tell the format of {key!r}: DataFrames are read from .csv, .tsv (optionally .gz), "
        ".parquet and .pq objects; read other objects as bytes"
    )


def _pandas() -> Any:
    return importlib.import_module("pandas")


# -- error bodies ----------------------------------------------------------------------------------------


def _kong_message(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body["message"]) if isinstance(body, dict) and "message" in body else None


def error_detail(response: httpx.Response) -> str:
    """The message of an error answer: FHIR OperationOutcome diagnostics, Kong's ``message``, an S3
    XML ``<Error>``'s code and message, or the text."""
    text = response.text
    detail: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            parts = []
            for issue in body.get("issue") or []:
                if not isinstance(issue, dict):
                    continue
                message = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
                code = issue.get("code")
                parts.append(f"{message} ({code})" if message and code else str(message or code or ""))
            detail = "OperationOutcome: " + "; ".join(p for p in parts if p)
        elif "message" in body:
            detail = str(body["message"])
        elif "detail" in body:
            detail = str(body["detail"])
    elif text.lstrip().startswith("<"):
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            root = None
        if root is not None and _local(root.tag) == "Error":
            code, message = _child_text(root, "Code"), _child_text(root, "Message")
            detail = f"{code}: {message}" if code else message
    if detail is None:
        detail = text.strip()
    return redact(detail[:500])


__all__ = [
    "DEFAULT_PAGE_LIMIT",
    "DataAPI",
    "DataNotFoundError",
    "DataSourceInfo",
    "HubAdapterClient",
    "KongClient",
    "ListPage",
    "bundle_resources",
    "error_detail",
    "fhir_dataframe",
    "fhir_tail",
    "merge_bundles",
    "next_link",
    "parse_list_objects",
    "read_dataframe",
]

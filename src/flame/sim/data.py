"""Data sources of an emulated FLAME node: the hub adapter's listing and the Kong proxy.

Hub adapter: ``GET /kong/datastore/{project_id}`` (Bearer, checked like the real FastAPI service) answers
``{"data": [service, ...], "next": null}``, one Kong service object per data source of the node, with
every field Kong's Admin API returns for a service, plus ``routes`` (empty unless ``?detailed=true``), as
the real hub adapter's response model does. Tags are ``[project_id, "{project_id}-fhir"|"{project_id}-s3"]``,
as the hub adapter (up to its 0.7 releases) tags the services it creates for a project: the kind shows
only in the ``{project}-{kind}`` tag, there is no ``type:`` tag.

Kong: routes ``GET /{name}/fhir[/...]`` for a FHIR source and ``GET /{name}/s3[/...]`` for an S3 source,
checked as Kong's router and ``key-auth`` plugin do (in this order): no route (unknown source, wrong kind,
a method other than GET) 404 ``{"message": "no Route matched with those values"}``; no ``apikey`` header
401 ``No API key found in request``; a wrong key 401 ``Invalid authentication credentials``; two keys 401
``Duplicate API key found``. Error bodies carry Kong 3's ``request_id`` too. The key is not forwarded
upstream (``hide_credentials``).

A source either proxies to a real server (``DataSource.upstream``: the FHIR base URL or the S3 bucket URL;
the path after ``/{name}/{kind}`` and the query string are appended, as Kong with ``strip_path`` does;
answers, including absolute links in FHIR Bundles, pass through unchanged as with real Kong: follow
``next`` links by taking the part after ``/fhir/``; an unreachable upstream gets Kong's 502, a slow one
(over Kong's default 60 s) its 504), or serves a folder (``DataSource.folder``):

- FHIR: :class:`flame.sim.fhir_search.FhirStore` over the folder's JSON and NDJSON files (reloaded when
  they change); Bundle links point back at this Kong route;
- S3: the folder's files, recursively, as one bucket named after the source: ListObjects V1 (``marker``)
  and V2 (``list-type=2``, ``continuation-token``, ``start-after``) with ``prefix``, ``delimiter``,
  ``max-keys`` (at most 1000) and ``encoding-type=url``; objects are streamed; S3 XML errors
  (``NoSuchKey``, ``InvalidArgument``); a key escaping the folder is rejected with 400.

Every Kong request that matched a route is recorded as a ``data.fhir`` or ``data.s3`` event
(``node``, ``source``, ``query``, ``status``); listings as ``data.list``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import os
import secrets
import threading
import time
import uuid
import weakref
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from flame.sim import asgi
from flame.sim.asgi import FastCall
from flame.sim.auth import current_node, service_claims
from flame.sim.fhir_search import FHIR_JSON, FhirLoadError, FhirStore, operation_outcome
from flame.sim.node import DataSource, SimNode
from flame.sim.proxy import forward

if TYPE_CHECKING:
    from fastapi import FastAPI

    from flame.sim.stack import FlameStack

#: Kong's answer when no route matches.
NO_ROUTE = "no Route matched with those values"
#: Kong key-auth's answers.
NO_KEY = "No API key found in request"
BAD_KEY = "Invalid authentication credentials"
DUPLICATE_KEY = "Duplicate API key found"
#: The S3 XML namespace of ListObjects answers.
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: Kong's default connect, read and write timeouts of a service (seconds).
UPSTREAM_TIMEOUT = 60.0
#: Largest (and default) page of an S3 listing.
S3_MAX_KEYS = 1000

_ROUTE_NAMESPACE = uuid.UUID("4f1e6a0c-9b7d-4c2e-8a3f-1d5b7c9e0a24")
_KONG_VERSION = "3.9.1"
_JSON = "application/json; charset=utf-8"


# -- hub adapter ---------------------------------------------------------------------------------------


def kong_service(source: DataSource, project_id: str, created_at: int) -> dict[str, Any]:
    """The Kong service object of a data source, as Kong's Admin API (and so the hub adapter) lists it."""
    if source.upstream is not None:
        url = urlsplit(source.upstream)
        protocol = url.scheme or "http"
        host = url.hostname or "localhost"
        port = url.port or (443 if protocol == "https" else 80)
        path: str | None = url.path or None
    else:
        protocol, host, port = "http", f"{source.kind}-{source.name}.data.sim", 80
        path = "/fhir" if source.kind == "fhir" else f"/{source.name}"
    return {
        "id": source.id,
        "name": source.name,
        "host": host,
        "port": port,
        "protocol": protocol,
        "path": path,
        "retries": 5,
        "connect_timeout": 60000,
        "write_timeout": 60000,
        "read_timeout": 60000,
        "tags": [project_id, f"{project_id}-{source.kind}"],
        "client_certificate": None,
        "tls_verify": None,
        "tls_verify_depth": None,
        "ca_certificates": None,
        "enabled": True,
        "created_at": created_at,
        "updated_at": created_at,
    }


def kong_route(source: DataSource, project_id: str, created_at: int) -> dict[str, Any]:
    """The Kong route object through which Kong serves a data source (``GET /{name}/{kind}``)."""
    return {
        "id": str(uuid.uuid5(_ROUTE_NAMESPACE, source.id)),
        "name": source.name,
        "protocols": ["http"],
        "methods": ["GET"],
        "hosts": None,
        "paths": [f"/{source.name}/{source.kind}"],
        "headers": None,
        "https_redirect_status_code": 426,
        "regex_priority": 0,
        "strip_path": True,
        "path_handling": "v0",
        "preserve_host": False,
        "request_buffering": True,
        "response_buffering": True,
        "snis": None,
        "sources": None,
        "destinations": None,
        "tags": [project_id, source.kind],
        "service": {"id": source.id},
        "created_at": created_at,
        "updated_at": created_at,
    }


def create_hub_adapter_app(stack: FlameStack) -> FastAPI:
    """The hub adapter of every node: only ``GET /kong/datastore/{project_id}`` gets through the sidecar."""
    from fastapi import Depends, FastAPI

    app = FastAPI(title="emulated hub adapter", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/kong/datastore/{project_id}", dependencies=[Depends(service_claims)])
    async def list_data_stores(request: Request, project_id: str, detailed: bool = False) -> dict[str, Any]:
        return data_stores(stack, current_node(request), project_id, detailed)

    return app


def data_stores(stack: FlameStack, node: SimNode, project_id: str, detailed: bool) -> dict[str, Any]:
    """``GET /kong/datastore/{project_id}``'s answer at ``node`` (the route checked the token)."""
    # The hub adapter lists Kong services by the project tag: another project has none here.
    sources = node.sources if project_id == stack.project_id else []
    services = []
    for source in sources:
        service = kong_service(source, stack.project_id, stack.created_at)
        service["routes"] = [kong_route(source, stack.project_id, stack.created_at)] if detailed else []
        services.append(service)
    stack.events.record("data.list", node.name, project_id=project_id, sources=[s.name for s in sources])
    return {"data": services, "next": None}


async def fast_data_stores(call: FastCall) -> None:
    """``GET /kong/datastore/{project_id}`` as plain ASGI (see :mod:`flame.sim.asgi`): the answer for a
    valid token and a plain ``detailed`` flag (or none); anything else goes to the hub adapter app."""
    detailed = _PLAIN_FLAGS.get(call.scope.get("query_string", b""))
    if detailed is None or call.claims() is None:
        await call.pass_on()
        return
    project_id = call.scope["path"].rpartition("/")[2]
    await asgi.send_json(call.send, data_stores(call.stack, call.node, project_id, detailed))


#: the query strings the plain handler of the data stores reads itself: ``detailed`` as SDKs send it
_PLAIN_FLAGS = {b"": False, b"detailed=false": False, b"detailed=true": True}


# -- Kong ------------------------------------------------------------------------------------------------


def create_kong_app(stack: FlameStack) -> FastAPI:
    """Kong's proxy of every node: the node's data sources under ``/{name}/fhir`` and ``/{name}/s3``."""
    from fastapi import FastAPI

    app = FastAPI(title="emulated Kong", openapi_url=None, docs_url=None, redoc_url=None)

    @app.api_route("/{path:path}", methods=list(_KONG_METHODS))
    async def proxy(request: Request, path: str) -> Response:
        return await _kong_of(stack).answer(request, path)

    return app


#: the methods Kong's routes take here (any other gets the app's 405)
_KONG_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def fast_kong(call: FastCall) -> None:
    """Kong as plain ASGI (see :mod:`flame.sim.asgi`): the same answers as :func:`create_kong_app`'s
    route, which takes every path; a method it does not route goes to the app."""
    scope = call.scope
    if scope["method"] not in _KONG_METHODS:
        await call.pass_on()
        return
    request = Request(scope, call.receive)
    response = await _kong_of(call.stack).answer(request, scope["path"][1:])
    await response(scope, call.receive, call.send)


class _Kong:
    """Kong's state for one stack: the data sources' FHIR stores and S3 folder buckets."""

    def __init__(self, stack: FlameStack) -> None:
        self.stack = stack
        self.fhir_stores = _FhirStores()
        self.buckets: dict[str, FolderBucket] = {}
        self.buckets_lock = threading.Lock()

    def bucket_of(self, source: DataSource) -> FolderBucket:
        assert source.folder is not None
        with self.buckets_lock:
            bucket = self.buckets.get(source.id)
            if bucket is None:
                bucket = self.buckets[source.id] = FolderBucket(source.name, Path(source.folder))
            return bucket

    async def answer(self, request: Request, path: str) -> Response:
        """Kong's answer to ``request`` for ``path`` (``{source}/{kind}/...``) at the request's node."""
        stack = self.stack
        node = current_node(request)
        name, _, rest = path.partition("/")
        kind, slash, tail = rest.partition("/")
        source = next((s for s in node.sources if s.name == name), None)
        if source is None or source.kind != kind or request.method != "GET":
            return kong_error(404, NO_ROUTE)
        query = request.url.query
        event_query = tail + ("?" + query if query else "")
        response = _key_auth(request, node)
        if response is None:
            if source.upstream is not None:
                response = await _proxy_upstream(stack, request, source, tail, slash == "/")
            elif source.folder is None:
                response = kong_error(503, "Service unavailable")
            elif kind == "fhir":
                base = f"{_external_base(request, stack, node)}/kong/{source.name}/fhir"
                response = await _serve_fhir_folder(request, source, tail, base, self.fhir_stores)
            else:
                response = await _serve_s3_folder(request, self.bucket_of(source), tail)
        stack.events.record(
            f"data.{kind}", node.name, source=source.name, query=event_query, status=response.status_code
        )
        return response


#: stack -> its Kong's state, shared by the FastAPI app and :func:`fast_kong`
_KONGS: weakref.WeakKeyDictionary[FlameStack, _Kong] = weakref.WeakKeyDictionary()


def _kong_of(stack: FlameStack) -> _Kong:
    kong = _KONGS.get(stack)
    if kong is None:
        kong = _KONGS[stack] = _Kong(stack)
    return kong


def kong_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answered by Kong itself: ``{"message", "request_id"}`` (Kong 3's JSON error template)."""
    request_id = secrets.token_hex(16)
    return JSONResponse(
        {"message": message, "request_id": request_id},
        status_code=status,
        media_type=_JSON,
        headers={"X-Kong-Request-Id": request_id, **(headers or {})},
    )


def _key_auth(request: Request, node: SimNode) -> Response | None:
    keys = request.headers.getlist("apikey")
    if len(keys) > 1:
        return kong_error(401, DUPLICATE_KEY)
    if not keys or not keys[0]:
        return kong_error(401, NO_KEY, {"WWW-Authenticate": 'Key realm="kong"'})
    if not secrets.compare_digest(keys[0].encode(), node.data_key.encode()):
        return kong_error(401, BAD_KEY)
    return None


async def _proxy_upstream(
    stack: FlameStack, request: Request, source: DataSource, tail: str, slash: bool
) -> Response:
    if stack.http is None:
        return kong_error(503, "Service unavailable")
    assert source.upstream is not None
    url = source.upstream.rstrip("/")
    if slash:
        url += "/" + quote(tail, safe="/:@!$&'()*+,;=-._~")
    if request.url.query:
        url += "?" + request.url.query
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"apikey"]
    hidden = Request({**request.scope, "headers": headers}, request.receive)
    response = await forward(hidden, stack.http, url, timeout=UPSTREAM_TIMEOUT)
    if not isinstance(response, StreamingResponse):  # forward's own answer: the upstream failed
        if response.status_code == 504:
            return kong_error(504, "The upstream server is timing out")
        return kong_error(502, "An invalid response was received from the upstream server")
    return response


# -- folder FHIR -----------------------------------------------------------------------------------------


async def _serve_fhir_folder(
    request: Request, source: DataSource, tail: str, base: str, stores: _FhirStores
) -> Response:
    assert source.folder is not None
    try:
        store = await run_in_threadpool(stores.get, Path(source.folder))
    except (FhirLoadError, OSError) as exc:
        return JSONResponse(operation_outcome("exception", str(exc)), status_code=500, media_type=FHIR_JSON)
    params = parse_qsl(request.url.query, keep_blank_values=True)
    status, body = await run_in_threadpool(store.handle, tail, params, base)
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _external_base(request: Request, stack: FlameStack, node: SimNode) -> str:
    """The node's sidecar URL as the client addressed it, for absolute links in answers.

    ``http://nginx-{DEPLOYMENT_NAME}`` in process, ``http://127.0.0.1:{node port}`` when served, or
    ``{base}/node/{name}`` through the stack's path form. A ``flame.prefix`` scope key (the path the
    router stripped before ``/kong``), when the router sets one, is used as is.
    """
    scope = request.scope
    host = request.headers.get("host") or node.host
    scheme = scope.get("scheme") or "http"
    prefix = scope.get("flame.prefix")
    if not isinstance(prefix, str):
        direct = scope.get("flame.via") is not None or host.split(":")[0].startswith("nginx-")
        server = scope.get("server")
        if not direct and server:
            own = urlsplit(stack.node_base_url(node.name))
            direct = own.path in ("", "/") and own.port == server[1]
        prefix = "" if direct else f"/node/{node.name}"
    return f"{scheme}://{host}{prefix}"


class _FhirStores:
    """The :class:`FhirStore` of each folder, reloaded when a JSON or NDJSON file under it changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[tuple[str, int, int], ...], FhirStore]] = {}

    def get(self, folder: Path) -> FhirStore:
        fingerprint = tuple(
            sorted(
                (p.relative_to(folder).as_posix(), st.st_mtime_ns, st.st_size)
                for pattern in ("*.json", "*.ndjson")
                for p in folder.rglob(pattern)
                if p.is_file() and (st := p.stat())
            )
        )
        with self._lock:
            cached = self._entries.get(folder)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            store = FhirStore.from_folder(folder)
            self._entries[folder] = (fingerprint, store)
            return store


# -- folder S3 -------------------------------------------------------------------------------------------


class S3Error(Exception):
    """An S3 error answer: HTTP ``status`` and the XML ``<Error>`` with ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def response(self) -> Response:
        """The XML error response, as S3 servers answer."""
        root = ET.Element("Error")
        _text(root, "Code", self.code)
        _text(root, "Message", self.message)
        for tag, value in self.extra.items():
            _text(root, tag, value)
        request_id = secrets.token_hex(8).upper()
        _text(root, "RequestId", request_id)
        return Response(
            _xml(root),
            status_code=self.status,
            media_type="application/xml",
            headers={"x-amz-request-id": request_id},
        )


@dataclass(frozen=True)
class S3Object:
    """One file of a folder bucket."""

    key: str
    path: str
    size: int
    mtime_ns: int


class FolderBucket:
    """A folder served as an S3 bucket: every regular file under it, recursively, is an object.

    Keys are the files' paths relative to the folder with ``/`` separators, listed in UTF-8 byte order.
    Links to directories are not followed; a link to a file counts only if its target is in the folder.
    """

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self._root = os.path.realpath(folder)
        self._etags: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def objects(self) -> list[S3Object]:
        """All objects, sorted by key."""
        found: list[S3Object] = []
        pending = [(self._root, "")]
        while pending:
            directory, key_prefix = pending.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    key = key_prefix + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((entry.path, key + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append(S3Object(key, entry.path, st.st_size, st.st_mtime_ns))
                    elif entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if real.startswith(self._root + os.sep) and os.path.isfile(real):
                            st = os.stat(real)
                            found.append(S3Object(key, real, st.st_size, st.st_mtime_ns))
        found.sort(key=lambda o: o.key)
        return found

    def etag(self, obj: S3Object) -> str:
        """The object's ETag: the quoted MD5 of its bytes, as S3 gives for single-part uploads."""
        cache_key = (obj.key, obj.size, obj.mtime_ns)
        with self._lock:
            cached = self._etags.get(cache_key)
        if cached is not None:
            return cached
        digest = hashlib.md5(usedforsecurity=False)
        with open(obj.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        etag = f'"{digest.hexdigest()}"'
        with self._lock:
            self._etags[cache_key] = etag
        return etag

    def resolve(self, key: str) -> S3Object:
        """The object called ``key``; S3Error 400 for a key that escapes the folder, 404 if there is none."""
        parts = key.split("/")
        if "\x00" in key or "\\" in key or key.startswith("/") or any(p in (".", "..") for p in parts):
            raise S3Error(
                400,
                "XMinioInvalidObjectName",
                "Object name contains unsupported characters.",
                Key=key,
                BucketName=self.name,
            )
        missing = S3Error(
            404, "NoSuchKey", "The specified key does not exist.", Key=key, BucketName=self.name
        )
        if "" in parts:
            raise missing
        real = os.path.realpath(os.path.join(self._root, *parts))
        if not real.startswith(self._root + os.sep) or not os.path.isfile(real):
            raise missing
        st = os.stat(real)
        return S3Object(key, real, st.st_size, st.st_mtime_ns)

    def list_objects(self, params: dict[str, str]) -> bytes:
        """The ``ListBucketResult`` XML of a ListObjects (V1) or ListObjectsV2 (``list-type=2``) request."""
        list_type = params.get("list-type")
        if list_type not in (None, "2"):
            raise S3Error(400, "InvalidArgument", "Invalid List Type specified in Request")
        v2 = list_type == "2"
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        encoding = params.get("encoding-type")
        if encoding not in (None, "", "url"):
            raise S3Error(400, "InvalidArgument", "Invalid Encoding Method specified in Request")
        raw_max = params.get("max-keys", str(S3_MAX_KEYS))
        try:
            max_keys = int(raw_max)
        except ValueError:
            raise S3Error(
                400, "InvalidArgument", "Provided max-keys not an integer or within integer range"
            ) from None
        if max_keys < 0:
            raise S3Error(
                400, "InvalidArgument", "Argument maxKeys must be an integer between 0 and 2147483647"
            )
        max_keys = min(max_keys, S3_MAX_KEYS)
        token = params.get("continuation-token")
        if v2:
            after = _decode_token(token) if token is not None else params.get("start-after") or None
        else:
            after = params.get("marker") or None

        contents: list[S3Object] = []
        prefixes: list[str] = []
        last: str | None = None
        truncated = False
        for obj in self.objects():
            key = obj.key
            if not key.startswith(prefix) or (after is not None and key <= after):
                continue
            item = key
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    item = key[: cut + len(delimiter)]
                    if (prefixes and prefixes[-1] == item) or (after is not None and item <= after):
                        continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = max_keys > 0
                break
            if item is key:
                contents.append(obj)
            else:
                prefixes.append(item)
            last = item

        def enc(value: str) -> str:
            return quote(value, safe="/") if encoding == "url" else value

        root = ET.Element("ListBucketResult", xmlns=S3_NS)
        _text(root, "Name", self.name)
        _text(root, "Prefix", enc(prefix))
        if v2:
            if token is not None:
                _text(root, "ContinuationToken", token)
            if params.get("start-after"):
                _text(root, "StartAfter", enc(params["start-after"]))
            _text(root, "KeyCount", str(len(contents) + len(prefixes)))
        else:
            _text(root, "Marker", enc(params.get("marker", "")))
        _text(root, "MaxKeys", str(max_keys))
        if delimiter:
            _text(root, "Delimiter", enc(delimiter))
        if encoding:
            _text(root, "EncodingType", encoding)
        _text(root, "IsTruncated", "true" if truncated else "false")
        if truncated and last is not None:
            if v2:
                _text(root, "NextContinuationToken", _encode_token(last))
            else:
                _text(root, "NextMarker", enc(last))
        owner = not v2 or params.get("fetch-owner") == "true"
        for obj in contents:
            entry = ET.SubElement(root, "Contents")
            _text(entry, "Key", enc(obj.key))
            _text(entry, "LastModified", _iso_time(obj.mtime_ns))
            _text(entry, "ETag", self.etag(obj))
            _text(entry, "Size", str(obj.size))
            if owner:
                owner_el = ET.SubElement(entry, "Owner")
                _text(owner_el, "ID", "flame")
                _text(owner_el, "DisplayName", "flame")
            _text(entry, "StorageClass", "STANDARD")
        for common in prefixes:
            _text(ET.SubElement(root, "CommonPrefixes"), "Prefix", enc(common))
        return _xml(root)


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(b"k:" + key.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if not raw.startswith(b"k:"):
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect")
    try:
        return raw[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect") from None


def _text(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def _xml(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _iso_time(mtime_ns: int) -> str:
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1_000_000:03d}Z"


async def _serve_s3_folder(request: Request, bucket: FolderBucket, key: str) -> Response:
    try:
        if not key:
            params = dict(parse_qsl(request.url.query, keep_blank_values=True))
            body = await run_in_threadpool(bucket.list_objects, params)
            return Response(body, media_type="application/xml")
        obj = await run_in_threadpool(bucket.resolve, key)
        etag = await run_in_threadpool(bucket.etag, obj)
    except S3Error as exc:
        return exc.response()
    except OSError as exc:
        return S3Error(500, "InternalError", f"cannot read the folder bucket: {exc}").response()
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(obj.mtime_ns / 1e9, usegmt=True),
        "x-amz-request-id": secrets.token_hex(8).upper(),
    }
    return FileResponse(obj.path, media_type=media_type, headers=headers, stat_result=os.stat(obj.path))

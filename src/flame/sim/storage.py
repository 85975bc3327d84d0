"""The emulated node storage service of each node, wire-exact.

:func:`create_app` is the service's REST API as one node's sidecar reaches it: the router has already
stripped ``/storage`` and put the node in the request scope. Every route checks the Bearer token like
the real service (FastAPI ``HTTPBearer``: no header 401 ``{"detail": "Not authenticated"}``, a bad,
expired or claimless token 403); the token's ``client_id`` is the analysis id.

Object layout in the stack's :class:`~flame.sim.backends.StorageBackend` (one store stands for the
hub's buckets and every node's local S3, so several stacks may share it):

===============================================================  ===========================================
key                                                              what
===============================================================  ===========================================
``hub/final/{analysis_id}/{filename}``                           final results (the hub's result bucket)
``hub/intermediate/{analysis_id}/{object_id}``                   intermediate objects, encrypted for the
                                                                 receiver (:mod:`flame.sim.intermediate_crypto`)
``nodes/{node_id}/projects/{project_id}/local/{object_id}``      local results of a node, per project
``nodes/{node_id}/projects/{project_id}/tags/{tag}/{object_id}`` one marker per tagged local result: JSON
                                                                 ``{"filename", "object_id", "created"}``
===============================================================  ===========================================

Node ids are stable across analyses (uuid5 of the node name), so a later stack with the same project
id, node names and backend sees the local results and tags of earlier ones, as on FLAME. A tag is a
set of marker objects, so tagging never reads, modifies and rewrites a shared index (no lost update).

Behaviour copied from PrivateAIM/node-storage-service in the details its HTTP contract leaves open:

- Absolute URLs in answers are ``http://{Host header}/...`` without the ``/storage`` prefix (and
  without the emulator's ``/node/{name}`` path prefix), as the real service builds them behind nginx.
- An analysis has a result/temp bucket and a project only if it is *known*: the analysis of a stack
  that created this app, or one added with :func:`register_analysis`. Otherwise ``PUT /final``,
  ``/final/localdp`` answer 404 "Result bucket ... was not found", ``PUT /intermediate`` 404 "Temp
  bucket ... was not found", and the ``/local`` routes 404 "Analysis with ID ... not found".
- ``GET /intermediate/{id}``: 404 for an unknown object and for an unknown ``remote_node_id`` (the hub
  knows no such node), 400 when the object does not decrypt with that sender's key (wrong sender,
  or an object meant for another receiver). The object is deleted once it was streamed completely;
  while one request reads it, a concurrent read gets 404 (read once, also under races).
- ``PUT /local``: the file's name (``data.bin`` if it has none) is recorded on its tags. ``POST
  /local/tags`` without ``filename`` keeps the name the (tag, object) marker already has, else uses
  ``data.bin``; an unknown object is 404 before a bad tag is 400.
- ``GET /local/tags`` lists tag names in alphabetical order; ``GET /local/tags/{tag}`` lists results in
  tagging order, and an unknown (or invalid) tag gives 200 ``{"results": []}`` (a database query on
  the real service).
- Path ids are UUIDs (422 otherwise); a final result with the same file name replaces the earlier one.
- Result file names (final and local) are plain names of at most 255 bytes of UTF-8, without ``/``,
  ``\\`` or control characters, not ``.`` or ``..``: anything else is 400 (:func:`check_filename`).
  Stricter than the hub, which stores any name as metadata; here the name is part of an object key.
- Every route needs a token bound to the analysis of the sidecar (:mod:`flame.sim.auth`): a valid
  token of another analysis is 403.
- ``PUT /final/``, ``/intermediate/`` and ``/local/`` (trailing slash, as PrivateAIM's own SDK sends
  them) are served like the forms without the slash; no route redirects.
- ``PUT /final/localdp``: the file must be one finite number (Python ``float`` syntax, UTF-8, at most
  4 KiB), ``epsilon`` and ``sensitivity`` finite and > 0 (400 otherwise; a non-number is 422). The noise is
  drawn by OpenDP's Laplace mechanism (as PrivateAIM's result service does; :func:`sample_laplace` is an
  exact reference sampler kept for tests); the result file holds ``repr`` of the float.

Uploads are streamed: Starlette spools a multipart file to disk above 1 MiB and the backend copies from
that file. Events: ``storage.upload`` (node, area, size, object_id), ``storage.final`` (filename, size,
localdp), ``storage.read`` (area, object_id), ``storage.delete`` / ``storage.delete_failed`` (area,
object_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import random
import re
import secrets
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData, Headers
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from flame.sim import asgi
from flame.sim.asgi import FastCall
from flame.sim.backends import check_key

if TYPE_CHECKING:
    from fastapi import FastAPI

    from flame.sim.backends import StorageBackend
    from flame.sim.node import SimNode
    from flame.sim.stack import FlameStack

#: A valid tag: the whole string matches (as the real storage service checks it).
TAG_PATTERN = re.compile(r"[a-z0-9]{1,2}|[a-z0-9][a-z0-9-]{0,30}[a-z0-9]")
#: Largest file ``/final/localdp`` accepts (bytes).
LOCALDP_MAX_BYTES = 4096
#: Filename recorded for a local result uploaded without one (as the real service).
DEFAULT_FILENAME = "data.bin"
#: Longest result file name (bytes of UTF-8): what common file systems and the hub's name column hold.
MAX_FILENAME_BYTES = 255

# analysis id -> project id of every analysis that has buckets (see the module docstring).
_ANALYSES: dict[str, str] = {}
_ANALYSES_LOCK = threading.Lock()
# Keys of intermediate objects being read right now (read once, also under concurrent requests).
_READING: set[str] = set()
_READING_LOCK = threading.Lock()
_CSPRNG = secrets.SystemRandom()


# -- keys and the analysis registry ---------------------------------------------------------------


def final_prefix(analysis_id: str) -> str:
    """Backend prefix of an analysis' final results (the hub's result bucket)."""
    return f"hub/final/{analysis_id}/"


def intermediate_key(analysis_id: str, object_id: str) -> str:
    """Backend key of an (encrypted) intermediate object."""
    return f"hub/intermediate/{analysis_id}/{object_id}"


def node_project_prefix(node_id: str, project_id: str) -> str:
    """Backend prefix of one node's local results and tags in one project."""
    return f"nodes/{node_id}/projects/{project_id}/"


def local_key(node_id: str, project_id: str, object_id: str) -> str:
    """Backend key of a local result."""
    return node_project_prefix(node_id, project_id) + f"local/{object_id}"


def tag_marker_key(node_id: str, project_id: str, tag: str, object_id: str) -> str:
    """Backend key of the marker that puts a local result under a tag."""
    return node_project_prefix(node_id, project_id) + f"tags/{tag}/{object_id}"


def register_analysis(analysis_id: str, project_id: str) -> None:
    """Give an analysis buckets (and its project), so every stack's storage service accepts it."""
    check_key(analysis_id)
    check_key(project_id)
    with _ANALYSES_LOCK:
        _ANALYSES[analysis_id] = project_id


def unregister_analysis(analysis_id: str) -> None:
    """Forget an analysis registered with :func:`register_analysis` (its stored objects stay)."""
    with _ANALYSES_LOCK:
        _ANALYSES.pop(analysis_id, None)


def project_of(stack: FlameStack, analysis_id: str) -> str | None:
    """The project of a known analysis (this stack's, or a registered one); None if unknown."""
    if analysis_id == stack.analysis_id:
        return stack.project_id
    with _ANALYSES_LOCK:
        return _ANALYSES.get(analysis_id)


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` is a valid tag name (the whole string matches :data:`TAG_PATTERN`)."""
    return TAG_PATTERN.fullmatch(tag) is not None


# -- Laplace noise -----------------------------------------------------------------------------------


def sample_laplace(
    value: float, scale: float | Fraction, *, k: int = -1074, rng: random.Random | None = None
) -> float:
    """``value`` plus Laplace noise of scale ``scale``, without floating-point leaks.

    Textbook Laplace sampling in floating point (``-b * sign * log(U)``) leaks the input through the
    low bits of the result (Mironov 2012). This follows OpenDP's floating-point Laplace mechanism
    instead: the input is rounded to the grid ``2**k`` (exact for the default ``k = -1074``, the
    smallest subnormal spacing, of which every double is a multiple), an integer ``z`` is drawn from the
    *discrete* Laplace distribution ``P(z) ∝ exp(-|z| * 2**k / scale)`` with exact rational arithmetic
    (Canonne, Kamath and Steinke 2020: Bernoulli(exp(-x)) and geometric samplers that only compare
    uniform integers), and ``(x + z) * 2**k`` is rounded once to the nearest double (post-processing).
    Randomness comes from the OS CSPRNG (:class:`secrets.SystemRandom`) unless ``rng`` is given (tests).
    On the grid the distribution is Laplace up to the grid spacing, so this is at least as good as
    Mironov's snapping mechanism, without its clamping bound. ``scale`` 0 returns ``value`` rounded to
    the grid.
    """
    if not math.isfinite(value):
        raise ValueError("value must be finite")
    exact_scale = Fraction(scale)
    if exact_scale < 0:
        raise ValueError("scale must be >= 0")
    rng = rng or _CSPRNG
    grid = Fraction(2) ** k
    position = round(Fraction(value) / grid)
    if exact_scale > 0:
        position += _discrete_laplace(exact_scale / grid, rng)
    try:
        return float(position * grid)
    except OverflowError:
        return math.copysign(float("inf"), position)


def _bernoulli(numerator: int, denominator: int, rng: random.Random) -> bool:
    """True with probability numerator/denominator (in [0, 1])."""
    return rng.randrange(denominator) < numerator


def _bernoulli_exp_at_most_one(numerator: int, denominator: int, rng: random.Random) -> bool:
    """True with probability exp(-g) for g = numerator/denominator in [0, 1] (CKS Algorithm 1)."""
    k = 1
    while _bernoulli(numerator, denominator * k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(numerator: int, denominator: int, rng: random.Random) -> bool:
    """True with probability exp(-g) for any g = numerator/denominator >= 0."""
    while numerator > denominator:
        numerator -= denominator
        if not _bernoulli_exp_at_most_one(1, 1, rng):
            return False
    return _bernoulli_exp_at_most_one(numerator, denominator, rng)


def _geometric(s: int, t: int, rng: random.Random) -> int:
    """A draw from P(n) ∝ exp(-n * s / t), n >= 0 (CKS Algorithm 2, ``sample_geometric_exp_fast``)."""
    while True:
        u = rng.randrange(t)
        if _bernoulli_exp(u, t, rng):
            break
    v = 0
    while _bernoulli_exp_at_most_one(1, 1, rng):
        v += 1
    return (v * t + u) // s


def _discrete_laplace(scale: Fraction, rng: random.Random) -> int:
    """A draw from P(z) ∝ exp(-|z| / scale) over the integers (CKS Algorithm 2)."""
    while True:
        negative = rng.randrange(2) == 1
        magnitude = _geometric(scale.denominator, scale.numerator, rng)
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


def parse_single_number(data: bytes) -> float:
    """The one finite number a ``/final/localdp`` file holds; :class:`ValueError` otherwise."""
    if len(data) > LOCALDP_MAX_BYTES:
        raise ValueError("file too large for a single number")
    value = float(data.decode("utf-8").strip())
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


# -- helpers -------------------------------------------------------------------------------------------


def _base_url(request: Request) -> str:
    host = request.headers.get("host")
    if not host:
        server = request.scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"http://{host}"


def _file_size(upload: StarletteUploadFile) -> int:
    handle = upload.file
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(0)
    return size


def check_filename(name: str | None) -> str:
    """A result's file name as given (``data.bin`` when empty); 400 if the store could not hold it.

    A file name is a plain name: at most :data:`MAX_FILENAME_BYTES` bytes of UTF-8, no path separator,
    not ``.`` or ``..``, no control character. Anything else is refused rather than shortened or
    stripped to a base name, so a result never lands under a name its author did not choose.
    """
    if not name:
        return DEFAULT_FILENAME
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise HTTPException(
            400,
            f"The file name is too long: at most {MAX_FILENAME_BYTES} bytes of UTF-8, got {len(name)} characters",
        )
    if "/" in name or "\\" in name or name in (".", ".."):
        raise HTTPException(400, "The file name must be a plain name, without '/', '\\', '.' or '..'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise HTTPException(400, "The file name must not contain control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(400, "The file name is not valid Unicode") from None
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _claim(key: str) -> bool:
    with _READING_LOCK:
        if key in _READING:
            return False
        _READING.add(key)
        return True


def _release(key: str) -> None:
    with _READING_LOCK:
        _READING.discard(key)


async def _close(iterator: AsyncIterator[bytes]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        await closer()


class _CleanupStreamingResponse(StreamingResponse):
    """A streamed answer that runs ``cleanup`` when it ends, however it ends.

    A body generator that never started (the client went away before the headers were sent) runs
    no ``finally``; this does, so claims are released and backend streams closed in every case.
    """

    def __init__(self, body: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]]) -> None:
        super().__init__(body, media_type="application/octet-stream")
        self._body = body
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await _close(self._body)
            await self._cleanup()


class _Service:
    """The storage service's state and logic shared by the routes of one stack."""

    def __init__(self, stack: FlameStack) -> None:
        self.stack = stack

    @property
    def backend(self) -> StorageBackend:
        return self.stack.storage_backend

    def project(self, analysis_id: str) -> str:
        project = project_of(self.stack, analysis_id)
        if project is None:
            raise HTTPException(404, f"Analysis with ID {analysis_id} not found")
        return project

    def require_bucket(self, analysis_id: str, kind: str) -> None:
        if project_of(self.stack, analysis_id) is None:
            raise HTTPException(404, f"{kind} bucket for analysis with ID {analysis_id} was not found")

    def record(self, kind: str, node: SimNode, **detail: Any) -> None:
        self.stack.events.record(kind, node.name, **detail)

    async def put_upload(self, key: str, upload: StarletteUploadFile) -> int:
        # the form parser counted the bytes and rewound the file; else measure it (a blocking seek)
        size = upload.size if upload.size is not None else await asyncio.to_thread(_file_size, upload)
        await self.backend.put(key, upload.file, size)
        return size

    async def put_final(self, node: SimNode, analysis_id: str, upload: StarletteUploadFile) -> None:
        """``PUT /final``: store the upload as a final result of ``analysis_id``."""
        filename = check_filename(upload.filename)
        self.require_bucket(analysis_id, "Result")
        size = await self.put_upload(final_prefix(analysis_id) + filename, upload)
        self.record("storage.upload", node, area="final", size=size, filename=filename)
        self.record(
            "storage.final", node, analysis_id=analysis_id, filename=filename, size=size, localdp=False
        )

    async def tags(self, node: SimNode, project: str, base_url: str) -> dict[str, Any]:
        """``GET /local/tags``'s answer: the tags of ``node``'s local results, in alphabetical order."""
        prefix = node_project_prefix(node.node_id, project) + "tags/"
        names = sorted({key[len(prefix) :].split("/", 1)[0] for key in await self.backend.list(prefix)})
        return {"tags": [{"name": name, "url": f"{base_url}/local/tags/{name}"} for name in names]}

    async def tagged(self, node: SimNode, project: str, tag: str, base_url: str) -> dict[str, Any]:
        """``GET /local/tags/{tag}``'s answer: ``node``'s local results under ``tag``, oldest first."""
        if not is_valid_tag(tag):
            return {"results": []}
        keys = await self.backend.list(node_project_prefix(node.node_id, project) + f"tags/{tag}/")

        async def marker(key: str) -> dict[str, Any] | None:
            try:
                data = json.loads(await self.backend.get(key))
            except (KeyError, ValueError):
                return None
            return data if isinstance(data, dict) else None

        markers = [m for m in await asyncio.gather(*(marker(k) for k in keys)) if m is not None]
        markers.sort(key=lambda m: (str(m.get("created", "")), str(m.get("object_id", ""))))
        results = [
            {
                "filename": str(m.get("filename", DEFAULT_FILENAME)),
                "url": f"{base_url}/local/{m.get('object_id')}",
            }
            for m in markers
        ]
        return {"results": results}

    def check_local(self, analysis_id: str, upload: StarletteUploadFile, tag: str | None) -> tuple[str, str]:
        """What ``PUT /local`` refuses before it stores anything; returns (project, filename)."""
        project = self.project(analysis_id)
        if tag is not None and not is_valid_tag(tag):
            raise HTTPException(400, f"Invalid tag `{tag}`")
        return project, check_filename(upload.filename)

    async def put_local(
        self, node: SimNode, analysis_id: str, upload: StarletteUploadFile, tag: str | None, base_url: str
    ) -> dict[str, str]:
        """``PUT /local``: store the upload as a local result of ``node`` (under ``tag``); the answer."""
        project, filename = self.check_local(analysis_id, upload, tag)
        object_id = str(uuid.uuid4())
        size = await self.put_upload(local_key(node.node_id, project, object_id), upload)
        if tag is not None:
            await self.write_marker(node, project, tag, object_id, filename, new=True)
        self.record("storage.upload", node, area="local", size=size, object_id=object_id, tag=tag)
        return {"url": f"{base_url}/local/{object_id}", "object_id": object_id}

    async def write_marker(
        self,
        node: SimNode,
        project: str,
        tag: str,
        object_id: str,
        filename: str | None,
        *,
        new: bool = False,
    ) -> str:
        """Put ``object_id`` under ``tag``; returns the filename the marker records.

        ``new``: the object was stored just now under a fresh id, so it has no marker to keep yet.
        """
        key = tag_marker_key(node.node_id, project, tag, object_id)
        created = _now()
        existing = None
        if not new:
            with contextlib.suppress(KeyError, ValueError):
                existing = json.loads(await self.backend.get(key))
        if isinstance(existing, dict):
            created = str(existing.get("created", created))
            if filename is None:
                return str(existing.get("filename", DEFAULT_FILENAME))
        marker = {"filename": filename or DEFAULT_FILENAME, "object_id": object_id, "created": created}
        await self.put_bytes(key, json.dumps(marker).encode())
        return str(marker["filename"])

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self.backend.put(key, io.BytesIO(data), len(data))


#: stack -> its storage service's state, shared by the FastAPI app and :func:`fast_put_local`
_SERVICES: weakref.WeakKeyDictionary[FlameStack, _Service] = weakref.WeakKeyDictionary()


def _service_of(stack: FlameStack) -> _Service:
    service = _SERVICES.get(stack)
    if service is None:
        service = _SERVICES[stack] = _Service(stack)
    return service


async def fast_put_local(call: FastCall) -> None:
    """``PUT /local`` as plain ASGI (see :mod:`flame.sim.asgi`): a small upload the route would store is
    stored here; anything else (a refusal, a large or unannounced body) goes to the storage app."""
    answer = await _fast_upload(call, final=False)
    if answer is None:
        await call.pass_on()
    else:
        await asgi.send_json(call.send, answer)


async def fast_put_final(call: FastCall) -> None:
    """``PUT /final`` as plain ASGI, as :func:`fast_put_local` (204 for a stored result)."""
    if await _fast_upload(call, final=True) is None:
        await call.pass_on()
    else:
        await asgi.send_empty(call.send, 204)


async def _fast_upload(call: FastCall, *, final: bool) -> dict[str, str] | None:
    """What the route answers for the upload of ``call`` once stored; None if the route would refuse it."""
    body = await call.read_body() if call.has_token() else None
    claims = call.claims() if body is not None else None
    if body is None or claims is None:
        return None
    return await _put_form(call.stack, call.node, call.scope, body, str(claims["client_id"]), final)


async def fast_get_tags(call: FastCall) -> None:
    """``GET /local/tags`` as plain ASGI: the answer for a valid token, anything else to the storage app."""
    project = _project_of(call)
    if project is None:
        await call.pass_on()
        return
    tags = await _service_of(call.stack).tags(call.node, project, _base_url_of(call.scope))
    await asgi.send_json(call.send, tags)


async def fast_get_tagged(call: FastCall) -> None:
    """``GET /local/tags/{tag}`` as plain ASGI: the answer for a valid token, anything else to the storage app."""
    tag = call.scope["path"][len("/local/tags/") :]
    project = _project_of(call) if tag else None
    if project is None:
        await call.pass_on()
        return
    tagged = await _service_of(call.stack).tagged(call.node, project, tag, _base_url_of(call.scope))
    await asgi.send_json(call.send, tagged)


def _project_of(call: FastCall) -> str | None:
    """The project of the analysis whose valid token ``call`` carries; None for any other request."""
    claims = call.claims()
    return project_of(call.stack, str(claims["client_id"])) if claims is not None else None


async def _put_form(
    stack: FlameStack, node: SimNode, scope: Scope, body: bytes, analysis_id: str, final: bool
) -> dict[str, str] | None:
    """Parse the form of ``PUT /local`` (``/final``) and store it as the route does; the answer (``{}``
    for ``/final``), or None where the route refuses."""
    content_type = asgi.header(scope, b"content-type") or b""
    if not content_type.lower().startswith(b"multipart/form-data"):
        return None
    form = _simple_form(content_type, body)
    if form is None:  # not the plain shape the SDKs send: the full parser decides
        request = Request(scope, asgi.replay(_no_more_body, body, True))
        try:
            form = await request.form()
        except Exception:  # a malformed form: the app answers as it does
            return None
    try:
        upload, tag = form.get("file"), form.get("tag")
        if not isinstance(upload, StarletteUploadFile) or not (tag is None or (isinstance(tag, str) and tag)):
            return None
        service = _service_of(stack)
        try:
            if final:
                check_filename(upload.filename)
                service.require_bucket(analysis_id, "Result")
            else:
                service.check_local(analysis_id, upload, tag)
        except HTTPException:
            return None
        if final:
            await service.put_final(node, analysis_id, upload)
            return {}
        return await service.put_local(node, analysis_id, upload, tag, _base_url_of(scope))
    finally:
        await form.close()


#: ``multipart/form-data; boundary=...`` with a plain (unquoted) boundary, nothing else
_MULTIPART = re.compile(rb"multipart/form-data; ?boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})", re.IGNORECASE)
#: a part's ``Content-Disposition``: a name and perhaps a file name, plain quoted strings
_DISPOSITION = re.compile(
    rb'form-data; name="([\x20-\x21\x23-\x5b\x5d-\x7e]+)"(?:; filename="([\x20-\x21\x23-\x24\x26-\x5b\x5d-\x7e]*)")?'
)


def _simple_form(content_type: bytes, body: bytes) -> FormData | None:
    """The form of a multipart body in the plain shape httpx and requests send, or None.

    Parts named once each, headers ``Content-Disposition`` (ASCII name and file name without quotes,
    backslashes or ``%``) and perhaps ``Content-Type``, no preamble or epilogue, UTF-8 field values,
    at most eight parts. It gives what Starlette's parser gives for such a body; anything else is
    left to that parser (None).
    """
    match = _MULTIPART.fullmatch(content_type.strip())
    if match is None:
        return None
    boundary = match.group(1)
    first, last = b"--" + boundary + b"\r\n", b"\r\n--" + boundary + b"--\r\n"
    if not body.startswith(first) or not body.endswith(last) or len(body) < len(first) + len(last):
        return None
    parts = body[len(first) : -len(last)].split(b"\r\n--" + boundary + b"\r\n")
    if len(parts) > 8:
        return None
    items: list[tuple[str, str | StarletteUploadFile]] = []
    for part in parts:
        head, separator, data = part.partition(b"\r\n\r\n")
        if not separator or b"\r\n--" + boundary in data:
            return None
        lines = head.split(b"\r\n")
        disposition = [
            v for k, _, v in (line.partition(b":") for line in lines) if k.lower() == b"content-disposition"
        ]
        if len(disposition) != 1 or any(
            line.partition(b":")[0].lower() not in (b"content-disposition", b"content-type") for line in lines
        ):
            return None
        found = _DISPOSITION.fullmatch(disposition[0].strip())
        if found is None:
            return None
        name, filename = found.group(1).decode(), found.group(2)
        if filename is None:
            try:
                items.append((name, data.decode("utf-8")))
            except UnicodeDecodeError:
                return None
            continue
        headers = Headers(
            raw=[(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
        )
        items.append(
            (
                name,
                StarletteUploadFile(
                    io.BytesIO(data), size=len(data), filename=filename.decode(), headers=headers
                ),
            )
        )
    if len({name for name, _ in items}) != len(items):
        return None
    return FormData(items)


async def _no_more_body() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _base_url_of(scope: Scope) -> str:
    host = asgi.header(scope, b"host")
    if host:
        return f"http://{host.decode('latin-1')}"
    server = scope.get("server") or ("localhost", 80)
    return f"http://{server[0]}:{server[1]}"


def create_app(stack: FlameStack) -> FastAPI:
    """The storage service of every node of ``stack`` as a FastAPI app (see :mod:`flame.sim.storage_app`)."""
    from flame.sim.storage_app import create_app

    return create_app(stack)


async def read_final_results(stack: FlameStack, analysis_id: str) -> dict[str, bytes]:
    """The final results of an analysis in the stack's backend: filename -> bytes ({} if none)."""
    try:
        prefix = final_prefix(check_key(analysis_id))
    except ValueError:
        return {}
    backend = stack.storage_backend
    results: dict[str, bytes] = {}
    for key in await backend.list(prefix):
        name = key[len(prefix) :]
        if "/" in name:
            continue
        try:
            results[name] = await backend.get(key)
        except KeyError:
            continue
    return results


__all__ = [
    "DEFAULT_FILENAME",
    "TAG_PATTERN",
    "create_app",
    "is_valid_tag",
    "parse_single_number",
    "project_of",
    "read_final_results",
    "register_analysis",
    "sample_laplace",
    "unregister_analysis",
]

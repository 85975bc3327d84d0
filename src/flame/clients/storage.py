"""Client of the node storage service of a FLAME node.

Final results go to the hub (``/final``, ``/final/localdp``); intermediate objects travel between nodes
through the hub, encrypted by the storage service for their one receiver and deleted after their first
read (``/intermediate``); local results stay on the node, project-scoped, optionally grouped under tags
(``/local``). Bodies are bytes: the runtime encodes them with :mod:`flame.codec` first.

An analysis cannot delete or untag a local result: the service's only ``DELETE /local`` removes a
whole project and answers only the hub adapter, once the project is gone from the hub. What must not
outlive one analysis is sealed before it is stored (:mod:`flame.federated.checkpoint`).

Every absolute URL the service returns is built from its own Host header without the sidecar's
``/storage`` prefix, so it is re-based onto this client's base URL (:func:`~flame.clients.base.rebase`)
before it is handed out or followed.

Retries: uploads (``PUT``) are retried like every idempotent request and re-send the same bytes. An
upload whose answer was lost after the service stored it leaves one orphan object (``/intermediate``) or a
duplicate local result (``/local``, shown twice under its tag); nothing is corrupted. Reading an
intermediate object is special, see :meth:`StorageClient.read_intermediate`.
"""

from __future__ import annotations

import asyncio
import math
import numbers
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from flame.clients.base import RETRY_STATUSES, ServiceClient, _detail, rebase
from flame.errors import (
    ProtocolError,
    ServiceError,
    ServiceUnavailableError,
    StorageArgumentError,
)

#: A valid tag, as the storage service checks it: the whole string matches.
TAG_PATTERN = re.compile(r"[a-z0-9]{1,2}|[a-z0-9][a-z0-9-]{0,30}[a-z0-9]")

TagOption = Literal["all", "first", "last"]

#: Hint of a failed intermediate read that answered 404.
ALREADY_READ_HINT = (
    "the object does not exist or was already read: intermediate objects are deleted by the storage "
    "service after their first complete read, so each receiver can read its object once"
)
_DECRYPT_HINT = (
    "the object does not decrypt with the sender's key: is remote_node_id the node that stored it, "
    "and was it stored for this node?"
)
#: Connection failures that happen before a request reaches the service: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class IntermediateRef:
    """An intermediate object this node stored for one receiver.

    ``id`` is ``"<object_id>?remote_node_id=<sender id>"``, the form PrivateAIM's SDK puts in its
    ``intermediate_data`` messages (``{"result_id": {receiver: id}}``); the receiver reads it with
    :meth:`StorageClient.read_intermediate`. ``url`` is re-based onto the client's base URL.
    """

    object_id: str
    url: str
    id: str
    sender_id: str
    receiver_id: str


@dataclass(frozen=True)
class LocalRef:
    """A local result of this node (``url`` re-based onto the client's base URL)."""

    object_id: str
    url: str
    tag: str | None = None


@dataclass(frozen=True)
class TaggedResult:
    """One local result listed under a tag (``url`` re-based onto the client's base URL)."""

    filename: str
    url: str
    object_id: str


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` is a tag name the storage service accepts."""
    return isinstance(tag, str) and TAG_PATTERN.fullmatch(tag) is not None


def check_tag(tag: str) -> str:
    """``tag`` if it is valid; :class:`StorageArgumentError` saying what a tag looks like otherwise."""
    if not is_valid_tag(tag):
        raise StorageArgumentError(
            f"invalid tag {tag!r}: a tag is 1 to 32 characters of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (for example 'round-3' or 'checkpoint-1')"
        )
    return tag


def default_filename(extension: str = ".bin") -> str:
    """A file name as PrivateAIM's SDK makes them: ``result_<4 hex>_<yymmddHHMMSS><extension>``."""
    return f"result_{secrets.token_hex(2)}_{datetime.now().strftime('%y%m%d%H%M%S')}{extension}"


def parse_intermediate_id(ref: str) -> tuple[str, str]:
    """``(object_id, sender_id)`` from ``"<uuid>?remote_node_id=<sender>"`` or a URL ending so.

    Raises :class:`~flame.errors.ProtocolError` if ``ref`` is not of that form (it usually comes from
    another node's message).
    """
    parts = urlsplit(ref.strip()) if isinstance(ref, str) else None
    if parts is None:
        raise ProtocolError(f"an intermediate data id must be a string, got {type(ref).__name__}")
    object_id = parts.path.rstrip("/").rsplit("/", 1)[-1]
    senders = parse_qs(parts.query).get("remote_node_id", [])
    try:
        object_id = str(uuid.UUID(object_id))
    except ValueError:
        object_id = ""
    if not object_id or len(senders) != 1 or not senders[0]:
        raise ProtocolError(
            f"malformed intermediate data id {ref[:200]!r}: expected '<object uuid>?remote_node_id=<sender id>'"
        )
    return object_id, senders[0]


def _object_id_of(url_or_id: str) -> str:
    """The UUID at the end of a local result URL, or the id itself; StorageArgumentError otherwise."""
    tail = urlsplit(url_or_id.strip()).path.rstrip("/").rsplit("/", 1)[-1]
    try:
        return str(uuid.UUID(tail))
    except ValueError:
        raise StorageArgumentError(
            f"{url_or_id[:200]!r} is neither an object id (a UUID) nor a URL ending in one"
        ) from None


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ProtocolError(f"storage: {what} did not answer a JSON object: {response.text[:200]!r}")
    return body


def _upload(data: bytes, filename: str) -> dict[str, tuple[str, bytes, str]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StorageArgumentError(
            f"storage uploads are bytes, got {type(data).__name__}: encode the value with flame.codec.encode"
        )
    return {"file": (filename, bytes(data), "application/octet-stream")}


class StorageClient(ServiceClient):
    """Final, intermediate and local results through the node's storage service."""

    service = "storage"
    #: FastAPI's HTTPBearer: 401 only without a header, 403 for a bad or expired token
    token_refused = frozenset({401, 403})

    # -- final results ------------------------------------------------------------------------------

    async def submit_final(self, data: bytes, filename: str) -> None:
        """Upload a final result to the hub, where the analyst downloads it (a same name replaces it)."""
        await self.request("PUT", "/final", files=_upload(data, filename), expected=(204,))

    async def submit_final_localdp(
        self, value: float, epsilon: float, sensitivity: float, filename: str | None = None
    ) -> None:
        """Upload one number as the final result; the service adds Laplace noise of scale
        ``sensitivity / epsilon`` before it reaches the hub.

        ``value`` must be finite, ``epsilon`` finite and > 0, ``sensitivity`` finite and >= 0
        (:class:`StorageArgumentError` otherwise, before any request).
        """
        for name, number in (("value", value), ("epsilon", epsilon), ("sensitivity", sensitivity)):
            if isinstance(number, bool) or not isinstance(number, numbers.Real):
                raise StorageArgumentError(
                    f"local DP: {name} must be a real number, got {type(number).__name__}"
                )
            if not math.isfinite(number):
                raise StorageArgumentError(f"local DP: {name} must be finite, got {number!r}")
        if epsilon <= 0:
            raise StorageArgumentError(f"local DP: epsilon must be greater than 0, got {epsilon!r}")
        if sensitivity < 0:
            raise StorageArgumentError(f"local DP: sensitivity must not be negative, got {sensitivity!r}")
        text = repr(float(value)).encode()
        await self.request(
            "PUT",
            "/final/localdp",
            files=_upload(text, filename or default_filename(".txt")),
            data={"epsilon": repr(float(epsilon)), "sensitivity": repr(float(sensitivity))},
            expected=(204,),
        )

    # -- intermediate results -----------------------------------------------------------------------

    async def save_intermediate(
        self, data: bytes, receiver: str, *, filename: str | None = None
    ) -> IntermediateRef:
        """Store ``data`` for the node ``receiver`` (its node id), encrypted so that only it can read it, once."""
        response = await self.request(
            "PUT",
            "/intermediate",
            files=_upload(data, filename or default_filename()),
            data={"remote_node_id": receiver},
            hint="is the receiver a node id taking part in this analysis?",
        )
        body = _json_object(response, "PUT /intermediate")
        url = body.get("url")
        if not isinstance(url, str):
            raise ProtocolError(f"storage: PUT /intermediate answered no url: {body!r:.200}")
        object_id = str(body.get("object_id") or "")
        url_object_id, sender = parse_intermediate_id(url)
        if object_id and object_id != url_object_id:
            raise ProtocolError(
                f"storage: PUT /intermediate answered object_id {object_id} but a url for {url_object_id}"
            )
        return IntermediateRef(
            object_id=url_object_id,
            url=rebase(url, self.base_url),
            id=f"{url_object_id}?remote_node_id={sender}",
            sender_id=sender,
            receiver_id=receiver,
        )

    async def read_intermediate(self, ref_or_id: str | IntermediateRef) -> bytes:
        """Read, and so consume, an intermediate object stored for this node.

        ``ref_or_id`` is ``"<uuid>?remote_node_id=<sender id>"`` (as messages carry it), a URL ending
        so, or an :class:`IntermediateRef`. A 404 means the object never existed or was already read.

        The storage service deletes the object once it streamed it completely, so a repeated GET
        after a transfer broke could find it gone. This read is therefore retried only when the
        request surely did not consume it: a connection that failed before the request was sent, or
        an answer of 429/502/503/504 (the service deletes only after a complete 200). A transfer that
        broke after the request was sent raises :class:`ServiceUnavailableError` at once.
        """
        ref = ref_or_id.id if isinstance(ref_or_id, IntermediateRef) else ref_or_id
        object_id, sender = parse_intermediate_id(ref)
        path = f"/intermediate/{object_id}?remote_node_id={quote(sender, safe='')}"
        what = f"GET /intermediate/{object_id}"
        delays = self.retry.delays(self._rng)
        while True:
            failure: ServiceError
            try:
                response = await self._send("GET", path, self.timeout, {})
            except _NOT_SENT as exc:
                failure = ServiceUnavailableError(
                    self.service, what, None, f"cannot connect ({type(exc).__name__})"
                )
            except httpx.TransportError as exc:
                raise ServiceUnavailableError(
                    self.service,
                    what,
                    None,
                    f"the transfer broke ({type(exc).__name__})",
                    hint="not retried: the object may already be consumed (deleted after its first read)",
                ) from None
            else:
                status = response.status_code
                if status == 200:
                    return response.content
                if status not in RETRY_STATUSES:
                    hint = {404: ALREADY_READ_HINT, 400: _DECRYPT_HINT}.get(status, "")
                    raise ServiceError(self.service, what, status, _detail(response), hint=hint)
                failure = ServiceUnavailableError(self.service, what, status, _detail(response))
            delay = next(delays, None)
            if delay is None:
                raise failure
            await asyncio.sleep(delay)

    # -- local results ------------------------------------------------------------------------------

    async def save_local(
        self, data: bytes, *, tag: str | None = None, filename: str | None = None
    ) -> LocalRef:
        """Store a local result of this node, optionally under ``tag`` (project-scoped: later analyses
        of the project see it)."""
        if tag is not None:
            check_tag(tag)
        response = await self.request(
            "PUT",
            "/local",
            files=_upload(data, filename or default_filename()),
            data={"tag": tag} if tag is not None else None,
        )
        body = _json_object(response, "PUT /local")
        url = body.get("url")
        if not isinstance(url, str):
            raise ProtocolError(f"storage: PUT /local answered no url: {body!r:.200}")
        # Some versions of the service answer only {"url"}; the id is the URL's last segment.
        object_id = str(body.get("object_id") or _object_id_of(url))
        return LocalRef(object_id=object_id, url=rebase(url, self.base_url), tag=tag)

    async def read_local(self, object_id_or_url: str | LocalRef | TaggedResult) -> bytes:
        """The bytes of a local result, by object id or by (returned or re-based) URL."""
        if isinstance(object_id_or_url, LocalRef | TaggedResult):
            object_id = object_id_or_url.object_id
        else:
            object_id = _object_id_of(object_id_or_url)
        return (await self.request("GET", f"/local/{object_id}")).content

    async def tags(self) -> list[str]:
        """The tags of this node's local results in the project."""
        body = _json_object(await self.request("GET", "/local/tags"), "GET /local/tags")
        tags = body.get("tags")
        if not isinstance(tags, list):
            raise ProtocolError(f"storage: GET /local/tags answered no tag list: {body!r:.200}")
        return [str(t["name"]) if isinstance(t, dict) else str(t) for t in tags]

    async def tagged(self, tag: str) -> list[TaggedResult]:
        """The local results under ``tag``, in the order the service lists them (tagging order)."""
        check_tag(tag)
        body = _json_object(await self.request("GET", f"/local/tags/{tag}"), "GET /local/tags/{tag}")
        results = body.get("results")
        if not isinstance(results, list):
            raise ProtocolError(f"storage: GET /local/tags/{tag} answered no result list: {body!r:.200}")
        return [self._tagged_result(item, "GET /local/tags/{tag}") for item in results]

    async def add_tag(self, tag: str, object_id: str, filename: str | None = None) -> TaggedResult:
        """Put an existing local result under ``tag`` (tagging twice is harmless, so this is retried)."""
        check_tag(tag)
        params = {"tag_name": tag, "object_id": _object_id_of(object_id)}
        if filename is not None:
            params["filename"] = filename
        response = await self.request("POST", "/local/tags", params=params, retry=True)
        return self._tagged_result(_json_object(response, "POST /local/tags"), "POST /local/tags")

    async def read_tagged(self, tag: str, which: TagOption = "all") -> list[bytes]:
        """The contents of the local results under ``tag``: all of them, or only the first or last."""
        if which not in ("all", "first", "last"):
            raise StorageArgumentError(f"which must be 'all', 'first' or 'last', got {which!r}")
        results = await self.tagged(tag)
        if which == "first":
            results = results[:1]
        elif which == "last":
            results = results[-1:]
        return [await self.read_local(result) for result in results]

    def _tagged_result(self, item: Any, what: str) -> TaggedResult:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ProtocolError(f"storage: {what} answered a result without url: {item!r:.200}")
        url = item["url"]
        try:
            object_id = _object_id_of(url)
        except StorageArgumentError:
            raise ProtocolError(f"storage: {what} answered a url without object id: {url[:200]!r}") from None
        return TaggedResult(
            filename=str(item.get("filename", "")), url=rebase(url, self.base_url), object_id=object_id
        )


__all__ = [
    "ALREADY_READ_HINT",
    "TAG_PATTERN",
    "IntermediateRef",
    "LocalRef",
    "StorageArgumentError",
    "StorageClient",
    "TagOption",
    "TaggedResult",
    "check_tag",
    "default_filename",
    "is_valid_tag",
    "parse_intermediate_id",
]

"""What every service client shares: the Bearer from the token store, timeouts, retries, typed errors.

A node runtime owns one :class:`httpx.AsyncClient` (one connection pool) and hands it to one client per
service; each client knows its service's base URL. Requests that are safe to repeat are retried on
connection errors, 429 and 5xx with exponential backoff and jitter, within a bounded number of
attempts; everything else fails at once with a typed error naming service, request and status.
"""

from __future__ import annotations

import asyncio
import logging
import random
import select
import ssl
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpcore
import httpx

from flame.errors import ServiceError, ServiceUnavailableError
from flame.redact import redact
from flame.tokens import TokenStore
from flame.waits import bounded

log = logging.getLogger(__name__)

#: Methods that are safe to repeat (RFC 9110 section 9.2.2); POST only when the caller says so.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, a request that is safe to repeat is retried."""

    #: Attempts in all, the first included.
    attempts: int = 5
    #: Delay before the first retry (seconds); doubles each retry, up to ``max_delay``.
    base_delay: float = 0.25
    max_delay: float = 8.0
    #: Up to this fraction of each delay is added at random, so nodes do not retry in step.
    jitter: float = 0.5
    #: How long a request whose token a service refused (401) waits for a new one (seconds). The
    #: node then reports its token as expired on ``/healthz``; the pod orchestrator checks every 10 s
    #: and pushes a new token when fewer than about 21 s are left.
    token_wait: float = 30.0
    #: How many new tokens one request waits for before it fails with the refusal.
    token_refreshes: int = 2

    def delays(self, rng: random.Random | None = None) -> Generator[float, None, None]:
        """The waits between attempts."""
        rng = rng or random.Random()
        for retry in range(self.attempts - 1):
            delay = min(self.base_delay * 2**retry, self.max_delay)
            yield delay * (1.0 + rng.uniform(0.0, self.jitter))


#: Request URLs a client keeps parsed (httpx parses a URL string on every request, about as long as the
#: rest of building the request; a node asks few distinct paths again and again).
URL_CACHE_SIZE = 256

#: Default timeouts of one request (seconds): connect, read, write, pool.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

#: Connections a node keeps to its sidecar, all of them kept alive between requests. httpx's default
#: (100 connections, 20 kept alive) made a node with many requests in flight close and reopen
#: connections, and httpcore checks every pooled connection (a system call each) on every request; a
#: request beyond the limit waits for a connection (within the request's pool timeout).
NODE_CONNECTIONS = 16
NODE_LIMITS = httpx.Limits(max_connections=NODE_CONNECTIONS, max_keepalive_connections=NODE_CONNECTIONS)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: no node service sets cookies, and httpx would parse every
    response for them."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        raise ValueError("the node's HTTP client keeps no cookies")


_NO_COOKIES = _NoCookies()


class _Socket(Protocol):
    def fileno(self) -> int: ...


def _readable(sock: _Socket) -> bool:
    """Whether ``sock`` has data (or an end of stream) waiting: one ``poll`` without waiting."""
    fd = sock.fileno()
    if fd < 0:
        return True  # closed: the next read ends at once
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _PooledStream(httpcore.AsyncNetworkStream):
    """A connection of the node's pool whose liveness check is one ``poll`` of its socket.

    Before every request and after every response, httpcore asks each idle pooled connection whether
    the server closed it (``is_readable``). Its stream answers that by building anyio's whole table
    of socket attributes, a ``getpeername`` system call included, for every connection every time:
    with the node's 16 connections the larger part of the pool's bookkeeping per request. This
    stream keeps the socket it was connected with and polls it directly; everything else is the
    wrapped stream's.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        # asyncio hands out a wrapper of the socket (``TransportSocket``), not the socket itself; where
        # there is no poll (Windows), the wrapped stream answers as before
        sock = inner.get_extra_info("socket") if hasattr(select, "poll") else None
        self._sock: _Socket | None = sock if callable(getattr(sock, "fileno", None)) else None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.start_tls(ssl_context, server_hostname, timeout)  # TLS: as it is

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._sock is not None:
            return _readable(self._sock)
        return self._inner.get_extra_info(info)


class _PoolBackend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, its TCP connections wrapped in :class:`_PooledStream`."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PooledStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _node_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport with ``limits``, its connection pool on :class:`_PoolBackend`."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    context = getattr(pool, "_ssl_context", None)
    # (an httpx or httpcore whose transport is built otherwise: left as it is)
    if type(pool) is httpcore.AsyncConnectionPool and isinstance(context, ssl.SSLContext):
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PoolBackend(),
        )
    return transport


class NodeHTTPClient(httpx.AsyncClient):
    """The node's HTTP client: one pool of kept-alive connections (:data:`NODE_LIMITS`), no cookies,
    no redirects followed."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        limits: httpx.Limits = NODE_LIMITS,
    ) -> None:
        if transport is None:
            transport = _node_transport(limits)
        super().__init__(transport=transport, timeout=timeout, limits=limits, follow_redirects=False)

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("the node's HTTP client keeps no cookies")


class FixedBearer(httpx.Auth):
    """``Authorization: Bearer`` with one given token (to try a token before it is taken into use)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "FixedBearer(<token>)"


class BearerAuth(httpx.Auth):
    """Sets ``Authorization: Bearer`` from the token store on every request, so a refresh applies at once."""

    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._tokens.get()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<token store>)"


def rebase(url: str, base: str) -> str:
    """Keep the path tail and query of an absolute ``url`` a service returned, under ``base``.

    The storage service builds absolute URLs from its own Host header, without the ``/storage``
    prefix of the sidecar, so they cannot be followed as they are.
    """
    parts = urlsplit(url)
    tail = parts.path or "/"
    if parts.query:
        tail += "?" + parts.query
    return base.rstrip("/") + tail


class ServiceClient:
    """A client of one node service at ``base_url``, sharing the node's connection pool."""

    #: The service's name in errors: ``message-broker``, ``storage``, ``hub-adapter``, ``kong``, ``po``.
    service = "service"
    #: Statuses with which the service refuses a Bearer token (the broker: 401; the FastAPI services
    #: answer 403 for a token that is bad or expired, 401 only without one).
    token_refused: frozenset[int] = frozenset({401})

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        tokens: TokenStore | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.auth: httpx.Auth | None = BearerAuth(tokens) if tokens is not None else None
        self.retry = retry or RetryPolicy()
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout)
        self._rng = rng or random.Random()
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _parsed_url(self, path: str) -> httpx.URL:
        """``url(path)`` parsed, from a small cache (keyed by the base URL too, in case it changes)."""
        key = (self.base_url, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[key] = httpx.URL(self.url(path))
        return url

    async def request(
        self,
        method: str,
        path: str,
        *,
        expected: Iterable[int] = (200,),
        retry: bool | None = None,
        timeout: httpx.Timeout | float | None = None,
        hint: str = "",
        token: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request and return the response if its status is one of ``expected``.

        ``retry`` defaults to whether the method is idempotent. The response body is read.
        Raises :class:`ServiceUnavailableError` when the service cannot be reached or keeps
        answering 429/5xx through every retry, :class:`ServiceError` for any other status.

        When the service refuses the token store's current token (401), the store marks it rejected
        (``/healthz`` then reports it expired, so the pod orchestrator pushes a new one) and the request
        waits for the new token (``RetryPolicy.token_wait``) and is sent again with it: a refused
        request was not processed, so this holds for every method. ``token`` sends that token instead
        of the store's, once, without any of this (to try a token before taking it into use).
        """
        method = method.upper()
        repeatable = method in IDEMPOTENT_METHODS if retry is None else retry
        delays = self.retry.delays(self._rng) if repeatable else iter(())
        what = f"{method} {_path_only(path)}"
        request_timeout = self.timeout if timeout is None else httpx.Timeout(timeout)
        wanted = set(expected)
        auth = FixedBearer(token) if token is not None else self.auth
        refreshes = 0
        while True:
            failure: ServiceError
            version = self.tokens.version if self.tokens is not None else 0
            try:
                response = await self._send(method, path, request_timeout, kwargs, auth)
            except httpx.TimeoutException as exc:
                failure = ServiceUnavailableError(
                    self.service, what, None, f"timed out ({type(exc).__name__})", hint=hint
                )
            except httpx.TransportError as exc:
                failure = ServiceUnavailableError(
                    self.service, what, None, f"cannot connect ({type(exc).__name__})", hint=hint
                )
            else:
                if response.status_code in wanted:
                    return response
                detail = _detail(response)
                if (
                    token is None
                    and response.status_code in self.token_refused
                    and refreshes < self.retry.token_refreshes
                    and await self._new_token(response, version, what)
                ):
                    refreshes += 1
                    continue
                if response.status_code not in RETRY_STATUSES:
                    raise ServiceError(self.service, what, response.status_code, detail, hint=hint)
                failure = ServiceUnavailableError(self.service, what, response.status_code, detail, hint=hint)
            delay = next(delays, None)
            if delay is None:
                raise failure
            await asyncio.sleep(delay)

    async def _new_token(self, response: httpx.Response, version: int, what: str) -> bool:
        """After the service refused the store's token: mark it rejected and wait for a new one.

        True when a new token is there to retry with (it may have come while the request was out).
        """
        if self.tokens is None:
            return False
        used = response.request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not used or not self.tokens.mark_rejected(used):
            # no token was sent, or it was replaced meanwhile: retry at once if there is a new one
            return bool(self.tokens.get()) and self.tokens.version != version
        wait = self.retry.token_wait
        log.warning(
            "%s: %s answered %d: the token was refused; waiting up to %g s for the pod orchestrator "
            "to push a new one",
            self.service,
            what,
            response.status_code,
            wait,
        )
        if await self.tokens.wait_for_change(version, wait):
            log.info("%s: retrying %s with the new token", self.service, what)
            return True
        return False

    async def _send(
        self,
        method: str,
        path: str,
        timeout: httpx.Timeout,
        kwargs: dict[str, Any],
        auth: httpx.Auth | None = None,
    ) -> httpx.Response:
        request = self.http.build_request(method, self._parsed_url(path), timeout=timeout, **kwargs)
        seconds = timeout.read
        # httpx applies no timeout to in-process (ASGI) transports; bound the whole exchange too.
        auth = auth if auth is not None else self.auth
        coro = self.http.send(request, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT)
        if seconds is None:
            return await coro
        try:
            return await bounded(coro, seconds + (timeout.connect or 0.0) + (timeout.write or 0.0))
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout("the whole request timed out", request=request) from None


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
    else:
        text = str(body.get("detail", body)) if isinstance(body, dict) else str(body)
    return redact(text[:300])

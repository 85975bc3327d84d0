"""What every service client shares: the Bearer from the token store, timeouts, retries, typed errors.

A node runtime owns one :class:`httpx.AsyncClient` (one connection pool) and hands it to one client per
service; each client knows its service's base URL. Requests that are safe to repeat are retried on
connection errors, 429 and 5xx with exponential backoff and jitter, within a bounded number of
attempts; everything else fails at once with a typed error naming service, request and status.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from flame.errors import ServiceError, ServiceUnavailableError
from flame.redact import redact
from flame.tokens import TokenStore

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

    def delays(self, rng: random.Random | None = None) -> Generator[float, None, None]:
        """The waits between attempts."""
        rng = rng or random.Random()
        for retry in range(self.attempts - 1):
            delay = min(self.base_delay * 2**retry, self.max_delay)
            yield delay * (1.0 + rng.uniform(0.0, self.jitter))


#: Default timeouts of one request (seconds): connect, read, write, pool.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


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
    prefix of the sidecar (WIRE.md section 1), so they cannot be followed as they are.
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
        self.auth: httpx.Auth | None = BearerAuth(tokens) if tokens is not None else None
        self.retry = retry or RetryPolicy()
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout)
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    async def request(
        self,
        method: str,
        path: str,
        *,
        expected: Iterable[int] = (200,),
        retry: bool | None = None,
        timeout: httpx.Timeout | float | None = None,
        hint: str = "",
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request and return the response if its status is one of ``expected``.

        ``retry`` defaults to whether the method is idempotent. The response body is read.
        Raises :class:`ServiceUnavailableError` when the service cannot be reached or keeps
        answering 429/5xx through every retry, :class:`ServiceError` for any other status.
        """
        method = method.upper()
        repeatable = method in IDEMPOTENT_METHODS if retry is None else retry
        delays = self.retry.delays(self._rng) if repeatable else iter(())
        what = f"{method} {_path_only(path)}"
        request_timeout = self.timeout if timeout is None else httpx.Timeout(timeout)
        wanted = set(expected)
        while True:
            failure: ServiceError
            try:
                response = await self._send(method, path, request_timeout, kwargs)
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
                if response.status_code not in RETRY_STATUSES:
                    raise ServiceError(self.service, what, response.status_code, detail, hint=hint)
                failure = ServiceUnavailableError(self.service, what, response.status_code, detail, hint=hint)
            delay = next(delays, None)
            if delay is None:
                raise failure
            await asyncio.sleep(delay)

    async def _send(
        self, method: str, path: str, timeout: httpx.Timeout, kwargs: dict[str, Any]
    ) -> httpx.Response:
        request = self.http.build_request(method, self.url(path), timeout=timeout, **kwargs)
        seconds = timeout.read
        # httpx applies no timeout to in-process (ASGI) transports; bound the whole exchange too.
        coro = self.http.send(request, auth=self.auth if self.auth is not None else httpx.USE_CLIENT_DEFAULT)
        if seconds is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, seconds + (timeout.connect or 0.0) + (timeout.write or 0.0))
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

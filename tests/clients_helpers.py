"""Service clients of one emulated node, wired the way a node runtime wires them, for client tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from flame.clients.base import RetryPolicy
from flame.clients.data_api import DataAPI, HubAdapterClient, KongClient
from flame.clients.storage import StorageClient
from flame.config import NodeConfig, ServiceURLs
from flame.tokens import TokenStore
from tests.conftest import StackHarness

#: Quick retries for tests: the same policy, in milliseconds.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, jitter=0.1)


class CountingTransport(httpx.AsyncBaseTransport):
    """Passes requests on to ``inner`` and records ``(method, path, status)`` of each."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[tuple[str, str, int | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except Exception:
            self.requests.append((request.method, request.url.path, None))
            raise
        self.requests.append((request.method, request.url.path, response.status_code))
        return response

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        return sum(1 for m, p, _ in self.requests if (method is None or m == method) and path_contains in p)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class NodeClients:
    """What a node runtime builds: one connection pool, the token store, one client per service."""

    name: str
    config: NodeConfig
    urls: ServiceURLs
    http: httpx.AsyncClient
    transport: CountingTransport
    tokens: TokenStore
    storage: StorageClient
    hub: HubAdapterClient
    kong: KongClient | None
    data: DataAPI | None

    def kong_with_key(self, key: str, **kwargs: Any) -> KongClient:
        """Another Kong client on the same pool, with another data key."""
        return KongClient(self.http, self.urls.kong, data_key=key, **kwargs)


def node_clients(
    h: StackHarness,
    name: str,
    *,
    retry: RetryPolicy | None = FAST_RETRY,
    timeout: float | None = 10.0,
    tokens: TokenStore | None = None,
) -> NodeClients:
    """The clients of node ``name`` in the harness' mode.

    In-process: the node's in-process transport, base URL ``http://{node.host}`` plus the prefixes.
    Served: plain HTTP to the node's own port. The httpx client is closed with the harness.
    """
    stack = h.stack
    env = stack.env(name)
    config = NodeConfig.from_env(env)
    urls = config.urls
    if h.mode == "inprocess":
        assert urls.storage.startswith(f"http://{stack.node(name).host}/")
        inner: httpx.AsyncBaseTransport = stack.client(name)._transport
    else:
        assert urls.storage.startswith(stack.node_base_url(name) + "/")
        inner = httpx.AsyncHTTPTransport()
    transport = CountingTransport(inner)
    http = httpx.AsyncClient(transport=transport)
    h._clients.append(http)
    store = tokens if tokens is not None else TokenStore(config.keycloak_token)
    common: dict[str, Any] = {"retry": retry, "timeout": timeout}
    storage = StorageClient(http, urls.storage, tokens=store, **common)
    hub = HubAdapterClient(http, urls.hub_adapter, tokens=store, **common)
    kong = data = None
    if config.data_source_token is not None:
        kong = KongClient(http, urls.kong, data_key=config.data_source_token, **common)
        data = DataAPI(hub, kong, config.project_id)
    return NodeClients(name, config, urls, http, transport, store, storage, hub, kong, data)

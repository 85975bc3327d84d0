"""Shared fixtures: the emulated node stack in both modes, and real loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.servers import serve_asgi

MODES = ["inprocess", "served"]


class StackHarness:
    """A started stack plus the means to talk to it the way the chosen mode does."""

    def __init__(self, stack: FlameStack, mode: str) -> None:
        self.stack = stack
        self.mode = mode
        self._clients: list[httpx.AsyncClient] = []
        self._servers: list[Any] = []

    def client(self, node: str, **kwargs: Any) -> httpx.AsyncClient:
        """A raw httpx client whose base URL is the node's sidecar, in this mode."""
        if self.mode == "inprocess":
            client = self.stack.client(node, **kwargs)
        else:
            client = httpx.AsyncClient(base_url=self.stack.node_base_url(node), **kwargs)
        self._clients.append(client)
        return client

    def auth(self, node: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.node(node).token}"}

    async def attach(self, node: str, app: Any) -> str:
        """Attach an analysis API app to a node; served mode serves it on loopback first.

        Returns the webhook URL an analysis on that node would subscribe.
        """
        if self.mode == "inprocess":
            self.stack.attach_analysis(node, app)
            return f"http://{self.stack.node(node).host}/analysis/webhook"
        server = await serve_asgi(app)
        self._servers.append(server)
        self.stack.attach_analysis(node, server.url)
        return f"{self.stack.node_base_url(node)}/analysis/webhook"

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))
        await asyncio.gather(*(server.aclose() for server in self._servers))


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_stack(mode: str) -> AsyncIterator[Callable[..., Any]]:
    """``await make_stack(analysis_nodes=2, **FlameStack kwargs)``: a started stack in ``mode``."""
    harnesses: list[StackHarness] = []
    backends: list[Any] = []

    async def factory(analysis_nodes: int = 2, **kwargs: Any) -> StackHarness:
        kwargs.setdefault("settings", StackSettings.fast(po_enabled=False))
        stack = FlameStack.create(analysis_nodes, **kwargs)
        if kwargs.get("storage_backend") is not None:
            backends.append(kwargs["storage_backend"])
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
    for backend in backends:
        await backend.aclose()

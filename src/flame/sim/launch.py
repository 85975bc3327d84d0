"""Start node runtimes against the emulated stack, as FLAME would start analysis containers.

In-process mode: the runtime's HTTP goes through the node's in-process sidecar transport and its REST
API is mounted in the stack. Served mode: the runtime gets exactly a container's environment (plus
``FLAME_BASE_URL``, the node's sidecar port on loopback), serves its REST API with uvicorn on an
ephemeral loopback port, and the stack's sidecar forwards ``/analysis/...`` to it.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from flame.config import NodeConfig
from flame.node.runtime import AsyncNode
from flame.sim.proxy import SidecarTransport
from flame.sim.stack import FlameStack

Mode = Literal["inprocess", "served"]


def node_config(stack: FlameStack, name: str, mode: Mode, **overrides: Any) -> NodeConfig:
    """The configuration a container of node ``name`` would read from its environment, in ``mode``."""
    config = NodeConfig.from_env(stack.env(name, per_node_url=(mode == "served")))
    return config.with_overrides(**overrides) if overrides else config


async def start_node(stack: FlameStack, name: str, mode: Mode = "inprocess", **node_kwargs: Any) -> AsyncNode:
    """Create, attach and start the runtime of node ``name`` on the current event loop."""
    if mode == "served" and stack.base_url is None:
        await stack.serve()
    config = node_config(stack, name, mode)
    if mode == "inprocess":
        node = AsyncNode(
            config,
            transport=SidecarTransport(stack.app, stack.resolver(name)),
            serve_api=False,
            **node_kwargs,
        )
        stack.attach_analysis(name, node.api_app)
    else:
        # the nodes of one process share the stack's TLS context (a client's own loads the certificate
        # store again: ~40 ms per node)
        transport = httpx.AsyncHTTPTransport(verify=stack.ssl_context())
        node = AsyncNode(config, transport=transport, serve_api=False, **node_kwargs)
        url = await node.serve_api(host="127.0.0.1", port=0)
        stack.attach_analysis(name, url)
    await node.start()
    return node

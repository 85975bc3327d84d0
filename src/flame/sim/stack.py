"""The emulated FLAME node stack: one analysis, N nodes, every node service behind one ASGI app.

A :class:`FlameStack` plays, for every node of one analysis, the sidecar nginx and the services behind
it: message broker (with the hub relay between nodes), storage service, hub adapter, Kong, pod
orchestrator, and each node's Keycloak. It is one ASGI application routed like the sidecar:

- per node, as each node's cluster sees its sidecar ``http://nginx-{DEPLOYMENT_NAME}/<prefix>/...``.
  Every node of an analysis has the same deployment name, so the node is told by the connection: the
  in-process transport of that node (:meth:`FlameStack.client`), or in served mode the node's own
  port on loopback. A ``Host`` of another (say, an earlier) deployment gets 502, like a dead pod;
- by path: ``{base}/node/{name}/<prefix>/...`` on the stack's main address;
- ``/_sim/...``: the emulator's own API (nodes, final results, events, key sets, restarts, and
  ``POST``/``DELETE /_sim/nodes/{name}/attach`` to attach an analysis API at run time).

Two modes run the same code. In-process: clients use :meth:`FlameStack.client` (httpx's ASGI
transport), webhooks are delivered in-process. Served: :meth:`FlameStack.serve` runs uvicorn on
127.0.0.1; every request of a node and every webhook to an analysis API travels over real HTTP. The
broker hands a webhook to the receiving node's sidecar in-process (both are parts of the stack, in one
process); the sidecar's request to the analysis API is real HTTP again.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from flame.node.serving import HTTPServer
from flame.node.status import FINAL_STATUSES

try:
    from flame.sim import backends
except ModuleNotFoundError as exc:  # the emulator's packages are an extra: never needed on a node
    raise ModuleNotFoundError(
        f"the emulated node stack needs {exc.name}: pip install 'flame-python-sdk[sim]'", name=exc.name
    ) from exc
from flame.sim import broker, data, po, storage
from flame.sim.asgi import FastCall, FastHandler
from flame.sim.events import EventLog
from flame.sim.faults import FaultPlan, NodeRestart, TokenExpiry
from flame.sim.issuer import JWKS_PATH, TokenIssuer
from flame.sim.node import NodeSpec, SimNode
from flame.sim.proxy import SidecarTransport, forward_asgi, forward_http
from flame.sim.settings import StackSettings

#: Paths the sidecar lets through to each service (as on a FLAME node); ``{a}``/``{p}``: analysis/project.
_ALLOWED = {
    "message-broker": r"^/analyses/{a}/(participants(/self)?|messages(/.*)?)$",
    "storage": r"^/(final|local|intermediate)(/.*)?$",
    "hub-adapter": r"^/kong/datastore/{p}$",
    "kong": r"^/.+$",
    "po": r"^/stream_logs$",
    "analysis": r"^/.*$",
}

RestartListener = Callable[[SimNode, dict[str, str]], Any]
StopListener = Callable[[SimNode, str], Any]


class FlameStack:
    """One analysis on N emulated FLAME nodes.

    Use it as an async context manager (``async with FlameStack.create(3) as stack:``), or call
    :meth:`start` and :meth:`aclose`. Everything it does is recorded in :attr:`events`.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        *,
        analysis_id: str | None = None,
        project_id: str | None = None,
        storage_backend: backends.StorageBackend | None = None,
        settings: StackSettings | None = None,
        seed: int = 0,
        faults: FaultPlan | None = None,
        keycloak_url: str = "http://keycloak.sim",
    ) -> None:
        names = [spec.name for spec in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        if sum(spec.role == "aggregator" for spec in nodes) != 1:
            raise ValueError("exactly one node must have role 'aggregator'")
        for name in names:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name):
                raise ValueError(f"node name {name!r}: use lowercase letters, digits and '-'")
        self.seed = seed
        #: when the stack's data services were set up (Kong's ``created_at``, Unix seconds)
        self.created_at = int(time.time())
        self.rng = random.Random(seed)
        self.analysis_id = analysis_id or str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.project_id = project_id or str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.settings = settings or StackSettings()
        self.faults = faults or FaultPlan(seed=seed)
        self.events = EventLog()
        self._tmpdir: str | None = None
        #: a backend passed in is the caller's to close (several stacks may share it)
        self._owns_backend = storage_backend is None
        if storage_backend is None:
            self._tmpdir = tempfile.mkdtemp(prefix="flame-stack-")
            storage_backend = backends.LocalFolderBackend(Path(self._tmpdir))
        self.storage_backend = storage_backend
        signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.nodes: dict[str, SimNode] = {}
        for spec in nodes:
            issuer = TokenIssuer(f"{keycloak_url}/{spec.name}", private_key=signing_key)
            self.nodes[spec.name] = SimNode(spec, self.analysis_id, issuer)
        for node in self.nodes.values():
            node.token = node.issuer.mint(self.analysis_id, self.settings.token_lifetime)
        self._restart_listeners: list[RestartListener] = []
        self._stop_listeners: list[StopListener] = []
        #: node name -> its disclosure policy file (``flame sim --policy``), in the node's environment
        self.disclosure_policies: dict[str, str] = {}
        self._incarnation_locks: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in self.nodes}
        self._analysis_clients: dict[str, httpx.AsyncClient] = {}
        #: node name -> where its analysis will listen, attached when the analysis first calls its sidecar
        self._expected: dict[str, str] = {}
        self._node_http: dict[str, httpx.AsyncClient] = {}
        self._node_ports: dict[str, int] = {}
        self._port_to_node: dict[int, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started_at: float | None = None
        self._server: HTTPServer | None = None
        self._node_servers: dict[str, HTTPServer] = {}
        self.base_url: str | None = None
        self._http: httpx.AsyncClient | None = None
        self._ssl: ssl.SSLContext | None = None
        self.app = StackApp(self)
        self.broker = broker.Broker(self)
        self.po = po.PodOrchestrator(self)
        # every stack's storage service accepts this analysis from now on, before any request builds one
        storage.register_analysis(self.analysis_id, self.project_id)
        #: service -> its ASGI app, each built when a request first reaches it (building the web
        #: framework's routes costs more than a small federation's whole run)
        self.service_apps: dict[str, Any] = _LazyApps(
            {
                "message-broker": lambda: broker.create_app(self),
                "storage": lambda: storage.create_app(self),
                "hub-adapter": lambda: data.create_hub_adapter_app(self),
                "kong": lambda: data.create_kong_app(self),
                "po": lambda: po.create_app(self),
            }
        )
        self._admin_app: Any = None

    @classmethod
    def create(
        cls, analysis_nodes: int = 3, *, data_root: Path | str | None = None, **kwargs: Any
    ) -> FlameStack:
        """A stack with one aggregator and ``analysis_nodes`` analysis nodes ``node-1`` ... ``node-N``.

        With ``data_root``, node ``node-i`` reads its data from ``data_root/node-i`` (sub-folders
        ``fhir/`` and ``s3/``).
        """
        root = Path(data_root) if data_root is not None else None
        specs = [NodeSpec("aggregator", role="aggregator")]
        for i in range(1, analysis_nodes + 1):
            name = f"node-{i}"
            folder = root / name if root is not None and (root / name).is_dir() else None
            specs.append(NodeSpec(name, role="default", data_dir=folder))
        return cls(specs, **kwargs)

    @property
    def admin_app(self) -> Any:
        """The ASGI app of ``/_sim/...``, the emulator's own API (built on first use)."""
        if self._admin_app is None:
            self._admin_app = _create_admin_app(self)
        return self._admin_app

    # -- lookup -------------------------------------------------------------------------------------

    #: node id -> node, built on first use by :meth:`node_by_id`
    _by_id: dict[str, SimNode] = {}  # noqa: RUF012 - replaced per instance, never mutated

    def node(self, name: str) -> SimNode:
        """The node called ``name``; KeyError with the known names otherwise."""
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r}; nodes: {', '.join(self.nodes)}") from None

    def node_by_id(self, node_id: str) -> SimNode | None:
        """The node whose id is ``node_id``, or None (every message send looks its recipients up)."""
        node = self._by_id.get(node_id)
        if node is None or self.nodes.get(node.name) is not node:
            # not indexed yet, or the nodes changed since: index them again
            self._by_id = {n.node_id: n for n in self.nodes.values()}
            node = self._by_id.get(node_id)
        return node

    def now(self) -> float:
        """Seconds since :meth:`start`, the time base of fault rules."""
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at

    def resolver(self, name: str) -> Callable[[str], str | None]:
        """Host-name resolution inside node ``name``'s cluster: its current sidecar, if its pod is up."""

        def resolve(host: str) -> str | None:
            return name if self.reaches(name, host) else None

        return resolve

    def reaches(self, name: str, host: str) -> bool:
        """Whether ``host`` resolves to node ``name``'s sidecar inside its cluster (see :meth:`resolver`)."""
        return host == self.nodes[name].host and not self.faults.offline(name, self.now())

    # -- environment --------------------------------------------------------------------------------

    def env(self, name: str, *, per_node_url: bool | None = None) -> dict[str, str]:
        """The five variables a FLAME container of node ``name`` gets, plus local-run overrides.

        In served mode (or with ``per_node_url=True``) ``FLAME_BASE_URL`` points at the node's base
        URL on loopback, since ``nginx-...`` does not resolve outside a cluster.
        """
        node = self.node(name)
        env = {
            "ANALYSIS_ID": self.analysis_id,
            "PROJECT_ID": self.project_id,
            "DEPLOYMENT_NAME": node.deployment_name,
            "KEYCLOAK_TOKEN": node.token,
            "DATA_SOURCE_TOKEN": node.data_key if node.has_data else "none_needed",
        }
        if per_node_url is None:
            per_node_url = self.base_url is not None
        if per_node_url:
            env["FLAME_BASE_URL"] = self.node_base_url(name)
        if name in self.disclosure_policies:
            env["FLAME_DISCLOSURE_POLICY"] = self.disclosure_policies[name]
        return env

    def node_base_url(self, name: str) -> str:
        """The node's sidecar in served mode: its own port on loopback, as ``http://nginx-...`` inside a node.

        Before :meth:`serve`, the path form ``{base}/node/{name}`` of the in-process app.
        """
        port = self._node_ports.get(name)
        if port is not None:
            return f"http://127.0.0.1:{port}"
        return f"{self.base_url or 'http://stack.sim'}/node/{self.node(name).name}"

    def jwks_url(self, name: str) -> str:
        """Where node ``name``'s Keycloak key set is served (served mode: a real URL)."""
        base = self.base_url or "http://stack.sim"
        return f"{base}/_sim/keycloak/{name}{JWKS_PATH}"

    # -- analyses attached to nodes ------------------------------------------------------------------

    def attach_analysis(self, name: str, target: Any) -> None:
        """Tell the sidecar of node ``name`` where its analysis API is: an ASGI app or a base URL."""
        node = self.node(name)
        node.analysis_target = target
        old = self._analysis_clients.pop(name, None)
        if old is not None:
            self._spawn(old.aclose())
        if target is None:
            return
        if isinstance(target, str):
            self._analysis_clients[name] = httpx.AsyncClient(
                base_url=target.rstrip("/"), timeout=None, verify=self.ssl_context()
            )
        else:
            transport = httpx.ASGITransport(app=target, raise_app_exceptions=False)
            self._analysis_clients[name] = httpx.AsyncClient(
                transport=transport, base_url="http://analysis", timeout=None
            )

    def expect_analysis(self, name: str, url: str | None) -> None:
        """Attach the analysis at ``url`` to node ``name`` once it first calls its sidecar (None: forget).

        For analyses started by hand (``flame node up``): until then the pod orchestrator does not judge
        a node whose analysis has not started, and after a restart the next incarnation, started with
        the new environment, is attached the same way.
        """
        node = self.node(name)
        if url is None:
            self._expected.pop(node.name, None)
            return
        _check_analysis_url(url)
        self._expected[node.name] = url.rstrip("/")

    def expected_analysis(self, name: str) -> str | None:
        """Where node ``name``'s analysis is expected to listen (:meth:`expect_analysis`), if anywhere."""
        return self._expected.get(self.node(name).name)

    def _attach_expected(self, node: SimNode) -> None:
        url = self._expected.get(node.name)
        if url is not None and node.name not in self._analysis_clients:
            self.attach_analysis(node.name, url)
            self.events.record("analysis.attach", node.name, url=url, deployment=node.deployment_name)

    def analysis_client(self, name: str) -> httpx.AsyncClient | None:
        return self._analysis_clients.get(name)

    def on_restart(self, listener: RestartListener) -> None:
        """Call ``listener(node, env)`` whenever a node is restarted."""
        self._restart_listeners.append(listener)

    def on_stop(self, listener: StopListener) -> None:
        """Call ``listener(node, reason)`` whenever a node's pod is stopped (not restarted)."""
        self._stop_listeners.append(listener)

    async def stop_node(self, name: str, reason: str) -> None:
        """Stop node ``name``'s pod, as the pod orchestrator stops a failed analysis: no new one starts.

        Its analysis API stops being reachable, and the stop listeners (the runners) end the running
        incarnation, under the node's :meth:`incarnation_lock`.
        """
        node = self.node(name)
        async with self._incarnation_locks[name]:
            self.attach_analysis(name, None)
            self.events.record("node.stop", name, deployment=node.deployment_name, reason=reason)
            for listener in list(self._stop_listeners):
                result = listener(node, reason)
                if asyncio.iscoroutine(result):
                    await result

    def incarnation_lock(self, name: str) -> asyncio.Lock:
        """Held while node ``name``'s pod is replaced: a runner that starts an incarnation takes it too."""
        return self._incarnation_locks[self.node(name).name]

    async def restart_node(self, name: str, reason: str = "requested") -> dict[str, str]:
        """Restart node ``name`` as the pod orchestrator does: new deployment, new token, memory lost.

        The old ``nginx-...`` host stops resolving; subscriptions the old pod made stay at the broker
        (as on FLAME) and their deliveries fail. The restart listeners (the runners) stop the old
        incarnation before they start the next, under the node's :meth:`incarnation_lock`, so
        restarts of one node never overlap. Returns the new environment.
        """
        node = self.node(name)
        async with self._incarnation_locks[name]:
            with node.lock:
                node.restart_counter += 1
                node.token = node.issuer.mint(self.analysis_id, self.settings.token_lifetime)
            self.attach_analysis(name, None)
            self.po.deployment_restarted(name)
            old_server = self._node_servers.pop(name, None)
            if old_server is not None:
                self._port_to_node.pop(old_server.port, None)
                self._serve_node(name)
                await old_server.aclose()
            self.events.record("node.restart", name, deployment=node.deployment_name, reason=reason)
            env = self.env(name)
            for listener in list(self._restart_listeners):
                result = listener(node, env)
                if asyncio.iscoroutine(result):
                    await result
            return env

    # -- clients ------------------------------------------------------------------------------------

    def client(self, name: str, **kwargs: Any) -> httpx.AsyncClient:
        """An in-process client inside node ``name``'s cluster; its base URL is the sidecar ``http://nginx-...``."""
        transport = SidecarTransport(self.app, self.resolver(name))
        return httpx.AsyncClient(transport=transport, base_url=f"http://{self.node(name).host}", **kwargs)

    def node_http(self, name: str) -> httpx.AsyncClient:
        """The client node ``name``'s own services use (broker deliveries, PO calls); cached per node."""
        client = self._node_http.get(name)
        if client is None:
            client = httpx.AsyncClient(
                transport=SidecarTransport(self.app, self.resolver(name)),
                timeout=self.settings.delivery_http_timeout(),
            )
            self._node_http[name] = client
        return client

    @property
    def http(self) -> httpx.AsyncClient | None:
        """The stack's client to the world outside (Kong's upstream data sources): None unless started.

        Made on first use: a client of its own loads the certificate store (~40 ms), which a run
        without upstream sources never needs.
        """
        if self._started_at is None:
            return None
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.settings.delivery_http_timeout(), verify=self.ssl_context()
            )
        return self._http

    def ssl_context(self) -> ssl.SSLContext:
        """One TLS context (httpx's default) for the clients of this stack and its nodes, made on first use."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> FlameStack:
        """Start the stack's background work (deliveries, pod orchestrator, timed faults)."""
        if self._started_at is not None:
            return self
        self._started_at = time.monotonic()
        self.events.record("stack.start", analysis_id=self.analysis_id, nodes=list(self.nodes))
        if self.settings.po_enabled:
            self._spawn(self.po.run())
        if self.faults.timed():
            self._spawn(self._run_timed_faults())
        return self

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the stack over HTTP on loopback (served mode); returns the main base URL.

        The main address serves ``/node/{name}/...`` and ``/_sim``; every node's sidecar gets a port of
        its own (:meth:`node_base_url`), as each FLAME node has its own ``nginx-...`` host. A restart
        moves the node to a new port and closes the old one, as the old pod's sidecar goes away.
        """
        await self.start()
        if self._server is not None:
            assert self.base_url is not None
            return self.base_url
        self._server = HTTPServer(self.app, host, port)
        self.base_url = self._server.url
        for name in self.nodes:
            self._serve_node(name)
        self.events.record("stack.serve", url=self.base_url)
        return self.base_url

    def _serve_node(self, name: str) -> None:
        server = HTTPServer(self.app, "127.0.0.1", 0)
        self._node_servers[name] = server
        self._node_ports[name] = server.port
        self._port_to_node[server.port] = name

    async def aclose(self) -> None:
        """Stop everything the stack started, and remove its temporary storage folder."""
        servers = [*self._node_servers.values(), *([self._server] if self._server is not None else [])]
        await asyncio.gather(*(server.aclose() for server in servers))
        self._node_servers.clear()
        self._server = None
        self.base_url = None
        self.po.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.aclose()
        for client in [*self._analysis_clients.values(), *self._node_http.values()]:
            await client.aclose()
        self._analysis_clients.clear()
        self._node_http.clear()
        self._node_ports.clear()
        self._port_to_node.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._owns_backend:
            await self.storage_backend.aclose()
        if self._tmpdir is not None:
            # a worker thread: thousands of files of a large federation (and a busy disk) take seconds,
            # during which the event loop keeps serving whatever else shares it
            tmpdir, self._tmpdir = self._tmpdir, None
            await asyncio.to_thread(shutil.rmtree, tmpdir, ignore_errors=True)
        self._started_at = None

    async def __aenter__(self) -> FlameStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_timed_faults(self) -> None:
        for rule in self.faults.timed():
            delay = rule.at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if isinstance(rule, TokenExpiry):
                count = self.node(rule.node).issuer.expire_all()
                self.events.record("fault.token_expiry", rule.node, tokens=count)
            elif isinstance(rule, NodeRestart):
                record = self.po.record(rule.node)
                if record.incarnation and not record.running and record.status in FINAL_STATUSES:
                    # as on FLAME: a pod that ended its analysis is not restarted (a new one would
                    # resume and wait for an aggregator that has finished too)
                    self.events.record("fault.restart.skipped", rule.node, status=record.status)
                    continue
                self.events.record("fault.restart", rule.node)
                await self.restart_node(rule.node, reason="fault")

    # -- final results -------------------------------------------------------------------------------

    async def final_results(self, analysis_id: str | None = None) -> dict[str, bytes]:
        """The final results submitted for an analysis (this one by default): filename -> bytes."""
        return await storage.read_final_results(self, analysis_id or self.analysis_id)


class StackApp:
    """The ASGI app that routes like each node's sidecar nginx (see the module docstring)."""

    def __init__(self, stack: FlameStack) -> None:
        self.stack = stack
        self._allowed = {
            service: re.compile(
                pattern.replace("{a}", re.escape(stack.analysis_id)).replace(
                    "{p}", re.escape(stack.project_id)
                )
            )
            for service, pattern in _ALLOWED.items()
        }
        analysis = f"/analyses/{stack.analysis_id}"
        messages = analysis + "/messages"
        #: (service, method, path) -> its plain handler (see flame.sim.asgi), for every request a run
        #: makes: the services' FastAPI apps are built (and FastAPI imported) only for the rest
        self._fast: dict[tuple[str, str, str], FastHandler] = {
            ("message-broker", "POST", messages): broker.fast_send,
            ("message-broker", "POST", messages + "/broadcast"): broker.fast_send,
            ("message-broker", "GET", analysis + "/participants"): broker.fast_setup,
            ("message-broker", "GET", analysis + "/participants/self"): broker.fast_setup,
            ("message-broker", "POST", messages + "/subscriptions"): broker.fast_setup,
            ("storage", "PUT", "/local"): storage.fast_put_local,
            ("storage", "PUT", "/local/"): storage.fast_put_local,
            ("storage", "PUT", "/final"): storage.fast_put_final,
            ("storage", "PUT", "/final/"): storage.fast_put_final,
            ("storage", "GET", "/local/tags"): storage.fast_get_tags,
            ("hub-adapter", "GET", f"/kong/datastore/{stack.project_id}"): data.fast_data_stores,
            ("po", "POST", "/stream_logs"): po.fast_stream_logs,
        }
        #: paths with an id at the end: (service, method, path up to the id) -> its plain handler
        self._fast_by_parent: dict[tuple[str, str, str], FastHandler] = {
            ("message-broker", "DELETE", messages + "/subscriptions"): broker.fast_setup,
            ("storage", "GET", "/local/tags"): storage.fast_get_tagged,
        }
        #: services answered by a plain handler whatever the path
        self._fast_by_service: dict[str, FastHandler] = {"kong": data.fast_kong}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        stack = self.stack
        host = _header(scope, b"host").split(":")[0]
        path: str = scope["path"]
        if path == "/_sim" or path.startswith("/_sim/"):
            await stack.admin_app(scope, receive, send)
            return
        name: str | None = scope.get("flame.via")
        if name is None and scope.get("server"):
            name = stack._port_to_node.get(scope["server"][1])
        if name is None and path.startswith("/node/"):
            name, _, rest = path[len("/node/") :].partition("/")
            if name not in stack.nodes:
                await _plain(scope, receive, send, 404, f"no node {name!r} in this stack")
                return
            path = "/" + rest
        if name is None:
            await _plain(scope, receive, send, 404, "address a node: its own port, or /node/{name}/...")
            return
        node = stack.nodes[name]
        if host.startswith("nginx-") and host != node.host:
            await _plain(scope, receive, send, 502, f"no pod answers for {host} on {name}")
            return
        faults = stack.faults
        if faults.rules and faults.offline(node.name, stack.now()):
            await _plain(scope, receive, send, 502, f"the pod of {node.name} is offline")
            return
        if path == "/healthz":
            await _plain(scope, receive, send, 200, "healthy")
            return
        service, tail = _split_service(path)
        if service is None or not self._allowed[service].match(tail):
            await _plain(scope, receive, send, 404, "not routed by the sidecar")
            return
        status = faults.outage(service, node.name, stack.now()) if faults.rules else None
        if status is not None:
            stack.events.record("fault.outage", node.name, service=service, status=status, path=tail)
            await _plain(scope, receive, send, status, "service unavailable (injected)")
            return
        if service != "analysis":
            stack._attach_expected(node)
        inner = dict(scope)
        inner["path"] = tail
        inner["raw_path"] = tail.encode()
        inner["root_path"] = ""
        inner["flame.node"] = node
        inner["flame.stack"] = stack
        if service == "analysis":
            await _forward_to_analysis(stack, node, inner, receive, send)
            return
        fast = self._fast.get((service, scope["method"], tail))
        if fast is None:
            fast = self._fast_by_parent.get((service, scope["method"], tail.rpartition("/")[0]))
        if fast is None:
            fast = self._fast_by_service.get(service)
        if fast is not None:
            await fast(FastCall(stack, node, inner, receive, send, lambda: stack.service_apps[service]))
        else:
            await stack.service_apps[service](inner, receive, send)


def _split_service(path: str) -> tuple[str | None, str]:
    for prefix, service in (
        ("/message-broker", "message-broker"),
        ("/storage", "storage"),
        ("/hub-adapter", "hub-adapter"),
        ("/kong", "kong"),
        ("/po", "po"),
        ("/analysis", "analysis"),
    ):
        if path == prefix or path.startswith(prefix + "/"):
            return service, path[len(prefix) :] or "/"
    return None, path


async def _forward_to_analysis(
    stack: FlameStack, node: SimNode, scope: Scope, receive: Receive, send: Send
) -> None:
    client = stack.analysis_client(node.name)
    if client is None:
        await _plain(scope, receive, send, 502, "the analysis is not running")
        return
    target = node.analysis_target
    if target is not None and not isinstance(target, str):
        # an analysis API in this process: hand the request over as it is, no HTTP client in between
        await forward_asgi(target, scope, receive, send)
        return
    await forward_http(client, scope, receive, send)


async def _plain(scope: Scope, receive: Receive, send: Send, status: int, text: str) -> None:
    await PlainTextResponse(text, status_code=status)(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _check_analysis_url(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL such as http://127.0.0.1:8001")


class _LazyApps(dict[str, Any]):
    """Service name -> ASGI app, each made by its factory on first lookup."""

    def __init__(self, factories: dict[str, Callable[[], Any]]) -> None:
        super().__init__()
        self._factories = factories

    def __missing__(self, service: str) -> Any:
        app = self[service] = self._factories[service]()
        return app


def _create_admin_app(stack: FlameStack) -> Any:
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="flame emulated stack", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/_sim/nodes")
    async def nodes() -> list[dict[str, Any]]:
        return [
            {
                "name": n.name,
                "nodeId": n.node_id,
                "nodeType": n.role,
                "deployment": n.deployment_name,
                "host": n.host,
                "baseUrl": stack.node_base_url(n.name),
                "analysis": n.analysis_target if isinstance(n.analysis_target, str) else None,
                "expectedAnalysis": stack.expected_analysis(n.name),
            }
            for n in stack.nodes.values()
        ]

    @app.post("/_sim/nodes/{name}/attach")
    async def attach(name: str, request: Request) -> JSONResponse:
        """Attach the analysis API listening at ``{"url": ...}`` to node ``name`` now (and after restarts)."""
        if name not in stack.nodes:
            raise HTTPException(404, f"no node {name!r}; nodes: {', '.join(stack.nodes)}")
        try:
            body = await request.json()
        except ValueError:
            body = None
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise HTTPException(400, 'send {"url": "http://127.0.0.1:PORT"}: where the analysis API listens')
        try:
            stack.expect_analysis(name, url)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        stack.attach_analysis(name, stack.expected_analysis(name))
        stack.events.record("analysis.attach", name, url=url, deployment=stack.nodes[name].deployment_name)
        return JSONResponse({"name": name, "analysis": stack.expected_analysis(name)})

    @app.delete("/_sim/nodes/{name}/attach")
    async def detach(name: str) -> Response:
        """Detach node ``name``'s analysis: its sidecar answers 502 for it again."""
        if name not in stack.nodes:
            raise HTTPException(404, f"no node {name!r}; nodes: {', '.join(stack.nodes)}")
        stack.expect_analysis(name, None)
        stack.attach_analysis(name, None)
        stack.events.record("analysis.detach", name)
        return Response(status_code=204)

    @app.get("/_sim/keycloak/{name}" + JWKS_PATH)
    async def jwks(name: str) -> dict[str, Any]:
        if name not in stack.nodes:
            raise HTTPException(404, f"no node {name!r}")
        return stack.nodes[name].issuer.jwks()

    @app.get("/_sim/final/{analysis_id}")
    async def final_list(analysis_id: str) -> dict[str, Any]:
        results = await stack.final_results(analysis_id)
        return {
            "analysisId": analysis_id,
            "results": [{"filename": k, "size": len(v)} for k, v in results.items()],
        }

    @app.get("/_sim/final/{analysis_id}/{filename}")
    async def final_get(analysis_id: str, filename: str) -> Response:
        results = await stack.final_results(analysis_id)
        if filename not in results:
            raise HTTPException(404, f"no final result {filename!r}")
        return Response(results[filename], media_type="application/octet-stream")

    @app.get("/_sim/events")
    async def events(kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in stack.events.to_list() if kind is None or str(e["kind"]).startswith(kind)]

    @app.post("/_sim/nodes/{name}/restart")
    async def restart(name: str) -> JSONResponse:
        if name not in stack.nodes:
            raise HTTPException(404, f"no node {name!r}")
        env = await stack.restart_node(name)
        return JSONResponse({"deployment": env["DEPLOYMENT_NAME"]})

    return app

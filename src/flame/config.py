"""The node configuration: what an analysis container is given, and where the node's services are.

On a FLAME node the container gets exactly five environment variables:
``ANALYSIS_ID``, ``PROJECT_ID``, ``DEPLOYMENT_NAME``, ``KEYCLOAK_TOKEN`` and ``DATA_SOURCE_TOKEN``.
Every service sits behind the sidecar ``http://nginx-{DEPLOYMENT_NAME}`` under a path prefix.

For local runs (the emulated node stack, tests) these overrides are read as well; none of them
exists on a real node:

=========================== =====================================================================
``FLAME_BASE_URL``          one base URL for all services; the usual prefixes are appended
``FLAME_MESSAGE_BROKER_URL`` full URL of the broker (replaces ``{base}/message-broker``)
``FLAME_STORAGE_URL``       full URL of the storage service (``{base}/storage``)
``FLAME_HUB_ADAPTER_URL``   full URL of the hub adapter (``{base}/hub-adapter``)
``FLAME_KONG_URL``          full URL of the Kong data proxy (``{base}/kong``)
``FLAME_PO_URL``            full URL of the pod orchestrator (``{base}/po``)
``FLAME_HEALTHZ_URL``       the sidecar's health URL (``{base}/healthz``)
``FLAME_WEBHOOK_URL``       the URL the broker delivers to (``{base}/analysis/webhook``)
``FLAME_ANALYSIS_PORT``     port of the analysis REST API (default 8000)
``FLAME_ANALYSIS_HOST``     address it binds (default 0.0.0.0; 127.0.0.1 for local runs)
``FLAME_NODE_ID``           node id, for tests only (normally from ``participants/self``)
``FLAME_NODE_ROLE``         ``default`` or ``aggregator``, for tests only
``FLAME_JWKS_URL``          a JWKS URL to verify the token's signature against (optional)
``FLAME_DISCLOSURE_POLICY`` the node's disclosure policy file (JSON; see :mod:`flame.disclosure`)
=========================== =====================================================================
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from flame.errors import ConfigurationError

NodeRole = Literal["default", "aggregator"]

#: The literal a FLAME aggregator node gets as ``DATA_SOURCE_TOKEN``: it has no data access.
NO_DATA_ACCESS = "none_needed"

#: Path prefixes of the sidecar nginx, one per node service (as on a FLAME node).
PREFIXES: Mapping[str, str] = {
    "message_broker": "/message-broker",
    "storage": "/storage",
    "hub_adapter": "/hub-adapter",
    "kong": "/kong",
    "po": "/po",
    "healthz": "/healthz",
    "webhook": "/analysis/webhook",
}

_OVERRIDE_VARS: Mapping[str, str] = {
    "message_broker": "FLAME_MESSAGE_BROKER_URL",
    "storage": "FLAME_STORAGE_URL",
    "hub_adapter": "FLAME_HUB_ADAPTER_URL",
    "kong": "FLAME_KONG_URL",
    "po": "FLAME_PO_URL",
    "healthz": "FLAME_HEALTHZ_URL",
    "webhook": "FLAME_WEBHOOK_URL",
}

_DEPLOYMENT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,55}[a-z0-9])?$")
_RESTART_RE = re.compile(r"^analysis-(?P<analysis>.+)-(?P<counter>\d+)$")


@dataclass(frozen=True)
class ServiceURLs:
    """Base URLs of the node's services, without trailing slash."""

    message_broker: str
    storage: str
    hub_adapter: str
    kong: str
    po: str
    healthz: str
    webhook: str

    @classmethod
    def from_base(cls, base: str) -> ServiceURLs:
        """All services behind one base URL, with the sidecar's prefixes."""
        base = base.rstrip("/")
        return cls(**{name: base + prefix for name, prefix in PREFIXES.items()})


@dataclass(frozen=True)
class NodeConfig:
    """The immutable configuration of one analysis container.

    Tokens are held here only as given at start-up and never shown in ``repr``; the runtime keeps
    the current Keycloak token in a :class:`flame.tokens.TokenStore` because the pod orchestrator
    replaces it while the analysis runs.
    """

    analysis_id: str
    project_id: str
    deployment_name: str
    keycloak_token: str | None = field(repr=False)
    data_source_token: str | None = field(repr=False)
    urls: ServiceURLs
    analysis_port: int = 8000
    analysis_host: str = "0.0.0.0"
    node_id: str | None = None
    node_role: NodeRole | None = None
    jwks_url: str | None = None
    #: the node's disclosure policy file (``FLAME_DISCLOSURE_POLICY``), tightening the library defaults
    disclosure_policy: str | None = None

    @property
    def has_data_access(self) -> bool:
        """False on nodes given ``DATA_SOURCE_TOKEN=none_needed`` (aggregators)."""
        return self.data_source_token is not None

    @property
    def restart_counter(self) -> int | None:
        """The pod restart counter from ``DEPLOYMENT_NAME`` (``analysis-{id}-{n}``), if it has one."""
        match = _RESTART_RE.match(self.deployment_name)
        return int(match["counter"]) if match else None

    def with_overrides(self, **changes: object) -> NodeConfig:
        """A copy with some fields replaced (the original stays unchanged)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NodeConfig:
        """Read the configuration from the environment (``os.environ`` by default).

        Raises :class:`~flame.errors.ConfigurationError` naming the first missing or malformed
        variable and what a valid value looks like.
        """
        env = os.environ if environ is None else environ
        analysis_id = _uuid_var(env, "ANALYSIS_ID")
        project_id = _uuid_var(env, "PROJECT_ID")
        deployment = _required(env, "DEPLOYMENT_NAME", f"a host-name label such as analysis-{analysis_id}-0")
        if not _DEPLOYMENT_RE.match(deployment):
            raise ConfigurationError(
                "DEPLOYMENT_NAME",
                "is not a valid host-name label (lowercase letters, digits and '-', at most 57 characters)",
                f"a value such as analysis-{analysis_id}-0",
            )
        if "KEYCLOAK_TOKEN" not in env:
            raise ConfigurationError(
                "KEYCLOAK_TOKEN", "is not set", "the node Keycloak's JWT (it may be empty if minting failed)"
            )
        keycloak = env["KEYCLOAK_TOKEN"].strip() or None
        data_token = _required(
            env, "DATA_SOURCE_TOKEN", f"the Kong API key, or {NO_DATA_ACCESS!r} on aggregators"
        )
        return cls(
            analysis_id=analysis_id,
            project_id=project_id,
            deployment_name=deployment,
            keycloak_token=keycloak,
            data_source_token=None if data_token == NO_DATA_ACCESS else data_token,
            urls=_service_urls(env, deployment),
            analysis_port=_port(env, "FLAME_ANALYSIS_PORT", 8000),
            analysis_host=env.get("FLAME_ANALYSIS_HOST") or "0.0.0.0",
            node_id=env.get("FLAME_NODE_ID") or None,
            node_role=_role(env),
            jwks_url=_url(env, "FLAME_JWKS_URL") if env.get("FLAME_JWKS_URL") else None,
            disclosure_policy=(env.get("FLAME_DISCLOSURE_POLICY") or "").strip() or None,
        )


def _required(env: Mapping[str, str], name: str, expected: str) -> str:
    value = env.get(name)
    if value is None or not value.strip():
        raise ConfigurationError(name, "is not set" if value is None else "is empty", expected)
    return value.strip()


def _uuid_var(env: Mapping[str, str], name: str) -> str:
    value = _required(env, name, "a UUID such as 0b9a3a1c-6d3e-4e37-9d52-3c1f0d8f5e21")
    try:
        uuid.UUID(value)
    except ValueError:
        raise ConfigurationError(
            name, f"{value!r} is not a UUID", "a UUID such as 0b9a3a1c-6d3e-4e37-9d52-3c1f0d8f5e21"
        ) from None
    return value.lower()


def _url(env: Mapping[str, str], name: str) -> str:
    value = env[name].strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            name, f"{value!r} is not an absolute http(s) URL", "a URL such as http://127.0.0.1:8080"
        )
    return value.rstrip("/")


def _service_urls(env: Mapping[str, str], deployment: str) -> ServiceURLs:
    base = _url(env, "FLAME_BASE_URL") if env.get("FLAME_BASE_URL") else f"http://nginx-{deployment}"
    urls = ServiceURLs.from_base(base)
    overrides = {name: _url(env, var) for name, var in _OVERRIDE_VARS.items() if env.get(var)}
    return replace(urls, **overrides) if overrides else urls


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigurationError(name, f"{raw!r} is not a TCP port", "a whole number from 1 to 65535")
    return int(raw)


def _role(env: Mapping[str, str]) -> NodeRole | None:
    raw = env.get("FLAME_NODE_ROLE")
    if not raw:
        return None
    if raw not in ("default", "aggregator"):
        raise ConfigurationError(
            "FLAME_NODE_ROLE", f"{raw!r} is not a node role", "'default' or 'aggregator'"
        )
    return raw  # type: ignore[return-value]


__all__ = ["NO_DATA_ACCESS", "PREFIXES", "NodeConfig", "NodeRole", "ServiceURLs"]

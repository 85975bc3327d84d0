"""One emulated FLAME node taking part in the analysis: identity, deployment, credentials."""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from flame.sim.issuer import TokenIssuer

NodeType = Literal["default", "aggregator"]

#: Namespace of node ids: the same node name gets the same id in every analysis (as hub node ids do).
NODE_NAMESPACE = uuid.UUID("6c1d3f0e-52a4-4b8e-9a55-0f3c7f3e2a10")


@dataclass
class DataSource:
    """A data source of a node, as the hub adapter lists it and Kong serves it.

    ``kind`` is ``fhir`` or ``s3``. Either ``folder`` holds the data (``fhir/`` JSON Bundles or
    NDJSON, or any files for S3), or ``upstream`` is the URL of a real FHIR server base or S3 bucket
    that Kong proxies to.
    """

    name: str
    kind: Literal["fhir", "s3"]
    folder: Path | None = None
    upstream: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class NodeSpec:
    """What a node is made of: a name, a role, and its data."""

    name: str
    role: NodeType = "default"
    data_dir: Path | None = None
    sources: list[DataSource] = field(default_factory=list)


#: The Kong key of each (analysis, node): minted once per analysis, as the pod orchestrator keeps it for
#: every pod (restart) of the analysis; so a later stack of the same analysis id is its restarted pods.
_KONG_KEYS: dict[tuple[str, str], str] = {}
_KONG_KEYS_LOCK = threading.Lock()


def kong_key(analysis_id: str, node_name: str) -> str:
    """The ``DATA_SOURCE_TOKEN`` of ``node_name`` in ``analysis_id`` (random, the same for every pod)."""
    with _KONG_KEYS_LOCK:
        return _KONG_KEYS.setdefault((analysis_id, node_name), "kong-" + secrets.token_urlsafe(24))


class SimNode:
    """The live state of one node of the emulated stack."""

    def __init__(self, spec: NodeSpec, analysis_id: str, issuer: TokenIssuer) -> None:
        self.name = spec.name
        self.role: NodeType = spec.role
        self.node_id = str(uuid.uuid5(NODE_NAMESPACE, spec.name))
        self.analysis_id = analysis_id
        self.issuer = issuer
        self.data_key = kong_key(analysis_id, spec.name)
        self.sources: list[DataSource] = list(spec.sources)
        if spec.data_dir is not None:
            self.sources.extend(_sources_from_folder(spec.name, Path(spec.data_dir)))
        #: The storage service's static ECDH P-256 key pair (intermediate data encryption).
        self.storage_key = ec.generate_private_key(ec.SECP256R1())
        #: whether the hub has this node's public key (False: uploads for it answer 400)
        self.storage_public_key_published = True
        self.restart_counter = 0
        self.token = ""
        #: Where the analysis API of this node is: an ASGI app (in-process) or a base URL (served).
        self.analysis_target: Any = None
        #: webhook subscriptions: id -> {"subscriptionId", "analysisId", "webhookUrl"}
        self.subscriptions: dict[str, dict[str, str]] = {}
        self.offline_until = 0.0
        self.lock = threading.Lock()

    @property
    def deployment_name(self) -> str:
        """``analysis-{ANALYSIS_ID}-{restart_counter}``, as the pod orchestrator names the pod."""
        return f"analysis-{self.analysis_id}-{self.restart_counter}"

    @property
    def host(self) -> str:
        """The sidecar's host name: ``nginx-{DEPLOYMENT_NAME}``."""
        return f"nginx-{self.deployment_name}"

    @property
    def has_data(self) -> bool:
        return self.role == "default" or bool(self.sources)

    def participant(self) -> dict[str, str]:
        """This node as the broker lists it."""
        return {"nodeId": self.node_id, "nodeType": self.role}

    def __repr__(self) -> str:
        return f"SimNode(name={self.name!r}, node_id={self.node_id!r}, role={self.role!r})"


def _sources_from_folder(node: str, folder: Path) -> list[DataSource]:
    sources: list[DataSource] = []
    if (folder / "fhir").is_dir():
        sources.append(DataSource(name=f"{node}-fhir", kind="fhir", folder=folder / "fhir"))
    if (folder / "s3").is_dir():
        sources.append(DataSource(name=f"{node}-s3", kind="s3", folder=folder / "s3"))
    return sources

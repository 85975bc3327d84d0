"""Service clients: one class per node service, async, on one shared httpx connection pool."""

from flame.clients.base import RetryPolicy, ServiceClient, rebase
from flame.clients.data_api import DataAPI, DataSourceInfo, HubAdapterClient, KongClient
from flame.clients.message_broker import MessageBrokerClient, Participant
from flame.clients.po import PodOrchestratorClient
from flame.clients.storage import IntermediateRef, LocalRef, StorageClient, TaggedResult

__all__ = [
    "DataAPI",
    "DataSourceInfo",
    "HubAdapterClient",
    "IntermediateRef",
    "KongClient",
    "LocalRef",
    "MessageBrokerClient",
    "Participant",
    "PodOrchestratorClient",
    "RetryPolicy",
    "ServiceClient",
    "StorageClient",
    "TaggedResult",
    "rebase",
]

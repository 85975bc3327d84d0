"""Node configuration from the five environment variables a FLAME node gives the container."""

from __future__ import annotations

import dataclasses

import pytest

from flame.config import NodeConfig, ServiceURLs
from flame.errors import ConfigurationError, FlameError

ANALYSIS = "3f2c9d1e-8a4b-4c6d-9e0f-1a2b3c4d5e6f"
PROJECT = "0b9a3a1c-6d3e-4e37-9d52-3c1f0d8f5e21"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def env(**changes: str | None) -> dict[str, str]:
    base = {
        "ANALYSIS_ID": ANALYSIS,
        "PROJECT_ID": PROJECT,
        "DEPLOYMENT_NAME": f"analysis-{ANALYSIS}-2",
        "KEYCLOAK_TOKEN": TOKEN,
        "DATA_SOURCE_TOKEN": "kong-key-123456",
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def test_reads_the_five_variables_and_derives_sidecar_urls() -> None:
    config = NodeConfig.from_env(env())
    assert config.analysis_id == ANALYSIS
    assert config.project_id == PROJECT
    assert config.restart_counter == 2
    assert config.has_data_access
    base = f"http://nginx-analysis-{ANALYSIS}-2"
    assert config.urls == ServiceURLs(
        message_broker=f"{base}/message-broker",
        storage=f"{base}/storage",
        hub_adapter=f"{base}/hub-adapter",
        kong=f"{base}/kong",
        po=f"{base}/po",
        healthz=f"{base}/healthz",
        webhook=f"{base}/analysis/webhook",
    )
    assert config.node_id is None and config.node_role is None
    assert config.analysis_port == 8000


def test_is_immutable_and_repr_hides_tokens() -> None:
    config = NodeConfig.from_env(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.analysis_id = "x"  # type: ignore[misc]
    assert TOKEN not in repr(config) and "kong-key" not in repr(config)
    assert "eyJ" not in repr(config)


def test_none_needed_means_no_data_access() -> None:
    config = NodeConfig.from_env(env(DATA_SOURCE_TOKEN="none_needed"))
    assert not config.has_data_access and config.data_source_token is None


def test_empty_keycloak_token_is_allowed_as_none() -> None:
    assert NodeConfig.from_env(env(KEYCLOAK_TOKEN="")).keycloak_token is None


@pytest.mark.parametrize(
    ("changes", "variable", "fragment"),
    [
        ({"ANALYSIS_ID": None}, "ANALYSIS_ID", "is not set"),
        ({"ANALYSIS_ID": "  "}, "ANALYSIS_ID", "is empty"),
        ({"ANALYSIS_ID": "not-a-uuid"}, "ANALYSIS_ID", "is not a UUID"),
        ({"PROJECT_ID": "12"}, "PROJECT_ID", "is not a UUID"),
        ({"DEPLOYMENT_NAME": None}, "DEPLOYMENT_NAME", "is not set"),
        ({"DEPLOYMENT_NAME": "Analysis_Bad!"}, "DEPLOYMENT_NAME", "host-name label"),
        ({"KEYCLOAK_TOKEN": None}, "KEYCLOAK_TOKEN", "is not set"),
        ({"DATA_SOURCE_TOKEN": None}, "DATA_SOURCE_TOKEN", "is not set"),
        ({"FLAME_BASE_URL": "nginx-x"}, "FLAME_BASE_URL", "absolute http(s) URL"),
        ({"FLAME_STORAGE_URL": "ftp://x"}, "FLAME_STORAGE_URL", "absolute http(s) URL"),
        ({"FLAME_ANALYSIS_PORT": "eighty"}, "FLAME_ANALYSIS_PORT", "TCP port"),
        ({"FLAME_ANALYSIS_PORT": "70000"}, "FLAME_ANALYSIS_PORT", "TCP port"),
        ({"FLAME_NODE_ROLE": "boss"}, "FLAME_NODE_ROLE", "node role"),
    ],
)
def test_bad_variables_raise_naming_the_variable(
    changes: dict[str, str | None], variable: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        NodeConfig.from_env(env(**changes))
    assert info.value.variable == variable
    assert isinstance(info.value, FlameError)
    message = str(info.value)
    assert message.startswith(variable) and fragment in message and "Expected" in message


def test_one_base_url_for_all_services() -> None:
    config = NodeConfig.from_env(env(FLAME_BASE_URL="http://127.0.0.1:9000/node/x/"))
    assert config.urls.message_broker == "http://127.0.0.1:9000/node/x/message-broker"
    assert config.urls.webhook == "http://127.0.0.1:9000/node/x/analysis/webhook"


def test_per_service_overrides_win_over_the_base() -> None:
    config = NodeConfig.from_env(
        env(FLAME_BASE_URL="http://127.0.0.1:9000", FLAME_STORAGE_URL="http://127.0.0.1:9500/s/")
    )
    assert config.urls.storage == "http://127.0.0.1:9500/s"
    assert config.urls.kong == "http://127.0.0.1:9000/kong"


def test_test_overrides_for_node_id_and_role() -> None:
    config = NodeConfig.from_env(
        env(FLAME_NODE_ID="node-a", FLAME_NODE_ROLE="aggregator", FLAME_ANALYSIS_PORT="8123")
    )
    assert (config.node_id, config.node_role, config.analysis_port) == ("node-a", "aggregator", 8123)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    assert NodeConfig.from_env().analysis_id == ANALYSIS


def test_with_overrides_returns_a_copy() -> None:
    config = NodeConfig.from_env(env())
    other = config.with_overrides(node_id="n1")
    assert other.node_id == "n1" and config.node_id is None

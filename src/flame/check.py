"""``flame check``: this container's configuration and token, as a FLAME node gave them.

Production code next to the command line: it reads the container's environment and checks the Keycloak
token (against the node's JWKS when there is one); it never imports the emulated node stack.
"""

from __future__ import annotations

from rich.console import Console

from flame.config import NodeConfig
from flame.tokens import check_token


def check_environment(jwks_url: str | None = None, console: Console | None = None) -> int:
    """``flame check``: this container's configuration and token, as a FLAME node gave them."""
    console = console or Console()
    config = NodeConfig.from_env()
    console.print(
        f"analysis {config.analysis_id}, project {config.project_id}, deployment {config.deployment_name}"
    )
    console.print(f"message broker at {config.urls.message_broker}; data access: {config.has_data_access}")
    if config.keycloak_token is None:
        console.print(
            "[bold red]KEYCLOAK_TOKEN is empty[/]: the node could not mint a token; ask the node admin."
        )
        return 1
    claims = check_token(config.keycloak_token, config.analysis_id, jwks_url=jwks_url or config.jwks_url)
    verified = (
        "signature verified" if (jwks_url or config.jwks_url) else "signature not checked (no JWKS URL)"
    )
    console.print(f"token valid for {claims.seconds_remaining()} s more; {verified}")
    return 0


__all__ = ["check_environment"]

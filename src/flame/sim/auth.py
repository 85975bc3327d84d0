"""How the emulated services find their node and check the Bearer token, like the real ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request

from flame.sim.issuer import InvalidToken

if TYPE_CHECKING:
    from flame.sim.node import SimNode
    from flame.sim.stack import FlameStack


def current_node(request: Request) -> SimNode:
    """The node whose sidecar routed this request."""
    node: SimNode = request.scope["flame.node"]
    return node


def current_stack(request: Request) -> FlameStack:
    """The stack that serves this request."""
    stack: FlameStack = request.scope["flame.stack"]
    return stack


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def broker_claims(request: Request) -> dict[str, Any]:
    """The broker's check (a Spring OAuth2 resource server): any missing, bad or expired token is 401."""
    token = _bearer(request)
    if not token:
        raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"})
    try:
        return current_node(request).issuer.verify(token)
    except InvalidToken:
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


def service_claims(request: Request) -> dict[str, Any]:
    """The storage service's and hub adapter's check (FastAPI HTTPBearer).

    No header: 401 ``{"detail": "Not authenticated"}``; a bad, expired or claimless JWT: 403.
    """
    token = _bearer(request)
    if token is None:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    if not token:
        raise HTTPException(403, "Invalid authentication credentials")
    try:
        claims = current_node(request).issuer.verify(token)
    except InvalidToken as exc:
        raise HTTPException(403, f"Invalid token: {exc}") from None
    if not claims.get("client_id"):
        raise HTTPException(403, "Token has no client_id claim")
    return claims

"""How the emulated services find their node and check the Bearer token.

Every emulated service (message broker, storage service, hub adapter, pod orchestrator) checks two
things, in this order:

1. the token is a valid RS256 token of the node's Keycloak (signature, issuer, expiry, not revoked);
2. the token is bound to the analysis the request is for: its ``client_id`` claim (Keycloak's client
   of the analysis, whose id is the analysis id), and ``azp`` when present, must name the analysis
   whose sidecar carried the request. Otherwise the answer is 403 and nothing changes.

On FLAME the first check is each service's own; the second is done partly by the result service (it
acts on the buckets of the token's ``client_id``), and otherwise by the cluster: each analysis' sidecar
lets only its own pod in and only its own analysis' paths through. A process on this machine can
reach every node's sidecar, so the emulator checks the binding in every service: a token leaked from
one analysis opens nothing of another. The status codes follow each real service: the broker (a
Spring resource server) and the pod orchestrator answer 401 for a missing or invalid token, the
storage service and hub adapter (FastAPI ``HTTPBearer``) 401 without a header and 403 for a bad token.

The checks are coroutines, so FastAPI runs them on the event loop: as plain functions each request
handed them to a worker thread and back, which cost more than the check itself (the issuer caches
the tokens it verified, see :meth:`~flame.sim.issuer.TokenIssuer.verify`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

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


def analysis_mismatch(claims: dict[str, Any], analysis_id: str) -> str | None:
    """Why a token with ``claims`` is not bound to ``analysis_id`` (None when it is)."""
    client_id = claims.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        return "the token has no client_id claim (the analysis it was issued for)"
    if client_id != analysis_id:
        return f"the token was issued for analysis {client_id}, not for analysis {analysis_id}"
    azp = claims.get("azp")
    if azp is not None and azp != analysis_id:
        return f"the token's authorised party is {azp}, not analysis {analysis_id}"
    return None


def require_analysis(claims: dict[str, Any], analysis_id: str) -> None:
    """403 unless the token of ``claims`` is bound to ``analysis_id``."""
    reason = analysis_mismatch(claims, analysis_id)
    if reason is not None:
        raise HTTPException(403, f"Forbidden: {reason}")


async def broker_claims(request: Request) -> dict[str, Any]:
    """The broker's check (a Spring OAuth2 resource server): any missing, bad or expired token is 401.

    A valid token of another analysis is 403.
    """
    token = _bearer(request)
    if not token:
        raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"})
    node = current_node(request)
    try:
        claims = node.issuer.verify(token)
    except InvalidToken:
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    reason = analysis_mismatch(claims, node.analysis_id)
    if reason is not None:
        # Spring Security's access-denied answer for a bearer token: no body, the reason in the header
        challenge = f'Bearer error="insufficient_scope", error_description="{reason}"'
        raise HTTPException(403, headers={"WWW-Authenticate": challenge})
    return claims


async def service_claims(request: Request) -> dict[str, Any]:
    """The storage service's and hub adapter's check (FastAPI HTTPBearer).

    No header: 401 ``{"detail": "Not authenticated"}``; a bad, expired or claimless JWT, or one of
    another analysis: 403.
    """
    token = _bearer(request)
    if token is None:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    if not token:
        raise HTTPException(403, "Invalid authentication credentials")
    node = current_node(request)
    try:
        claims = node.issuer.verify(token)
    except InvalidToken as exc:
        raise HTTPException(403, f"Invalid token: {exc}") from None
    require_analysis(claims, node.analysis_id)
    return claims


async def po_claims(request: Request) -> dict[str, Any]:
    """The pod orchestrator's check (FastAPI OAuth2 bearer): missing or invalid token 401, another analysis 403."""
    token = _bearer(request)
    if not token:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    node = current_node(request)
    try:
        claims = node.issuer.verify(token)
    except InvalidToken:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"}) from None
    require_analysis(claims, node.analysis_id)
    return claims

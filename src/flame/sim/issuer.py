"""An RS256 token issuer with Keycloak-like claims, and the checks the node services apply."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

#: Where a Keycloak realm serves its key set (relative to the Keycloak base URL).
JWKS_PATH = "/realms/flame/protocol/openid-connect/certs"
#: Verified tokens an issuer remembers (a node sees one per analysis and refresh).
VERIFIED_CACHE_SIZE = 4096


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired or revoked (the message never shows it)."""


class TokenIssuer:
    """Mints the node Keycloak's client-credentials tokens for analyses and verifies them.

    One issuer stands for one node's Keycloak (realm ``flame``): tokens of another node's issuer do
    not verify here. ``expire_all()`` makes every token minted so far count as expired, which is how the
    fault injector expires tokens early.
    """

    def __init__(
        self,
        base_url: str,
        *,
        key_size: int = 2048,
        clock: Callable[[], float] = time.time,
        private_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.issuer = base_url.rstrip("/") + "/realms/flame"
        self._clock = clock
        self._key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        self.kid = uuid.uuid4().hex
        self._minted: set[str] = set()
        self._revoked: set[str] = set()
        self._lock = threading.Lock()
        #: tokens verified before -> their claims: checking a signature again on every request of
        #: every service cost more than the rest of the check
        self._verified: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"TokenIssuer(issuer={self.issuer!r}, kid={self.kid!r})"

    def mint(self, client_id: str, lifetime: float = 1800.0, *, issued_at: float | None = None) -> str:
        """A token for the analysis ``client_id``, valid ``lifetime`` seconds from ``issued_at``."""
        iat = int(self._clock() if issued_at is None else issued_at)
        claims: dict[str, Any] = {
            "exp": iat + int(lifetime),
            "iat": iat,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": "account",
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, self.issuer + "/" + client_id)),
            "typ": "Bearer",
            "azp": client_id,
            "client_id": client_id,
            "scope": "profile email",
            "sid": secrets.token_hex(8),
        }
        with self._lock:
            self._minted.add(claims["jti"])
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        """The public key set, as Keycloak serves it."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def expire_all(self) -> int:
        """Treat every token minted so far as expired (fault injection); returns how many."""
        with self._lock:
            self._revoked |= self._minted
            return len(self._minted)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; :class:`InvalidToken` otherwise.

        A token verified before is not verified again: its claims are remembered (up to
        :data:`VERIFIED_CACHE_SIZE` tokens), and only its expiry and revocation are checked anew.
        """
        known = self._verified.get(token)
        if known is not None:
            if known["exp"] <= time.time():  # as PyJWT judges expiry (no leeway)
                self._verified.pop(token, None)
                raise InvalidToken("token expired")
            claims = dict(known)
        else:
            try:
                header = jwt.get_unverified_header(token)
                if header.get("kid") != self.kid:
                    raise InvalidToken("unknown key id")
                claims = jwt.decode(
                    token,
                    self._key.public_key(),
                    algorithms=["RS256"],
                    options={"verify_aud": False, "require": ["exp", "iat", "iss"]},
                    issuer=self.issuer,
                )
            except jwt.ExpiredSignatureError:
                raise InvalidToken("token expired") from None
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"invalid token ({type(exc).__name__})") from None
            if isinstance(claims.get("exp"), int | float):
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    self._verified.clear()
                self._verified[token] = dict(claims)
        with self._lock:
            revoked = claims.get("jti") in self._revoked
        if revoked:
            raise InvalidToken("token expired")
        return claims

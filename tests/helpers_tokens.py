"""Test helpers for tokens: RS256 keys, minting JWTs like the node Keycloak, and a real JWKS HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

JWKS_PATH = "/realms/flame/protocol/openid-connect/certs"
ISSUER = "http://keycloak.test/realms/flame"


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK of ``key`` as Keycloak publishes it (``use: sig``, ``alg: RS256``)."""
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return jwk


def claims_for(
    analysis_id: str, *, lifetime: float = 300, now: float | None = None, **extra: Any
) -> dict[str, Any]:
    """Claims like the node Keycloak's for client ``analysis_id``."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "exp": int(issued + lifetime),
        "iat": issued,
        "jti": "6c1f4e2a-0000-4000-8000-000000000001",
        "iss": ISSUER,
        "aud": "account",
        "sub": "service-account-" + analysis_id,
        "typ": "Bearer",
        "azp": analysis_id,
        "client_id": analysis_id,
        "scope": "profile email",
    }
    claims.update(extra)
    return claims


def mint(key: rsa.RSAPrivateKey, kid: str | None, claims: Mapping[str, Any]) -> str:
    """An RS256 JWT of ``claims`` signed with ``key``, naming ``kid`` in its header."""
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(dict(claims), key, algorithm="RS256", headers=headers)


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled by hand (for ``alg: none`` and other forgeries)."""
    head = b64url(json.dumps(dict(header), separators=(",", ":")).encode())
    body = b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    return f"{head}.{body}.{b64url(signature)}"


def hs256_confusion_token(public_pem: bytes, kid: str, claims: Mapping[str, Any]) -> str:
    """An HS256 JWT whose HMAC secret is the RSA public key's PEM (the classic algorithm-confusion attack)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(signature)}"


def segments(token: str) -> list[str]:
    """The non-empty dot-separated segments of ``token``."""
    return [part for part in token.split(".") if part]


class JWKSServer:
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving a JWKS at Keycloak's path.

    ``requests`` counts GETs of the JWKS path; ``status`` (default 200) lets a test make it fail.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jwks: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != JWKS_PATH:
                    self._answer(404, b'{"error":"not found"}')
                    return
                with server._lock:
                    server.requests += 1
                    status = server.status
                    body = json.dumps(server._jwks).encode()
                self._answer(status, body if status == 200 else b'{"error":"unavailable"}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="jwks-server", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        """The JWKS URL."""
        return self.base_url + JWKS_PATH

    def set_keys(self, *jwks: Mapping[str, Any]) -> None:
        """Publish these JWKs (replacing the previous ones)."""
        with self._lock:
            self._jwks = {"keys": [dict(j) for j in jwks]}

    def reset_count(self) -> None:
        with self._lock:
            self.requests = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@contextmanager
def running_jwks_server() -> Iterator[JWKSServer]:
    """A started :class:`JWKSServer`, shut down and joined on exit."""
    server = JWKSServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()

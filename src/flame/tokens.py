"""Reading, decoding and checking the node's tokens.

``KEYCLOAK_TOKEN`` is an RS256 JWT from the node's Keycloak (realm ``flame``) whose ``client_id``/``azp``
is the analysis id. Its payload is decoded as **Base64url** (not standard Base64). The pod orchestrator
pushes a new one before it expires; :class:`TokenStore` holds the current one and tells listeners when it
changes. ``DATA_SOURCE_TOKEN`` is an opaque Kong key, ``none_needed`` on aggregator nodes.

No token, nor any part of one, ever appears in a repr, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx

from flame._lazy import on_first_use
from flame.errors import (
    ConfigurationError,
    ServiceError,
    ServiceUnavailableError,
    TokenAudienceError,
    TokenError,
    TokenExpiredError,
    TokenMalformedError,
    TokenSignatureError,
)
from flame.redact import redact
from flame.waits import bounded

if TYPE_CHECKING:
    import jwt
else:  # PyJWT with cryptography (~30 ms) loads when a token is first checked
    jwt = on_first_use("jwt", globals(), "jwt")

log = logging.getLogger(__name__)

KEYCLOAK_TOKEN = "KEYCLOAK_TOKEN"
DATA_SOURCE_TOKEN = "DATA_SOURCE_TOKEN"
NONE_NEEDED = "none_needed"
"""The ``DATA_SOURCE_TOKEN`` value meaning "this node has no data access" (aggregators)."""

ALGORITHM = "RS256"
"""The only signature algorithm accepted."""

DEFAULT_LEEWAY = 30.0
"""Clock-skew allowance in seconds for ``exp``."""

DEFAULT_JWKS_TIMEOUT = 5.0
DEFAULT_MIN_REFETCH_INTERVAL = 10.0
DEFAULT_JWKS_MAX_AGE = 3600.0
JWKS_PATH = "/realms/flame/protocol/openid-connect/certs"
"""Where Keycloak publishes realm ``flame``'s key set, under its base URL."""

_B64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _safe(value: object, limit: int = 64) -> str:
    """A claim or header value fit for an error message: shortened, with anything token-shaped removed."""
    text = redact(str(value))
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- reading --------------------------------------------------------------------------------------------


def _read(name: str, environ: Mapping[str, str] | None, file: str | os.PathLike[str] | None) -> str | None:
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                name,
                f"the token file {os.fspath(file)!r} cannot be read ({type(exc).__name__})",
                "a readable UTF-8 file holding the token",
            ) from None
    else:
        env = os.environ if environ is None else environ
        text = env.get(name, "")
    text = text.strip()
    return text or None


def read_token(
    name: str = KEYCLOAK_TOKEN,
    *,
    environ: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> str | None:
    """Read a token from the environment variable ``name`` (or from ``file`` when given).

    Surrounding whitespace is dropped; an unset or empty value gives ``None``. A file that cannot be read
    raises :class:`ConfigurationError`. The token is not checked: see :func:`check_token`.
    """
    return _read(name, environ, file)


def read_data_source_token(
    name: str = DATA_SOURCE_TOKEN,
    *,
    environ: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> str | None:
    """Read the Kong key for data access; ``None`` when unset, empty or ``none_needed`` (no data access)."""
    value = _read(name, environ, file)
    if value is None or value == NONE_NEEDED:
        return None
    return value


# --- decoding -------------------------------------------------------------------------------------------


def _b64url_decode(segment: str, what: str, token_name: str) -> bytes:
    if not segment or _B64URL_SEGMENT.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise TokenMalformedError(f"the JWT {what} is not Base64url", token_name=token_name)
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenMalformedError(f"the JWT {what} is not Base64url", token_name=token_name) from None


def _decode_json_segment(segment: str, what: str, token_name: str) -> dict[str, Any]:
    raw = _b64url_decode(segment, what, token_name)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TokenMalformedError(f"the JWT {what} is not JSON", token_name=token_name) from None
    if not isinstance(value, dict):
        raise TokenMalformedError(f"the JWT {what} is not a JSON object", token_name=token_name)
    return value


def _split(token: str | None, token_name: str) -> tuple[str, str, str]:
    if token is None or not isinstance(token, str) or not token.strip():
        raise TokenMalformedError(
            "no token (the variable is empty: the node could not mint one)", token_name=token_name
        )
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise TokenMalformedError(
            f"not a JWT: expected 3 dot-separated parts, found {len(parts)}", token_name=token_name
        )
    return parts[0], parts[1], parts[2]


def decode_header(token: str, *, token_name: str = KEYCLOAK_TOKEN) -> dict[str, Any]:
    """Decode a JWT's header (Base64url JSON object) without verifying anything."""
    header, _, _ = _split(token, token_name)
    return _decode_json_segment(header, "header", token_name)


def decode_payload(token: str, *, token_name: str = KEYCLOAK_TOKEN) -> dict[str, Any]:
    """Decode a JWT's payload (Base64url, padding restored) WITHOUT verifying the signature.

    Raises :class:`TokenMalformedError` unless ``token`` has 3 dot-separated parts and its payload is a
    Base64url-encoded JSON object.
    """
    _, payload, _ = _split(token, token_name)
    return _decode_json_segment(payload, "payload", token_name)


# --- claims ---------------------------------------------------------------------------------------------


def _number(claims: Mapping[str, Any], name: str, token_name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenMalformedError(f"the {name!r} claim is not a number", token_name=token_name)
    try:
        finite = math.isfinite(value)  # an int beyond float's range (10**400) raises OverflowError
    except OverflowError:
        finite = False
    if not finite:
        raise TokenMalformedError(f"the {name!r} claim is not a finite number", token_name=token_name)
    return value


def _string(claims: Mapping[str, Any], name: str, token_name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenMalformedError(f"the {name!r} claim is not a string", token_name=token_name)
    return value


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a Keycloak token that the SDK uses; ``raw`` holds all of them (not in the repr)."""

    exp: float | None
    iat: float | None
    iss: str | None
    client_id: str | None
    azp: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def analysis_id(self) -> str | None:
        """The analysis the token was issued for: ``client_id``, else ``azp``."""
        return self.client_id or self.azp

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], *, token_name: str = KEYCLOAK_TOKEN) -> TokenClaims:
        """Build from a decoded payload; :class:`TokenMalformedError` if a known claim has the wrong type."""
        return cls(
            exp=_number(payload, "exp", token_name),
            iat=_number(payload, "iat", token_name),
            iss=_string(payload, "iss", token_name),
            client_id=_string(payload, "client_id", token_name),
            azp=_string(payload, "azp", token_name),
            raw=MappingProxyType(dict(payload)),
        )

    @classmethod
    def from_token(cls, token: str, *, token_name: str = KEYCLOAK_TOKEN) -> TokenClaims:
        """Decode ``token``'s payload (unverified) into claims."""
        return cls.from_payload(decode_payload(token, token_name=token_name), token_name=token_name)

    def seconds_remaining(self, now: float | None = None) -> int:
        """Whole seconds until ``exp`` (floor; negative once expired). Malformed if there is no ``exp``."""
        if self.exp is None:
            raise TokenMalformedError("the token has no 'exp' claim")
        current = time.time() if now is None else now
        return math.floor(self.exp - current)


def seconds_remaining(token: str, now: float | None = None) -> int:
    """Whole seconds until the token's ``exp`` (floor of ``exp - now``; negative once expired).

    This is the ``token_remaining_time`` of ``/healthz``. Raises :class:`TokenMalformedError` for a token
    that does not decode or has no ``exp``.
    """
    return TokenClaims.from_token(token).seconds_remaining(now)


# --- the key set ----------------------------------------------------------------------------------------


def _service_request(url: str) -> str:
    return f"GET {httpx.URL(url).path or '/'}"


class JWKSCache:
    """A thread-safe cache of the RS256 signing keys published at a JWKS URL, by key id (``kid``).

    The key set is fetched with httpx on first use, again when it is older than ``max_age`` seconds, and
    again when a token names a ``kid`` it does not hold, but at most once per ``min_refetch_interval``
    seconds (so tokens with made-up key ids cannot make it hammer Keycloak). Keys that are not RSA
    signing keys (``use: enc``, other ``kty``/``alg``) are ignored.

    Fetch failures raise :class:`ServiceUnavailableError` (no answer, timeout, 5xx or 429) or
    :class:`ServiceError` (another error status, or a body that is not a key set with RSA keys).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_JWKS_TIMEOUT,
        min_refetch_interval: float = DEFAULT_MIN_REFETCH_INTERVAL,
        max_age: float | None = DEFAULT_JWKS_MAX_AGE,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._min_refetch_interval = min_refetch_interval
        self._max_age = max_age
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._unnamed: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None
        self._fetch_count = 0

    @property
    def url(self) -> str:
        """The JWKS URL."""
        return self._url

    @property
    def fetch_count(self) -> int:
        """How many fetches were attempted so far."""
        return self._fetch_count

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently held."""
        with self._lock:
            return frozenset(self._keys)

    def refresh(self) -> None:
        """Fetch the key set now, replacing the cached keys (raises :class:`ServiceError` on failure)."""
        with self._lock:
            self._fetch_locked()

    def get_key(self, kid: str | None, *, token_name: str = KEYCLOAK_TOKEN) -> jwt.PyJWK:
        """The signing key with id ``kid``, fetching or refetching the key set as needed.

        A token without ``kid`` is accepted only when the key set holds exactly one key. Raises
        :class:`TokenSignatureError` when no such key is published (after at most one refetch) and
        :class:`ServiceError` / :class:`ServiceUnavailableError` when the key set cannot be fetched.
        """
        with self._lock:
            now = self._clock()
            if not self._keys and not self._unnamed:
                if not self._may_refetch_locked():
                    # the last fetch failed moments ago: the token may well be fine, so not a TokenError
                    raise ServiceUnavailableError(
                        "keycloak",
                        _service_request(self._url),
                        None,
                        "no key set yet (the last fetch failed); try again shortly",
                    )
                self._fetch_locked()
            elif (
                self._max_age is not None
                and self._fetched_at is not None
                and now - self._fetched_at > self._max_age
            ):
                try:
                    self._fetch_locked()
                except ServiceError as exc:
                    log.warning("cannot refresh the key set (%s); keeping the cached keys", exc)
            key = self._lookup_locked(kid)
            if key is None and self._may_refetch_locked():
                log.info("token key id not in the cached key set; fetching the key set again")
                self._fetch_locked()
                key = self._lookup_locked(kid)
            if key is not None:
                return key
        if kid is None:
            raise TokenSignatureError(
                "the token names no key id (kid) and the key set holds more than one key",
                token_name=token_name,
            )
        raise TokenSignatureError(
            f"signed with key id {_safe(kid)}, which the node's Keycloak does not publish",
            token_name=token_name,
        )

    def _may_refetch_locked(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._min_refetch_interval

    def _lookup_locked(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        every = [*self._keys.values(), *self._unnamed]
        return every[0] if len(every) == 1 else None

    def _fetch_locked(self) -> None:
        self._fetch_count += 1
        # Count the attempt for the rate limit even if it fails, so an outage is not hammered either.
        self._fetched_at = self._clock()
        request = _service_request(self._url)
        try:
            if self._client is not None:
                response = self._client.get(self._url, timeout=self._timeout)
            else:
                response = httpx.get(self._url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                "keycloak",
                request,
                None,
                type(exc).__name__,
                hint="Check that the node's Keycloak is reachable",
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise ServiceUnavailableError("keycloak", request, response.status_code, "no key set")
        if response.status_code != 200:
            raise ServiceError(
                "keycloak", request, response.status_code, "no key set", hint="Check the JWKS URL"
            )
        try:
            document = response.json()
        except ValueError:
            raise ServiceError("keycloak", request, 200, "the answer is not JSON") from None
        keys, unnamed = self._parse(document)
        if not keys and not unnamed:
            raise ServiceError("keycloak", request, 200, "the key set holds no RS256 signing key")
        self._keys = keys
        self._unnamed = unnamed
        log.debug("fetched %d RS256 signing key(s) from the key set", len(keys) + len(unnamed))

    @staticmethod
    def _parse(document: object) -> tuple[dict[str, jwt.PyJWK], list[jwt.PyJWK]]:
        keys: dict[str, jwt.PyJWK] = {}
        unnamed: list[jwt.PyJWK] = []
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            return keys, unnamed
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA":
                continue
            if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
                continue
            try:
                key = jwt.PyJWK(entry, algorithm=ALGORITHM)
            except jwt.PyJWTError:
                continue
            kid = entry.get("kid")
            if isinstance(kid, str):
                keys[kid] = key
            else:
                unnamed.append(key)
        return keys, unnamed

    def __repr__(self) -> str:
        return f"JWKSCache(url={self._url!r}, keys={len(self._keys) + len(self._unnamed)})"


_shared_caches: dict[str, JWKSCache] = {}
_shared_lock = threading.Lock()


def shared_jwks_cache(url: str) -> JWKSCache:
    """The process-wide :class:`JWKSCache` for ``url`` (created with the defaults on first use)."""
    with _shared_lock:
        cache = _shared_caches.get(url)
        if cache is None:
            cache = _shared_caches[url] = JWKSCache(url)
        return cache


# --- checking -------------------------------------------------------------------------------------------


def _verify_signature(token: str, header: Mapping[str, Any], cache: JWKSCache, token_name: str) -> None:
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenMalformedError("the JWT header's 'kid' is not a string", token_name=token_name)
    key = cache.get_key(kid, token_name=token_name)
    # PyJWT's messages are not shown: none may ever quote a part of the token.
    try:
        jwt.PyJWS().decode_complete(token, key=key, algorithms=[ALGORITHM])
    except jwt.InvalidSignatureError:
        raise TokenSignatureError(
            "the signature does not verify against the node Keycloak's key set", token_name=token_name
        ) from None
    except jwt.DecodeError as exc:
        raise TokenMalformedError(
            f"the JWT cannot be decoded for verification ({type(exc).__name__})", token_name=token_name
        ) from None
    except jwt.PyJWTError as exc:
        raise TokenSignatureError(
            f"the signature cannot be verified ({type(exc).__name__})", token_name=token_name
        ) from None


def check_token(
    token: str | None,
    analysis_id: str,
    *,
    jwks_url: str | None = None,
    leeway: float = DEFAULT_LEEWAY,
    now: float | None = None,
    jwks_cache: JWKSCache | None = None,
    expected_issuer: str | None = None,
    token_name: str = KEYCLOAK_TOKEN,
) -> TokenClaims:
    """Check that ``token`` is usable by analysis ``analysis_id``; return its claims.

    In order: the token is a JWT with JSON header and payload (else :class:`TokenMalformedError`); its
    header names ``RS256`` (``none``, ``HS256`` and every other algorithm raise
    :class:`TokenSignatureError`); with ``jwks_url`` or ``jwks_cache``, its RS256 signature verifies
    against the key set (else :class:`TokenSignatureError`; the key set is cached per URL, see
    :class:`JWKSCache`); ``exp`` is present and not more than ``leeway`` seconds past
    (:class:`TokenExpiredError`); ``client_id`` or ``azp`` equals ``analysis_id``
    (:class:`TokenAudienceError`); with ``expected_issuer`` (for example ``"/realms/flame"``), ``iss``
    ends with it (:class:`TokenAudienceError`). ``aud`` is not checked (Keycloak sets ``"account"``).

    A key set that cannot be fetched raises :class:`ServiceUnavailableError` (unreachable, 5xx, 429) or
    :class:`ServiceError` (other status, unusable body): not a :class:`TokenError`, since the token may
    well be fine. Without a key set the signature is not verified (the node's services do that).
    """
    header_segment, payload_segment, _ = _split(token, token_name)
    header = _decode_json_segment(header_segment, "header", token_name)
    payload = _decode_json_segment(payload_segment, "payload", token_name)
    claims = TokenClaims.from_payload(payload, token_name=token_name)

    alg = header.get("alg")
    if alg != ALGORITHM:
        raise TokenSignatureError(
            f"signed with algorithm {_safe(alg)}; only {ALGORITHM} is accepted", token_name=token_name
        )

    if jwks_cache is not None and jwks_url is not None and jwks_cache.url != jwks_url:
        raise ValueError("jwks_url and jwks_cache.url differ; pass one of them")
    cache = jwks_cache if jwks_cache is not None else (shared_jwks_cache(jwks_url) if jwks_url else None)
    if cache is not None:
        assert token is not None  # _split accepted it
        _verify_signature(token.strip(), header, cache, token_name)

    if claims.exp is None:
        raise TokenMalformedError("the token has no 'exp' claim", token_name=token_name)
    current = time.time() if now is None else now
    overdue = current - claims.exp
    if overdue > leeway:
        raise TokenExpiredError(
            f"expired {overdue:.0f} s ago (clock-skew allowance {leeway:g} s); "
            "the pod orchestrator should push a new one via /token_refresh",
            expired_seconds_ago=overdue,
            token_name=token_name,
        )

    if claims.analysis_id is None:
        raise TokenAudienceError(
            "names no analysis (neither 'client_id' nor 'azp' is set)", token_name=token_name
        )
    if analysis_id not in (claims.client_id, claims.azp):
        raise TokenAudienceError(
            f"issued for analysis {_safe(claims.analysis_id)}, not for {_safe(analysis_id)}",
            token_name=token_name,
        )

    if expected_issuer is not None and (claims.iss is None or not claims.iss.endswith(expected_issuer)):
        raise TokenAudienceError(
            f"issued by {_safe(claims.iss)}, expected an issuer ending with {_safe(expected_issuer)}",
            token_name=token_name,
        )
    return claims


def test_token(
    token: str | None,
    analysis_id: str,
    *,
    jwks_url: str | None = None,
    leeway: float = DEFAULT_LEEWAY,
    now: float | None = None,
    jwks_cache: JWKSCache | None = None,
    expected_issuer: str | None = None,
    token_name: str = KEYCLOAK_TOKEN,
) -> bool:
    """Like :func:`check_token`, but ``False`` instead of a :class:`TokenError` (others still raise)."""
    try:
        check_token(
            token,
            analysis_id,
            jwks_url=jwks_url,
            leeway=leeway,
            now=now,
            jwks_cache=jwks_cache,
            expected_issuer=expected_issuer,
            token_name=token_name,
        )
    except TokenError as exc:
        log.debug("token check failed: %s", exc)
        return False
    return True


test_token.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


# --- the current token ----------------------------------------------------------------------------------

TokenListener = Callable[[TokenClaims], None]


_MAX_REFUSED_TOKENS = 64  # hashes of refused tokens a TokenStore remembers


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _older(new: TokenClaims, current: TokenClaims) -> bool:
    """Whether ``new`` was issued before ``current`` (by ``iat``, else by ``exp``)."""
    if new.iat is not None and current.iat is not None:
        return new.iat < current.iat
    return new.exp is not None and current.exp is not None and new.exp < current.exp


class TokenStore:
    """A thread-safe holder of the current Keycloak token, replaced when the pod orchestrator pushes one.

    :meth:`swap` replaces it atomically (after checking that it decodes; checking that the node may use
    it is the caller's job, see :func:`check_token`); listeners added with :meth:`add_listener` are then
    called with the new claims, outside the lock, in the order added. A listener that raises is logged
    and skipped. The repr shows the client id and remaining lifetime only.

    A service that refuses the current token (401) makes the client call :meth:`mark_rejected`: from
    then on :meth:`seconds_remaining` reports 0, so ``/healthz`` tells the pod orchestrator to push a
    new token, and :meth:`wait_for_change` wakes the requests waiting for it.
    """

    def __init__(self, token: str | None = None, *, token_name: str = KEYCLOAK_TOKEN) -> None:
        self._token_name = token_name
        self._lock = threading.Lock()
        self._listeners: list[TokenListener] = []
        self._token: str | None = None
        self._claims: TokenClaims | None = None
        self._rejected = False
        # hashes of tokens a service refused (newest last, bounded): pushing one again is refused
        self._refused: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._version = 0
        if token is not None and token.strip():
            self._claims = TokenClaims.from_token(token.strip(), token_name=token_name)
            self._token = token.strip()

    @classmethod
    def from_env(cls, name: str = KEYCLOAK_TOKEN, *, environ: Mapping[str, str] | None = None) -> TokenStore:
        """A store holding the token read by :func:`read_token` (may be empty)."""
        return cls(read_token(name, environ=environ), token_name=name)

    def get(self) -> str | None:
        """The current token, or ``None`` if there is none."""
        with self._lock:
            return self._token

    @property
    def claims(self) -> TokenClaims | None:
        """The current token's claims, or ``None``."""
        with self._lock:
            return self._claims

    def get_with_claims(self) -> tuple[str | None, TokenClaims | None]:
        """The current token and its claims, read together."""
        with self._lock:
            return self._token, self._claims

    def swap(self, new_token: str, *, newer_only: bool = False) -> None:
        """Replace the current token; :class:`TokenMalformedError` (old token kept) if it does not decode.

        A token a service refused before (:meth:`mark_rejected`) is refused with :class:`TokenError`.
        With ``newer_only``, so is one issued (``iat``; ``exp`` when either lacks it) before the current
        one, unless a service refused the current one: of two refreshes racing, the older token cannot
        win by finishing last. ``iat`` rather than ``exp``: a token the orchestrator pushes may live
        shorter than the one the pod started with, and is still the newer one.
        """
        token = new_token.strip() if isinstance(new_token, str) else new_token
        claims = TokenClaims.from_token(token, token_name=self._token_name)
        with self._lock:
            if _token_hash(token) in self._refused:
                raise TokenError(
                    "a node service already refused this token; push a new one", token_name=self._token_name
                )
            if (
                newer_only
                and self._claims is not None
                and not self._rejected
                and _older(claims, self._claims)
            ):
                raise TokenError(
                    "it was issued before the current token; the current one stays",
                    token_name=self._token_name,
                )
            self._token = token
            self._claims = claims
            self._rejected = False
            self._version += 1
            listeners = list(self._listeners)
        remaining = claims.seconds_remaining() if claims.exp is not None else None
        log.info("token replaced; it expires in %s s", remaining)
        for listener in listeners:
            try:
                listener(claims)
            except Exception as exc:
                # Format and redact the traceback here: the listener's message might quote the token.
                details = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                name = getattr(listener, "__qualname__", type(listener).__name__)
                log.error("token listener %s failed:\n%s", name, details)

    @property
    def version(self) -> int:
        """How many times the token was replaced; pass it to :meth:`wait_for_change`."""
        with self._lock:
            return self._version

    @property
    def rejected(self) -> bool:
        """Whether a service refused the current token (see :meth:`mark_rejected`)."""
        with self._lock:
            return self._rejected

    def mark_rejected(self, token: str) -> bool:
        """Record that a service refused ``token``; True if it is still the current one.

        A token replaced in the meantime is left alone: the refusal concerned the old one.
        """
        with self._lock:
            if self._token is None or token.strip() != self._token:
                return False
            first = not self._rejected
            self._rejected = True
            self._refused[_token_hash(self._token)] = None
            while len(self._refused) > _MAX_REFUSED_TOKENS:
                self._refused.popitem(last=False)
        if first:
            log.warning("a node service refused the current token; reporting it as expired until a new one")
        return True

    async def wait_for_change(self, version: int, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds) until the token is replaced after ``version``; True if it was."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake(_claims: TokenClaims) -> None:
            # swap() may run on another thread; the event belongs to this loop
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(changed.set)

        self.add_listener(wake)
        try:
            if self.version != version:
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await bounded(changed.wait(), timeout)
            return self.version != version
        finally:
            self.remove_listener(wake)

    def add_listener(self, listener: TokenListener) -> None:
        """Call ``listener(new_claims)`` after every :meth:`swap`."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: TokenListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def seconds_remaining(self, now: float | None = None) -> int | None:
        """Whole seconds until the current token's ``exp`` (negative once expired); ``None`` without one.

        At most 0 once a service refused the token (:meth:`mark_rejected`): it is as good as expired.
        """
        with self._lock:
            claims, rejected = self._claims, self._rejected
        if claims is None or claims.exp is None:
            return None
        remaining = claims.seconds_remaining(now)
        return min(remaining, 0) if rejected else remaining

    def __repr__(self) -> str:
        claims = self.claims
        if claims is None:
            return "TokenStore(empty)"
        remaining = self.seconds_remaining()
        expires = f"{remaining}s" if remaining is not None else "unknown"
        return f"TokenStore(client_id={_safe(claims.analysis_id)}, expires_in={expires})"


__all__ = [
    "ALGORITHM",
    "DATA_SOURCE_TOKEN",
    "DEFAULT_LEEWAY",
    "JWKS_PATH",
    "KEYCLOAK_TOKEN",
    "NONE_NEEDED",
    "JWKSCache",
    "TokenClaims",
    "TokenListener",
    "TokenStore",
    "check_token",
    "decode_header",
    "decode_payload",
    "read_data_source_token",
    "read_token",
    "seconds_remaining",
    "shared_jwks_cache",
    "test_token",
]

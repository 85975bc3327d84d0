"""Tests of flame.tokens and flame.redact with real RS256 JWTs and a real JWKS HTTP server."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

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
from flame.redact import (
    REDACTED,
    RedactTokensFilter,
    install_redaction,
    install_redaction_on_handler,
    redact,
    register_secret,
    uninstall_redaction,
    unregister_secret,
)
from flame.tokens import (
    JWKSCache,
    TokenClaims,
    TokenStore,
    check_token,
    decode_header,
    decode_payload,
    read_data_source_token,
    read_token,
    seconds_remaining,
)
from flame.tokens import test_token as token_is_usable
from tests.helpers_tokens import (
    ISSUER,
    JWKSServer,
    b64url,
    claims_for,
    hs256_confusion_token,
    mint,
    new_rsa_key,
    public_jwk,
    running_jwks_server,
    segments,
    unsigned_token,
)

ANALYSIS = "3f2b7c1e-9a4d-4e8f-b2c6-0d1e5a7f9b3c"
OTHER_ANALYSIS = "0a1b2c3d-0000-4000-8000-00000000beef"
KID = "main-kid"


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def rotated_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture
def server(key: rsa.RSAPrivateKey) -> Iterator[JWKSServer]:
    with running_jwks_server() as srv:
        srv.set_keys(public_jwk(key, KID))
        yield srv


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(server: JWKSServer, clock: FakeClock) -> JWKSCache:
    return JWKSCache(server.url, timeout=2.0, min_refetch_interval=10.0, clock=clock)


@pytest.fixture
def good_token(key: rsa.RSAPrivateKey) -> str:
    return mint(key, KID, claims_for(ANALYSIS))


@pytest.fixture
def redaction() -> Iterator[RedactTokensFilter]:
    flt = install_redaction()
    yield flt
    uninstall_redaction()


def assert_no_segment(text: str, *tokens: str) -> None:
    for token in tokens:
        for segment in segments(token):
            assert segment not in text


def full_text(exc: BaseException) -> str:
    """Everything a traceback printout of ``exc`` would show, plus its repr and args."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc) + repr(exc.args)


# --- reading --------------------------------------------------------------------------------------------


def test_read_token_from_environ(good_token: str) -> None:
    assert read_token(environ={"KEYCLOAK_TOKEN": f"  {good_token}\n"}) == good_token
    assert read_token(environ={"KEYCLOAK_TOKEN": ""}) is None
    assert read_token(environ={"KEYCLOAK_TOKEN": "   "}) is None
    assert read_token(environ={}) is None
    assert read_token("OTHER", environ={"OTHER": "abc"}) == "abc"


def test_read_token_from_os_environ(good_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYCLOAK_TOKEN", good_token)
    assert read_token() == good_token
    monkeypatch.setenv("KEYCLOAK_TOKEN", "")
    assert read_token() is None


def test_read_token_from_file(good_token: str, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(good_token + "\n")
    assert read_token(file=path) == good_token
    assert read_token(file=str(path)) == good_token
    (tmp_path / "empty").write_text("")
    assert read_token(file=tmp_path / "empty") is None
    with pytest.raises(ConfigurationError) as info:
        read_token(file=tmp_path / "missing")
    assert info.value.variable == "KEYCLOAK_TOKEN"


def test_read_data_source_token(tmp_path: Path) -> None:
    assert read_data_source_token(environ={"DATA_SOURCE_TOKEN": "none_needed"}) is None
    assert read_data_source_token(environ={"DATA_SOURCE_TOKEN": ""}) is None
    assert read_data_source_token(environ={}) is None
    assert (
        read_data_source_token(environ={"DATA_SOURCE_TOKEN": "kong-key-0123456789"}) == "kong-key-0123456789"
    )
    (tmp_path / "key").write_text("none_needed\n")
    assert read_data_source_token(file=tmp_path / "key") is None


# --- decoding -------------------------------------------------------------------------------------------


def test_decode_payload_and_header(key: rsa.RSAPrivateKey) -> None:
    claims = claims_for(ANALYSIS, now=1_700_000_000)
    token = mint(key, KID, claims)
    assert decode_payload(token) == claims
    assert decode_header(token)["alg"] == "RS256"
    assert decode_header(token)["kid"] == KID


def _token_with_url_alphabet(key: rsa.RSAPrivateKey) -> str:
    # '?' = 0x3F and '>' = 0x3E give the 6-bit groups 63 and 62: '_' and '-' in Base64url.
    for pad in range(12):
        token = mint(key, KID, claims_for(ANALYSIS, note="a" * pad + "??>>??>>~~~???>>>"))
        payload = token.split(".")[1]
        if "-" in payload and "_" in payload:
            return token
    raise AssertionError("could not construct a payload with '-' and '_'")


def test_decode_payload_base64url_alphabet(key: rsa.RSAPrivateKey) -> None:
    token = _token_with_url_alphabet(key)
    payload = token.split(".")[1]
    assert "-" in payload and "_" in payload
    decoded = decode_payload(token)
    assert decoded["note"].endswith("??>>??>>~~~???>>>")
    assert decoded["client_id"] == ANALYSIS
    # The standard alphabet fails on it (strictly) or garbles it (leniently): JWT segments are Base64url.
    padded = payload + "=" * (-len(payload) % 4)
    with pytest.raises(binascii.Error):
        base64.b64decode(padded, validate=True)
    try:
        garbled: Any = json.loads(base64.b64decode(padded))
    except ValueError:
        garbled = None
    assert garbled != decoded
    assert seconds_remaining(token, now=decoded["iat"]) == 300


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "not a token",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSUzI1NiJ9..sig",  # empty payload
        "eyJhbGciOiJSUzI1NiJ9.@@@@.sig",  # not base64url
        "eyJhbGciOiJSUzI1NiJ9.abcde.sig",  # impossible base64 length
        "eyJhbGciOiJSUzI1NiJ9." + b64url(b"not json") + ".sig",
        "eyJhbGciOiJSUzI1NiJ9." + b64url(b"[1, 2]") + ".sig",  # JSON, but not an object
        "eyJhbGciOiJSUzI1NiJ9." + b64url(b"\xff\xfe") + ".sig",  # not UTF-8
    ],
)
def test_decode_payload_rejects_malformed(bad: str) -> None:
    with pytest.raises(TokenMalformedError):
        decode_payload(bad)
    with pytest.raises(TokenMalformedError):
        check_token(bad, ANALYSIS)
    assert not token_is_usable(bad, ANALYSIS)


def test_check_token_none_is_malformed() -> None:
    with pytest.raises(TokenMalformedError, match="no token"):
        check_token(None, ANALYSIS)


def test_claims_and_seconds_remaining(key: rsa.RSAPrivateKey) -> None:
    token = mint(key, KID, claims_for(ANALYSIS, now=1_700_000_000, lifetime=600))
    claims = TokenClaims.from_token(token)
    assert claims.exp == 1_700_000_600
    assert claims.iat == 1_700_000_000
    assert claims.iss == ISSUER
    assert claims.analysis_id == ANALYSIS
    assert claims.raw["typ"] == "Bearer"
    assert "raw" not in repr(claims) and "Bearer" not in repr(claims)
    assert seconds_remaining(token, now=1_700_000_000) == 600
    assert seconds_remaining(token, now=1_700_000_000.4) == 599  # floor
    assert seconds_remaining(token, now=1_700_000_599.99) == 0
    assert seconds_remaining(token, now=1_700_000_700) == -100
    assert claims.seconds_remaining(now=1_700_000_500) == 100
    # Real clock: close to the lifetime.
    fresh = mint(key, KID, claims_for(ANALYSIS, lifetime=300))
    assert 298 <= seconds_remaining(fresh) <= 300


def test_analysis_id_falls_back_to_azp(key: rsa.RSAPrivateKey) -> None:
    claims = claims_for(ANALYSIS)
    del claims["client_id"]
    token = mint(key, KID, claims)
    assert TokenClaims.from_token(token).analysis_id == ANALYSIS
    assert check_token(token, ANALYSIS).azp == ANALYSIS


def test_seconds_remaining_without_exp(key: rsa.RSAPrivateKey) -> None:
    claims = claims_for(ANALYSIS)
    del claims["exp"]
    with pytest.raises(TokenMalformedError):
        seconds_remaining(mint(key, KID, claims))


def test_wrong_claim_types_are_malformed(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(TokenMalformedError):
        TokenClaims.from_token(mint(key, KID, claims_for(ANALYSIS, exp="tomorrow")))
    with pytest.raises(TokenMalformedError):
        TokenClaims.from_token(mint(key, KID, claims_for(ANALYSIS, client_id=42)))


# --- checking -------------------------------------------------------------------------------------------


def test_valid_token_passes(good_token: str, server: JWKSServer, cache: JWKSCache) -> None:
    claims = check_token(good_token, ANALYSIS, jwks_cache=cache)
    assert claims.analysis_id == ANALYSIS
    assert token_is_usable(good_token, ANALYSIS, jwks_cache=cache)
    assert check_token(good_token, ANALYSIS, jwks_url=server.url).client_id == ANALYSIS
    assert check_token(good_token, ANALYSIS, expected_issuer="/realms/flame").iss == ISSUER
    assert server.requests == 2  # one per cache: the cached key set is reused


def test_expired_token(key: rsa.RSAPrivateKey, cache: JWKSCache) -> None:
    now = time.time()
    token = mint(key, KID, claims_for(ANALYSIS, now=now - 400, lifetime=300))  # expired 100 s ago
    with pytest.raises(TokenExpiredError) as info:
        check_token(token, ANALYSIS, jwks_cache=cache, now=now)
    assert 99 <= info.value.expired_seconds_ago <= 101
    assert not token_is_usable(token, ANALYSIS, jwks_cache=cache, now=now)
    # Within the clock-skew allowance it still passes.
    assert check_token(token, ANALYSIS, now=now, leeway=120)
    recent = mint(key, KID, claims_for(ANALYSIS, now=now - 310, lifetime=300))  # 10 s over
    assert check_token(recent, ANALYSIS, jwks_cache=cache, now=now)
    with pytest.raises(TokenExpiredError):
        check_token(recent, ANALYSIS, now=now, leeway=0)


def test_token_for_another_analysis(key: rsa.RSAPrivateKey, cache: JWKSCache) -> None:
    token = mint(key, KID, claims_for(OTHER_ANALYSIS))
    with pytest.raises(TokenAudienceError) as info:
        check_token(token, ANALYSIS, jwks_cache=cache)
    assert OTHER_ANALYSIS in str(info.value) and ANALYSIS in str(info.value)
    assert not token_is_usable(token, ANALYSIS, jwks_cache=cache)
    anonymous = claims_for(ANALYSIS)
    del anonymous["client_id"], anonymous["azp"]
    with pytest.raises(TokenAudienceError):
        check_token(mint(key, KID, anonymous), ANALYSIS)


def test_wrong_issuer(key: rsa.RSAPrivateKey) -> None:
    token = mint(key, KID, claims_for(ANALYSIS, iss="http://keycloak.test/realms/master"))
    assert check_token(token, ANALYSIS)  # not checked unless asked for
    with pytest.raises(TokenAudienceError):
        check_token(token, ANALYSIS, expected_issuer="/realms/flame")


def test_bad_signature(other_key: rsa.RSAPrivateKey, server: JWKSServer, cache: JWKSCache) -> None:
    forged = mint(other_key, KID, claims_for(ANALYSIS))  # another key, same kid
    with pytest.raises(TokenSignatureError) as info:
        check_token(forged, ANALYSIS, jwks_cache=cache)
    assert info.value.__cause__ is None
    assert not token_is_usable(forged, ANALYSIS, jwks_cache=cache)
    assert server.requests == 1  # a known kid with a bad signature does not refetch


def test_tampered_payload(good_token: str, cache: JWKSCache) -> None:
    head, _, sig = good_token.split(".")
    body = b64url(json.dumps(claims_for(ANALYSIS, lifetime=99999)).encode())
    with pytest.raises(TokenSignatureError):
        check_token(f"{head}.{body}.{sig}", ANALYSIS, jwks_cache=cache)


def test_each_rejection_has_its_own_type(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, cache: JWKSCache
) -> None:
    now = time.time()
    cases: dict[type[TokenError], str] = {
        TokenMalformedError: "definitely.not-a.jwt!",
        TokenExpiredError: mint(key, KID, claims_for(ANALYSIS, now=now - 1000, lifetime=300)),
        TokenAudienceError: mint(key, KID, claims_for(OTHER_ANALYSIS)),
        TokenSignatureError: mint(other_key, KID, claims_for(ANALYSIS)),
    }
    for expected, token in cases.items():
        with pytest.raises(TokenError) as info:
            check_token(token, ANALYSIS, jwks_cache=cache, now=now)
        assert type(info.value) is expected
        assert info.value.token_name == "KEYCLOAK_TOKEN"


def test_alg_none_and_hs256_rejected(key: rsa.RSAPrivateKey, cache: JWKSCache) -> None:
    claims = claims_for(ANALYSIS)
    none_tokens = [
        unsigned_token({"alg": "none", "typ": "JWT", "kid": KID}, claims),
        unsigned_token({"alg": "None", "typ": "JWT"}, claims),
        unsigned_token({"typ": "JWT", "kid": KID}, claims),  # no alg at all
    ]
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs256 = hs256_confusion_token(pem, KID, claims)
    # An RS256 header over an HMAC signature must not verify either.
    head = b64url(json.dumps({"alg": "RS256", "kid": KID}).encode())
    rs_header_hmac = head + "." + hs256.split(".", 1)[1]
    for token in [*none_tokens, hs256]:
        for jwks in (cache, None):
            with pytest.raises(TokenSignatureError):
                check_token(token, ANALYSIS, jwks_cache=jwks)
            assert not token_is_usable(token, ANALYSIS, jwks_cache=jwks)
    with pytest.raises(TokenSignatureError):
        check_token(rs_header_hmac, ANALYSIS, jwks_cache=cache)


def test_unknown_kid_refetches_once(
    key: rsa.RSAPrivateKey, server: JWKSServer, cache: JWKSCache, clock: FakeClock
) -> None:
    check_token(mint(key, KID, claims_for(ANALYSIS)), ANALYSIS, jwks_cache=cache)
    assert server.requests == 1
    stranger = mint(key, "no-such-kid", claims_for(ANALYSIS))
    clock.now += 60  # past min_refetch_interval
    with pytest.raises(TokenSignatureError, match="does not publish"):
        check_token(stranger, ANALYSIS, jwks_cache=cache)
    assert server.requests == 2  # exactly one refetch
    # Within min_refetch_interval unknown kids do not refetch again.
    for kid in ("another", "and-another", "no-such-kid"):
        with pytest.raises(TokenSignatureError):
            check_token(mint(key, kid, claims_for(ANALYSIS)), ANALYSIS, jwks_cache=cache)
    assert server.requests == 2
    # Known kids never refetch.
    check_token(mint(key, KID, claims_for(ANALYSIS)), ANALYSIS, jwks_cache=cache)
    assert server.requests == 2
    assert cache.fetch_count == 2


def test_key_rotation(
    key: rsa.RSAPrivateKey,
    rotated_key: rsa.RSAPrivateKey,
    server: JWKSServer,
    cache: JWKSCache,
    clock: FakeClock,
) -> None:
    assert check_token(mint(key, KID, claims_for(ANALYSIS)), ANALYSIS, jwks_cache=cache)
    server.set_keys(public_jwk(key, KID), public_jwk(rotated_key, "rotated"))
    clock.now += 11
    new = mint(rotated_key, "rotated", claims_for(ANALYSIS))
    assert check_token(new, ANALYSIS, jwks_cache=cache)
    assert server.requests == 2
    assert cache.kids == {KID, "rotated"}
    # The old key is withdrawn: after max_age it is no longer trusted.
    server.set_keys(public_jwk(rotated_key, "rotated"))
    cache2 = JWKSCache(server.url, max_age=100, clock=clock)
    cache2.refresh()
    old = mint(key, KID, claims_for(ANALYSIS))
    with pytest.raises(TokenSignatureError):
        check_token(old, ANALYSIS, jwks_cache=cache2)
    assert check_token(new, ANALYSIS, jwks_cache=cache2)


def test_max_age_refresh_keeps_stale_keys_on_failure(
    good_token: str, server: JWKSServer, cache: JWKSCache, clock: FakeClock
) -> None:
    cache = JWKSCache(server.url, max_age=100, clock=clock)
    assert check_token(good_token, ANALYSIS, jwks_cache=cache)
    server.status = 503
    clock.now += 101
    assert check_token(good_token, ANALYSIS, jwks_cache=cache)  # refresh failed, cached key still used
    assert server.requests == 2


def test_token_without_kid_uses_the_only_key(key: rsa.RSAPrivateKey, cache: JWKSCache) -> None:
    assert check_token(mint(key, None, claims_for(ANALYSIS)), ANALYSIS, jwks_cache=cache)


def test_jwks_unreachable_and_broken(good_token: str, server: JWKSServer) -> None:
    server.status = 503
    with pytest.raises(ServiceUnavailableError) as unavailable:
        check_token(good_token, ANALYSIS, jwks_cache=JWKSCache(server.url))
    assert unavailable.value.status == 503
    with pytest.raises(ServiceUnavailableError):  # test_token does not hide a service outage
        token_is_usable(good_token, ANALYSIS, jwks_cache=JWKSCache(server.url))
    server.status = 404
    with pytest.raises(ServiceError) as not_found:
        check_token(good_token, ANALYSIS, jwks_cache=JWKSCache(server.url))
    assert not isinstance(not_found.value, ServiceUnavailableError)
    server.status = 200
    server.set_keys({"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": "AQAB", "e": "AQAB"})
    with pytest.raises(ServiceError, match="no RS256 signing key"):
        check_token(good_token, ANALYSIS, jwks_cache=JWKSCache(server.url))
    # Nothing listens on the port any more.
    url = server.url
    server.stop()
    with pytest.raises(ServiceUnavailableError) as down:
        check_token(good_token, ANALYSIS, jwks_cache=JWKSCache(url, timeout=1.0))
    assert down.value.status is None


def test_jwks_ignores_encryption_keys(key: rsa.RSAPrivateKey, server: JWKSServer, good_token: str) -> None:
    enc = dict(public_jwk(key, "enc-kid"), use="enc", alg="RSA-OAEP")
    server.set_keys(enc, public_jwk(key, KID))
    cache = JWKSCache(server.url)
    assert check_token(good_token, ANALYSIS, jwks_cache=cache)
    assert cache.kids == {KID}


def test_jwks_url_and_cache_must_agree(good_token: str, cache: JWKSCache) -> None:
    with pytest.raises(ValueError):
        check_token(good_token, ANALYSIS, jwks_cache=cache, jwks_url="http://elsewhere/certs")


def test_jwks_cache_thread_safe(key: rsa.RSAPrivateKey, server: JWKSServer) -> None:
    cache = JWKSCache(server.url)
    token = mint(key, KID, claims_for(ANALYSIS))
    results: list[bool] = []
    lock = threading.Lock()

    def work() -> None:
        ok = all(token_is_usable(token, ANALYSIS, jwks_cache=cache) for _ in range(5))
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    assert server.requests == 1


# --- TokenStore -----------------------------------------------------------------------------------------


def test_token_store_swap_and_listeners(key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture) -> None:
    first = mint(key, KID, claims_for(ANALYSIS, lifetime=300))
    second = mint(key, KID, claims_for(ANALYSIS, lifetime=1800))
    store = TokenStore(first)
    assert store.get() == first
    assert store.claims is not None and store.claims.analysis_id == ANALYSIS
    remaining = store.seconds_remaining()
    assert remaining is not None and 298 <= remaining <= 300

    seen: list[tuple[str, TokenClaims, str | None]] = []

    def broken(claims: TokenClaims) -> None:
        raise RuntimeError(f"listener bug with {store.get()}")

    def good(claims: TokenClaims) -> None:
        seen.append(("good", claims, store.get()))  # reading the store inside a listener must not deadlock

    def late(claims: TokenClaims) -> None:
        seen.append(("late", claims, store.get()))

    store.add_listener(broken)
    store.add_listener(good)
    store.add_listener(late)
    with caplog.at_level(logging.INFO, logger="flame.tokens"):
        store.swap(second)
    assert store.get() == second
    assert [name for name, _, _ in seen] == ["good", "late"]
    assert seen[0][2] == second
    assert seen[0][1].exp == decode_payload(second)["exp"]
    assert any(
        "listener" in r.getMessage() and "RuntimeError: listener bug" in r.getMessage()
        for r in caplog.records
    )
    assert_no_segment(caplog.text, first, second)

    # A token that does not decode is refused and the old one kept; listeners are not called.
    seen.clear()
    with pytest.raises(TokenMalformedError):
        store.swap("garbage")
    with pytest.raises(TokenMalformedError):
        store.swap("")
    assert store.get() == second
    assert seen == []

    store.remove_listener(good)
    store.remove_listener(good)  # no error
    store.swap(first)
    assert [name for name, _, _ in seen] == ["late"]


def test_token_store_empty_and_from_env(good_token: str) -> None:
    empty = TokenStore.from_env(environ={"KEYCLOAK_TOKEN": ""})
    assert empty.get() is None and empty.claims is None and empty.seconds_remaining() is None
    assert repr(empty) == "TokenStore(empty)"
    store = TokenStore.from_env(environ={"KEYCLOAK_TOKEN": good_token})
    assert store.get() == good_token
    with pytest.raises(TokenMalformedError):
        TokenStore("not.a-token")


def test_token_store_thread_safety(key: rsa.RSAPrivateKey) -> None:
    tokens = [mint(key, KID, claims_for(ANALYSIS, lifetime=300 + i)) for i in range(10)]
    store = TokenStore(tokens[0])
    calls = 0
    calls_lock = threading.Lock()
    errors: list[BaseException] = []

    def listener(claims: TokenClaims) -> None:
        nonlocal calls
        with calls_lock:
            calls += 1

    store.add_listener(listener)
    swaps_per_thread = 50

    def swapper(offset: int) -> None:
        try:
            for i in range(swaps_per_thread):
                store.swap(tokens[(offset + i) % len(tokens)])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(200):
                token, claims = store.get_with_claims()
                assert token in tokens
                assert claims is not None and claims.exp == decode_payload(token)["exp"]
                assert store.get() in tokens
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=swapper, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert calls == 6 * swaps_per_thread
    assert store.get() in tokens


# --- no token in reprs, messages or logs ----------------------------------------------------------------


def test_reprs_hide_tokens(good_token: str, cache: JWKSCache) -> None:
    store = TokenStore(good_token)
    claims = check_token(good_token, ANALYSIS, jwks_cache=cache)
    texts = [repr(store), str(store), repr(claims), str(claims), repr(cache)]
    for text in texts:
        assert_no_segment(text, good_token)
    assert repr(store).startswith(f"TokenStore(client_id='{ANALYSIS}', expires_in=")
    assert repr(store).endswith("s)")


def test_exception_messages_hide_tokens(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, cache: JWKSCache
) -> None:
    now = time.time()
    claims = claims_for(ANALYSIS)
    bad_tokens = [
        mint(key, KID, claims_for(ANALYSIS, now=now - 1000)),
        mint(key, KID, claims_for(OTHER_ANALYSIS)),
        mint(other_key, KID, claims),
        mint(key, "unknown", claims),
        unsigned_token({"alg": "none"}, claims),
        "eyJhbGciOiJSUzI1NiJ9.eyJub3QiOiJjbG9zZWQ.c2lnbmF0dXJlc2VnbWVudA",
        mint(key, KID, claims)[:-5] + "AAAAA",  # signature changed
        mint(key, KID, claims) + ".extra",
    ]
    hs = hs256_confusion_token(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        KID,
        claims,
    )
    bad_tokens.append(hs)
    for token in bad_tokens:
        with pytest.raises(TokenError) as info:
            check_token(token, ANALYSIS, jwks_cache=cache, now=now, expected_issuer="/realms/flame")
        assert_no_segment(full_text(info.value), token)
        with pytest.raises(TokenError) as info2:
            check_token(token, "x" * 8, now=now)  # without a key set
        assert_no_segment(full_text(info2.value), token)
    with pytest.raises(TokenMalformedError) as swapped:
        TokenStore().swap(bad_tokens[5].replace(".", ""))
    assert_no_segment(full_text(swapped.value), bad_tokens[5])


def test_claim_values_shaped_like_tokens_are_redacted_in_messages(key: rsa.RSAPrivateKey) -> None:
    inner = mint(key, KID, claims_for(ANALYSIS))
    token = mint(key, KID, claims_for(inner))  # a token whose client_id is itself a token
    with pytest.raises(TokenAudienceError) as info:
        check_token(token, ANALYSIS)
    assert_no_segment(full_text(info.value), inner, token)


# --- redaction ------------------------------------------------------------------------------------------


def test_redact_function(good_token: str) -> None:
    head, body, _sig = good_token.split(".")
    text = f"token={good_token}; header {head} and payload {body}; Authorization: Bearer abc.def-ghi_jkl"
    out = redact(text)
    assert_no_segment(out, good_token)
    assert "abc.def-ghi_jkl" not in out
    assert out.count(REDACTED) == 4
    assert (
        redact("nothing secret here, not even eyJ or Bearer") == "nothing secret here, not even eyJ or Bearer"
    )
    assert redact("bearer lowercase-token") == f"bearer {REDACTED}"


def test_register_secret() -> None:
    secret = "kong-api-key-0123456789abcdef"
    assert secret in redact(f"apikey: {secret}")
    register_secret(secret)
    try:
        assert redact(f"apikey: {secret}!") == f"apikey: {REDACTED}!"
        with pytest.raises(ValueError):
            register_secret("short")
    finally:
        unregister_secret(secret)
    assert secret in redact(secret)


def _root_capture() -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    return handler, stream


@pytest.fixture
def root_capture() -> Iterator[io.StringIO]:
    handler, stream = _root_capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def _log_everything(logger: logging.Logger, token: str, secret: str) -> None:
    logger.info("token in the message %s" % token)  # noqa: UP031 - the message itself holds the token
    logger.info("token in the args: %s", token)
    logger.info("token in mapping args: %(t)s", {"t": token})
    logger.warning("header Authorization: Bearer %s sent", token)
    logger.warning("Authorization: Bearer opaque-not-a-jwt-value")
    logger.info("kong key %s", secret)
    logger.info("just the payload %s and the header %s", token.split(".")[1], token.split(".")[0])
    try:
        raise ValueError(f"request failed with token {token}")
    except ValueError:
        logger.exception("request failed")
    logger.debug("a dict %r", {"token": token})
    logger.info("broken format %s %s", token)  # fewer args than placeholders


def test_logging_redacted_on_child_logger_via_root_handler(
    good_token: str, redaction: RedactTokensFilter, root_capture: io.StringIO
) -> None:
    secret = "kong-secret-key-abcdef0123"
    redaction.register_secret(secret)
    logger = logging.getLogger("flame.some.child")
    _log_everything(logger, good_token, secret)
    text = root_capture.getvalue()
    assert "flame.some.child" in text
    assert_no_segment(text, good_token)
    assert secret not in text
    assert "opaque-not-a-jwt-value" not in text
    assert "ValueError: request failed with token [REDACTED]" in text
    assert "Traceback" in text
    assert text.count(REDACTED) >= 10


def test_logging_redacted_in_caplog(
    good_token: str, redaction: RedactTokensFilter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _log_everything(logging.getLogger("flame.node.runtime"), good_token, "kong-secret-key-abcdef0123")
        logging.getLogger("flame").info("top level %s", good_token)
    assert_no_segment(caplog.text, good_token)
    for record in caplog.records:
        assert_no_segment(record.getMessage(), good_token)
        assert record.args is None
    assert len(caplog.records) == 11


def test_install_redaction_is_idempotent(redaction: RedactTokensFilter) -> None:
    again = install_redaction()
    assert again is redaction
    assert logging.getLogger("flame").filters.count(redaction) == 1
    factory = logging.getLogRecordFactory()
    install_redaction()
    assert logging.getLogRecordFactory() is factory


def test_other_loggers_untouched_unless_handler_installed(
    good_token: str, redaction: RedactTokensFilter
) -> None:
    handler, stream = _root_capture()
    other = logging.getLogger("someone.else")
    other.addHandler(handler)
    other.setLevel(logging.INFO)
    try:
        other.info("t %s", good_token)
        assert good_token in stream.getvalue()  # not in the flame hierarchy: left alone
        flt = install_redaction_on_handler(handler)
        assert install_redaction_on_handler(handler) is flt
        assert handler.filters.count(flt) == 1
        other.info("t %s", good_token)
        other.info("Bearer %s", "opaque-value-123")
        second = stream.getvalue().split("\n", 1)[1]
        assert_no_segment(second, good_token)
        assert "opaque-value-123" not in second
    finally:
        other.removeHandler(handler)
        other.setLevel(logging.NOTSET)


def test_uninstall_redaction(good_token: str) -> None:
    before = logging.getLogRecordFactory()
    flt = install_redaction()
    uninstall_redaction()
    assert logging.getLogRecordFactory() is before
    assert flt not in logging.getLogger("flame").filters


def test_filter_directly(good_token: str) -> None:
    flt = RedactTokensFilter(secrets=["filter-only-secret"])
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "a %s b %s", (good_token, "filter-only-secret"), None
    )
    assert flt.filter(record) is True
    assert record.getMessage() == f"a {REDACTED} b {REDACTED}"
    assert "filter-only-secret" in redact("filter-only-secret")  # filter-local secret, not global
    assert "RedactTokensFilter" in repr(flt)


def test_token_module_logs_no_token(
    key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture, cache: JWKSCache, clock: FakeClock
) -> None:
    token = mint(key, "unknown-kid", claims_for(ANALYSIS))
    with caplog.at_level(logging.DEBUG, logger="flame"):
        token_is_usable(token, ANALYSIS, jwks_cache=cache)
        token_is_usable(token, OTHER_ANALYSIS)
        store = TokenStore(token)
        store.swap(token)
    assert caplog.records
    assert_no_segment(caplog.text, token)


def test_a_failed_key_set_fetch_is_an_outage_not_a_bad_token(
    good_token: str, server: JWKSServer, clock: FakeClock
) -> None:
    """Right after a failed fetch (within the refetch interval) a token is not called badly signed."""
    cache = JWKSCache(server.url, timeout=2.0, min_refetch_interval=10.0, clock=clock)
    server.status = 503
    with pytest.raises(ServiceUnavailableError):
        check_token(good_token, ANALYSIS, jwks_cache=cache)
    server.status = 200
    server.reset_count()
    with pytest.raises(ServiceUnavailableError, match="try again"):
        check_token(good_token, ANALYSIS, jwks_cache=cache)
    assert server.requests == 0  # the rate limit still holds
    clock.now += 10.0
    assert check_token(good_token, ANALYSIS, jwks_cache=cache).analysis_id == ANALYSIS


async def test_token_store_rejection_and_waiting_for_a_new_token(key: rsa.RSAPrivateKey) -> None:
    first = mint(key, "k1", claims_for(ANALYSIS, lifetime=600))
    second = mint(key, "k1", claims_for(ANALYSIS, lifetime=300))
    store = TokenStore(first)
    version = store.version
    assert 590 <= (store.seconds_remaining() or 0) <= 600
    assert not store.mark_rejected(second)  # not the current token: nothing changes
    assert store.mark_rejected(first) and store.rejected
    assert store.seconds_remaining() == 0
    assert not await store.wait_for_change(version, 0.05)
    # a swap from another thread wakes the waiter (its own bound is an hour: only the swap ends it)
    waiter = asyncio.ensure_future(store.wait_for_change(version, 3600.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    swapper = threading.Thread(target=store.swap, args=(second,))
    swapper.start()
    done, _ = await asyncio.wait([waiter], timeout=60)
    swapper.join()
    assert waiter in done and waiter.result() is True
    assert not store.rejected and store.get() == second
    assert 290 <= (store.seconds_remaining() or 0) <= 300


# --- review: claims beyond float range; refused and older tokens are not swapped back in ---------------


def test_claims_beyond_float_range_are_malformed(key: rsa.RSAPrivateKey) -> None:
    for name in ("exp", "iat"):
        token = mint(key, KID, {**claims_for(ANALYSIS), name: 10**400})
        with pytest.raises(TokenMalformedError, match=name):
            TokenClaims.from_token(token)
        with pytest.raises(TokenMalformedError, match=name):
            check_token(token, ANALYSIS)  # without a key set: the claims are read first


def test_a_refused_token_cannot_be_pushed_again(key: rsa.RSAPrivateKey) -> None:
    first = mint(key, KID, claims_for(ANALYSIS, lifetime=300))
    second = mint(key, KID, claims_for(ANALYSIS, lifetime=600))
    store = TokenStore(first)
    assert store.mark_rejected(first)
    store.swap(second)
    assert not store.rejected
    with pytest.raises(TokenError, match="already refused"):
        store.swap(first)
    with pytest.raises(TokenError, match="already refused"):
        store.swap(first, newer_only=True)
    assert store.get() == second and not store.rejected


def test_newer_only_keeps_the_later_token(key: rsa.RSAPrivateKey) -> None:
    now = time.time()
    older = mint(key, KID, claims_for(ANALYSIS, lifetime=3600, now=now - 600))
    newer = mint(key, KID, claims_for(ANALYSIS, lifetime=300, now=now))  # lives shorter, issued later
    store = TokenStore(older)
    store.swap(newer, newer_only=True)
    with pytest.raises(TokenError, match="issued before"):
        store.swap(older, newer_only=True)
    assert store.get() == newer
    store.swap(newer, newer_only=True)  # the same token again: taken
    store.swap(older)  # without newer_only (the SDK's own tests and tools): taken
    assert store.get() == older
    # once a service refused the current token, any usable replacement is taken
    third = mint(key, KID, claims_for(ANALYSIS, lifetime=300, now=now - 1200))
    store.mark_rejected(older)
    store.swap(third, newer_only=True)
    assert store.get() == third

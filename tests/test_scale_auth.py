"""The emulated services' token check at scale: a token verified once is remembered, and a remembered
token is still refused once it expires or is revoked."""

from __future__ import annotations

import time

import jwt
import pytest

from flame.sim import issuer as issuer_module
from flame.sim.issuer import InvalidToken, TokenIssuer


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer("http://keycloak.test", key_size=2048)


def test_a_remembered_token_is_not_verified_again(
    issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issuer.mint("analysis-1", 600)
    first = issuer.verify(token)
    calls = 0
    real_decode = jwt.decode

    def counting_decode(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(issuer_module.jwt, "decode", counting_decode)
    again = issuer.verify(token)
    assert again == first and calls == 0
    again["client_id"] = "changed by a caller"
    assert issuer.verify(token)["client_id"] == "analysis-1"
    other = issuer.mint("analysis-1", 600)
    issuer.verify(other)
    assert calls == 1


def test_a_remembered_token_expires(issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    token = issuer.mint("analysis-1", 60)
    exp = issuer.verify(token)["exp"]
    monkeypatch.setattr(issuer_module.time, "time", lambda: exp + 0.0)
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)
    monkeypatch.undo()
    assert exp > time.time()


def test_a_remembered_token_is_revoked_by_expire_all(issuer: TokenIssuer) -> None:
    token = issuer.mint("analysis-1", 600)
    issuer.verify(token)
    issuer.expire_all()
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)


def test_a_forged_token_is_refused_after_a_good_one_was_remembered(issuer: TokenIssuer) -> None:
    token = issuer.mint("analysis-2", 600)
    issuer.verify(token)
    header, payload, signature = token.split(".")
    forged = ".".join([header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
    with pytest.raises(InvalidToken):
        issuer.verify(forged)

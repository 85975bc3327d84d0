"""The secret registry of flame.redact at scale: same replacements as one regex of every secret, in
time that does not grow with the number of secrets registered before."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.redact import REDACTED, RedactTokensFilter, redact, register_secret, unregister_secret


def reference(secrets: list[str], text: str) -> str:
    """What the registry did before: one alternation of every secret, longest first."""
    if not secrets:
        return text
    ordered = sorted(set(secrets), key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered)).sub(REDACTED, text)


# A small alphabet with whitespace makes overlaps, shared prefixes and secrets inside longer words common.
ALPHABET = "ab01-. \n"
secret_st = st.text(alphabet=ALPHABET, min_size=8, max_size=14)
text_st = st.text(alphabet=ALPHABET + "xyz", max_size=120)


@settings(max_examples=400, deadline=None)
@given(secrets=st.lists(secret_st, max_size=6), pieces=st.lists(st.one_of(text_st, secret_st), max_size=8))
def test_same_replacements_as_one_regex_of_all_secrets(secrets: list[str], pieces: list[str]) -> None:
    text = "".join(pieces)
    flt = RedactTokensFilter(secrets=secrets)
    # the filter's own registry alone: texts without JWT or Bearer shapes, so only secrets apply
    assert flt._secrets.sub(text) == reference(secrets, text)


def test_every_registered_secret_is_redacted_among_thousands() -> None:
    secrets = [f"node-{i:04d}-data-key-{i * 7919 % 10007:05d}" for i in range(3000)]
    for secret in secrets:
        register_secret(secret)
    try:
        for i in (0, 1, 1499, 2999):
            secret = secrets[i]
            assert redact(f"key={secret}, again:{secret}\n{secret}") == (
                f"key={REDACTED}, again:{REDACTED}\n{REDACTED}"
            )
        # a prefix of a secret, or a secret with one character changed, stays
        assert redact(secrets[5][:-1]) == secrets[5][:-1]
        changed = secrets[5][:-1] + "x"
        assert redact(changed) == changed
    finally:
        for secret in secrets:
            unregister_secret(secret)
    assert redact(secrets[0]) == secrets[0]


def test_secrets_with_whitespace_and_overlaps() -> None:
    flt = RedactTokensFilter(secrets=["pass phrase one", "abcdefgh", "abcdefghijkl"])
    assert flt.redact("x pass phrase one y") == f"x {REDACTED} y"
    # the longest secret at a position wins; scanning goes on after it
    assert flt.redact("abcdefghijklabcdefgh") == REDACTED + REDACTED
    assert flt.redact("zzabcdefghij") == f"zz{REDACTED}ij"


def test_registering_is_not_quadratic() -> None:
    # one regex of all secrets, recompiled per registration, took minutes for 20,000
    flt = RedactTokensFilter()
    began = time.perf_counter()
    for i in range(20_000):
        flt.register_secret(f"secret-{i:08d}-0123456789")
    elapsed = time.perf_counter() - began
    assert elapsed < 5.0, f"registering 20,000 secrets took {elapsed:.1f} s"
    assert flt.redact("a secret-00012345-0123456789 b") == f"a {REDACTED} b"


def test_short_and_non_string_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        register_secret("short")
    with pytest.raises(TypeError):
        register_secret(12345678)  # type: ignore[arg-type]


def test_unregistering_one_of_two_secrets_of_the_same_shape_keeps_the_other() -> None:
    flt = RedactTokensFilter(secrets=["same-prefix-AAAA", "same-prefix-BBBB", "same-prefix-CC"])
    flt._secrets.discard("same-prefix-AAAA")
    assert flt.redact("same-prefix-AAAA same-prefix-BBBB same-prefix-CC") == (
        f"same-prefix-AAAA {REDACTED} {REDACTED}"
    )
    flt._secrets.discard("same-prefix-BBBB")
    flt._secrets.discard("same-prefix-CC")
    assert flt.redact("same-prefix-BBBB same-prefix-CC") == "same-prefix-BBBB same-prefix-CC"
    assert len(flt._secrets) == 0

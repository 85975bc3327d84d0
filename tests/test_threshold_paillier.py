"""Threshold Paillier (flame.protocols.threshold_paillier): t-of-l decryption, proofs, phe cross-checks.

phe (python-paillier) is an independent implementation, used here only: it encrypts what our
decryptors decrypt together, and decrypts with the dealer's primes what our single-key code encrypts.
"""

from __future__ import annotations

import itertools
import math

import gmpy2  # type: ignore[import-untyped]
import numpy as np
import phe  # type: ignore[import-untyped]
import pytest

from flame.protocols import paillier
from flame.protocols.paillier import Layout, PaillierError
from flame.protocols.threshold_paillier import (
    KeyShare,
    PartialDecryption,
    ProofError,
    ThresholdPublicKey,
    _deal,
    _lagrange,
    _safe_prime,
    combine,
    combine_vector,
    deal,
    default_threshold,
    partial_decrypt,
    partial_decrypt_vector,
    verify_partial,
)
from tests.helpers_threshold import SAFE_PRIMES_1024, dealt

P, Q = SAFE_PRIMES_1024[0], SAFE_PRIMES_1024[1]


def test_default_threshold_is_a_majority_of_at_least_two() -> None:
    assert [default_threshold(k) for k in (2, 3, 4, 5, 10)] == [2, 2, 3, 3, 6]


@pytest.mark.parametrize(("parties", "threshold"), [(1, 1), (3, 1), (4, 2), (5, 2), (3, 4), (2, True)])
def test_thresholds_that_are_not_a_majority_of_at_least_two_are_refused(parties: int, threshold: int) -> None:
    with pytest.raises(PaillierError, match=r"decryptor|threshold"):
        _deal(P, Q, parties, threshold)


def test_dealing_needs_safe_primes() -> None:
    with pytest.raises(PaillierError, match="safe primes"):
        _deal(P, int(gmpy2.next_prime(Q + 10**6)), 3, 2)


def test_the_safe_primes_of_the_tests_are_safe() -> None:
    for p in SAFE_PRIMES_1024:
        assert p.bit_length() == 1024 and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_safe_prime_generation() -> None:
    p = _safe_prime(256)
    assert p.bit_length() == 256 and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


@pytest.mark.integration
def test_deal_makes_a_fresh_key_of_the_requested_size() -> None:
    public, shares = deal(3, bits=2048)
    assert public.public_key.bits == 2048 and public.threshold == 2 and len(shares) == 3
    ct = paillier._encrypt(public.public_key, 42)
    assert combine(public, [ct], [partial_decrypt(s, [ct]) for s in shares[1:]]) == [42]


def test_the_shared_secret_is_d_zero_mod_m_and_one_mod_n() -> None:
    """Lagrange interpolation at 0 of any t shares gives Delta d, with d = 0 mod m, d = 1 mod n."""
    public, shares = dealt(5, 3)
    n = P * Q
    m = (P - 1) // 2 * ((Q - 1) // 2)
    for subset in itertools.combinations(shares, 3):
        indices = [s.index for s in subset]
        delta_d = sum(_lagrange(indices, s.index, public.delta) * int(s._s) for s in subset) % (n * m)
        assert delta_d % m == 0 and delta_d % n == public.delta % n


def test_every_threshold_subset_decrypts_and_fewer_do_not() -> None:
    public, shares = dealt(5, 3)
    plaintexts = [0, 1, 2**100 + 7, public.public_key.n - 1]
    cts = [paillier._encrypt(public.public_key, m) for m in plaintexts]
    partials = [partial_decrypt(s, cts) for s in shares]
    for subset in itertools.combinations(partials, 3):
        assert combine(public, cts, subset) == plaintexts
    with pytest.raises(PaillierError, match="2 valid partial decryption"):
        combine(public, cts, partials[:2])


def test_losing_l_minus_t_decryptors_still_decrypts_and_the_fast_variant_works() -> None:
    public, shares = dealt(10, 6)
    ct = paillier._encrypt(public.public_key, 123456789, fast=True)
    partials = [partial_decrypt(s, [ct], b"ctx") for s in shares[4:]]
    assert combine(public, [ct], partials, b"ctx") == [123456789]


def test_homomorphic_sums_of_several_nodes_decrypt_by_threshold() -> None:
    public, shares = dealt(3, 2)
    layout = Layout(frac_bits=16, bound=1000, max_contributors=10)
    rng = np.random.default_rng(1)
    vectors = [rng.uniform(-1000, 1000, 300) for _ in range(3)]
    encrypted = [paillier.encrypt(public.public_key, v, layout, fast=True) for v in vectors]
    total = paillier.aggregate(encrypted)
    parts = [partial_decrypt_vector(s, total, b"round 1") for s in shares[:2]]
    exact = sum(np.rint(v * layout.scale) for v in vectors) / layout.scale
    np.testing.assert_array_equal(combine_vector(public, total, parts, b"round 1"), exact)


# -- independent implementation (phe) ---------------------------------------------------------------------


def test_phe_encrypts_what_the_decryptors_decrypt_together() -> None:
    public, shares = dealt(3, 2)
    phe_public = phe.PaillierPublicKey(public.public_key.n)
    values = [0, 5, 2**64 + 3, 10**300]
    cts = [phe_public.raw_encrypt(v) for v in values]
    summed = phe.EncryptedNumber(phe_public, cts[0], 0)
    for c in cts[1:]:
        summed = summed + phe.EncryptedNumber(phe_public, c, 0)
    all_cts = [*cts, summed.ciphertext(be_secure=False)]
    parts = [partial_decrypt(s, all_cts) for s in (shares[0], shares[2])]
    assert combine(public, all_cts, parts) == [*values, sum(values)]


def test_phe_with_the_dealers_primes_decrypts_what_we_encrypt() -> None:
    public, _ = dealt(3, 2)
    phe_public = phe.PaillierPublicKey(public.public_key.n)
    phe_private = phe.PaillierPrivateKey(phe_public, P, Q)
    for fast in (False, True):
        ct = paillier._encrypt(public.public_key, 987654321, fast=fast)
        assert phe_private.raw_decrypt(int(ct)) == 987654321


def test_the_single_key_decryption_and_the_threshold_decryption_agree() -> None:
    public, shares = dealt(4, 3)
    private = paillier.PrivateKey(public.public_key, P, Q)
    cts = [paillier._encrypt(public.public_key, secret) for secret in (3, 2**2000)]
    parts = [partial_decrypt(s, cts) for s in shares[1:]]
    assert combine(public, cts, parts) == [int(paillier._decrypt(private, c)) for c in cts]


# -- proofs ------------------------------------------------------------------------------------------------


def test_a_tampered_part_fails_its_proof_and_is_skipped_when_enough_good_ones_remain() -> None:
    public, shares = dealt(5, 3)
    cts = [paillier._encrypt(public.public_key, m) for m in (11, 22)]
    partials = [partial_decrypt(s, cts) for s in shares]
    nsq = public.public_key.nsquare
    forged = PartialDecryption(1, (partials[0].parts[0] * 2 % nsq, partials[0].parts[1]), 5, 7)
    with pytest.raises(ProofError, match="decryptor 1"):
        verify_partial(public, cts, forged)
    # the forged part from decryptor 1 is skipped; 2, 3, 4 decrypt
    assert combine(public, cts, [forged, *partials[1:4]]) == [11, 22]
    with pytest.raises(PaillierError, match=r"2 valid .* refused: decryptor 1"):
        combine(public, cts, [forged, *partials[1:3]])


def test_a_part_replayed_with_another_index_context_or_ciphertext_fails() -> None:
    public, shares = dealt(3, 2)
    cts = [paillier._encrypt(public.public_key, 5)]
    good = partial_decrypt(shares[0], cts, b"analysis a, round 1, field n")
    verify_partial(public, cts, good, b"analysis a, round 1, field n")
    with pytest.raises(ProofError):
        verify_partial(public, cts, good, b"analysis a, round 2, field n")
    with pytest.raises(ProofError):
        verify_partial(public, cts, PartialDecryption(2, good.parts, good.challenge, good.response))
    other = [paillier._encrypt(public.public_key, 6)]
    with pytest.raises(ProofError):
        verify_partial(public, other, good)


def test_a_share_of_another_key_is_refused() -> None:
    public_a, shares_a = dealt(3, 2)
    public_b, _ = dealt(3, 2, pair=1)
    with pytest.raises(PaillierError, match="verification key"):
        KeyShare(public_b, 1, int(shares_a[0]._s))
    vector = paillier.encrypt(public_b.public_key, [1.0])
    with pytest.raises(PaillierError, match="another key"):
        partial_decrypt_vector(shares_a[0], vector)
    with pytest.raises(PaillierError, match="another key"):
        combine_vector(public_a, vector, [])


# -- serialisation -----------------------------------------------------------------------------------------


def test_keys_shares_and_partials_round_trip() -> None:
    public, shares = dealt(3, 2)
    assert ThresholdPublicKey.from_payload(public.to_payload()) == public
    again = KeyShare.from_bytes(shares[1].to_bytes())
    assert again.index == 2 and again._s == shares[1]._s and again.public == public
    assert "secret" not in repr(again) and str(int(again._s)) not in repr(again)
    cts = [paillier._encrypt(public.public_key, 9)]
    partial = partial_decrypt(shares[0], cts)
    assert PartialDecryption.from_payload(partial.to_payload()) == partial


def test_malformed_serialisations_are_refused() -> None:
    public, _ = dealt(3, 2)
    with pytest.raises(PaillierError):
        KeyShare.from_bytes(b"not a share")
    payload = public.to_payload()
    with pytest.raises(PaillierError):
        ThresholdPublicKey.from_payload({**payload, "v": b"\x01"})
    with pytest.raises(PaillierError):
        PartialDecryption.from_payload({"format": "x"})


def test_lagrange_coefficients_are_integers_times_delta() -> None:
    delta = math.factorial(5)
    for subset in itertools.combinations(range(1, 6), 3):
        total = sum(_lagrange(list(subset), i, delta) for i in subset)
        assert total == delta  # interpolating the constant polynomial 1


@pytest.mark.parametrize("count", [1, 31, 200])
def test_the_bucket_multi_exponentiation_equals_the_product_of_powers(count: int) -> None:
    from flame.protocols.threshold_paillier import _multi_exp

    modulus = gmpy2.mpz(P) * Q
    rng = np.random.default_rng(count)
    bases = [gmpy2.mpz(int(x)) for x in rng.integers(2, 2**62, count)]
    exponents = [int(x) | 1 for x in rng.integers(1, 2**62, count)]
    exponents[0] = 2**127 + 5
    expected = math.prod(int(gmpy2.powmod(b, e, modulus)) for b, e in zip(bases, exponents, strict=True))
    assert _multi_exp(bases, exponents, modulus) == expected % modulus

"""Tests of flame.protocols.paillier: keys, packed fixed-point round trips, limits, wire format, phe interop."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import gmpy2  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.codec import decode, encode
from flame.errors import PayloadError
from flame.protocols.paillier import (
    DEFAULT_KEY_BITS,
    DEFAULT_LAYOUT,
    ContributorLimitError,
    EncryptedVector,
    Layout,
    PaillierError,
    PrivateKey,
    PublicKey,
    ValueRangeError,
    _decrypt,
    _enc_add,
    _encrypt,
    _invmod,
    _load_keys,
    aggregate,
    decrypt,
    encrypt,
    generate_keypair,
)

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = Layout(frac_bits=8, bound=4, max_contributors=6)  # 14-bit slots, 146 per 2048-bit plaintext
ODD = Layout(frac_bits=13, bound=1000, max_contributors=3)  # bound not a power of two


@pytest.fixture(scope="module")
def keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(2048)


@pytest.fixture(scope="module")
def other_keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(2048)


def expected_sum(vectors: list[np.ndarray[Any, Any]], layout: Layout) -> np.ndarray[Any, Any]:
    """The exact sum of the fixed-point roundings, computed in integers."""
    if not vectors:
        return np.zeros(0)
    ints = sum(np.rint(np.asarray(v, dtype=np.float64) * layout.scale).astype(np.int64) for v in vectors)
    return np.asarray(ints, dtype=np.int64).astype(np.float64) / layout.scale


def with_extremes(rng: np.random.Generator, length: int, bound: int) -> np.ndarray[Any, Any]:
    """Uniform values in [-bound, bound] with ±bound, 0 and -0.0 planted at random places."""
    values = rng.uniform(-bound, bound, length)
    if length:
        for special in (bound, -bound, 0.0, -0.0):
            values[rng.integers(length)] = special
    return values


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2048, DEFAULT_KEY_BITS])
def test_generated_keys_have_the_exact_size_and_distinct_primes_of_equal_length(bits: int) -> None:
    public, private = generate_keypair() if bits == DEFAULT_KEY_BITS else generate_keypair(bits)
    assert public.bits == bits and public.n.bit_length() == bits
    p, q = private.p, private.q
    assert p != q and p * q == public.n
    assert p.bit_length() == q.bit_length() == bits // 2
    assert gmpy2.is_prime(p, 50) and gmpy2.is_prime(q, 50)
    assert abs(p - q) > 2 ** (bits // 2 - 100)
    assert math.gcd(public.n, (p - 1) * (q - 1)) == 1
    assert public.h is not None and pow(public.h, 1, public.nsquare) == public.h
    assert public.key_id == hashlib.sha256(public.n.to_bytes(bits // 8, "big")).digest()[:16]


def test_default_key_size_is_3072() -> None:
    assert DEFAULT_KEY_BITS == 3072
    assert DEFAULT_LAYOUT.slots_per_plaintext(3072) == 83


def test_key_pairs_differ() -> None:
    assert generate_keypair(2048)[0].n != generate_keypair(2048)[0].n


@pytest.mark.parametrize("bits", [512, 1024, 2046])
def test_short_keys_are_refused(bits: int) -> None:
    with pytest.raises(PaillierError, match="too short"):
        generate_keypair(bits)


def test_odd_and_non_int_key_sizes_are_refused() -> None:
    with pytest.raises(PaillierError, match="even"):
        generate_keypair(2049)
    with pytest.raises(PaillierError):
        generate_keypair(2048.0)  # type: ignore[arg-type]


def test_short_moduli_and_bad_primes_are_refused(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    p1024, q1024 = int(gmpy2.next_prime(2**511 + 12345)), int(gmpy2.next_prime(2**511 + 99999))
    with pytest.raises(PaillierError, match="too short"):
        PublicKey(p1024 * q1024)
    with pytest.raises(PaillierError, match="too short"):
        PrivateKey.from_primes(p1024, q1024)
    with pytest.raises(PaillierError, match="do not match"):
        PrivateKey(public, private.p, private.p)
    with pytest.raises(PaillierError, match="odd"):
        PublicKey(2**2048)


def test_private_key_repr_hides_the_primes(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    text = repr(private) + str(private)
    assert str(private.p) not in text and hex(private.p)[2:20] not in text
    assert public.key_id.hex() in text


# --------------------------------------------------------------------------------------------
# raw operations
# --------------------------------------------------------------------------------------------


def test_raw_encrypt_decrypt_and_add(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    for m in (0, 1, 2**100, public.n - 1):
        for fast in (False, True):
            assert _decrypt(private, _encrypt(public, m, fast=fast)) == m
    c = _enc_add(public, _encrypt(public, 20), int(_encrypt(public, 22, fast=True)))
    assert _decrypt(private, c) == 42
    assert _decrypt(private, _enc_add(public, _encrypt(public, public.n - 1), _encrypt(public, 2))) == 1
    with pytest.raises(PaillierError):
        _encrypt(public, public.n)
    with pytest.raises(PaillierError):
        _encrypt(public, -1)
    with pytest.raises(PaillierError):
        _decrypt(private, public.nsquare)


def test_invmod() -> None:
    assert _invmod(3, 7) == 5
    assert _invmod(2**127 + 5, 2**521 - 1) * (2**127 + 5) % (2**521 - 1) == 1
    with pytest.raises(PaillierError, match="no modular inverse"):
        _invmod(6, 9)


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@st.composite
def party_vectors(draw: st.DrawFn, layout: Layout, max_parties: int) -> list[np.ndarray[Any, Any]]:
    per = layout.slots_per_plaintext(2048)
    length = draw(st.one_of(st.integers(0, 2 * per + 2), st.sampled_from([per, 2 * per, per - 1, per + 1])))
    parties = draw(st.integers(1, max_parties))
    bound = float(layout.bound)
    values = st.one_of(
        st.floats(-bound, bound, allow_nan=False, allow_infinity=False),
        st.sampled_from([bound, -bound, 0.0, -0.0, 2.0**-40, -(2.0**-40)]),
    )
    return [np.array(draw(st.lists(values, min_size=length, max_size=length))) for _ in range(parties)]


@PROPERTY
@given(data=st.data(), layout=st.sampled_from([DEFAULT_LAYOUT, SMALL, ODD]), fast=st.booleans())
def test_round_trip_of_random_vectors(
    keys: tuple[PublicKey, PrivateKey], data: st.DataObject, layout: Layout, fast: bool
) -> None:
    public, private = keys
    vectors = data.draw(party_vectors(layout, min(layout.max_contributors, 4 if fast else 2)))
    encrypted = [encrypt(public, v, layout, fast=fast) for v in vectors]
    total = aggregate(encrypted)
    assert total.contributors == len(vectors) and len(total) == len(vectors[0])
    result = decrypt(private, total)
    assert result.dtype == np.float64 and result.shape == vectors[0].shape
    np.testing.assert_array_equal(result, expected_sum(vectors, layout))
    # within the fixed-point resolution of the true float sum
    assert np.all(np.abs(result - np.sum(vectors, axis=0)) <= len(vectors) * 0.5 / layout.scale + 1e-9)


@PROPERTY
@given(
    layout=st.sampled_from([DEFAULT_LAYOUT, SMALL, ODD, Layout(frac_bits=0, bound=1, max_contributors=1)]),
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(0, 120),
)
def test_round_trip_with_as_many_parties_as_the_layout_allows(
    keys: tuple[PublicKey, PrivateKey], layout: Layout, seed: int, length: int
) -> None:
    public, private = keys
    rng = np.random.default_rng(seed)
    k = layout.max_contributors
    vectors = [with_extremes(rng, length, layout.bound) for _ in range(k)]
    encrypted = [encrypt(public, v, layout, fast=True) for v in vectors]
    total = aggregate(encrypted)
    assert total.contributors == k
    np.testing.assert_array_equal(decrypt(private, total), expected_sum(vectors, layout))
    with pytest.raises(ContributorLimitError, match=f"limit of {k}"):
        aggregate([total, encrypted[0]])


@pytest.mark.parametrize("layout", [DEFAULT_LAYOUT, SMALL, ODD])
@pytest.mark.parametrize("sign", [1, -1])
def test_all_values_at_the_bound_from_the_maximum_number_of_parties(
    keys: tuple[PublicKey, PrivateKey], layout: Layout, sign: int
) -> None:
    public, private = keys
    per = layout.slots_per_plaintext(public.bits)
    vector = np.full(per + 3, sign * float(layout.bound))
    one = encrypt(public, vector, layout, fast=True)
    total = aggregate([one] * layout.max_contributors)
    np.testing.assert_array_equal(decrypt(private, total), vector * layout.max_contributors)


def test_textbook_round_trip_of_an_array_and_a_list(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    a = np.linspace(-256, 256, 130)
    b = [0.5] * 130
    total = aggregate([encrypt(public, a), public.encrypt(b)])
    np.testing.assert_allclose(private.decrypt(total), a + 0.5, atol=2**-20)
    assert len(total.ciphertexts) == 3  # 55 values per ciphertext


def test_empty_vector(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    vector = encrypt(public, [])
    assert vector.ciphertexts == () and len(vector) == 0
    assert decrypt(private, aggregate([vector, vector])).shape == (0,)


def test_fast_variant_decrypts_identically(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    values = with_extremes(np.random.default_rng(7), 200, 256)
    textbook, fast = encrypt(public, values), encrypt(public, values, fast=True)
    assert textbook.ciphertexts != fast.ciphertexts
    np.testing.assert_array_equal(decrypt(private, textbook), decrypt(private, fast))
    mixed = decrypt(private, aggregate([textbook, fast]))
    np.testing.assert_array_equal(mixed, expected_sum([values, values], DEFAULT_LAYOUT))


def test_multi_process_encryption(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    values = np.random.default_rng(3).uniform(-100, 100, 55 * 9 + 1)
    for fast in (False, True):
        vector = encrypt(public, values, fast=fast, processes=2)
        np.testing.assert_array_equal(decrypt(private, vector), expected_sum([values], DEFAULT_LAYOUT))
    with pytest.raises(PaillierError, match="processes"):
        encrypt(public, values, processes=0)


# --------------------------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_every_ciphertext_has_fresh_randomness(keys: tuple[PublicKey, PrivateKey], fast: bool) -> None:
    public, _ = keys
    values = np.zeros(55 * 3)  # three identical plaintexts
    first, second = encrypt(public, values, fast=fast), encrypt(public, values, fast=fast)
    cts = first.ciphertexts + second.ciphertexts
    assert len(set(cts)) == 6


def test_fast_encryption_needs_the_base_h(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    bare = PublicKey(public.n)
    assert bare.h is None and bare.key_id == public.key_id
    with pytest.raises(PaillierError, match="no fast-encryption base"):
        encrypt(bare, [1.0], fast=True)
    with_h = bare.with_fast_base()
    assert with_h.h not in (None, public.h)
    assert decrypt(private, encrypt(with_h, [1.5], fast=True))[0] == 1.5
    with pytest.raises(PaillierError, match="order above 2"):
        PublicKey(public.n, public.nsquare - 1)
    with pytest.raises(PaillierError, match="at least 2"):
        PublicKey(public.n, 1)


# --------------------------------------------------------------------------------------------
# range and contributor limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [256.0 + 2**-30, -256.0 - 2**-30, 1e300, -300.0, math.nan, math.inf, -math.inf]
)
def test_values_outside_the_range_raise(keys: tuple[PublicKey, PrivateKey], bad: float) -> None:
    public, _ = keys
    values = [0.0, 1.0, bad, 2.0]
    with pytest.raises(ValueRangeError, match="at index 2 is outside \\[-256, 256\\]"):
        encrypt(public, values)
    with pytest.raises(ValueRangeError):
        encrypt(public, values, fast=True)


def test_values_at_the_bound_are_accepted(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    np.testing.assert_array_equal(decrypt(private, encrypt(public, [256.0, -256.0])), [256.0, -256.0])


def test_non_vectors_raise(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, _ = keys
    with pytest.raises(PaillierError, match="1-D"):
        encrypt(public, np.zeros((2, 2)))
    with pytest.raises(PaillierError, match="float64"):
        encrypt(public, ["a", "b"])
    assert isinstance(PaillierError("x"), (PayloadError, ValueError))


def test_more_contributions_than_the_layout_allows_are_refused(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    one = encrypt(public, [4.0, -4.0], SMALL, fast=True)
    six = aggregate([one] * 6)
    np.testing.assert_array_equal(decrypt(private, six), [24.0, -24.0])
    with pytest.raises(ContributorLimitError, match="7 contributions exceed the layout's limit of 6"):
        aggregate([one] * 7)
    with pytest.raises(ContributorLimitError):
        six + one
    tampered = bytearray(six.to_bytes())
    tampered[44:48] = (7).to_bytes(4, "big")  # the contributor count in the header
    with pytest.raises(ContributorLimitError):
        EncryptedVector.from_bytes(bytes(tampered), public)


def test_a_false_contributor_count_is_detected_at_decryption(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    two = aggregate([encrypt(public, [4.0], SMALL, fast=True)] * 2)
    lying = EncryptedVector(public, SMALL, 1, 1, two.ciphertexts)
    with pytest.raises(PaillierError, match="exceeds the range of 1 contributions"):
        decrypt(private, lying)


def test_layout_checks() -> None:
    assert (DEFAULT_LAYOUT.frac_bits, DEFAULT_LAYOUT.bound, DEFAULT_LAYOUT.max_contributors) == (20, 256, 255)
    assert DEFAULT_LAYOUT.slot_bits == 37 and DEFAULT_LAYOUT.slots_per_plaintext(2048) == 55
    assert Layout(max_contributors=256).slot_bits == 38
    with pytest.raises(PaillierError, match="63"):
        Layout(frac_bits=40, bound=2**20)
    with pytest.raises(PaillierError):
        Layout(frac_bits=-1)
    with pytest.raises(PaillierError):
        Layout(bound=0)
    with pytest.raises(PaillierError):
        Layout(max_contributors=True)
    with pytest.raises(PaillierError):
        Layout(bound=2.5)  # type: ignore[arg-type]


def test_aggregate_refuses_mismatched_vectors(
    keys: tuple[PublicKey, PrivateKey], other_keys: tuple[PublicKey, PrivateKey]
) -> None:
    public, _ = keys
    a = encrypt(public, [1.0, 2.0], fast=True)
    with pytest.raises(PaillierError, match="key"):
        aggregate([a, encrypt(other_keys[0], [1.0, 2.0], fast=True)])
    with pytest.raises(PaillierError, match="layout"):
        aggregate([a, encrypt(public, [1.0, 2.0], SMALL, fast=True)])
    with pytest.raises(PaillierError, match="length"):
        aggregate([a, encrypt(public, [1.0], fast=True)])
    with pytest.raises(PaillierError, match="at least one"):
        aggregate([])
    with pytest.raises(PaillierError, match="not an EncryptedVector"):
        aggregate([a, [1.0, 2.0]])  # type: ignore[list-item]
    with pytest.raises(PaillierError, match="not under this private key"):
        decrypt(other_keys[1], a)


# --------------------------------------------------------------------------------------------
# serialisation
# --------------------------------------------------------------------------------------------


def test_vector_bytes_round_trip(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    values = np.random.default_rng(5).uniform(-100, 100, 200)
    vector = aggregate([encrypt(public, values, fast=True)] * 3)
    data = vector.to_bytes()
    assert len(data) == 50 + 4 * 512  # header + ceil(200 / 55) ciphertexts as wide as n^2
    assert data[:4] == b"FLPV" and data[5:21] == public.key_id
    back = EncryptedVector.from_bytes(data, public)
    assert back.ciphertexts == vector.ciphertexts
    assert (back.layout, back.length, back.contributors) == (vector.layout, 200, 3)
    np.testing.assert_array_equal(decrypt(private, back), decrypt(private, vector))


def test_vector_codec_payload_round_trip(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    vector = encrypt(public, [1.25, -3.5, 0.0], SMALL, fast=True)
    payload = vector.to_payload()
    assert all(isinstance(v, (str, int, bytes, list)) for v in payload.values())
    assert len(encode(payload)) < 512 + 200  # one ciphertext and a small header
    wire = encode({"update": payload, "key": public.to_payload()})
    received = decode(wire)
    key = PublicKey.from_payload(received["key"])
    assert key == public
    back = EncryptedVector.from_payload(received["update"], key)
    assert back.ciphertexts == vector.ciphertexts
    np.testing.assert_array_equal(decrypt(private, back), [1.25, -3.5, 0.0])


def test_key_round_trips(keys: tuple[PublicKey, PrivateKey]) -> None:
    public, private = keys
    data = public.to_bytes()
    assert len(data) == 24 + 256 + 512 and data[:4] == b"FLPK"
    assert PublicKey.from_bytes(data) == public
    bare = PublicKey(public.n)
    assert PublicKey.from_bytes(bare.to_bytes()) == bare and len(bare.to_bytes()) == 24 + 256
    assert PublicKey.from_payload(decode(encode(public.to_payload()))) == public
    restored = PrivateKey.from_bytes(private.to_bytes())
    assert (restored.p, restored.q, restored.public_key) == (private.p, private.q, public)
    assert _load_keys(public.to_bytes()) == (public, None)
    loaded_public, loaded_private = _load_keys(public.to_payload(), private.to_bytes())
    assert loaded_public == public and loaded_private is not None and loaded_private.p == private.p


def test_malformed_serialisations_are_refused(
    keys: tuple[PublicKey, PrivateKey], other_keys: tuple[PublicKey, PrivateKey]
) -> None:
    public, private = keys
    data = encrypt(public, [1.0] * 60, fast=True).to_bytes()
    with pytest.raises(PaillierError, match="key id mismatch"):
        EncryptedVector.from_bytes(data, other_keys[0])
    with pytest.raises(PaillierError, match="FLPV"):
        EncryptedVector.from_bytes(b"FLPK" + data[4:], public)
    with pytest.raises(PaillierError, match="version"):
        EncryptedVector.from_bytes(data[:4] + b"\x02" + data[5:], public)
    with pytest.raises(PaillierError):
        EncryptedVector.from_bytes(data[:-1], public)
    with pytest.raises(PaillierError):
        EncryptedVector.from_bytes(data[:-512], public)
    with pytest.raises(PaillierError, match=r"not in \(0, n\^2\)"):
        EncryptedVector.from_bytes(data[:-512] + b"\xff" * 512, public)
    with pytest.raises(PaillierError, match=r"not in \(0, n\^2\)"):
        EncryptedVector.from_bytes(data[:-512] + bytes(512), public)
    with pytest.raises(PaillierError, match="slots"):
        EncryptedVector.from_bytes(data[:34] + (54).to_bytes(2, "big") + data[36:], public)
    with pytest.raises(PaillierError, match="key id mismatch"):
        PublicKey.from_bytes(public.to_bytes()[:5] + bytes(16) + public.to_bytes()[21:])
    with pytest.raises(PaillierError):
        PublicKey.from_bytes(public.to_bytes()[:-1])
    with pytest.raises(PaillierError, match="another public key"):
        _load_keys(other_keys[0].to_bytes(), private.to_bytes())
    payload = encrypt(public, [1.0], fast=True).to_payload()
    with pytest.raises(PaillierError, match="fields"):
        EncryptedVector.from_payload({**payload, "extra": 1}, public)
    with pytest.raises(PaillierError, match="not a"):
        EncryptedVector.from_payload(public.to_payload(), public)
    with pytest.raises(PaillierError, match="must be an int"):
        EncryptedVector.from_payload({**payload, "length": "1"}, public)


# --------------------------------------------------------------------------------------------
# python-paillier (phe) interoperability; phe is GPL and used by the tests only
# --------------------------------------------------------------------------------------------


def test_phe_encrypts_what_we_decrypt(keys: tuple[PublicKey, PrivateKey]) -> None:
    phe = pytest.importorskip("phe")
    public, private = keys
    phe_public = phe.PaillierPublicKey(public.n)
    for m in (0, 7, 2**1000 + 3, public.n - 1):
        assert _decrypt(private, phe_public.raw_encrypt(m)) == m
    # phe's homomorphic sum of its own ciphertexts, decrypted by us
    total = phe_public.encrypt(12345) + phe_public.encrypt(55555)
    assert _decrypt(private, total.ciphertext()) == 67900


def test_we_encrypt_what_phe_decrypts(keys: tuple[PublicKey, PrivateKey]) -> None:
    phe = pytest.importorskip("phe")
    public, private = keys
    phe_public = phe.PaillierPublicKey(public.n)
    phe_private = phe.PaillierPrivateKey(phe_public, private.p, private.q)
    for m in (0, 7, 2**1000 + 3, public.n // 3 - 2):
        for fast in (False, True):
            c = int(_encrypt(public, m, fast=fast))
            assert phe_private.raw_decrypt(c) == m
            assert phe_private.decrypt(phe.EncryptedNumber(phe_public, c, exponent=0)) == m
    # a packed, aggregated vector: phe recovers the same plaintext integers as we do
    values = np.random.default_rng(11).uniform(-100, 100, 120)
    total = aggregate([encrypt(public, values), encrypt(public, values, fast=True)])
    ours = [int(_decrypt(private, c)) for c in total.ciphertexts]
    assert [phe_private.raw_decrypt(c) for c in total.ciphertexts] == ours
    # and phe's homomorphic addition of our ciphertexts
    a, b = (phe.EncryptedNumber(phe_public, int(_encrypt(public, m)), exponent=0) for m in (40, 2))
    assert phe_private.decrypt(a + b) == 42

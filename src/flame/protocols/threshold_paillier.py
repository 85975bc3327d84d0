"""Threshold Paillier: ``t`` of ``l`` decryptors must cooperate to decrypt; no one holds the key.

Used by secure aggregation (:mod:`flame.federated.secure`): every analysis node holds one share of the
private key, decrypts its *part* of an encrypted sum, and whoever asked combines ``t`` parts. Fewer than
``t`` shares reveal nothing about a plaintext (beyond what the protocol lets them decrypt).

Scheme: Shoup-style threshold Paillier with a dealer
----------------------------------------------------
This is the ``s = 1`` case of Damgård and Jurik, "A generalisation, a simplification and some
applications of Paillier's probabilistic public-key system" (PKC 2001, section 4), which applies
Shoup's threshold RSA ("Practical threshold signatures", EUROCRYPT 2000) to Paillier; see also Fouque,
Poupard and Stern, "Sharing decryption in the context of voting or lotteries" (FC 2000).

* **Keys.** ``n = p q`` with *safe* primes ``p = 2 p' + 1``, ``q = 2 q' + 1`` of equal length, ``m =
  p' q'``. The encryption key is an ordinary :class:`~flame.protocols.paillier.PublicKey` (``g = n +
  1``), so :func:`flame.protocols.paillier.encrypt` and :func:`~flame.protocols.paillier.aggregate`
  are unchanged. The secret is ``d`` with ``d = 0 mod m`` and ``d = 1 mod n`` (CRT), shared with a
  random polynomial ``f`` of degree ``t - 1`` over ``Z_{n m}``, ``f(0) = d``: decryptor ``i`` (1-based)
  gets ``s_i = f(i) mod n m``. ``Delta = l!``.
* **Verification keys.** A random square ``v`` of ``Z*_{n^2}`` and ``v_i = v^(Delta s_i) mod n^2``, public.
* **Partial decryption** of ``c`` by decryptor ``i``: ``c_i = c^(2 Delta s_i) mod n^2``.
* **Combination** of a set ``S`` of ``t`` parts: ``mu_i = Delta prod_{j in S, j != i} j / (j - i)`` (an
  integer), ``c' = prod c_i^(2 mu_i) = c^(4 Delta^2 d)`` and ``m = L(c') (4 Delta^2)^-1 mod n`` with ``L(x)
  = (x - 1) / n``. Since the exponent is a multiple of ``4 m = phi(n)`` and equals ``4 Delta^2`` modulo
  ``n``, ``c' = (1 + n)^(4 Delta^2 m) mod n^2``.
* **Proofs of correct decryption** (robustness): a non-interactive (Fiat-Shamir, SHA-256) proof of equal
  discrete logarithms, ``log_{C^4}(D^2) = log_v(v_i)``, as in Shoup and Damgård-Jurik. One proof covers
  a whole vector of ciphertexts: ``C = prod c_j^(rho_j)``, ``D = prod c_{i,j}^(rho_j)`` with 128-bit
  ``rho_j`` derived by hashing all ciphertexts and parts (the small-exponent batch test of Bellare,
  Garay and Rabin, EUROCRYPT 1998). A part that fails its proof is refused by :func:`combine`, so a
  faulty or cheating decryptor cannot make the combiner accept a wrong sum; other parts still decrypt.
  The proof is bound to a caller's ``context`` (analysis, round, field), so it cannot be replayed.

Key setup and its residual risk
-------------------------------
:func:`deal` is a *trusted dealer*: it makes the primes, the shares and the verification keys, and
drops the primes, ``m`` and ``d`` when it returns (Python cannot wipe memory: they stay in freed heap
until overwritten, and the dealer's process ends with the set-up). In the federation the dealer is the
lowest analysis node, before any data is encrypted; each share travels to its holder over the message
broker, which encrypts every message for its recipient. Residual risk: a dealer that is malicious *at
set-up* can keep the factorisation (or all shares) and later decrypt any ciphertext it obtains, i.e.
if it colludes with the aggregator. A distributed key generation without a dealer (Boneh-Franklin
shared RSA moduli with a biprimality test, or Hazay-Mikkelsen-Nof-Yung) removes this and is not
implemented. Everything after set-up tolerates up to ``t - 1`` colluding decryptors.

Performance: a decryptor does not know the factorisation, so a partial decryption is one exponentiation
modulo ``n^2`` with a ``~2 bits``-bit exponent (no CRT): about 7-8x an ordinary CRT decryption
(measured by ``benchmarks/paillier.py``: 18 ms against 2.6 ms of CPU per ciphertext for 2048 bits).

Wire format: :meth:`ThresholdPublicKey.to_payload`, :meth:`KeyShare.to_bytes` and
:meth:`PartialDecryption.to_payload`, dicts of str/int/bytes for :mod:`flame.codec`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import gmpy2
import numpy as np
import numpy.typing as npt

from flame import codec
from flame.protocols import paillier
from flame.protocols.paillier import DEFAULT_KEY_BITS, MIN_KEY_BITS, PaillierError, PublicKey, _invmod

__all__ = [
    "KeyShare",
    "PartialDecryption",
    "ProofError",
    "ThresholdPublicKey",
    "combine",
    "combine_vector",
    "deal",
    "default_threshold",
    "partial_decrypt",
    "partial_decrypt_vector",
    "verify_partial",
]

Mpz: TypeAlias = Any
FloatArray: TypeAlias = npt.NDArray[np.float64]

_RHO_BITS = 128  # batch-test exponents
_CHALLENGE_BITS = 256  # Fiat-Shamir challenge
_HIDING_BITS = 128  # statistical zero-knowledge margin of the proof's randomness
_SHARE_FORMAT = "flame.threshold_paillier.share"
_PUBLIC_FORMAT = "flame.threshold_paillier.public_key"
_PARTIAL_FORMAT = "flame.threshold_paillier.partial"
_VERSION = 1


class ProofError(PaillierError):
    """A partial decryption whose proof of correctness does not verify."""


def default_threshold(parties: int) -> int:
    """A majority of the decryptors, at least 2: ``max(2, parties // 2 + 1)``."""
    return max(2, parties // 2 + 1)


def _check_threshold(parties: int, threshold: int) -> None:
    if isinstance(parties, bool) or not isinstance(parties, int) or parties < 2:
        raise PaillierError(f"threshold decryption needs at least 2 decryptors, got {parties!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise PaillierError(f"the threshold must be an int, got {type(threshold).__name__}")
    if not 2 <= threshold <= parties or 2 * threshold <= parties:
        raise PaillierError(
            f"threshold {threshold} of {parties} decryptors: it must be a majority (more than half, so "
            "two disjoint groups can never both decrypt) and at least 2, at most the number of decryptors"
        )


def _sieve_primes(limit: int) -> npt.NDArray[np.int64]:
    flags = np.ones(limit, dtype=bool)
    flags[:3] = False
    flags[4::2] = False
    for k in range(3, int(limit**0.5) + 1, 2):
        if flags[k]:
            flags[k * k :: 2 * k] = False
    return np.flatnonzero(flags)[1:].astype(np.int64)  # odd primes


_SIEVE = _sieve_primes(1 << 16)
_WINDOW = 1 << 14


def _safe_prime(bits: int) -> Mpz:
    """A random safe prime ``p = 2 p' + 1`` of exactly ``bits`` bits (``p'`` prime), from :mod:`secrets`.

    Candidates ``p' = p0 + 2 k`` in a window are sieved by the odd primes below 2^16 for both ``p'``
    and ``2 p' + 1`` (a prime ``r`` divides ``2 p' + 1`` when ``p' = (r - 1) / 2 mod r``); survivors get
    Miller-Rabin on both.
    """
    ks = np.arange(_WINDOW, dtype=np.int64)
    while True:
        start = gmpy2.mpz(secrets.randbits(bits - 1)) | (gmpy2.mpz(3) << (bits - 3)) | 1
        alive = np.ones(_WINDOW, dtype=bool)
        for r in _SIEVE.tolist():
            residue = int(start % r)
            inv2 = (r + 1) // 2  # 2^-1 mod r
            for bad in (0, (r - 1) // 2):
                k0 = (bad - residue) * inv2 % r  # start + 2 k = bad (mod r)
                alive[k0::r] = False
        for k in ks[alive].tolist():
            sophie = start + 2 * k
            p = 2 * sophie + 1
            if (
                p.bit_length() == bits
                and gmpy2.powmod(2, p - 1, p) == 1
                and gmpy2.is_prime(sophie, 40)
                and gmpy2.is_prime(p, 40)
            ):
                return p


def _int_bytes(value: int | Mpz) -> bytes:
    value = int(value)
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _hash_ints(domain: bytes, *parts: bytes | int | Mpz) -> bytes:
    """SHA-256 over length-prefixed parts (ints big-endian): unambiguous."""
    digest = hashlib.sha256(domain)
    for part in parts:
        raw = part if isinstance(part, bytes) else _int_bytes(part)
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return digest.digest()


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------


class ThresholdPublicKey:
    """The public side: the Paillier key, ``t`` of ``l``, ``Delta = l!``, ``v`` and the ``v_i``."""

    __slots__ = ("_v", "_vks", "delta", "parties", "public_key", "threshold")

    def __init__(
        self, public_key: PublicKey, threshold: int, parties: int, v: int, verification_keys: Sequence[int]
    ) -> None:
        _check_threshold(parties, threshold)
        if len(verification_keys) != parties:
            raise PaillierError(f"{len(verification_keys)} verification keys for {parties} decryptors")
        nsq = public_key._nsq
        for value in (v, *verification_keys):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 < value < nsq:
                raise PaillierError("a verification key must be an int in (1, n^2)")
        self.public_key = public_key
        self.threshold = threshold
        self.parties = parties
        self.delta = math.factorial(parties)
        self._v = gmpy2.mpz(v)
        self._vks = tuple(gmpy2.mpz(x) for x in verification_keys)

    @property
    def key_id(self) -> bytes:
        """The id of the Paillier public key."""
        return self.public_key.key_id

    def verification_key(self, index: int) -> int:
        """``v_i`` of decryptor ``index`` (1-based)."""
        return int(self._vks[self._index(index) - 1])

    def _index(self, index: object) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= self.parties:
            raise PaillierError(f"decryptor index {index!r} is not in [1, {self.parties}]")
        return index

    def to_payload(self) -> dict[str, Any]:
        """A dict of str/int/bytes for :func:`flame.codec.encode`."""
        width = self.public_key.ciphertext_bytes
        return {
            "format": _PUBLIC_FORMAT,
            "version": _VERSION,
            "public_key": self.public_key.to_bytes(),
            "threshold": self.threshold,
            "parties": self.parties,
            "v": int(self._v).to_bytes(width, "big"),
            "verification_keys": b"".join(int(x).to_bytes(width, "big") for x in self._vks),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ThresholdPublicKey:
        """The key :meth:`to_payload` made; raises :class:`PaillierError` on malformed data."""
        fields = {"format", "version", "public_key", "threshold", "parties", "v", "verification_keys"}
        if not isinstance(payload, Mapping) or set(payload) != fields or payload["format"] != _PUBLIC_FORMAT:
            raise PaillierError(f"not a {_PUBLIC_FORMAT} payload")
        if payload["version"] != _VERSION:
            raise PaillierError(f"unsupported {_PUBLIC_FORMAT} version {payload['version']!r}")
        public_key = PublicKey.from_bytes(payload["public_key"])
        width = public_key.ciphertext_bytes
        blob, v = payload["verification_keys"], payload["v"]
        if not isinstance(blob, bytes) or not isinstance(v, bytes) or len(blob) % width or len(v) != width:
            raise PaillierError(f"malformed {_PUBLIC_FORMAT} payload: verification keys")
        vks = [int.from_bytes(blob[i : i + width], "big") for i in range(0, len(blob), width)]
        return cls(public_key, payload["threshold"], payload["parties"], int.from_bytes(v, "big"), vks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThresholdPublicKey) and self.to_payload() == other.to_payload()

    def __hash__(self) -> int:
        return hash((self.key_id, self.threshold, self.parties))

    def __repr__(self) -> str:
        return (
            f"ThresholdPublicKey(bits={self.public_key.bits}, threshold={self.threshold}, "
            f"parties={self.parties}, key_id={self.key_id.hex()})"
        )


class KeyShare:
    """Decryptor ``index``'s secret share ``s_i`` with the public key. Keep it in its node's storage."""

    __slots__ = ("_s", "index", "public")

    def __init__(self, public: ThresholdPublicKey, index: int, secret: int) -> None:
        self.public = public
        self.index = public._index(index)
        if isinstance(secret, bool) or not isinstance(secret, int) or secret < 0:
            raise PaillierError("a key share is a non-negative int")
        self._s = gmpy2.mpz(secret)
        nsq = public.public_key._nsq
        if gmpy2.powmod(public._v, public.delta * self._s, nsq) != public._vks[self.index - 1]:
            raise PaillierError(f"key share {self.index} does not match its verification key")

    def to_bytes(self) -> bytes:
        """The share in :mod:`flame.codec`'s format: index, ``s_i`` and the public key."""
        body = {
            "format": _SHARE_FORMAT,
            "version": _VERSION,
            "index": self.index,
            "secret": _int_bytes(self._s),
            "public": self.public.to_payload(),
        }
        return codec.encode(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        """The share :meth:`to_bytes` wrote."""
        try:
            body = codec.decode(bytes(data))
        except Exception as exc:  # any decoding failure is a malformed share
            raise PaillierError(f"malformed key share: {exc}") from exc
        if not isinstance(body, Mapping) or body.get("format") != _SHARE_FORMAT:
            raise PaillierError(f"not a {_SHARE_FORMAT}")
        if body.get("version") != _VERSION or not isinstance(body.get("secret"), bytes):
            raise PaillierError(f"unsupported or malformed {_SHARE_FORMAT}")
        public = ThresholdPublicKey.from_payload(body["public"])
        return cls(public, body["index"], int.from_bytes(body["secret"], "big"))

    def __repr__(self) -> str:
        return f"KeyShare(index={self.index}, of={self.public!r})"


def deal(
    parties: int, threshold: int | None = None, bits: int = DEFAULT_KEY_BITS
) -> tuple[ThresholdPublicKey, list[KeyShare]]:
    """A trusted dealer: a new ``bits``-bit key shared ``threshold``-of-``parties``; the primes are dropped.

    ``threshold`` defaults to :func:`default_threshold`. Safe primes take a few seconds each at 1024
    bits (2048-bit keys), tens of seconds at 1536 bits.
    """
    threshold = default_threshold(parties) if threshold is None else threshold
    _check_threshold(parties, threshold)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < MIN_KEY_BITS or bits % 2:
        raise PaillierError(f"the key size must be even and at least {MIN_KEY_BITS} bits, got {bits!r}")
    half = bits // 2
    while True:
        p, q = _safe_prime(half), _safe_prime(half)
        if p != q and (p * q).bit_length() == bits and abs(p - q) >> (half - 100):
            return _deal(int(p), int(q), parties, threshold)


def _deal(p: int, q: int, parties: int, threshold: int) -> tuple[ThresholdPublicKey, list[KeyShare]]:
    """Share the key of safe primes ``p``, ``q`` (tests pass known primes; :func:`deal` random ones)."""
    _check_threshold(parties, threshold)
    if not all(gmpy2.is_prime(x) and gmpy2.is_prime((x - 1) // 2) for x in (p, q)) or p == q:
        raise PaillierError("threshold Paillier needs two different safe primes")
    n = gmpy2.mpz(p) * q
    nsq = n * n
    m = gmpy2.mpz((p - 1) // 2) * ((q - 1) // 2)
    nm = n * m
    d = m * _invmod(m, n)  # d = 0 mod m, d = 1 mod n
    coefficients = [d] + [gmpy2.mpz(secrets.randbelow(int(nm))) for _ in range(threshold - 1)]
    shares = []
    for i in range(1, parties + 1):
        value = gmpy2.mpz(0)
        for a in reversed(coefficients):  # Horner
            value = (value * i + a) % nm
        shares.append(value)
    public_key = PublicKey(int(n)).with_fast_base()
    delta = math.factorial(parties)
    v = gmpy2.powmod(paillier._random_unit(n), 2, nsq)
    vks = [int(gmpy2.powmod(v, delta * s, nsq)) for s in shares]
    public = ThresholdPublicKey(public_key, threshold, parties, int(v), vks)
    result = [KeyShare(public, i + 1, int(s)) for i, s in enumerate(shares)]
    del d, m, nm, coefficients, shares
    return public, result


# --------------------------------------------------------------------------------------------
# partial decryption, proofs, combination
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialDecryption:
    """Decryptor ``index``'s parts ``c_i = c^(2 Delta s_i)`` of some ciphertexts, with one proof."""

    index: int
    parts: tuple[int, ...]
    challenge: int
    response: int

    def to_payload(self) -> dict[str, Any]:
        """A dict of str/int/bytes for :func:`flame.codec.encode` (parts as length-prefixed bytes)."""
        return {
            "format": _PARTIAL_FORMAT,
            "version": _VERSION,
            "index": self.index,
            "parts": [_int_bytes(x) for x in self.parts],
            "challenge": _int_bytes(self.challenge),
            "response": _int_bytes(self.response),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PartialDecryption:
        """The partial decryption :meth:`to_payload` made (its proof is checked by :func:`combine`)."""
        fields = {"format", "version", "index", "parts", "challenge", "response"}
        if not isinstance(payload, Mapping) or set(payload) != fields or payload["format"] != _PARTIAL_FORMAT:
            raise PaillierError(f"not a {_PARTIAL_FORMAT} payload")
        parts, index = payload["parts"], payload["index"]
        if (
            payload["version"] != _VERSION
            or not isinstance(index, int)
            or not isinstance(parts, (list, tuple))
            or not all(isinstance(x, bytes) for x in (*parts, payload["challenge"], payload["response"]))
        ):
            raise PaillierError(f"malformed {_PARTIAL_FORMAT} payload")
        return cls(
            index,
            tuple(int.from_bytes(x, "big") for x in parts),
            int.from_bytes(payload["challenge"], "big"),
            int.from_bytes(payload["response"], "big"),
        )


def _batch(
    public: ThresholdPublicKey, index: int, ciphertexts: Sequence[Mpz], parts: Sequence[Mpz], context: bytes
) -> tuple[Mpz, Mpz]:
    """``C = prod c_j^rho_j`` and ``D = prod c_{i,j}^rho_j`` with ``rho_j`` hashed from everything."""
    nsq = public.public_key._nsq
    seed = _hash_ints(b"flame-tp-batch", context, public.key_id, index, *ciphertexts, *parts)
    rhos = [
        int.from_bytes(_hash_ints(b"flame-tp-rho", seed, j)[: _RHO_BITS // 8], "big") | 1
        for j in range(len(ciphertexts))
    ]
    return _multi_exp(ciphertexts, rhos, nsq), _multi_exp(parts, rhos, nsq)


def _multi_exp(bases: Sequence[Mpz], exponents: Sequence[int], modulus: Mpz, window: int = 8) -> Mpz:
    """``prod bases[j]^exponents[j] mod modulus`` by Pippenger's bucket method.

    Per ``window`` bits of the exponents: one multiplication per base into its bucket, two per bucket
    to sum them; about ten times fewer multiplications than one ``powmod`` per base for 128-bit
    exponents and thousands of bases.
    """
    if len(bases) < 32:  # too few bases to pay for the buckets
        acc = gmpy2.mpz(1)
        for base, exponent in zip(bases, exponents, strict=True):
            acc = acc * gmpy2.powmod(base, exponent, modulus) % modulus
        return acc
    mask = (1 << window) - 1
    top = max(exponents, default=0).bit_length()
    acc = gmpy2.mpz(1)
    for shift in range((top - 1) // window * window, -1, -window):
        acc = gmpy2.powmod(acc, 1 << window, modulus)
        buckets: list[Mpz | None] = [None] * (mask + 1)
        for base, exponent in zip(bases, exponents, strict=True):
            digit = (exponent >> shift) & mask
            if digit:
                held = buckets[digit]
                buckets[digit] = base if held is None else held * base % modulus
        running: Mpz | None = None
        total = gmpy2.mpz(1)
        for digit in range(mask, 0, -1):
            held = buckets[digit]
            if held is not None:
                running = held if running is None else running * held % modulus
            if running is not None:
                total = total * running % modulus
        acc = acc * total % modulus
    return acc


def _challenge(
    public: ThresholdPublicKey, index: int, c4: Mpz, d2: Mpz, a: Mpz, b: Mpz, context: bytes
) -> int:
    vi = public._vks[index - 1]
    digest = _hash_ints(b"flame-tp-proof", context, public.key_id, index, public._v, vi, c4, d2, a, b)
    return int.from_bytes(digest, "big") >> (256 - _CHALLENGE_BITS)


def _check_ciphertexts(public: ThresholdPublicKey, ciphertexts: Iterable[int | Mpz]) -> list[Mpz]:
    nsq = public.public_key._nsq
    out = [gmpy2.mpz(c) for c in ciphertexts]
    if any(not 0 < c < nsq or gmpy2.gcd(c, public.public_key._n) != 1 for c in out):
        raise PaillierError("a ciphertext is not a unit in (0, n^2)")
    return out


def partial_decrypt(
    share: KeyShare, ciphertexts: Sequence[int | Mpz], context: bytes = b""
) -> PartialDecryption:
    """``c^(2 Delta s_i)`` of each ciphertext and one proof of correctness bound to ``context``."""
    public = share.public
    nsq = public.public_key._nsq
    cts = _check_ciphertexts(public, ciphertexts)
    exponent = 2 * public.delta * share._s
    parts = [gmpy2.powmod(c, exponent, nsq) for c in cts]
    big_c, big_d = _batch(public, share.index, cts, parts, context)
    c4, d2 = gmpy2.powmod(big_c, 4, nsq), gmpy2.powmod(big_d, 2, nsq)
    secret = public.delta * share._s
    r = gmpy2.mpz(
        secrets.randbits(int(nsq.bit_length()) + public.delta.bit_length() + _CHALLENGE_BITS + _HIDING_BITS)
    )
    a, b = gmpy2.powmod(c4, r, nsq), gmpy2.powmod(public._v, r, nsq)
    e = _challenge(public, share.index, c4, d2, a, b, context)
    z = r + e * secret
    return PartialDecryption(share.index, tuple(int(x) for x in parts), e, int(z))


def verify_partial(
    public: ThresholdPublicKey,
    ciphertexts: Sequence[int | Mpz],
    partial: PartialDecryption,
    context: bytes = b"",
) -> None:
    """Raise :class:`ProofError` unless ``partial`` is decryptor ``partial.index``'s correct part."""
    index = public._index(partial.index)
    nsq = public.public_key._nsq
    cts = _check_ciphertexts(public, ciphertexts)
    if len(partial.parts) != len(cts):
        raise ProofError(f"decryptor {index} sent {len(partial.parts)} parts for {len(cts)} ciphertexts")
    parts = _check_ciphertexts(public, partial.parts)
    big_c, big_d = _batch(public, index, cts, parts, context)
    c4, d2 = gmpy2.powmod(big_c, 4, nsq), gmpy2.powmod(big_d, 2, nsq)
    e, z = gmpy2.mpz(partial.challenge), gmpy2.mpz(partial.response)
    vi = public._vks[index - 1]
    try:
        a = gmpy2.powmod(c4, z, nsq) * gmpy2.invert(gmpy2.powmod(d2, e, nsq), nsq) % nsq
        b = gmpy2.powmod(public._v, z, nsq) * gmpy2.invert(gmpy2.powmod(vi, e, nsq), nsq) % nsq
    except ZeroDivisionError as exc:
        raise ProofError(f"decryptor {index}'s proof is malformed") from exc
    if e != _challenge(public, index, c4, d2, a, b, context):
        raise ProofError(
            f"decryptor {index}'s partial decryption does not match its verification key: a wrong or "
            "corrupted share, or parts of other ciphertexts"
        )


def _lagrange(indices: Sequence[int], i: int, delta: int) -> int:
    """``Delta prod_{j != i} j / (j - i)``: an integer for ``Delta = l!``."""
    numerator, denominator = delta, 1
    for j in indices:
        if j != i:
            numerator *= j
            denominator *= j - i
    if numerator % denominator:
        raise PaillierError("Lagrange coefficient is not an integer: indices above the number of parties")
    return numerator // denominator


def combine(
    public: ThresholdPublicKey,
    ciphertexts: Sequence[int | Mpz],
    partials: Iterable[PartialDecryption],
    context: bytes = b"",
    *,
    verify: bool = True,
) -> list[int]:
    """The plaintexts of ``ciphertexts`` from partial decryptions of at least ``threshold`` decryptors.

    Each part's proof is checked; parts that fail are skipped (and named in the error if fewer than
    ``threshold`` good ones remain). Raises :class:`PaillierError` without enough good parts.
    ``verify=False`` skips the proofs of parts the caller verified already (:func:`verify_partial`).
    """
    cts = _check_ciphertexts(public, ciphertexts)
    good: dict[int, PartialDecryption] = {}
    bad: list[str] = []
    for partial in partials:
        if len(good) >= public.threshold:
            break
        if partial.index in good:
            continue
        try:
            if verify:
                verify_partial(public, cts, partial, context)
            elif len(partial.parts) != len(cts):
                raise ProofError(f"decryptor {partial.index} sent parts of other ciphertexts")
        except PaillierError as exc:
            bad.append(str(exc))
            continue
        good[partial.index] = partial
    if len(good) < public.threshold:
        detail = f"; refused: {'; '.join(bad)}" if bad else ""
        raise PaillierError(
            f"{len(good)} valid partial decryption(s), {public.threshold} needed to decrypt{detail}"
        )
    n, nsq = public.public_key._n, public.public_key._nsq
    indices = sorted(good)
    acc = [gmpy2.mpz(1)] * len(cts)
    for i in indices:
        mu = 2 * _lagrange(indices, i, public.delta)
        for j, part in enumerate(good[i].parts):
            base = gmpy2.mpz(part) if mu >= 0 else gmpy2.invert(part, nsq)
            acc[j] = acc[j] * gmpy2.powmod(base, abs(mu), nsq) % nsq
    inverse = _invmod(4 * public.delta * public.delta, n)
    return [int((x - 1) // n * inverse % n) for x in acc]


def partial_decrypt_vector(
    share: KeyShare, vector: paillier.EncryptedVector, context: bytes = b""
) -> PartialDecryption:
    """:func:`partial_decrypt` of every ciphertext of an encrypted vector."""
    if vector.public_key.n != share.public.public_key.n:
        raise PaillierError("the vector is encrypted under another key than this share's")
    return partial_decrypt(share, vector._cts, context)


def combine_vector(
    public: ThresholdPublicKey,
    vector: paillier.EncryptedVector,
    partials: Iterable[PartialDecryption],
    context: bytes = b"",
    *,
    verify: bool = True,
) -> FloatArray:
    """The float64 sum that ``vector`` encrypts, from ``threshold`` partial decryptions (see :func:`combine`)."""
    if vector.public_key.n != public.public_key.n:
        raise PaillierError("the vector is encrypted under another key than this threshold key")
    plaintexts = combine(public, vector._cts, partials, context, verify=verify)
    sums = paillier._unpack(plaintexts, vector.slots, vector.layout.slot_bits)[: vector.length]
    return vector.layout.decode(sums, vector.contributors)

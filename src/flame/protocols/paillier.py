"""Paillier encryption for secure aggregation: keys, packed fixed-point vectors, encrypted sums.

The analysis nodes encrypt their vectors under the analysis' public key and the aggregator adds the
ciphertexts without decrypting (:func:`aggregate`). In the federation nobody holds the private key:
it is shared among the analysis nodes (:mod:`flame.protocols.threshold_paillier`), which decrypt
only sums they checked (:mod:`flame.federated.decryptor`; threat model in ``docs/threat-model.md``).
:class:`PrivateKey` and :func:`decrypt` are the single-key scheme the threshold one builds on.

Scheme (Paillier 1999, with g = n + 1 as in python-paillier)
------------------------------------------------------------
* Keys: ``n = p q`` with ``p != q`` primes of equal length, ``n`` exactly ``bits`` long (3072 by
  default, 2048 allowed, shorter refused). Primes come from :mod:`secrets`: a random odd candidate
  with its two top bits set, then ``gmpy2.next_prime``. ``|p - q| > 2^(bits/2 - 100)`` (FIPS 186).
* Encryption of an integer ``0 <= m < n``: ``c = (1 + m n) r^n mod n^2`` with a fresh ``r`` from
  :mod:`secrets` for every ciphertext (reusing ``r`` would reveal differences of plaintexts).
* Decryption by CRT, as python-paillier: ``m_p = L_p(c^(p-1) mod p^2) h_p mod p`` with
  ``L_p(x) = (x - 1) / p`` and ``h_p = L_p((n+1)^(p-1) mod p^2)^-1 mod p``, the same modulo ``q``,
  then ``m = m_q + ((m_p - m_q) q^-1 mod p) q``. Decryption is not constant-time (like phe's).
* Addition: ``E(a) E(b) mod n^2 = E(a + b)`` (:func:`_enc_add`).

Fast encryption (opt-in, ``fast=True``): an extra assumption
------------------------------------------------------------
``r^n`` (one 2048-bit exponentiation modulo ``n^2``) is replaced by ``h^s mod n^2``, where ``h = x^n
mod n^2`` for a random ``x`` is made once per key by the key holder and travels with the public key,
and ``s`` is a fresh random :data:`FAST_EXPONENT_BITS`-bit (256-bit) exponent. A fixed-base table of
``h^(j 2^(8i))`` (32 rows of 256 entries, ~4 MB for a 2048-bit key, built once per key and process)
makes ``h^s`` 32 multiplications instead of ~2,400. This is the "short randomness" idea of the
faster variant of Damgård, Jurik and Nielsen (Int. J. Inf. Secur. 2010; implemented e.g. in the ABY
framework's ``djn.cpp`` and in SecretFlow HEU), who use ``h = -x^2`` and a ``ceil(k/2)``-bit
exponent (1024 bits for a 2048-bit key: ours is shorter). Every ciphertext is still a valid Paillier
ciphertext (phe decrypts it), but its security does **not** follow from the decisional composite
residuosity (DCR) assumption alone: it also needs that ``h^s`` for a short random ``s`` cannot be
told apart from a uniformly random ``n``-th residue (a short-exponent indistinguishability
assumption in a group of unknown order). The best attack known on the exponent, Pollard's lambda
method, costs about ``2^(t/2)`` operations for a ``t``-bit exponent: 256 bits give 2^128, at least
the strength of a 3072-bit modulus. The textbook encryption (the default) rests on DCR only.

Fixed-point encoding and packing (:class:`Layout`)
-------------------------------------------------
A value ``v`` in ``[-B, B]`` becomes the integer ``round(v 2^f) + B 2^f``, in ``[0, 2 B 2^f]``: no
sign bit and no per-value exponent, so the metadata says nothing about a value. Values outside
``[-B, B]``, NaN and infinities raise :class:`ValueRangeError`. Each slot is wide enough for the sum
of ``K`` contributions (``bit_length(K 2 B 2^f)`` bits), and as many slots as fit into ``bits - 1``
bits share one plaintext (the one-bit margin keeps every plaintext below ``n``). The aggregator
refuses to add more than ``K`` contributions (:class:`ContributorLimitError`); decryption removes
``contributors * B 2^f`` per slot. Defaults: ``f = 20`` (resolution 2^-20, about 1e-6), ``B = 256``,
``K = 255``: 37-bit slots, 55 per 2048-bit plaintext (83 per 3072-bit), 512 bytes per ciphertext,
so about 9.3 bytes per value on the wire with a 2048-bit key. ``K = 256`` would need a 38th bit.

Wire format (fixed-width binary, big-endian, never decimal text)
----------------------------------------------------------------
* Public key: ``b"FLPK"``, version, key id (SHA-256 of ``n``'s bytes, first 16 bytes), byte length
  of ``n``, flag "has h", then ``n`` and ``h`` (as wide as ``n^2``).
* Private key: ``b"FLSK"``, version, key id, byte length of a prime, ``p``, ``q``, then the public
  key's bytes. Never store or send it in a federation: use threshold shares there.
* Encrypted vector: ``b"FLPV"``, version, key id, layout (``f``, ``B``, ``K``, slots), length,
  contributors, ciphertext width, then each ciphertext as wide as ``n^2`` (512 bytes for 2048 bits).

``to_payload()`` gives the same as a dict of str/int/bytes that :mod:`flame.codec` carries.

Interoperability: ``phe.PaillierPublicKey(n)`` encrypts raw integers that :func:`_decrypt` decrypts,
and ``phe.PaillierPrivateKey(phe_public_key, p, q).raw_decrypt`` decrypts :func:`_encrypt`'s
ciphertexts (``EncryptedNumber(phe_public_key, c, exponent=0)`` for phe's number API).

Caveats for the protocol layer: the contributor count in a vector is not authenticated (whoever
decrypts must count contributors itself), and a decryptor that decrypts whatever it is sent is a
decryption oracle for the aggregator: :mod:`flame.federated.decryptor` decrypts only sums of
individually committed ciphertexts, under the rules stated there.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeAlias

import gmpy2
import numpy as np
import numpy.typing as npt

from flame.errors import PayloadError

__all__ = [
    "DEFAULT_KEY_BITS",
    "DEFAULT_LAYOUT",
    "FAST_EXPONENT_BITS",
    "MIN_KEY_BITS",
    "ContributorLimitError",
    "EncryptedVector",
    "Layout",
    "PaillierError",
    "PrivateKey",
    "PublicKey",
    "ValueRangeError",
    "aggregate",
    "decrypt",
    "encrypt",
    "generate_keypair",
]

#: gmpy2.mpz. gmpy2 ships no type information, so mpz values are ``Any`` to mypy.
Mpz: TypeAlias = Any
FloatArray: TypeAlias = npt.NDArray[np.float64]
_U64Array: TypeAlias = npt.NDArray[np.uint64]

DEFAULT_KEY_BITS = 3072
"""The modulus size :func:`generate_keypair` uses by default (128-bit security)."""
MIN_KEY_BITS = 2048
"""Shorter moduli are refused."""
FAST_EXPONENT_BITS = 256
"""Bits of the random exponent ``s`` of fast encryption (``h^s``): 2 x 128-bit security."""

_WINDOW = 8  # bits per row of the fixed-base table: one random byte of s picks one entry per row
_MARGIN_BITS = 1  # plaintexts use at most bits(n) - 1 bits, so they stay below n
_KEY_ID_BYTES = 16
_VERSION = 1
_PUBLIC_HEADER = struct.Struct(">4sB16sHB")  # magic, version, key id, bytes of n, has h
_PRIVATE_HEADER = struct.Struct(">4sB16sH")  # magic, version, key id, bytes of a prime
# magic, version, key id, frac bits, bound, max contributors, slots, length, contributors, ct bytes
_VECTOR_HEADER = struct.Struct(">4sB16sBQIHQIH")
_PUBLIC_MAGIC, _PRIVATE_MAGIC, _VECTOR_MAGIC = b"FLPK", b"FLSK", b"FLPV"
_PUBLIC_FORMAT = "flame.paillier.public_key"
_VECTOR_FORMAT = "flame.paillier.encrypted_vector"
_PUBLIC_FIELDS = {"format", "version", "key_id", "n", "h"}
_VECTOR_FIELDS = {
    "format",
    "version",
    "key_id",
    "layout",
    "length",
    "contributors",
    "ciphertext_bytes",
    "ciphertexts",
}


class PaillierError(PayloadError, ValueError):
    """A key, value, ciphertext or serialised form that Paillier encryption cannot use."""


class ValueRangeError(PaillierError):
    """A value outside the layout's range ``[-bound, bound]``, or NaN/infinite."""


class ContributorLimitError(PaillierError):
    """More contributions to one encrypted vector than its layout has headroom for."""


# --------------------------------------------------------------------------------------------
# number theory and raw (single-integer) operations
# --------------------------------------------------------------------------------------------


def _invmod(a: int | Mpz, m: int | Mpz) -> int:
    """The inverse of ``a`` modulo ``m`` (gmpy2.invert); raises :class:`PaillierError` if none exists."""
    try:
        return int(gmpy2.invert(a, m))
    except ZeroDivisionError as exc:
        raise PaillierError("no modular inverse: the number and the modulus share a factor") from exc


def _random_unit(n: Mpz) -> Mpz:
    """A uniformly random element of Z*_n, from :mod:`secrets`."""
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(n)))
        if r > 0 and gmpy2.gcd(r, n) == 1:
            return r


def _random_prime(bits: int) -> Mpz:
    """A random prime of exactly ``bits`` bits with its two top bits set."""
    while True:
        candidate = gmpy2.mpz(secrets.randbits(bits)) | (gmpy2.mpz(3) << (bits - 2)) | 1
        prime = gmpy2.next_prime(candidate)
        if prime.bit_length() == bits:
            return prime


def _encrypt(public_key: PublicKey, plaintext: int | Mpz, *, fast: bool = False) -> Mpz:
    """``(1 + m n) r^n mod n^2`` with a fresh random ``r`` (``fast``: ``h^s``, see the module docstring)."""
    if not 0 <= plaintext < public_key._n:
        raise PaillierError(f"a Paillier plaintext must be in [0, n), got {plaintext.bit_length()} bits")
    obfuscator = (
        public_key._fast_obfuscator()
        if fast
        else gmpy2.powmod(_random_unit(public_key._n), public_key._n, public_key._nsq)
    )
    return (gmpy2.mpz(plaintext) * public_key._n + 1) * obfuscator % public_key._nsq


def _decrypt(private_key: PrivateKey, ciphertext: int | Mpz) -> Mpz:
    """The plaintext ``m`` in ``[0, n)`` of one ciphertext, by CRT."""
    k = private_key
    if not 0 < ciphertext < k.public_key._nsq:
        raise PaillierError("a Paillier ciphertext must be in (0, n^2)")
    mp = (gmpy2.powmod(ciphertext, k._p - 1, k._psq) - 1) // k._p * k._hp % k._p
    mq = (gmpy2.powmod(ciphertext, k._q - 1, k._qsq) - 1) // k._q * k._hq % k._q
    return mq + (mp - mq) * k._q_inv_p % k._p * k._q


def _enc_add(public_key: PublicKey, c1: int | Mpz, c2: int | Mpz) -> Mpz:
    """``c1 c2 mod n^2``: the encryption of the sum of the two plaintexts."""
    return gmpy2.mpz(c1) * c2 % public_key._nsq


def _key_id(n: int) -> bytes:
    """The first 16 bytes of SHA-256 over ``n`` (big-endian, minimal length)."""
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).digest()[:_KEY_ID_BYTES]


def _require_int(value: object, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PaillierError(f"{what} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        limit = f"in [{low}, {high}]" if high is not None else f"at least {low}"
        raise PaillierError(f"{what} must be {limit}, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------


class PublicKey:
    """A Paillier public key: the modulus ``n`` (``g = n + 1``) and the fast-encryption base ``h``.

    ``h`` (an ``n``-th residue ``x^n mod n^2``) is optional: without it only textbook encryption works.
    """

    __slots__ = ("_h", "_key_id", "_n", "_nsq", "_table")

    def __init__(self, n: int, h: int | None = None) -> None:
        n = _require_int(n, "the modulus n", 3)
        if n.bit_length() < MIN_KEY_BITS:
            raise PaillierError(
                f"a {n.bit_length()}-bit Paillier modulus is too short: use {DEFAULT_KEY_BITS} bits "
                f"(the default) or at least {MIN_KEY_BITS}"
            )
        if n % 2 == 0:
            raise PaillierError("a Paillier modulus n = p q is odd")
        self._n = gmpy2.mpz(n)
        self._nsq = self._n * self._n
        self._key_id = _key_id(n)
        self._table: list[list[Mpz]] | None = None
        self._h: Mpz | None = None
        if h is not None:
            h = _require_int(h, "the fast-encryption base h", 2)
            if h >= self._nsq or gmpy2.gcd(h, self._n) != 1 or gmpy2.powmod(h, 2, self._nsq) == 1:
                raise PaillierError("the fast-encryption base h must be a unit modulo n^2 of order above 2")
            self._h = gmpy2.mpz(h)

    @property
    def n(self) -> int:
        """The modulus."""
        return int(self._n)

    @property
    def nsquare(self) -> int:
        """``n^2``, the ciphertext modulus."""
        return int(self._nsq)

    @property
    def h(self) -> int | None:
        """The fast-encryption base ``x^n mod n^2``, or None."""
        return None if self._h is None else int(self._h)

    @property
    def bits(self) -> int:
        """The bit length of ``n``."""
        return int(self._n.bit_length())

    @property
    def key_id(self) -> bytes:
        """SHA-256 of ``n``, truncated to 16 bytes: names the key in every serialised vector."""
        return self._key_id

    @property
    def ciphertext_bytes(self) -> int:
        """The fixed width of one serialised ciphertext (the byte length of ``n^2``)."""
        return (int(self._nsq.bit_length()) + 7) // 8

    def with_fast_base(self) -> PublicKey:
        """This key with a new random fast-encryption base ``h = x^n mod n^2``."""
        return PublicKey(self.n, int(gmpy2.powmod(_random_unit(self._n), self._n, self._nsq)))

    def encrypt(
        self,
        values: npt.ArrayLike,
        layout: Layout | None = None,
        *,
        fast: bool = False,
        processes: int | None = None,
    ) -> EncryptedVector:
        """Encrypt a float vector: see :func:`encrypt`."""
        return encrypt(self, values, layout, fast=fast, processes=processes)

    def _fast_obfuscator(self) -> Mpz:
        """``h^s mod n^2`` for a fresh random 256-bit ``s``, from the fixed-base table."""
        rows = self._fixed_base_table()
        acc: Mpz = None
        for row, digit in zip(rows, secrets.token_bytes(len(rows)), strict=True):
            if digit:
                acc = row[digit] if acc is None else acc * row[digit] % self._nsq
        return gmpy2.mpz(1) if acc is None else acc

    def _fixed_base_table(self) -> list[list[Mpz]]:
        """``rows[i][j] = h^(j 2^(8 i)) mod n^2``, built on first use."""
        if self._table is None:
            if self._h is None:
                raise PaillierError(
                    "this public key has no fast-encryption base h: encrypt with fast=False, or use "
                    "key.with_fast_base() (keys from generate_keypair() have one)"
                )
            rows: list[list[Mpz]] = []
            base = self._h
            for _ in range(-(-FAST_EXPONENT_BITS // _WINDOW)):
                row = [gmpy2.mpz(1), base]
                for _ in range(2, 1 << _WINDOW):
                    row.append(row[-1] * base % self._nsq)
                rows.append(row)
                base = row[-1] * base % self._nsq
            self._table = rows
        return self._table

    def to_bytes(self) -> bytes:
        """Fixed-width binary: header, ``n``, and ``h`` if present."""
        n_bytes = (self.bits + 7) // 8
        head = _PUBLIC_HEADER.pack(_PUBLIC_MAGIC, _VERSION, self._key_id, n_bytes, self._h is not None)
        tail = b"" if self._h is None else int(self._h).to_bytes(self.ciphertext_bytes, "big")
        return head + self.n.to_bytes(n_bytes, "big") + tail

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> PublicKey:
        """The key :meth:`to_bytes` wrote; raises :class:`PaillierError` on malformed data."""
        data = bytes(data)
        _, _, key_id, n_bytes, has_h = _unpack_header(_PUBLIC_HEADER, data, _PUBLIC_MAGIC, "public key")
        n = int.from_bytes(data[_PUBLIC_HEADER.size : _PUBLIC_HEADER.size + n_bytes], "big")
        nsq_bytes = ((n * n).bit_length() + 7) // 8
        expected = _PUBLIC_HEADER.size + n_bytes + (nsq_bytes if has_h else 0)
        if len(data) != expected or has_h not in (0, 1):
            raise PaillierError(f"malformed Paillier public key: {len(data)} bytes, expected {expected}")
        h = int.from_bytes(data[_PUBLIC_HEADER.size + n_bytes :], "big") if has_h else None
        key = cls(n, h)
        _check_key_id(key, key_id)
        return key

    def to_payload(self) -> dict[str, Any]:
        """A dict of str/int/bytes for :func:`flame.codec.encode`."""
        return {
            "format": _PUBLIC_FORMAT,
            "version": _VERSION,
            "key_id": self._key_id,
            "n": self.n,
            "h": self.h,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PublicKey:
        """The key :meth:`to_payload` made."""
        _check_payload(payload, _PUBLIC_FORMAT, _PUBLIC_FIELDS)
        key = cls(payload["n"], payload["h"])
        _check_key_id(key, payload["key_id"])
        return key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self._n == other._n and self._h == other._h

    def __hash__(self) -> int:
        return hash((self._key_id, self.h))

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, key_id={self._key_id.hex()}, fast={self._h is not None})"


class PrivateKey:
    """A Paillier private key: the primes ``p``, ``q`` and the CRT constants. Never send it."""

    __slots__ = ("_hp", "_hq", "_p", "_psq", "_q", "_q_inv_p", "_qsq", "public_key")

    def __init__(self, public_key: PublicKey, p: int, q: int) -> None:
        p = _require_int(p, "the prime p", 3)
        q = _require_int(q, "the prime q", 3)
        if p * q != public_key.n:
            raise PaillierError("the primes p and q do not match the public key: p q != n")
        if p == q or p.bit_length() != q.bit_length():
            raise PaillierError("p and q must be different primes of equal length")
        if not (gmpy2.is_prime(p) and gmpy2.is_prime(q)):
            raise PaillierError("p and q must be prime")
        self.public_key = public_key
        self._p, self._q = gmpy2.mpz(p), gmpy2.mpz(q)
        self._psq, self._qsq = self._p * self._p, self._q * self._q
        n1 = public_key._n + 1
        self._hp = _invmod((gmpy2.powmod(n1, self._p - 1, self._psq) - 1) // self._p, self._p)
        self._hq = _invmod((gmpy2.powmod(n1, self._q - 1, self._qsq) - 1) // self._q, self._q)
        self._q_inv_p = _invmod(self._q, self._p)

    @classmethod
    def from_primes(cls, p: int, q: int, *, fast_base: bool = True) -> PrivateKey:
        """The key pair of known primes (``fast_base``: with a new random ``h``)."""
        public_key = PublicKey(int(p) * int(q))
        return cls(public_key.with_fast_base() if fast_base else public_key, p, q)

    @property
    def p(self) -> int:
        """The first prime (secret)."""
        return int(self._p)

    @property
    def q(self) -> int:
        """The second prime (secret)."""
        return int(self._q)

    def decrypt(self, vector: EncryptedVector) -> FloatArray:
        """The float64 sum the vector encrypts: see :func:`decrypt`."""
        return decrypt(self, vector)

    def to_bytes(self) -> bytes:
        """Fixed-width binary: header, ``p``, ``q``, then the public key's bytes."""
        width = (int(self._p.bit_length()) + 7) // 8
        head = _PRIVATE_HEADER.pack(_PRIVATE_MAGIC, _VERSION, self.public_key.key_id, width)
        return (
            head + self.p.to_bytes(width, "big") + self.q.to_bytes(width, "big") + self.public_key.to_bytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> PrivateKey:
        """The key :meth:`to_bytes` wrote."""
        data = bytes(data)
        _, _, key_id, width = _unpack_header(_PRIVATE_HEADER, data, _PRIVATE_MAGIC, "private key")
        start = _PRIVATE_HEADER.size
        if len(data) < start + 2 * width:
            raise PaillierError("malformed Paillier private key: truncated")
        p = int.from_bytes(data[start : start + width], "big")
        q = int.from_bytes(data[start + width : start + 2 * width], "big")
        public_key = PublicKey.from_bytes(data[start + 2 * width :])
        _check_key_id(public_key, key_id)
        return cls(public_key, p, q)

    def __repr__(self) -> str:
        return f"PrivateKey(bits={self.public_key.bits}, key_id={self.public_key.key_id.hex()})"


def generate_keypair(bits: int = DEFAULT_KEY_BITS) -> tuple[PublicKey, PrivateKey]:
    """A new key pair with an exactly ``bits``-bit modulus (even, at least 2048) and a fast base ``h``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < MIN_KEY_BITS:
        raise PaillierError(
            f"a {bits}-bit Paillier key is too short: use {DEFAULT_KEY_BITS} bits (the default) or at "
            f"least {MIN_KEY_BITS}"
        )
    if bits % 2:
        raise PaillierError(f"the modulus size must be even (p and q have equal length), got {bits}")
    half = bits // 2
    while True:
        p, q = _random_prime(half), _random_prime(half)
        n = p * q
        if abs(p - q) >> (half - 100) and n.bit_length() == bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    private_key = PrivateKey.from_primes(int(p), int(q))
    return private_key.public_key, private_key


def _load_keys(
    public: bytes | Mapping[str, Any], private: bytes | None = None
) -> tuple[PublicKey, PrivateKey | None]:
    """Load a public key (bytes or payload) and, on the key holder, its private key (bytes)."""
    public_key = (
        PublicKey.from_payload(public) if isinstance(public, Mapping) else PublicKey.from_bytes(public)
    )
    if private is None:
        return public_key, None
    private_key = PrivateKey.from_bytes(private)
    if private_key.public_key != public_key:
        raise PaillierError("the private key belongs to another public key")
    return public_key, private_key


# --------------------------------------------------------------------------------------------
# fixed-point layout and packing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How floats become packed plaintexts: ``frac_bits`` (f), ``bound`` (B), ``max_contributors`` (K).

    Values in ``[-B, B]`` with resolution ``2^-f``; up to ``K`` encrypted vectors may be summed.
    """

    frac_bits: int = 20
    bound: int = 256
    max_contributors: int = 255

    def __post_init__(self) -> None:
        # plain ints (NumPy integers are accepted and converted)
        object.__setattr__(self, "frac_bits", _require_int(self.frac_bits, "Layout.frac_bits", 0, 62))
        object.__setattr__(self, "bound", _require_int(self.bound, "Layout.bound", 1, 2**62))
        limit = _require_int(self.max_contributors, "Layout.max_contributors", 1, 2**32 - 1)
        object.__setattr__(self, "max_contributors", limit)
        if self.slot_bits > 63:
            raise PaillierError(
                f"a slot of this layout needs {self.slot_bits} bits (at most 63): lower frac_bits, bound "
                "or max_contributors"
            )

    @property
    def scale(self) -> int:
        """``2^f``."""
        return 1 << self.frac_bits

    @property
    def offset(self) -> int:
        """``B 2^f``, added to every encoded value."""
        return self.bound << self.frac_bits

    @property
    def slot_max(self) -> int:
        """``2 B 2^f``, the largest encoded value."""
        return 2 * self.offset

    @property
    def slot_bits(self) -> int:
        """Bits per slot: enough for the sum of ``K`` encoded values."""
        return (self.max_contributors * self.slot_max).bit_length()

    def slots_per_plaintext(self, key_bits: int) -> int:
        """How many slots fit into a plaintext of a ``key_bits``-bit key."""
        slots = (key_bits - _MARGIN_BITS) // self.slot_bits
        if slots < 1:
            raise PaillierError(f"a {self.slot_bits}-bit slot does not fit a {key_bits}-bit key")
        return min(slots, 2**16 - 1)

    def encode(self, values: npt.ArrayLike) -> _U64Array:
        """``round(v 2^f) + B 2^f`` per value; raises :class:`ValueRangeError` outside ``[-B, B]``."""
        try:
            x = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PaillierError(f"cannot encrypt these values as float64: {exc}") from exc
        if x.ndim != 1:
            raise PaillierError(f"encrypt a 1-D vector, got an array of shape {x.shape}; flatten it first")
        bad = ~np.isfinite(x) | (np.abs(x) > self.bound)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueRangeError(
                f"value {float(x[i])!r} at index {i} is outside [-{self.bound}, {self.bound}], the range "
                "of the layout: scale the values or use a Layout with a larger bound (NaN and inf are "
                "never allowed)"
            )
        return (np.rint(x * float(self.scale)).astype(np.int64) + self.offset).astype(np.uint64)

    def decode(self, sums: _U64Array, contributors: int) -> FloatArray:
        """Slot sums of ``contributors`` encoded vectors back to float64 sums of the values."""
        if sums.size and int(sums.max()) > contributors * self.slot_max:
            raise PaillierError(
                f"a decrypted slot exceeds the range of {contributors} contributions: the ciphertexts are "
                "corrupted, were made with another layout, or the contributor count is wrong"
            )
        centred = sums.astype(np.int64) - np.int64(contributors * self.offset)
        result: FloatArray = centred.astype(np.float64) / float(self.scale)
        return result


DEFAULT_LAYOUT = Layout()
"""``Layout(frac_bits=20, bound=256, max_contributors=255)``: 37-bit slots, 55 per 2048-bit plaintext."""


def _pack(slots: _U64Array, per: int, bits: int) -> list[int]:
    """Concatenate ``bits``-bit slots, ``per`` to an integer, slot 0 in the lowest bits."""
    count = -(-len(slots) // per)
    padded = np.zeros(count * per, dtype="<u8")
    padded[: len(slots)] = slots
    bitmap = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, :bits]
    packed = np.packbits(bitmap.reshape(count, per * bits), axis=1, bitorder="little")
    width, raw = packed.shape[1], packed.tobytes()
    return [int.from_bytes(raw[i * width : (i + 1) * width], "little") for i in range(count)]


def _unpack(plaintexts: Sequence[int | Mpz], per: int, bits: int) -> _U64Array:
    """The slots of packed integers, as uint64 (the inverse of :func:`_pack`)."""
    width = (per * bits + 7) // 8
    try:
        raw = b"".join(int(m).to_bytes(width, "little") for m in plaintexts)
    except OverflowError as exc:
        raise PaillierError(
            "a decrypted plaintext is larger than its slots: the ciphertexts are corrupted or were made "
            "with another layout"
        ) from exc
    bitmap = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(-1, width), axis=1, bitorder="little")
    if bitmap[:, per * bits :].any():
        raise PaillierError("a decrypted plaintext is larger than its slots: the ciphertexts are corrupted")
    full = np.zeros((len(plaintexts) * per, 64), dtype=np.uint8)
    full[:, :bits] = bitmap[:, : per * bits].reshape(-1, bits)
    return np.packbits(full, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)


# --------------------------------------------------------------------------------------------
# encrypted vectors
# --------------------------------------------------------------------------------------------


class EncryptedVector:
    """Packed Paillier ciphertexts of a float vector (or of the sum of ``contributors`` vectors)."""

    __slots__ = ("_cts", "contributors", "layout", "length", "public_key")

    def __init__(
        self,
        public_key: PublicKey,
        layout: Layout,
        length: int,
        contributors: int,
        ciphertexts: Sequence[int | Mpz],
    ) -> None:
        self.public_key = public_key
        self.layout = layout
        self.length = _require_int(length, "the vector length", 0, 2**64 - 1)
        self.contributors = _require_int(contributors, "the contributor count", 1)
        if self.contributors > layout.max_contributors:
            raise ContributorLimitError(
                f"{self.contributors} contributions exceed the layout's limit of {layout.max_contributors}"
            )
        expected = -(-self.length // layout.slots_per_plaintext(public_key.bits))
        if len(ciphertexts) != expected:
            raise PaillierError(
                f"{len(ciphertexts)} ciphertexts for {self.length} values, expected {expected}"
            )
        self._cts: list[Mpz] = [gmpy2.mpz(c) for c in ciphertexts]

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.layout.slots_per_plaintext(self.public_key.bits)

    @property
    def key_id(self) -> bytes:
        """The id of the public key the vector is encrypted under."""
        return self.public_key.key_id

    @property
    def ciphertexts(self) -> tuple[int, ...]:
        """The raw Paillier ciphertexts."""
        return tuple(int(c) for c in self._cts)

    def __len__(self) -> int:
        return self.length

    def __add__(self, other: EncryptedVector) -> EncryptedVector:
        return aggregate([self, other])

    def __repr__(self) -> str:
        return (
            f"EncryptedVector(length={self.length}, contributors={self.contributors}, "
            f"ciphertexts={len(self._cts)}, key_id={self.key_id.hex()}, layout={self.layout})"
        )

    def _header(self) -> bytes:
        lay = self.layout
        return _VECTOR_HEADER.pack(
            _VECTOR_MAGIC, _VERSION, self.key_id, lay.frac_bits, lay.bound, lay.max_contributors,
            self.slots, self.length, self.contributors, self.public_key.ciphertext_bytes,
        )  # fmt: skip

    def _ciphertext_bytes(self) -> bytes:
        width = self.public_key.ciphertext_bytes
        return b"".join(int(c).to_bytes(width, "big") for c in self._cts)

    def to_bytes(self) -> bytes:
        """Header (key id, layout, length, contributors), then fixed-width big-endian ciphertexts."""
        return self._header() + self._ciphertext_bytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, public_key: PublicKey) -> EncryptedVector:
        """The vector :meth:`to_bytes` wrote, under ``public_key`` (checked against the key id)."""
        data = bytes(data)
        fields = _unpack_header(_VECTOR_HEADER, data, _VECTOR_MAGIC, "encrypted vector")
        _, _, key_id, frac_bits, bound, max_contributors, slots, length, contributors, width = fields
        return cls._build(
            public_key, key_id, (frac_bits, bound, max_contributors, slots), length, contributors, width,
            data[_VECTOR_HEADER.size :],
        )  # fmt: skip

    def to_payload(self) -> dict[str, Any]:
        """A dict of str/int/bytes for :func:`flame.codec.encode` (ciphertexts as one fixed-width blob)."""
        lay = self.layout
        return {
            "format": _VECTOR_FORMAT,
            "version": _VERSION,
            "key_id": self.key_id,
            "layout": [lay.frac_bits, lay.bound, lay.max_contributors, self.slots],
            "length": self.length,
            "contributors": self.contributors,
            "ciphertext_bytes": self.public_key.ciphertext_bytes,
            "ciphertexts": self._ciphertext_bytes(),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], public_key: PublicKey) -> EncryptedVector:
        """The vector :meth:`to_payload` made, under ``public_key``."""
        _check_payload(payload, _VECTOR_FORMAT, _VECTOR_FIELDS)
        layout = payload["layout"]
        if not isinstance(layout, (list, tuple)) or len(layout) != 4:
            raise PaillierError("malformed encrypted vector payload: layout must be 4 ints")
        blob = payload["ciphertexts"]
        if not isinstance(blob, bytes):
            raise PaillierError("malformed encrypted vector payload: ciphertexts must be bytes")
        return cls._build(
            public_key, payload["key_id"], tuple(layout), payload["length"], payload["contributors"],
            payload["ciphertext_bytes"], blob,
        )  # fmt: skip

    @classmethod
    def _build(
        cls,
        public_key: PublicKey,
        key_id: object,
        layout_fields: tuple[Any, ...],
        length: object,
        contributors: object,
        width: object,
        blob: bytes,
    ) -> EncryptedVector:
        _check_key_id(public_key, key_id)
        frac_bits, bound, max_contributors, slots = layout_fields
        layout = Layout(frac_bits, bound, max_contributors)
        if slots != layout.slots_per_plaintext(public_key.bits):
            raise PaillierError(f"the vector's {slots} slots per ciphertext do not match its layout and key")
        if width != public_key.ciphertext_bytes or len(blob) % public_key.ciphertext_bytes:
            raise PaillierError("malformed encrypted vector: ciphertexts are not as wide as n^2")
        size = public_key.ciphertext_bytes
        cts = [gmpy2.mpz(int.from_bytes(blob[i : i + size], "big")) for i in range(0, len(blob), size)]
        if any(not 0 < c < public_key._nsq for c in cts):
            raise PaillierError("malformed encrypted vector: a ciphertext is not in (0, n^2)")
        return cls(
            public_key,
            layout,
            _require_int(length, "length", 0),
            _require_int(contributors, "contributors", 1),
            cts,
        )


def _unpack_header(header: struct.Struct, data: bytes, magic: bytes, what: str) -> tuple[Any, ...]:
    if len(data) < header.size or data[:4] != magic:
        raise PaillierError(f"not a serialised Paillier {what}: it should start with {magic!r}")
    fields = header.unpack_from(data)
    if fields[1] != _VERSION:
        raise PaillierError(
            f"unsupported Paillier {what} version {fields[1]}: this SDK reads version {_VERSION}"
        )
    return fields


def _check_key_id(public_key: PublicKey, key_id: object) -> None:
    if key_id != public_key.key_id:
        shown = key_id.hex() if isinstance(key_id, bytes) else repr(key_id)
        raise PaillierError(
            f"key id mismatch: the data names key {shown} but the key is {public_key.key_id.hex()}; "
            "use the public key of this analysis' key holder"
        )


def _check_payload(payload: Mapping[str, Any], fmt: str, keys: set[str]) -> None:
    if not isinstance(payload, Mapping) or payload.get("format") != fmt:
        raise PaillierError(f"not a {fmt} payload")
    if payload.get("version") != _VERSION:
        raise PaillierError(
            f"unsupported {fmt} version {payload.get('version')!r}: this SDK reads {_VERSION}"
        )
    if set(payload) != keys:
        raise PaillierError(f"malformed {fmt} payload: fields {sorted(payload)}, expected {sorted(keys)}")


# --------------------------------------------------------------------------------------------
# vector operations
# --------------------------------------------------------------------------------------------

_WORKER_KEY: PublicKey | None = None


def _init_worker(n: int, h: int | None) -> None:
    global _WORKER_KEY
    _WORKER_KEY = PublicKey(n, h)


def _encrypt_chunk(plaintexts: list[int], fast: bool) -> list[int]:
    assert _WORKER_KEY is not None
    return [int(_encrypt(_WORKER_KEY, m, fast=fast)) for m in plaintexts]


def encrypt(
    public_key: PublicKey,
    values: npt.ArrayLike,
    layout: Layout | None = None,
    *,
    fast: bool = False,
    processes: int | None = None,
) -> EncryptedVector:
    """Encrypt a 1-D float vector into packed ciphertexts (one contribution).

    ``layout`` defaults to :data:`DEFAULT_LAYOUT`; values outside its range raise
    :class:`ValueRangeError`. ``fast=True`` uses the fixed-base short-exponent variant (an extra
    assumption, see the module docstring). ``processes=k`` spreads the work over ``k`` processes
    (``concurrent.futures.ProcessPoolExecutor`` with the platform's default start method; each
    worker builds its own fast-base table); worth it from a few hundred ciphertexts on.
    """
    layout = DEFAULT_LAYOUT if layout is None else layout
    per = layout.slots_per_plaintext(public_key.bits)
    slots = layout.encode(values)
    plaintexts = _pack(slots, per, layout.slot_bits)
    workers = 1 if processes is None else _require_int(processes, "processes", 1)
    if fast and public_key.h is None:
        public_key._fixed_base_table()  # raises: the key has no base h
    if workers == 1 or len(plaintexts) < 2:
        cts = [_encrypt(public_key, m, fast=fast) for m in plaintexts]
    else:
        size = -(-len(plaintexts) // (4 * workers))
        chunks = [plaintexts[i : i + size] for i in range(0, len(plaintexts), size)]
        with ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(public_key.n, public_key.h)
        ) as pool:
            cts = list(
                itertools.chain.from_iterable(pool.map(_encrypt_chunk, chunks, itertools.repeat(fast)))
            )
    return EncryptedVector(public_key, layout, len(slots), 1, cts)


def aggregate(vectors: Sequence[EncryptedVector]) -> EncryptedVector:
    """The encrypted sum of vectors of one key, layout and length (ciphertexts combined by :func:`_enc_add`).

    Raises :class:`ContributorLimitError` if the contributions exceed the layout's ``max_contributors``.
    """
    if not vectors:
        raise PaillierError("aggregate() needs at least one EncryptedVector")
    first = vectors[0]
    for i, vector in enumerate(vectors):
        if not isinstance(vector, EncryptedVector):
            raise PaillierError(f"aggregate(): item {i} is a {type(vector).__name__}, not an EncryptedVector")
        if vector.public_key.n != first.public_key.n:
            raise PaillierError(
                f"aggregate(): vector {i} is encrypted under key {vector.key_id.hex()}, vector 0 under "
                f"{first.key_id.hex()}: all nodes must use the key holder's public key"
            )
        if vector.layout != first.layout or vector.length != first.length:
            raise PaillierError(
                f"aggregate(): vector {i} has layout {vector.layout} and length {vector.length}, vector 0 "
                f"{first.layout} and {first.length}: all nodes must encrypt alike"
            )
    total = sum(vector.contributors for vector in vectors)
    if total > first.layout.max_contributors:
        raise ContributorLimitError(
            f"aggregate(): {total} contributions exceed the layout's limit of "
            f"{first.layout.max_contributors} (the slots would overflow): use a Layout with a larger "
            "max_contributors"
        )
    key = first.public_key
    sums = list(first._cts)
    for vector in vectors[1:]:
        sums = [_enc_add(key, a, b) for a, b in zip(sums, vector._cts, strict=True)]
    return EncryptedVector(key, first.layout, first.length, total, sums)


def decrypt(private_key: PrivateKey, vector: EncryptedVector) -> FloatArray:
    """The float64 sum of the ``vector.contributors`` vectors that ``vector`` encrypts."""
    if vector.public_key.n != private_key.public_key.n:
        raise PaillierError(
            f"the vector is encrypted under key {vector.key_id.hex()}, not under this private key's "
            f"{private_key.public_key.key_id.hex()}"
        )
    plaintexts = [_decrypt(private_key, c) for c in vector._cts]
    sums = _unpack(plaintexts, vector.slots, vector.layout.slot_bits)[: vector.length]
    return vector.layout.decode(sums, vector.contributors)

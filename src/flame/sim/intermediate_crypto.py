"""Encryption of intermediate objects between two nodes, as the FLAME node storage service does it.

The storage service of the sending node encrypts an intermediate object for the receiving node; the
receiver's storage service decrypts it. Both use their node's static P-256 key pair
(:attr:`flame.sim.node.SimNode.storage_key`):

- **Key agreement**: static ECDH on P-256 between the sender's private key and the receiver's public
  key (the receiver computes the same secret from its private key and the sender's public key).
- **Key derivation**: HKDF-SHA256 (RFC 5869) of the ECDH secret to a 32-byte AES key, with
  ``info = "flame-sim intermediate v1" || SEC1(sender public) || SEC1(receiver public)`` (uncompressed
  points, 65 bytes each) and no salt. HKDF-SHA256 is what PrivateAIM's storage service uses; binding the
  two public keys *in order* makes the key directional, so the sender's own storage service cannot
  decrypt, as the receiver, what it encrypted for somebody else (plain static ECDH is symmetric).
- **Cipher**: AES-256-GCM over chunks of :data:`CHUNK_SIZE` (1 MiB) plaintext. Each encrypted chunk
  is ``IV (12 random bytes) || ciphertext || tag (16 bytes)``, so an object of ``n`` plaintext bytes
  takes ``max(1, ceil(n / CHUNK_SIZE))`` chunks and :func:`encrypted_size` bytes. An empty object
  is one (empty) chunk, so that "no data" is authenticated too.
- **Associated data** of chunk ``i``: ``"flame-sim chunk" || uint64_be(i) || final_flag (1 byte) ||
  context``, where ``final_flag`` is 1 on the last chunk only and ``context`` is chosen by the caller
  (the storage service passes the object id). Reordered, dropped, duplicated or appended chunks, a
  truncation at a chunk boundary, or an object moved to another id all fail authentication.

Differences from PrivateAIM's service (which we need not interoperate with: only emulated nodes read
these objects): its chunks are 1 MiB of *ciphertext*, it derives with ``info=None`` and uses no
associated data, so its chunks could be reordered or truncated undetected.

Any failure to decrypt raises :class:`DecryptionError`.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Plaintext bytes per chunk.
CHUNK_SIZE = 1024 * 1024
#: Bytes of the random IV in front of each chunk.
IV_SIZE = 12
#: Bytes of the GCM tag at the end of each chunk.
TAG_SIZE = 16
#: Bytes an encrypted chunk adds to its plaintext.
CHUNK_OVERHEAD = IV_SIZE + TAG_SIZE
#: Bytes of a full encrypted chunk.
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + CHUNK_OVERHEAD

_KDF_INFO = b"flame-sim intermediate v1"
_AD_LABEL = b"flame-sim chunk"


class DecryptionError(Exception):
    """The object cannot be decrypted: wrong keys, wrong context, or tampered/truncated ciphertext."""


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def derive_key(
    private_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    *,
    role: Literal["sender", "receiver"],
) -> bytes:
    """The 32-byte AES key between a sender and a receiver (see the module docstring).

    ``private_key`` is our own key; ``role`` says whether we are the sender (encrypting for the peer)
    or the receiver (decrypting what the peer sent). Both sides get the same key.
    """
    if not isinstance(private_key.curve, ec.SECP256R1) or not isinstance(peer_public_key.curve, ec.SECP256R1):
        raise ValueError("intermediate encryption uses P-256 keys")
    secret = private_key.exchange(ec.ECDH(), peer_public_key)
    own = private_key.public_key()
    sender, receiver = (own, peer_public_key) if role == "sender" else (peer_public_key, own)
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO + _point(sender) + _point(receiver)
    )
    return hkdf.derive(secret)


def _associated_data(index: int, final: bool, context: bytes) -> bytes:
    return _AD_LABEL + struct.pack(">QB", index, 1 if final else 0) + context


def encrypted_size(plaintext_size: int) -> int:
    """Bytes of the encrypted object for ``plaintext_size`` bytes of plaintext."""
    if plaintext_size < 0:
        raise ValueError("size must be >= 0")
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return plaintext_size + chunks * CHUNK_OVERHEAD


def encrypt_chunks(
    source: BinaryIO,
    sender_key: ec.EllipticCurvePrivateKey,
    receiver_public_key: ec.EllipticCurvePublicKey,
    *,
    context: bytes = b"",
) -> Iterator[bytes]:
    """Encrypt ``source`` (read from its current position to its end) chunk by chunk.

    Yields one encrypted chunk (``IV || ciphertext || tag``) per 1 MiB of plaintext; it reads one
    chunk ahead to know which chunk is the last, so at most two chunks are in memory.
    """
    aead = AESGCM(derive_key(sender_key, receiver_public_key, role="sender"))
    index = 0
    current = _read_full(source, CHUNK_SIZE)
    while True:
        following = _read_full(source, CHUNK_SIZE) if len(current) == CHUNK_SIZE else b""
        final = not following
        iv = os.urandom(IV_SIZE)
        yield iv + aead.encrypt(iv, current, _associated_data(index, final, context))
        if final:
            return
        current = following
        index += 1


def _read_full(source: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    missing = size
    while missing > 0:
        block = source.read(missing)
        if not block:
            break
        parts.append(block)
        missing -= len(block)
    return b"".join(parts)


class EncryptingReader(io.RawIOBase):
    """A read-only file-like that yields the encryption of ``source`` (for streamed uploads).

    Its total length is :func:`encrypted_size` of the plaintext still to read from ``source``.
    """

    def __init__(
        self,
        source: BinaryIO,
        sender_key: ec.EllipticCurvePrivateKey,
        receiver_public_key: ec.EllipticCurvePublicKey,
        *,
        context: bytes = b"",
    ) -> None:
        super().__init__()
        self._chunks = encrypt_chunks(source, sender_key, receiver_public_key, context=context)
        self._buffer = bytearray()
        self._done = False

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill ``buffer`` with the next encrypted bytes; 0 at the end."""
        while not self._buffer and not self._done:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                self._done = True
        count = min(len(buffer), len(self._buffer))
        buffer[:count] = self._buffer[:count]
        del self._buffer[:count]
        return count


def encrypt_to_tempfile(
    source: BinaryIO,
    sender_key: ec.EllipticCurvePrivateKey,
    receiver_public_key: ec.EllipticCurvePublicKey,
    *,
    context: bytes = b"",
) -> tuple[BinaryIO, int]:
    """Encrypt ``source`` into an anonymous temporary file; returns it (rewound) and its length.

    The caller closes the file. Blocking: run it in a thread from async code.
    """
    target = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller, who closes it
    try:
        length = 0
        for chunk in encrypt_chunks(source, sender_key, receiver_public_key, context=context):
            target.write(chunk)
            length += len(chunk)
        target.seek(0)
    except BaseException:
        target.close()
        raise
    return target, length


def _decrypt_one(aead: AESGCM, chunk: bytes | bytearray, index: int, final: bool, context: bytes) -> bytes:
    if len(chunk) < CHUNK_OVERHEAD:
        raise DecryptionError(f"chunk {index} is truncated ({len(chunk)} bytes)")
    try:
        return aead.decrypt(
            bytes(chunk[:IV_SIZE]), bytes(chunk[IV_SIZE:]), _associated_data(index, final, context)
        )
    except InvalidTag:
        raise DecryptionError(f"chunk {index} does not authenticate") from None


async def decrypt_stream(
    encrypted: AsyncIterator[bytes],
    receiver_key: ec.EllipticCurvePrivateKey,
    sender_public_key: ec.EllipticCurvePublicKey,
    *,
    context: bytes = b"",
) -> AsyncIterator[bytes]:
    """Decrypt an object that arrives as byte pieces of any size; yields the plaintext chunk by chunk.

    Raises :class:`DecryptionError` as soon as a chunk fails (wrong keys or context, tampering,
    truncation). Plaintext chunks already yielded were authentic, but the object is only complete
    and authentic once the iterator ends without an error.
    """
    aead = AESGCM(derive_key(receiver_key, sender_public_key, role="receiver"))
    buffer = bytearray()
    index = 0
    async for piece in encrypted:
        buffer += piece
        # A full chunk is known not to be the last one only once a byte after it has arrived.
        while len(buffer) > ENCRYPTED_CHUNK_SIZE:
            yield _decrypt_one(aead, bytes(buffer[:ENCRYPTED_CHUNK_SIZE]), index, False, context)
            del buffer[:ENCRYPTED_CHUNK_SIZE]
            index += 1
    yield _decrypt_one(aead, buffer, index, True, context)


def decrypt_bytes(
    data: bytes,
    receiver_key: ec.EllipticCurvePrivateKey,
    sender_public_key: ec.EllipticCurvePublicKey,
    *,
    context: bytes = b"",
) -> bytes:
    """Decrypt a whole encrypted object held in memory (for tests and small objects)."""
    aead = AESGCM(derive_key(receiver_key, sender_public_key, role="receiver"))
    out: list[bytes] = []
    offset = 0
    index = 0
    while len(data) - offset > ENCRYPTED_CHUNK_SIZE:
        out.append(_decrypt_one(aead, data[offset : offset + ENCRYPTED_CHUNK_SIZE], index, False, context))
        offset += ENCRYPTED_CHUNK_SIZE
        index += 1
    out.append(_decrypt_one(aead, data[offset:], index, True, context))
    return b"".join(out)


__all__ = [
    "CHUNK_OVERHEAD",
    "CHUNK_SIZE",
    "ENCRYPTED_CHUNK_SIZE",
    "IV_SIZE",
    "TAG_SIZE",
    "DecryptionError",
    "EncryptingReader",
    "decrypt_bytes",
    "decrypt_stream",
    "derive_key",
    "encrypt_chunks",
    "encrypt_to_tempfile",
    "encrypted_size",
]

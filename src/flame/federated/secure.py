"""Secure aggregation in the star protocol: the aggregator learns only sums, never one node's numbers.

One analysis node, the *key holder* (the lowest node id among the analysis nodes), makes a Paillier key
pair, keeps it in its node-local storage (so it survives restarts) and sends the public key to every
participant. Node storage is project-scoped, so the stored key is sealed (AES-256-GCM) under a key
derived from this analysis' Kong key, which a later analysis of the project does not have (see
:mod:`flame.federated.checkpoint`); a key holder without one keeps the key pair in memory only. Analysis nodes encrypt the fields the author marked secure (numbers, vectors, NumPy
arrays), packed with :mod:`flame.protocols.paillier`. The aggregator adds the ciphertexts of each field
without decrypting and sends only the encrypted sums, with their contributor counts, to the key holder,
which refuses a request with fewer contributors than the quorum, decrypts and returns the sums. The
key holder never sees another node's ciphertexts, the aggregator never holds the private key; their
collusion is the residual risk (threshold decryption removes it).

The author's aggregator gets :class:`SecureUpdates`: each node's update without the secure fields, and
the decrypted totals; :func:`total` reads a field's sum the same way in plain and secure mode, so the
same aggregator code runs both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flame import codec
from flame.errors import FederationError, FlameTimeoutError, PayloadError
from flame.federated import checkpoint, messages
from flame.protocols import paillier
from flame.protocols.aggregation import total as plain_total

if TYPE_CHECKING:
    from flame.federated.options import FederationOptions
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)

#: key holder -> all: the public key
PUBLIC_KEY = "flame-secure-key"
#: any node -> key holder: please send me the public key (after a restart, or if it was missed)
KEY_REQUEST = "flame-secure-key-request"
#: aggregator -> key holder: encrypted sums to decrypt
DECRYPT = "flame-secure-decrypt"
#: key holder -> aggregator: the decrypted sums
DECRYPTED = "flame-secure-sums"

_MARK = "__flame_secure__"


@dataclass(frozen=True)
class SecureAggregation:
    """Which update fields are summed under encryption, and how.

    ``layout`` bounds the values (``[-bound, bound]``), their resolution (``2**-frac_bits``) and the
    number of contributors; a value outside raises on the analysis node before anything is sent.
    ``fast`` uses the short-exponent encryption (see :mod:`flame.protocols.paillier`).
    """

    fields: tuple[str, ...]
    layout: paillier.Layout = field(default_factory=lambda: paillier.DEFAULT_LAYOUT)
    key_bits: int = 3072
    fast: bool = False

    @classmethod
    def of(cls, value: Any) -> SecureAggregation | None:
        """Normalise ``FederationOptions.secure``: None, a field name, a list of names, or an instance."""
        if value is None or isinstance(value, SecureAggregation):
            return value
        if isinstance(value, str):
            return cls((value,))
        if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
            return cls(tuple(value))
        raise PayloadError("secure= takes a field name, a list of field names or a SecureAggregation")


class SecureUpdates(dict[str, Any]):
    """The updates of a secure round: per node, the plain fields; :attr:`totals`, the secure sums."""

    def __init__(self, plain: Mapping[str, Any], totals: Mapping[str, Any], contributors: int) -> None:
        super().__init__(plain)
        self.totals = dict(totals)
        self.contributors = contributors


def total(updates: Mapping[str, Any], name: str) -> Any:
    """The sum over all nodes of field ``name``: decrypted sum in secure mode, plain sum otherwise."""
    if isinstance(updates, SecureUpdates) and name in updates.totals:
        return updates.totals[name]
    return plain_total({node: update[name] for node, update in updates.items()})


def key_holder(node: AsyncNode) -> str:
    """The key holder: the lowest node id among the analysis nodes (the same on every node)."""
    ids = sorted(p["nodeId"] for p in node.participants if p["nodeType"] == "default")
    if not ids:
        raise FederationError("secure aggregation needs at least one analysis node to hold the key")
    return ids[0]


def _key_tag(analysis_id: str) -> str:
    return "pk-" + analysis_id.replace("-", "").lower()[:29]


# -- the key ---------------------------------------------------------------------------------------------


async def key_holder_keys(node: AsyncNode, secure: SecureAggregation) -> paillier.PrivateKey:
    """On the key holder: the analysis' key pair from node storage, or a new one (saved first, sealed).

    Only a record that opens under this analysis' sealing key counts: anything else under the tag
    (another analysis' key, garbage) is ignored.
    """
    tag = _key_tag(node.config.analysis_id)
    sealer = checkpoint.node_sealer(node, "paillier")
    if sealer is not None and tag in await node.results.tags():
        for raw in reversed(await node.results.storage.read_tagged(tag, "all")):
            try:
                record = codec.decode(raw)
            except PayloadError:
                continue  # not ours: anyone in the project may write under the tag
            value = sealer.open(record, "paillier")
            if isinstance(value, bytes):
                private = paillier.PrivateKey.from_bytes(value)
                node.log("secure aggregation: key pair loaded from node storage")
                return private
    _, private = await asyncio.to_thread(paillier.generate_keypair, secure.key_bits)
    if sealer is not None:
        await node.results.save_local(
            sealer.seal("paillier", private.to_bytes()), tag=tag, filename="paillier-key"
        )
    else:
        node.log(
            "secure aggregation: no per-analysis secret (DATA_SOURCE_TOKEN) to seal the key pair with; "
            "it stays in memory, and a restart of this node ends the secure analysis",
            "warn",
        )
    node.log(f"secure aggregation: made a {secure.key_bits}-bit key pair")
    return private


async def publish_public_key(node: AsyncNode, public_key: paillier.PublicKey, timeout: float) -> None:
    """Send the public key to every partner."""
    _, missing = await node.send_message(
        node.partners, PUBLIC_KEY, public_key_body(node, public_key), timeout=timeout
    )
    if missing:
        node.log(f"secure aggregation: the public key was not acknowledged by {', '.join(missing)}", "warn")


async def obtain_public_key(node: AsyncNode, holder: str, timeout: float) -> paillier.PublicKey:
    """On every other node: ask the key holder for its public key and wait for it (bounded).

    Asks again every attempt timeout without an answer: a key holder restarted after it acknowledged
    the request has lost it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await node.send_message(
            [holder], KEY_REQUEST, {"analysis_id": node.config.analysis_id}, timeout=timeout
        )
        wait = min(node.timeouts.attempt, max(0.0, deadline - loop.time()))
        found = await node.await_messages([holder], PUBLIC_KEY, timeout=wait, raise_on_timeout=False)
        answers = found[holder]
        if answers:
            body = answers[-1].body
            return paillier.PublicKey.from_payload(codec.decode(bytes.fromhex(body["public_key"])))
        if loop.time() >= deadline:
            raise FlameTimeoutError("the key holder's public key", timeout, [holder])
        node.log("secure aggregation: no public key from the key holder yet; asking again")


def public_key_body(node: AsyncNode, public_key: paillier.PublicKey) -> dict[str, Any]:
    return {"analysis_id": node.config.analysis_id, "public_key": codec.encode(public_key.to_payload()).hex()}


# -- analysis nodes ----------------------------------------------------------------------------------------


def encrypt_update(update: Any, public_key: paillier.PublicKey, secure: SecureAggregation) -> Any:
    """The update with every secure field replaced by its packed ciphertexts (shape kept in the clear)."""
    if not isinstance(update, Mapping):
        raise PayloadError("with secure aggregation an update must be a dict of fields")
    out = dict(update)
    for name in secure.fields:
        if name not in update:
            raise PayloadError(f"the update has no secure field {name!r}")
        values = np.asarray(update[name], dtype=np.float64)
        encrypted = paillier.encrypt(public_key, values.ravel(), secure.layout, fast=secure.fast)
        out[name] = {_MARK: encrypted.to_payload(), "shape": list(values.shape)}
    return out


# -- the aggregator ----------------------------------------------------------------------------------------


async def secure_round(
    node: AsyncNode,
    updates: Mapping[str, Any],
    round: int,
    secure: SecureAggregation,
    public_key: paillier.PublicKey,
    holder: str,
    timeout: float,
) -> SecureUpdates:
    """Add each secure field's ciphertexts, have the key holder decrypt the sums, return SecureUpdates."""
    plain: dict[str, Any] = {}
    sums: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    for name in secure.fields:
        vectors = []
        for sender, update in updates.items():
            entry = update.get(name) if isinstance(update, Mapping) else None
            if not isinstance(entry, Mapping) or _MARK not in entry:
                raise PayloadError(f"the update of {sender} has no encrypted field {name!r}")
            vectors.append(paillier.EncryptedVector.from_payload(entry[_MARK], public_key))
            shape = list(entry["shape"])
            if shapes.setdefault(name, shape) != shape:
                raise PayloadError(f"field {name!r} has shape {shape} at {sender}, {shapes[name]} elsewhere")
        sums[name] = paillier.aggregate(vectors).to_payload()
    for sender, update in updates.items():
        plain[sender] = {k: v for k, v in update.items() if k not in secure.fields}
    body = {
        "analysis_id": node.config.analysis_id,
        "round": round,
        "sums": codec.encode(sums).hex(),
        "contributors": len(updates),
    }
    node.log(f"round {round}: asking the key holder to decrypt the sums of {len(updates)} node(s)")

    async def request() -> None:
        await node.send_message([holder], DECRYPT, body, timeout=timeout)

    decrypted = await _await_sums(node, holder, round, timeout, request)
    totals = {
        name: _shaped(np.asarray(decrypted[name], dtype=np.float64), shapes[name]) for name in secure.fields
    }
    return SecureUpdates(plain, totals, len(updates))


async def _await_sums(
    node: AsyncNode, holder: str, round: int, timeout: float, request: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Wait for the key holder's answer, asking again every attempt timeout without one.

    A key holder restarted after it acknowledged the request has lost it; asking again is safe, since
    it answers the very same sums with the same result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await request()
    next_request = loop.time() + node.timeouts.attempt
    while True:
        for message in messages.take(node, DECRYPTED, [holder]):
            if message.body.get("round") != round:
                continue
            if "error" in message.body:
                raise FederationError(f"the key holder refused to decrypt: {message.body['error']}")
            result: dict[str, Any] = codec.decode(bytes.fromhex(message.body["sums"]))
            return result
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise FlameTimeoutError(f"the key holder's sums of round {round}", timeout, [holder])
        if loop.time() >= next_request:
            node.log(f"round {round}: no answer from the key holder yet; asking again")
            await request()
            next_request = loop.time() + node.timeouts.attempt
        wait = min(remaining, max(0.0, next_request - loop.time()))
        await node.inbox.wait_until(lambda: messages.has_unread(node, (DECRYPTED,), [holder]), wait)


def _shaped(values: np.ndarray, shape: list[int]) -> Any:
    return float(values[0]) if shape == [] else values.reshape(shape)


# -- the key holder ----------------------------------------------------------------------------------------


class KeyHolder:
    """Answers the aggregator's decryption requests on the key holder node.

    It decrypts only sums of at least the quorum's number of contributors, and each round's sums once;
    a repeated request with the very same ciphertexts (after the aggregator resumed) gets the same
    answer, a different one for a round already answered is refused: no decryption oracle.
    """

    def __init__(self, node: AsyncNode, private_key: paillier.PrivateKey, options: FederationOptions) -> None:
        self.node = node
        self.private_key = private_key
        contributors = sum(1 for p in node.participants if p["nodeType"] == "default")
        self.required = options.required(contributors)
        self._answered: dict[int, str] = {}

    def pending(self, aggregator: str) -> bool:
        """Whether requests wait to be answered."""
        return messages.has_unread(self.node, (DECRYPT,), [aggregator]) or messages.has_unread(
            self.node, (KEY_REQUEST,)
        )

    async def serve(self, aggregator: str) -> None:
        """Answer every pending request: public keys to whoever asks, decryptions to the aggregator."""
        for message in messages.take(self.node, KEY_REQUEST):
            body = public_key_body(self.node, self.private_key.public_key)
            self.node.log(f"sending the public key to {message.sender}")
            await self.node.send_message([message.sender], PUBLIC_KEY, body)
        for message in messages.take(self.node, DECRYPT, [aggregator]):
            await self._answer(message, aggregator)

    async def _answer(self, message: Any, aggregator: str) -> None:
        body = message.body
        round = body.get("round")
        reply: dict[str, Any] = {"analysis_id": self.node.config.analysis_id, "round": round}
        digest = hashlib.sha256(str(body.get("sums")).encode()).hexdigest()
        try:
            if body.get("analysis_id") != self.node.config.analysis_id or not isinstance(round, int):
                raise FederationError("a request for another analysis, or without a round")
            sums = codec.decode(bytes.fromhex(body["sums"]))
            if round in self._answered and self._answered[round] != digest:
                raise FederationError(f"round {round} was decrypted already; a second, different request")
            decrypted = {}
            for name, payload in sums.items():
                vector = paillier.EncryptedVector.from_payload(payload, self.private_key.public_key)
                if vector.contributors < self.required:
                    raise FederationError(
                        f"field {name!r} sums {vector.contributors} contributor(s), below the quorum of {self.required}"
                    )
                decrypted[name] = await asyncio.to_thread(self.private_key.decrypt, vector)
            self._answered[round] = digest
            reply["sums"] = codec.encode(decrypted).hex()
            self.node.log(f"round {round}: decrypted the sums of {body.get('contributors')} node(s)")
        except (FederationError, PayloadError, KeyError, ValueError) as exc:
            reply["error"] = str(exc)
            self.node.log(f"round {round}: refused to decrypt: {exc}", "warn")
        await self.node.send_message([aggregator], DECRYPTED, reply)

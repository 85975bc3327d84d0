"""Secure aggregation in the star protocol: the aggregator learns only sums, never one node's numbers.

Threat model (``docs/threat-model.md`` has the whole of it)
-----------------------------------------------------------
* Parties: the analysis nodes (each holds data and is a *decryptor* holding one key share), the
  aggregator (adds ciphertexts, holds the public key only), the *dealer* (the lowest analysis node
  id, at set-up only). The message broker authenticates senders: a message's sender is the node whose
  token sent it; between nodes it encrypts every message for its recipient.
* The aggregator may be malicious: any request, ciphertexts, round numbers, node ids, replays, forged
  commitments. Analysis nodes are honest-but-curious; up to ``t - 1`` of them may collude with the
  aggregator. The dealer is honest at set-up.
* Guarantees: the aggregator alone learns only sums over at least ``max(2, quorum)`` analysis nodes,
  all over one set of nodes; no single node can decrypt anything (``t`` of ``l`` parts are needed,
  ``t`` a majority, at least 2); no sequence of requests makes the decryptors an oracle
  (:mod:`flame.federated.decryptor` states the refusal rules).
* **Fixed composition.** The first decrypted sum fixes the set of contributing nodes for every later
  round and field of the analysis; the decryptors refuse any other set (sums over different sets
  could be differenced down to one node, and only a rule comparing two requests is sound when the
  aggregator asks different decryptors). The aggregator therefore uses exactly the first round's
  contributors in later rounds, ignoring updates from others; if one of them is missing at a later
  round's deadline the analysis fails with an error naming this rule. The cost: secure mode
  tolerates stragglers in the first round only. A (round, field) is decrypted with one set of
  ciphertexts only (a node that restarted and committed a second update for the round is refused).
* **An aggregator that analyses data too** (``aggregator_analyses``) never contributes to an
  encrypted sum (the decryptors refuse a request naming it: it could commit to anything, e.g. the
  inverse of another node's ciphertexts). It adds its own values, known to it anyway, in the clear
  after decryption, at the layout's resolution.
* Secure fields pass the node's disclosure guard in plaintext before they are encrypted, like any
  field in plain mode.
* Not tolerated: ``t`` colluding analysis nodes; a dealer malicious at set-up (it could keep the
  factorisation); contributors pooling their own values with the aggregator (a sum over ``k`` nodes
  with ``k - 1`` colluding reveals the last). The released sums themselves are disclosure control's
  business, not this module's.

Protocol
--------
1. *Set-up.* The dealer deals a threshold key (:func:`flame.protocols.threshold_paillier.deal`), stores
   its own share, sends every other analysis node its share (:data:`SHARE`) and drops the rest, then
   publishes the public key (:data:`PUBLIC_KEY`). Each decryptor keeps its share and its ledger in node
   storage, sealed under a key derived from this analysis' Kong key (:mod:`flame.federated.checkpoint`),
   which a later analysis of the project does not have; the records are useless once the analysis is
   over. A node without that secret keeps them in memory only. The aggregator asks for the public key
   (:data:`KEY_REQUEST`); any decryptor answers.
2. *Each round.* An analysis node has its secure fields judged by its disclosure guard, encrypts them, sends every decryptor a commitment to
   each field's ciphertexts (:data:`COMMIT`), and its update to the aggregator. The aggregator checks
   the shapes, and sends all decryptors one request per field with every contributor's ciphertexts
   (:data:`DECRYPT`). A decryptor checks the request (:class:`~flame.federated.decryptor.Decryptor`),
   writes its ledger, and answers its partial decryption with a proof (:data:`DECRYPTED`), or an error
   naming the rule that refused it. The aggregator verifies the proofs, combines ``t`` parts and
   decodes the totals, adding its own values if it analyses data too. If refusals leave fewer than ``t`` decryptors, it fails the analysis on every
   node with the refusals in the error.

The author's aggregator gets :class:`SecureUpdates`: each node's update without the secure fields, and
the decrypted totals; :func:`total` reads a field's sum the same way in plain and secure mode, so the
same aggregator code runs both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flame import codec
from flame.errors import FederationError, FlameError, FlameTimeoutError, PayloadError
from flame.federated import checkpoint, messages
from flame.federated.decryptor import (
    DecryptionRefused,
    Decryptor,
    DecryptRequest,
    Ledger,
    MissingCommitment,
    commitment,
    context,
)
from flame.protocols import paillier
from flame.protocols import threshold_paillier as tp
from flame.protocols.aggregation import total as plain_total

if TYPE_CHECKING:
    from flame.federated.options import FederationOptions
    from flame.node.runtime import AsyncNode
    from flame.node.tasks import BackgroundTasks

log = logging.getLogger(__name__)

#: dealer (or any decryptor) -> all: the threshold public key
PUBLIC_KEY = "flame-secure-key"
#: any node -> dealer: please send me the public key (after a restart, or if it was missed)
KEY_REQUEST = "flame-secure-key-request"
#: dealer -> one analysis node: its key share
SHARE = "flame-secure-share"
#: contributing node -> every decryptor: commitments to its ciphertexts of one round
COMMIT = "flame-secure-commit"
#: aggregator -> decryptors: the individual ciphertexts of each secure field, to decrypt their sum
DECRYPT = "flame-secure-decrypt"
#: decryptor -> aggregator: its partial decryptions, or the refusal
DECRYPTED = "flame-secure-sums"

_MARK = "__flame_secure__"

ThresholdPublicKey = tp.ThresholdPublicKey
_SHARE_KIND = "threshold-share"
_LEDGER_KIND = "decryptor-ledger"


@dataclass(frozen=True)
class SecureAggregation:
    """Which update fields are summed under encryption, and how.

    ``layout`` bounds the values (``[-bound, bound]``), their resolution (``2**-frac_bits``) and the
    number of contributors; a value outside raises on the analysis node before anything is sent.
    ``fast`` uses the short-exponent encryption (see :mod:`flame.protocols.paillier`). ``threshold``
    is how many analysis nodes must decrypt together (default: a majority, at least 2; it must be a
    majority). ``key_bits``: 3072 by default; dealing a 3072-bit key (safe primes) takes a minute or
    more, 2048 bits a few seconds.
    """

    fields: tuple[str, ...]
    layout: paillier.Layout = field(default_factory=lambda: paillier.DEFAULT_LAYOUT)
    key_bits: int = 3072
    fast: bool = False
    threshold: int | None = None

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


def decryptors(node: AsyncNode) -> list[str]:
    """The analysis nodes, sorted: decryptor ``i`` (1-based) holds share ``i``."""
    ids = sorted(p["nodeId"] for p in node.participants if p["nodeType"] == "default")
    if len(ids) < 2:
        raise FederationError(
            f"secure aggregation needs at least 2 analysis nodes to share the key, this analysis has {len(ids)}: "
            "with one node a sum is that node's values; run it without secure="
        )
    return ids


def key_holder(node: AsyncNode) -> str:
    """The dealer: the lowest node id among the analysis nodes (the same on every node)."""
    return decryptors(node)[0]


def _key_tag(analysis_id: str) -> str:
    return "pk-" + analysis_id.replace("-", "").lower()[:29]


def _public_body(node: AsyncNode, public: tp.ThresholdPublicKey) -> dict[str, Any]:
    return {"analysis_id": node.config.analysis_id, "public_key": codec.encode(public.to_payload()).hex()}


def _public_from(body: Mapping[str, Any]) -> tp.ThresholdPublicKey:
    return tp.ThresholdPublicKey.from_payload(codec.decode(bytes.fromhex(body["public_key"])))


# -- the key and the ledger in node storage --------------------------------------------------------------


class _Vault:
    """This node's sealed records of its key share and its ledger (newest ledger by sequence number)."""

    def __init__(self, node: AsyncNode) -> None:
        self.node = node
        self.tag = _key_tag(node.config.analysis_id)
        self.sealer = checkpoint.node_sealer(node, "paillier")
        self.seq = 0

    async def load(self) -> tuple[tp.KeyShare, Ledger] | None:
        """The share and the newest authentic ledger; records that do not open are ignored."""
        if self.sealer is None:
            return None
        share: tp.KeyShare | None = None
        ledger: Ledger | None = None
        for raw in await self.node.results.storage.read_tagged(self.tag, "all"):
            try:
                record = codec.decode(raw)
            except PayloadError:
                continue  # not ours: anyone in the project may write under the tag
            value = self.sealer.open(record, _SHARE_KIND)
            if isinstance(value, bytes):
                share = tp.KeyShare.from_bytes(value)
            entry = self.sealer.open(record, _LEDGER_KIND)
            if isinstance(entry, dict) and isinstance(entry.get("seq"), int) and entry["seq"] > self.seq:
                self.seq, ledger = entry["seq"], Ledger.from_bytes(entry["ledger"])
        if share is None:
            return None
        return share, ledger if ledger is not None else Ledger(self.node.config.analysis_id)

    async def save_share(self, share: tp.KeyShare) -> None:
        if self.sealer is None:
            self.node.log(
                "secure aggregation: no per-analysis secret (DATA_SOURCE_TOKEN) to seal the key share with; "
                "it stays in memory, and a restarted node contributes but no longer decrypts",
                "warn",
            )
            return
        record = self.sealer.seal(_SHARE_KIND, share.to_bytes())
        await self.node.results.save_local(record, tag=self.tag, filename="paillier-share")

    async def save_ledger(self, ledger: Ledger) -> None:
        if self.sealer is None:
            return
        self.seq += 1
        record = self.sealer.seal(_LEDGER_KIND, {"seq": self.seq, "ledger": ledger.to_bytes()})
        await self.node.results.save_local(record, tag=self.tag, filename="decryptor-ledger")


# -- set-up -------------------------------------------------------------------------------------------------


async def setup_decryptor(
    node: AsyncNode,
    secure: SecureAggregation,
    options: FederationOptions,
    aggregator: str,
    background: BackgroundTasks,
) -> DecryptorService:
    """On an analysis node: this node's share (from storage, the dealing, or the dealer) and its service.

    A node whose share is lost (a restart without node storage) still gets the public key and
    contributes; it no longer decrypts.
    """
    ids = decryptors(node)
    dealer = ids[0]
    # the aggregator never contributes to an encrypted sum (it adds its own values in the clear)
    members = list(ids)
    required = options.required(len(ids))
    vault = _Vault(node)
    stored = await vault.load()
    share: tp.KeyShare | None
    public: tp.ThresholdPublicKey
    ledger = Ledger(node.config.analysis_id)
    if stored is not None:
        share, ledger = stored
        public = share.public
        node.log("secure aggregation: key share and ledger loaded from node storage")
    elif node.node_id == dealer:
        threshold = secure.threshold if secure.threshold is not None else tp.default_threshold(len(ids))
        node.log(
            f"secure aggregation: dealing a {secure.key_bits}-bit key, {threshold} of {len(ids)} to decrypt"
        )
        public, shares = await asyncio.to_thread(tp.deal, len(ids), threshold, secure.key_bits)
        share = shares[0]
        await vault.save_share(share)
        await vault.save_ledger(ledger)
        for i, receiver in enumerate(ids[1:], start=1):
            body = {"analysis_id": node.config.analysis_id, "share": shares[i].to_bytes().hex()}
            background.spawn(_send_share(node, receiver, body, options.send_timeout))
        del shares, body  # the dealer keeps its own share only; the sends hold the others until delivered
        background.spawn(_send_public_key(node, public, node.partners, options.send_timeout))
    else:
        share, public = await _receive_share(
            node, dealer, ids, options.analysis_deadline, options.send_timeout
        )
        if share is not None:
            await vault.save_share(share)
            await vault.save_ledger(ledger)
    decryptor = (
        Decryptor(share, node.config.analysis_id, members, aggregator, required, ledger) if share else None
    )
    return DecryptorService(node, public, decryptor, vault, ids, options, secure)


async def _send_share(node: AsyncNode, receiver: str, body: dict[str, Any], timeout: float) -> None:
    _, missing = await node.send_message([receiver], SHARE, body, timeout=timeout)
    if missing:
        node.log(f"secure aggregation: {receiver} did not acknowledge its key share", "warn")


async def _receive_share(
    node: AsyncNode, dealer: str, ids: Sequence[str], timeout: float, grace: float
) -> tuple[tp.KeyShare | None, tp.ThresholdPublicKey]:
    """Wait for this node's share from the dealer.

    With the public key but no share for ``grace`` seconds (the dealer's bound on sending a share),
    none is coming (this pod restarted and its share was not stored): go on without one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    index = list(ids).index(node.node_id) + 1
    public: tp.ThresholdPublicKey | None = None
    grace_until: float | None = None
    asked = False
    while True:
        for message in messages.take(node, SHARE, [dealer]):
            if message.body.get("analysis_id") != node.config.analysis_id:
                continue
            share = tp.KeyShare.from_bytes(bytes.fromhex(message.body["share"]))
            if share.index != index:
                raise FederationError(f"the dealer sent key share {share.index}, this node's is {index}")
            node.log(f"secure aggregation: received key share {index} of {share.public.parties}")
            return share, share.public
        for message in messages.take(node, PUBLIC_KEY, [dealer]):
            if message.body.get("analysis_id") == node.config.analysis_id:
                public = _public_from(message.body)
                grace_until = grace_until or loop.time() + grace
        now = loop.time()
        if public is not None and grace_until is not None and now >= grace_until:
            node.log(
                "secure aggregation: the key was dealt without a share for this node (restarted, or missed); "
                "it contributes but does not decrypt",
                "warn",
            )
            return None, public
        if now >= deadline:
            raise FlameTimeoutError("a key share from the dealer", timeout, [dealer])
        if not asked and now >= deadline - timeout + node.timeouts.attempt:
            # nothing yet: maybe the key was dealt while this pod was down; the dealer answers with it
            await node.send_message([dealer], KEY_REQUEST, {"analysis_id": node.config.analysis_id})
            asked = True
        wait = min(deadline, grace_until or deadline, now + node.timeouts.attempt) - now
        await node.inbox.wait_until(
            lambda: messages.has_unread(node, (SHARE, PUBLIC_KEY), [dealer]), max(0.0, wait)
        )


async def _send_public_key(
    node: AsyncNode, public: tp.ThresholdPublicKey, receivers: Sequence[str], timeout: float
) -> None:
    _, missing = await node.send_message(
        list(receivers), PUBLIC_KEY, _public_body(node, public), timeout=timeout
    )
    if missing:
        node.log(f"secure aggregation: the public key was not acknowledged by {', '.join(missing)}", "warn")


async def obtain_public_key(node: AsyncNode, holder: str, timeout: float) -> tp.ThresholdPublicKey:
    """On the aggregator: ask the dealer for the threshold public key and wait for it (bounded).

    Asks again every attempt timeout without an answer (a dealer restarted after it acknowledged the
    request has lost it). The dealer may take a while: it makes safe primes first.
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
            return _public_from(answers[-1].body)
        if loop.time() >= deadline:
            raise FlameTimeoutError("the dealer's public key", timeout, [holder])
        node.log("secure aggregation: no public key from the dealer yet; asking again")


# -- contributions --------------------------------------------------------------------------------------------


def _paillier_key(public_key: paillier.PublicKey | tp.ThresholdPublicKey) -> paillier.PublicKey:
    return public_key.public_key if isinstance(public_key, tp.ThresholdPublicKey) else public_key


def encrypt_update(
    update: Any, public_key: paillier.PublicKey | tp.ThresholdPublicKey, secure: SecureAggregation
) -> Any:
    """The update with every secure field replaced by its serialised ciphertexts (shape kept in the clear)."""
    if not isinstance(update, Mapping):
        raise PayloadError("with secure aggregation an update must be a dict of fields")
    key = _paillier_key(public_key)
    out = dict(update)
    for name in secure.fields:
        if name not in update:
            raise PayloadError(f"the update has no secure field {name!r}")
        values = np.asarray(update[name], dtype=np.float64)
        encrypted = paillier.encrypt(key, values.ravel(), secure.layout, fast=secure.fast)
        out[name] = {_MARK: encrypted.to_bytes(), "shape": list(values.shape)}
    return out


def _commit_body(
    node: AsyncNode, encrypted: Mapping[str, Any], round: int, secure: SecureAggregation
) -> dict[str, Any]:
    analysis_id = node.config.analysis_id
    return {
        "analysis_id": analysis_id,
        "round": round,
        "node": node.node_id,
        "commitments": {
            name: commitment(analysis_id, round, name, node.node_id, encrypted[name][_MARK]).hex()
            for name in secure.fields
        },
    }


async def commit(
    node: AsyncNode,
    encrypted: Mapping[str, Any],
    round: int,
    secure: SecureAggregation,
    receivers: Sequence[str],
    background: BackgroundTasks,
    timeout: float,
    local: DecryptorService | None = None,
) -> None:
    """Send every decryptor the commitments to this node's ciphertexts of ``round``.

    Waits up to one attempt timeout for the acknowledgements, then lets the send go on in the
    background: a decryptor that is down must not hold the update back (the others suffice).
    """
    body = _commit_body(node, encrypted, round, secure)
    if local is not None:
        local.receive_commitments(node.node_id, body)
    others = [r for r in receivers if r != node.node_id]
    if not others:
        return
    task = background.spawn(node.send_message(others, COMMIT, body, timeout=timeout))
    await asyncio.wait({task}, timeout=node.timeouts.attempt)


# -- the aggregator ----------------------------------------------------------------------------------------


async def secure_round(
    node: AsyncNode,
    updates: Mapping[str, Any],
    round: int,
    secure: SecureAggregation,
    public_key: tp.ThresholdPublicKey,
    holder: str,
    timeout: float,
    inline_limit: int = 256_000,
) -> SecureUpdates:
    """Have the decryptors decrypt each secure field's sum over ``updates``; return SecureUpdates.

    ``holder`` (the dealer) is not special any more: every analysis node is asked.
    """
    del holder
    analysis_id = node.config.analysis_id
    ids = decryptors(node)
    plain: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    requests: dict[str, DecryptRequest] = {}
    sums: dict[str, paillier.EncryptedVector] = {}
    own_update = updates.get(node.node_id)  # the aggregator analyses data too: its values, in the clear
    encrypted = {sender: update for sender, update in updates.items() if sender != node.node_id}
    own: dict[str, np.ndarray] = {}
    for name in secure.fields:
        blobs: dict[str, bytes] = {}
        for sender, update in encrypted.items():
            entry = update.get(name) if isinstance(update, Mapping) else None
            if not isinstance(entry, Mapping) or not isinstance(entry.get(_MARK), bytes):
                raise PayloadError(f"the update of {sender} has no encrypted field {name!r}")
            shape = list(entry["shape"])
            if shapes.setdefault(name, shape) != shape:
                raise PayloadError(f"field {name!r} has shape {shape} at {sender}, {shapes[name]} elsewhere")
            blobs[sender] = entry[_MARK]
        if own_update is not None:
            if not isinstance(own_update, Mapping) or name not in own_update:
                raise PayloadError(f"the aggregator's own update has no secure field {name!r}")
            mine = np.asarray(own_update[name], dtype=np.float64)
            if shapes.setdefault(name, list(mine.shape)) != list(mine.shape):
                raise PayloadError(
                    f"field {name!r} has shape {list(mine.shape)} at {node.node_id}, {shapes[name]} elsewhere"
                )
            # at the resolution the encrypted values have, so a sum is the same in plain and secure mode
            own[name] = secure.layout.decode(secure.layout.encode(mine.ravel()), 1)
        requests[name] = DecryptRequest(analysis_id, round, name, blobs)
        vectors = [paillier.EncryptedVector.from_bytes(b, public_key.public_key) for b in blobs.values()]
        sums[name] = paillier.aggregate(vectors)
    for sender, update in updates.items():
        plain[sender] = {k: v for k, v in update.items() if k not in secure.fields}
    payload = await messages.pack(
        node, ids, {"requests": [r.to_body() for r in requests.values()]}, inline_limit
    )
    body = {"analysis_id": analysis_id, "round": round, **payload}
    node.log(
        f"round {round}: asking {len(ids)} decryptor(s) for their parts of the sums of {len(encrypted)} node(s)"
        + (" (the aggregator's own values are added in the clear)" if own else "")
    )
    parts = await _collect_parts(node, ids, round, body, public_key, requests, sums, timeout)
    totals: dict[str, Any] = {}
    for name in secure.fields:
        ctx = context(analysis_id, round, name, requests[name].contributions)
        values = await asyncio.to_thread(
            tp.combine_vector, public_key, sums[name], [p[name] for p in parts.values()], ctx, verify=False
        )
        summed = np.asarray(values, dtype=np.float64)
        if name in own:
            summed = summed + own[name]
        totals[name] = _shaped(summed, shapes[name])
    return SecureUpdates(plain, totals, len(updates))


async def _collect_parts(
    node: AsyncNode,
    ids: Sequence[str],
    round: int,
    body: dict[str, Any],
    public: tp.ThresholdPublicKey,
    requests: Mapping[str, DecryptRequest],
    sums: Mapping[str, paillier.EncryptedVector],
    timeout: float,
) -> dict[str, dict[str, tp.PartialDecryption]]:
    """Ask every decryptor, verify each answer's proofs, until ``threshold`` good ones (or fail).

    Decryptors that do not answer are asked again every attempt timeout (a restarted one lost the
    request); one that lacked a commitment (still on its way) too. Hard refusals and bad proofs count
    against the ``l - t`` decryptors the analysis may lose.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    good: dict[str, dict[str, tp.PartialDecryption]] = {}
    refused: dict[str, str] = {}
    retry: dict[str, str] = {}
    sending = asyncio.ensure_future(node.send_message(list(ids), DECRYPT, body, timeout=timeout))
    next_request = loop.time() + node.timeouts.attempt
    analysis_id = node.config.analysis_id
    try:
        while True:
            for message in messages.take(node, DECRYPTED, list(ids)):
                if message.body.get("round") != round or message.body.get("analysis_id") != analysis_id:
                    continue
                sender = message.sender
                if sender in good or sender in refused:
                    continue
                if "error" in message.body:
                    reason = str(message.body["error"])
                    if message.body.get("retry"):
                        retry[sender] = reason
                    else:
                        refused[sender] = reason
                        node.log(f"round {round}: {sender} refused to decrypt: {reason}", "warn")
                    continue
                try:
                    value = await messages.unpack(node, message)
                    answer = {name: tp.PartialDecryption.from_payload(value[name]) for name in requests}
                    for name, partial in answer.items():
                        ctx = context(analysis_id, round, name, requests[name].contributions)
                        await asyncio.to_thread(tp.verify_partial, public, sums[name]._cts, partial, ctx)
                except (FlameError, KeyError, TypeError, ValueError) as exc:
                    refused[sender] = f"an invalid partial decryption ({exc})"
                    node.log(f"round {round}: {sender} sent {refused[sender]}", "warn")
                    continue
                retry.pop(sender, None)
                good[sender] = answer
            if len(good) >= public.threshold:
                return dict(list(good.items())[: public.threshold])
            if len(refused) > len(ids) - public.threshold:
                reasons = "; ".join(f"{n}: {r}" for n, r in sorted(refused.items()))
                raise DecryptionRefused(
                    f"round {round}: the decryptors refused to decrypt ({len(refused)} of {len(ids)}, at most "
                    f"{len(ids) - public.threshold} may): {reasons}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                silent = [n for n in ids if n not in good and n not in refused]
                detail = "; ".join(f"{n}: {r}" for n, r in sorted({**retry, **refused}.items()))
                raise FlameTimeoutError(
                    f"{public.threshold} partial decryptions of round {round} (have {len(good)}"
                    + (f"; {detail}" if detail else "")
                    + ")",
                    timeout,
                    silent,
                )
            if loop.time() >= next_request:
                again = [n for n in ids if n not in good and n not in refused]
                node.log(f"round {round}: asking {', '.join(again)} again for their parts")
                if sending.done():
                    sending = asyncio.ensure_future(node.send_message(again, DECRYPT, body, timeout=timeout))
                next_request = loop.time() + node.timeouts.attempt
            wait = min(remaining, max(0.0, next_request - loop.time()))
            await node.inbox.wait_until(lambda: messages.has_unread(node, (DECRYPTED,), list(ids)), wait)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)


def _shaped(values: np.ndarray, shape: list[int]) -> Any:
    return float(values[0]) if shape == [] else values.reshape(shape)


# -- the decryptors ----------------------------------------------------------------------------------------


class DecryptorService:
    """Answers on an analysis node: the public key to whoever asks, commitments, decryption requests.

    :attr:`decryptor` is None on a node that lost its share (it still contributes).
    """

    def __init__(
        self,
        node: AsyncNode,
        public: tp.ThresholdPublicKey,
        decryptor: Decryptor | None,
        vault: _Vault,
        ids: Sequence[str],
        options: FederationOptions,
        secure: SecureAggregation,
    ) -> None:
        self.node = node
        self.public = public
        self.decryptor = decryptor
        self._vault = vault
        self.decryptors = list(ids)
        self.options = options
        self.secure = secure
        #: answers already given, by digest of the request: an aggregator asking again gets them at once
        self._answers: dict[bytes, dict[str, Any]] = {}  # digest -> the parts, packed anew per answer
        #: requests waiting for a commitment still on its way: digest -> (round, decoded request)
        self._deferred: dict[bytes, tuple[int, Any]] = {}

    def pending(self, aggregator: str) -> bool:
        """Whether requests wait to be answered."""
        return (
            messages.has_unread(self.node, (DECRYPT,), [aggregator])
            or messages.has_unread(self.node, (KEY_REQUEST,))
            or messages.has_unread(self.node, (COMMIT,))
        )

    def receive_commitments(self, sender: str, body: Mapping[str, Any]) -> None:
        """Record the commitments ``sender`` sent (refused ones are logged and dropped)."""
        if self.decryptor is None:
            return
        commitments = body.get("commitments")
        if not isinstance(commitments, Mapping):
            self.node.log(f"a malformed commitment message from {sender}", "warn")
            return
        for name, digest in commitments.items():
            try:
                self.decryptor.receive_commitment(
                    sender,
                    {
                        "analysis_id": body.get("analysis_id"),
                        "round": body.get("round"),
                        "field": name,
                        "node": body.get("node"),
                        "commitment": bytes.fromhex(digest) if isinstance(digest, str) else None,
                    },
                )
            except DecryptionRefused as exc:
                self.node.log(f"refused a commitment: {exc}", "warn")

    async def serve(self, aggregator: str) -> None:
        """Answer every pending request; retry the ones that waited for a commitment when one arrives."""
        for message in messages.take(self.node, KEY_REQUEST):
            self.node.log(f"sending the public key to {message.sender}")
            await self.node.send_message([message.sender], PUBLIC_KEY, _public_body(self.node, self.public))
        commits = messages.take(self.node, COMMIT)
        for message in commits:
            self.receive_commitments(message.sender, message.body)
        if commits:
            for digest, (round, value) in list(self._deferred.items()):
                await self._answer_value(round, value, digest, aggregator, first=False)
        for message in messages.take(self.node, DECRYPT, [aggregator]):
            await self._answer(message, aggregator)

    async def _answer(self, message: Any, aggregator: str) -> None:
        body = message.body
        round = body.get("round")
        try:
            if self.decryptor is None:
                raise DecryptionRefused("this node holds no key share (lost with a restart)")
            if body.get("analysis_id") != self.node.config.analysis_id or not isinstance(round, int):
                raise DecryptionRefused("a request for another analysis, or without a round")
            value = await messages.unpack(self.node, message)
        except (DecryptionRefused, PayloadError, KeyError, TypeError, ValueError) as exc:
            self.node.log(f"round {round}: refused to decrypt: {exc}", "warn")
            reply = {"analysis_id": self.node.config.analysis_id, "round": round, "error": str(exc)}
            await self.node.send_message([aggregator], DECRYPTED, reply)
            return
        digest = hashlib.sha256(codec.encode(value)).digest()
        await self._answer_value(round, value, digest, aggregator, first=True)

    async def _answer_value(
        self, round: int, value: Any, digest: bytes, aggregator: str, *, first: bool
    ) -> None:
        """Check and decrypt one request (its decoded payload), reply; defer it while a commitment is missing.

        A deferred request is tried again whenever commitments arrive; the aggregator is told once
        (``retry``), and gets the parts as soon as they are made.
        """
        reply: dict[str, Any] = {"analysis_id": self.node.config.analysis_id, "round": round}
        try:
            assert self.decryptor is not None
            if digest in self._answers:
                self.node.log(f"round {round}: the aggregator asked again; sending the same parts")
                cached = self._answers[digest]
                reply.update(await messages.pack(self.node, [aggregator], cached, self.options.inline_limit))
                await self.node.send_message([aggregator], DECRYPTED, reply)
                return
            requests = [DecryptRequest.from_body(b) for b in value["requests"]]
            if {r.round for r in requests} != {round}:
                raise DecryptionRefused("a request whose parts name another round than the message")
            if len({r.field for r in requests}) != len(requests):
                raise DecryptionRefused("a request that names a field twice")
            decryptor = self.decryptor
            for request in requests:  # every rule first: all fields or none
                await asyncio.to_thread(decryptor.check, request)
            parts: dict[str, Any] = {}
            for request in requests:
                partial = await asyncio.to_thread(decryptor.decrypt, request)
                parts[request.field] = partial.to_payload()
            await self._vault.save_ledger(decryptor.ledger)  # before any part leaves this node
            self._answers[digest] = parts
            reply.update(await messages.pack(self.node, [aggregator], parts, self.options.inline_limit))
            composition = ", ".join(sorted(requests[0].contributions)) if requests else ""
            self.node.log(f"round {round}: decrypted my part of the sums of {composition}")
        except MissingCommitment as exc:
            self._deferred[digest] = (round, value)
            if not first:
                return
            reply.update(error=str(exc), retry=True)
            self.node.log(f"round {round}: waiting for a commitment: {exc}", "warn")
            await self.node.send_message([aggregator], DECRYPTED, reply)
            return
        except (DecryptionRefused, PayloadError, KeyError, TypeError, ValueError) as exc:
            reply["error"] = str(exc)
            self.node.log(f"round {round}: refused to decrypt: {exc}", "warn")
        self._deferred.pop(digest, None)
        await self.node.send_message([aggregator], DECRYPTED, reply)


#: The name the analysis side knows the service by.
KeyHolder = DecryptorService

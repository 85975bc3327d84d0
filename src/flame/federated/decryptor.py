"""What a decryptor checks before it decrypts its part of a secure sum, and the ledger it keeps.

Every analysis node holds one share of the analysis' threshold Paillier key
(:mod:`flame.protocols.threshold_paillier`) and is a *decryptor*. The aggregator does not ask for a
decryption of a sum it made: it shows each decryptor the individual ciphertexts, and the decryptor

1. checks each node's ciphertexts against the *commitment* that node sent it directly (SHA-256 over
   analysis id, round, field, node id and the ciphertext bytes; :func:`commitment`). The broker
   authenticates senders, so a commitment counts for node ``X`` only if it came from ``X``: the
   aggregator can neither invent contributions nor relabel a node's ciphertexts with another round or
   field;
2. counts the distinct contributors itself (each vector must be one node's single contribution) and
   refuses fewer than ``max(2, quorum)``, or two nodes with identical ciphertexts;
3. refuses any composition that names the aggregator: its own values (when it analyses data too)
   never enter an encrypted sum, it adds them in the clear after decryption. It could otherwise
   commit to anything, e.g. a re-randomised inverse of another node's ciphertexts, and have
   ``{A, B, aggregator}`` decrypt to ``A``;
4. consults its :class:`Ledger` of what it decrypted in this analysis, and refuses
   (:class:`DecryptionRefused`, whose message names the rule) when

   * **the fixed-composition rule**: the composition (set of contributing nodes) differs from the
     first one this decryptor decrypted in the analysis. One composition per analysis, for every
     round and field: sums over different sets of nodes could be differenced to isolate a node
     (``{A,B,C}`` then ``{A,B}`` gives ``C``; ``{A,B}``, ``{B,C}``, ``{A,C}`` gives
     ``A = (S1 - S2 + S3) / 2``). Unlike a rule over the whole family of compositions (whether
     their span isolates a node), this rule is *pairwise*: any two decrypted requests must agree.
     That is what makes per-decryptor ledgers sound (below); an isolation rule over a family is not,
     as an aggregator can show each decryptor a different harmless part of an isolating family.
     The cost: a secure analysis tolerates stragglers in its first round only; a node of the first
     composition missing later fails the analysis;
   * the (round, field) was already decrypted with other ciphertexts (the commitment digests used
     are recorded): a node that restarted and committed a second update for the same round must not
     give ``S - S'``, the difference of its two updates;

5. recomputes the encrypted sum itself and returns its partial decryption, with a proof bound to the
   analysis, round, field and composition.
The ledger (with the commitments received) is written to the decryptor's node storage next to its
share *before* the partial decryption leaves the node, so a restarted decryptor still refuses what
it refused before; it is deleted with the analysis.

Why per-decryptor ledgers suffice: the threshold ``t`` is a majority of the decryptors, so any two
groups of ``t`` decryptors share one, and that decryptor has both requests in its ledger. Since every
rule compares two requests only, two requests that break it can never both be decrypted, whichever
decryptors the aggregator asks: every decrypted sum is over the same nodes and each (round, field)
over the same ciphertexts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from flame import codec
from flame.errors import FederationError
from flame.protocols import paillier
from flame.protocols.threshold_paillier import KeyShare, PartialDecryption, partial_decrypt_vector

__all__ = [
    "DecryptRequest",
    "DecryptionRefused",
    "Decryptor",
    "Ledger",
    "MissingCommitment",
    "commitment",
    "context",
    "digests",
    "isolated_nodes",
]

_LEDGER_FORMAT = "flame.decryptor.ledger"
_VERSION = 1


class DecryptionRefused(FederationError):
    """A decryptor refused a decryption request: the message names the rule that refused it."""


class MissingCommitment(DecryptionRefused):
    """A contribution without the node's commitment: refused, but it may still be on its way."""


def _lp(digest: Any, *parts: str | int | bytes) -> None:
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)


def commitment(analysis_id: str, round: int, field: str, node_id: str, ciphertexts: bytes) -> bytes:
    """SHA-256 over the analysis, round, field, node and a node's serialised encrypted vector."""
    digest = hashlib.sha256(b"flame-secure-commitment-v1")
    _lp(digest, analysis_id, round, field, node_id, ciphertexts)
    return digest.digest()


def context(analysis_id: str, round: int, field: str, composition: Iterable[str]) -> bytes:
    """The bytes a partial decryption's proof is bound to."""
    digest = hashlib.sha256(b"flame-secure-context-v1")
    _lp(digest, analysis_id, round, field, *sorted(composition))
    return digest.digest()


def digests(analysis_id: str, request: DecryptRequest) -> tuple[bytes, ...]:
    """The sorted commitment digests of a request's ciphertexts: what a (round, field) was decrypted with."""
    return tuple(
        sorted(
            commitment(analysis_id, request.round, request.field, node, blob)
            for node, blob in request.contributions.items()
        )
    )


def isolated_nodes(compositions: Iterable[Iterable[str]], known: Iterable[str] = ()) -> set[str]:
    """The nodes whose value alone follows from sums over ``compositions`` (and the ``known`` values).

    A node ``X`` is isolated when its unit vector lies in the rational span of the compositions'
    indicator vectors and the unit vectors of ``known``. Exact (fractions), by Gaussian elimination.
    """
    sets = [frozenset(c) for c in compositions]
    known = set(known)
    nodes = sorted(set().union(*sets) | known) if sets or known else []
    index = {node: i for i, node in enumerate(nodes)}
    rows = [[Fraction(1 if node in s else 0) for node in nodes] for s in sets]
    rows += [[Fraction(1 if j == index[k] else 0) for j in range(len(nodes))] for k in known]
    basis = _echelon(rows)
    rank = len(basis)
    isolated = set()
    for node in nodes:
        if node in known:
            continue
        unit = [Fraction(1 if j == index[node] else 0) for j in range(len(nodes))]
        if len(_echelon([*basis, unit])) == rank:
            isolated.add(node)
    return isolated


def _echelon(rows: Sequence[Sequence[Fraction]]) -> list[list[Fraction]]:
    """A row echelon basis of the rows' span."""
    matrix = [list(r) for r in rows]
    basis: list[list[Fraction]] = []
    columns = len(matrix[0]) if matrix else 0
    for col in range(columns):
        pivot = next((r for r in matrix if r[col] != 0), None)
        if pivot is None:
            continue
        matrix.remove(pivot)
        basis.append(pivot)
        matrix = [
            [a - b * (r[col] / pivot[col]) for a, b in zip(r, pivot, strict=True)] if r[col] else r
            for r in matrix
        ]
    return basis


@dataclass
class Ledger:
    """One decryptor's record of an analysis: commitments received, compositions decrypted.

    ``rounds`` maps a round to its composition (sorted node ids) and the fields decrypted with it.
    """

    analysis_id: str
    rounds: dict[int, tuple[tuple[str, ...], set[str]]] = field(default_factory=dict)
    #: (round, field, node) -> commitments that node sent (a restarted node may commit again)
    commitments: dict[tuple[int, str, str], set[bytes]] = field(default_factory=dict)
    #: (round, field) -> the commitment digests of the ciphertexts decrypted, sorted
    decrypted: dict[tuple[int, str], tuple[bytes, ...]] = field(default_factory=dict)

    def compositions(self) -> list[tuple[str, ...]]:
        """The distinct compositions decrypted so far."""
        return sorted({composition for composition, _ in self.rounds.values()})

    def to_bytes(self) -> bytes:
        """The ledger in :mod:`flame.codec`'s format, for node storage."""
        return codec.encode(
            {
                "format": _LEDGER_FORMAT,
                "version": _VERSION,
                "analysis_id": self.analysis_id,
                "rounds": [[r, list(c), sorted(f)] for r, (c, f) in sorted(self.rounds.items())],
                "commitments": [
                    [r, f, n, sorted(digests)] for (r, f, n), digests in sorted(self.commitments.items())
                ],
                "decrypted": [[r, f, list(d)] for (r, f), d in sorted(self.decrypted.items())],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Ledger:
        """The ledger :meth:`to_bytes` wrote."""
        body = codec.decode(data)
        if not isinstance(body, Mapping) or body.get("format") != _LEDGER_FORMAT:
            raise DecryptionRefused("the decryptor's stored ledger is malformed: refusing to decrypt")
        ledger = cls(str(body["analysis_id"]))
        for r, composition, fields in body["rounds"]:
            ledger.rounds[int(r)] = (tuple(composition), set(fields))
        for r, f, n, digests in body["commitments"]:
            ledger.commitments[(int(r), str(f), str(n))] = set(digests)
        for r, f, digests in body.get("decrypted", []):
            ledger.decrypted[(int(r), str(f))] = tuple(bytes(d) for d in digests)
        return ledger


@dataclass(frozen=True)
class DecryptRequest:
    """The aggregator's request: for one round and field, each contributing node's serialised vector."""

    analysis_id: str
    round: int
    field: str
    contributions: Mapping[str, bytes]

    def to_body(self) -> dict[str, Any]:
        """A message body (codec-encodable)."""
        return {
            "analysis_id": self.analysis_id,
            "round": self.round,
            "field": self.field,
            "contributions": [[node, blob] for node, blob in self.contributions.items()],
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> DecryptRequest:
        """The request :meth:`to_body` made; malformed bodies are refused."""
        try:
            pairs = body["contributions"]
            nodes = [str(node) for node, _ in pairs]
            if len(set(nodes)) != len(nodes):
                raise DecryptionRefused(
                    "the request lists a node twice: each node contributes once per round"
                )
            contributions = {str(node): bytes(blob) for node, blob in pairs}
            round_, name = body["round"], body["field"]
            if isinstance(round_, bool) or not isinstance(round_, int) or not isinstance(name, str):
                raise TypeError("round must be an int and field a str")
            return cls(str(body["analysis_id"]), round_, name, contributions)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecryptionRefused(f"malformed decryption request: {exc}") from exc


class Decryptor:
    """One analysis node's decryptor: its key share, the analysis' rules and its ledger.

    ``nodes`` are the nodes that may contribute (the analysis nodes; never the aggregator, which adds
    its own values in the clear); ``aggregator`` is the aggregator's node id; ``quorum`` the minimum
    number of contributors to an encrypted sum (never below 2).
    """

    def __init__(
        self,
        share: KeyShare,
        analysis_id: str,
        nodes: Iterable[str],
        aggregator: str,
        quorum: int,
        ledger: Ledger | None = None,
    ) -> None:
        self.share = share
        self.analysis_id = analysis_id
        self.nodes = frozenset(nodes) - {aggregator}
        self.aggregator = aggregator
        self.required = max(2, quorum)
        self.ledger = ledger if ledger is not None else Ledger(analysis_id)
        if self.ledger.analysis_id != analysis_id:
            raise DecryptionRefused("the stored ledger belongs to another analysis")

    def receive_commitment(self, sender: str, body: Mapping[str, Any]) -> None:
        """Record a commitment that ``sender`` (authenticated by the broker) sent for its own ciphertexts."""
        node, round_, name, digest = (body.get(k) for k in ("node", "round", "field", "commitment"))
        if node != sender:
            raise DecryptionRefused(
                f"a commitment for node {node!r} arrived from {sender}: only a node commits to its own data"
            )
        if body.get("analysis_id") != self.analysis_id:
            raise DecryptionRefused(f"a commitment from {sender} for another analysis")
        if sender not in self.nodes:
            raise DecryptionRefused(f"a commitment from {sender}, which does not contribute to this analysis")
        if not isinstance(round_, int) or not isinstance(name, str) or not isinstance(digest, bytes):
            raise DecryptionRefused(f"a malformed commitment from {sender}")
        self.ledger.commitments.setdefault((round_, name, sender), set()).add(digest)

    def check(self, request: DecryptRequest) -> paillier.EncryptedVector:
        """Apply every rule to ``request``; return the encrypted sum to decrypt, or raise DecryptionRefused."""
        if request.analysis_id != self.analysis_id:
            raise DecryptionRefused(f"a request for analysis {request.analysis_id!r}, not this one")
        if request.round < 0:
            raise DecryptionRefused(f"round {request.round} is not a round")
        contributors = sorted(request.contributions)
        if self.aggregator in request.contributions:
            raise DecryptionRefused(
                f"the request names the aggregator {self.aggregator} as a contributor: the aggregator's own "
                "values never enter an encrypted sum (it adds them in the clear after decryption)"
            )
        strangers = [n for n in contributors if n not in self.nodes]
        if strangers:
            raise DecryptionRefused(f"{', '.join(strangers)} do(es) not contribute to this analysis")
        if len(contributors) < self.required:
            raise DecryptionRefused(
                f"round {request.round}, field {request.field!r}: {len(contributors)} distinct contributor(s), "
                f"below the quorum of {self.required}"
            )
        blobs = list(request.contributions.values())
        if len(set(blobs)) != len(blobs):
            raise DecryptionRefused("two contributors show the same ciphertexts: a copied contribution")
        vectors = []
        for node in contributors:
            blob = request.contributions[node]
            received = self.ledger.commitments.get((request.round, request.field, node))
            if not received:
                raise MissingCommitment(
                    f"no commitment from {node} for round {request.round}, field {request.field!r}"
                )
            if commitment(self.analysis_id, request.round, request.field, node, blob) not in received:
                raise DecryptionRefused(
                    f"the ciphertexts shown for {node} (round {request.round}, field {request.field!r}) do "
                    "not match the commitment it sent"
                )
            vector = paillier.EncryptedVector.from_bytes(blob, self.share.public.public_key)
            if vector.contributors != 1:
                raise DecryptionRefused(
                    f"the vector shown for {node} claims {vector.contributors} contributors"
                )
            vectors.append(vector)
        composition = tuple(contributors)
        fixed = self.ledger.compositions()
        if fixed and fixed[0] != composition:
            raise DecryptionRefused(
                f"secure mode's fixed composition: this analysis was decrypted with {', '.join(fixed[0])}; "
                f"refusing another composition ({', '.join(composition)}) in round {request.round}, field "
                f"{request.field!r}: sums over different sets of nodes could isolate one node's values"
            )
        used = self.ledger.decrypted.get((request.round, request.field))
        if used is not None and used != digests(self.analysis_id, request):
            raise DecryptionRefused(
                f"round {request.round}, field {request.field!r} was decrypted with other ciphertexts: "
                "refusing a second sum of the same round (its difference would reveal one node's change)"
            )
        if not fixed:
            isolated = isolated_nodes([composition])
            if isolated:  # unreachable with a quorum of 2; kept as the last line of defence
                raise DecryptionRefused(
                    f"decrypting the sum of {', '.join(composition)} would isolate the contribution of "
                    f"{', '.join(sorted(isolated))}"
                )
        return paillier.aggregate(vectors)

    def decrypt(self, request: DecryptRequest) -> PartialDecryption:
        """Check ``request``, record it in the ledger and return this share's partial decryption.

        The caller persists :attr:`ledger` (``ledger.to_bytes()``) before sending the result.
        """
        total = self.check(request)
        composition = tuple(sorted(request.contributions))
        self.ledger.rounds.setdefault(request.round, (composition, set()))[1].add(request.field)
        self.ledger.decrypted[(request.round, request.field)] = digests(self.analysis_id, request)
        ctx = context(self.analysis_id, request.round, request.field, composition)
        return partial_decrypt_vector(self.share, total, ctx)

"""A malicious aggregator against the decryptors (flame.federated.decryptor), at the protocol level.

Three analysis nodes A, B, C each hold a share of a 2-of-3 threshold key and decrypt; the aggregator
holds the public key, every ciphertext, and sends whatever requests it likes. The honest nodes send
each decryptor a commitment to their ciphertexts (the broker authenticates the sender). Every attack
below is refused, with an error naming the rule, and nothing decrypted depends on fewer than the
quorum of nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from flame.federated.decryptor import (
    DecryptionRefused,
    Decryptor,
    DecryptRequest,
    Ledger,
    commitment,
    context,
    isolated_nodes,
)
from flame.protocols import paillier
from flame.protocols.paillier import Layout, PaillierError
from flame.protocols.threshold_paillier import KeyShare, PartialDecryption, combine_vector
from tests.helpers_threshold import dealt

ANALYSIS = "analysis-1"
AGG = "aggregator"
NODES = ("A", "B", "C")
LAYOUT = Layout(frac_bits=16, bound=1000, max_contributors=8)
VALUES = {"A": np.array([1.5, -2.0, 300.0]), "B": np.array([4.0, 5.25, -6.0]), "C": np.array([7.0, 8.0, 9.5])}


@dataclass
class Federation:
    """Decryptors A, B, C and what the aggregator has seen."""

    decryptors: dict[str, Decryptor]
    aggregator_seen: dict[tuple[int, str, str], bytes] = field(default_factory=dict)

    @property
    def public(self):  # type: ignore[no-untyped-def]
        return next(iter(self.decryptors.values())).share.public

    def contribute(self, node: str, round: int, values: np.ndarray | None = None, name: str = "x") -> bytes:
        """Node encrypts, commits to every decryptor, sends the ciphertexts to the aggregator."""
        values = VALUES[node] * round if values is None else values
        blob = paillier.encrypt(self.public.public_key, values, LAYOUT, fast=True).to_bytes()
        body = {
            "analysis_id": ANALYSIS,
            "round": round,
            "field": name,
            "node": node,
            "commitment": commitment(ANALYSIS, round, name, node, blob),
        }
        for decryptor in self.decryptors.values():
            decryptor.receive_commitment(node, body)
        self.aggregator_seen[(round, name, node)] = blob
        return blob

    def request(self, round: int, nodes: tuple[str, ...], name: str = "x") -> DecryptRequest:
        return DecryptRequest(
            ANALYSIS, round, name, {n: self.aggregator_seen[(round, name, n)] for n in nodes}
        )

    def decrypt(self, request: DecryptRequest, at: tuple[str, ...] = ("A", "B")) -> np.ndarray:
        """Ask decryptors ``at``, combine as the aggregator would."""
        partials = [self.decryptors[d].decrypt(request) for d in at]
        return combine_parts(self.public, request, partials)


def combine_parts(public, request: DecryptRequest, partials: list[PartialDecryption]) -> np.ndarray:  # type: ignore[no-untyped-def]
    vectors = [
        paillier.EncryptedVector.from_bytes(b, public.public_key)
        for _, b in sorted(request.contributions.items())
    ]
    total = paillier.aggregate(vectors)
    ctx = context(ANALYSIS, request.round, request.field, request.contributions)
    return combine_vector(public, total, partials, ctx)


def make_federation(
    nodes: tuple[str, ...] = NODES, quorum: int = 2, aggregator_contributes: bool = False
) -> Federation:
    _, shares = dealt(3, 2)
    members = set(nodes) | ({AGG} if aggregator_contributes else set())
    return Federation({n: Decryptor(shares[i], ANALYSIS, members, AGG, quorum) for i, n in enumerate(nodes)})


@pytest.fixture
def fed() -> Federation:
    return make_federation()


def test_an_honest_round_decrypts_the_sum_as_plain_mode_would(fed: Federation) -> None:
    for node in NODES:
        fed.contribute(node, 1)
    result = fed.decrypt(fed.request(1, NODES))
    plain = sum(np.rint(v * LAYOUT.scale) for v in VALUES.values()) / LAYOUT.scale
    np.testing.assert_array_equal(result, plain)
    # asked again with the same composition (a resumed aggregator): the same answer
    np.testing.assert_array_equal(fed.decrypt(fed.request(1, NODES), at=("B", "C")), plain)


def test_zero_padding_one_nodes_ciphertext_is_refused(fed: Federation) -> None:
    for node in NODES:
        fed.contribute(node, 1)
    zeros = paillier.encrypt(fed.public.public_key, np.zeros(3), LAYOUT).to_bytes()
    zeros2 = paillier.encrypt(fed.public.public_key, np.zeros(3), LAYOUT).to_bytes()
    padded = DecryptRequest(
        ANALYSIS, 1, "x", {"A": fed.aggregator_seen[(1, "x", "A")], "B": zeros, "C": zeros2}
    )
    with pytest.raises(DecryptionRefused, match=r"shown for B .* do not match the commitment"):
        fed.decryptors["A"].decrypt(padded)
    invented = DecryptRequest(ANALYSIS, 1, "x", {"A": fed.aggregator_seen[(1, "x", "A")], "pad-1": zeros})
    with pytest.raises(DecryptionRefused, match="pad-1 do\\(es\\) not contribute"):
        fed.decryptors["B"].decrypt(invented)


def test_forged_counts_are_refused(fed: Federation) -> None:
    blob = fed.contribute("A", 1)
    fed.contribute("B", 1)
    alone = DecryptRequest(ANALYSIS, 1, "x", {"A": blob})
    with pytest.raises(DecryptionRefused, match="1 distinct contributor\\(s\\), below the quorum of 2"):
        fed.decryptors["C"].decrypt(alone)
    # A's own ciphertexts relabelled as a sum of three contributions: the bytes no longer match
    vector = paillier.EncryptedVector.from_bytes(blob, fed.public.public_key)
    claimed = paillier.EncryptedVector(vector.public_key, vector.layout, vector.length, 3, vector._cts)
    forged = DecryptRequest(
        ANALYSIS, 1, "x", {"A": claimed.to_bytes(), "B": fed.aggregator_seen[(1, "x", "B")]}
    )
    with pytest.raises(DecryptionRefused, match=r"shown for A .* do not match"):
        fed.decryptors["C"].decrypt(forged)


def test_a_quorum_below_two_is_raised_to_two() -> None:
    fed = make_federation(quorum=1)
    blob = fed.contribute("A", 1)
    with pytest.raises(DecryptionRefused, match="below the quorum of 2"):
        fed.decryptors["B"].decrypt(DecryptRequest(ANALYSIS, 1, "x", {"A": blob}))


def test_fresh_round_numbers_do_not_reopen_old_ciphertexts(fed: Federation) -> None:
    for node in NODES:
        fed.contribute(node, 1)
    fed.decrypt(fed.request(1, NODES))
    old = fed.request(1, ("A", "B"))
    fresh = DecryptRequest(ANALYSIS, 7, "x", dict(old.contributions))
    with pytest.raises(DecryptionRefused, match="no commitment from A for round 7"):
        fed.decryptors["C"].decrypt(fresh)
    other_field = DecryptRequest(ANALYSIS, 1, "y", dict(old.contributions))
    with pytest.raises(DecryptionRefused, match="no commitment from A for round 1, field 'y'"):
        fed.decryptors["C"].decrypt(other_field)


def test_a_replayed_round_with_another_composition_is_refused(fed: Federation) -> None:
    for node in NODES:
        fed.contribute(node, 1)
    fed.decrypt(fed.request(1, ("A", "B")), at=("A", "B"))
    with pytest.raises(DecryptionRefused, match="decrypted with A, B; refusing another composition"):
        fed.decryptors["A"].decrypt(fed.request(1, ("A", "C")))


def test_the_same_ciphertext_twice_is_refused(fed: Federation) -> None:
    blob = fed.contribute("A", 1)
    fed.contribute("B", 1)
    with pytest.raises(DecryptionRefused, match="same ciphertexts"):
        fed.decryptors["C"].decrypt(DecryptRequest(ANALYSIS, 1, "x", {"A": blob, "B": blob}))
    body = {"analysis_id": ANALYSIS, "round": 1, "field": "x", "contributions": [["A", blob], ["A", blob]]}
    with pytest.raises(DecryptionRefused, match="lists a node twice"):
        DecryptRequest.from_body(body)


def test_a_subset_differing_by_one_node_from_an_earlier_one_is_refused(fed: Federation) -> None:
    for node in NODES:
        fed.contribute(node, 1)
        fed.contribute(node, 2)
    fed.decrypt(fed.request(1, NODES))
    with pytest.raises(DecryptionRefused, match=r"fixed composition: .* decrypted with A, B, C"):
        fed.decryptors["A"].decrypt(fed.request(2, ("A", "B")))


def test_the_three_pairs_differencing_attack_is_refused_at_the_second_pair(fed: Federation) -> None:
    for round in (1, 2, 3):
        for node in NODES:
            fed.contribute(node, round, VALUES[node])  # the same values every round
    fed.decrypt(fed.request(1, ("A", "B")))
    for d in NODES[:2]:
        with pytest.raises(DecryptionRefused, match="fixed composition"):
            fed.decryptors[d].decrypt(fed.request(2, ("B", "C")))


def test_the_triangle_across_decryptor_pairs_is_refused() -> None:
    """Each decryptor sees only two of {A,B}, {B,C}, {A,C} (harmless alone); the family isolates A.

    A rule over the whole family cannot catch it; the fixed composition, a pairwise rule, does: the
    decryptor shared by any two of the three pairs refuses the second composition it is shown.
    """
    fed = make_federation()
    for round in (1, 2, 3):
        for node in NODES:
            fed.contribute(node, round, VALUES[node])
    decrypted = {1: fed.decrypt(fed.request(1, ("A", "B")), at=("A", "B"))}
    for round, composition, at in ((2, ("B", "C"), ("B", "C")), (3, ("A", "C"), ("A", "C"))):
        request = fed.request(round, composition)
        parts = []
        for d in at:
            try:
                parts.append(fed.decryptors[d].decrypt(request))
            except DecryptionRefused as exc:
                assert "fixed composition" in str(exc)
        assert len(parts) < 2, f"round {round} got {len(parts)} parts"
        with pytest.raises(PaillierError):
            combine_parts(fed.public, request, parts)
    assert list(decrypted) == [1]


def test_the_isolation_rule() -> None:
    assert isolated_nodes([("A", "B", "C")]) == set()
    assert isolated_nodes([("A", "B", "C"), ("A", "B")]) == {"C"}
    assert isolated_nodes([("A", "B"), ("B", "C")]) == set()
    assert isolated_nodes([("A", "B"), ("B", "C"), ("A", "C")]) == {"A", "B", "C"}
    assert isolated_nodes([("A", "B", "C", "D"), ("A", "B")]) == set()  # C + D only
    assert isolated_nodes([("A", "G")], known=["G"]) == {"A"}


def _aggregator_commits(fed: Federation, round: int, blob: bytes) -> None:
    body = {"analysis_id": ANALYSIS, "round": round, "field": "x", "node": AGG,
            "commitment": commitment(ANALYSIS, round, "x", AGG, blob)}  # fmt: skip
    for decryptor in fed.decryptors.values():
        with pytest.raises(DecryptionRefused, match="does not contribute"):
            decryptor.receive_commitment(AGG, body)


def test_an_aggregator_committing_to_the_inverse_of_a_nodes_ciphertext_is_refused() -> None:
    """{A, B, AGG = Enc(B)^-1} would decrypt to A in one round: the aggregator never contributes."""
    import gmpy2

    fed = make_federation(aggregator_contributes=True)
    fed.contribute("A", 1)
    b = fed.contribute("B", 1)
    key = fed.public.public_key
    vector = paillier.EncryptedVector.from_bytes(b, key)
    inverse = paillier.EncryptedVector(
        key, vector.layout, vector.length, 1, [gmpy2.invert(c, key.nsquare) for c in vector._cts]
    ).to_bytes()
    _aggregator_commits(fed, 1, inverse)
    request = DecryptRequest(
        ANALYSIS, 1, "x", {"A": fed.aggregator_seen[(1, "x", "A")], "B": b, AGG: inverse}
    )
    for d in NODES:
        with pytest.raises(DecryptionRefused, match=r"names the aggregator .* never enter an encrypted sum"):
            fed.decryptors[d].decrypt(request)
        assert fed.decryptors[d].ledger.rounds == {}


def test_the_aggregators_known_values_do_not_open_a_differencing_chain() -> None:
    """{A,B,AGG}, {B,C}, {A,C} gave A when only the first named the aggregator: now the first is refused."""
    fed = make_federation(aggregator_contributes=True)
    for round in (1, 2, 3):
        for node in NODES:
            fed.contribute(node, round, VALUES[node])
    blob = paillier.encrypt(fed.public.public_key, np.ones(3), LAYOUT).to_bytes()
    _aggregator_commits(fed, 1, blob)
    first = DecryptRequest(ANALYSIS, 1, "x", {**fed.request(1, ("A", "B")).contributions, AGG: blob})
    for d in NODES:
        with pytest.raises(DecryptionRefused, match="names the aggregator"):
            fed.decryptors[d].decrypt(first)
    fed.decrypt(fed.request(2, ("B", "C")), at=NODES)
    for d in NODES:
        with pytest.raises(DecryptionRefused, match="fixed composition"):
            fed.decryptors[d].decrypt(fed.request(3, ("A", "C")))


def test_a_round_decrypted_again_with_a_second_commitment_of_one_node_is_refused(fed: Federation) -> None:
    """A restarted node commits a second update for the same round: S - S' would give its difference."""
    for node in NODES:
        fed.contribute(node, 1)
    first = fed.request(1, NODES)
    fed.decrypt(first, at=NODES)
    fed.contribute("A", 1, VALUES["A"] + 1.0)  # A restarted and committed again
    second = fed.request(1, NODES)
    assert second.contributions["A"] != first.contributions["A"]
    for d in NODES:
        with pytest.raises(
            DecryptionRefused, match="round 1, field 'x' was decrypted with other ciphertexts"
        ):
            fed.decryptors[d].decrypt(second)
    # the same request again (a resumed aggregator) still decrypts, also after a restart of the decryptor
    restarted = Decryptor(fed.decryptors["A"].share, ANALYSIS, NODES, AGG, 2,
                          Ledger.from_bytes(fed.decryptors["A"].ledger.to_bytes()))  # fmt: skip
    restarted.decrypt(first)
    with pytest.raises(DecryptionRefused, match="other ciphertexts"):
        restarted.decrypt(second)


def test_a_restarted_decryptor_keeps_its_ledger_and_still_refuses(fed: Federation) -> None:
    for node in NODES:
        fed.contribute(node, 1)
        fed.contribute(node, 2)
    fed.decrypt(fed.request(1, NODES))
    stored = {d: (fed.decryptors[d].share.to_bytes(), fed.decryptors[d].ledger.to_bytes()) for d in NODES}
    # every decryptor restarts from what it stored next to its share
    for d, (share, ledger) in stored.items():
        fed.decryptors[d] = Decryptor(
            KeyShare.from_bytes(share), ANALYSIS, NODES, AGG, 2, Ledger.from_bytes(ledger)
        )
    for d in ("A", "B"):  # the two that decrypted round 1
        with pytest.raises(DecryptionRefused, match="fixed composition"):
            fed.decryptors[d].decrypt(fed.request(2, ("A", "B")))
    with pytest.raises(DecryptionRefused, match="another analysis"):
        Decryptor(fed.decryptors["A"].share, "analysis-2", NODES, AGG, 2, Ledger.from_bytes(stored["A"][1]))


def test_asking_different_decryptors_for_different_compositions_gets_no_majority(fed: Federation) -> None:
    """With t a majority, two groups of t decryptors share one, which refuses the second composition."""
    for node in NODES:
        fed.contribute(node, 1)
        fed.contribute(node, 2)
    fed.decrypt(fed.request(1, NODES), at=("A", "B"))
    request = fed.request(2, ("A", "B"))
    partials = [fed.decryptors["C"].decrypt(request)]  # C has not seen round 1: it answers
    for d in ("A", "B"):
        with pytest.raises(DecryptionRefused):
            fed.decryptors[d].decrypt(request)
    with pytest.raises(PaillierError, match="1 valid partial decryption"):
        combine_parts(fed.public, request, partials)


def test_a_commitment_forged_by_the_aggregator_is_refused(fed: Federation) -> None:
    fed.contribute("B", 1)
    zeros = paillier.encrypt(fed.public.public_key, np.zeros(3), LAYOUT).to_bytes()
    forged = {"analysis_id": ANALYSIS, "round": 1, "field": "x", "node": "A",
              "commitment": commitment(ANALYSIS, 1, "x", "A", zeros)}  # fmt: skip
    for decryptor in fed.decryptors.values():
        with pytest.raises(DecryptionRefused, match="arrived from aggregator"):
            decryptor.receive_commitment(AGG, forged)
        with pytest.raises(DecryptionRefused, match="does not contribute"):
            decryptor.receive_commitment(AGG, {**forged, "node": AGG})
    request = DecryptRequest(ANALYSIS, 1, "x", {"A": zeros, "B": fed.aggregator_seen[(1, "x", "B")]})
    with pytest.raises(DecryptionRefused, match="no commitment from A"):
        fed.decryptors["C"].decrypt(request)


def test_what_each_party_holds_at_the_end(fed: Federation) -> None:
    """The aggregator: the public key, single-node ciphertexts, partials of approved sums, the sum.

    From that it cannot decrypt one node: the partials are bound to the sum's ciphertexts and context,
    and combining them against one node's ciphertexts fails their proofs. Each decryptor holds its own
    share only (different index, different secret), its ledger, and the commitments.
    """
    for node in NODES:
        fed.contribute(node, 1)
    request = fed.request(1, NODES)
    partials = [fed.decryptors[d].decrypt(request) for d in ("A", "B", "C")]
    aggregator_holds = {
        "public key": fed.public.to_payload(),
        "ciphertexts": dict(fed.aggregator_seen),
        "partials": [p.to_payload() for p in partials],
        "sum": combine_parts(fed.public, request, partials),
    }
    assert not any(isinstance(v, KeyShare) for v in aggregator_holds.values())
    single = paillier.EncryptedVector.from_bytes(fed.aggregator_seen[(1, "x", "A")], fed.public.public_key)
    ctx = context(ANALYSIS, 1, "x", NODES)
    with pytest.raises(PaillierError, match="0 valid partial decryption"):
        combine_vector(fed.public, single, partials, ctx)
    shares = {d: (fed.decryptors[d].share.index, int(fed.decryptors[d].share._s)) for d in NODES}
    assert len({index for index, _ in shares.values()}) == 3 and len({s for _, s in shares.values()}) == 3
    for d in NODES:
        held = fed.decryptors[d]
        assert set(vars(held)) == {"share", "analysis_id", "nodes", "aggregator", "required", "ledger"}
        assert held.ledger.compositions() == [NODES]


def test_a_commitment_still_on_its_way_is_a_retryable_refusal(fed: Federation) -> None:
    """The request may overtake a node's commitment: refused as MissingCommitment, decrypted once it came."""
    from flame.federated.decryptor import MissingCommitment

    for node in ("A", "B"):
        fed.contribute(node, 1)
    late = paillier.encrypt(fed.public.public_key, VALUES["C"], LAYOUT, fast=True).to_bytes()
    request = DecryptRequest(ANALYSIS, 1, "x", {**fed.request(1, ("A", "B")).contributions, "C": late})
    with pytest.raises(MissingCommitment, match="no commitment from C"):
        fed.decryptors["A"].decrypt(request)
    assert fed.decryptors["A"].ledger.rounds == {}  # nothing recorded for a refused request
    body = {"analysis_id": ANALYSIS, "round": 1, "field": "x", "node": "C",
            "commitment": commitment(ANALYSIS, 1, "x", "C", late)}  # fmt: skip
    fed.decryptors["A"].receive_commitment("C", body)
    fed.decryptors["B"].receive_commitment("C", body)
    partials = [fed.decryptors[d].decrypt(request) for d in ("A", "B")]
    plain = sum(np.rint(v * LAYOUT.scale) for v in VALUES.values()) / LAYOUT.scale
    np.testing.assert_array_equal(combine_parts(fed.public, request, partials), plain)

"""Checkpoints for re-execution, sealed so that they are useless to anyone but the analysis itself.

A restarted pod resumes from what its predecessor kept in node storage. Node storage is
project-scoped: every later analysis of the project can list every tag and read every object, and
the storage service offers an analysis no way to delete or untag anything (only the hub adapter may
delete a whole project, once it is gone from the hub). So nothing an analysis keeps there may be
readable by another one. Every record the federation layer stores for one analysis (checkpoints,
the key holder's Paillier key, the wrapped keys below) is sealed with AES-256-GCM; the additional data
binds it to the analysis id, the node id and its kind, so a record cannot be moved to another analysis,
node or purpose, and a record that does not open is ignored (a later analysis may write garbage under
our tags while we run; it cannot forge or roll back a record: the newest authentic one by sequence
number wins).

Where the keys come from: what a restarted pod of the same analysis has and a later analysis of the
project does not.

- Analysis nodes: the Kong key ``DATA_SOURCE_TOKEN``. The pod orchestrator mints it per analysis and
  hands the same key to every pod (restart) of that analysis; another analysis gets its own. Keys are
  derived from it with HKDF-SHA256 (salt: the analysis id; info: purpose and node id), so the key
  itself is never used for anything but data access.
- The aggregator gets ``none_needed`` instead: it has no such secret. Its checkpoint key is random,
  held in memory, and stored only *wrapped* (AES-GCM) under an escrow key that each analysis node
  derives from its own Kong key and sends to the aggregator with its updates (between nodes messages
  are encrypted by the broker). A restarted aggregator asks the analysis nodes for their escrow key and
  unwraps its checkpoint key with the first answer. When the analysis is over, its pods are gone, and
  with them every way to re-derive a key. An aggregator that analyses its own data wraps its key under
  its own Kong key too and needs nobody.

Residual risk, accepted and stated: (1) whoever knows an analysis' Kong key on a node (the node's
operators, the pod orchestrator's database, Kong's admin API) can open that analysis' records on that
node; they can read the node's data directly anyway. (2) A later analysis sees that records exist:
tags, their number, sizes and times. (3) Plaintext markers ``submitting``/``submitted`` (tag ``fs-…``, below)
reveal only that an analysis submitted; one forged by a concurrent analysis of the project can make a
restarted aggregator of ours stop instead of submit (denial of service, never a second release).
(4) A restarted aggregator resumes only while at least one analysis node that contributed is up to
hand back its escrow key; otherwise it fails cleanly, never starting over.

Exactly-once submission: the aggregator records (sealed, and as a plaintext marker) that it is about
to submit, submits, then records that it submitted; it checks the markers before every submission,
also with checkpoints off; see :mod:`flame.federated.aggregator`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flame import codec
from flame.errors import FlameError, PayloadError

if TYPE_CHECKING:
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)

#: aggregator -> analysis nodes, after it restarted: send me your escrow key
KEY_REQUEST = "flame-checkpoint-key-request"
#: analysis node -> aggregator: my escrow key (it unwraps the aggregator's checkpoint key)
KEY_ANSWER = "flame-checkpoint-key"

#: Format version of sealed records (part of the additional data).
VERSION = 1
KEY_BYTES = 32


def checkpoint_tag(analysis_id: str) -> str:
    """The reserved tag of an analysis' checkpoints: ``ck-`` and 29 hex digits of its id (tags hold 32)."""
    return "ck-" + analysis_id.replace("-", "").lower()[:29]


def submission_tag(analysis_id: str) -> str:
    """The reserved tag of an analysis' submission markers: ``fs-`` and 29 hex digits of its id."""
    return "fs-" + analysis_id.replace("-", "").lower()[:29]


def derive_key(secret: str, analysis_id: str, node_id: str, purpose: str) -> bytes:
    """A 256-bit key for ``purpose`` on ``node_id`` in ``analysis_id``, derived from a per-analysis secret."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=analysis_id.encode(),
        info=f"flame-sdk/v{VERSION}/{purpose}/{node_id}".encode(),
    ).derive(secret.encode())


def analysis_secret(node: AsyncNode) -> str | None:
    """This pod's secret that every pod of the same analysis gets and no other analysis does (or None)."""
    return node.config.data_source_token or None


def node_sealer(node: AsyncNode, purpose: str) -> Sealer | None:
    """A sealer for this node's records of ``purpose`` in this analysis (None without a secret).

    Use it for anything kept in node storage that a later analysis of the project must not read
    (key shares, ledgers of one analysis, ...): a restarted pod of the analysis opens it again.
    """
    secret = analysis_secret(node)
    if secret is None:
        return None
    analysis_id = node.config.analysis_id
    return Sealer(derive_key(secret, analysis_id, node.node_id, purpose), analysis_id, node.node_id)


def escrow_key(node: AsyncNode, aggregator_id: str) -> bytes | None:
    """On an analysis node: the key that wraps ``aggregator_id``'s checkpoint key (None without a secret)."""
    secret = analysis_secret(node)
    if secret is None:
        return None
    return derive_key(secret, node.config.analysis_id, f"{node.node_id}>{aggregator_id}", "escrow")


def parse_key(value: Any) -> bytes | None:
    """A 256-bit key from its hex form in a message; None if it is not one."""
    if not isinstance(value, str) or len(value) != 2 * KEY_BYTES:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class Sealer:
    """Seals and opens the records of one node in one analysis under one key (AES-256-GCM)."""

    def __init__(self, key: bytes, analysis_id: str, node_id: str) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a sealing key has 32 bytes")
        self._aead = AESGCM(key)
        self.analysis_id = analysis_id
        self.node_id = node_id

    def _aad(self, kind: str, holder: str) -> bytes:
        return codec.encode([VERSION, kind, self.analysis_id, self.node_id, holder])

    def seal(self, kind: str, value: Any, *, holder: str = "") -> dict[str, Any]:
        """The record to store: ``value`` (codec-encodable) encrypted, bound to analysis, node, kind."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, codec.encode(value), self._aad(kind, holder))
        return {
            "v": VERSION,
            "kind": kind,
            "analysis_id": self.analysis_id,
            "node_id": self.node_id,
            "holder": holder,
            "nonce": nonce,
            "sealed": sealed,
        }

    def open(self, record: Any, kind: str) -> Any | None:
        """The value of a record sealed by this key for ``kind``; None if it is not one (or forged)."""
        if not _is_record(record, self.analysis_id, self.node_id) or record.get("kind") != kind:
            return None
        try:
            plain = self._aead.decrypt(
                record["nonce"], record["sealed"], self._aad(kind, str(record.get("holder", "")))
            )
            return codec.decode(plain)
        except (InvalidTag, PayloadError, TypeError, ValueError):
            return None


def _is_record(record: Any, analysis_id: str, node_id: str) -> bool:
    return (
        isinstance(record, dict)
        and record.get("v") == VERSION
        and record.get("analysis_id") == analysis_id
        and record.get("node_id") == node_id
        and isinstance(record.get("nonce"), bytes)
        and isinstance(record.get("sealed"), bytes)
    )


class Checkpoints:
    """This node's records of the analysis under its checkpoint tag.

    :attr:`sealer` is set once the node has its key; until then nothing sealed is written.
    """

    def __init__(self, node: AsyncNode, sealer: Sealer | None = None) -> None:
        self.node = node
        self.sealer = sealer
        self.tag = checkpoint_tag(node.config.analysis_id)
        #: sequence number of the newest checkpoint written or loaded
        self.seq = 0

    async def read_all(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Every record under the checkpoint tag (or ``tag``) that names this analysis and node."""
        tag = tag or self.tag
        # an unknown tag is listed as empty: no listing of the tags first
        raw = await self.node.results.storage.read_tagged(tag, "all")
        records = []
        for blob in raw:
            try:
                record = codec.decode(blob)
            except PayloadError:
                continue  # not ours
            if (
                isinstance(record, dict)
                and record.get("analysis_id") == self.node.config.analysis_id
                and record.get("node_id") == self.node.node_id
            ):
                records.append(record)
        return records

    def newest(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The authentic checkpoint with the highest sequence number, or None."""
        if self.sealer is None:
            return None
        best: dict[str, Any] | None = None
        for record in records:
            state = self.sealer.open(record, "checkpoint")
            if (
                isinstance(state, dict)
                and isinstance(state.get("seq"), int)
                and (best is None or state["seq"] > best["seq"])
            ):
                best = state
        if best is not None:
            self.seq = max(self.seq, int(best["seq"]))
        return best

    async def save(self, state: dict[str, Any]) -> None:
        """Save ``state`` (codec-encodable) sealed, as this node's newest checkpoint."""
        if self.sealer is None:
            raise FlameError("no checkpoint key yet: nothing sealed can be written")
        self.seq += 1
        await self.put(self.sealer.seal("checkpoint", {**state, "seq": self.seq}), "checkpoint")

    async def put(self, record: dict[str, Any], filename: str, tag: str | None = None) -> None:
        await self.node.results.save_local(record, tag=tag or self.tag, filename=filename)

    async def mark(self, phase: str) -> None:
        """A plaintext marker of a submission phase (``submitting``/``submitted``): no content, no key.

        Kept under their own tag (checked before every submission, also without checkpoints).
        """
        record = {
            "v": VERSION,
            "kind": "marker",
            "analysis_id": self.node.config.analysis_id,
            "node_id": self.node.node_id,
            "phase": phase,
        }
        await self.put(record, "marker", submission_tag(self.node.config.analysis_id))

    async def markers(self) -> set[str]:
        """The submission phases this node's markers claim for the analysis."""
        records = await self.read_all(submission_tag(self.node.config.analysis_id))
        return {
            str(r.get("phase"))
            for r in records
            if r.get("kind") == "marker" and r.get("phase") in ("submitting", "submitted")
        }


def wrap(key: bytes, escrow: bytes, analysis_id: str, node_id: str, holder: str) -> dict[str, Any]:
    """``key`` wrapped under ``holder``'s escrow key, as a record of ``node_id``."""
    return Sealer(escrow, analysis_id, node_id).seal("wrap", key, holder=holder)


def unwrap(
    records: list[dict[str, Any]], escrow: bytes, analysis_id: str, node_id: str, holder: str
) -> bytes | None:
    """The key wrapped for ``holder`` among ``records``, if ``escrow`` opens it."""
    sealer = Sealer(escrow, analysis_id, node_id)
    for record in records:
        if record.get("kind") == "wrap" and record.get("holder") == holder:
            key = sealer.open(record, "wrap")
            if isinstance(key, bytes) and len(key) == KEY_BYTES:
                return key
    return None


def wrap_holders(records: list[dict[str, Any]]) -> list[str]:
    """Who holds an escrow key for the wrapped records (``self`` for the node's own secret)."""
    return sorted({str(r.get("holder")) for r in records if r.get("kind") == "wrap" and r.get("holder")})

"""The analysis node's side of the star protocol.

Each round an analysis node analyses its local data (given the previous aggregate, None in round 1),
sends the parameters to the aggregator, and awaits the aggregate; it ends when an aggregate is final,
when the aggregator announces ``analysis_finished`` or reports ``executed``, or fails when the
aggregator aborts. After a restart it resumes from its checkpoint: it resends its last update and asks
the aggregator for its newest aggregate, so it rejoins whatever round the federation is in.

Checkpoints are sealed under a key derived from this analysis' Kong key (see
:mod:`flame.federated.checkpoint`); a node without one keeps no checkpoints. Every update carries this
node's escrow key for the aggregator's checkpoint key, and a restarted aggregator that asks for it gets
it again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flame._lazy import on_first_use
from flame.errors import FederationError, FlameError, FlameTimeoutError, ProtocolError
from flame.federated import checkpoint, messages
from flame.federated.data import Data
from flame.federated.options import FederationOptions
from flame.node.tasks import BackgroundTasks

if TYPE_CHECKING:
    from flame.federated import secure
    from flame.node.runtime import AsyncNode
    from flame.protocols import paillier
else:  # secure aggregation (Paillier, gmpy2, NumPy) loads when a run first asks for it
    secure = on_first_use("flame.federated.secure", globals(), "secure")

log = logging.getLogger(__name__)


class Analyzer:
    """Base class of what runs next to the data on every analysis node.

    Implement :meth:`analyze`. Keep state that must survive a pod restart in :meth:`state` /
    :meth:`restore` (codec-encodable values); everything else is lost with the pod.
    """

    def analyze(self, data: Data, aggregate: Any | None, round: int) -> Any:
        """Return this node's parameters for ``round`` (codec-encodable: numbers, arrays, frames, dicts).

        ``aggregate`` is the aggregator's result of the previous round (None in the first round).
        """
        raise NotImplementedError("implement analyze(data, aggregate, round) in your Analyzer")

    def state(self) -> Any:
        """What to keep in the checkpoint besides round and aggregate (default: nothing)."""
        return None

    def restore(self, state: Any) -> None:
        """Take back what :meth:`state` returned, after a restart."""


@dataclass(frozen=True)
class Aggregate:
    """An aggregate as an analysis node receives it."""

    round: int
    value: Any
    final: bool


class AnalysisClient:
    """Runs an :class:`Analyzer` on one analysis node through the rounds of the star protocol."""

    def __init__(
        self, node: AsyncNode, analyzer: Analyzer, options: FederationOptions, data: Data | None = None
    ) -> None:
        self.node = node
        self.analyzer = analyzer
        self.options = options
        self.data = data or Data(node.data, asyncio.get_running_loop())
        self.round = 1
        self.aggregate: Any | None = None
        self._last_update: tuple[int, Any] | None = None
        self._background = BackgroundTasks()
        self._secure = None if options.secure is None else secure.SecureAggregation.of(options.secure)
        self._public_key: paillier.PublicKey | None = None
        self._key_holder: secure.KeyHolder | None = None
        self._store: checkpoint.Checkpoints | None = None
        self._escrow: str | None = None
        #: secure mode: the encrypted update of a round, so every resend carries the very same
        #: ciphertexts (the key holder decrypts a round's sums once, and again only if identical)
        self._encrypted: tuple[int, Any] | None = None
        self._encrypting = asyncio.Lock()

    @property
    def aggregator_id(self) -> str:
        aggregator = self.node.aggregator_id
        if aggregator is None:
            raise ProtocolError("no aggregator among the participants of this analysis")
        return aggregator

    async def execute(self) -> Any:
        """Analyse, send, await; round after round until the aggregate is final. Returns the final aggregate."""
        await self._resume()
        try:
            await self._setup_secure()
            while True:
                if self._last_update is None or self._last_update[0] != self.round:
                    self.node.log(f"round {self.round}: analysing local data")
                    parameters = await asyncio.to_thread(
                        self.analyzer.analyze, self.data, self.aggregate, self.round
                    )
                    self._last_update = (self.round, parameters)
                    await self._checkpoint()
                received = await self._send_and_await(self.round, self._last_update[1])
                if received is None:  # the aggregator ended the analysis without a final aggregate for us
                    self.node.log("the aggregator finished the analysis")
                    break
                self.aggregate = received.value
                self.node.set_progress(
                    100 if received.final else 100 * received.round / self.options.max_rounds
                )
                if received.final:
                    self.node.log(f"round {received.round}: final aggregate received")
                    await self._await_finish()
                    break
                self.round = received.round + 1
                await self._checkpoint()
        finally:
            await self._background.aclose()
        if self.node.status not in ("executed", "failed", "stopped"):
            self.node.set_status("executed")
        return self.aggregate

    async def _send_and_await(self, round: int, parameters: Any) -> Aggregate | None:
        """Send the update of ``round`` and await the aggregate at the same time.

        The update is resent until acknowledged, but the aggregate of the round (or the end of the
        analysis) makes it moot: a lost acknowledgement must not hold the node back (for up to the
        send timeout, and past the aggregator's end). A failure to send does end the wait.
        """
        sending = asyncio.ensure_future(self.send_results(round, parameters))
        awaiting = asyncio.ensure_future(self.await_aggregation(round))
        try:
            await asyncio.wait({sending, awaiting}, return_when=asyncio.FIRST_COMPLETED)
            if not awaiting.done() and sending.done():
                error = sending.exception()
                if error is not None:
                    raise error
            return await awaiting
        finally:
            sending.cancel()
            awaiting.cancel()
            await asyncio.gather(sending, awaiting, return_exceptions=True)

    async def send_results(self, round: int, parameters: Any) -> None:
        """Send this node's parameters of ``round`` to the aggregator, reliably."""
        if self._secure is not None:
            parameters = await self._encrypt(round, parameters)
            assert self._key_holder is not None
            # every decryptor gets this node's commitments directly, before the aggregator has the update
            await secure.commit(
                self.node, parameters, round, self._secure, self._key_holder.decryptors,
                self._background, self.options.send_timeout, local=self._key_holder,
            )  # fmt: skip
        payload = await messages.pack(self.node, [self.aggregator_id], parameters, self.options.inline_limit)
        body = {"analysis_id": self.node.config.analysis_id, "round": round, **payload}
        if self._escrow is not None:
            body["escrow"] = self._escrow
        self.node.log(f"round {round}: sending parameters to the aggregator")
        acked, _ = await self.node.send_message(
            [self.aggregator_id], messages.UPDATE, body, timeout=self.options.send_timeout
        )
        if not acked:
            self.node.log(f"round {round}: the aggregator did not acknowledge the parameters yet", "warn")

    async def _encrypt(self, round: int, parameters: Any) -> Any:
        """The update of ``round`` with its secure fields encrypted: once per round, then the same.

        The secure fields pass the node's disclosure guard in plaintext first, as they would in plain
        mode (row-level arrays, small tables and the like are refused; DP requests are drawn): once
        encrypted, the guard would see only ciphertext bytes. Each field is judged once: the secure
        ones here, in plaintext (channel ``message:flame-update``, before encryption), the plain ones
        when the message is sent.
        """
        assert self._secure is not None and self._public_key is not None
        async with self._encrypting:
            if self._encrypted is None or self._encrypted[0] != round:
                if isinstance(parameters, dict):
                    view = {name: parameters[name] for name in self._secure.fields if name in parameters}
                    released = await self.node.disclosure.release(
                        view,
                        channel=f"message:{messages.UPDATE} (secure fields, before encryption)",
                        destination=[self.aggregator_id],
                        path="payload",
                    )
                    parameters = {**parameters, **released}
                encrypted = await asyncio.to_thread(
                    secure.encrypt_update, parameters, self._public_key, self._secure
                )
                self._encrypted = (round, encrypted)
            return self._encrypted[1]

    async def await_aggregation(self, round: int) -> Aggregate | None:
        """Wait for the aggregate of ``round`` or later; None when the aggregator ended the analysis.

        Meanwhile answers the aggregator's requests to resend an update (after it resumed).
        Raises :class:`FederationError` when the aggregator aborts, :class:`FlameTimeoutError` after the
        node deadline.
        """
        node = self.node
        aggregator = [self.aggregator_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.analysis_deadline
        watched = (messages.AGGREGATE, messages.RESYNC, messages.ABORT, checkpoint.KEY_REQUEST)
        self.node.log(f"round {round}: waiting for the aggregate")
        while True:
            if self._key_holder is not None:
                await self._key_holder.serve(self.aggregator_id)
            self._answer_key_requests()
            for message in messages.take(node, messages.ABORT, aggregator):
                reason = message.body.get("reason", "no reason given")
                node.set_status("failed")
                raise FederationError(f"the aggregator aborted the analysis: {reason}")
            for message in messages.take(node, messages.RESYNC, aggregator):
                self._answer_resync(message)
            newest: Aggregate | None = None
            for message in messages.take(node, messages.AGGREGATE, aggregator):
                if not self._ours(message):
                    continue
                agg_round = messages.round_of(message)
                if agg_round < round:
                    log.info("ignoring the stale aggregate of round %d (now in round %d)", agg_round, round)
                    continue
                if newest is None or agg_round > newest.round:
                    value = await messages.unpack(node, message)
                    newest = Aggregate(agg_round, value, bool(message.body.get("final")))
            if newest is not None:
                if newest.round > round:
                    node.log(f"rejoining at round {newest.round} with the newest aggregate")
                return newest
            if node.messenger.finished.is_set() or node.finished.is_set():
                return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise FlameTimeoutError(
                    f"the aggregate of round {round}", self.options.analysis_deadline, aggregator
                )
            await node.inbox.wait_until(
                lambda: (
                    messages.has_unread(node, watched, aggregator)
                    or (self._key_holder is not None and self._key_holder.pending(aggregator[0]))
                    or node.messenger.finished.is_set()
                    or node.finished.is_set()
                ),
                remaining,
            )

    async def _await_finish(self) -> None:
        """Stay reachable until the aggregator announces the end (bounded by the send timeout)."""
        node = self.node
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.send_timeout
        aggregator = [self.aggregator_id]
        while not (node.messenger.finished.is_set() or node.finished.is_set()):
            # a restarted aggregator may ask for the escrow key to read its checkpoint
            self._answer_key_requests()
            remaining = deadline - loop.time()
            if remaining <= 0:
                node.log("the aggregator did not announce the end of the analysis; ending anyway", "warn")
                return
            await node.inbox.wait_until(
                lambda: (
                    node.messenger.finished.is_set()
                    or node.finished.is_set()
                    or messages.has_unread(node, (checkpoint.KEY_REQUEST,), aggregator)
                ),
                remaining,
            )

    def _answer_key_requests(self) -> None:
        """Hand the aggregator (only it) this node's escrow key again, after it restarted."""
        for message in messages.take(self.node, checkpoint.KEY_REQUEST, [self.aggregator_id]):
            if not self._ours(message) or self._escrow is None:
                continue
            body = {"analysis_id": self.node.config.analysis_id, "escrow": self._escrow}
            self.node.log("the aggregator restarted: sending it the escrow key of its checkpoints")
            self._background.spawn(
                self.node.send_message(
                    [self.aggregator_id], checkpoint.KEY_ANSWER, body, timeout=self.options.send_timeout
                )
            )

    def _ours(self, message: Any) -> bool:
        if message.body.get("analysis_id") != self.node.config.analysis_id:
            log.warning("ignoring a foreign message %s (another analysis)", message.id)
            return False
        return True

    def _answer_resync(self, message: Any) -> None:
        if not self._ours(message):
            return
        wanted = messages.round_of(message)
        if self._last_update is not None and self._last_update[0] == wanted:
            self.node.log(f"the aggregator resumed: resending the parameters of round {wanted}")
            self._background.spawn(self.send_results(wanted, self._last_update[1]))

    async def _setup_secure(self) -> None:
        """Secure mode: this node's key share (dealt by the lowest analysis node) and its decryptor."""
        if self._secure is None:
            return
        self._key_holder = await secure.setup_decryptor(
            self.node, self._secure, self.options, self.aggregator_id, self._background
        )
        self._public_key = self._key_holder.public.public_key

    async def _resume(self) -> None:
        escrow = checkpoint.escrow_key(self.node, self.aggregator_id)
        self._escrow = escrow.hex() if escrow is not None else None
        if not self.options.checkpoints:
            return
        sealer = checkpoint.node_sealer(self.node, "checkpoint")
        if sealer is None:
            self.node.log(
                "no per-analysis secret (DATA_SOURCE_TOKEN) on this node: it keeps no checkpoints", "warn"
            )
            return
        self._store = checkpoint.Checkpoints(self.node, sealer)
        try:
            record = self._store.newest(await self._store.read_all())
        except FlameError as exc:
            self.node.log(f"could not read the checkpoints ({exc}); starting afresh", "warn")
            return
        if record is None:
            return
        self.round = int(record["round"])
        self.aggregate = record.get("aggregate")
        if record.get("update_round") is not None:
            self._last_update = (int(record["update_round"]), record.get("update"))
        if record.get("state") is not None:
            await asyncio.to_thread(self.analyzer.restore, record["state"])
        self.node.log(f"resumed from the checkpoint at round {self.round}")
        # ask for the newest aggregate, in case it went out while this pod was down
        body = {"analysis_id": self.node.config.analysis_id, "round": self.round}
        self._background.spawn(
            self.node.send_message(
                [self.aggregator_id], messages.REJOIN, body, timeout=self.options.send_timeout
            )
        )

    async def _checkpoint(self) -> None:
        if self._store is None:
            return
        state = await asyncio.to_thread(self.analyzer.state)
        update_round, update = self._last_update if self._last_update is not None else (None, None)
        try:
            await self._store.save(
                {
                    "role": "analyzer",
                    "round": self.round,
                    "aggregate": self.aggregate,
                    "update_round": update_round,
                    "update": update,
                    "state": state,
                },
            )
        except FlameError as exc:
            self.node.log(f"could not save the checkpoint: {exc}", "warn")

"""The aggregator's side of the star protocol.

Each round the aggregator awaits the analysis nodes' parameters until all arrived or the round
deadline passed, goes on with the quorum (or fails the analysis on every node below it), aggregates,
and sends the aggregate back; on convergence or in the last round it submits the final result to the
hub, tells the partners ``analysis_finished`` and ends with status ``executed``. Late, duplicate and
foreign updates are ignored and logged. After a restart it resumes from its checkpoint, resends its
newest aggregate and asks the analysis nodes to resend their updates of the open round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from flame.errors import FederationError, FlameError, PayloadError, ProtocolError
from flame.federated import messages, secure
from flame.federated.checkpoint import load_checkpoint, save_checkpoint
from flame.federated.data import Data
from flame.federated.options import FederationOptions
from flame.node.tasks import BackgroundTasks
from flame.protocols import paillier

if TYPE_CHECKING:
    from flame.federated.analyzer import Analyzer
    from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)


class Aggregator:
    """Base class of what combines the analysis nodes' parameters on the aggregator node.

    Implement :meth:`aggregate`; override :meth:`converged` for an iterative analysis and
    :meth:`final_result` to shape what goes to the hub. The protocol methods (:meth:`execute`,
    :meth:`_await_parameters`, :meth:`_aggregate_parameters`, :meth:`_send_parameters`) drive it.
    """

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        """Combine the parameters of the nodes that reported in ``round``, keyed by node id."""
        raise NotImplementedError("implement aggregate(updates, round, previous) in your Aggregator")

    def converged(self, aggregate: Any, previous: Any | None, round: int) -> bool:
        """Whether the analysis is done after ``round`` (default: only the last round ends it)."""
        return False

    def final_result(self, aggregate: Any) -> Any:
        """What is submitted to the hub as the final result (default: the last aggregate)."""
        return aggregate

    def state(self) -> Any:
        """What to keep in the checkpoint besides round and aggregate (default: nothing)."""
        return None

    def restore(self, state: Any) -> None:
        """Take back what :meth:`state` returned, after a restart."""

    # -- the protocol ---------------------------------------------------------------------------------

    async def execute(
        self,
        node: AsyncNode,
        options: FederationOptions,
        analyzer: Analyzer | None = None,
        data: Data | None = None,
    ) -> Any:
        """Run the rounds on the aggregator node; returns the final result."""
        self._node = node
        self._options = options
        self._analyzer = analyzer if options.aggregator_analyses else None
        self._data = data or Data(node.data, asyncio.get_running_loop())
        self._contributors = sorted(p["nodeId"] for p in node.participants if p["nodeType"] == "default")
        if self._analyzer is not None:
            self._contributors.append(node.node_id)
        self._required = options.required(len(self._contributors))
        self._latest: tuple[int, Any, bool] | None = None
        self._background = BackgroundTasks()
        #: the background send of the newest aggregate to the nodes silent in its round
        self._straggler_send: asyncio.Task[Any] | None = None
        self._aborted = False
        self._pending: dict[int, dict[str, Any]] = {}
        self._secure = secure.SecureAggregation.of(options.secure)
        self._public_key: paillier.PublicKey | None = None
        self._holder = ""
        self.rounds: list[dict[str, Any]] = []
        try:
            round, previous, finished = await self._resume()
            if not finished:
                await self._setup_secure()
            while not finished:
                started = asyncio.get_running_loop().time()
                updates = await self._await_parameters(round)
                if self._secure is not None:
                    updates = await self._secure_sums(updates, round)
                aggregate = await self._aggregate_parameters(updates, round, previous)
                last = round >= options.max_rounds
                done = last or await asyncio.to_thread(self.converged, aggregate, previous, round)
                self._latest = (round, aggregate, done)
                await self._checkpoint(round, aggregate, done)
                # recorded once checkpointed: a restart from here on does not redo the round
                self.rounds.append(
                    {
                        "round": round,
                        "contributors": sorted(updates),
                        "seconds": asyncio.get_running_loop().time() - started,
                    }
                )
                await self._send_parameters(aggregate, round, done, wait_for=updates)
                # a converged analysis is complete: 100, not round / max_rounds
                node.set_progress(100 if done else 100 * round / options.max_rounds)
                if done:
                    break
                previous, round = aggregate, round + 1
            assert self._latest is not None
            result = await asyncio.to_thread(self.final_result, self._latest[1])
            names = await node.results.submit_final(
                result,
                output_type=options.output_type,
                multiple_results=options.multiple_results,
                filename=options.filename,
            )
            node.log(f"final result submitted to the hub as {', '.join(names)}")
            await self._checkpoint(self._latest[0], self._latest[1], True, submitted=True)
            await node.analysis_finished()
            return result
        except Exception as exc:
            if not self._aborted:
                # whatever ended the aggregator, the analysis nodes must not wait for an aggregate
                await self._tell_abort(f"the aggregator failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            if self._straggler_send is not None:  # the analysis is over: no more aggregates to resend
                self._straggler_send.cancel()
            await self._background.aclose(grace=min(5.0, self._options.send_timeout))

    async def _await_parameters(self, round: int) -> dict[str, Any]:
        """The updates of ``round``: all contributors', or as many as arrived by the deadline (>= quorum)."""
        node = self._node
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.round_deadline
        received: dict[str, Any] = dict(self._pending.pop(round, {}))
        if self._analyzer is not None and node.node_id not in received:
            own = await asyncio.to_thread(
                self._analyzer.analyze, self._data, self._latest[1] if self._latest else None, round
            )
            if self._secure is not None:
                assert self._public_key is not None
                own = await asyncio.to_thread(secure.encrypt_update, own, self._public_key, self._secure)
            received[node.node_id] = own
        expected = set(self._contributors)
        watched = (messages.UPDATE, messages.REJOIN)
        node.log(f"round {round}: waiting for parameters from {len(expected - set(received))} node(s)")
        while True:
            for message in messages.take(node, messages.REJOIN):
                self._answer_rejoin(message)
            for message in messages.take(node, messages.UPDATE):
                await self._accept(message, round, expected, received)
            if set(received) >= expected:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await node.inbox.wait_until(lambda: messages.has_unread(node, watched), remaining)
        missing = sorted(expected - set(received))
        if missing:
            node.log(
                f"round {round}: deadline passed without parameters from {', '.join(missing)}; "
                f"{len(received)} of {len(expected)} arrived (quorum {self._required})",
                "warn",
            )
        if len(received) < self._required:
            await self._abort(
                f"quorum not reached in round {round}: {len(received)} of {len(expected)} nodes answered "
                f"within {self._options.round_deadline:g} s, {self._required} needed; "
                f"no parameters from {', '.join(missing)}",
                missing,
            )
        return received

    async def _accept(self, message: Any, round: int, expected: set[str], received: dict[str, Any]) -> None:
        sender = message.sender
        if message.body.get("analysis_id") != self._node.config.analysis_id or sender not in expected:
            log.warning("ignoring a foreign update %s from %s", message.id, sender)
            return
        try:
            update_round = messages.round_of(message)
        except ProtocolError as exc:
            log.warning("ignoring an update without a valid round: %s", exc)
            return
        if update_round < round:
            self._node.log(f"ignoring a late update of round {update_round} from {sender}", "debug")
            return
        if sender in (self._pending.get(update_round, {}) if update_round > round else received):
            log.info("ignoring a duplicate update of round %d from %s", update_round, sender)
            return
        try:
            value = await messages.unpack(self._node, message)
        except (PayloadError, ProtocolError) as exc:
            log.warning("ignoring an unreadable update of round %d from %s: %s", update_round, sender, exc)
            return
        if update_round > round:
            self._pending.setdefault(update_round, {})[sender] = value
        else:
            received[sender] = value

    async def _aggregate_parameters(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        """Combine the updates with the author's :meth:`aggregate` (in a worker thread)."""
        self._node.log(f"round {round}: aggregating {len(updates)} update(s)")
        ordered: dict[str, Any] = dict(sorted(updates.items()))
        if isinstance(updates, secure.SecureUpdates):
            ordered = secure.SecureUpdates(ordered, updates.totals, updates.contributors)
        return await asyncio.to_thread(self.aggregate, ordered, round, previous)

    async def _send_parameters(
        self,
        aggregate: Any,
        round: int,
        final: bool,
        to: Sequence[str] | None = None,
        wait_for: Collection[str] | None = None,
    ) -> None:
        """Send the aggregate of ``round`` to the analysis nodes (all of them, or ``to``).

        Waits (bounded by the send timeout) for the acknowledgements of ``wait_for`` (default: every
        receiver). The other receivers, silent in this round (down, restarting, straggling), get it
        resent in the background, so one node that never answers does not hold every round back by
        the send timeout; a newer aggregate for all supersedes that background send.
        """
        receivers = [n for n in (to if to is not None else self._contributors) if n != self._node.node_id]
        if not receivers:
            return
        payload = await messages.pack(self._node, receivers, aggregate, self._options.inline_limit)
        body = {"analysis_id": self._node.config.analysis_id, "round": round, "final": final, **payload}
        waited = receivers if wait_for is None else [n for n in receivers if n in wait_for]
        others = [n for n in receivers if n not in waited]
        if to is None and self._straggler_send is not None:
            self._straggler_send.cancel()
            self._straggler_send = None
        if others:
            task = self._background.spawn(self._send_aggregate(others, round, body))
            if to is None:
                self._straggler_send = task
        if waited:
            await self._send_aggregate(waited, round, body)

    async def _send_aggregate(self, receivers: Sequence[str], round: int, body: dict[str, Any]) -> None:
        _acked, missing = await self._node.send_message(
            receivers, messages.AGGREGATE, body, timeout=self._options.send_timeout
        )
        if missing:
            self._node.log(
                f"round {round}: the aggregate was not acknowledged by {', '.join(missing)}", "warn"
            )

    def _answer_rejoin(self, message: Any) -> None:
        if message.body.get("analysis_id") != self._node.config.analysis_id or self._latest is None:
            return
        round, aggregate, final = self._latest
        self._node.log(f"{message.sender} rejoined; sending it the aggregate of round {round}")
        self._background.spawn(self._send_parameters(aggregate, round, final, to=[message.sender]))

    async def _abort(self, reason: str, missing: Sequence[str]) -> None:
        self._node.log(reason, "error")
        await self._tell_abort(reason)
        self._node.set_status("failed")
        raise FederationError(reason, missing)

    async def _tell_abort(self, reason: str) -> None:
        """Tell the analysis nodes that the analysis failed (ABORT), bounded, never raising."""
        self._aborted = True
        node = self._node
        body = {"analysis_id": node.config.analysis_id, "reason": reason}
        receivers = [n for n in self._contributors if n != node.node_id]
        if not receivers:
            return
        try:
            await node.send_message(
                receivers, messages.ABORT, body, timeout=min(30.0, self._options.send_timeout)
            )
        except FlameError as exc:
            node.log(f"could not tell the analysis nodes that the analysis failed: {exc}", "warn")

    async def _setup_secure(self) -> None:
        """Secure mode: fetch the key holder's public key (the aggregator never gets the private one)."""
        if self._secure is None:
            return
        self._holder = secure.key_holder(self._node)
        self._node.log("secure aggregation: fetching the key holder's public key")
        timeout = self._options.round_deadline + self._options.send_timeout
        self._public_key = await secure.obtain_public_key(self._node, self._holder, timeout)

    async def _secure_sums(self, updates: dict[str, Any], round: int) -> dict[str, Any]:
        """Add the encrypted fields and have the key holder decrypt only the sums."""
        assert self._secure is not None and self._public_key is not None
        timeout = self._options.round_deadline + self._options.send_timeout
        return await secure.secure_round(
            self._node, updates, round, self._secure, self._public_key, self._holder, timeout
        )

    async def _resume(self) -> tuple[int, Any | None, bool]:
        if not self._options.checkpoints:
            return 1, None, False
        record = await load_checkpoint(self._node)
        if record is None:
            if (self._node.config.restart_counter or 0) > 0:
                # a restarted pod without a checkpoint: the round-1 updates went to the old pod
                self._node.log("restarted before the first checkpoint; asking for the updates of round 1")
                self._resync(1)
            return 1, None, False
        done_round = int(record["round"])
        aggregate = record.get("aggregate")
        final = bool(record.get("final"))
        if record.get("state") is not None:
            await asyncio.to_thread(self.restore, record["state"])
        self._latest = (done_round, aggregate, final)
        self._node.log(f"resumed from the checkpoint after round {done_round}")
        if record.get("submitted"):
            await self._node.analysis_finished()
            return done_round, aggregate, True
        # the aggregate may not have reached everyone, and updates sent to the old pod are lost;
        # who is up is unknown: wait for acknowledgements only before a final end
        await self._send_parameters(aggregate, done_round, final, wait_for=None if final else ())
        if final:
            return done_round, aggregate, True
        self._resync(done_round + 1)
        return done_round + 1, aggregate, False

    def _resync(self, round: int) -> None:
        """Ask the analysis nodes (in the background) to resend their updates of ``round``."""
        body = {"analysis_id": self._node.config.analysis_id, "round": round}
        receivers = [n for n in self._contributors if n != self._node.node_id]
        if receivers:
            self._background.spawn(
                self._node.send_message(receivers, messages.RESYNC, body, timeout=self._options.send_timeout)
            )

    async def _checkpoint(self, round: int, aggregate: Any, final: bool, *, submitted: bool = False) -> None:
        if not self._options.checkpoints:
            return
        state = await asyncio.to_thread(self.state)
        try:
            await save_checkpoint(
                self._node,
                {
                    "role": "aggregator",
                    "round": round,
                    "aggregate": aggregate,
                    "final": final,
                    "submitted": submitted,
                    "state": state,
                },
            )
        except FlameError as exc:
            self._node.log(f"could not save the checkpoint: {exc}", "warn")

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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flame.errors import FederationError, FlameError
from flame.federated import messages
from flame.federated.checkpoint import load_checkpoint, save_checkpoint
from flame.federated.data import Data
from flame.federated.options import FederationOptions
from flame.node.tasks import BackgroundTasks

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
        self._pending: dict[int, dict[str, Any]] = {}
        self.rounds: list[dict[str, Any]] = []
        round, previous, finished = await self._resume()
        try:
            while not finished:
                started = asyncio.get_running_loop().time()
                updates = await self._await_parameters(round)
                aggregate = await self._aggregate_parameters(updates, round, previous)
                last = round >= options.max_rounds
                done = last or await asyncio.to_thread(self.converged, aggregate, previous, round)
                self._latest = (round, aggregate, done)
                await self._checkpoint(round, aggregate, done)
                await self._send_parameters(aggregate, round, done)
                self.rounds.append(
                    {
                        "round": round,
                        "contributors": sorted(updates),
                        "seconds": asyncio.get_running_loop().time() - started,
                    }
                )
                node.set_progress(100 * round / options.max_rounds)
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
        finally:
            await self._background.aclose(grace=min(5.0, self._options.send_timeout))

    async def _await_parameters(self, round: int) -> dict[str, Any]:
        """The updates of ``round``: all contributors', or as many as arrived by the deadline (>= quorum)."""
        node = self._node
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.round_deadline
        received: dict[str, Any] = dict(self._pending.pop(round, {}))
        if self._analyzer is not None and node.node_id not in received:
            received[node.node_id] = await asyncio.to_thread(
                self._analyzer.analyze, self._data, self._latest[1] if self._latest else None, round
            )
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
                f"within {self._options.round_deadline:g} s, {self._required} needed",
                missing,
            )
        return received

    async def _accept(self, message: Any, round: int, expected: set[str], received: dict[str, Any]) -> None:
        sender = message.sender
        if message.body.get("analysis_id") != self._node.config.analysis_id or sender not in expected:
            log.warning("ignoring a foreign update %s from %s", message.id, sender)
            return
        update_round = messages.round_of(message)
        if update_round < round:
            self._node.log(f"ignoring a late update of round {update_round} from {sender}", "debug")
            return
        if update_round > round:
            self._pending.setdefault(update_round, {}).setdefault(
                sender, await messages.unpack(self._node, message)
            )
            return
        if sender in received:
            log.info("ignoring a duplicate update of round %d from %s", round, sender)
            return
        received[sender] = await messages.unpack(self._node, message)

    async def _aggregate_parameters(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        """Combine the updates with the author's :meth:`aggregate` (in a worker thread)."""
        self._node.log(f"round {round}: aggregating {len(updates)} update(s)")
        return await asyncio.to_thread(self.aggregate, dict(sorted(updates.items())), round, previous)

    async def _send_parameters(
        self, aggregate: Any, round: int, final: bool, to: Sequence[str] | None = None
    ) -> None:
        """Send the aggregate of ``round`` to the analysis nodes (all of them, or ``to``)."""
        receivers = [n for n in (to if to is not None else self._contributors) if n != self._node.node_id]
        if not receivers:
            return
        payload = await messages.pack(self._node, receivers, aggregate, self._options.inline_limit)
        body = {"analysis_id": self._node.config.analysis_id, "round": round, "final": final, **payload}
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
        node = self._node
        node.log(reason, "error")
        body = {"analysis_id": node.config.analysis_id, "reason": reason}
        receivers = [n for n in self._contributors if n != node.node_id]
        if receivers:
            await node.send_message(
                receivers, messages.ABORT, body, timeout=min(30.0, self._options.send_timeout)
            )
        node.set_status("failed")
        raise FederationError(reason, missing)

    async def _resume(self) -> tuple[int, Any | None, bool]:
        if not self._options.checkpoints:
            return 1, None, False
        record = await load_checkpoint(self._node)
        if record is None:
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
        # the aggregate may not have reached everyone, and updates sent to the old pod are lost
        await self._send_parameters(aggregate, done_round, final)
        if final:
            return done_round, aggregate, True
        body = {"analysis_id": self._node.config.analysis_id, "round": done_round + 1}
        receivers = [n for n in self._contributors if n != self._node.node_id]
        self._background.spawn(
            self._node.send_message(receivers, messages.RESYNC, body, timeout=self._options.send_timeout)
        )
        return done_round + 1, aggregate, False

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

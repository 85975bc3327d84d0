"""The aggregator's side of the star protocol.

Each round the aggregator awaits the analysis nodes' parameters until all arrived or the round
deadline passed, goes on with the quorum (or fails the analysis on every node below it), aggregates,
and sends the aggregate back; on convergence or in the last round it submits the final result to the
hub, tells the partners ``analysis_finished`` and ends with status ``executed``. Late, duplicate and
foreign updates are ignored and logged. After a restart it resumes from its checkpoint, resends its
newest aggregate and asks the analysis nodes to resend their updates of the open round.

The final result reaches the hub exactly once. With checkpoints the aggregator records that it is
about to submit (a sealed checkpoint with the file name and the result, and a plaintext marker), submits,
then records that it submitted. A pod restarted after that finishes without submitting. One restarted
in between cannot tell whether the hub got the result: a plain result is sent again, the very same
value under the very same file name (the hub keeps nothing new, at worst a copy of what it has); a
local-DP result is never sent again, since the storage service would add fresh noise and two
independently noised values of one number leak more than the budget allows: the analysis fails with
a message saying so, and the analyst looks at the hub. Without a readable checkpoint a marker still
stops a second submission. With ``checkpoints=False`` nothing is recorded and a restarted aggregator
starts over.

Its checkpoints are sealed under a random key that it keeps wrapped under the analysis nodes' escrow
keys (see :mod:`flame.federated.checkpoint`); a restarted aggregator asks them for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from flame import codec
from flame._lazy import on_first_use
from flame.clients.storage import default_filename
from flame.errors import FederationError, FlameError, PayloadError, ProtocolError
from flame.federated import checkpoint, messages
from flame.federated.data import Data
from flame.federated.failures import describe_failure
from flame.federated.options import FederationOptions
from flame.node.results import EXTENSIONS
from flame.node.tasks import BackgroundTasks

if TYPE_CHECKING:
    from flame.federated import secure
    from flame.federated.analyzer import Analyzer
    from flame.node.runtime import AsyncNode
else:  # secure aggregation (Paillier, gmpy2, NumPy) loads when a run first asks for it
    secure = on_first_use("flame.federated.secure", globals(), "secure")

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
        self._secure = None if options.secure is None else secure.SecureAggregation.of(options.secure)
        self._public_key: secure.ThresholdPublicKey | None = None
        self._holder = ""
        #: secure mode: the contributors of the first round, the only composition decryptors accept
        self._composition: list[str] | None = None
        #: node storage of the checkpoints; their key, and who holds an escrow key wrapping it
        self._store: checkpoint.Checkpoints | None = None
        self._key: bytes | None = None
        self._escrows: dict[str, bytes] = {}
        self._wrapped: set[str] = set()
        #: where a restarted pod found the submission: None, "submitting" or "submitted"
        self._phase: str | None = None
        self._submission: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        #: warnings of this run for its report, e.g. ``max_rounds`` reached without convergence
        self.warnings: list[str] = []
        #: how the rounds ended: "not-iterative" (the default :meth:`converged`: ``max_rounds`` rounds
        #: by design), "running", "converged" or "max-rounds" (ended by ``max_rounds`` unconverged)
        self._iterative = self._overrides_converged()
        self.convergence = "running" if self._iterative else "not-iterative"
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
                if self._secure is not None and self._composition is None:
                    self._composition = sorted(updates)
                last = round >= options.max_rounds
                converged = self._iterative and await asyncio.to_thread(
                    self.converged, aggregate, previous, round
                )
                if last and self._iterative and not converged:
                    self._not_converged(round)
                if converged:
                    self.convergence = "converged"
                done = last or converged
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
            if self._phase == "submitted":
                node.log("the final result reached the hub before this pod started; not submitting it again")
                result = (
                    await asyncio.to_thread(self.final_result, self._latest[1])
                    if self._latest is not None
                    else None
                )
            elif self._phase == "submitting":
                result = await self._resubmit()
            else:
                assert self._latest is not None
                result = await asyncio.to_thread(self.final_result, self._latest[1])
                await self._submit(result)
            await node.analysis_finished()
            return result
        except Exception as exc:
            if not self._aborted:
                # whatever ended the aggregator, the analysis nodes must not wait for an aggregate
                await self._tell_abort(f"the aggregator failed: {describe_failure(exc)}")
            raise
        finally:
            if self._straggler_send is not None:  # the analysis is over: no more aggregates to resend
                self._straggler_send.cancel()
            await self._background.aclose(grace=min(5.0, self._options.send_timeout))

    def _overrides_converged(self) -> bool:
        """Whether this aggregator decides convergence itself (overrides :meth:`converged`)."""
        return type(self).converged is not Aggregator.converged

    def _not_converged(self, round: int) -> None:
        """``max_rounds`` ended an iterative analysis before :meth:`converged` said yes: warn, or fail
        with ``require_convergence``."""
        self.convergence = "max-rounds"
        text = (
            f"max_rounds={self._options.max_rounds} reached after round {round} but converged() never "
            "returned True: the final result may not have converged; raise max_rounds"
        )
        if self._options.require_convergence:
            raise FederationError(f"{text} (require_convergence=True makes this an error)")
        self.warnings.append(text)
        self._node.log(f"warning: {text}", "warn")

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
            # secure mode: the aggregator's own values stay in the clear, out of the encrypted sums
            # (secure_round adds them after decryption): they are known to it anyway
            received[node.node_id] = own
        expected = set(self._contributors)
        if self._composition is not None:
            # secure mode's fixed composition: the decryptors accept only the first round's contributors
            expected = set(self._composition)
            received = {n: v for n, v in received.items() if n in expected}
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
        if missing and self._composition is not None:
            await self._abort(
                f"secure mode's fixed composition: round {round} lacks the parameters of "
                f"{', '.join(missing)} within {self._options.round_deadline:g} s; in secure mode every "
                f"round after the first must have exactly the first round's contributors "
                f"({', '.join(self._composition)}), since the decryptors decrypt sums over that set of "
                "nodes only (sums over different sets could isolate one node): stragglers are tolerated "
                "in the first round only",
                missing,
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
        escrow = checkpoint.parse_key(message.body.get("escrow"))
        if escrow is not None:
            self._escrows.setdefault(sender, escrow)
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
        if self._secure is not None and isinstance(updates, secure.SecureUpdates):
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
        """Secure mode: fetch the threshold public key from the dealer (the aggregator holds no share)."""
        if self._secure is None:
            return
        self._holder = secure.key_holder(self._node)
        self._node.log("secure aggregation: fetching the public key from the dealer")
        timeout = self._options.round_deadline + self._options.send_timeout
        self._public_key = await secure.obtain_public_key(self._node, self._holder, timeout)

    async def _secure_sums(self, updates: dict[str, Any], round: int) -> dict[str, Any]:
        """Have the decryptors check the encrypted fields and decrypt only their sums."""
        assert self._secure is not None and self._public_key is not None
        timeout = self._options.round_deadline + self._options.send_timeout
        return await secure.secure_round(
            self._node, updates, round, self._secure, self._public_key, self._holder, timeout
        )

    async def _resume(self) -> tuple[int, Any | None, bool]:
        """Where to go on: (round, previous aggregate, rounds finished), from the checkpoints.

        Never starts over when records show that a submission began, or when checkpoints exist that
        cannot be read (the escrow key did not come back): that fails the analysis instead.
        """
        if not self._options.checkpoints:
            return 1, None, False
        node = self._node
        self._store = checkpoint.Checkpoints(node)
        records = await self._store.read_all()
        claimed = await self._store.markers()
        sealed = any(r.get("kind") in ("checkpoint", "wrap") for r in records)
        record: dict[str, Any] | None = None
        key = await self._recover_key(records) if sealed else os.urandom(checkpoint.KEY_BYTES)
        if key is None and node.config.restart_counter == 0:
            # a first pod wrote none of them: records that do not open (their kind is not
            # authenticated; another analysis of the project can write any) are ignored
            node.log("ignoring checkpoint records that do not open (the analysis's first pod)", "warn")
            sealed, records, key = False, [], os.urandom(checkpoint.KEY_BYTES)
        if key is not None:
            self._use_key(key, set(checkpoint.wrap_holders(records)))
            record = self._store.newest(records)
        phase = record.get("phase") if record is not None else None
        if "submitted" in claimed:
            # markers are trusted only where they forbid a submission: the sealed "submitted" record
            # may have failed to save after the hub took the result
            phase = "submitted"
        if record is None and phase == "submitted":
            self._phase = "submitted"
            return 0, None, True
        if phase is None and claimed:
            raise FederationError(
                "this aggregator was restarted while it submitted the final result, and its "
                "checkpoint cannot be read: the hub may or may not have the result; it is not sent again"
            )
        if record is None:
            if sealed and key is None:
                raise FederationError(
                    "this aggregator was restarted and cannot read its checkpoints: no analysis node "
                    f"handed back the escrow key within {self._options.send_timeout:g} s; not starting over"
                )
            if (node.config.restart_counter or 0) > 0:
                # a restarted pod without a checkpoint: the round-1 updates went to the old pod
                node.log("restarted before the first checkpoint; asking for the updates of round 1")
                self._resync(1)
            return 1, None, False
        done_round = int(record["round"])
        aggregate = record.get("aggregate")
        final = bool(record.get("final"))
        if record.get("state") is not None:
            await asyncio.to_thread(self.restore, record["state"])
        self._latest = (done_round, aggregate, final)
        composition = record.get("composition")
        if self._secure is not None and isinstance(composition, list):
            self._composition = [str(n) for n in composition]
        node.log(f"resumed from the checkpoint after round {done_round}")
        if phase in ("submitting", "submitted"):
            self._phase = str(phase)
            submission = record.get("submission")
            self._submission = submission if isinstance(submission, dict) else {}
            return done_round, aggregate, True
        # the aggregate may not have reached everyone, and updates sent to the old pod are lost;
        # who is up is unknown: wait for acknowledgements only before a final end
        await self._send_parameters(aggregate, done_round, final, wait_for=None if final else ())
        if final:
            return done_round, aggregate, True
        self._resync(done_round + 1)
        return done_round + 1, aggregate, False

    def _use_key(self, key: bytes, wrapped: set[str]) -> None:
        assert self._store is not None
        self._key = key
        self._store.sealer = checkpoint.Sealer(key, self._node.config.analysis_id, self._node.node_id)
        self._wrapped = wrapped

    def _own_escrow(self) -> bytes | None:
        """The escrow key from this node's own secret (an aggregator that was given data), or None."""
        secret = checkpoint.analysis_secret(self._node)
        if secret is None:
            return None
        node = self._node
        return checkpoint.derive_key(secret, node.config.analysis_id, node.node_id, "escrow-self")

    async def _recover_key(self, records: list[dict[str, Any]]) -> bytes | None:
        """The checkpoint key: unwrapped with this node's own secret, or with an analysis node's escrow key.

        Asks the analysis nodes that hold one and waits for the first answer that unwraps it, up to
        the send timeout; None if none came.
        """
        node = self._node
        analysis_id, me = node.config.analysis_id, node.node_id
        holders = checkpoint.wrap_holders(records)
        own = self._own_escrow()
        if own is not None and "self" in holders:
            key = checkpoint.unwrap(records, own, analysis_id, me, "self")
            if key is not None:
                return key
        askable = [h for h in holders if h in self._contributors and h != me]
        if not askable:
            return None
        node.log(f"restarted: asking {len(askable)} analysis node(s) for the key of the checkpoints")
        loop = asyncio.get_running_loop()
        timeout = self._options.send_timeout
        deadline = loop.time() + timeout
        request = self._background.spawn(
            node.send_message(askable, checkpoint.KEY_REQUEST, {"analysis_id": analysis_id}, timeout=timeout)
        )
        try:
            while True:
                for message in messages.take(node, checkpoint.KEY_ANSWER, askable):
                    if message.body.get("analysis_id") != analysis_id:
                        continue
                    escrow = checkpoint.parse_key(message.body.get("escrow"))
                    key = (
                        checkpoint.unwrap(records, escrow, analysis_id, me, message.sender)
                        if escrow
                        else None
                    )
                    if key is not None:
                        self._escrows.setdefault(message.sender, escrow)  # type: ignore[arg-type]
                        return key
                    node.log(f"the escrow key from {message.sender} does not open the checkpoints", "warn")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                await node.inbox.wait_until(
                    lambda: messages.has_unread(node, (checkpoint.KEY_ANSWER,), askable), remaining
                )
        finally:
            request.cancel()

    def _resync(self, round: int) -> None:
        """Ask the analysis nodes (in the background) to resend their updates of ``round``."""
        body = {"analysis_id": self._node.config.analysis_id, "round": round}
        receivers = [n for n in self._contributors if n != self._node.node_id]
        if receivers:
            self._background.spawn(
                self._node.send_message(receivers, messages.RESYNC, body, timeout=self._options.send_timeout)
            )

    async def _submit(self, result: Any) -> None:
        """Record the intent, submit the final result to the hub, record that it is there.

        The markers are checked first, also without checkpoints: a pod that ran the rounds again
        (checkpoints off, or unreadable) does not submit a second time.
        """
        options, node = self._options, self._node
        extension = ".txt" if options.local_dp is not None else EXTENSIONS[options.output_type]
        filename = options.filename or default_filename(extension)
        if self._store is None:
            self._store = checkpoint.Checkpoints(node)  # markers only: no key, nothing sealed
        claimed = await self._store.markers()
        if "submitted" in claimed:
            node.log("an earlier pod of this analysis submitted the final result; not submitting it again")
            return
        if "submitting" in claimed:
            raise FederationError(
                "an earlier pod of this analysis began to submit the final result: the hub may or may "
                "not have it; it is not sent again"
            )
        if self._key is not None:
            try:
                codec.encode(result)
                submission: dict[str, Any] = {"filename": filename, "kept": True, "result": result}
            except PayloadError:  # not codec-encodable: a restart in between cannot send it again
                submission = {"filename": filename, "kept": False}
            assert self._latest is not None
            # the intent must be on record before anything reaches the hub
            await self._checkpoint(
                self._latest[0],
                self._latest[1],
                True,
                phase="submitting",
                submission=submission,
                required=True,
            )
        await self._store.mark("submitting")
        await self._send_final(result, filename)

    async def _resubmit(self) -> Any:
        """After a restart in the middle of the submission: the same bytes again, or a clean failure."""
        if self._options.local_dp is not None:
            raise FederationError(
                "this aggregator was restarted while it submitted the local DP result: the hub may or may "
                "not have it, and it is not sent again (the storage service would add new noise; two "
                "independently noised values disclose more than one); look for it at the hub"
            )
        if not self._submission.get("kept") or not isinstance(self._submission.get("filename"), str):
            raise FederationError(
                "this aggregator was restarted while it submitted the final result, which it could not "
                "keep to send again byte for byte: the hub may or may not have it; it is not sent again"
            )
        result = self._submission.get("result")
        self._node.log("restarted during the submission: sending the same final result again, same name")
        await self._send_final(result, self._submission["filename"])
        return result

    async def _send_final(self, result: Any, filename: str) -> None:
        options, node = self._options, self._node
        names = await node.results.submit_final(
            result,
            output_type=options.output_type,
            multiple_results=options.multiple_results,
            filename=filename,
            local_dp=options.local_dp,
        )
        node.log(f"final result submitted to the hub as {', '.join(names)}")
        if self._store is not None and self._latest is not None:
            if self._key is not None:
                await self._checkpoint(self._latest[0], self._latest[1], True, phase="submitted")
            try:
                await self._store.mark("submitted")
            except FlameError as exc:
                node.log(f"could not record that the final result was submitted: {exc}", "warn")

    async def _checkpoint(
        self,
        round: int,
        aggregate: Any,
        final: bool,
        *,
        phase: str | None = None,
        submission: dict[str, Any] | None = None,
        required: bool = False,
    ) -> None:
        """Save a sealed checkpoint (after wrapping the key for every new escrow holder).

        A failure is logged, unless ``required`` (the record of a submission about to start): then
        it raises, and nothing is submitted.
        """
        if self._store is None or self._key is None:
            return
        state = await asyncio.to_thread(self.state)
        try:
            await self._wrap_key()
            if not self._wrapped:
                if round == 1 or phase is not None:  # said once, and again at the submission
                    self._node.log(
                        "no escrow key from any analysis node (and no secret of its own): "
                        "this aggregator keeps no checkpoint",
                        "warn",
                    )
                return
            await self._store.save(
                {
                    "role": "aggregator",
                    "round": round,
                    "aggregate": aggregate,
                    "final": final,
                    "phase": phase,
                    "submission": submission,
                    "state": state,
                    "composition": self._composition,
                }
            )
        except FlameError as exc:
            if required:
                raise
            self._node.log(f"could not save the checkpoint: {exc}", "warn")

    async def _wrap_key(self) -> None:
        """Store the checkpoint key wrapped under each escrow key not used yet."""
        assert self._store is not None and self._key is not None
        node = self._node
        holders: dict[str, bytes] = dict(self._escrows)
        own = self._own_escrow()
        if own is not None:
            holders["self"] = own
        for holder, escrow in holders.items():
            if holder in self._wrapped:
                continue
            record = checkpoint.wrap(self._key, escrow, node.config.analysis_id, node.node_id, holder)
            await self._store.put(record, "key")
            self._wrapped.add(holder)

"""The node's disclosure guard: the one gate every outgoing payload passes.

The node runtime owns one :class:`DisclosureGuard`. Messages to other nodes, intermediate data and
the final result for the hub pass :meth:`DisclosureGuard.release` (or :meth:`release_message`) before
a byte is sent: the payload is inspected (:mod:`flame.disclosure.checks`), compared with the project's
earlier releases (:mod:`flame.disclosure.differencing`), differential-privacy requests are drawn and
charged to the project's budget (:mod:`flame.disclosure.dp`), and the release is recorded
(:mod:`flame.disclosure.audit`). A refusal raises :class:`~flame.errors.DisclosureRefusedError` naming
the rule and the field; nothing of the payload leaves.

In ``warn`` mode the refusal is logged as a warning and the payload released: for trying an analysis
out on test data, never for production.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flame import codec
from flame.disclosure import differencing, dp
from flame.disclosure.audit import Ledger, ReleaseRecord, invalid_spends, spent
from flame.disclosure.checks import Finding, Inspection, LocalData, inspect
from flame.disclosure.policy import DisclosurePolicy, policy_from_env
from flame.errors import DisclosureRefusedError, FlameError, PayloadError

if TYPE_CHECKING:
    from flame.clients.storage import StorageClient

LogFunction = Callable[[str, Any], None]


class DisclosureGuard:
    """Checks, audits and (with DP) transforms what leaves one node."""

    def __init__(
        self,
        policy: DisclosurePolicy | None = None,
        *,
        storage: StorageClient | None = None,
        log: LogFunction | None = None,
        node_id: str = "",
        analysis_id: str = "",
    ) -> None:
        self.policy = policy if policy is not None else policy_from_env()
        self.local = LocalData()
        self.ledger = Ledger(storage)
        self.node_id = node_id
        self.analysis_id = analysis_id
        self._log = log
        self._lock = asyncio.Lock()
        #: the records of this process's releases, newest last (for reports and tests)
        self.records: list[ReleaseRecord] = []

    # -- configuration -------------------------------------------------------------------------------

    def tighten(self, settings: Mapping[str, Any] | None = None, /, **more: Any) -> DisclosurePolicy:
        """Make the node's policy stricter for this analysis (never looser); returns the new policy."""
        self.policy = self.policy.tighten(settings, **more)
        self.log(f"disclosure policy tightened by the analysis: {self.policy.summary()}", "info")
        return self.policy

    def log(self, text: str, level: str = "info") -> None:
        if self._log is not None:
            self._log(text, level)

    # -- what the node reads -------------------------------------------------------------------------

    def observe_s3(self, key: str, data: bytes) -> None:
        self.local.observe_bytes(key, data, self.policy.identifier_columns)

    def observe_fhir(self, resources: Sequence[Mapping[str, Any]]) -> None:
        self.local.observe_fhir(resources)

    def observe_frame(self, frame: Any) -> None:
        self.local.observe_frame(frame, self.policy.identifier_columns)

    # -- releases ------------------------------------------------------------------------------------

    async def release(
        self,
        value: Any,
        *,
        channel: str,
        destination: Sequence[str],
        path: str | None = None,
        spend: float = 0.0,
        render: Callable[[Any], Sequence[bytes]] | None = None,
    ) -> Any:
        """Check ``value`` on its way out through ``channel`` to ``destination``; returns what may leave.

        ``path`` names the payload's root in field paths (default: the channel); ``spend`` is epsilon
        that a service adds noise for after this release (local DP on the storage service), charged
        to the project's budget like the central DP requests in ``value``. Raises
        :class:`DisclosureRefusedError` (the rule, the field path) when the policy refuses it.
        ``render`` makes the bytes that will leave of what may leave (the text of a final result for
        output type ``str``); they are judged as text too (lines against the record count,
        identifier values and patterns), in the same release record.
        """
        spend = _valid_spend(spend)
        async with self._lock:
            root = channel if path is None else path
            finish = await self._release(value, channel, list(destination), root, spend, render)
        # the record is stored before this returns (and before anything is sent); while it is being
        # stored the next release is judged already (its record joins the next upload of the ledger)
        return await finish()

    async def release_message(
        self, body: Mapping[str, Any], *, category: str, receivers: Sequence[str]
    ) -> dict[str, Any]:
        """Like :meth:`release` for a message body; a Base64 ``payload`` (the round protocol's
        inline values) is decoded and judged as the value it carries, and re-encoded if it changed."""
        view = dict(body)
        encoded = view.get("payload")
        decoded = False
        if isinstance(encoded, str):
            try:
                view["payload"] = codec.decode(base64.b64decode(encoded, validate=True))
                decoded = True
            except (binascii.Error, ValueError, PayloadError):
                decoded = False
        released = await self.release(view, channel=f"message:{category}", destination=receivers, path="")
        if decoded:
            if released["payload"] is view["payload"]:
                released["payload"] = encoded
            else:
                released["payload"] = base64.b64encode(codec.encode(released["payload"])).decode("ascii")
        return dict(released)

    async def _release(
        self,
        value: Any,
        channel: str,
        destination: list[str],
        path: str,
        spend: float,
        render: Callable[[Any], Sequence[bytes]] | None = None,
    ) -> Callable[[], Awaitable[Any]]:
        """Judge and record a release (under the guard's lock); returns what completes it.

        The record is staged in the ledger (in memory at once, so the next release is judged against
        it); the returned function waits until it is stored, then returns what may leave or raises
        the refusal. A release that spends privacy is stored under the lock, as the re-read of the
        ledger after it (:meth:`_overtaken`) needs.
        """
        draws: list[tuple[str, dp.Release]] = []

        def on_dp(where: str, request: Any) -> Any:
            release = dp.apply(request)
            draws.append((where, release))
            return release.value

        try:
            inspection = inspect(
                value, self.policy, self.local, path=path, on_dp=on_dp, dp_types=(dp.DPRequest,)
            )
        except FlameError:
            raise  # a malformed DP request and the like: the analysis's error, already clear
        except Exception as exc:  # the checks could not judge it: fail closed
            draws.clear()
            inspection = Inspection(value=value)
            inspection.findings.append(
                Finding(
                    "uninspectable",
                    path or "<payload>",
                    "refused",  # not even in warn mode: nothing was judged
                    f"the checks could not judge this payload ({type(exc).__name__}: {exc}); "
                    "send plain numbers, arrays, DataFrames or typed statistics",
                )
            )
        if render is not None and not inspection.refusals:
            for i, blob in enumerate(render(inspection.value)):
                text = inspect(bytes(blob), self.policy, self.local, path=f"{path or 'result'}<text {i + 1}>")
                inspection.findings += [f for f in text.findings if f.outcome != "unjudged"]
        # a DP spend reads the ledger from storage again: concurrent analyses of the project spend too
        entries = await self.ledger.entries(refresh=bool(draws) or bool(spend))
        findings = list(inspection.findings)
        if inspection.statistics:  # (the check reads every entry of the project's ledger)
            findings += differencing.check(inspection.statistics, entries, self.policy)
        epsilon = sum(r.epsilon for _, r in draws) + spend
        delta = sum(r.delta for _, r in draws)
        if spend:
            draws.append((path or "<payload>", dp.Release(None, spend, 0.0, float("nan"))))
        if draws:
            invalid = invalid_spends(entries)
            if invalid:
                detail = (
                    f"{len(invalid)} ledger entr{'y' if len(invalid) == 1 else 'ies'} with an epsilon or "
                    "delta that is not a finite number >= 0 (not written by a release of this node's "
                    "guard) not counted; the project's ledger was tampered with"
                )
                findings.append(Finding("ledger-entry", "<ledger>", "unjudged", detail))
                self.log(f"disclosure WARNING on node {self.node_id or '?'}: {detail}", "warn")
            used_epsilon, used_delta = spent(entries)
            budget = dp.Budget(
                self.policy.dp_epsilon_budget, self.policy.dp_delta_budget, used_epsilon, used_delta
            )
            for where, release in draws:
                findings.append(
                    Finding(
                        "dp",
                        where,
                        "dp",
                        f"noise scale {release.scale:g}, epsilon {release.epsilon:g}, delta {release.delta:g}",
                    )
                )
            if not budget.allows(epsilon, delta):
                left_e, left_d = budget.remaining()
                findings.append(
                    Finding(
                        "dp-budget",
                        draws[0][0],
                        "refused",  # the budget is never waived, not even in warn mode
                        f"this release needs epsilon {epsilon:g}, delta {delta:g}; the project has "
                        f"epsilon {left_e:g}, delta {left_d:g} left of {budget.epsilon:g}, {budget.delta:g}",
                    )
                )
        refusals = [f for f in findings if f.outcome == "refused"]
        warned = [f for f in findings if f.outcome == "warned"]
        outcome = "refused" if refusals else ("warned" if warned else "released")
        record = ReleaseRecord(
            node=self.node_id,
            analysis=self.analysis_id,
            channel=channel,
            destination=destination,
            outcome=outcome,
            digest=_digest(inspection.value),
            fields=inspection.fields,
            statistics=[{"path": s.path, "kind": s.kind, "n": s.n} for s in inspection.statistics]
            if outcome != "refused"
            else [],
            checks=[f.as_dict() for f in findings],
            unjudged=inspection.unjudged,
            epsilon=epsilon if outcome != "refused" else 0.0,
            delta=delta if outcome != "refused" else 0.0,
        )
        self.records.append(record)
        self.log(record.log_line(), "info")
        stored = self.ledger.stage(record)
        to = ", ".join(destination) or "-"
        if draws:
            await stored
        if draws and not refusals and self.ledger.storage is not None:
            overtaken = await self._overtaken(record, entries, draws[0][0])
            if overtaken is not None:
                refusals = [overtaken]
                refused = ReleaseRecord(
                    node=self.node_id,
                    analysis=self.analysis_id,
                    channel=channel,
                    destination=destination,
                    outcome="refused",
                    digest=record.digest,
                    fields=record.fields,
                    checks=[*record.checks, overtaken.as_dict()],
                    unjudged=record.unjudged,
                )
                self.records.append(refused)
                self.log(refused.log_line(), "info")
                await self.ledger.append(refused)

        async def finish() -> Any:
            await stored
            return self._conclude(inspection.value, refusals, warned, channel, to)

        return finish

    def _conclude(
        self, value: Any, refusals: list[Finding], warned: list[Finding], channel: str, to: str
    ) -> Any:
        """After the record is stored: raise the refusal, or log the warnings and return ``value``."""
        if refusals:
            first = refusals[0]
            message = (
                f"disclosure refused on node {self.node_id or '?'}: rule {first.rule} at {first.path} "
                f"({channel} to {to}): {first.detail}"
            )
            if len(refusals) > 1:
                message += f"; and {len(refusals) - 1} more refusal(s)"
            self.log(message, "error")
            raise DisclosureRefusedError(message, rule=first.rule, path=first.path, destination=to)
        for finding in warned:
            self.log(
                f"disclosure WARNING (mode warn, released anyway) on node {self.node_id or '?'}: rule "
                f"{finding.rule} at {finding.path} ({channel} to {to}): {finding.detail}",
                "warn",
            )
        return value

    async def _overtaken(
        self, record: ReleaseRecord, before: list[dict[str, Any]], where: str
    ) -> Finding | None:
        """The dp-budget refusal when concurrent spends and ``record`` together exceed the budget.

        The ledger is read again after ``record`` was appended. Entries that were not there when the
        budget was checked (``before``) are concurrent spends: if they and ``record`` together exceed the
        budget, ``record``'s release is refused (its spend stays counted, on the side of caution, like a
        send that failed). Of two concurrent releases that together exceed the budget at most one is
        released: the one that re-reads first may not see the other, but then the other, appended
        later, sees it. Both may be refused; the budget is never exceeded.
        """
        mine = _entry_key(record.as_dict())
        seen = Counter(_entry_key(e) for e in before)
        concurrent = []
        for entry in await self.ledger.entries(refresh=True):
            key = _entry_key(entry)
            if seen[key] > 0:
                seen[key] -= 1
            elif key == mine:
                mine = ""  # our own entry, once
            else:
                concurrent.append(entry)
        if not concurrent:
            return None
        used_epsilon, used_delta = spent(before + concurrent)
        budget = dp.Budget(
            self.policy.dp_epsilon_budget, self.policy.dp_delta_budget, used_epsilon, used_delta
        )
        if budget.allows(record.epsilon, record.delta):
            return None
        left_e, left_d = budget.remaining()
        return Finding(
            "dp-budget",
            where,
            "refused",
            f"a concurrent analysis of the project spent first: this release needs epsilon "
            f"{record.epsilon:g}, delta {record.delta:g}; the project has epsilon {left_e:g}, delta "
            f"{left_d:g} left of {budget.epsilon:g}, {budget.delta:g}",
        )


def _entry_key(entry: Mapping[str, Any]) -> str:
    """A ledger entry as it reads back from storage, for telling entries apart."""
    return json.dumps(json.loads(json.dumps(entry, default=str)), sort_keys=True, default=str)


def _valid_spend(spend: float) -> float:
    """``spend`` as a float: 0 (none) or a finite number > 0; anything else is refused, nothing recorded."""
    try:
        value = float(spend)
    except (TypeError, ValueError):
        raise PayloadError(f"DP: epsilon spent must be a finite number > 0, got {spend!r}") from None
    if value != 0.0 and not (math.isfinite(value) and value > 0):
        raise PayloadError(f"DP: epsilon spent must be a finite number > 0, got {spend!r}")
    return value


def _digest(value: Any) -> str:
    try:
        data = codec.encode(value)
    except Exception:  # a final result for pickle output may hold types the codec does not carry
        data = repr(value).encode("utf-8", "replace")
    return "sha256:" + hashlib.sha256(data).hexdigest()


__all__ = ["DisclosureGuard"]

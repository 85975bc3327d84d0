"""The release audit: one record per outgoing payload, in the node's log stream and in its ledger.

Every payload that leaves the node (an update to the aggregator, a message or intermediate data to
another node, the final result for the hub) gets a :class:`ReleaseRecord`: when, from which analysis,
to whom, through which channel, what it held (field paths, kinds, shapes, record counts), each check
and its outcome, the privacy spent, and the SHA-256 digest of what was released. The record goes

* to the node's log stream (what the hospital's operators see on FLAME), as one ``disclosure audit``
  line of JSON, plus a readable line for a refusal; and
* to the project's **ledger**: local results of this node under the tag :data:`LEDGER_TAG`.

Why the ledger persists. Local results in node storage are scoped to the project and outlive the
analysis, unlike the checkpoints and keys the federation layer deletes when an analysis ends. The
ledger must outlive it: the differencing guard compares a statistic with what earlier analyses of the
project released, and the privacy budget adds up what every analysis of the project spent. Deleting it
would reset both. What it holds: field paths and kinds chosen by the analysis code, record counts, the
rules and outcomes, epsilon and delta, digests, times and analysis ids; never a released value and
nothing at the level of a patient (record counts are the numbers the released statistics already
carry).

Order: the record is written before the payload is sent. A send that then fails leaves a record of a
release that did not happen, so the budget and the differencing guard err on the side of caution.

Group commit. One writer task uploads the ledger's records; records staged while an upload is in
flight go together in the next upload, as one *batch* local result (``{"batch": [entry, ...]}``,
:data:`BATCH_KEY`), and each release still waits until its own record is stored. A record that spends
privacy (epsilon or delta above 0) is always written on its own, as a plain entry, so that a reader
that predates batches still counts every spend. Readers take both forms (:func:`ledger_entries`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flame.errors import FlameError

if TYPE_CHECKING:
    from flame.clients.storage import StorageClient

log = logging.getLogger(__name__)

#: The tag of the ledger's entries among the node's local results (project-scoped).
LEDGER_TAG = "flame-disclosure-ledger"
#: Format version of a ledger entry.
LEDGER_VERSION = 1
#: Ledger entries read at once when an analysis loads the project's ledger.
LOAD_CONCURRENCY = 8
#: The key of a batch local result: ``{"batch": [entry, ...], "version": 1}`` (see :func:`ledger_entries`).
BATCH_KEY = "batch"
#: Records at most in one upload of the ledger.
MAX_BATCH = 256


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ReleaseRecord:
    """One outgoing payload: what, to whom, which checks, the outcome."""

    node: str
    analysis: str
    channel: str
    destination: list[str]
    outcome: str
    digest: str
    fields: list[dict[str, Any]] = field(default_factory=list)
    statistics: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, str]] = field(default_factory=list)
    unjudged: int = 0
    epsilon: float = 0.0
    delta: float = 0.0
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    version: int = LEDGER_VERSION

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data; its lists and dicts are copies (``dataclasses.asdict`` without its
        generic walk, which cost more than the checks of a small release)."""
        return {name: _copy(getattr(self, name)) for name in self.__dataclass_fields__}

    def log_line(self, limit: int = 40) -> str:
        """The record as one JSON line (long field and check lists cut to ``limit`` entries)."""
        record = self.as_dict()
        for key in ("fields", "checks"):
            items = record[key]
            if len(items) > limit:
                record[key] = [*items[:limit], {"more": len(items) - limit}]
        return AUDIT_PREFIX + json.dumps(record, separators=(",", ":"), default=str)


def _copy(value: Any) -> Any:
    """``value`` with every dict, list and tuple in it copied (other values are shared)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_copy(item) for item in value)
    return value


AUDIT_PREFIX = "disclosure audit "


def short_audit_line(line: str) -> str | None:
    """A one-line human summary of a ``disclosure audit`` log line, or None for any other line.

    For displays (``flame sim``): the outcome, the channel, how many receivers, the statistics with
    their record counts, the checks that did not pass and the digest's first characters.
    """
    if not line.startswith(AUDIT_PREFIX):
        return None
    try:
        record = json.loads(line[len(AUDIT_PREFIX) :])
        receivers = len(record.get("destination") or [])
        counts = sorted({int(s["n"]) for s in record.get("statistics", []) if isinstance(s.get("n"), int)})
        flagged = [
            f"{c.get('rule')} at {c.get('path')} ({c.get('outcome')})"
            for c in record.get("checks", [])
            if c.get("outcome") not in ("passed", "unjudged")
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    parts = [f"disclosure: {record.get('outcome')} {record.get('channel')} to {receivers} receiver(s)"]
    if counts:
        parts.append(
            f"{len(record.get('statistics', []))} statistic(s) over n={'/'.join(map(str, counts[:6]))}"
        )
    if record.get("unjudged"):
        parts.append(f"{record['unjudged']} unjudged value(s)")
    if flagged:
        parts.append("; ".join(flagged[:3]))
    if record.get("epsilon"):
        parts.append(f"epsilon {record['epsilon']:g}")
    parts.append(str(record.get("digest", ""))[:19])
    return ", ".join(parts)


def ledger_entries(raw: bytes) -> list[dict[str, Any]]:
    """The entries in one local result under :data:`LEDGER_TAG`: a single entry, or those of a batch.

    What is not JSON, or neither an object nor a batch of objects, gives no entries (other analyses
    of the project can write anything under the tag); a non-object inside a batch is skipped.
    """
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("skipping a ledger entry that is not JSON")
        return []
    if not isinstance(value, dict):
        return []
    batch = value.get(BATCH_KEY)
    if isinstance(batch, list) and "outcome" not in value:
        return [entry for entry in batch if isinstance(entry, dict)]
    return [value]


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _spends(entry: dict[str, Any]) -> bool:
    return bool(entry.get("epsilon")) or bool(entry.get("delta"))


class Ledger:
    """The project's release ledger on this node: local results under :data:`LEDGER_TAG`.

    Without a storage client (tests, an analysis run outside a node) it is kept in memory.
    Entries are read once per process and then kept up to date in memory; a DP spend reads them
    again (``entries(refresh=True)``) to see what concurrent analyses of the project spent.
    Writes are group commits (see the module's description): :attr:`uploads` counts them.
    """

    def __init__(self, storage: StorageClient | None = None) -> None:
        self.storage = storage
        self._entries: list[dict[str, Any]] | None = None if storage is not None else []
        self._lock = asyncio.Lock()
        #: staged entries not yet handed to an upload, with the future each stager waits on
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: set while nothing is staged or being uploaded
        self._settled = asyncio.Event()
        self._settled.set()
        #: uploads made (one per group of records)
        self.uploads = 0

    async def entries(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """Every entry of the project so far (earlier analyses included).

        ``refresh`` reads them from node storage again (what concurrent analyses of the project
        appended since), after this ledger's own staged records are stored; without it the entries
        read once and kept up to date in memory (staged records included).
        """
        if refresh and self.storage is not None:
            await self._settled.wait()
        async with self._lock:
            if self._entries is None or (refresh and self.storage is not None):
                self._entries = await self._load()
            return list(self._entries)

    async def _load(self) -> list[dict[str, Any]]:
        assert self.storage is not None
        from flame.errors import ServiceError

        storage = self.storage
        try:
            # one request: the service lists an unknown tag as empty, so no listing of the tags first
            listed = await storage.tagged(LEDGER_TAG)
        except ServiceError as exc:
            raise FlameError(f"the disclosure ledger cannot be read from node storage: {exc}") from exc
        gate = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def read(item: Any) -> bytes:
            async with gate:
                return await storage.read_local(item)

        entries = []
        for raw in await asyncio.gather(*(read(item) for item in listed)):
            entries += ledger_entries(raw)
        return entries

    async def append(self, record: ReleaseRecord) -> None:
        """Write ``record`` to the ledger; returns once it is stored."""
        await self.stage(record)
        if self._entries is None:
            async with self._lock:
                if self._entries is None:
                    self._entries = await self._load()

    def stage(self, record: ReleaseRecord) -> asyncio.Future[None]:
        """Add ``record`` to the ledger: at once in memory, and queued for node storage.

        Returns a future that is done when the record is stored (or failed to be: then it is taken out
        of memory again and the future holds the storage error). Records staged together are stored
        in staging order.
        """
        entry = record.as_dict()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieve)  # a stager that stopped waiting leaves no unretrieved error
        if self._entries is not None:
            self._entries.append(entry)
        if self.storage is None:
            done.set_result(None)
            return done
        self._queue.append((entry, done))
        self._settled.clear()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())
        return done

    async def _write(self) -> None:
        """The writer: uploads what is staged, a group at a time, until nothing is left."""
        assert self.storage is not None
        try:
            while self._queue:
                group = self._next_group()
                entries = [entry for entry, _ in group]
                if len(entries) == 1:
                    data, filename = entries[0], "release.json"
                else:
                    data, filename = {BATCH_KEY: entries, "version": LEDGER_VERSION}, "releases.json"
                try:
                    await self.storage.save_local(
                        json.dumps(data, separators=(",", ":"), default=str).encode(),
                        tag=LEDGER_TAG,
                        filename=filename,
                    )
                except Exception as exc:
                    self._fail(group, exc)
                except BaseException:
                    self._fail(
                        group + self._queue, FlameError("the disclosure ledger's writer was cancelled")
                    )
                    self._queue = []
                    raise
                else:
                    self.uploads += 1
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
        finally:
            if not self._queue:
                self._settled.set()

    def _next_group(self) -> list[tuple[dict[str, Any], asyncio.Future[None]]]:
        """The next records to upload together: up to :data:`MAX_BATCH`, a spend of privacy alone."""
        if _spends(self._queue[0][0]):
            return [self._queue.pop(0)]
        count = 1
        while count < min(len(self._queue), MAX_BATCH) and not _spends(self._queue[count][0]):
            count += 1
        group, self._queue = self._queue[:count], self._queue[count:]
        return group

    def _fail(self, group: list[tuple[dict[str, Any], asyncio.Future[None]]], exc: Exception) -> None:
        """Records not stored: out of memory again (by identity: equal entries stay), ``exc`` to the stagers."""
        if self._entries is not None:
            failed = {id(entry) for entry, _ in group}
            self._entries = [entry for entry in self._entries if id(entry) not in failed]
        for _, done in group:
            if not done.done():
                done.set_exception(exc)


def _amount(value: Any) -> float | None:
    """A ledger entry's epsilon or delta: a finite number >= 0 (missing is 0), else None."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    amount = float(value)
    return amount if math.isfinite(amount) and amount >= 0 else None


def invalid_spends(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The counted entries whose epsilon or delta is not a finite number >= 0 (:func:`spent` skips them).

    No release of this library writes one; another analysis of the project can write any local result
    under the ledger's tag, and a negative or infinite spend would otherwise switch the budget off.
    """
    return [
        e
        for e in entries
        if e.get("outcome") != "refused"
        and (_amount(e.get("epsilon")) is None or _amount(e.get("delta")) is None)
    ]


def spent(entries: list[dict[str, Any]]) -> tuple[float, float]:
    """Epsilon and delta spent by the released entries (sequential composition: they add up).

    Entries whose epsilon or delta is not a finite number >= 0 are not counted (see
    :func:`invalid_spends`; the guard reports them).
    """
    epsilon = delta = 0.0
    for entry in entries:
        if entry.get("outcome") == "refused":
            continue
        e, d = _amount(entry.get("epsilon")), _amount(entry.get("delta"))
        if e is None or d is None:
            continue
        epsilon += e
        delta += d
    return epsilon, delta


__all__ = [
    "BATCH_KEY",
    "LEDGER_TAG",
    "Ledger",
    "ReleaseRecord",
    "digest",
    "invalid_spends",
    "ledger_entries",
    "spent",
]

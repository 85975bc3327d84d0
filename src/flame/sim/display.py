"""What ``flame sim`` shows while a local federation runs: a live table, or plain log lines.

Both read the emulated stack only: each node's record at the pod orchestrator (status, progress, the
log lines it streamed) and the stack's event log (messages, retries, faults, restarts).

- :class:`LiveDisplay` is a ``rich.live`` table of the nodes with a footer of counts. Rich redraws
  it at 4 Hz from its own thread; nothing here waits on a timer.
- :class:`LinePrinter` prints each node's log lines as the pod orchestrator receives them, woken by
  the stack's ``po`` events (for logs in CI, files and ``--no-live``).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from flame.disclosure.audit import short_audit_line
from flame.redact import redact

if TYPE_CHECKING:
    from flame.sim.stack import FlameStack

_ROUND = re.compile(r"\bround (\d+)\b")
_STYLES = {
    "starting": "dim",
    "started": "cyan",
    "executing": "yellow",
    "executed": "green",
    "stuck": "magenta",
    "stopping": "dim",
    "stopped": "dim",
    "failed": "bold red",
}
#: Events worth a line of their own in plain output (the rest are counted in the footer).
_NOTABLE = ("node.restart", "po.restart", "po.failed", "fault.restart", "fault.token_expiry")


@dataclass(frozen=True)
class NodeRow:
    """One node as the display shows it."""

    name: str
    role: str
    status: str
    round: int | None
    progress: int
    restarts: int
    last_log: str


def node_rows(stack: FlameStack) -> list[NodeRow]:
    """The nodes of ``stack`` as the pod orchestrator sees them (aggregator first)."""
    rows = []
    for name, node in stack.nodes.items():
        record = stack.po.records[name]
        lines = [line for entry in list(record.logs)[-20:] for line in _lines(entry)]
        last = lines[-1] if lines else ""
        round_no = None
        for line in reversed(lines):
            match = _ROUND.search(line)
            if match:
                round_no = int(match.group(1))
                break
        rows.append(
            NodeRow(
                name=name,
                role=node.role,
                status=record.status,
                round=round_no,
                progress=record.progress,
                restarts=node.restart_counter,
                last_log=last,
            )
        )
    rows.sort(key=lambda row: (row.role != "aggregator", row.name))
    return rows


def _lines(entry: dict[str, object]) -> list[str]:
    """The lines of one streamed log entry (the runtime may batch several lines into one entry), with
    the machine-readable disclosure audit records shortened to one readable line each."""
    lines = [line for line in str(entry.get("log", "")).splitlines() if line.strip()]
    return [short_audit_line(line) or line for line in lines]


class EventCounter:
    """Counts the stack's events by kind, reading only the events added since the last call."""

    def __init__(self, stack: FlameStack) -> None:
        self._events = stack.events
        self._seen = 0
        self.counts: Counter[str] = Counter()

    def update(self) -> Counter[str]:
        for event in itertools.islice(self._events, self._seen, None):
            self.counts[event.kind] += 1
            self._seen += 1
        return self.counts

    def faults(self) -> int:
        """Injected faults so far (delivery faults, outages, token expiries, restarts)."""
        return sum(n for kind, n in self.counts.items() if kind.startswith("fault."))


def footer_text(counter: EventCounter, elapsed: float) -> Text:
    """``elapsed · messages · deliveries · retries · dropped · faults · restarts`` as one line."""
    counts = counter.update()
    parts = [
        ("elapsed", f"{elapsed:.1f} s"),
        ("messages", str(counts["broker.sent"])),
        ("deliveries", str(counts["delivery.ok"])),
        ("retries", str(counts["delivery.retry"])),
        ("dropped", str(counts["delivery.dropped"])),
        ("faults", str(counter.faults())),
        ("restarts", str(counts["node.restart"])),
        ("token refreshes", str(counts["po.token_refresh"])),
    ]
    text = Text()
    for i, (label, value) in enumerate(parts):
        if i:
            text.append("  ·  ", style="dim")
        text.append(f"{label} ", style="dim")
        text.append(value, style="bold")
    return text


def node_table(stack: FlameStack, *, title: str | None = None, max_rounds: int | None = None) -> Table:
    """The table of nodes: name, status, round, progress, pod restarts, the last log line."""
    rows = node_rows(stack)
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("node", no_wrap=True, min_width=max(len(row.name) for row in rows))
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("round", justify="right", no_wrap=True, min_width=5)
    table.add_column("done", justify="right", no_wrap=True, min_width=4)
    table.add_column("restarts", justify="right", no_wrap=True, min_width=3)
    table.add_column("waiting for / doing", overflow="ellipsis", no_wrap=True, min_width=20, max_width=80)
    for row in rows:
        round_text = "" if row.round is None else str(row.round)
        if round_text and max_rounds is not None:
            round_text += f"/{max_rounds}"
        table.add_row(
            Text(row.name, style="bold" if row.role == "aggregator" else ""),
            Text(row.status, style=_STYLES.get(row.status, "")),
            round_text,
            f"{row.progress}%",
            str(row.restarts) if row.restarts else "",
            Text(row.last_log),
        )
    return table


class LiveDisplay:
    """A ``rich.live`` view of a running federation; use as a context manager."""

    def __init__(
        self,
        stack: FlameStack,
        console: Console,
        *,
        title: str,
        max_rounds: int | None = None,
        refresh_per_second: float = 4.0,
    ) -> None:
        self.stack = stack
        self.console = console
        self.title = title
        self.max_rounds = max_rounds
        self.counter = EventCounter(stack)
        self._started = time.monotonic()
        self._live = Live(
            console=console,
            refresh_per_second=refresh_per_second,
            get_renderable=self.render,
            transient=False,
        )

    def render(self) -> RenderableType:
        table = node_table(self.stack, title=self.title, max_rounds=self.max_rounds)
        return Group(table, footer_text(self.counter, time.monotonic() - self._started))

    def __enter__(self) -> LiveDisplay:
        self._started = time.monotonic()
        self._live.start(refresh=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.stop()


class LinePrinter:
    """Prints every node's log lines as they reach the pod orchestrator, and notable stack events.

    :meth:`run` is a task woken by the stack's ``po`` events until :meth:`stop`; :meth:`flush` prints
    what is left.
    """

    def __init__(self, stack: FlameStack, console: Console) -> None:
        self.stack = stack
        self.console = console
        self._cursors = dict.fromkeys(stack.nodes, 0)
        self._event_cursor = 0
        self._started = time.monotonic()
        self._width = max(len(name) for name in stack.nodes)
        self._stop = asyncio.Event()

    def flush(self) -> None:
        """Print the log lines and notable events not printed yet."""
        elapsed = time.monotonic() - self._started
        for event in itertools.islice(self.stack.events, self._event_cursor, None):
            self._event_cursor += 1
            if event.kind in _NOTABLE:
                detail = redact(", ".join(f"{k}={v}" for k, v in event.detail.items() if k != "deployment"))
                self._line(elapsed, event.node or "stack", event.kind, detail)
        for name, record in self.stack.po.records.items():
            logs = record.logs
            while self._cursors[name] < len(logs):
                entry = logs[self._cursors[name]]
                self._cursors[name] += 1
                for line in _lines(entry):
                    self._line(elapsed, name, str(entry.get("status", "")), line)

    def _line(self, elapsed: float, node: str, status: str, text: str) -> None:
        line = Text(f"{elapsed:7.2f}s  ", style="dim")
        line.append(f"{node:<{self._width}}  ")
        line.append(f"{status:<10}", style=_STYLES.get(status, "cyan"))
        line.append(f" {text}")
        self.console.print(line, soft_wrap=True, highlight=False)

    def stop(self) -> None:
        """End :meth:`run` (after it printed what is left); safe to call more than once."""
        self._stop.set()

    async def run(self) -> None:
        """Print lines as they come, until :meth:`stop` (or a cancellation)."""
        seen = 0
        while True:
            self.flush()
            if self._stop.is_set():
                return
            # wait for the next po event or the stop, together: ending does not depend on a
            # cancellation reaching the event wait
            arrived = asyncio.ensure_future(self.stack.events.wait_for("po", seen + 1, timeout=3600.0))
            stopped = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({arrived, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
                stopped.cancel()
            if arrived.done() and not arrived.cancelled() and arrived.exception() is None:
                seen = len(arrived.result())


__all__ = ["EventCounter", "LinePrinter", "LiveDisplay", "NodeRow", "footer_text", "node_rows", "node_table"]

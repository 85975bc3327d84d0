"""``flame.simulate``: an analysis on a whole local federation, from a script, a test or a notebook.

::

    import flame

    result = flame.simulate(Mean(), Pool(), data="examples/data")   # or flame.simulate("analysis.py", ...)
    result.ok, result.result, result.rounds

The federation is the emulated FLAME node stack (one aggregator and ``nodes`` analysis nodes, each with
the message broker, storage, data sources and pod orchestrator of a node) and the node runtimes, all
talking through the same HTTP paths as on FLAME. :func:`simulate` runs it on the library's event-loop
thread (:class:`~flame.node.loop.LoopThread`), so it works from plain scripts and inside a running event
loop alike (a Jupyter cell); code that is already async awaits :func:`simulate_async`. ``flame sim``,
``flame demo`` and the project template's test are this call.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flame.federated import Aggregator, Analysis, Analyzer
from flame.local.config import (
    CANCEL_GRACE,
    DEFAULT_TIMEOUT,
    SHUTDOWN_GRACE,
    WORKER_PREFIX,
    SimConfig,
    SimMode,
    SimUsageError,
)
from flame.local.loading import LoadedAnalysis, load_analysis
from flame.local.report import SimOutcome, final_value
from flame.local.star_runs import StarJob
from flame.node.loop import LoopThread
from flame.runner import as_analysis

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

#: What :func:`simulate` runs: an analysis file, a ready :class:`Analysis`, or an analyzer (with an aggregator).
#: (PrivateAIM's tester passes a :class:`~flame.local.star_runs.StarJob`: its nodes and their code.)
Runnable = str | Path | Analysis | Analyzer | type[Analyzer] | StarJob
#: Extra seconds the sync form waits beyond the run's own bound (loading the file, starting the stack).
LOAD_GRACE = 60.0
_MODES = ("inprocess", "served", "processes")


@dataclass(frozen=True)
class SimulationResult:
    """A finished local run.

    ``ok`` tells whether every node executed and the final result reached the hub; ``status`` is
    ``"ok"``, ``"failed"`` or ``"timeout"``; ``result`` is the final result as the Python object
    (passed through the analysis' :meth:`~flame.Analysis.interpret`; a list when the aggregator
    submitted several); ``rounds`` a DataFrame with one row per round; ``report`` the JSON run report;
    ``events`` everything the emulated stack did; ``errors`` what went wrong, one line each.
    """

    result: Any
    report: dict[str, Any] = field(repr=False)
    events: list[dict[str, Any]] = field(repr=False)
    errors: list[str]
    status: str
    #: the run as ``flame sim`` sees it (display, report file, exit code)
    outcome: SimOutcome = field(repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Every node executed and the final result reached the hub."""
        return self.status == "ok"

    @property
    def rounds(self) -> pd.DataFrame:
        """One row per round: ``round``, ``contributors`` (updates aggregated), ``seconds``, ``bytes``."""
        import pandas as pd

        rows = [
            {
                "round": entry.get("round"),
                "contributors": entry.get("updates", len(entry.get("contributors", []))),
                "seconds": entry.get("seconds"),
                "bytes": entry.get("bytes"),
            }
            for entry in self.outcome.run.rounds
        ]
        return pd.DataFrame(rows, columns=["round", "contributors", "seconds", "bytes"])

    @property
    def exit_code(self) -> int:
        """What ``flame sim`` exits with for this run (0 ok, 1 failed, 124 timeout)."""
        return self.outcome.exit_code

    def to_html(self) -> str:
        """The run as one self-contained HTML page: timeline, rounds, faults, result, disclosure audit."""
        from flame.local.html_report import render_html

        events = dict(self.report.get("events") or {})
        events["timeline"] = self.events
        return render_html({**self.report, "events": events})

    def check(self) -> SimulationResult:
        """Raise :class:`~flame.errors.FederationError` with the run's errors unless it is ok."""
        if not self.ok:
            from flame.errors import FederationError

            raise FederationError(f"the local run {self.status}: " + "; ".join(self.errors))
        return self


async def simulate_async(
    analysis: Runnable,
    aggregator: Aggregator | type[Aggregator] | None = None,
    *,
    data: str | Path | None = None,
    nodes: int | None = None,
    split: str | Path | None = None,
    faults: str | None = None,
    seed: int | None = None,
    mode: SimMode = "inprocess",
    policy: str | Path | Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    timeout: float | None = None,
    time_scale: float = 1.0,
    max_rounds: int | None = None,
    console: Console | None = None,
    live: bool = False,
    **options: Any,
) -> SimulationResult:
    """:func:`simulate` for code that is already async (``await flame.simulate_async(...)``)."""
    config, loaded = prepare(
        analysis,
        aggregator,
        data=data,
        nodes=nodes,
        split=split,
        faults=faults,
        seed=seed,
        mode=mode,
        policy=policy,
        timeout=timeout,
        time_scale=time_scale,
        max_rounds=max_rounds,
        options=options,
    )
    from flame.local.execution import execute

    outcome = await execute(config, loaded, console=console, live=live)
    return result_of(outcome)


def simulate(
    analysis: Runnable,
    aggregator: Aggregator | type[Aggregator] | None = None,
    *,
    data: str | Path | None = None,
    nodes: int | None = None,
    split: str | Path | None = None,
    faults: str | None = None,
    seed: int | None = None,
    mode: SimMode = "inprocess",
    policy: str | Path | Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    timeout: float | None = None,
    time_scale: float = 1.0,
    max_rounds: int | None = None,
    console: Console | None = None,
    live: bool = False,
    **options: Any,
) -> SimulationResult:
    """Run an analysis on a local federation of ``nodes`` analysis nodes and one aggregator.

    ``analysis``: an analysis file (``flame.run(...)`` in it, as ``flame sim FILE`` runs it), a ready
    :class:`~flame.Analysis` (as :mod:`flame.stats` returns), or an analyzer with its ``aggregator``.
    ``data``: a folder with ``node-1/``, ``node-2/``, ... (each with ``s3/`` and ``fhir/``); ``nodes``
    defaults to their number, else 3. ``split``: one CSV or FHIR file split across the nodes instead.
    ``faults``: a fault plan (``"drop=0.2;restart=node-1@5"``); ``seed`` seeds ids, the split and the
    faults. ``mode``: ``"inprocess"`` (default), ``"served"`` (real HTTP on loopback) or
    ``"processes"`` (the file as ``python FILE`` per node). ``policy``: a disclosure policy file for
    every node, or ``{node: file}``. ``timeout`` bounds the whole run (600 s); ``time_scale`` multiplies
    the platform's delays and periods. ``console`` shows the run as ``flame sim`` does (``live``: the
    live table). Other keywords are federation options (``max_rounds=``, ``quorum=``, ...) that override
    the analysis' own.

    A failed run does not raise: look at ``.ok``, ``.errors`` (or call ``.check()``). Raises
    :class:`~flame.local.loading.AnalysisFileError` for a file that cannot be loaded and
    :class:`~flame.local.config.SimUsageError` for options that do not fit together.
    """
    coro = simulate_async(
        analysis,
        aggregator,
        data=data,
        nodes=nodes,
        split=split,
        faults=faults,
        seed=seed,
        mode=mode,
        policy=policy,
        timeout=timeout,
        time_scale=time_scale,
        max_rounds=max_rounds,
        console=console,
        live=live,
        **options,
    )
    bound = (timeout if timeout is not None else DEFAULT_TIMEOUT) + SHUTDOWN_GRACE + 2 * CANCEL_GRACE
    loop = LoopThread("flame-simulate")
    # author code runs in named worker threads: busy_threads() finds one still running after the run
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix=WORKER_PREFIX)
    loop.loop.call_soon_threadsafe(loop.loop.set_default_executor, executor)
    try:
        return loop.run(coro, bound + LOAD_GRACE, "the local federation")
    finally:
        loop.stop(2 * CANCEL_GRACE)
        executor.shutdown(wait=False, cancel_futures=True)


def busy_threads() -> list[str]:
    """Worker threads of a finished :func:`simulate` still running author code (it cannot be interrupted)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX) and t.is_alive()]


def prepare(
    analysis: Runnable,
    aggregator: Aggregator | type[Aggregator] | None = None,
    *,
    data: str | Path | None = None,
    nodes: int | None = None,
    split: str | Path | None = None,
    faults: str | None = None,
    seed: int | None = None,
    mode: SimMode = "inprocess",
    policy: str | Path | Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    timeout: float | None = None,
    time_scale: float = 1.0,
    max_rounds: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[SimConfig, LoadedAnalysis]:
    """The checked configuration of a run and its analysis (loaded from the file, if it is one)."""
    if mode not in _MODES:
        raise SimUsageError(f"mode={mode!r}: use one of {', '.join(_MODES)}")
    path: Path | None = None
    if mode == "processes" and not isinstance(analysis, str | Path):
        raise SimUsageError(
            "mode='processes' starts 'python ANALYSIS.py' on every node: pass the analysis file's path"
        )
    if isinstance(analysis, str | Path):
        if aggregator is not None:
            raise SimUsageError("an analysis file brings its own aggregator; pass the path alone")
        path = Path(analysis)
    config = SimConfig(
        analysis=path,
        nodes=nodes,
        data=None if data is None else Path(data),
        split=None if split is None else Path(split),
        seed=0 if seed is None else int(seed),
        faults=faults or "",
        mode=mode,
        max_rounds=max_rounds,
        timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
        time_scale=time_scale,
        policies=_policies(policy),
        option_changes=dict(options or {}),
    )
    config.check()
    if path is not None:
        loaded = load_analysis(path)
    elif isinstance(analysis, StarJob):
        loaded = LoadedAnalysis.star_job(analysis, analysis.name)
    else:
        assert not isinstance(analysis, str | Path | StarJob)
        loaded = LoadedAnalysis.of(as_analysis(analysis, aggregator))
    if loaded.kind == "star" and (config.max_rounds is not None or config.option_changes):
        raise SimUsageError(
            "a PrivateAIM-style script sets its own options in StarModel(...); max_rounds and federation "
            "options cannot change them"
        )
    # options that do not exist are refused before anything starts
    unknown = sorted(set(config.option_changes) - {f.name for f in dataclasses.fields(loaded.options)})
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(loaded.options))
        raise SimUsageError(f"unknown federation option(s) {', '.join(unknown)}; the options are: {known}")
    return config, loaded


def _policies(
    policy: str | Path | Mapping[str, str | Path] | Sequence[str | Path] | None,
) -> tuple[str, ...]:
    if policy is None:
        return ()
    if isinstance(policy, str | Path):
        return (str(policy),)
    if isinstance(policy, Mapping):
        return tuple(f"{node}={file}" for node, file in policy.items())
    return tuple(str(item) for item in policy)


def result_of(outcome: SimOutcome) -> SimulationResult:
    """The :class:`SimulationResult` of a finished run."""
    return SimulationResult(
        result=final_result(outcome),
        report=outcome.report(),
        events=outcome.events,
        errors=list(outcome.errors),
        status=outcome.status,
        outcome=outcome,
    )


def final_result(outcome: SimOutcome) -> Any:
    """The final result as the author's object: :func:`~flame.local.report.final_value` interpreted."""
    value = final_value(outcome)
    if value is None or (isinstance(value, str | bytes) and outcome.run.result is None):
        return value
    if isinstance(value, list) and outcome.run.result is None:
        return [
            v if v is None or isinstance(v, str | bytes) else outcome.loaded.analysis.interpret(v)
            for v in value
        ]
    return outcome.loaded.analysis.interpret(value)


__all__ = ["SimulationResult", "busy_threads", "simulate", "simulate_async"]

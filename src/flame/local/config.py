"""The options of one local run (:class:`SimConfig`), its bounds, and the stack settings they give."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flame.errors import FlameError
from flame.node.messaging import DEFAULT_ATTEMPT_TIMEOUT
from flame.node.runtime import Timeouts
from flame.sim.settings import StackSettings

SimMode = Literal["inprocess", "served", "processes"]

#: Default bound of one ``flame sim`` run (seconds).
DEFAULT_TIMEOUT = 600.0
#: How long a node process gets to exit after SIGTERM before it is killed (seconds).
KILL_GRACE = 5.0
#: Name prefix of the worker threads that run author code in in-process and served mode.
WORKER_PREFIX = "flame-sim-worker"
#: Lines of a node process' output kept for the report and error messages.
TAIL_LINES = 40
#: Variables a node process gets from this environment besides the container's: what an image provides.
PASSED_THROUGH = ("PATH", "HOME", "SYSTEMROOT", "PYTHONPATH")
#: A node's variables whose values are secrets, redacted from what its process prints.
SECRET_VARIABLES = ("KEYCLOAK_TOKEN", "DATA_SOURCE_TOKEN")
#: Least webhook-delivery and health-check timeout under ``--time-scale`` (real seconds).
MIN_TIMEOUT = 2.0
#: Least pod-orchestrator period and health-check timeout in process mode (real seconds): a Python
#: process needs a moment to start, and the orchestrator restarts a pod whose /healthz does not answer.
PROCESS_PO_PERIOD = 10.0
PROCESS_PO_HEALTHZ_TIMEOUT = 5.0
#: After the federation stopped (or ``--timeout`` ran out), how long stopping the nodes and closing the
#: stack may take before the run is abandoned (seconds).
SHUTDOWN_GRACE = 5.0
#: How long a cancelled task (or a killed process) gets to end before it is left behind (seconds).
CANCEL_GRACE = 1.0
#: Exit codes of ``flame sim``: every node executed / the run failed / bad usage / ``--timeout`` ran out.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 124


class SimUsageError(FlameError):
    """``flame sim`` was given options that do not fit together."""


def count_node_folders(root: Path) -> int:
    """How many consecutive ``node-1``, ``node-2``, ... folders ``root`` has."""
    count = 0
    while (root / f"node-{count + 1}").is_dir():
        count += 1
    return count


@dataclass(frozen=True)
class SimConfig:
    """The options of one ``flame sim`` run."""

    #: the analysis file; None for an analysis given as objects (``flame.simulate(analyzer, aggregator)``)
    analysis: Path | None = None
    nodes: int | None = None
    data: Path | None = None
    split: Path | None = None
    seed: int = 0
    faults: str = ""
    mode: SimMode = "inprocess"
    max_rounds: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    time_scale: float = 1.0
    #: ``--policy`` values: ``FILE`` (every node) or ``NODE=FILE``
    policies: tuple[str, ...] = ()
    #: federation options changed for this run (``flame.simulate(..., quorum=2)``)
    option_changes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`SimUsageError` for options that do not fit together."""
        if self.nodes is not None and self.nodes < 1:
            raise SimUsageError("--nodes must be at least 1")
        if self.data is not None and self.split is not None:
            raise SimUsageError("give either --data or --split, not both")
        if self.data is not None and not self.data.is_dir():
            raise SimUsageError(f"--data {self.data} is not a folder (expected node-1/, node-2/, ... in it)")
        if self.data is not None and self.nodes is not None:
            folders = count_node_folders(self.data)
            if folders and folders != self.nodes:
                raise SimUsageError(
                    f"--nodes {self.nodes} does not match the {folders} node folder(s) under --data "
                    f"{self.data} (node-1 ... node-{folders}); drop --nodes or give --nodes {folders}"
                )
        if self.timeout <= 0:
            raise SimUsageError("--timeout must be positive")
        if not 0 < self.time_scale <= 1000:
            raise SimUsageError("--time-scale must lie in (0, 1000]")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise SimUsageError("--max-rounds must be at least 1")
        if self.mode == "processes" and self.max_rounds is not None:
            raise SimUsageError(
                "--max-rounds cannot reach node processes: each runs the file unchanged, as on a node. "
                "Set max_rounds in the file's flame.run(...)"
            )
        if self.mode == "processes" and self.option_changes:
            raise SimUsageError(
                f"options ({', '.join(sorted(self.option_changes))}) cannot reach node processes: each runs "
                "the file unchanged, as on a node. Set them in the file's flame.run(...)"
            )
        if self.mode == "processes" and self.analysis is None:
            raise SimUsageError(
                "mode='processes' starts 'python ANALYSIS.py' on every node: pass the analysis file's path"
            )


def stack_settings(config: SimConfig) -> StackSettings:
    """The platform's timing scaled by ``--time-scale``; its timeouts stay at least ``MIN_TIMEOUT``.

    Delays and periods shrink with the scale; a timeout shrunk below what a loaded machine needs would
    turn slow answers into drops and failed health checks the real platform would not see.
    """
    scale = config.time_scale
    base = StackSettings()
    settings = dataclasses.replace(
        base,
        time_scale=scale,
        delivery_timeout=max(base.delivery_timeout, MIN_TIMEOUT / scale),
        po_healthz_timeout=max(base.po_healthz_timeout, MIN_TIMEOUT / scale),
    )
    if config.mode == "processes":
        settings = dataclasses.replace(
            settings,
            po_period=max(settings.po_period, PROCESS_PO_PERIOD / scale),
            po_healthz_timeout=max(settings.po_healthz_timeout, PROCESS_PO_HEALTHZ_TIMEOUT / scale),
        )
    return settings


def node_kwargs(config: SimConfig) -> dict[str, Any]:
    """Runtime settings of in-process/served nodes: message resends follow ``--time-scale`` too."""
    if config.time_scale >= 1.0:
        return {}
    return {"timeouts": Timeouts(attempt=max(0.25, DEFAULT_ATTEMPT_TIMEOUT * config.time_scale))}


def timeout_reason(config: SimConfig) -> str:
    """Why a run was stopped at its deadline (the outcome compares it to tell a timeout)."""
    return f"the federation did not finish within {config.timeout:g} s (--timeout)"

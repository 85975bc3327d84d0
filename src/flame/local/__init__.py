"""Local runs: a whole federation on this machine, for tests, notebooks, ``flame sim`` and ``flame demo``.

:func:`simulate` (also ``flame.simulate``) and its async twin :func:`simulate_async` are the one entry
point; ``flame sim`` (:mod:`flame.local.command`) adds a display and the report files. The package
imports the emulated node stack (:mod:`flame.sim`); the production path (``flame.run`` on a node,
``flame.star.StarModel``) never imports it.

========================= ===========================================================================
module                    what it holds
========================= ===========================================================================
``loading``               running an analysis file up to its ``flame.run(...)`` call
``splitting``             one data file split across the nodes
``config``                the options of one run (:class:`SimConfig`), its bounds and exit codes
``waiting``               bounded waits: stopping tasks, the watchdog of a failed federation
``inprocess``             in-process and served mode: every node on one event loop
``processes``             process mode: every node as ``python ANALYSIS.py``; figures from log lines
``execution``             one run on a fresh emulated stack, from set-up to its outcome
``report``                the outcome, the JSON run report and the printed summary
``api``                   the public API: :func:`simulate`, :func:`simulate_async`, :class:`SimulationResult`
``command``               the ``flame sim`` handler
``star_runs``             PrivateAIM-style code on every node (scripts under ``flame sim``, the tester)
``star_tester``           PrivateAIM's ``StarModelTester``
========================= ===========================================================================
"""

from __future__ import annotations

from flame.local.api import SimulationResult, simulate, simulate_async
from flame.local.config import SimConfig, SimUsageError
from flame.local.loading import AnalysisFileError, LoadedAnalysis, load_analysis

__all__ = [
    "AnalysisFileError",
    "LoadedAnalysis",
    "SimConfig",
    "SimUsageError",
    "SimulationResult",
    "load_analysis",
    "simulate",
    "simulate_async",
]

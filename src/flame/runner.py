"""``flame.run``: the entry point of an analysis file, on a FLAME node and under ``flame sim``.

On a node (``python analysis.py``, or ``flame run analysis.py``) it reads the container's environment,
starts the node runtime (its REST API on port 8000), learns from ``participants/self`` whether this
node aggregates, runs the matching side, and returns once the node has finished. Under ``flame sim``
the same call hands the analyzer and the aggregator to the local federation instead.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flame.errors import ConfigurationError, FlameError
from flame.federated import Aggregator, Analysis, Analyzer, FederationOptions, run_node
from flame.hooks import ContextHook
from flame.node.loop import LoopThread
from flame.node.runtime import AsyncNode

log = logging.getLogger(__name__)

#: Set by ``flame sim``: receives what ``flame.run`` was given instead of running on a node.
RunHook = Callable[[Analysis], Any]
_hook: ContextHook[RunHook] = ContextHook(
    "flame_run_hook", "What flame.run hands the analysis to instead of running it on a node (a local run)."
)


def run(
    analyzer: Analyzer | type[Analyzer] | Analysis,
    aggregator: Aggregator | type[Aggregator] | None = None,
    options: FederationOptions | None = None,
    *,
    role: str | None = None,
    **option_values: Any,
) -> Any:
    """Run this analysis on the node it was started on; returns the final result (or aggregate).

    The first argument is an :class:`Analyzer` (then ``aggregator`` is required) or a ready
    :class:`~flame.federated.analysis.Analysis` (as :mod:`flame.stats` returns), whose options the
    keyword options change. ``options`` or keyword options (``max_rounds=``, ``quorum=``,
    ``round_deadline=``, ``output_type=``, ``filename=``, ``aggregator_analyses=``, ...; see
    :class:`FederationOptions`). ``role`` overrides the role from ``participants/self`` (tests only).
    Raises a :class:`~flame.errors.FlameError` when the analysis fails (the node's status is then
    ``failed``).
    """
    analysis = as_analysis(analyzer, aggregator, options, **option_values)
    hook = _hook.get()
    if hook is not None:
        return hook(analysis)
    analyzer, aggregator, opts = analysis.analyzer, analysis.aggregator, analysis.options
    _configure_logging()
    loop = LoopThread("flame-node")
    try:
        return loop.run(
            _run_on_node(_instance(analyzer), _instance(aggregator), opts, role), None, "the analysis"
        )
    finally:
        loop.stop()


async def _run_on_node(
    analyzer: Analyzer, aggregator: Aggregator, options: FederationOptions, role: str | None
) -> Any:
    node = AsyncNode()
    if role is not None:
        node.config = node.config.with_overrides(node_role=role)
    await node.start()
    try:
        return await run_node(node, analyzer, aggregator, options)
    finally:
        await node.stop()


def _instance(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


def as_analysis(
    analyzer: Analyzer | type[Analyzer] | Analysis,
    aggregator: Aggregator | type[Aggregator] | None = None,
    options: FederationOptions | None = None,
    **option_values: Any,
) -> Analysis:
    """One :class:`Analysis` from what ``flame.run`` (or ``flame.simulate``) was given."""
    if isinstance(analyzer, Analysis):
        if aggregator is not None:
            raise ConfigurationError(
                "aggregator", "given together with a ready Analysis", "pass the Analysis alone"
            )
        analysis = analyzer if options is None else replace(analyzer, options=options)
        return analysis.with_options(**option_values) if option_values else analysis
    if aggregator is None:
        raise ConfigurationError(
            "aggregator", "missing", "flame.run(MyAnalyzer(), MyAggregator()) or a ready flame.Analysis"
        )
    opts = options or FederationOptions()
    if option_values:
        opts = opts.with_changes(**option_values)
    return Analysis(analyzer, aggregator, opts)


def _configure_logging() -> None:
    """Show the ``flame`` logger's INFO lines on stderr, unless the application configured logging.

    Only the ``flame`` logger is touched, never the root logger: an application's own logging set-up
    (or a notebook's) stays as it is. Nothing changes when the root or ``flame`` logger has handlers.
    """
    logger = logging.getLogger("flame")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def set_run_hook(hook: RunHook | None) -> contextvars.Token[RunHook | None]:
    """Make ``flame.run`` hand its arguments to ``hook`` (used by ``flame sim``); returns a reset token."""
    return _hook.set(hook)


def reset_run_hook(token: contextvars.Token[RunHook | None]) -> None:
    """Undo :func:`set_run_hook`."""
    _hook.reset(token)


__all__ = ["FlameError", "as_analysis", "reset_run_hook", "run", "set_run_hook"]

"""PrivateAIM's ``StarModelTester`` on the emulated FLAME node stack, through :func:`flame.simulate`.

One analyzer per data split and one aggregator, the splits handed to the analyzers verbatim; every node
still talks through the emulated node stack (:mod:`flame.local.star_runs`). ``flame.star`` re-exports
these names on first use: the emulator is imported only when one of them runs, never by the production
path (``StarModel`` on a FLAME node).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from flame import codec
from flame.errors import FederationError, FlameError
from flame.local.star_runs import (
    DEFAULT_RUN_TIMEOUT,
    NodeOutcome,
    StarJob,
    StarRun,
    run_star_nodes,
    run_star_script,
)
from flame.star.aggregator import StarAggregator
from flame.star.analyzer import StarAnalyzer
from flame.star.model import StarLocalDPModel, StarModel


class StarModelTester:
    """PrivateAIM's ``StarModelTester``: one analyzer per data split and one aggregator, run locally.

    Every node runs through the emulated node stack (messages, acknowledgements, storage, the final
    upload), while each analyzer receives its split **verbatim** as ``data``. ``node_roles`` optionally
    gives each split a role (``'default'`` or, for at most one split, ``'aggregator'``: that node
    aggregates, and no extra aggregator is added). With ``epsilon`` and ``sensitivity`` the local-DP
    model runs (the storage service adds the noise). The final result, as the hub received it, is
    written to ``result_filepath`` (files of ``multiple_results`` get ``_1``, ``_2``, ... before the
    extension) or printed. Returns when done; raises the first node's error if the analysis failed.

    After the run: ``latest_result`` (the aggregator's final result object), ``num_iterations``,
    ``converged``, ``final_results`` (file name -> bytes at the hub) and ``run``
    (:class:`StarRun`).
    """

    #: Bound of the whole local run (seconds).
    timeout: float = DEFAULT_RUN_TIMEOUT
    latest_result: Any = None
    num_iterations: int = 0
    converged: bool = False

    def __init__(
        self,
        data_splits: list[Any],
        analyzer: type[StarAnalyzer],
        aggregator: type[StarAggregator],
        data_type: Literal["fhir", "s3"],
        node_roles: list[str] | None = None,
        query: str | list[str] | None = None,
        simple_analysis: bool = True,
        output_type: Literal["str", "bytes", "pickle"] = "str",
        multiple_results: bool = False,
        analyzer_kwargs: dict[str, Any] | None = None,
        aggregator_kwargs: dict[str, Any] | None = None,
        epsilon: float | None = None,
        sensitivity: float | None = None,
        result_filepath: str | list[str] | None = None,
    ) -> None:
        from flame.sim.node import NodeSpec
        from flame.sim.settings import StackSettings

        if data_type not in ("fhir", "s3"):
            raise ValueError(f"data_type must be 'fhir' or 's3', got {data_type!r}")
        if not isinstance(data_splits, list | tuple) or not data_splits:
            raise ValueError("data_splits must be a non-empty list: one split per analysis node")
        roles = _roles(len(data_splits), node_roles)
        specs: list[NodeSpec] = []
        splits: dict[str, Any] = {}
        aggregator_name = "aggregator"
        for index, (split, role) in enumerate(zip(data_splits, roles, strict=True), start=1):
            name = f"node-{index}"
            if role == "aggregator":
                aggregator_name = name
            specs.append(NodeSpec(name, role="aggregator" if role == "aggregator" else "default"))
            splits[name] = split
        if "aggregator" not in roles:
            specs.insert(0, NodeSpec(aggregator_name, role="aggregator"))
        local_dp = epsilon is not None and sensitivity is not None

        def target(name: str) -> StarModel:
            test_kwargs: dict[str, Any] = {"node_name": name}
            if name in splits:
                test_kwargs[f"{data_type}_data"] = splits[name]
            # StarModel's positional parameters, then StarLocalDPModel's two more
            common = (
                analyzer,
                aggregator,
                data_type,
                query,
                simple_analysis,
                output_type,
                multiple_results,
                analyzer_kwargs,
                aggregator_kwargs,
            )
            if local_dp:
                return StarLocalDPModel(
                    *common, epsilon, sensitivity, test_mode=True, test_kwargs=test_kwargs
                )
            return StarModel(*common, test_mode=True, test_kwargs=test_kwargs)

        from flame.local.api import simulate

        job = StarJob(target, specs, StackSettings.fast(po_enabled=False))
        outcome = simulate(job, timeout=self.timeout)
        star_run: StarRun | None = outcome.outcome.star_run
        if star_run is None:  # the run was abandoned before its nodes reported
            raise FederationError("the local run did not finish: " + "; ".join(outcome.errors))
        self.run = star_run.check()
        self.final_results = self.run.final_results
        model = self.run.outcomes[aggregator_name].result
        node = model.node if isinstance(model, StarModel) else None
        if node is not None:
            self.latest_result = node.latest_result
            self.num_iterations = node.num_iterations
        self.converged = True
        self.result = self._hub_result(output_type)
        self.write_result(self.result, output_type, result_filepath, multiple_results)

    def _hub_result(self, output_type: str) -> Any:
        """The final result as the analyst downloads it (one value, or a list for several files)."""
        values: list[Any] = []
        for data in self.final_results.values():
            if output_type == "str":
                values.append(data.decode("utf-8", errors="replace"))
            elif output_type == "pickle":
                try:
                    values.append(codec.decode(data, allow_pickle=True))
                except FlameError:
                    values.append(self.latest_result)
            else:
                values.append(data)
        return values[0] if len(values) == 1 else values

    def write_result(
        self,
        result: Any,
        output_type: str,
        result_filepath: str | list[str] | None = None,
        multiple_results: bool = False,
    ) -> None:
        """Print the result, or write the hub's files to ``result_filepath``, as PrivateAIM's tester does.

        With ``multiple_results`` and several results, each gets its own line (``Final result_1: ...``)
        or file: ``result_filepath`` is then a list with one path per result, or one path that gets
        ``_1``, ``_2``, ... before its extension. A list of paths that does not match the number of
        results, or ``multiple_results`` with a single result, is warned about and written as one.
        """
        several = False
        if multiple_results:
            if not isinstance(result, list | tuple):
                print(
                    f"Warning: multiple_results=True, but the result is a {type(result).__name__}, not a "
                    "list or tuple; it is written as one result.",
                    flush=True,
                )
            elif isinstance(result_filepath, list) and len(result_filepath) != len(result):
                print(
                    f"Warning: {len(result_filepath)} result_filepath(s) for {len(result)} results; "
                    "multiple_results is ignored.",
                    flush=True,
                )
            else:
                several = True
        items = list(result) if several else [result]
        if result_filepath is None:
            for index, item in enumerate(items, 1):
                print(f"Final result_{index}: {item}" if several else f"Final result: {item}", flush=True)
            return
        if isinstance(result_filepath, list):
            paths = [Path(path) for path in result_filepath] if several else [Path(result_filepath[0])]
        elif several:
            paths = [_numbered(result_filepath, index) for index in range(1, len(items) + 1)]
        else:
            paths = [Path(result_filepath)]
        files = list(self.final_results.values())
        for index, (path, item) in enumerate(zip(paths, items, strict=False), 1):
            if len(files) == len(items):
                content = files[index - 1]  # the hub's file, as the analyst downloads it
            elif isinstance(item, bytes | bytearray):
                content = bytes(item)
            else:  # several files written as one: the aggregator's result object, as text
                whole = self.latest_result if self.latest_result is not None else item
                content = str(whole).encode("utf-8")
            path.write_bytes(content)
            label = f"Final result_{index}" if several else "Final result"
            print(f"{label} written to {path}", flush=True)


def _numbered(path: str, index: int) -> Path:
    """``result.txt`` -> ``result_1.txt`` (``result`` -> ``result_1``): one file per result."""
    stem, dot, extension = path.rpartition(".")
    if not dot or "/" in extension:
        return Path(f"{path}_{index}")
    return Path(f"{stem}_{index}.{extension}")


def _roles(count: int, node_roles: list[str] | None) -> list[str]:
    if node_roles is None:
        return ["default"] * count
    roles = list(node_roles)
    if len(roles) != count:
        raise ValueError(
            f"node_roles has {len(roles)} entries for {count} data splits; give one role per split"
        )
    unknown = [r for r in roles if r not in ("default", "aggregator")]
    if unknown:
        raise ValueError(f"node_roles: unknown role(s) {unknown}; use 'default' or 'aggregator'")
    if roles.count("aggregator") > 1:
        raise ValueError("node_roles: at most one split can be the aggregator")
    if roles.count("default") == 0:
        raise ValueError("node_roles: at least one split must be an analysis node ('default')")
    return roles


__all__ = ["NodeOutcome", "StarJob", "StarModelTester", "StarRun", "run_star_nodes", "run_star_script"]

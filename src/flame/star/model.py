"""``StarModel`` and ``StarLocalDPModel``: PrivateAIM's star pattern, run by its constructor.

One aggregator, N analysis nodes. The analyzers ready-check the aggregator, fetch their data
(``get_fhir_data(query)`` or ``get_s3_data(query)``) and loop: analyse, send the result to the
aggregator, and in an iterative analysis await the aggregate. The aggregator ready-checks the analyzers
and loops: await every analyzer's result, aggregate; when converged submit the final result and send
``analysis_finished``, else send the aggregate back.

Unlike PrivateAIM's, the constructor returns once the node has finished (never ``while True: pass``):
an analyzer when the aggregator announced the end of the analysis (or its final status arrived by
partner status sync), the aggregator after ``analysis_finished``. Every wait is bounded (see
:class:`~flame.star.core_sdk.FlameCoreSDK`); failures raise, and the node ends ``failed``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from flame.errors import FederationError, FlameError
from flame.star.aggregator import StarAggregator
from flame.star.analyzer import StarAnalyzer
from flame.star.core_sdk import FlameCoreSDK, _node_factory
from flame.star.node_base import StarRole


class _ERROR_MESSAGES(Enum):
    IS_ANALYZER = "Node is configured as analyzer. Unable to execute command associated to aggregator."
    IS_AGGREGATOR = "Node is configured as aggregator. Unable to execute command associated to analyzer."
    IS_INCORRECT_CLASS = (
        "The object/class given is incorrect, e.g. is not correctly implementing/inheriting the "
        "intended template class."
    )


class StarContactError(FederationError, BrokenPipeError):
    """A partner the star pattern needs did not answer (PrivateAIM's SDK raises ``BrokenPipeError``)."""


class StarModel:
    """Runs a star analysis on this node; returns when the node has finished.

    ``analyzer``/``aggregator`` are subclasses of :class:`StarAnalyzer`/:class:`StarAggregator`,
    instantiated with ``flame`` and ``analyzer_kwargs``/``aggregator_kwargs``. ``query`` (a string or a
    list) selects the data: FHIR queries, or S3 keys (none: every object). ``test_mode``/``test_kwargs``
    are how :class:`~flame.local.star_tester.StarModelTester` drives one node of its local federation; with
    ``test_kwargs={"fhir_data": ...}`` (or ``"s3_data"``) the data is handed to the analyzer verbatim.
    """

    flame: FlameCoreSDK
    data: Any = None
    test_mode: bool = False
    #: the analyzer or aggregator this node ran (for testers and inspection)
    node: StarRole | None = None

    def __init__(
        self,
        analyzer: type[StarAnalyzer],
        aggregator: type[StarAggregator],
        data_type: Literal["fhir", "s3"] = "fhir",
        query: str | list[str] | None = None,
        simple_analysis: bool = True,
        output_type: Literal["str", "bytes", "pickle"] = "str",
        multiple_results: bool = False,
        analyzer_kwargs: dict[str, Any] | None = None,
        aggregator_kwargs: dict[str, Any] | None = None,
        test_mode: bool = False,
        test_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._run(
            analyzer,
            aggregator,
            data_type,
            query,
            simple_analysis,
            output_type,
            multiple_results,
            analyzer_kwargs,
            aggregator_kwargs,
            test_mode,
            test_kwargs,
        )

    # -- driver ---------------------------------------------------------------------------------------

    def _run(
        self,
        analyzer: type[StarAnalyzer],
        aggregator: type[StarAggregator],
        data_type: str,
        query: str | list[str] | None,
        simple_analysis: bool,
        output_type: Literal["str", "bytes", "pickle"],
        multiple_results: bool,
        analyzer_kwargs: dict[str, Any] | None,
        aggregator_kwargs: dict[str, Any] | None,
        test_mode: bool,
        test_kwargs: dict[str, Any] | None,
    ) -> None:
        if data_type not in ("fhir", "s3"):
            raise ValueError(f"data_type must be 'fhir' or 's3', got {data_type!r}")
        self.test_mode = test_mode
        self.test_kwargs = dict(test_kwargs or {}) if test_mode else None
        if test_mode and _node_factory.get() is None:
            raise FlameError(
                "StarModel(test_mode=True) runs one node of a local federation; use StarModelTester(...) "
                "to test an analysis locally"
            )
        self.flame = FlameCoreSDK()
        try:
            if self.test_kwargs is not None and f"{data_type}_data" in self.test_kwargs:
                self.flame._set_data_override(data_type, self.test_kwargs[f"{data_type}_data"])
            if self._is_analyzer():
                self.flame.flame_log("Analyzer started", log_type="info")
                self._start_analyzer(analyzer, data_type, query, simple_analysis, analyzer_kwargs)
            elif self._is_aggregator():
                self.flame.flame_log("Aggregator started", log_type="info")
                self._start_aggregator(
                    aggregator, simple_analysis, output_type, multiple_results, aggregator_kwargs
                )
            else:
                raise StarContactError(
                    f"Has to be either analyzer or aggregator (role {self.flame.get_role()!r})"
                )
            self.flame.flame_log("Analysis finished!", log_type="info")
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self.flame._close()

    def _fail(self, exc: BaseException) -> None:
        try:
            self.flame.flame_log(f"Analysis failed: {type(exc).__name__}: {exc}", log_type="error")
            self.flame._finish("failed")
        except Exception:  # the runtime may be gone already; the original error is what matters
            pass

    def _is_aggregator(self) -> bool:
        return self.flame.get_role() == "aggregator"

    def _is_analyzer(self) -> bool:
        return self.flame.get_role() == "default"

    # -- aggregator -----------------------------------------------------------------------------------

    def _local_dp(self, aggregator: StarAggregator) -> dict[str, float] | None:
        """Local DP parameters for the final result (StarLocalDPModel); None here."""
        return None

    def _start_aggregator(
        self,
        aggregator: type[StarAggregator],
        simple_analysis: bool,
        output_type: Literal["str", "bytes", "pickle"],
        multiple_results: bool,
        aggregator_kwargs: dict[str, Any] | None,
    ) -> None:
        if not (isinstance(aggregator, type) and issubclass(aggregator, StarAggregator)):
            raise TypeError(_ERROR_MESSAGES.IS_INCORRECT_CLASS.value)
        node = aggregator(flame=self.flame, **(aggregator_kwargs or {}))
        self.node = node
        self._wait_until_partners_ready()
        analyzers = node.partner_node_ids
        while not node.finished:
            self.flame.flame_log("Awaiting intermediate results...", log_type="info")
            results = self.flame.await_intermediate_data(analyzers)
            agg_res, converged = node.aggregate(list(results.values()), simple_analysis)
            if converged:
                local_dp = self._local_dp(node)
                self.flame.flame_log("Submitting final results...", log_type="info", halt_submission=True)
                response = self.flame.submit_final_result(
                    agg_res, output_type, multiple_results, local_dp=local_dp
                )
                self.flame.flame_log(f"success (response={response})", log_type="info", append=True)
                self.flame.analysis_finished()
                node.node_finished()
            else:
                self.flame.flame_log("Sending aggregated results...", log_type="info")
                _acked, missing = self.flame.send_intermediate_data(analyzers, agg_res)
                if missing:
                    raise StarContactError(
                        f"the aggregate was not acknowledged by {', '.join(missing)}", missing
                    )

    # -- analyzer -------------------------------------------------------------------------------------

    def _start_analyzer(
        self,
        analyzer: type[StarAnalyzer],
        data_type: str,
        query: str | list[str] | None,
        simple_analysis: bool,
        analyzer_kwargs: dict[str, Any] | None,
    ) -> None:
        if not (isinstance(analyzer, type) and issubclass(analyzer, StarAnalyzer)):
            raise TypeError(_ERROR_MESSAGES.IS_INCORRECT_CLASS.value)
        node = analyzer(flame=self.flame, **(analyzer_kwargs or {}))
        self.node = node
        aggregator_id = self.flame.get_aggregator_id()
        if aggregator_id is None:
            raise StarContactError("this analysis has no aggregator among the participants")
        self._wait_until_partners_ready()
        self._get_data(data_type, query)
        self.flame.flame_log(f"Data extracted: {str(self.data)[:100]}", log_type="info")
        while not node.finished:
            result = node.analyze(data=self.data)
            self.flame.flame_log("Sending intermediate results...", log_type="info")
            _acked, missing = self.flame.send_intermediate_data([aggregator_id], result)
            if missing:
                raise StarContactError("the aggregator did not acknowledge the intermediate results", missing)
            if simple_analysis:
                node.node_finished()
                continue
            ended, aggregate = self.flame._await_data_or_end(aggregator_id)
            if ended:
                node.node_finished()
            else:
                node.latest_result = aggregate
                if self.flame.config.finished:
                    node.node_finished()
        if not self.flame._await_end():
            self.flame.flame_log(
                "the aggregator did not announce the end of the analysis in time; ending this node",
                log_type="warn",
            )
        self.flame._finish("executed")

    # -- shared ---------------------------------------------------------------------------------------

    def _wait_until_partners_ready(self) -> None:
        if self._is_analyzer():
            aggregator_id = self.flame.get_aggregator_id()
            assert aggregator_id is not None
            self.flame.flame_log("Awaiting contact with aggregator node...", log_type="info")
            ready = self.flame.ready_check([aggregator_id])
            if not ready.get(aggregator_id):
                raise StarContactError("Could not contact aggregator", [aggregator_id])
            self.flame.flame_log("Awaiting contact with aggregator node...success", log_type="info")
        else:
            analyzer_ids = self.flame.get_participant_ids()
            self.flame.flame_log("Awaiting contact with analyzer nodes...", log_type="info")
            ready = self.flame.ready_check(analyzer_ids)
            missing = [node for node, ok in ready.items() if not ok]
            if missing:
                raise StarContactError("Could not contact all analyzers", missing)
            self.flame.flame_log("Awaiting contact with analyzer nodes...success", log_type="info")

    def _get_data(self, data_type: str, query: str | list[str] | None = None) -> None:
        queries = [query] if isinstance(query, str) else query
        if data_type == "fhir":
            self.data = self.flame.get_fhir_data(queries)
        else:
            self.data = self.flame.get_s3_data(queries)


class StarLocalDPModel(StarModel):
    """:class:`StarModel` whose final result goes through local differential privacy.

    When the aggregator's ``delta_criteria`` is true and both ``epsilon`` and ``sensitivity`` are set,
    the final result (one finite number) is submitted to ``/final/localdp``, where the storage service
    adds Laplace noise of scale ``sensitivity / epsilon``.
    """

    epsilon: float | None
    sensitivity: float | None

    def __init__(
        self,
        analyzer: type[StarAnalyzer],
        aggregator: type[StarAggregator],
        data_type: Literal["fhir", "s3"] = "fhir",
        query: str | list[str] | None = None,
        simple_analysis: bool = True,
        output_type: Literal["str", "bytes", "pickle"] = "str",
        multiple_results: bool = False,
        analyzer_kwargs: dict[str, Any] | None = None,
        aggregator_kwargs: dict[str, Any] | None = None,
        epsilon: float | None = None,
        sensitivity: float | None = None,
        test_mode: bool = False,
        test_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.sensitivity = sensitivity
        super().__init__(
            analyzer,
            aggregator,
            data_type,
            query,
            simple_analysis,
            output_type,
            multiple_results,
            analyzer_kwargs,
            aggregator_kwargs,
            test_mode,
            test_kwargs,
        )

    def _local_dp(self, aggregator: StarAggregator) -> dict[str, float] | None:
        if aggregator.delta_criteria and self.epsilon is not None and self.sensitivity is not None:
            self.flame.flame_log(
                f"applying local DP (epsilon={self.epsilon}, sensitivity={self.sensitivity})", log_type="info"
            )
            return {"epsilon": self.epsilon, "sensitivity": self.sensitivity}
        return None


__all__ = ["StarContactError", "StarLocalDPModel", "StarModel"]

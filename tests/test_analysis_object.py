"""flame.Analysis: a ready analysis that flame.run and the local federation take as it is."""

from __future__ import annotations

from typing import Any

import pytest

import flame
from flame.errors import ConfigurationError
from flame.runner import as_analysis, reset_run_hook, set_run_hook


class Count(flame.Analyzer):
    def analyze(self, data: Any, aggregate: Any, round: int) -> Any:
        return 1


class Sum(flame.Aggregator):
    def aggregate(self, updates: Any, round: int, previous: Any) -> Any:
        return sum(updates.values())


def test_run_hands_a_ready_analysis_over_with_keyword_options_applied() -> None:
    seen: list[flame.Analysis] = []
    token = set_run_hook(lambda analysis: seen.append(analysis) or "handed")
    try:
        ready = flame.Analysis(Count(), Sum(), flame.FederationOptions(max_rounds=3), name="count")
        assert flame.run(ready, quorum=2) == "handed"
        assert flame.run(Count, Sum, max_rounds=2) == "handed"
    finally:
        reset_run_hook(token)
    assert seen[0].name == "count"
    assert (seen[0].options.max_rounds, seen[0].options.quorum) == (3, 2)
    assert ready.options.quorum is None  # the ready analysis itself is unchanged
    assert seen[1].analyzer is Count and seen[1].options.max_rounds == 2


def test_wrong_arguments_say_what_was_expected() -> None:
    with pytest.raises(ConfigurationError, match=r"analyzer: must be a flame\.Analyzer .*not int"):
        as_analysis(3, Sum())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"aggregator: must be a flame\.Aggregator .*not Count"):
        as_analysis(Count(), Count)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="aggregator: missing"):
        as_analysis(Count())
    with pytest.raises(ConfigurationError, match="together with a ready Analysis"):
        as_analysis(flame.Analysis(Count(), Sum()), Sum())  # type: ignore[arg-type]


def test_interpret_defaults_to_the_final_result_unchanged() -> None:
    final = {"n": 3}
    assert flame.Analysis(Count(), Sum()).interpret(final) is final

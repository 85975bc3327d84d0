"""Fault plans in text form: what parses, and a clear typed error naming the bad part for the rest."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.cli import main
from flame.errors import ConfigurationError
from flame.sim.faults import (
    DeliveryFault,
    FaultPlan,
    FaultSpecError,
    NodeOffline,
    NodeRestart,
    ServiceOutage,
    TokenExpiry,
    parse_faults,
)

NODES = ("aggregator", "node-1", "node-2", "node-3")


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("drop=0.2", DeliveryFault("drop", 0.2)),
        ("drop=0.2@node-1>aggregator", DeliveryFault("drop", 0.2, sender="node-1", receiver="aggregator")),
        ("drop=1@node-1>", DeliveryFault("drop", 1.0, sender="node-1")),
        ("drop=0@>node-2", DeliveryFault("drop", 0.0, receiver="node-2")),
        ("duplicate=0.1", DeliveryFault("duplicate", 0.1)),
        ("reorder=0.5", DeliveryFault("reorder", 0.5)),
        ("reorder=0.5:0.2", DeliveryFault("reorder", 0.5, seconds=0.2)),
        ("delay=0.3:0.05", DeliveryFault("delay", 0.3, seconds=0.05)),
        ("outage=message-broker@2-4", ServiceOutage("message-broker", 2.0, 4.0)),
        ("outage=storage@2-4@node-1", ServiceOutage("storage", 2.0, 4.0, node="node-1")),
        ("expire=node-1@3", TokenExpiry("node-1", 3.0)),
        ("restart=node-2@0.5", NodeRestart("node-2", 0.5)),
        ("restart=aggregator@0", NodeRestart("aggregator", 0.0)),
        ("offline=node-1@2-6", NodeOffline("node-1", 2.0, 6.0)),
        ("offline=node-1@2-", NodeOffline("node-1", 2.0, math.inf)),
        ("offline=node-1@2", NodeOffline("node-1", 2.0, math.inf)),
        ("outage=message-broker@1", ServiceOutage("message-broker", 1.0, math.inf)),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_documented_forms_parse(spec: str, rule: object) -> None:
    plan = parse_faults(spec)
    assert plan.rules == [rule]
    plan.validate(NODES)


def test_several_rules_and_the_help_example() -> None:
    plan = parse_faults(" drop=0.2 ; restart=node-2@0.5;; duplicate=0.1;reorder=0.3 ")
    assert [type(rule).__name__ for rule in plan.rules] == [
        "DeliveryFault",
        "NodeRestart",
        "DeliveryFault",
        "DeliveryFault",
    ]
    assert parse_faults("").rules == []


@pytest.mark.parametrize(
    ("spec", "bad_part"),
    [
        # accepted silently before
        ("offline=node-1@5-2", "does not start before it ends"),
        ("delay=0.5:-3", "the seconds '-3' is negative"),
        ("delay=1:inf", "the seconds 'inf' is not finite"),
        ("restart=aggregator@nan", "the time 'nan' is not finite"),
        ("drop=0.1@a>b>c", "more than one '>'"),
        # more
        ("drop=1.5", "above 1"),
        ("drop=-0.1", "negative"),
        ("drop=nan", "not finite"),
        ("drop=lots", "'lots' is not a number"),
        ("drop=", "needs a value"),
        ("drop", "needs a value"),
        ("drop=0.1@", "names no node"),
        ("drop=0.1@>", "names no node"),
        ("drop=0.1@a@b", "more than one '@'"),
        ("drop=0.1:5", "takes no ':SECONDS'"),
        ("delay=0.5:0", "above 0"),
        ("explode=1", "unknown fault 'explode'"),
        ("outage=dns@1-2", "unknown service 'dns'"),
        ("outage=storage@4-2", "does not start before it ends"),
        ("outage=storage@2-2", "does not start before it ends"),
        ("outage=storage", "a service, a window"),
        ("outage=storage@1-inf", "not finite"),
        ("outage=storage@1-2@node 1", "not a node name"),
        ("restart=node-1", "NODE@SECONDS"),
        ("restart=@1", "'' is not a node name"),
        ("restart=node-1@-1", "negative"),
        ("restart=node-1@1@2", "NODE@SECONDS"),
        ("expire=node-1@soon", "is not a number"),
        ("offline=node-1@5@6", "a node and a window"),
        ("offline=node-1@-1-5", "is not a number"),
        ("offline=node-1@1e400-5", "not finite"),
    ],
)
def test_bad_rules_are_typed_errors_naming_the_part(spec: str, bad_part: str) -> None:
    with pytest.raises(FaultSpecError) as caught:
        parse_faults(f"drop=0.1;{spec}")
    error = caught.value
    assert isinstance(error, ConfigurationError) and isinstance(error, ValueError)
    assert error.rule == spec.strip()
    assert bad_part in str(error)
    assert str(error).startswith(f"cannot read fault rule {spec.strip()!r}: ")
    assert "Expected" in str(error)  # what a valid one looks like


@pytest.mark.parametrize(
    ("spec", "node"),
    [
        ("restart=node-9@1", "node-9"),
        ("expire=nobody@1", "nobody"),
        ("offline=node-4@1-2", "node-4"),
        ("outage=storage@1-2@node-7", "node-7"),
        ("drop=0.1@node-1>hub", "hub"),
        ("drop=0.1@ghost>", "ghost"),
    ],
)
def test_rules_for_nodes_the_run_lacks_are_refused(spec: str, node: str) -> None:
    plan = parse_faults(spec)  # the parser cannot know the run's nodes
    with pytest.raises(FaultSpecError) as caught:
        plan.validate(NODES)
    assert f"there is no node {node!r}" in str(caught.value)
    assert spec in str(caught.value) and "node-1, node-2, node-3" in str(caught.value)


def test_validate_names_a_rule_added_in_code() -> None:
    plan = FaultPlan([NodeRestart("node-5", at=1.0)])
    with pytest.raises(FaultSpecError, match="node-5"):
        plan.validate(NODES)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet="drop=@>:-;.0123456789infaoegstulckrxyiv ", max_size=40),
        st.builds(
            lambda kind, rest: f"{kind}={rest}",
            st.sampled_from(
                ["drop", "duplicate", "reorder", "delay", "outage", "expire", "restart", "offline"]
            ),
            st.text(alphabet="@>:-.0123456789einfa node-1storage", max_size=25),
        ),
    )
)
def test_any_text_parses_or_raises_the_typed_error(spec: str) -> None:
    try:
        plan = parse_faults(spec)
    except FaultSpecError:
        return
    try:
        plan.validate(NODES)
    except FaultSpecError:
        return
    for rule in plan.rules:  # what parses is usable as written
        if isinstance(rule, DeliveryFault):
            assert 0.0 <= rule.probability <= 1.0 and math.isfinite(rule.seconds) and rule.seconds > 0
        elif isinstance(rule, (ServiceOutage, NodeOffline)):
            assert 0.0 <= rule.start < rule.end
        else:
            assert math.isfinite(rule.at) and rule.at >= 0


ANALYSIS = """
import flame

class A(flame.Analyzer):
    def analyze(self, data, aggregate, round):
        return 1

class G(flame.Aggregator):
    def aggregate(self, updates, round, previous):
        return sum(updates.values())

if __name__ == "__main__":
    flame.run(A(), G())
"""


@pytest.mark.parametrize(
    "spec",
    [
        "restart=node-9@1",
        "expire=nobody@1",
        "offline=node-1@5-2",
        "delay=0.5:-3",
        "delay=1:inf",
        "restart=aggregator@nan",
        "drop=0.1@a>b>c",
    ],
)
def test_flame_sim_exits_2_with_one_line_naming_the_rule(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = tmp_path / "analysis.py"
    analysis.write_text(textwrap.dedent(ANALYSIS), encoding="utf-8")
    report = tmp_path / "report.json"
    code = main(
        ["sim", str(analysis), "--nodes", "2", "--faults", spec, "--no-live", "--report", str(report)]
    )
    out, err = capsys.readouterr()
    assert code == 2
    message = [line for line in (out + err).splitlines() if line.strip()]
    assert len(message) == 1, message
    assert message[0].startswith("flame sim: ") and f"fault rule {spec!r}" in message[0]
    assert "Task exception was never retrieved" not in out + err
    assert not report.exists()  # nothing started

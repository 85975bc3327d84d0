"""The PrivateAIM-compatible API: its surface, and FlameCoreSDK's behaviour on the emulated stack."""

from __future__ import annotations

import inspect
import io
import pickle
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import flamesdk
from flame import codec
from flame.errors import ConfigurationError, FlameError, FlameTimeoutError, PickleRefusedError
from flame.node.inbox import Message
from flame.node.runtime import Timeouts
from flame.sim import FlameStack, StackSettings
from flame.star import (
    FlameCoreSDK,
    Node,
    StarAggregator,
    StarAnalyzer,
    StarLocalDPModel,
    StarModel,
    StarModelTester,
    run_star_nodes,
)
from flame.star.fhir_csv import fhir_to_csv, search
from flame.star.payload import PAYLOAD_ENV, PayloadPolicy, payload_mode

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
REQUIRED = inspect.Parameter.empty
#: The parameter's name is not part of the API: only its position and default are checked.
UNNAMED = "<unnamed>"

# -- the surface, transcribed from PrivateAIM's SDK API --------------------------------------------------

STATUS_SYNC = ("executed", "stopped", "failed")
CORE_SDK: dict[str, list[tuple[str, Any]]] = {
    "__init__": [
        ("aggregator_requires_data", False),
        ("stream_log_level", 20),
        ("silent", False),
        ("status_sync", STATUS_SYNC),
    ],
    # general
    "get_aggregator_id": [],
    "get_participants": [],
    "get_participant_ids": [],
    "get_analysis_id": [],
    "get_project_id": [],
    "get_id": [],
    "get_role": [],
    "analysis_finished": [],
    "ready_check": [("nodes", "all"), ("attempt_interval", 30), ("timeout", None)],
    "flame_log": [
        ("msg", REQUIRED),
        ("sep", ""),
        ("end", ""),
        ("log_type", "info"),
        ("append", False),
        ("halt_submission", False),
    ],
    "get_progress": [],
    "set_progress": [(UNNAMED, REQUIRED)],
    "fhir_to_csv": [
        ("fhir_data", REQUIRED),
        ("col_key_seq", REQUIRED),
        ("value_key_seq", REQUIRED),
        ("input_resource", REQUIRED),
        ("row_key_seq", None),
        ("row_id_filters", None),
        ("col_id_filters", None),
        ("row_col_name", ""),
        ("separator", ","),
        ("output_type", "file"),
    ],
    # messaging
    "send_message": [
        ("receivers", REQUIRED),
        ("message_category", REQUIRED),
        ("message", REQUIRED),
        ("max_attempts", 1),
        ("timeout", None),
        ("attempt_timeout", 10),
    ],
    "await_messages": [
        ("senders", REQUIRED),
        ("message_category", REQUIRED),
        ("message_id", None),
        ("timeout", None),
    ],
    "get_messages": [("status", "unread")],
    "delete_messages": [("message_ids", REQUIRED)],
    "clear_messages": [("status", "read"), ("min_age", None)],
    "send_message_and_wait_for_responses": [
        ("receivers", REQUIRED),
        ("message_category", REQUIRED),
        ("message", REQUIRED),
        ("max_attempts", 1),
        ("timeout", None),
        ("attempt_timeout", 10),
    ],
    # storage
    "submit_final_result": [
        ("result", REQUIRED),
        ("output_type", "str"),
        ("multiple_results", False),
        ("filename", None),
        ("local_dp", None),
    ],
    "save_intermediate_data": [
        ("data", REQUIRED),
        ("location", "local"),
        ("remote_node_ids", None),
        ("tag", None),
    ],
    "get_intermediate_data": [("location", REQUIRED), ("query", None), ("tag", None), ("tag_option", "all")],
    "send_intermediate_data": [
        ("receivers", REQUIRED),
        ("data", REQUIRED),
        ("message_category", "intermediate_data"),
        ("max_attempts", 1),
        ("timeout", None),
        ("attempt_timeout", 10),
    ],
    "await_intermediate_data": [
        ("senders", REQUIRED),
        ("message_category", "intermediate_data"),
        ("timeout", None),
    ],
    "get_local_tags": [("filter", None)],
    # data
    "get_data_sources": [],
    "get_data_client": [("data_id", REQUIRED)],
    "get_fhir_data": [("queries", [])],
    "get_s3_data": [("keys", [])],
    # announced in PrivateAIM's documentation
    "get_node_index": [("node_id", REQUIRED)],
    "get_self_node_index": [],
    "set_checkpoint": [(UNNAMED, REQUIRED)],
    "load_checkpoint": [("index", REQUIRED)],
    "node_has_data": [],
}

STAR_MODEL = [
    ("analyzer", REQUIRED),
    ("aggregator", REQUIRED),
    ("data_type", "fhir"),
    ("query", None),
    ("simple_analysis", True),
    ("output_type", "str"),
    ("multiple_results", False),
    ("analyzer_kwargs", None),
    ("aggregator_kwargs", None),
    ("test_mode", False),
    ("test_kwargs", None),
]
STAR: dict[tuple[type, str], list[tuple[str, Any]]] = {
    (StarModel, "__init__"): STAR_MODEL,
    (StarLocalDPModel, "__init__"): [
        *STAR_MODEL[:9],
        ("epsilon", None),
        ("sensitivity", None),
        *STAR_MODEL[9:],
    ],
    (StarModelTester, "__init__"): [
        ("data_splits", REQUIRED),
        ("analyzer", REQUIRED),
        ("aggregator", REQUIRED),
        ("data_type", REQUIRED),
        ("node_roles", None),
        ("query", None),
        ("simple_analysis", True),
        ("output_type", "str"),
        ("multiple_results", False),
        ("analyzer_kwargs", None),
        ("aggregator_kwargs", None),
        ("epsilon", None),
        ("sensitivity", None),
        ("result_filepath", None),
    ],
    (StarAnalyzer, "__init__"): [("flame", REQUIRED)],
    (StarAnalyzer, "analyze"): [("data", REQUIRED)],
    (StarAnalyzer, "analysis_method"): [("data", REQUIRED), ("aggregator_results", REQUIRED)],
    (StarAggregator, "__init__"): [("flame", REQUIRED)],
    (StarAggregator, "aggregate"): [("node_results", REQUIRED), ("simple_analysis", True)],
    (StarAggregator, "aggregation_method"): [("analysis_results", REQUIRED)],
    (StarAggregator, "has_converged"): [("result", REQUIRED), ("last_result", REQUIRED)],
    (Node, "node_finished"): [],
}


def _parameters(function: Any) -> list[tuple[str, Any]]:
    params = list(inspect.signature(function).parameters.values())
    assert params[0].name == "self"
    return [(p.name, p.default) for p in params[1:]]


def _matches(actual: list[tuple[str, Any]], expected: list[tuple[str, Any]]) -> bool:
    if len(actual) != len(expected):
        return False
    for (name, default), (want_name, want_default) in zip(actual, expected, strict=True):
        if want_name != UNNAMED and name != want_name:
            return False
        if default is not want_default and not (
            default == want_default and type(default) is type(want_default)
        ):
            return False
    return True


@pytest.mark.parametrize("method", sorted(CORE_SDK))
def test_flame_core_sdk_has_the_compat_signature(method: str) -> None:
    actual = _parameters(getattr(FlameCoreSDK, method))
    assert _matches(actual, CORE_SDK[method]), f"{method}: {actual} != {CORE_SDK[method]}"


@pytest.mark.parametrize(("owner", "method"), list(STAR), ids=[f"{o.__name__}.{m}" for o, m in STAR])
def test_star_classes_have_the_compat_signatures(owner: type, method: str) -> None:
    actual = _parameters(getattr(owner, method))
    assert _matches(actual, STAR[owner, method]), f"{owner.__name__}.{method}: {actual}"


def test_the_import_names_of_existing_analyses() -> None:
    assert flamesdk.FlameCoreSDK is FlameCoreSDK
    assert issubclass(StarLocalDPModel, StarModel)
    assert issubclass(StarAnalyzer, Node) and issubclass(StarAggregator, Node)


# -- the patterns' node classes, without a federation ---------------------------------------------------


class FakeFlame:
    """Just what Node needs from FlameCoreSDK."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.logs: list[tuple[str, str]] = []

    def get_id(self) -> str:
        return "me"

    def get_role(self) -> str:
        return self.role

    def get_participant_ids(self) -> list[str]:
        return ["a", "b"]

    def flame_log(self, msg: str, log_type: str = "info", **kwargs: Any) -> None:
        self.logs.append((msg, log_type))


class Mean(StarAggregator):
    def aggregation_method(self, analysis_results: list[Any]) -> Any:
        return sum(analysis_results) / len(analysis_results)

    def has_converged(self, result: Any, last_result: Any) -> bool:
        return last_result is not None and abs(result - last_result) < 0.5


class OldStyle(StarAggregator):
    """has_converged with num_iterations, as older pattern versions call it."""

    def aggregation_method(self, analysis_results: list[Any]) -> Any:
        return sum(analysis_results)

    def has_converged(self, result: Any, last_result: Any, num_iterations: int) -> bool:
        return num_iterations >= 2


def test_aggregator_convergence_follows_the_pattern() -> None:
    simple = Mean(FakeFlame("aggregator"))  # type: ignore[arg-type]
    assert simple.aggregate([1, 3]) == (2.0, True)  # simple: converged at once
    assert simple.delta_criteria is False and simple.num_iterations == 1
    iterative = Mean(FakeFlame("aggregator"))  # type: ignore[arg-type]
    assert iterative.aggregate([1, 3], simple_analysis=False) == (2.0, False)
    assert iterative.aggregate([2, 2.5], simple_analysis=False) == (2.25, True)
    assert iterative.delta_criteria is True and iterative.latest_result == 2.25
    old = OldStyle(FakeFlame("aggregator"))  # type: ignore[arg-type]
    assert [old.aggregate([1], simple_analysis=False)[1] for _ in range(3)] == [False, False, True]
    assert iterative.partner_node_ids == ["a", "b"] and iterative.id == "me"


def test_nodes_check_their_role_and_report_errors_of_the_author_code() -> None:
    with pytest.raises(ValueError, match="aggregator"):
        Mean(FakeFlame("default"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="analyzer"):
        StarAnalyzer(FakeFlame("aggregator"))  # type: ignore[arg-type]
    flame = FakeFlame("default")
    analyzer = StarAnalyzer(flame)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        analyzer.analyze([1])
    assert flame.logs[-1][1] == "error"


# -- payload policy --------------------------------------------------------------------------------------


def test_payload_policy_reads_pickle_from_peers_and_answers_them_in_pickle() -> None:
    policy = PayloadPolicy("auto")
    data = {"x": np.arange(3), "y": [1.5, "a"]}
    assert codec.is_pickle(policy.encode_for("peer", data)) is False  # codec until a pickle is seen
    theirs = pickle.dumps({"v": 7})
    assert policy.decode_from("peer", theirs) == {"v": 7}
    assert policy.pickle_peers == {"peer"}
    assert codec.is_pickle(policy.encode_for("peer", data))
    assert not codec.is_pickle(policy.encode_for("other", data))
    assert codec.is_pickle(PayloadPolicy("pickle").encode_for("other", 1))
    with pytest.raises(PickleRefusedError):
        PayloadPolicy("codec").decode_from("peer", theirs)


def test_payload_policy_refuses_what_the_restricted_unpickler_refuses() -> None:
    evil = pickle.dumps(Path("/etc"))  # a class outside plain data: refused
    with pytest.raises(PickleRefusedError):
        PayloadPolicy("auto").decode_from("peer", evil)


def test_payload_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PAYLOAD_ENV, "PICKLE")
    assert payload_mode() == "pickle"
    monkeypatch.setenv(PAYLOAD_ENV, "json")
    with pytest.raises(ConfigurationError, match=PAYLOAD_ENV):
        payload_mode()
    assert payload_mode("codec") == "codec"


# -- fhir_to_csv -----------------------------------------------------------------------------------------


def _obs(patient: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient}"},
            "valueQuantity": {"value": value},
        }
    }


def test_fhir_to_csv_pivots_observations_and_follows_next_links() -> None:
    first = {
        "resourceType": "Bundle",
        "total": 3,
        "entry": [_obs("p1", "bmi", 20.5), _obs("p1", "sbp", 120)],
        "link": [{"relation": "next", "url": "http://kong/src/fhir/Observation?_offset=2"}],
    }
    second = {"resourceType": "Bundle", "entry": [_obs("p2", "bmi", 31.0)], "link": []}
    asked: list[str] = []

    def next_page(tail: str) -> dict[str, Any]:
        asked.append(tail)
        return second

    args = ("resource.code.coding.code", "resource.valueQuantity.value", "Observation")
    table = fhir_to_csv(
        first, *args, row_key_seq="resource.subject.reference", output_type="dict", next_page=next_page
    )
    assert table == {"bmi": {"Patient/p1": 20.5, "Patient/p2": 31.0}, "sbp": {"Patient/p1": 120}}
    assert asked == ["Observation?_offset=2"]
    out = fhir_to_csv(
        first, *args, row_key_seq="resource.subject.reference", row_col_name="patient", separator=";"
    )
    assert isinstance(out, io.StringIO)
    assert out.read() == "patient;bmi;sbp\nPatient/p1;20.5;120"  # without next_page: the first page only
    only = fhir_to_csv(
        first, *args, row_key_seq="resource.subject.reference", col_id_filters=["sb"], output_type="dict"
    )
    assert only == {"sbp": {"Patient/p1": 120}}
    with pytest.raises(ValueError, match="row_key_seq"):
        fhir_to_csv(first, *args)


def test_fhir_to_csv_reads_questionnaire_responses_and_prefix_matches_the_last_key() -> None:
    def response(answers: dict[str, Any]) -> dict[str, Any]:
        items = [{"linkId": k, "answer": [{"valueInteger": v}]} for k, v in answers.items()]
        return {"resource": {"resourceType": "QuestionnaireResponse", "item": items}}

    bundle = {"resourceType": "Bundle", "entry": [response({"q1": 1, "q2": 2}), response({"q1": 3})]}
    table = fhir_to_csv(
        bundle,
        "resource.item.linkId",
        "resource.item.answer.value",
        "QuestionnaireResponse",
        output_type="dict",
    )
    assert table == {"q1": {"0": 1, "1": 3}, "q2": {"0": 2}}
    assert search({"a": [{"b": None}, {"b": 2}]}, ["a", "b"]) == 2


# -- FlameCoreSDK on the emulated stack -------------------------------------------------------------------


def _first_page(bundle: dict[str, Any], source_base: str, query: str) -> dict[str, Any]:
    """A first search page with a next link, made from a merged Bundle."""
    page = dict(bundle)
    page["entry"] = bundle["entry"][:50]
    page["link"] = [{"relation": "next", "url": f"{source_base}/fhir/{query}&_count=50&_offset=50"}]
    return page


def _aggregator_side(flame: FlameCoreSDK) -> dict[str, Any]:
    analyzers = flame.get_participant_ids()
    assert flame.get_role() == "aggregator" and flame.get_aggregator_id() is None
    assert flame.config.node_role == "aggregator" and flame.config.finished is False
    assert flame.ready_check() == dict.fromkeys(analyzers, True)
    hello = flame.await_messages(analyzers, "hello")
    for sender, messages in hello.items():
        assert messages is not None and isinstance(messages[0], Message)
        assert messages[0].body["from"] == sender and messages[0].recipients == [flame.get_id()]
        assert set(messages[0].body["meta"]) == {
            "type", "category", "id", "akn_id", "status", "sender", "created_at", "arrived_at", "number"
        }  # fmt: skip
    acked, missing = flame.send_message(analyzers, "reply", {"ok": True})
    assert sorted(acked) == sorted(analyzers) and missing == []
    # no data access on the aggregator: None with a warning
    assert flame.get_fhir_data(["Patient"]) is None and flame.get_s3_data() is None
    assert flame.get_data_sources() is None and flame.node_has_data() is False
    # no per-analysis key to seal a checkpoint with: refused, not stored readable by later analyses
    with pytest.raises(ConfigurationError, match="set_checkpoint"):
        flame.set_checkpoint({"round": 1})
    assert flame.load_checkpoint(-1) is None
    data = flame.await_intermediate_data(analyzers)
    assert all(np.array_equal(d["arr"], np.arange(3)) for d in data.values())
    # an explicit timeout returns None for a sender without a message; None as timeout is bounded and raises
    assert flame.await_messages(analyzers[:1], "never", timeout=0.2) == {analyzers[0]: None}
    assert flame.await_intermediate_data(analyzers[:1], timeout=0.2) == {analyzers[0]: None}
    with pytest.raises(FlameTimeoutError) as caught:
        flame.await_messages(analyzers, "never")
    assert sorted(caught.value.missing) == sorted(analyzers)
    responses = flame.send_message_and_wait_for_responses(analyzers, "ping", {}, timeout=20)
    assert all(r is not None and r[0].body["pong"] for r in responses.values())
    assert flame.submit_final_result({"total": 3}) == {"status": "success"}
    assert flame.submit_final_result([1, 2], "pickle", multiple_results=True, filename="parts.pkl") == [
        {"status": "success"},
        {"status": "success"},
    ]
    assert flame.analysis_finished() is True
    assert flame.config.finished is True
    return {"analyzers": analyzers}


def _analyzer_side(flame: FlameCoreSDK) -> dict[str, Any]:
    aggregator = flame.get_aggregator_id()
    assert aggregator is not None and flame.get_role() == "default"
    everyone = sorted([flame.get_id(), *flame.get_participant_ids()])
    assert flame.get_self_node_index() == everyone.index(flame.get_id())
    assert flame.get_node_index(aggregator) == everyone.index(aggregator)
    assert {p["nodeId"] for p in flame.get_participants()} == set(everyone) - {flame.get_id()}
    assert flame.send_message([aggregator], "hello", {"from": flame.get_id()}) == ([aggregator], [])
    reply = flame.await_messages([aggregator], "reply")[aggregator]
    assert reply is not None and reply[0].body["ok"] is True
    assert flame.send_intermediate_data([aggregator], {"arr": np.arange(3)}) == ([aggregator], [])
    ping = flame.await_messages([aggregator], "ping", timeout=20)[aggregator]
    assert ping is not None
    flame.send_message([aggregator], "ping", {"pong": True})
    # read and unread messages of the local inbox
    read = flame.get_messages("read")
    assert {m.body["meta"]["category"] for m in read} >= {"reply", "ping"}
    assert flame.delete_messages([read[0].body["meta"]["id"]]) == 1
    assert flame.clear_messages("read") == len(read) - 1
    assert flame.get_messages("read") == []
    # local results, tags, checkpoints
    saved = flame.save_intermediate_data({"n": 1}, "local", tag="compat-t1")
    assert isinstance(saved, dict) and saved["status"] == "success"
    flame.save_intermediate_data({"n": 2}, "local", tag="compat-t1")
    assert flame.get_intermediate_data("local", query=saved["id"]) == {"n": 1}
    assert flame.get_intermediate_data("local", tag="compat-t1") == [{"n": 1}, {"n": 2}]
    assert flame.get_intermediate_data("local", tag="compat-t1", tag_option="last") == [{"n": 2}]
    assert "compat-t1" in flame.get_local_tags(filter="compat")
    with pytest.raises(ValueError, match="remote_node_ids"):
        flame.save_intermediate_data(1, "global")
    assert flame.load_checkpoint(-1) is None
    assert flame.set_checkpoint({"round": 1}) == 0
    assert flame.set_checkpoint({"round": 2}) == 1
    assert flame.load_checkpoint(0) == {"round": 1}
    assert flame.load_checkpoint(-1) == {"round": 2}
    assert flame.load_checkpoint(7) is None
    # node storage is project-wide: what is stored is sealed, not the checkpoint in the clear
    stored = flame._call(flame._node.storage.read_tagged("checkpoint-1", "all"), "reading")
    assert stored and all(b"round" not in raw for raw in stored)
    # data
    assert flame.node_has_data() is True
    sources = flame.get_data_sources()
    assert sources is not None
    # the hub adapter tags a project's services "{project}-{kind}", without a type: tag
    kinds = sorted(t.rsplit("-", 1)[1] for s in sources for t in s["tags"] if t.endswith(("-fhir", "-s3")))
    assert kinds == ["fhir", "s3"] and not any(t.startswith("type:") for s in sources for t in s["tags"])
    fhir_source = next(s for s in sources if any(t.endswith("-fhir") for t in s["tags"]))
    client = flame.get_data_client(fhir_source["id"])
    assert isinstance(client, httpx.AsyncClient) and str(client.base_url).endswith(
        f"/{fhir_source['name']}/fhir/"
    )
    count = flame.get_fhir_data(["Patient?_summary=count"])
    assert len(count) == 1 and count[0]["Patient?_summary=count"]["total"] > 0
    csv_bytes = flame.get_s3_data(["patients.csv"])[0]["patients.csv"]
    assert csv_bytes.startswith(b"patient_id,")
    assert list(flame.get_s3_data()[0]) == ["patients.csv"]  # no keys: every object
    query = "Observation?code=http://loinc.org|39156-5"
    bundle = flame.get_fhir_data([query])[0][query]
    page = _first_page(bundle, f"http://kong.example/{fhir_source['name']}", query)
    table = flame.fhir_to_csv(
        page,
        "resource.code.coding.code",
        "resource.valueQuantity.value",
        "Observation",
        row_key_seq="resource.subject.reference",
        output_type="dict",
    )
    assert isinstance(table, dict) and len(table["39156-5"]) == count[0]["Patient?_summary=count"]["total"]
    # progress and logs
    flame.set_progress(10)
    flame.set_progress(5.0)  # smaller: ignored with a warning
    assert flame.get_progress() == 10
    with pytest.raises(ValueError):
        flame.set_progress(101)
    with pytest.raises(ValueError, match="log_type"):
        flame.flame_log("x", log_type="normal")
    flame.flame_log("first half ", halt_submission=True)
    flame.flame_log(["second", "half"], sep="-", append=True)
    return {"index": flame.get_self_node_index()}


def test_flame_core_sdk_against_the_emulated_stack() -> None:
    stack = FlameStack.create(2, data_root=DATA, settings=StackSettings.fast(po_enabled=False))

    def target(name: str) -> dict[str, Any]:
        flame = FlameCoreSDK(silent=True)
        return _aggregator_side(flame) if flame.get_role() == "aggregator" else _analyzer_side(flame)

    run = run_star_nodes(stack, target, timeout=60, timeouts=Timeouts(await_messages=1.5))
    assert run.errors == {}, run.report()
    assert run.ok, run.report()
    names = sorted(run.final_results)
    assert len(names) == 3 and names[:2] == ["parts_1.pkl", "parts_2.pkl"] and names[2].endswith(".txt")
    assert [pickle.loads(run.final_results[f"parts_{i}.pkl"]) for i in (1, 2)] == [1, 2]
    lines = [line for entry in stack.po.records["node-1"].logs for line in entry["log"].split("\n")]
    assert "first half second-half" in lines  # halt_submission + append stream one line


def test_errors_raise_instead_of_stalling() -> None:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))

    def target(name: str) -> None:
        flame = FlameCoreSDK(silent=True)
        with pytest.raises(FlameError):  # not a partner: the broker refuses, the SDK raises
            flame.send_message([flame.get_id()], "self", {})
        with pytest.raises(ValueError):
            flame.send_message(flame.get_participant_ids(), "x", {}, max_attempts=0)
        with pytest.raises(ValueError, match="location"):
            flame.get_intermediate_data("elsewhere", query="x")  # type: ignore[arg-type]
        if flame.get_role() == "aggregator":
            flame.analysis_finished()
        else:
            # a script that ends without StarModel: at exit the node waits for the end of the analysis
            flame._at_exit()
            assert flame.config.finished and flame._node.status == "executed"

    run = run_star_nodes(stack, target, timeout=30, timeouts=Timeouts(await_messages=2.0))
    assert run.errors == {}, run.report()


def test_test_mode_needs_a_local_runner() -> None:
    with pytest.raises(FlameError, match="StarModelTester"):
        StarModel(StarAnalyzer, StarAggregator, "fhir", test_mode=True, test_kwargs={})


def test_a_node_outside_a_runner_reads_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANALYSIS_ID", raising=False)
    with pytest.raises(ConfigurationError, match="ANALYSIS_ID"):
        FlameCoreSDK()

"""Secure aggregation in the star protocol: same results as plain mode, and the aggregator learns only sums."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import flame
from flame import codec
from flame.federated import messages
from flame.federated.secure import (
    DECRYPT,
    DECRYPTED,
    KeyHolder,
    SecureAggregation,
    SecureUpdates,
    total,
)
from flame.node.inbox import Inbox, Message
from flame.node.runtime import Timeouts
from flame.protocols import paillier
from flame.sim import FlameStack, StackSettings
from flame.sim.cli_sim import load_analysis
from flame.sim.faults import FaultPlan, NodeRestart
from flame.sim.federation import Federation, FederationRun, run_federation

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DATA = EXAMPLES / "data"


def pooled() -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(DATA / f"node-{i}" / "s3" / "patients.csv") for i in (1, 2, 3)], ignore_index=True
    )


async def run_example(name: str, faults: FaultPlan | None = None) -> FederationRun:
    loaded = load_analysis(EXAMPLES / name / "analysis.py")
    stack = FlameStack.create(3, data_root=DATA, settings=StackSettings.fast(), faults=faults)
    async with stack:
        run = await run_federation(stack, loaded.analyzer, loaded.aggregator, loaded.options, timeout=120)
    assert run.ok, run.report()
    return run


async def test_secure_mean_equals_the_pooled_figures_within_fixed_point_precision() -> None:
    run = await run_example("secure_mean")
    frame = pooled()
    for column, figures in run.result.items():
        assert figures["n"] == len(frame)
        assert figures["mean"] == pytest.approx(frame[column].mean(), abs=1e-5)
        assert figures["std"] == pytest.approx(frame[column].std(ddof=1), abs=1e-4)


async def test_secure_logistic_regression_equals_the_plain_fit() -> None:
    secure = await run_example("secure_logistic_regression")
    plain = await run_example("logistic_regression")
    np.testing.assert_allclose(
        list(secure.result["coefficients"].values()), list(plain.result["coefficients"].values()), atol=1e-6
    )


async def test_secure_run_survives_a_restart_of_the_key_holder() -> None:
    # node-1 has the lowest node id of the analysis nodes: it holds the key
    restarted = await run_example("secure_logistic_regression", FaultPlan([NodeRestart("node-1", at=0.8)]))
    plain = await run_example("logistic_regression")
    assert restarted.outcomes["node-1"].incarnations == 2
    np.testing.assert_allclose(
        list(restarted.result["coefficients"].values()),
        list(plain.result["coefficients"].values()),
        atol=1e-6,
    )


# -- what the aggregator sees ------------------------------------------------------------------------------

SECRETS = {"node-1": 1111.123456789, "node-2": -2222.987654321, "node-3": 3333.55555}


class SecretValue(flame.Analyzer):
    """Sends a value only its node knows (read from its own CSV) under encryption, plus a plain count."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        value = float(data.dataframe("secret.csv")["value"].iloc[0])
        return {"secret": np.array([value, value / 7.0]), "plain": 1}


class SumOfSecrets(flame.Aggregator):
    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        assert isinstance(updates, SecureUpdates)
        assert all(set(update) == {"plain"} for update in updates.values())
        return {"secret": total(updates, "secret").tolist(), "plain": total(updates, "plain")}


def _floats(value: Any) -> list[float]:
    """Every number in a decoded payload, arrays included."""
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list | tuple):
        return [f for v in value for f in _floats(v)]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return [float(v) for v in value.ravel()]
    if isinstance(value, float):
        return [value]
    return []


def _payloads(message: Message) -> list[Any]:
    body = message.body
    found = []
    if "payload" in body:
        found.append(codec.decode(base64.b64decode(body["payload"])))
    for key in ("sums", "public_key"):
        if isinstance(body.get(key), str):
            found.append(codec.decode(bytes.fromhex(body[key])))
    return found


async def test_the_aggregator_holds_no_private_key_and_no_single_nodes_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holders: list[KeyHolder] = []
    original_init = KeyHolder.__init__

    def recording_init(self: KeyHolder, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        holders.append(self)

    monkeypatch.setattr(KeyHolder, "__init__", recording_init)
    for name, value in SECRETS.items():
        (tmp_path / name / "s3").mkdir(parents=True)
        pd.DataFrame({"value": [value]}).to_csv(tmp_path / name / "s3" / "secret.csv", index=False)
    options = flame.FederationOptions(
        max_rounds=1,
        secure=SecureAggregation(
            ("secret",), key_bits=2048, layout=paillier.Layout(frac_bits=20, bound=2**13)
        ),
    )
    stack = FlameStack.create(3, data_root=tmp_path, settings=StackSettings.fast())
    async with stack:
        federation = Federation(stack, SecretValue(), SumOfSecrets(), options)
        run = await federation.run(timeout=60)
        assert run.ok, run.report()
        aggregator_node = federation.runtimes["aggregator"]
        key_holder_node = federation.runtimes["node-1"]
        received = aggregator_node.inbox.messages("all")
        aggregator_obj = federation.aggregators[-1]
    expected = sum(SECRETS.values())
    assert run.result["secret"][0] == pytest.approx(expected, abs=1e-4)
    assert run.result["plain"] == 3
    # everything the aggregator received, decoded
    seen = [f for message in received for payload in _payloads(message) for f in _floats(payload)]
    for value in SECRETS.values():
        assert not any(abs(f - value) < 1e-3 or abs(f - value / 7.0) < 1e-3 for f in seen)
    categories = {m.category for m in received}
    assert messages.UPDATE in categories and DECRYPTED in categories
    # no private key material anywhere the aggregator holds
    private_keys = [v for v in vars(aggregator_obj).values() if isinstance(v, paillier.PrivateKey)]
    private_keys += [v for v in vars(aggregator_node).values() if isinstance(v, paillier.PrivateKey)]
    assert private_keys == []
    [holder] = holders
    assert holder.node is key_holder_node
    blob = b"".join(repr(m.body).encode() for m in received)
    for prime in (holder.private_key.p, holder.private_key.q):
        assert str(prime).encode() not in blob
        assert prime.to_bytes((prime.bit_length() + 7) // 8, "big").hex().encode() not in blob
    allowed = {messages.UPDATE, DECRYPTED, "flame-secure-key", "ready_check", "analysis_finished"}
    assert categories <= allowed, categories - allowed


# -- the key holder's refusals ------------------------------------------------------------------------------


class StubNode:
    """Just enough of a node for the key holder: identity, participants, inbox, outbox, log."""

    def __init__(self) -> None:
        self.node_id = "key-holder"
        self.participants = [
            {"nodeId": "aggregator", "nodeType": "aggregator"},
            *({"nodeId": f"n{i}", "nodeType": "default"} for i in range(3)),
        ]
        self.config = type("Config", (), {"analysis_id": "analysis-1"})()
        self.inbox = Inbox()
        self.sent: list[dict[str, Any]] = []

    def log(self, text: str, log_type: str = "info") -> None:
        pass

    async def send_message(self, receivers: list[str], category: str, body: dict[str, Any], **_: Any) -> Any:
        self.sent.append(body)
        return receivers, []


async def _request(node: StubNode, vector: paillier.EncryptedVector, round: int, number: int) -> None:
    body = {
        "analysis_id": "analysis-1",
        "round": round,
        "sums": codec.encode({"x": vector.to_payload()}).hex(),
        "contributors": vector.contributors,
        "meta": {"id": f"m-{number}", "sender": "aggregator", "category": DECRYPT, "akn_id": None},
    }
    await node.inbox.add(Message(body=body, recipients=[node.node_id]))


async def test_the_key_holder_refuses_sums_below_the_quorum_and_a_second_different_request() -> None:
    public, private = paillier.generate_keypair(2048)
    node = StubNode()
    holder = KeyHolder(node, private, flame.FederationOptions(quorum=2))  # type: ignore[arg-type]
    one = paillier.encrypt(public, np.array([1.0, 2.0]))
    two = paillier.aggregate([one, paillier.encrypt(public, np.array([3.0, 4.0]))])
    await _request(node, one, 1, 1)
    await holder.serve("aggregator")
    assert "below the quorum" in node.sent[-1]["error"]
    await _request(node, two, 1, 2)
    await holder.serve("aggregator")
    assert np.allclose(codec.decode(bytes.fromhex(node.sent[-1]["sums"]))["x"], [4.0, 6.0])
    await _request(node, two, 1, 3)  # the same request again (the aggregator resumed): same answer
    await holder.serve("aggregator")
    assert "sums" in node.sent[-1]
    other = paillier.aggregate([paillier.encrypt(public, np.array([9.0, 9.0])), one])
    await _request(node, other, 1, 4)  # a different request for a decrypted round: an oracle, refused
    await holder.serve("aggregator")
    assert "decrypted already" in node.sent[-1]["error"]


async def test_secure_round_goes_on_with_the_quorum_when_a_node_never_answers(tmp_path: Path) -> None:
    from flame.sim.faults import NodeOffline

    for name, value in SECRETS.items():
        (tmp_path / name / "s3").mkdir(parents=True)
        pd.DataFrame({"value": [value]}).to_csv(tmp_path / name / "s3" / "secret.csv", index=False)
    options = flame.FederationOptions(
        max_rounds=1,
        quorum=2,
        round_deadline=2.0,
        secure=SecureAggregation(
            ("secret",), key_bits=2048, layout=paillier.Layout(frac_bits=20, bound=2**13)
        ),
    )
    faults = FaultPlan([NodeOffline("node-3", start=0.0, end=float("inf"))])
    stack = FlameStack.create(3, data_root=tmp_path, settings=StackSettings.fast(), faults=faults)
    async with stack:
        # node-3's pod never comes up: its start-up gives up after a second
        federation = Federation(
            stack,
            SecretValue(),
            SumOfSecrets(),
            options,
            node_kwargs={"timeouts": Timeouts(startup=1.0, attempt=0.5)},
        )
        run = await federation.run(timeout=60)
    assert run.outcomes["node-3"].status == "failed"
    assert run.outcomes["aggregator"].status == "executed"
    assert run.result["plain"] == 2
    assert run.result["secret"][0] == pytest.approx(SECRETS["node-1"] + SECRETS["node-2"], abs=1e-4)

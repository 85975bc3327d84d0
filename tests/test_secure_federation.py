"""Secure aggregation in the star protocol: same results as plain mode, and the aggregator learns only sums."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import flame
from flame import codec
from flame.federated import messages
from flame.federated import secure as secure_module
from flame.federated.secure import (
    DECRYPTED,
    PUBLIC_KEY,
    DecryptorService,
    SecureAggregation,
    SecureUpdates,
    total,
)
from flame.local.loading import load_analysis
from flame.node.inbox import Message
from flame.node.runtime import Timeouts
from flame.protocols import paillier
from flame.protocols import threshold_paillier as tp
from flame.sim import FlameStack, StackSettings
from flame.sim.events import Event
from flame.sim.faults import FaultPlan, NodeOffline
from flame.sim.federation import Federation, FederationRun, run_federation
from flame.sim.node import NodeSpec

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


async def test_secure_run_survives_a_restart_of_the_dealer_after_it_decrypted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """node-1 (the lowest analysis node id) dealt the key; restarted after its first decryption, it
    reloads its share and its ledger from node storage, and the fit equals the plain one."""
    loaded = load_analysis(EXAMPLES / "secure_logistic_regression" / "analysis.py")
    stack = FlameStack.create(3, data_root=DATA, settings=StackSettings.fast())
    uploads = 0
    restarts: list[asyncio.Task[Any]] = []
    record = stack.events.record

    def recording(kind: str, node: str | None = None, **detail: Any) -> Event:
        nonlocal uploads
        event = record(kind, node, **detail)
        if kind == "storage.upload" and node == "node-1" and str(detail.get("tag", "")).startswith("pk-"):
            uploads += 1  # the share, the empty ledger, then the ledger after round 1's decryption
            if uploads == 3 and not restarts:
                now = stack.now()
                stack.faults.add(NodeOffline("node-1", now, now + 0.2))
                restarts.append(asyncio.ensure_future(stack.restart_node("node-1", "test")))
        return event

    stack.events.record = recording  # type: ignore[method-assign]
    with caplog.at_level("INFO"):
        async with stack:
            restarted = await run_federation(
                stack, loaded.analyzer, loaded.aggregator, loaded.options, timeout=120
            )
            await asyncio.gather(*restarts)
    assert restarts and restarted.ok, restarted.report()
    assert restarted.outcomes["node-1"].incarnations == 2
    assert any("key share and ledger loaded from node storage" in m for m in caplog.messages)
    assert sum("dealing a 2048-bit key" in m for m in caplog.messages) == 1
    plain = await run_example("logistic_regression")
    np.testing.assert_allclose(
        list(restarted.result["coefficients"].values()),
        list(plain.result["coefficients"].values()),
        atol=1e-6,
    )


# -- what each party holds ----------------------------------------------------------------------------------

SECRETS = {"node-1": 1111.123456789, "node-2": -2222.987654321, "node-3": 3333.55555}
OPTIONS = SecureAggregation(("secret",), key_bits=2048, layout=paillier.Layout(frac_bits=20, bound=2**13))


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


def write_secrets(root: Path) -> None:
    for name, value in SECRETS.items():
        (root / name / "s3").mkdir(parents=True)
        pd.DataFrame({"value": [value]}).to_csv(root / name / "s3" / "secret.csv", index=False)


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
    if isinstance(body.get("public_key"), str):
        found.append(codec.decode(bytes.fromhex(body["public_key"])))
    return found


def _held(value: Any, depth: int = 0) -> list[Any]:
    """Every object reachable from ``value`` through attributes, dicts and sequences (bounded)."""
    if depth > 4:
        return []
    found = [value]
    if isinstance(value, dict):
        items: list[Any] = list(value.values())
    elif isinstance(value, list | tuple | set):
        items = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        items = list(vars(value).values())
    else:
        items = []
    for item in items:
        found += _held(item, depth + 1)
    return found


async def test_what_each_party_holds_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The aggregator: no key material, no single node's value; each decryptor: only its own share."""
    services: list[DecryptorService] = []
    original_init = DecryptorService.__init__

    def recording_init(self: DecryptorService, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        services.append(self)

    monkeypatch.setattr(DecryptorService, "__init__", recording_init)
    aggregator_nodes: list[Any] = []
    honest = secure_module.secure_round

    async def recording_round(node: Any, *args: Any, **kwargs: Any) -> Any:
        aggregator_nodes.append(node)
        return await honest(node, *args, **kwargs)

    monkeypatch.setattr(secure_module, "secure_round", recording_round)
    write_secrets(tmp_path)
    options = flame.FederationOptions(max_rounds=1, secure=OPTIONS)
    stack = FlameStack.create(3, data_root=tmp_path, settings=StackSettings.fast())
    async with stack:
        federation = Federation(stack, SecretValue(), SumOfSecrets(), options)
        run = await federation.run(timeout=90)
        assert run.ok, run.report()
    [aggregator_node] = aggregator_nodes
    received = aggregator_node.inbox.messages("all")
    aggregator_obj = federation.aggregators[-1]
    assert run.result["secret"][0] == pytest.approx(sum(SECRETS.values()), abs=1e-4)
    assert run.result["plain"] == 3
    # everything the aggregator received, decoded: no single node's value
    seen = [f for message in received for payload in _payloads(message) for f in _floats(payload)]
    for value in SECRETS.values():
        assert not any(abs(f - value) < 1e-3 or abs(f - value / 7.0) < 1e-3 for f in seen)
    categories = {m.category for m in received}
    assert messages.UPDATE in categories and DECRYPTED in categories and PUBLIC_KEY in categories
    # no key material in the aggregator's objects
    held = _held(aggregator_obj) + _held(vars(aggregator_node))
    assert not [v for v in held if isinstance(v, tp.KeyShare | paillier.PrivateKey)]
    # each analysis node: one service, one share, its own index, and nothing of the others'
    assert len({s.node.node_id for s in services}) == len(services) == 3
    indices = set()
    for service in services:
        assert service.decryptor is not None
        share = service.decryptor.share
        indices.add(share.index)
        assert share.index == service.decryptors.index(service.node.node_id) + 1
        shares = [v for v in _held(service) if isinstance(v, tp.KeyShare)]
        assert {id(s) for s in shares} == {id(share)}
        assert not [v for v in _held(service) if isinstance(v, paillier.PrivateKey)]
        assert service.decryptor.ledger.compositions() == [tuple(service.decryptors)]
    assert indices == {1, 2, 3}
    # no share appears in what the aggregator received
    blob = b"".join(repr(m.body).encode() for m in received)
    for service in services:
        assert service.decryptor is not None
        secret = int(service.decryptor.share._s)
        assert secret.to_bytes((secret.bit_length() + 7) // 8, "big").hex().encode() not in blob


async def test_secure_round_goes_on_with_the_quorum_when_a_node_never_answers(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    options = flame.FederationOptions(max_rounds=1, quorum=2, round_deadline=2.0, secure=OPTIONS)
    faults = FaultPlan([NodeOffline("node-3", start=0.0, end=float("inf"))])
    stack = FlameStack.create(3, data_root=tmp_path, settings=StackSettings.fast(), faults=faults)
    async with stack:
        # node-3's pod never comes up: its start-up gives up after a second; 2 of 3 decrypt
        federation = Federation(
            stack,
            SecretValue(),
            SumOfSecrets(),
            options,
            node_kwargs={"timeouts": Timeouts(startup=1.0, attempt=0.5)},
        )
        run = await federation.run(timeout=90)
    assert run.outcomes["node-3"].status == "failed"
    assert run.outcomes["aggregator"].status == "executed", run.report()
    assert run.result["plain"] == 2
    assert run.result["secret"][0] == pytest.approx(SECRETS["node-1"] + SECRETS["node-2"], abs=1e-4)


async def test_a_refused_request_fails_the_analysis_on_every_node_naming_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malicious aggregator leaves one node out of round 2 after decrypting all three in round 1."""
    honest = secure_module.secure_round
    left_out: list[str] = []

    async def differencing(node: Any, updates: Any, round: int, *args: Any, **kwargs: Any) -> Any:
        if round == 2:
            left_out.append(sorted(updates)[-1])
            updates = {k: v for k, v in updates.items() if k != left_out[0]}
        return await honest(node, updates, round, *args, **kwargs)

    monkeypatch.setattr(secure_module, "secure_round", differencing)
    write_secrets(tmp_path)
    options = flame.FederationOptions(max_rounds=2, quorum=2, secure=OPTIONS)
    stack = FlameStack.create(3, data_root=tmp_path, settings=StackSettings.fast())
    async with stack:
        run = await Federation(stack, SecretValue(), SumOfSecrets(), options).run(timeout=90)
    assert not run.ok
    for name, outcome in run.outcomes.items():
        assert outcome.status == "failed", (name, run.report())
        assert outcome.error is not None and "secure mode's fixed composition" in outcome.error, (
            name,
            outcome.error,
        )


def _aggregator_with_data(stack: FlameStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """FlameStack gives the data key only to role "default": hand it to an aggregator given data too."""
    original = stack.env

    def env(name: str, per_node_url: bool | None = None) -> dict[str, str]:
        values = original(name, per_node_url=per_node_url)
        if stack.node(name).has_data:
            values["DATA_SOURCE_TOKEN"] = stack.node(name).data_key
        return values

    monkeypatch.setattr(stack, "env", env)


async def test_an_aggregator_that_analyses_too_adds_its_values_in_the_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator's own values stay out of the encrypted sums (the decryptors refuse it as a
    contributor); it adds them after decryption, and the result is the plain one."""
    secrets = {**SECRETS, "aggregator": 444.25}
    write_secrets(tmp_path)
    (tmp_path / "aggregator" / "s3").mkdir(parents=True)
    pd.DataFrame({"value": [secrets["aggregator"]]}).to_csv(tmp_path / "aggregator" / "s3" / "secret.csv")
    specs = [NodeSpec("aggregator", role="aggregator", data_dir=tmp_path / "aggregator")]
    specs += [NodeSpec(name, data_dir=tmp_path / name) for name in SECRETS]
    stack = FlameStack(specs, settings=StackSettings.fast(po_enabled=False))
    _aggregator_with_data(stack, monkeypatch)
    options = flame.FederationOptions(max_rounds=2, aggregator_analyses=True, secure=OPTIONS)
    async with stack:
        run = await Federation(stack, SecretValue(), SumOfSecrets(), options).run(timeout=90)
    assert run.ok, run.report()
    assert run.result["plain"] == 4
    expected = sum(secrets.values())
    assert run.result["secret"][0] == pytest.approx(expected, abs=1e-4)
    assert run.result["secret"][1] == pytest.approx(expected / 7.0, abs=1e-4)


class SlowThirdInRoundTwo(SecretValue):
    """node-3 (the one whose secret is 3333.55555) straggles past the round deadline in round 2."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        update = super().analyze(data, aggregate, round)
        if round == 2 and update["secret"][0] == SECRETS["node-3"]:
            import time

            time.sleep(4.0)
        return update


async def test_a_straggler_after_the_first_round_fails_naming_the_fixed_composition(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    options = flame.FederationOptions(max_rounds=2, quorum=2, round_deadline=2.0, secure=OPTIONS)
    stack = FlameStack.create(3, data_root=tmp_path, settings=StackSettings.fast())
    async with stack:
        run = await Federation(stack, SlowThirdInRoundTwo(), SumOfSecrets(), options).run(timeout=90)
    outcome = run.outcomes["aggregator"]
    assert outcome.status == "failed", run.report()
    assert outcome.error is not None
    assert "secure mode's fixed composition: round 2 lacks the parameters of " in outcome.error
    assert "stragglers are tolerated in the first round only" in outcome.error


class RowsInASecureField(flame.Analyzer):
    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        return {"secret": data.dataframe("patients.csv")["age"].to_numpy(dtype=np.float64), "plain": 1}


async def test_a_leaky_secure_field_is_refused_by_the_disclosure_guard_before_encryption() -> None:
    options = flame.FederationOptions(max_rounds=1, round_deadline=5.0, checkpoints=False, secure=OPTIONS)
    stack = FlameStack.create(2, data_root=DATA, settings=StackSettings.fast())
    async with stack:
        run = await Federation(stack, RowsInASecureField(), SumOfSecrets(), options).run(timeout=90)
    for name in ("node-1", "node-2"):
        outcome = run.outcomes[name]
        assert outcome.status == "failed", run.report()
        assert outcome.error is not None and "DisclosureRefusedError" in outcome.error, outcome.error
        assert "rule row-level at payload" in outcome.error, outcome.error
    assert run.final_results == {}

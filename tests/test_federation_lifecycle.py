"""What outlives one analysis: the final result is submitted exactly once, and nothing is left readable.

Two promises, each tested on the emulated stack:

- The aggregator submits the final result to the hub exactly once, also when its pod is restarted
  right after the submission (the new pod finds "submitted" and only finishes) or during it (the hub
  may or may not have the result: plain results are sent again byte for byte under the same name,
  a local-DP result is never sent again, since the storage service would draw new noise).
- A later analysis of the same project, on the same nodes and the same node storage, can list every
  tag and read every object the earlier analysis left, and finds neither the key holder's Paillier
  private key nor any node's plaintext update: checkpoints and keys are sealed under keys only the
  analysis itself can re-derive. Also when the earlier analysis failed.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import flame
from flame.federated import FederationOptions
from flame.federated.secure import KeyHolder, SecureAggregation, SecureUpdates, total
from flame.protocols import paillier
from flame.sim import backends
from flame.sim.events import Event
from flame.sim.faults import FaultPlan, NodeOffline
from flame.sim.federation import Federation, FederationRun, run_federation
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack
from tests.test_federation import (
    ALL3,
    FAST_TIMEOUTS,
    SumAggregator,
    SumAnalyzer,
    expected_total,
    write_sum_data,
)

LOCAL_DP = {"epsilon": 1.0, "sensitivity": 1.0}


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return write_sum_data(tmp_path)


@pytest.fixture
async def stacks() -> AsyncIterator[list[FlameStack]]:
    created: list[FlameStack] = []
    yield created
    for stack in created:
        await stack.aclose()


def restart_when(stack: FlameStack, name: str, condition: Callable[[Event], bool]) -> list[asyncio.Task[Any]]:
    """Restart node ``name`` once, the moment the stack records an event meeting ``condition``.

    The old pod is cut off at once (its next request fails), then the orchestrator starts a new one:
    nothing the old pod would do after that event reaches any service.
    """
    restarts: list[asyncio.Task[Any]] = []
    record = stack.events.record

    def recording(kind: str, node: str | None = None, **detail: Any) -> Event:
        event = record(kind, node, **detail)
        if not restarts and condition(event):
            now = stack.now()
            stack.faults.add(NodeOffline(name, now, now + 0.2))
            restarts.append(asyncio.ensure_future(stack.restart_node(name, "test")))
        return event

    stack.events.record = recording  # type: ignore[method-assign]
    return restarts


def submissions(stack: FlameStack) -> list[Event]:
    """Every ``PUT /final`` and ``PUT /final/localdp`` the storage services accepted."""
    return stack.events.select("storage.final")


def after_submission_local_upload(stack: FlameStack) -> Callable[[Event], bool]:
    """The aggregator's first write to node storage after the hub received the final result."""

    def condition(event: Event) -> bool:
        return (
            event.kind == "storage.upload"
            and event.node == "aggregator"
            and event.detail.get("area") == "local"
            and str(event.detail.get("tag") or "").startswith("ck-")
            and bool(submissions(stack))
        )

    return condition


# -- finding 10: exactly once ---------------------------------------------------------------------


@pytest.mark.parametrize("local_dp", [None, LOCAL_DP], ids=["plain", "local-dp"])
async def test_aggregator_restarted_after_submission_does_not_submit_again(
    stacks: list[FlameStack], data_root: Path, local_dp: dict[str, float] | None
) -> None:
    stack = FlameStack.create(3, data_root=data_root, settings=StackSettings.fast(po_enabled=False))
    stacks.append(stack)
    restarts = restart_when(stack, "aggregator", after_submission_local_upload(stack))
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0)
    if local_dp is not None:
        options = options.with_changes(local_dp=local_dp)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS)
    await asyncio.gather(*restarts)
    assert restarts, "the aggregator was not restarted after the submission"
    assert run.outcomes["aggregator"].incarnations == 2
    [submitted] = submissions(stack)
    assert submitted.detail["localdp"] is (local_dp is not None)
    assert run.outcomes["aggregator"].status == "executed", run.report()
    results = await stack.final_results()
    assert len(results) == 1
    value = float(next(iter(results.values())).decode())
    if local_dp is None:
        assert value == expected_total([ALL3] * 2)
    else:
        assert math.isfinite(value)


async def test_restart_during_plain_submission_resends_the_same_bytes_under_the_same_name(
    stacks: list[FlameStack], data_root: Path
) -> None:
    stack = FlameStack.create(3, data_root=data_root, settings=StackSettings.fast(po_enabled=False))
    stacks.append(stack)
    # cut off the moment the hub has the result, before the aggregator could record that it does
    restarts = restart_when(stack, "aggregator", lambda e: e.kind == "storage.final")
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS)
    await asyncio.gather(*restarts)
    assert run.outcomes["aggregator"].incarnations == 2
    assert run.outcomes["aggregator"].status == "executed", run.report()
    sent = submissions(stack)
    assert 1 <= len(sent) <= 2
    assert {(e.detail["filename"], e.detail["size"]) for e in sent} == {
        (sent[0].detail["filename"], sent[0].detail["size"])
    }
    results = await stack.final_results()
    assert list(results) == [sent[0].detail["filename"]]
    assert int(results[sent[0].detail["filename"]].decode()) == expected_total([ALL3] * 2)


async def test_restart_during_local_dp_submission_never_draws_new_noise(
    stacks: list[FlameStack], data_root: Path
) -> None:
    stack = FlameStack.create(3, data_root=data_root, settings=StackSettings.fast(po_enabled=False))
    stacks.append(stack)
    restarts = restart_when(stack, "aggregator", lambda e: e.kind == "storage.final")
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0, local_dp=LOCAL_DP)
    run = await run_federation(stack, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS)
    await asyncio.gather(*restarts)
    assert run.outcomes["aggregator"].incarnations == 2
    [submitted] = submissions(stack)
    assert submitted.detail["localdp"] is True
    outcome = run.outcomes["aggregator"]
    assert outcome.status == "failed"
    assert "local DP" in (outcome.error or "") and "not sent again" in (outcome.error or "")


def test_local_dp_option_is_checked() -> None:
    with pytest.raises(flame.errors.ConfigurationError, match="local_dp"):
        FederationOptions(local_dp={"epsilon": 0.0, "sensitivity": 1.0})
    with pytest.raises(flame.errors.ConfigurationError, match="local_dp"):
        FederationOptions(local_dp={"eps": 1.0})


# -- finding 12: nothing outlives the analysis -------------------------------------------------------

SECRETS = {"node-1": 1111.123456789, "node-2": -2222.987654321, "node-3": 3333.55555}


class SecretValue(flame.Analyzer):
    """Sends a value only its node knows under encryption, plus a plain count."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        value = float(data.dataframe("secret.csv")["value"].iloc[0])
        return {"secret": np.array([value, value / 7.0]), "plain": 1}


class SumOfSecrets(flame.Aggregator):
    fail_in_round: int | None = None

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        assert isinstance(updates, SecureUpdates)
        if round == self.fail_in_round:
            raise ValueError("the aggregator's code failed")
        return {"secret": total(updates, "secret").tolist(), "plain": total(updates, "plain")}


class FailingSumOfSecrets(SumOfSecrets):
    fail_in_round = 2


def secret_data(root: Path) -> Path:
    for name, value in SECRETS.items():
        (root / name / "s3").mkdir(parents=True)
        pd.DataFrame({"value": [value]}).to_csv(root / name / "s3" / "secret.csv", index=False)
    return root


async def everything_readable(stack: FlameStack) -> dict[str, list[bytes]]:
    """Every object each node of ``stack`` can reach in its node storage: tag -> contents."""
    found: dict[str, list[bytes]] = {}
    for name, node in stack.nodes.items():
        auth = {"Authorization": f"Bearer {node.token}"}
        async with stack.client(name) as client:
            tags = (await client.get("/storage/local/tags", headers=auth)).json()["tags"]
            for tag in tags:
                listed = await client.get(f"/storage/local/tags/{tag['name']}", headers=auth)
                for result in listed.json()["results"]:
                    object_id = result["url"].rsplit("/", 1)[-1]
                    response = await client.get(f"/storage/local/{object_id}", headers=auth)
                    assert response.status_code == 200
                    found.setdefault(tag["name"], []).append(response.content)
    return found


def leaks(blobs: dict[str, list[bytes]], key_shares: list[int]) -> list[str]:
    """What of the secrets shows in the objects: a key share, a node's value (in any encoding)."""
    needles: dict[str, bytes] = {}
    for prime, label in ((share, f"share {i + 1}") for i, share in enumerate(key_shares)):
        raw = prime.to_bytes((prime.bit_length() + 7) // 8, "big")
        needles[f"prime {label}"] = raw[:24]
        needles[f"prime {label} (little-endian)"] = raw[::-1][:24]
        needles[f"prime {label} (decimal)"] = str(prime).encode()[:40]
    for name, value in SECRETS.items():
        for which, number in (("value", value), ("value / 7", value / 7.0)):
            needles[f"{name}'s {which} as float64 le"] = struct.pack("<d", number)
            needles[f"{name}'s {which} as float64 be"] = struct.pack(">d", number)
            needles[f"{name}'s {which} as text"] = repr(number).encode()
    return [
        f"{label} in an object under {tag}"
        for tag, contents in blobs.items()
        for blob in contents
        for label, needle in needles.items()
        if needle in blob
    ]


async def run_then_snoop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aggregator: type[flame.Aggregator]
) -> tuple[FederationRun, dict[str, list[bytes]], list[int]]:
    """Analysis A (secure, checkpoints), then analysis B of the same project on the same storage."""
    holders: list[KeyHolder] = []
    original_init = KeyHolder.__init__

    def recording_init(self: KeyHolder, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        holders.append(self)

    monkeypatch.setattr(KeyHolder, "__init__", recording_init)
    root = secret_data(tmp_path / "data")
    backend = backends.LocalFolderBackend(tmp_path / "storage")
    project = "11111111-2222-4333-8444-555555555555"
    options = FederationOptions(
        max_rounds=3,
        round_deadline=10.0,
        send_timeout=10.0,
        secure=SecureAggregation(
            ("secret",), key_bits=2048, layout=paillier.Layout(frac_bits=20, bound=2**13)
        ),
    )
    settings = StackSettings.fast(po_enabled=False)
    try:
        async with FlameStack.create(
            3, data_root=root, project_id=project, storage_backend=backend, settings=settings, seed=1
        ) as first:
            run = await Federation(first, SecretValue, aggregator, options).run(timeout=60)
            mine = await everything_readable(first)
        async with FlameStack.create(
            3, data_root=root, project_id=project, storage_backend=backend, settings=settings, seed=2
        ) as second:
            assert second.analysis_id != first.analysis_id
            seen = await everything_readable(second)
    finally:
        await backend.aclose()
    # the analysis did keep a key and checkpoints (on the key holder, node-1), and B sees the same tags
    assert any(tag.startswith("pk-") for tag in mine) and any(tag.startswith("ck-") for tag in mine)
    assert set(seen) == set(mine)
    return run, seen, [int(h.decryptor.share._s) for h in holders if h.decryptor is not None]


async def test_a_later_analysis_finds_no_key_and_no_plaintext_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, seen, private_key = await run_then_snoop(tmp_path, monkeypatch, SumOfSecrets)
    assert run.ok, run.report()
    assert run.result["secret"][0] == pytest.approx(sum(SECRETS.values()), abs=1e-4)
    assert leaks(seen, private_key) == []


async def test_a_later_analysis_finds_nothing_of_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, seen, private_key = await run_then_snoop(tmp_path, monkeypatch, FailingSumOfSecrets)
    assert run.outcomes["aggregator"].status == "failed"
    assert leaks(seen, private_key) == []


async def test_a_later_analysis_cannot_read_the_aggregators_exact_local_dp_value(
    stacks: list[FlameStack], data_root: Path, tmp_path: Path
) -> None:
    # the aggregator's checkpoints hold the exact final value that local DP noises on its way to the hub
    backend = backends.LocalFolderBackend(tmp_path / "storage")
    project = "11111111-2222-4333-8444-555555555555"
    settings = StackSettings.fast(po_enabled=False)
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0, local_dp=LOCAL_DP)
    exact = expected_total([ALL3] * 2)
    try:
        first = FlameStack.create(
            3, data_root=data_root, project_id=project, storage_backend=backend, settings=settings, seed=1
        )
        stacks.append(first)
        run = await run_federation(
            first, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS
        )
        assert run.ok, run.report()
        assert run.result == exact
        second = FlameStack.create(
            3, data_root=data_root, project_id=project, storage_backend=backend, settings=settings, seed=2
        )
        stacks.append(second)
        seen = await everything_readable(second)
    finally:
        for stack in stacks:
            await stack.aclose()
        stacks.clear()
        await backend.aclose()
    assert any(tag.startswith("ck-") for tag in seen)
    numbers = [value for blobs in seen.values() for blob in blobs for value in _decoded_numbers(blob)]
    assert exact not in numbers
    assert all(expected_total([ALL3]) != n for n in numbers)


def _decoded_numbers(blob: bytes) -> list[Any]:
    """Every number in an object that decodes with the codec (nothing for one that does not)."""
    from flame import codec

    try:
        value = codec.decode(blob)
    except flame.errors.PayloadError:
        return []
    found: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            found.append(item)
    return found


async def test_aggregator_restarted_after_the_end_with_every_analysis_node_gone_does_not_submit_again(
    stacks: list[FlameStack], data_root: Path, tmp_path: Path
) -> None:
    backend = backends.LocalFolderBackend(tmp_path / "storage")
    project = "11111111-2222-4333-8444-555555555555"
    settings = StackSettings.fast(po_enabled=False)
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=2.0)
    try:
        first = FlameStack.create(
            3, data_root=data_root, project_id=project, storage_backend=backend, settings=settings, seed=1
        )
        stacks.append(first)
        run = await run_federation(
            first, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS
        )
        assert run.ok, run.report()
        # a new pod of the same analysis' aggregator, after the analysis nodes' pods were deleted: nobody
        # can hand back the key of its checkpoints, but its marker says the hub has the result
        gone = [NodeOffline(name, 0.0, math.inf) for name in ALL3]
        again = FlameStack.create(
            3,
            data_root=data_root,
            project_id=project,
            storage_backend=backend,
            settings=settings,
            analysis_id=first.analysis_id,
            faults=FaultPlan(gone),
        )
        stacks.append(again)
        federation = Federation(
            again, SumAnalyzer, SumAggregator, options, node_kwargs={"timeouts": FAST_TIMEOUTS}
        )
        rerun = await federation.run(timeout=30)
    finally:
        for stack in stacks:
            await stack.aclose()
        stacks.clear()
        await backend.aclose()
    assert rerun.outcomes["aggregator"].status == "executed", rerun.report()
    assert rerun.rounds == []
    assert submissions(again) == []


# -- sealed records: bound to analysis, node and kind; forged and replayed ones lose ----------------


class _Node:
    """Just what :class:`Checkpoints` reads of a node without touching storage."""

    def __init__(self, analysis_id: str, node_id: str) -> None:
        self.config = type("Config", (), {"analysis_id": analysis_id})()
        self.node_id = node_id


def test_sealed_records_open_only_for_their_analysis_node_and_kind() -> None:
    from flame.federated import checkpoint

    analysis, other = "a" * 8, "b" * 8
    key = checkpoint.derive_key("kong-secret", analysis, "node-1", "checkpoint")
    assert key != checkpoint.derive_key("kong-secret", other, "node-1", "checkpoint")
    assert key != checkpoint.derive_key("kong-secret", analysis, "node-2", "checkpoint")
    assert key != checkpoint.derive_key("other-secret", analysis, "node-1", "checkpoint")
    sealer = checkpoint.Sealer(key, analysis, "node-1")
    record = sealer.seal("checkpoint", {"round": 3, "seq": 1})
    assert b"round" not in record["sealed"]
    assert sealer.open(record, "checkpoint") == {"round": 3, "seq": 1}
    assert sealer.open(record, "paillier") is None  # another purpose
    assert (
        checkpoint.Sealer(key, analysis, "node-2").open({**record, "node_id": "node-2"}, "checkpoint") is None
    )
    assert (
        checkpoint.Sealer(key, other, "node-1").open({**record, "analysis_id": other}, "checkpoint") is None
    )
    tampered = {**record, "sealed": bytes([record["sealed"][0] ^ 1]) + record["sealed"][1:]}
    assert sealer.open(tampered, "checkpoint") is None
    forged = checkpoint.Sealer(bytes(32), analysis, "node-1").seal("checkpoint", {"round": 9, "seq": 99})
    assert sealer.open(forged, "checkpoint") is None


def test_the_newest_authentic_checkpoint_wins_over_forged_and_replayed_ones() -> None:
    from flame.federated import checkpoint

    key = checkpoint.derive_key("kong-secret", "analysis", "node-1", "checkpoint")
    sealer = checkpoint.Sealer(key, "analysis", "node-1")
    store = checkpoint.Checkpoints(_Node("analysis", "node-1"), sealer)  # type: ignore[arg-type]
    first = sealer.seal("checkpoint", {"round": 1, "seq": 1})
    second = sealer.seal("checkpoint", {"round": 2, "seq": 2})
    forged = checkpoint.Sealer(bytes(32), "analysis", "node-1").seal("checkpoint", {"round": 7, "seq": 50})
    # listed in tagging order: a replay of the first record and a forgery come after the newest
    newest = store.newest([first, second, forged, dict(first), {"garbage": True}])
    assert newest is not None and newest["round"] == 2
    assert store.seq == 2
    assert store.newest([]) is None


def test_the_aggregator_key_unwraps_only_with_the_holders_escrow_key() -> None:
    from flame.federated import checkpoint

    key = bytes(range(32))
    escrow = checkpoint.derive_key("kong-of-node-1", "analysis", "node-1>aggregator", "escrow")
    wrapped = checkpoint.wrap(key, escrow, "analysis", "aggregator", "node-1")
    records = [wrapped]
    assert checkpoint.wrap_holders(records) == ["node-1"]
    assert checkpoint.unwrap(records, escrow, "analysis", "aggregator", "node-1") == key
    assert checkpoint.unwrap(records, escrow, "analysis", "aggregator", "node-2") is None
    assert checkpoint.unwrap(records, bytes(32), "analysis", "aggregator", "node-1") is None
    assert checkpoint.unwrap(records, escrow, "later-analysis", "aggregator", "node-1") is None
    assert checkpoint.parse_key(escrow.hex()) == escrow
    assert checkpoint.parse_key("zz" * 32) is None and checkpoint.parse_key(escrow.hex()[:-2]) is None


async def test_a_re_executed_aggregator_without_checkpoints_does_not_submit_again(
    stacks: list[FlameStack], data_root: Path, tmp_path: Path
) -> None:
    # checkpoints off: every pod of the analysis runs the rounds from the start, but the marker that
    # the hub has the final result stops the second submission
    backend = backends.LocalFolderBackend(tmp_path / "storage")
    project = "11111111-2222-4333-8444-555555555555"
    settings = StackSettings.fast(po_enabled=False)
    options = FederationOptions(max_rounds=2, round_deadline=5.0, send_timeout=5.0, checkpoints=False)
    try:
        first = FlameStack.create(
            3, data_root=data_root, project_id=project, storage_backend=backend, settings=settings, seed=1
        )
        stacks.append(first)
        run = await run_federation(
            first, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS
        )
        assert run.ok, run.report()
        assert len(submissions(first)) == 1
        again = FlameStack.create(
            3,
            data_root=data_root,
            project_id=project,
            storage_backend=backend,
            settings=settings,
            analysis_id=first.analysis_id,
        )
        stacks.append(again)
        rerun = await run_federation(
            again, SumAnalyzer, SumAggregator, options, timeout=30, timeouts=FAST_TIMEOUTS
        )
    finally:
        for stack in stacks:
            await stack.aclose()
        stacks.clear()
        await backend.aclose()
    assert rerun.ok, rerun.report()
    assert [r["round"] for r in rerun.rounds] == [1, 2]
    assert submissions(again) == []


@pytest.mark.parametrize("restart_at", [5, 3], ids=["after-round-2", "before-the-first-checkpoint"])
async def test_secure_run_resumes_after_an_aggregator_restart_with_its_key_from_escrow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, restart_at: int
) -> None:
    # the aggregator's sealed checkpoints open only with an escrow key an analysis node hands back
    root = secret_data(tmp_path / "data")
    options = FederationOptions(
        max_rounds=3,
        round_deadline=10.0,
        send_timeout=10.0,
        secure=SecureAggregation(
            ("secret",), key_bits=2048, layout=paillier.Layout(frac_bits=20, bound=2**13)
        ),
    )
    stack = FlameStack.create(3, data_root=root, settings=StackSettings.fast(po_enabled=False))
    checkpoints = 0

    def second_checkpoint(event: Event) -> bool:
        nonlocal checkpoints
        if (
            event.kind == "storage.upload"
            and event.node == "aggregator"
            and str(event.detail.get("tag") or "").startswith("ck-")
        ):
            checkpoints += 1
        # round 1: the key wrapped for each of the three contributors, then the checkpoint; round 2's
        # checkpoint is the fifth upload. The third comes after round 1 was decrypted: the new pod
        # redoes round 1, and the key holder decrypts only the very same sums again, so the nodes must
        # resend the very same ciphertexts
        return checkpoints >= restart_at

    restarts = restart_when(stack, "aggregator", second_checkpoint)
    async with stack:
        with caplog.at_level("INFO"):
            run = await Federation(
                stack, SecretValue, SumOfSecrets, options, node_kwargs={"timeouts": FAST_TIMEOUTS}
            ).run(timeout=60)
        await asyncio.gather(*restarts)
    assert restarts
    assert run.ok, run.report()
    assert run.outcomes["aggregator"].incarnations == 2
    assert any("asking 3 analysis node(s) for the key of the checkpoints" in m for m in caplog.messages)
    if restart_at == 5:
        assert any(m.startswith("resumed from the checkpoint after round") for m in caplog.messages)
    assert run.result["secret"][0] == pytest.approx(sum(SECRETS.values()), abs=1e-4)
    assert len(submissions(stack)) == 1

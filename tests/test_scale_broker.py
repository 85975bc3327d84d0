"""The emulated broker at scale: webhook POSTs under way at once are bounded, and the ones waiting for a
slot are delivered, not timed out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from flame.sim import broker as broker_module
from flame.sim.settings import StackSettings
from tests.test_sim_broker import Recorder, attach_recorder, envelope, send

SETTINGS = StackSettings.fast(po_enabled=False, delivery_timeout=200.0)


async def test_deliveries_beyond_the_bound_wait_for_a_slot_and_arrive(
    make_stack: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "MAX_DELIVERIES_IN_FLIGHT", 4)
    harness = await make_stack(2, settings=SETTINGS)
    recorder = Recorder(hang=True)
    await attach_recorder(harness, "aggregator", recorder, times=20)  # one message: 20 deliveries
    answer = await send(harness, "node-1", ["aggregator"], envelope("to every subscription"))
    assert answer.status_code == 202
    await recorder.wait(4)
    await asyncio.sleep(0.3)  # what would arrive without the bound has had time to
    assert len(recorder.requests) == 4
    recorder.release.set()
    await recorder.wait(20)
    await harness.stack.broker.quiesce(10.0)
    assert len(recorder.delivered) == 20
    events = harness.stack.events
    assert len(events.select("delivery.ok")) == 20 and not events.select("delivery.dropped")

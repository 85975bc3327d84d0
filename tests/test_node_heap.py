"""While nodes run, their start-up objects are exempt from the cycle collector's full collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from flame.node import heap
from flame.sim.launch import start_node
from flame.sim.settings import StackSettings
from flame.sim.stack import FlameStack


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def fresh_heap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No running nodes and no frozen objects, before and after (whatever earlier tests left)."""
    monkeypatch.setattr(heap, "_running", 0)
    monkeypatch.setattr(heap, "_froze", False)
    gc.unfreeze()
    yield
    gc.unfreeze()


def _in_collected_generations(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_objects_of_start_up_are_exempt_while_nodes_run_and_collected_again_after(fresh_heap: None) -> None:
    before = _Cycle()
    heap.node_started()
    assert gc.get_freeze_count() > 0
    assert not _in_collected_generations(before)
    second = _Cycle()
    heap.node_started()  # a second node of the same process: what its start-up made is exempt too
    assert not _in_collected_generations(second)
    del second
    # what is made while nodes run is collected as before
    later = _Cycle()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None
    heap.node_stopped()
    assert gc.get_freeze_count() > 0  # one node still runs
    heap.node_stopped()
    assert gc.get_freeze_count() == 0
    assert _in_collected_generations(before)
    # garbage left from before the first start is reclaimed once the last node stopped
    left = weakref.ref(before)
    del before
    gc.collect()
    assert left() is None


def test_a_disabled_collector_or_a_freeze_made_by_the_program_is_left_alone(fresh_heap: None) -> None:
    gc.disable()
    try:
        heap.node_started()
        assert gc.get_freeze_count() == 0
        heap.node_stopped()
    finally:
        gc.enable()
    gc.freeze()
    kept = object.__new__(type("Kept", (), {}))  # made after the program's freeze: not frozen by it
    heap.node_started()
    assert not heap._froze and _in_collected_generations(kept)  # no freeze of the heap's own
    heap.node_stopped()
    # the program's own freeze stays (its count may shrink: frozen objects can still be freed)
    assert gc.get_freeze_count() > 0


async def test_a_started_node_holds_the_freeze_until_it_stops(fresh_heap: None) -> None:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    await stack.start()
    try:
        node = await start_node(stack, "node-1", "inprocess")
        try:
            assert heap.running_nodes() == 1
            assert gc.get_freeze_count() > 0
        finally:
            await node.stop()
        assert heap.running_nodes() == 0
        assert gc.get_freeze_count() == 0
        await node.stop()  # stopping twice counts once
        assert heap.running_nodes() == 0
    finally:
        await stack.aclose()

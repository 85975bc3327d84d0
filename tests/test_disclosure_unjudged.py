"""What the checks cannot see into does not leave unjudged: objects of unknown types are refused in
enforce mode, object-dtype and structured arrays are looked into, and a final result for output type
``str`` is judged as the text that leaves too."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flame.disclosure import DisclosureGuard, DisclosurePolicy, dp
from flame.errors import DisclosureRefusedError
from flame.sim import FlameStack, StackSettings
from flame.sim.launch import start_node

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


@dataclasses.dataclass
class Wrapper:
    x: Any


def patients(rows: int = 100) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"P{i:05d}" for i in range(rows)], "age": range(rows)})


def guard(mode: str = "enforce") -> DisclosureGuard:
    g = DisclosureGuard(DisclosurePolicy(mode=mode))  # type: ignore[arg-type]
    g.observe_frame(patients())
    return g


async def test_an_object_of_an_unknown_type_is_refused_in_enforce_mode() -> None:
    g = guard()
    with pytest.raises(DisclosureRefusedError) as refused:
        await g.release({"model": Wrapper(patients())}, channel="final", destination=["hub"])
    assert (refused.value.rule, refused.value.path) == ("uninspectable", "final.model")
    assert g.records[-1].outcome == "refused"


async def test_an_object_of_an_unknown_type_is_only_warned_about_in_warn_mode() -> None:
    g = guard("warn")
    value = Wrapper(3)
    assert await g.release(value, channel="final", destination=["hub"]) is value
    assert g.records[-1].outcome == "warned"


async def test_a_dp_request_inside_an_object_array_is_drawn_and_charged() -> None:
    g = guard()
    request = dp.laplace(42.0, epsilon=1, sensitivity=1)
    out = await g.release(np.array([request, "label"], dtype=object), channel="final", destination=["hub"])
    assert not isinstance(out[0], dp.DPRequest) and isinstance(out[0], float)
    assert out[1] == "label"
    assert g.records[-1].epsilon == 1.0


async def test_an_object_array_is_judged_element_by_element() -> None:
    g = guard()
    with pytest.raises(DisclosureRefusedError, match="rule uninspectable"):
        await g.release(np.array([Wrapper(1), 2], dtype=object), channel="final", destination=["hub"])
    with pytest.raises(DisclosureRefusedError, match="rule identifier-value"):
        await g.release(np.array([{"who": "P00007"}, 2], dtype=object), channel="final", destination=["hub"])


async def test_a_structured_array_is_judged_by_its_fields() -> None:
    g = guard()
    rows = patients(8).to_records(index=False)  # fewer rows than row-level: its fields are judged
    with pytest.raises(DisclosureRefusedError, match="rule identifier-column"):
        await g.release({"rows": rows}, channel="final", destination=["hub"])


@pytest.fixture
async def stack() -> AsyncIterator[FlameStack]:
    stack = FlameStack.create(1, data_root=DATA, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        yield stack


async def test_a_final_result_for_output_type_str_is_judged_as_its_text(stack: FlameStack) -> None:
    node = await start_node(stack, "node-1")
    try:
        assert node.data is not None
        frame = await node.data.kong.s3_dataframe((await node.data.s3_sources())[0].name, "patients.csv")
        records = node.disclosure.local.records
        # a string of one line per record: row-level as text
        lines = "\n".join(f"{a}" for a in frame["age"][:records])
        with pytest.raises(DisclosureRefusedError, match="rule row-level"):
            await node.results.submit_final(lines, output_type="str")
        assert list(await stack.final_results()) == []
        # honest results still leave
        await node.results.submit_final(
            {"mean_age": float(frame["age"].mean()), "n": len(frame)}, filename="ok.txt"
        )
        assert list(await stack.final_results()) == ["ok.txt"]
    finally:
        await node.stop()

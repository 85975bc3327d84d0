"""Final and local results through a node runtime, against the emulated stack."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from flame import codec
from flame.errors import PayloadError, StorageArgumentError
from flame.federated import Aggregator, FederationOptions
from flame.node.results import EXTENSIONS, Results, result_to_jsonable, serialise
from flame.sim import FlameStack, StackSettings
from flame.sim.backends import LocalFolderBackend
from flame.sim.federation import run_federation
from flame.sim.launch import start_node


@pytest.fixture
async def stack(mode: str) -> AsyncIterator[FlameStack]:
    stack = FlameStack.create(1, settings=StackSettings.fast(po_enabled=False))
    async with stack:
        if mode == "served":
            await stack.serve()
        yield stack


async def test_final_results_in_every_output_type(stack: FlameStack, mode: str) -> None:
    node = await start_node(stack, "aggregator", mode)  # type: ignore[arg-type]
    try:
        results = Results(node.storage)
        assert await results.submit_final({"mean": 4.5}, filename="a.txt") == ["a.txt"]
        await results.submit_final(b"\x00raw", output_type="bytes", filename="b.bin")
        await results.submit_final(np.arange(4), output_type="codec", filename="c.flame")
        await results.submit_final([1, 2], output_type="pickle", filename="d.pkl")
        names = await results.submit_final(["x", "y", "z"], multiple_results=True, filename="part.txt")
        assert names == ["part_1.txt", "part_2.txt", "part_3.txt"]
        [default] = await results.submit_final(7)
        assert default.startswith("result_") and default.endswith(".txt")
        final = await stack.final_results()
        assert final["a.txt"] == b"{'mean': 4.5}"
        assert final["b.bin"] == b"\x00raw"
        assert np.array_equal(codec.decode(final["c.flame"]), np.arange(4))
        assert pickle.loads(final["d.pkl"]) == [1, 2]
        assert [final[n] for n in names] == [b"x", b"y", b"z"]
        assert final[default] == b"7"
    finally:
        await node.stop("executed")


async def test_local_dp_final_result_is_noised_and_checked(stack: FlameStack, mode: str) -> None:
    node = await start_node(stack, "aggregator", mode)  # type: ignore[arg-type]
    try:
        results = Results(node.storage)
        [name] = await results.submit_final(100.0, local_dp={"epsilon": 1.0, "sensitivity": 1.0})
        value = float((await stack.final_results())[name])
        assert value != 100.0 and abs(value - 100.0) < 60
        with pytest.raises(PayloadError, match="one finite number"):
            await results.submit_final([1, 2], local_dp={"epsilon": 1.0, "sensitivity": 1.0})
        with pytest.raises(PayloadError, match="epsilon"):
            await results.submit_final(1.0, local_dp={"eps": 1.0})
    finally:
        await node.stop("executed")


def test_serialise_refuses_non_bytes_for_bytes_output() -> None:
    with pytest.raises(PayloadError, match="needs bytes"):
        serialise("text", "bytes")
    with pytest.raises(PayloadError, match="unknown output_type"):
        serialise("text", "xml")  # type: ignore[arg-type]


async def test_tagged_local_results_are_old_information_for_the_next_analysis_of_the_project(
    tmp_path: Path, mode: str
) -> None:
    backend = LocalFolderBackend(tmp_path)
    settings = StackSettings.fast(po_enabled=False)
    first = FlameStack.create(1, settings=settings, storage_backend=backend, seed=1)
    async with first:
        if mode == "served":
            await first.serve()
        node = await start_node(first, "node-1", mode)  # type: ignore[arg-type]
        results = Results(node.storage)
        await results.save_local({"round": 1, "weights": np.ones(3)}, tag="model-v1")
        await results.save_local({"round": 2, "weights": np.full(3, 2.0)}, tag="model-v1")
        with pytest.raises(StorageArgumentError):
            await results.save_local({}, tag="Bad Tag!")
        await node.stop("executed")
    second = FlameStack.create(
        1, settings=settings, storage_backend=backend, seed=2, project_id=first.project_id
    )
    other = FlameStack.create(1, settings=settings, storage_backend=backend, seed=3)
    async with second, other:
        assert second.analysis_id != first.analysis_id
        if mode == "served":
            await second.serve()
            await other.serve()
        node = await start_node(second, "node-1", mode)  # type: ignore[arg-type]
        results = Results(node.storage)
        assert "model-v1" in await results.tags()
        [last] = await results.load_tagged("model-v1", "last")
        assert last["round"] == 2 and np.array_equal(last["weights"], np.full(3, 2.0))
        assert [r["round"] for r in await results.load_tagged("model-v1")] == [1, 2]
        await node.stop("executed")
        stranger = await start_node(other, "node-1", mode)  # type: ignore[arg-type]
        assert await Results(stranger.storage).tags() == []
        await stranger.stop("executed")
    await backend.aclose()


def _frame(rows: int = 200) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "site": [f"node-{i % 3 + 1}" for i in range(rows)],
            "age": np.arange(rows, dtype=float) + 0.5,
            "n": np.arange(rows, dtype=np.int64),
        }
    )


async def test_tables_reach_the_hub_whole_as_csv_parquet_json_and_text(stack: FlameStack, mode: str) -> None:
    node = await start_node(stack, "aggregator", mode)  # type: ignore[arg-type]
    frame = _frame()
    try:
        results = Results(node.storage)
        [csv_name] = await results.submit_final(frame, output_type="csv")
        [parquet_name] = await results.submit_final(frame, output_type="parquet")
        [json_name] = await results.submit_final({"table": frame, "total": np.int64(3)}, output_type="json")
        assert await results.submit_final(frame, output_type="str", filename="table.txt") == ["table.txt"]
        assert csv_name.endswith(".csv") and parquet_name.endswith(".parquet") and json_name.endswith(".json")
        final = await stack.final_results()
        pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(final[csv_name])), frame)
        pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(final[parquet_name])), frame)
        loaded = json.loads(final[json_name])
        assert loaded["total"] == 3 and len(loaded["table"]) == 200
        pd.testing.assert_frame_equal(pd.DataFrame.from_records(loaded["table"]), frame)
        text = final["table.txt"].decode()
        assert "..." not in text and len(text.splitlines()) == 201  # header and every row, no shortened repr
    finally:
        await node.stop("executed")


def test_csv_and_parquet_keep_a_meaningful_index_and_accept_records() -> None:
    counts = pd.Series([4, 7], index=pd.Index(["f", "m"], name="sex"), name="count")
    assert serialise(counts, "csv").decode().splitlines() == ["sex,count", "f,4", "m,7"]
    back = pd.read_parquet(io.BytesIO(serialise(counts, "parquet")))
    assert back["count"].to_dict() == {"f": 4, "m": 7}
    records = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert serialise(records, "csv").decode().splitlines() == ["a,b", "1,x", "2,y"]
    assert serialise({"a": [1, 2], "b": [3, 4]}, "csv").decode().splitlines() == ["a,b", "1,3", "2,4"]


def test_a_result_the_type_cannot_hold_is_refused_with_what_would_do() -> None:
    with pytest.raises(PayloadError, match=r"needs a table .* got float; use 'json'"):
        serialise(4.5, "csv")
    with pytest.raises(PayloadError, match="needs a table"):
        serialise({"a": [1, 2], "b": [3]}, "parquet")
    with pytest.raises(PayloadError, match=r"result\.blob: a bytes cannot be written as JSON.*'codec'"):
        serialise({"blob": b"\x00"}, "json")
    with pytest.raises(PayloadError, match=r"result\[1\]\.x: a object cannot be written as JSON"):
        serialise([1, {"x": object()}], "json")


def test_result_to_jsonable_turns_tables_and_numpy_into_plain_json() -> None:
    frame = pd.DataFrame({"x": [1.0, float("nan")], "when": pd.to_datetime(["2024-01-02", None])})
    value = {
        "frame": frame,
        "series": pd.Series({"a": np.float32(0.5)}),
        "array": np.arange(4).reshape(2, 2),
        "scalars": (np.int16(3), np.bool_(True), float("inf")),
        1: {"nested": {2.5}},
    }
    assert result_to_jsonable(value) == {
        "frame": [{"x": 1.0, "when": "2024-01-02T00:00:00"}, {"x": None, "when": None}],
        "series": {"a": 0.5},
        "array": [[0, 1], [2, 3]],
        "scalars": [3, True, None],
        "1": {"nested": [2.5]},
    }
    json.dumps(result_to_jsonable(value), allow_nan=False)  # valid strict JSON
    indexed = pd.DataFrame({"n": [5, 6]}, index=pd.Index(["a", "b"], name="site"))
    assert result_to_jsonable(indexed) == [{"site": "a", "n": 5}, {"site": "b", "n": 6}]


class _TableAggregator(Aggregator):
    """One row per contributing node: the hub gets a table."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any | None) -> Any:
        rows = sorted((u["node"], u["value"]) for u in updates.values())
        return pd.DataFrame(rows, columns=["node", "value"])


@pytest.mark.parametrize("output_type", ["csv", "parquet", "json"])
async def test_a_federation_submits_a_dataframe_as_a_table(tmp_path: Path, output_type: str) -> None:
    from tests.test_federation import FAST_TIMEOUTS, SumAnalyzer, write_sum_data

    stack = FlameStack.create(
        3, data_root=write_sum_data(tmp_path), settings=StackSettings.fast(po_enabled=False)
    )
    options = FederationOptions(max_rounds=1, round_deadline=5.0, output_type=output_type)  # type: ignore[arg-type]
    async with stack:
        run = await run_federation(
            stack, SumAnalyzer, _TableAggregator, options, timeout=20, timeouts=FAST_TIMEOUTS
        )
        assert run.ok, run.report()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stack.app), base_url="http://stack"
        ) as hub:
            [listed] = (await hub.get(f"/_sim/final/{stack.analysis_id}")).json()["results"]
            assert listed["filename"].endswith(EXTENSIONS[output_type])
            raw = (await hub.get(f"/_sim/final/{stack.analysis_id}/{listed['filename']}")).content
    expected = pd.DataFrame({"node": ["node-1", "node-2", "node-3"], "value": [6, 30, 400]})
    if output_type == "csv":
        table = pd.read_csv(io.BytesIO(raw))
    elif output_type == "parquet":
        table = pd.read_parquet(io.BytesIO(raw))
    else:
        table = pd.DataFrame.from_records(json.loads(raw))
    pd.testing.assert_frame_equal(table, expected)


def test_a_text_result_without_pandas_objects_does_not_import_pandas() -> None:
    # pandas (with pyarrow) takes about 0.4 s to import: a plain result must not pay that at submission
    code = (
        "import sys\n"
        "from flame.node.results import serialise\n"
        "assert serialise({'n': [1, 2]}, 'str') == b\"{'n': [1, 2]}\"\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    frame = pd.DataFrame({"x": range(100)})
    assert serialise(frame, "str").decode() == frame.to_string()

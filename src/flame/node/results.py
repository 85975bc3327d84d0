"""Results in node storage: final results for the hub, and local results reused across analyses.

Final results go to the hub, where the analyst downloads them (``PUT /final``, or ``/final/localdp``
for one number with local differential privacy). Local results stay on the node, project-scoped and
findable by tag, so a later analysis of the same project can load them: the "old information".
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from flame import codec
from flame.clients.storage import LocalRef, StorageClient, TagOption, default_filename
from flame.errors import PayloadError

if TYPE_CHECKING:
    from flame.disclosure.guard import DisclosureGuard

OutputType = Literal["str", "bytes", "pickle", "codec", "json", "csv", "parquet"]
EXTENSIONS: dict[str, str] = {
    "str": ".txt",
    "bytes": ".bin",
    "pickle": ".pkl",
    "codec": ".flame",
    "json": ".json",
    "csv": ".csv",
    "parquet": ".parquet",
}
OUTPUT_TYPES: tuple[str, ...] = tuple(EXTENSIONS)


def serialise(result: Any, output_type: OutputType) -> bytes:
    """The bytes of ``result`` as a final-result file of ``output_type``.

    ``str``: ``str(result)`` as UTF-8, a DataFrame or Series in full (never pandas' shortened repr);
    ``bytes``: the bytes as they are; ``codec``: :mod:`flame.codec`; ``json``: :func:`result_to_jsonable`
    as UTF-8 JSON (tables as lists of records); ``csv``/``parquet``: a table (DataFrame, Series, a list
    of records or a dict of equal-length columns; Parquet needs the ``parquet`` extra, pyarrow);
    ``pickle``: for analysts whose tools expect it (PrivateAIM's SDK offers it); it leaves the node
    only towards the hub, never to another node. A result the chosen type cannot hold raises
    :class:`~flame.errors.PayloadError` saying what would.
    """
    if output_type == "str":
        return _text(result).encode()
    if output_type == "bytes":
        if not isinstance(result, bytes | bytearray | memoryview):
            raise PayloadError(
                f"output_type 'bytes' needs bytes, got {type(result).__name__}; use 'str', 'json' or 'codec'"
            )
        return bytes(result)
    if output_type == "codec":
        return codec.encode(result)
    if output_type == "pickle":
        return pickle.dumps(result, protocol=5)
    if output_type == "json":
        return json.dumps(result_to_jsonable(result), ensure_ascii=False, allow_nan=False).encode()
    if output_type == "csv":
        frame = _table(result, "csv")
        return str(frame.to_csv(index=_keeps_index(frame))).encode()
    if output_type == "parquet":
        return _parquet(_table(result, "parquet"))
    raise PayloadError(f"unknown output_type {output_type!r}; one of {', '.join(OUTPUT_TYPES)}")


def result_to_jsonable(obj: Any, *, path: str = "result") -> Any:
    """``obj`` as plain JSON data: what ``output_type='json'`` writes and a run report can store.

    DataFrames become lists of records (``{column: value}`` per row; a meaningful index becomes a
    column), Series ``{index: value}``, NumPy arrays (nested) lists, NumPy and pandas scalars Python
    numbers, dates ISO 8601 text, tuples and sets lists; dict keys become text. Missing and non-finite
    numbers (NaN, NaT, inf) become ``null``, as in pandas' own JSON. Anything else (bytes, arbitrary
    objects) raises :class:`~flame.errors.PayloadError` naming where it sits.
    """
    import numpy as np
    import pandas as pd

    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        if isinstance(obj, np.datetime64 | np.timedelta64):
            return result_to_jsonable(
                pd.Timestamp(obj) if isinstance(obj, np.datetime64) else pd.Timedelta(obj)
            )
        return result_to_jsonable(obj.item(), path=path)
    if obj is pd.NaT or obj is pd.NA:
        return None
    if isinstance(obj, datetime.datetime | datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, pd.Timedelta | datetime.timedelta):
        return pd.Timedelta(obj).isoformat()
    if isinstance(obj, pd.DataFrame):
        frame = obj.reset_index() if _keeps_index(obj) else obj
        columns = [str(c) for c in frame.columns]
        if len(set(columns)) != len(columns):
            raise PayloadError(f"{path}: a table for JSON needs distinct column names, got {columns}")
        return [
            {
                col: result_to_jsonable(value, path=f"{path}[{i}].{col}")
                for col, value in zip(columns, row, strict=True)
            }
            for i, row in enumerate(frame.itertuples(index=False, name=None))
        ]
    if isinstance(obj, pd.Series):
        return {
            str(result_to_jsonable(key)): result_to_jsonable(value, path=f"{path}.{key}")
            for key, value in obj.items()
        }
    if isinstance(obj, np.ndarray):
        return [result_to_jsonable(item, path=f"{path}[{i}]") for i, item in enumerate(obj.tolist())]
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise PayloadError(
                    f"{path}: a dict key of type {type(key).__name__} cannot be a JSON key; use text or numbers"
                )
            out[key if isinstance(key, str) else json.dumps(key)] = result_to_jsonable(
                value, path=f"{path}.{key}"
            )
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        return [result_to_jsonable(item, path=f"{path}[{i}]") for i, item in enumerate(items)]
    if isinstance(obj, decimal.Decimal):
        return result_to_jsonable(float(obj), path=path)
    raise PayloadError(
        f"{path}: a {type(obj).__name__} cannot be written as JSON; return numbers, text, lists, dicts, "
        "arrays or DataFrames, or choose output_type 'codec' or 'pickle'"
    )


def _text(result: Any) -> str:
    """``str(result)``; a DataFrame or Series whole, since pandas shortens its repr of long ones."""
    pd = sys.modules.get("pandas")  # not imported: the result holds no pandas object (importing costs ~1 s)
    if pd is not None and isinstance(result, pd.DataFrame | pd.Series):
        return str(result.to_string())
    return str(result)


def _table(result: Any, output_type: str) -> Any:
    """``result`` as a DataFrame for a table format; PayloadError for what is not a table."""
    import numpy as np
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        frame = result
    elif isinstance(result, pd.Series):
        frame = result.to_frame(name=result.name if result.name is not None else "value")
    elif isinstance(result, list | tuple) and result and all(isinstance(r, dict) for r in result):
        frame = pd.DataFrame.from_records(list(result))
    elif (
        isinstance(result, dict)
        and result
        and all(isinstance(v, list | tuple | np.ndarray | pd.Series) for v in result.values())
        and len({len(v) for v in result.values()}) == 1
    ):
        frame = pd.DataFrame(result)
    else:
        raise PayloadError(
            f"output_type {output_type!r} needs a table (a DataFrame, a Series, a list of records or a dict "
            f"of equal-length columns), got {type(result).__name__}; use 'json' for other data"
        )
    if len({str(c) for c in frame.columns}) != len(frame.columns):
        raise PayloadError(f"output_type {output_type!r}: the table's column names are not distinct")
    return frame


def _keeps_index(frame: Any) -> bool:
    """Whether a table's index carries information (named, or not the plain 0..n-1 row numbers)."""
    import pandas as pd

    index = frame.index
    if any(name is not None for name in index.names):
        return True
    return not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1)


def _parquet(frame: Any) -> bytes:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise PayloadError(
            "output_type 'parquet' needs pyarrow: install the SDK with the parquet extra "
            "(pip install 'flame-python-sdk[parquet]'), or use 'csv'"
        ) from None
    buffer = io.BytesIO()
    out = frame.copy(deep=False)
    out.columns = [str(c) for c in out.columns]
    try:
        out.to_parquet(buffer, engine="pyarrow", index=_keeps_index(out))
    except (TypeError, ValueError) as exc:  # pyarrow's ArrowException derives from these
        raise PayloadError(f"output_type 'parquet': the table cannot be written as Parquet: {exc}") from None
    return buffer.getvalue()


class Results:
    """Final and local results of one node, through its storage client."""

    def __init__(self, storage: StorageClient, guard: DisclosureGuard | None = None) -> None:
        self.storage = storage
        #: the node's disclosure guard; the final result passes it before it goes to the hub
        self.guard = guard

    async def submit_final(
        self,
        result: Any,
        *,
        output_type: OutputType = "str",
        multiple_results: bool = False,
        filename: str | None = None,
        local_dp: dict[str, float] | None = None,
    ) -> list[str]:
        """Submit the final result to the hub; returns the file names used.

        With ``multiple_results`` and a list or tuple, each element is one file (``filename`` gets
        ``_1``, ``_2``, ... before its extension). ``local_dp={"epsilon": e, "sensitivity": s}`` adds
        Laplace noise of scale s/e to a single finite number in the storage service.
        """
        # local DP is checked before the guard records (and charges) anything
        parsed = _parse_local_dp(result, local_dp) if local_dp is not None else None
        if self.guard is not None:
            result = await self.guard.release(
                result,
                channel="final/localdp" if parsed is not None else "final",
                destination=["hub"],
                path="result",
                spend=parsed[0] if parsed is not None else 0.0,
                render=_texts(multiple_results) if output_type == "str" and parsed is None else None,
            )
        if parsed is not None:
            return [await self._submit_localdp(result, parsed, filename)]
        items: Sequence[Any] = result if multiple_results and isinstance(result, list | tuple) else [result]
        names = _file_names(filename, len(items), EXTENSIONS[output_type])
        for name, item in zip(names, items, strict=True):
            await self.storage.submit_final(serialise(item, output_type), name)
        return names

    async def _submit_localdp(self, result: Any, local_dp: tuple[float, float], filename: str | None) -> str:
        epsilon, sensitivity = local_dp
        _parse_local_dp(result, {"epsilon": epsilon, "sensitivity": sensitivity})
        name = filename or default_filename(".txt")
        await self.storage.submit_final_localdp(float(result), epsilon, sensitivity, filename=name)
        return name

    async def save_local(self, data: Any, *, tag: str | None = None, filename: str | None = None) -> LocalRef:
        """Keep ``data`` (encoded with :mod:`flame.codec`) in node storage, optionally under ``tag``."""
        return await self.storage.save_local(codec.encode(data), tag=tag, filename=filename)

    async def load_tagged(
        self, tag: str, which: TagOption = "all", *, allow_pickle: bool = False
    ) -> list[Any]:
        """Decode the local results under ``tag`` of this project (this and earlier analyses)."""
        return [
            codec.decode(raw, allow_pickle=allow_pickle) for raw in await self.storage.read_tagged(tag, which)
        ]

    async def tags(self) -> list[str]:
        """The tags of local results of this project."""
        return await self.storage.tags()


def _parse_local_dp(result: Any, local_dp: Any) -> tuple[float, float]:
    """(epsilon, sensitivity) of ``local_dp`` for ``result``; PayloadError unless both are finite and
    > 0 and ``result`` is one finite number. Epsilon is what the project's budget is charged."""
    try:
        epsilon, sensitivity = float(local_dp["epsilon"]), float(local_dp["sensitivity"])
    except (KeyError, TypeError, ValueError):
        raise PayloadError('local_dp must be {"epsilon": <number>, "sensitivity": <number>}') from None
    if not all(math.isfinite(v) and v > 0 for v in (epsilon, sensitivity)):
        raise PayloadError(
            f"local_dp needs a finite epsilon > 0 and a finite sensitivity > 0, got {epsilon!r}, {sensitivity!r}"
        )
    if isinstance(result, bool) or not isinstance(result, int | float) or not math.isfinite(result):
        raise PayloadError(
            f"local DP applies to one finite number, got {type(result).__name__} {result!r:.40}"
        )
    return epsilon, sensitivity


def _texts(multiple_results: bool) -> Callable[[Any], list[bytes]]:
    """What leaves of a final result for output type ``str``: the text of each file."""

    def render(result: Any) -> list[bytes]:
        items = result if multiple_results and isinstance(result, list | tuple) else [result]
        return [serialise(item, "str") for item in items]

    return render


def _file_names(filename: str | None, count: int, extension: str) -> list[str]:
    if filename is None:
        return [default_filename(extension) for _ in range(count)]
    if count == 1:
        return [filename]
    stem, dot, ext = filename.rpartition(".")
    if not dot:
        stem, ext = filename, ""
    return [f"{stem}_{i}{'.' + ext if ext else ''}" for i in range(1, count + 1)]

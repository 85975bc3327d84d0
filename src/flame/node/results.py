"""Results in node storage: final results for the hub, and local results reused across analyses.

Final results go to the hub, where the analyst downloads them (``PUT /final``, or ``/final/localdp``
for one number with local differential privacy). Local results stay on the node, project-scoped and
findable by tag, so a later analysis of the same project can load them: the "old information".
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from flame import codec
from flame.clients.storage import LocalRef, StorageClient, TagOption, default_filename
from flame.errors import PayloadError

if TYPE_CHECKING:
    from flame.disclosure.guard import DisclosureGuard

OutputType = Literal["str", "bytes", "pickle", "codec"]
EXTENSIONS: dict[str, str] = {"str": ".txt", "bytes": ".bin", "pickle": ".pkl", "codec": ".flame"}


def serialise(result: Any, output_type: OutputType) -> bytes:
    """The bytes of ``result`` as a final-result file of ``output_type``.

    ``str``: ``str(result)`` as UTF-8; ``bytes``: the bytes as they are; ``codec``: :mod:`flame.codec`;
    ``pickle``: for analysts whose tools expect it (PrivateAIM's SDK offers it); it leaves the node
    only towards the hub, never to another node.
    """
    if output_type == "str":
        return str(result).encode()
    if output_type == "bytes":
        if not isinstance(result, bytes | bytearray | memoryview):
            raise PayloadError(
                f"output_type 'bytes' needs bytes, got {type(result).__name__}; use 'str' or 'codec'"
            )
        return bytes(result)
    if output_type == "codec":
        return codec.encode(result)
    if output_type == "pickle":
        return pickle.dumps(result, protocol=5)
    raise PayloadError(f"unknown output_type {output_type!r}; one of str, bytes, pickle, codec")


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

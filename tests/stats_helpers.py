"""Running a flame.stats analysis on a local federation of given tables (one per analysis node)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from flame.errors import FederationError
from flame.sim import FlameStack, StackSettings
from flame.sim.faults import parse_faults
from flame.sim.federation import Federation, FederationRun
from flame.stats import StatsAnalysis

#: every delivery 0.1 s late: a restart at 0.5 s of a test's run lands in the middle of the fit, however
#: fast the stack is (without it a run may end before 0.5 s, and the restart then never happens)
MID_FIT_DELAY = "delay=1:0.1"


def write_frames(root: Path, frames: list[pd.DataFrame], key: str) -> Path:
    """``root/node-i/s3/key`` for each frame (CSV, or Parquet by the key's ending)."""
    for i, frame in enumerate(frames, start=1):
        folder = root / f"node-{i}" / "s3"
        folder.mkdir(parents=True, exist_ok=True)
        if key.endswith((".parquet", ".pq")):
            frame.to_parquet(folder / key, index=False)
        else:
            frame.to_csv(folder / key, index=False)
    return root


async def run_stats_federation(
    analysis: StatsAnalysis,
    frames: list[pd.DataFrame],
    *,
    policy: str | None = None,
    faults: str | None = None,
    timeout: float = 120.0,
) -> FederationRun:
    """Run ``analysis`` with node ``node-i`` holding ``frames[i - 1]`` under its source's key.

    ``policy``: a disclosure policy file (JSON) for every node; ``faults``: a fault plan in its
    text form (``"restart=node-2@1.5;drop=0.2"``).
    """
    assert analysis.source is not None and analysis.source.key is not None
    with tempfile.TemporaryDirectory(prefix="flame-stats-") as tmp:
        root = write_frames(Path(tmp) / "data", frames, analysis.source.key)
        stack = FlameStack.create(
            len(frames),
            data_root=root,
            settings=StackSettings.fast(po_enabled=False),
            faults=parse_faults(faults) if faults else None,
        )
        if policy is not None:
            stack.disclosure_policies.update({name: policy for name in stack.nodes})
        async with stack:
            # a refused release decides the run at once: the other nodes get a short settle time
            federation = Federation(
                stack, analysis.analyzer, analysis.aggregator, analysis.options, settle=0.3
            )
            return await federation.run(timeout)


async def run_stats(analysis: StatsAnalysis, frames: list[pd.DataFrame], **kw: Any) -> Any:
    """The typed result of ``analysis`` over ``frames``; :class:`FederationError` naming each node's error."""
    run = await run_stats_federation(analysis, frames, **kw)
    if not run.ok:
        errors = "; ".join(f"{o.name}: {o.error}" for o in run.outcomes.values() if o.error)
        raise FederationError(f"the federated statistic failed: {errors}")
    result = analysis.interpret(run.result)
    return result


def split(frame: pd.DataFrame, sizes: list[int]) -> list[pd.DataFrame]:
    """Consecutive parts of ``frame`` of the given sizes (the last takes the rest if 0)."""
    parts, start = [], 0
    for size in sizes:
        end = len(frame) if size == 0 else start + size
        parts.append(frame.iloc[start:end].reset_index(drop=True))
        start = end
    return parts

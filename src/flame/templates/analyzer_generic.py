"""The analyzer: runs on every hospital's node, next to its data, and sends only aggregates away.

Each node reads the CSV object ``DATA_KEY`` from its S3 data source and returns how many values of
``COLUMN`` it has and their sum; the raw rows never leave the node. A node with fewer than
``MIN_COUNT`` values refuses to answer, since a count and a sum of very few patients disclose too much.
"""

from __future__ import annotations

from typing import Any

import flame
from flame.errors import DisclosureRefusedError

#: The CSV object in each node's S3 data source, and the column whose mean the analysis computes.
DATA_KEY = "data.csv"
COLUMN = "age"
#: Least number of values a node releases a count and a sum for.
MIN_COUNT = 5


class MeanAnalyzer(flame.Analyzer):
    """Count and sum of ``COLUMN`` on this node."""

    def analyze(self, data: flame.Data, aggregate: Any, round: int) -> dict[str, Any]:
        frame = data.dataframe(DATA_KEY)
        if COLUMN not in frame.columns:
            columns = ", ".join(map(str, frame.columns))
            raise KeyError(f"{DATA_KEY} has no column {COLUMN!r} (columns: {columns})")
        values = frame[COLUMN].dropna()
        if len(values) < MIN_COUNT:
            raise DisclosureRefusedError(
                f"only {len(values)} values of {COLUMN!r} here; {MIN_COUNT} are needed"
            )
        return {"n": len(values), "sum": float(values.sum())}

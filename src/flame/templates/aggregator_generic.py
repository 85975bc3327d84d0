"""The aggregator: runs on the aggregator node and combines what the hospitals sent.

The pooled mean is the sum of the nodes' sums over the sum of their counts: exactly the mean of all
rows together, without any row leaving its hospital.
"""

from __future__ import annotations

from typing import Any

import flame


class MeanAggregator(flame.Aggregator):
    """Adds the nodes' counts and sums and divides."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> dict[str, Any]:
        n = sum(int(update["n"]) for update in updates.values())
        total = sum(float(update["sum"]) for update in updates.values())
        return {"n": n, "mean": total / n, "nodes": len(updates)}
